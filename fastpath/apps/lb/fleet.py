"""Is a fleet consistent? Balancer nodes behind ECMP must hand every flow to the same backend,
so each VIP's Maglev table, the flow hash's seed and the table size must be equal on all of
them: a flow the routers move to another node (a node died, came back, or the routers
rehashed) has no conntrack entry there and takes that node's Maglev pick.

`report` reads one node: per VIP a digest of what picks a backend for a new flow — the
table size, the seed, the hash mode and the live ring read back from the data plane, slot
by slot as backend names (the ids in the ring are local to a node) — and the settings that
decide it (backends, weights, drain and health status). `compare` groups the nodes by
digest and explains, for every node that differs from the majority, why.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from fastpath.apps.lb import maglev, program
from fastpath.apps.lb.abi import LB_NO_BACKEND
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import read_u32_array
from fastpath.apps.lb.store import VipState
from fastpath.errors import FastpathError

_NODE_FIX = ("name a node as IFACE@NETNS (a balancer on this machine), IFACE (in the root "
             "namespace) or a file written by 'fastpath lb fleet digest --json'")


def digest(size: int, seed: int, hash_mode: str, names: list[str], slots: list[int]) -> str:
    """What decides a new flow's backend, as one hash; `slots` index into sorted `names`."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{size} {seed} {hash_mode}\n".encode())
    h.update("\n".join(names).encode() + b"\n")
    h.update(b"".join((s & 0xFFFFFFFF).to_bytes(4, "little") for s in slots))
    return h.hexdigest()


def _vip_report(bal: Balancer, vs: VipState) -> dict[str, Any]:
    state = bal.state
    names = sorted(vs.backends)
    index_of_id = {vs.backends[n].id: i for i, n in enumerate(names)}
    live = bal.maps["vips"].get(vs.id.key())
    ring = (live.ring if live is not None else vs.ring) & 1
    base = (vs.index * 2 + ring) * state.table_size
    raw = read_u32_array(bal.maps["rings"].fd, base, state.table_size)
    # An id of no backend of this VIP cannot be a valid pick: keep it visible as its own value.
    slots = [index_of_id.get(b, maglev.NO_BACKEND if b == LB_NO_BACKEND else -2) for b in raw]
    from_config = maglev.build_table(vs.weights(), state.table_size, state.seed)
    return {
        "mode": vs.mode, "hash": vs.hash,
        "backends": {n: {"weight": vs.backends[n].weight, "status": vs.backends[n].status}
                     for n in names},
        "digest": digest(state.table_size, state.seed, vs.hash, names, slots),
        "config_digest": digest(state.table_size, state.seed, vs.hash, names, from_config),
    }


def report(ifname: str, netns: str | None) -> dict[str, Any]:
    """One node as `fastpath lb fleet digest --json` prints it."""
    with program.session(ifname, netns, write=False) as bal:
        vips = {name: _vip_report(bal, vs) for name, vs in sorted(bal.state.vips.items())}
        return {"node": node_label(ifname, netns), "seed": bal.state.seed,
                "table_size": bal.state.table_size, "vips": vips}


def node_label(ifname: str, netns: str | None) -> str:
    return f"{ifname}@{netns}" if netns else ifname


def load_node(text: str) -> dict[str, Any]:
    """A NODE argument: a local balancer (IFACE@NETNS, IFACE) or a saved digest file."""
    path = Path(text)
    if text.endswith(".json") or "/" in text:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FastpathError(f"node {text!r}: no such file", fix=_NODE_FIX) from None
        except (OSError, ValueError) as exc:
            raise FastpathError(f"node {text!r}: not a digest file ({exc})", fix=_NODE_FIX) from None
        if not (isinstance(data, dict) and isinstance(data.get("vips"), dict)
                and isinstance(data.get("seed"), int) and isinstance(data.get("table_size"), int)):
            raise FastpathError(f"node {text!r}: not a digest file (seed, table_size, vips missing)",
                                fix=_NODE_FIX)
        data.setdefault("node", text)
        return data
    ifname, _, netns = text.partition("@")
    if not ifname or (_ and not netns):
        raise FastpathError(f"bad node {text!r}", fix=_NODE_FIX)
    return report(ifname, netns or None)


def _why(node: dict[str, Any], ref: dict[str, Any], vip: str) -> list[str]:
    """Why `node`'s table for `vip` differs from `ref`'s, in the settings that decide it."""
    out = []
    if node["seed"] != ref["seed"]:
        out.append(f"seed {node['seed']} (others {ref['seed']})")
    if node["table_size"] != ref["table_size"]:
        out.append(f"table size {node['table_size']} (others {ref['table_size']})")
    mine, theirs = node["vips"][vip], ref["vips"][vip]
    for key in ("mode", "hash"):
        if mine[key] != theirs[key]:
            out.append(f"{key} {mine[key]} (others {theirs[key]})")
    mb, tb = mine["backends"], theirs["backends"]
    for name in sorted(set(tb) - set(mb)):
        out.append(f"backend {name} missing")
    for name in sorted(set(mb) - set(tb)):
        out.append(f"extra backend {name}")
    for name in sorted(set(mb) & set(tb)):
        if mb[name]["weight"] != tb[name]["weight"]:
            out.append(f"backend {name} weight {mb[name]['weight']} (others {tb[name]['weight']})")
        if mb[name]["status"] != tb[name]["status"]:
            out.append(f"backend {name} {mb[name]['status']} (others {tb[name]['status']})")
    if not out:
        if mine["digest"] != mine["config_digest"]:
            out.append("its data plane's ring differs from its own config (re-apply, or re-attach)")
        else:
            out.append("the tables differ")
    return out


def compare(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Every difference between the nodes, each against the majority of the nodes."""
    if len(nodes) < 2:
        raise FastpathError("a fleet check needs at least two nodes", fix=_NODE_FIX)
    differences: list[dict[str, Any]] = []
    labels = [n["node"] for n in nodes]
    if len(set(labels)) != len(labels):
        dup = next(label for label, k in Counter(labels).items() if k > 1)
        raise FastpathError(f"node {dup} is named twice")
    vips = sorted({v for n in nodes for v in n["vips"]})
    for vip in vips:
        having = [n for n in nodes if vip in n["vips"]]
        for n in nodes:
            if vip not in n["vips"]:
                differences.append({"node": n["node"], "vip": vip, "reasons": ["VIP missing"]})
        counts = Counter(n["vips"][vip]["digest"] for n in having)
        # The majority's digest; on a tie, the first node's.
        top = max(counts.values())
        ref_digest = next(n["vips"][vip]["digest"] for n in having if counts[n["vips"][vip]["digest"]] == top)
        ref = next(n for n in having if n["vips"][vip]["digest"] == ref_digest)
        for n in having:
            if n["vips"][vip]["digest"] != ref_digest:
                differences.append({"node": n["node"], "vip": vip, "reasons": _why(n, ref, vip)})
    table = [{"node": n["node"], "seed": n["seed"], "table_size": n["table_size"],
              "vips": {v: d["digest"][:12] for v, d in n["vips"].items()}} for n in nodes]
    return {"consistent": not differences, "nodes": table, "differences": differences}
