"""`topo-scale`: how long `fastpath topo up` and `topo down` take as a lab grows from 10
to 200 nodes (a sweep: each contender is a node count).

The lab is the common LAN shape: N nodes, each with one interface `eth0` on one bridge
(`sw0`, in the lab's switch namespace) and an IPv4 address in 10.240.0.0/16; so N + 1
namespaces, N veth pairs, N addresses. It is built and removed through the same calls
as `fastpath topo up` / `topo down` (fastpath.netns.builder.build and destroy).

Metrics: wall time of up and down, the same per node, and where `up` spends its time per
node: creating and preparing namespaces, creating links (veth pairs, bridge), addresses
(config), writing the lab's statefile (journal) and reading back what the kernel assigned
(facts), as reported by the builder; the rest (checks, opening netlink sockets) is what
up_ms_per_node holds beyond their sum.

Premise, checked every run: after `up` every node's interface is recorded and the first
node pings the last across the bridge; after `down` no namespace, root-namespace link,
statefile or pin directory of the lab is left.

Time: a full run is 5 repeats + 1 warm-up of 385 nodes in all, about a minute;
--quick measures every point once.
"""

from __future__ import annotations

import contextlib
import os
import time

from fastpath.bench import BenchContext, Metric, Scenario, register_scenario
from fastpath.errors import FastpathError
from fastpath.netns import builder, state
from fastpath.netns.lab import Lab
from fastpath.netns.model import Topology, TopologyBuilder

NODES = (10, 25, 50, 100, 200)
PHASES = ("namespaces", "links", "config", "journal", "facts")
SUBNET = "10.240"  # /16: node i is 10.240.(i // 250).(i % 250 + 1)
PING_TIMEOUT_S = 10


def lan(name: str, nodes: int) -> Topology:
    """`nodes` nodes n0..n{nodes-1}, each eth0 on bridge sw0 with an address."""
    b = TopologyBuilder(name).bridge("sw0")
    for i in range(nodes):
        node = f"n{i}"
        b.node(node).link(f"{node}:eth0", "sw0").address(f"{node}:eth0", f"{address(i)}/16")
    return b.build()


def address(i: int) -> str:
    return f"{SUBNET}.{i // 250}.{i % 250 + 1}"


def leftovers(name: str) -> list[str]:
    """What of lab `name` still exists: namespaces, root links, statefile, pins."""
    left = [f"namespace {n}" for n in builder.owned_netns(name)]
    left += [f"root link {ifname}" for _, ifname, _ in builder.root_links_of(name)]
    if state.state_path(name).exists():
        left.append(f"statefile {state.state_path(name)}")
    pins = [p for p in _pin_dirs() if p.startswith(f"{name}-")]
    left += [f"pins {builder.BPF_PIN_ROOT}/{p}" for p in pins]
    return left


def _pin_dirs() -> list[str]:
    try:
        return os.listdir(builder.BPF_PIN_ROOT)
    except FileNotFoundError:
        return []


@register_scenario
class TopoScale(Scenario):
    name = "topo-scale"
    description = (
        "fastpath topo up / down wall time vs lab size (10 to 200 nodes, each on one bridge "
        "with an address), per node, and what up spends it on"
    )
    sweep = "nodes"
    metrics = [
        Metric("up_s", "s", "lower"),
        Metric("down_s", "s", "lower"),
        Metric("up_ms_per_node", "ms/node", "lower"),
        Metric("down_ms_per_node", "ms/node", "lower"),
        *(Metric(f"{p}_ms_per_node", "ms/node", "lower") for p in PHASES),
    ]
    baseline = "10"
    repeat, quick_repeat, warmup = 5, 1, 1

    def contenders(self) -> list[str]:
        return [str(n) for n in NODES]

    def setup(self, ctx: BenchContext) -> None:
        # Lab names hold at most 12 characters and no '-'.
        self._lab = f"tscale{os.getpid() % 100000}"
        if leftovers(self._lab):
            raise FastpathError(
                f"lab {self._lab!r} already exists; remove it with `fastpath topo down {self._lab}`"
            )

    def teardown(self, ctx: BenchContext) -> None:
        lab = getattr(self, "_lab", None)
        if lab and leftovers(lab):
            builder.destroy(lab)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        nodes = int(contender)
        topo = lan(self._lab, nodes)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        record = builder.build(topo, timings=timings)
        up_s = time.perf_counter() - t0
        try:
            self._check_up(topo, record, nodes)
        except BaseException:
            with contextlib.suppress(FastpathError):
                builder.destroy(self._lab)
            raise
        t0 = time.perf_counter()
        builder.destroy(self._lab)
        down_s = time.perf_counter() - t0
        left = leftovers(self._lab)
        if left:
            raise FastpathError(f"topo down of {nodes} nodes left {', '.join(left[:5])}")
        values = {
            "up_s": up_s,
            "down_s": down_s,
            "up_ms_per_node": up_s / nodes * 1e3,
            "down_ms_per_node": down_s / nodes * 1e3,
        }
        for phase in PHASES:
            values[f"{phase}_ms_per_node"] = timings.get(phase, 0.0) / nodes * 1e3
        return values

    def _check_up(self, topo: Topology, record: dict[str, object], nodes: int) -> None:
        interfaces = record.get("interfaces")
        count = len(interfaces) if isinstance(interfaces, list) else 0
        if record.get("status") != "up" or count != nodes:
            raise FastpathError(
                f"topo up of {nodes} nodes recorded {record.get('status')!r} with {count} interfaces"
            )
        lab = Lab(topo, dict(record))
        last = address(nodes - 1)
        res = lab.run("n0", ["ping", "-c", "1", "-W", "2", last], timeout=PING_TIMEOUT_S, check=False)
        if res.returncode != 0:
            raise FastpathError(
                f"lab of {nodes} nodes: n0 cannot ping n{nodes - 1} ({last}) across the bridge"
            )

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        return explain_scale(medians)


def explain_scale(medians: dict[str, dict[str, float]]) -> list[str]:
    """Where per-node cost stops being flat, and which phase of `up` makes it so."""
    points = sorted((int(c), m) for c, m in medians.items())
    if len(points) < 2:
        return []
    (n0, first), (n1, last) = points[0], points[-1]
    per_node = [(n, m["up_ms_per_node"]) for n, m in points]
    lo_i = min(range(len(per_node)), key=lambda i: per_node[i][1])
    lo_n, lo = per_node[lo_i]
    knee = next((n for n, v in per_node[lo_i + 1:] if v > 1.3 * lo), None)
    total = last["up_ms_per_node"]
    shares = {p: last[f"{p}_ms_per_node"] / total for p in PHASES} if total > 0 else {}
    top = max(shares, key=lambda p: shares[p]) if shares else "links"
    lowest = f"lowest {lo:.1f} at {lo_n}, " if lo_n not in (n0, n1) else ""
    text = (
        f"topo up costs {first['up_ms_per_node']:.1f} ms/node at {n0} nodes, {lowest}"
        f"{total:.1f} at {n1}; at {n1} nodes {top} take "
        f"{shares.get(top, 0) * 100:.0f} % of it ("
        + ", ".join(f"{p} {last[f'{p}_ms_per_node']:.1f}" for p in PHASES)
        + f", the rest {total - sum(last[f'{p}_ms_per_node'] for p in PHASES):.1f} ms/node)."
    )
    if first["up_ms_per_node"] > 1.3 * lo:
        text += (
            " Small labs pay more per node: a lab's fixed costs (the switch namespace and "
            "its bridge, the statefile, reading back the facts) are shared by fewer nodes."
        )
    if knee is None and lo_n == n1:
        text += " Per-node cost only falls as labs grow: up is linear in the node count plus a fixed cost."
    elif knee is None:
        text += f" From {lo_n} nodes on, per-node cost stays within 30 % of its lowest: up grows linearly."
    else:
        growth = {p: last[f"{p}_ms_per_node"] - points[lo_i][1][f"{p}_ms_per_node"] for p in PHASES}
        grew = max(growth, key=lambda p: growth[p])
        why = {
            "journal": "the statefile is rewritten whole at each write and grows with the lab",
            "namespaces": "each is one unshare and one bind mount; what grows is the kernel's "
                          "work per new namespace",
            "links": "one netlink message per veth pair plus bringing its ends up and one "
                     "bridge port each: what grows is the kernel's work per new link, e.g. "
                     "in a switch namespace that already holds a port per node",
            "config": "one netlink message per address: what grows is the kernel's work per address",
            "facts": "one netlink request per interface reads back its index, MAC and MTU",
        }[grew]
        text += (
            f" Per-node cost stops being flat at {knee} nodes (> 1.3x its lowest); most of the "
            f"growth is in {grew} (+{growth[grew]:.1f} ms/node from {lo_n} to {n1}): {why}."
        )
    return [
        text,
        f"topo down: {first['down_ms_per_node']:.2f} ms/node at {n0} nodes, "
        f"{last['down_ms_per_node']:.2f} at {n1}; it kills what runs in the namespaces, "
        f"unmounts and deletes them: the kernel frees their devices afterwards, asynchronously.",
    ]
