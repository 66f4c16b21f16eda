"""The l4lb program on an interface: attach (a re-attach is a hot reload that keeps every
flow), detach, and sessions, which open its maps and state under the state lock for one
change or one read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from fastpath.apps.lb import bgp
from fastpath.apps.lb.abi import SPEC, TIMEOUTS, TUNABLES
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.config import VipId, VipSpec, check_tunables, parse_config, read_file
from fastpath.apps.lb.maps import LbMaps
from fastpath.apps.lb.nexthop import resolve_mac
from fastpath.apps.lb.store import LbState, load_state, locked, remove_state, save_state
from fastpath.bpf import chain, syscall, xdp
from fastpath.bpf.loader import dump_source
from fastpath.errors import FastpathError


def host_cpus() -> dict[str, int]:
    """The host's CPU counts the half-open table is sized by (possible CPUs, and the CPUs
    online as those that run the program, unless --rx-cpus says otherwise)."""
    return {"LB_POSSIBLE_CPUS": syscall.possible_cpus(), "LB_RX_CPUS": syscall.online_cpus()}


def attachment(ifname: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(ifname, netns, SPEC.name, "the load balancer", "fastpath lb attach")


def vip_claims(vips: Iterable[VipId]) -> list[chain.Claim]:
    """The TCP VIPs, for the chain's check that no program ahead answers one itself."""
    return [chain.Claim(SPEC.name, frozenset({v.address}), frozenset({v.port}), f"VIP {v}", answers=False,
                        fix="use a VIP address that is not one of the host's own")
            for v in vips if v.proto == "tcp"]


def _claims_of(ifname: str, netns: str | None) -> list[chain.Claim]:
    state = load_state(ifname, netns)
    return vip_claims(v.id for v in state.vips.values()) if state is not None else []


chain.CLAIMS[SPEC.name] = _claims_of


@contextlib.contextmanager
def session(ifname: str, netns: str | None, *, write: bool = True) -> Iterator[Balancer]:
    """A Balancer on the program attached to `ifname`, under the state lock; the state is
    saved when the block succeeds (and `write`), left alone when it raises."""
    att = attachment(ifname, netns)
    with locked(ifname, netns):
        state = load_state(ifname, netns) or LbState.for_defines(att.defines)
        with LbMaps.from_attachment(att) as maps:
            bal = Balancer(maps, state, lambda a: resolve_mac(a, ifname, netns), att.defines)
            bal.vip_check = lambda vips: chain.check_claims(ifname, netns, {SPEC.name: vip_claims(vips)})
            yield bal
            if write:
                save_state(ifname, netns, bal.state)


def attach(ifname: str, netns: str | None, mode: str = "auto",
           tunables: Mapping[str, int] | None = None,
           peer_program: bool = True) -> tuple[xdp.Attachment, bool]:
    """Attach l4lb (or replace the running one, keeping its maps and therefore every flow).

    A replacement keeps the attachment's sizes: pinned maps cannot change shape (the flow
    timeouts may change).
    """
    xdp.clear_stale(ifname, netns)
    old = xdp.read_state(ifname, netns, SPEC.name)
    defines: dict[str, int | str] = dict(TUNABLES)
    if old is not None and old.program == SPEC.name:
        asked = dict(tunables or {})
        changed = {k: v for k, v in asked.items()
                   if k not in TIMEOUTS and int(old.defines.get(k, TUNABLES[k])) != v}
        if changed:
            k = sorted(changed)[0]
            raise FastpathError(f"{ifname} runs l4lb with {k}={old.defines.get(k)}; the pinned maps "
                                "cannot change size or seed in place",
                                fix=f"detach first (fastpath lb detach {ifname}), then attach")
        defines.update(old.defines)
        defines.update({k: v for k, v in asked.items() if k in TIMEOUTS})
    else:
        defines.update(host_cpus())
        defines.update(tunables or {})
    check_tunables(defines)
    with locked(ifname, netns):
        att, replaced = xdp.attach(SPEC, ifname, netns, mode, defines, peer_program=peer_program)
        state = load_state(ifname, netns)
        if state is None or not replaced:
            fresh = LbState.for_defines(defines)
            shape = ("table_size", "seed", "max_vips", "max_backends")
            if state is not None and all(getattr(state, k) == getattr(fresh, k) for k in shape):
                fresh = state  # the link died with the interface; restore what was configured
            with LbMaps.from_attachment(att) as maps:
                bal = Balancer(maps, fresh, lambda a: resolve_mac(a, ifname, netns))
                bal.sync()
            save_state(ifname, netns, fresh)
        else:
            # A program from before `vip_refs` (and config's address bits) leaves them empty:
            # fill them, so conntrack hits take the short way again (until then they take the
            # long one, through `vips`).
            with LbMaps.from_attachment(att) as maps:
                Balancer(maps, state, lambda a: resolve_mac(a, ifname, netns)).sync_hints()
    return att, replaced


def detach(ifname: str, netns: str | None) -> xdp.Attachment | None:
    with locked(ifname, netns):
        att = xdp.detach(ifname, netns, program=SPEC.name)
    remove_state(ifname, netns)
    return att


def load_file(path: Path) -> tuple[list[VipSpec], bgp.BgpSpec | None]:
    """An `lb apply` file, checked in full: its VIPs and its `bgp` section (None: none)."""
    data = read_file(path)
    specs = parse_config(data, str(path))
    raw = data.get("bgp") if isinstance(data, dict) else None
    announce = bgp.parse_bgp(raw, str(path)) if raw is not None else None
    if announce is not None:
        bgp.check_families(announce, [str(s.vip) for s in specs])
    return specs, announce


def apply_file(path: Path, ifname: str, netns: str | None) -> list[str]:
    """Make the balancer equal an `lb apply` file (VIPs, backends and what it announces over
    BGP); nothing is applied when any part is bad. Returns the changes, in words."""
    specs, announce = load_file(path)
    with session(ifname, netns) as bal:
        changes = bal.apply(specs)
        wanted = announce.to_json() if announce else None
        if bal.state.bgp != wanted:
            changes.append(f"BGP: {announce.describe()}" if announce
                           else "BGP: section removed, nothing announced")
            bal.state.bgp = wanted
    return changes


def dump(ifname: str, netns: str | None, tunables: Mapping[str, int]) -> str:
    """The C source and flags `attach` would build with these tunables (`--dump-bpf`)."""
    defines: dict[str, int | str] = {**TUNABLES, **host_cpus(), **tunables}
    check_tunables(defines)
    return dump_source(SPEC, defines, str(xdp.pin_dir(ifname, netns)))


def find(iface: str | None, netns: str | None) -> tuple[str, str | None]:
    """The interface a command acts on: `iface`, or the only balancer attached (in `netns`
    when given)."""
    if iface:
        return iface, netns
    atts = [a for a in xdp.attachments() if a.program == SPEC.name and (netns is None or a.netns == netns)]
    if len(atts) == 1:
        return atts[0].ifname, atts[0].netns
    where = f" in namespace {netns}" if netns else ""
    if not atts:
        raise FastpathError(f"the load balancer is not attached to any interface{where}",
                            fix="attach it: fastpath lb attach IFACE [--netns NS]")
    names = ", ".join(f"{a.ifname}@{a.netns or 'root'}" for a in atts)
    raise FastpathError(f"the load balancer runs on several interfaces ({names})",
                        fix="choose one with --iface IFACE [--netns NS]")
