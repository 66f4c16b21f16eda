"""Announcing VIPs over BGP: the `bgp` section of the `lb apply` file, which VIP addresses a
node may announce, and the BIRD 2 configuration generated from both.

    bgp:
      asn: 65001                # the fleet's AS: the same on every balancer
      router_id: 10.30.2.11     # optional (BIRD takes an interface address)
      hold: 3                   # BGP hold time, seconds (keepalive 1)
      keepalive: 1
      bfd: {interval_ms: 100, multiplier: 5}   # or false; detection = interval x multiplier
      peers:
        10.30.2.1: {asn: 65000}  # the router in front (a ToR); directly connected

A VIP address is announced as a host route (/32, /128) while at least one VIP on it has a
backend that serves: not drained, and seen up by the health checks (UDP backends are not
checked: not drained and not marked down). Routers cannot split traffic by port, so one
serving VIP keeps its address announced. The speaker is BIRD 2, run and reloaded by
`fastpath lb health` (fastpath.apps.lb.speaker); this module only decides and writes text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fastpath.apps.lb.abi import IPAddress
from fastpath.apps.lb.store import LbState, VipState
from fastpath.errors import FastpathError

MAX_ASN = 2**32 - 1
_FIX = "see the 'bgp' section in README (Running a fleet)"
DEFAULT_HOLD = 3
DEFAULT_KEEPALIVE = 1
DEFAULT_BFD_INTERVAL_MS = 100
DEFAULT_BFD_MULTIPLIER = 5


@dataclass(frozen=True)
class Peer:
    address: str
    asn: int

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)


@dataclass(frozen=True)
class BgpSpec:
    asn: int
    peers: tuple[Peer, ...]
    router_id: str | None = None
    hold: int = DEFAULT_HOLD
    keepalive: int = DEFAULT_KEEPALIVE
    bfd_interval_ms: int | None = DEFAULT_BFD_INTERVAL_MS   # None: no BFD
    bfd_multiplier: int = DEFAULT_BFD_MULTIPLIER

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BgpSpec:
        return cls(**{**data, "peers": tuple(Peer(**p) for p in data["peers"])})

    @property
    def detection_s(self) -> float:
        """How long the router takes at most to see this node gone: BFD's detection time,
        else the hold time."""
        if self.bfd_interval_ms is None:
            return float(self.hold)
        return self.bfd_interval_ms * self.bfd_multiplier / 1000

    def families(self) -> set[int]:
        return {p.ip.version for p in self.peers}

    def describe(self) -> str:
        peers = ", ".join(f"{p.address} (AS {p.asn})" for p in self.peers)
        bfd = (f"BFD {self.bfd_interval_ms} ms x {self.bfd_multiplier}" if self.bfd_interval_ms
               else "no BFD")
        return f"AS {self.asn} to {peers}; hold {self.hold} s, keepalive {self.keepalive} s, {bfd}"


# ---------------------------------------------------------------------------------------
# the `bgp` section


def _int(value: object, what: str, low: int, high: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FastpathError(f"{what}: {value!r} is not an integer in {low}-{high}{unit}", fix=_FIX)
    return value


def _check_keys(conf: Mapping[Any, Any], what: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in set(conf) - set(keys))
    if unknown:
        raise FastpathError(f"{what}: unknown key {unknown[0]!r}", fix=f"use {', '.join(keys)}")


def parse_bgp(raw: object, source: str = "config") -> BgpSpec:
    """The `bgp` section of an `lb apply` file -> BgpSpec; one error naming what is wrong."""
    what = f"{source}: bgp"
    if not isinstance(raw, dict):
        raise FastpathError(f"{what} must be a mapping (asn, peers, ...)", fix=_FIX)
    _check_keys(raw, what, ("asn", "peers", "router_id", "hold", "keepalive", "bfd"))
    if "asn" not in raw:
        raise FastpathError(f"{what}: 'asn' (this node's AS number) is missing", fix=_FIX)
    asn = _int(raw["asn"], f"{what}: asn", 1, MAX_ASN)
    router_id = None
    if raw.get("router_id") is not None:
        try:
            router_id = str(ipaddress.IPv4Address(str(raw["router_id"])))
        except ValueError:
            raise FastpathError(f"{what}: router_id {raw['router_id']!r} is not an IPv4 address",
                                fix="BGP router ids are written as IPv4 addresses") from None
    hold = _int(raw.get("hold", DEFAULT_HOLD), f"{what}: hold", 3, 65535, " seconds")
    keepalive = _int(raw.get("keepalive", DEFAULT_KEEPALIVE), f"{what}: keepalive", 1, 21845, " seconds")
    if keepalive * 3 > hold:
        raise FastpathError(f"{what}: keepalive {keepalive} s is more than a third of hold {hold} s",
                            fix="a hold time survives three lost keepalives: e.g. hold 3, keepalive 1")
    interval, multiplier = _bfd(raw.get("bfd", {}), f"{what}: bfd")
    peers_raw = raw.get("peers")
    if not isinstance(peers_raw, dict) or not peers_raw:
        raise FastpathError(f"{what}: 'peers' must map each router's address to {{asn: N}}", fix=_FIX)
    peers = []
    for addr_text, conf in peers_raw.items():
        pwhat = f"{what}: peer {addr_text}"
        try:
            addr = ipaddress.ip_address(str(addr_text))
        except ValueError:
            raise FastpathError(f"{pwhat}: not an IPv4 or IPv6 address", fix=_FIX) from None
        if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
            raise FastpathError(f"{pwhat}: not a unicast address of a router", fix=_FIX)
        if not isinstance(conf, dict):
            raise FastpathError(f"{pwhat}: settings must be a mapping with 'asn'", fix=_FIX)
        _check_keys(conf, pwhat, ("asn",))
        if "asn" not in conf:
            raise FastpathError(f"{pwhat}: 'asn' (the router's AS number) is missing", fix=_FIX)
        peers.append(Peer(str(addr), _int(conf["asn"], f"{pwhat}: asn", 1, MAX_ASN)))
    return BgpSpec(asn, tuple(sorted(peers, key=lambda p: (p.ip.version, p.ip))), router_id, hold,
                   keepalive, interval, multiplier)


def _bfd(raw: object, what: str) -> tuple[int | None, int]:
    if raw is False:
        return None, DEFAULT_BFD_MULTIPLIER
    if raw is None or raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise FastpathError(f"{what} must be false or a mapping (interval_ms, multiplier)", fix=_FIX)
    _check_keys(raw, what, ("interval_ms", "multiplier"))
    interval = _int(raw.get("interval_ms", DEFAULT_BFD_INTERVAL_MS), f"{what}: interval_ms", 10, 10000, " ms")
    multiplier = _int(raw.get("multiplier", DEFAULT_BFD_MULTIPLIER), f"{what}: multiplier", 2, 255)
    return interval, multiplier


def check_families(spec: BgpSpec, vips: list[str]) -> None:
    """Every VIP address can reach a router: IPv4 VIPs need an IPv4 peer, IPv6 ones an IPv6 peer."""
    have = spec.families()
    for name in vips:
        version = 6 if name.startswith("[") else 4
        if version not in have:
            raise FastpathError(f"VIP {name} is IPv{version} but no BGP peer is",
                                fix=f"add an IPv{version} peer to the 'bgp' section")


# ---------------------------------------------------------------------------------------
# what to announce


def _serves(vs: VipState) -> bool:
    for b in vs.backends.values():
        if b.drained or b.weight <= 0:
            continue
        if b.health == "up" or (vs.proto == "udp" and b.health != "down"):
            return True
    return False


def announcements(state: LbState) -> dict[str, tuple[bool, str]]:
    """Each VIP address (as a host prefix) -> (announce it?, why), from the state's health."""
    by_addr: dict[str, list[VipState]] = {}
    for vs in state.vips.values():
        ip = ipaddress.ip_address(vs.address)
        by_addr.setdefault(f"{ip}/{ip.max_prefixlen}", []).append(vs)
    out = {}
    for prefix, vss in sorted(by_addr.items()):
        serving = [str(v.id) for v in vss if _serves(v)]
        if serving:
            out[prefix] = (True, f"{', '.join(serving)} served")
        else:
            names = ", ".join(str(v.id) for v in vss)
            out[prefix] = (False, f"no backend of {names} is up")
    return out


# ---------------------------------------------------------------------------------------
# BIRD 2 configuration

STATIC = {4: "vips4", 6: "vips6"}


def peer_name(index: int) -> str:
    return f"peer{index + 1}"


def render(spec: BgpSpec, state: LbState, where: str) -> str:
    """The BIRD 2 configuration of one balancer node: a static protocol per address family
    holding the host routes of the VIP addresses to announce now (a blackhole in BIRD's own
    table only: nothing is written to the kernel), exported to every peer over eBGP."""
    ann = announcements(state)
    lines = [
        f"# BIRD 2 configuration of the balancer on {where}, generated by fastpath from the",
        "# 'bgp' section of the `lb apply` file and the health checks; rewritten and reloaded",
        "# (`configure`) whenever a VIP address is to be announced or withdrawn. Do not edit.",
        "log stderr all;",
    ]
    if spec.router_id:
        lines.append(f"router id {spec.router_id};")
    lines.append("protocol device { scan time 10; }")
    if spec.bfd_interval_ms is not None:
        iv = spec.bfd_interval_ms
        lines += [
            "# BFD: the router declares this node dead after "
            f"{spec.bfd_interval_ms} ms x {spec.bfd_multiplier} = {spec.detection_s:g} s of silence",
            "protocol bfd {",
            f'  interface "*" {{ min rx interval {iv} ms; min tx interval {iv} ms; '
            f"multiplier {spec.bfd_multiplier}; }};",
            "}",
        ]
    for version in sorted(spec.families()):
        lines.append(f"protocol static {STATIC[version]} {{")
        lines.append(f"  ipv{version};")
        for prefix, (on, why) in ann.items():
            if ipaddress.ip_network(prefix).version != version:
                continue
            lines.append(f"  route {prefix} blackhole;   # {why}" if on else f"  # {prefix} withheld: {why}")
        lines.append("}")
    lines += [
        "template bgp fastpath_peer {",
        f"  local as {spec.asn};",
        f"  hold time {spec.hold}; keepalive time {spec.keepalive};",
        "  connect delay time 1; connect retry time 1; error wait time 1, 5;",
        "  # a dead speaker's routes go at once; they must not linger as 'stale' after it",
        "  graceful restart off;",
    ]
    if spec.bfd_interval_ms is not None:
        lines.append("  bfd on;")
    lines.append("}")
    for i, peer in enumerate(spec.peers):
        v = peer.ip.version
        lines += [
            f"protocol bgp {peer_name(i)} from fastpath_peer {{",
            f"  neighbor {peer.address} as {peer.asn};",
            f'  ipv{v} {{ import none; export where proto = "{STATIC[v]}"; }};',
            "}",
        ]
    return "\n".join(lines) + "\n"
