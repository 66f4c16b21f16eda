"""Control plane of bpf/l4lb.c: VIPs, backends and their Maglev rings, through pinned maps.

The desired configuration (VIPs, their backends, weights, drain and health state) lives
in `/run/fastpath/lb/<netns or "root">/<ifname>.json`; every change is validated in full
first (syntax, capacity, backend MAC resolution), then written to the maps, then saved, all
under a lock so `fastpath lb` commands and the health checker never interleave. A VIP's
Maglev table is written into its idle ring and made live by replacing the VIP's map
entry in one step, so the data plane never sees a half-written table.

Mirrors bpf/l4lb.h as ctypes Structures (tests/bpf/test_l4lb.py checks them against bcc's
decoded types) and the data plane's flow hash (for `lb explain` and the golden tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import socket
import struct
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastpath.apps.lb import maglev
from fastpath.bpf import syscall, xdp
from fastpath.bpf.loader import LoadedProgram, ProgramSpec
from fastpath.bpf.maps import TypedMap
from fastpath.core.args import parse_port
from fastpath.core.jsonstate import write_json
from fastpath.errors import FastpathError

# Tunables of bpf/l4lb.c (its #ifndef defaults), passed as -D flags: the one Python copy.
TUNABLES: dict[str, int] = {
    "LB_MAX_VIPS": 32,
    "LB_MAX_BACKENDS": 4096,
    "LB_RING_SIZE": maglev.DEFAULT_TABLE_SIZE,
    "LB_CONNTRACK_SIZE": 131072,
    "LB_HASH_SEED": 0,
    "LB_UDP_TIMEOUT": 30,              # seconds idle before a flow is forgotten: UDP,
    "LB_TCP_TIMEOUT": 300,             # TCP,
    "LB_CLOSING_TIMEOUT": 10,          # TCP after a FIN (a RST ends it at once)
    "LB_MAX_PACKET": 1500,
    "LB_IPIP_V4_PREFIX": 0xAC10,       # outer IPv4 sources 172.16.x.y
    "LB_IPIP_V6_PREFIX": 0x01000000,   # outer IPv6 sources 100::x:y (discard prefix)
}
MAPS = ("vips", "vip_addrs", "rings", "backends", "conntrack", "nat_reverse", "vip_stats",
        "backend_stats", "stats", "config")
SPEC = ProgramSpec(name="l4lb", entry="l4lb", maps=MAPS, defaults=TUNABLES, command="fastpath lb",
                   chain_slot=1)

# enum lb_mode
MODES: dict[str, int] = {"dsr": 0, "nat": 1, "ipip": 2}
PROTOS: dict[str, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
HASHES = ("5tuple", "src")
LB_VIP_F_HASH_SRC_ONLY = 0x1
LB_BACKEND_F_EXISTS = 0x1
LB_FLOW_F_CLOSING = 0x1
# Seconds of the flow timeouts: they change no map, so a hot reload may change them.
TIMEOUTS = ("LB_UDP_TIMEOUT", "LB_TCP_TIMEOUT", "LB_CLOSING_TIMEOUT")
MAX_TIMEOUT = 7 * 86400
LB_NO_BACKEND = 0xFFFFFFFF
# enum lb_stat, in order
STAT_NAMES = ("pass_not_ip", "pass_non_vip", "pass_malformed", "pass_icmp", "nat_reverse",
              "icmp_forwarded", "drop_fragment", "drop_malformed", "drop_unsupported",
              "drop_no_backend", "drop_too_big", "drop_error", "icmp_reverse", "flow_reset",
              "flow_expired")
LB_STAT_MAX = len(STAT_NAMES)
MAX_WEIGHT = maglev.MAX_WEIGHT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------
# bpf/l4lb.h mirror

_Addr = ctypes.c_uint8 * 16


class VipKey(ctypes.Structure):
    _fields_ = [("addr", _Addr), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("family", ctypes.c_uint8)]


class Vip(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("mode", ctypes.c_uint8),
                ("ring", ctypes.c_uint8), ("backends", ctypes.c_uint16)]


class AddrKey(ctypes.Structure):
    _fields_ = [("addr", _Addr), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class Backend(ctypes.Structure):
    _fields_ = [("addr", _Addr), ("port", ctypes.c_uint16), ("family", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("mac", ctypes.c_uint8 * 6), ("vip", ctypes.c_uint16)]


class FlowKey(ctypes.Structure):
    _fields_ = [("src", _Addr), ("dst", _Addr), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("family", ctypes.c_uint8),
                ("pad", ctypes.c_uint16)]


class Flow(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_uint32), ("flags", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3),
                ("atime", ctypes.c_uint64)]


class VipStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("packets", "bytes", "new_flows", "lru_hits", "lru_misses", "no_backend")]


class BackendStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("packets", "bytes", "new_flows")]


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class Config(ctypes.Structure):
    _fields_ = [("nat_vips", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


# map name -> (key type, value type): what the header declares for each map.
MAP_TYPES: dict[str, tuple[type[Any], type[Any]]] = {
    "vips": (VipKey, Vip),
    "vip_addrs": (AddrKey, ctypes.c_uint32),
    "rings": (ctypes.c_uint32, ctypes.c_uint32),
    "backends": (ctypes.c_uint32, Backend),
    "conntrack": (FlowKey, Flow),
    "nat_reverse": (FlowKey, VipKey),
    "vip_stats": (ctypes.c_uint32, VipStats),
    "backend_stats": (ctypes.c_uint32, BackendStats),
    "stats": (ctypes.c_uint32, Counter),
    "config": (ctypes.c_uint32, Config),
}

# ---------------------------------------------------------------------------------------
# the data plane's flow hash (jhash, include/linux/jhash.h), for explain and tests

_M32 = 0xFFFFFFFF
_JHASH_INITVAL = 0xDEADBEEF


def _rol(w: int, s: int) -> int:
    return ((w << s) | (w >> (32 - s))) & _M32


def _jhash_final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & _M32
    a ^= c
    a = (a - _rol(c, 11)) & _M32
    b ^= a
    b = (b - _rol(a, 25)) & _M32
    c ^= b
    c = (c - _rol(b, 16)) & _M32
    a ^= c
    a = (a - _rol(c, 4)) & _M32
    b ^= a
    b = (b - _rol(a, 14)) & _M32
    c ^= b
    c = (c - _rol(b, 24)) & _M32
    return c


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rol(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rol(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol(b, 4)
    b = (b + a) & _M32
    return a, b, c


def jhash_2words(a: int, b: int, initval: int) -> int:
    iv = (initval + _JHASH_INITVAL + (2 << 2)) & _M32
    return _jhash_final((a + iv) & _M32, (b + iv) & _M32, iv)


def jhash_4words(k: tuple[int, ...], initval: int) -> int:
    a = b = c = (_JHASH_INITVAL + (4 << 2) + initval) & _M32
    a, b, c = _jhash_mix((a + k[0]) & _M32, (b + k[1]) & _M32, (c + k[2]) & _M32)
    return _jhash_final((a + k[3]) & _M32, b, c)


def flow_hash(client: IPAddress, sport: int, dport: int, *, src_only: bool = False,
              seed: int = 0) -> int:
    """The hash the data plane takes the Maglev slot from (slot = hash % table size).

    Words are read as the little-endian CPU sees packet bytes, as in bpf/l4lb.c.
    """
    seed &= _M32
    ports = 0 if src_only else int.from_bytes(struct.pack("!HH", sport, dport), "little")
    if client.version == 4:
        src = int.from_bytes(client.packed, "little")
    else:
        src = jhash_4words(struct.unpack("<4I", client.packed), seed)
    return jhash_2words(src, ports, seed)


def ipip_source(client: IPAddress, sport: int, tunables: Mapping[str, int] = TUNABLES) -> IPAddress:
    """The outer source address ipip gives a client's packets (prefix + flow entropy)."""
    if client.version == 4:
        entropy = (int(client) ^ sport) & 0xFFFF
        return ipaddress.IPv4Address((tunables["LB_IPIP_V4_PREFIX"] << 16) | entropy)
    last = (int(client) & _M32) ^ sport
    return ipaddress.IPv6Address((tunables["LB_IPIP_V6_PREFIX"] << 96) | last)


# ---------------------------------------------------------------------------------------
# VIP and backend syntax

_VIP_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:/\[\]]+)):(?P<port>[^/]+)/(?P<proto>.+)$")
_VIP_FIX = "write ADDR:PORT/PROTO, e.g. 10.0.0.10:80/tcp or [fd00::10]:443/udp"
_BACKEND_FIX = "write ADDR or ADDR:PORT, e.g. 10.0.0.21, 10.0.0.21:8080, [fd00::21]:8080"
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def fmt_addr_port(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True, order=True)
class VipId:
    """One VIP: address, port and protocol, written ADDR:PORT/PROTO."""

    address: IPAddress
    port: int
    proto: str

    def __str__(self) -> str:
        return f"{fmt_addr_port(self.address, self.port)}/{self.proto}"

    def key(self) -> VipKey:
        k = VipKey()
        k.addr[:] = self.address.packed.ljust(16, b"\0")
        k.port = socket.htons(self.port)
        k.proto = PROTOS[self.proto]
        k.family = self.address.version
        return k


def _address(text: str, what: str, fix: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise FastpathError(f"bad {what}: {text!r} is not an IPv4 or IPv6 address", fix=fix) from None
    if addr.is_multicast or addr.is_unspecified or (addr.version == 4 and addr == ipaddress.IPv4Address(
            "255.255.255.255")):
        raise FastpathError(f"bad {what}: {addr} is not a unicast address", fix=fix)
    return addr


def parse_vip(text: str) -> VipId:
    """ADDR:PORT/PROTO (IPv6 in brackets) -> VipId; one-line error naming what is wrong."""
    m = _VIP_RE.match(text.strip())
    if not m:
        raise FastpathError(f"bad VIP {text!r}", fix=_VIP_FIX)
    what = f"VIP {text!r}"
    raw = m.group("v6") or m.group("v4")
    addr = _address(raw, what, _VIP_FIX)
    if m.group("v4") and addr.version == 6:
        raise FastpathError(f"bad {what}: put IPv6 addresses in brackets", fix=_VIP_FIX)
    proto = m.group("proto").lower()
    if proto not in PROTOS:
        raise FastpathError(f"bad {what}: protocol {m.group('proto')!r} is not tcp or udp", fix=_VIP_FIX)
    return VipId(addr, parse_port(m.group("port"), what, _VIP_FIX), proto)


def parse_backend(text: str) -> tuple[IPAddress, int | None]:
    """ADDR or ADDR:PORT (IPv6: bare, or in brackets with a port) -> (address, port or None)."""
    text = text.strip()
    what = f"backend {text!r}"
    if text.startswith("["):
        m = re.match(r"^\[([^\]]+)\](?::(.*))?$", text)
        if not m:
            raise FastpathError(f"bad {what}", fix=_BACKEND_FIX)
        addr = _address(m.group(1), what, _BACKEND_FIX)
        port = parse_port(m.group(2), what, _BACKEND_FIX) if m.group(2) is not None else None
        return addr, port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        addr = _address(host, what, _BACKEND_FIX)
        return addr, parse_port(port_text, what, _BACKEND_FIX)
    return _address(text, what, _BACKEND_FIX), None


def check_weight(weight: int, what: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise FastpathError(f"{what}: weight {weight!r} out of range 1-{MAX_WEIGHT}",
                            fix="give an integer weight; use 'backend drain' to stop new flows")
    return weight


def check_mac(mac: str, what: str) -> str:
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise FastpathError(f"{what}: bad MAC address {mac!r}", fix="write it as 02:00:00:00:00:01")
    return mac.lower()


# ---------------------------------------------------------------------------------------
# desired state


@dataclass
class BackendState:
    address: str
    port: int            # destination port (nat) or the VIP's port (dsr, ipip)
    weight: int
    id: int
    mac: str
    drained: bool = False
    health: str = "unknown"   # "up", "down" (drained by health checks) or "unknown"

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def name(self) -> str:
        """The backend's identity in the Maglev table: ADDR:PORT, the same on every node."""
        return fmt_addr_port(self.ip, self.port)

    @property
    def effective_weight(self) -> int:
        return 0 if self.drained or self.health == "down" else self.weight

    @property
    def status(self) -> str:
        if self.drained:
            return "drained"
        if self.health == "down":
            return "down"
        return "active"


@dataclass
class VipState:
    address: str
    port: int
    proto: str
    mode: str
    index: int
    hash: str = "5tuple"
    ring: int = 0
    backends: dict[str, BackendState] = field(default_factory=dict)

    @property
    def id(self) -> VipId:
        return VipId(ipaddress.ip_address(self.address), self.port, self.proto)

    @property
    def flags(self) -> int:
        return LB_VIP_F_HASH_SRC_ONLY if self.hash == "src" else 0

    def weights(self) -> dict[str, int]:
        return {b.name: b.effective_weight for b in self.backends.values()}


@dataclass
class LbState:
    seed: int = 0
    table_size: int = maglev.DEFAULT_TABLE_SIZE
    max_vips: int = TUNABLES["LB_MAX_VIPS"]
    max_backends: int = TUNABLES["LB_MAX_BACKENDS"]
    next_vip: int = 0
    next_backend: int = 0
    vips: dict[str, VipState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LbState:
        vips = {}
        for name, v in data.get("vips", {}).items():
            backends = {n: BackendState(**b) for n, b in v.get("backends", {}).items()}
            vips[name] = VipState(**{**v, "backends": backends})
        return cls(**{**data, "vips": vips})

    @classmethod
    def for_defines(cls, defines: Mapping[str, int | str]) -> LbState:
        d = {**TUNABLES, **defines}
        return cls(seed=int(d["LB_HASH_SEED"]), table_size=int(d["LB_RING_SIZE"]),
                   max_vips=int(d["LB_MAX_VIPS"]), max_backends=int(d["LB_MAX_BACKENDS"]))


def predict(state: LbState, vip: VipId, client: IPAddress, sport: int) -> str | None:
    """The backend (name) the Maglev ring gives a new flow, computed from the config alone:
    what every node of a fleet with this config and seed would pick."""
    vs = state.vips.get(str(vip))
    if vs is None:
        return None
    weights = vs.weights()
    table = maglev.build_table(weights, state.table_size, state.seed)
    slot = flow_hash(client, sport, vip.port, src_only=vs.hash == "src", seed=state.seed) % state.table_size
    return None if table[slot] == maglev.NO_BACKEND else sorted(weights)[table[slot]]


# ---------------------------------------------------------------------------------------
# maps


def write_u32_array(fd: int, first: int, values: array[int]) -> None:
    """Write values[i] at key first + i of a u32 -> u32 array map: one BPF_MAP_UPDATE_BATCH
    (kernel 5.6+) where possible, element by element otherwise."""
    keys = array("I", range(first, first + len(values)))
    kaddr, _ = keys.buffer_info()
    vaddr, _ = values.buffer_info()
    done = 0
    while done < len(values):
        written, err = syscall.map_update_batch(fd, kaddr + 4 * done, vaddr + 4 * done, len(values) - done)
        if not err:
            return
        done += written
        if written == 0:
            if err not in _NO_BATCH:
                raise syscall.BpfError(err, "map update batch")
            break
    k = ctypes.c_uint32()
    v = ctypes.c_uint32()
    for i in range(done, len(values)):
        k.value = first + i
        v.value = values[i]
        syscall.map_update(fd, k, v)  # type: ignore[arg-type]  # any ctypes object is a buffer to bpf(2)


# errnos of a kernel without batch operations for the map type (524: ENOTSUPP, kernel-only)
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)


class LbMaps:
    """The program's maps as typed maps, from bpffs pins or from a loaded program."""

    def __init__(self, fds: Mapping[str, int]) -> None:
        self.maps: dict[str, TypedMap[Any, Any]] = {}
        try:
            for name in MAPS:
                key, value = MAP_TYPES[name]
                self.maps[name] = TypedMap(fds[name], key, value, name=name)
        except Exception:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        self.ring_size = self.maps["rings"].info.max_entries // (2 * self.maps["vip_stats"].info.max_entries)

    @classmethod
    def from_attachment(cls, att: xdp.Attachment) -> LbMaps:
        fds: dict[str, int] = {}
        for name in MAPS:
            try:
                fds[name] = syscall.obj_get(att.map_path(name))
            except syscall.BpfError as exc:
                for fd in fds.values():
                    os.close(fd)
                raise FastpathError(f"cannot open pinned map {att.map_path(name)}: {exc.reason}",
                                    fix="re-attach: fastpath lb attach " + att.ifname) from exc
        return cls(fds)

    @classmethod
    def from_program(cls, prog: LoadedProgram) -> LbMaps:
        return cls({name: os.dup(prog.map_fd(name)) for name in MAPS})

    def __getitem__(self, name: str) -> TypedMap[Any, Any]:
        return self.maps[name]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> LbMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# backend MAC resolution

NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20


def resolve_mac(address: IPAddress, ifname: str, netns: str | None, timeout: float = 3.0) -> str:
    """The MAC frames to `address` must carry out of `ifname`: the backend's own when it is
    on the link, its gateway's otherwise. Probes (one UDP datagram to the discard port makes
    the kernel resolve the neighbour) when the neighbour table has no usable entry."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    where = f"{ifname} in {netns}" if netns else ifname
    fam = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with xdp.in_netns(netns):
        ipr = IPRoute()
        sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise FastpathError(f"unknown interface {ifname!r}", fix="see 'ip link'")
        try:
            route = ipr.route("get", dst=str(address))[0]
        except NetlinkError as exc:
            raise FastpathError(f"backend {address}: no route to it from {where} ({os.strerror(exc.code)})",
                                fix="add an address on that segment or a route, or give --mac") from None
        if route["type"] == 2:  # RTN_LOCAL
            raise FastpathError(f"backend {address} is an address of the balancer itself",
                                fix="use the backend's own address")
        if route.get_attr("RTA_OIF") != idx[0]:
            raise FastpathError(f"backend {address} is not reachable through {where}",
                                fix="XDP sends balanced packets back out the interface they came in on; "
                                    "put backends on that segment or route them via it")
        hop = route.get_attr("RTA_GATEWAY") or str(address)
        deadline = time.monotonic() + timeout
        next_probe = 0.0
        while True:
            for n in ipr.get_neighbours(ifindex=idx[0], dst=hop):
                mac = n.get_attr("NDA_LLADDR")
                if mac and n["state"] not in (0, NUD_INCOMPLETE, NUD_FAILED):
                    return str(mac).lower()
            now = time.monotonic()
            if now >= deadline:
                raise FastpathError(f"backend {address}: cannot resolve its MAC address on {where}"
                                    + (f" (gateway {hop})" if hop != str(address) else ""),
                                    fix="check the backend is up on that segment, or give it with --mac")
            if now >= next_probe:
                with contextlib.suppress(OSError):
                    target: tuple[Any, ...] = (hop, 9) if fam == socket.AF_INET else (hop, 9, 0, idx[0])
                    sock.sendto(b"", target)
                next_probe = now + 0.5
            time.sleep(0.02)
    finally:
        ipr.close()
        sock.close()


# ---------------------------------------------------------------------------------------
# declarative config (`fastpath lb apply`)


@dataclass(frozen=True)
class BackendSpec:
    address: IPAddress
    port: int | None
    weight: int = 1
    drained: bool = False
    mac: str | None = None


@dataclass(frozen=True)
class VipSpec:
    vip: VipId
    mode: str = "dsr"
    hash: str = "5tuple"
    backends: tuple[BackendSpec, ...] = ()


def _mode(mode: object, what: str) -> str:
    if mode not in MODES:
        raise FastpathError(f"{what}: unknown mode {mode!r}", fix="use dsr, nat or ipip")
    return str(mode)


def _hash(value: object, what: str) -> str:
    if value not in HASHES:
        raise FastpathError(f"{what}: unknown hash {value!r}", fix="use 5tuple or src")
    return str(value)


def parse_config(data: object, source: str = "config") -> list[VipSpec]:
    """The `lb apply` file:

        vips:
          10.0.0.10:80/tcp:
            mode: nat            # dsr (default), nat or ipip
            hash: 5tuple         # or src: the client address only
            backends:
              10.0.1.21:8080: {weight: 3}
              10.0.1.22:8080: {drain: true, mac: "02:00:00:00:01:22"}
              10.0.1.23:8080:    # weight 1
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FastpathError(f"{source}: the top level must be a mapping with 'vips'")
    unknown = set(data) - {"vips"}
    if unknown:
        raise FastpathError(f"{source}: unknown key {sorted(unknown)[0]!r}", fix="only 'vips' is allowed")
    vips_raw = data.get("vips")
    vips_raw = {} if vips_raw is None else vips_raw
    if not isinstance(vips_raw, dict):
        raise FastpathError(f"{source}: 'vips' must be a mapping of ADDR:PORT/PROTO to settings")
    out: list[VipSpec] = []
    seen: set[VipId] = set()
    for text, conf in vips_raw.items():
        vip = parse_vip(str(text))
        what = f"{source}: VIP {vip}"
        if vip in seen:
            raise FastpathError(f"{what} appears twice")
        seen.add(vip)
        conf = conf or {}
        if not isinstance(conf, dict):
            raise FastpathError(f"{what}: settings must be a mapping")
        bad = set(conf) - {"mode", "hash", "backends"}
        if bad:
            raise FastpathError(f"{what}: unknown key {sorted(bad)[0]!r}", fix="use mode, hash, backends")
        mode = _mode(conf.get("mode", "dsr"), what)
        hsh = _hash(conf.get("hash", "5tuple"), what)
        braw = conf.get("backends")
        braw = {} if braw is None else braw
        if not isinstance(braw, dict):
            raise FastpathError(f"{what}: 'backends' must be a mapping of ADDR[:PORT] to settings")
        backends = []
        names: set[str] = set()
        for btext, bconf in braw.items():
            addr, port = parse_backend(str(btext))
            bwhat = f"{what}: backend {btext}"
            if bconf is None:
                bconf = {}
            elif isinstance(bconf, int) and not isinstance(bconf, bool):
                bconf = {"weight": bconf}
            if not isinstance(bconf, dict):
                raise FastpathError(f"{bwhat}: settings must be a mapping (weight, drain, mac)")
            bad = set(bconf) - {"weight", "drain", "mac"}
            if bad:
                raise FastpathError(f"{bwhat}: unknown key {sorted(bad)[0]!r}", fix="use weight, drain, mac")
            drain = bconf.get("drain", False)
            if not isinstance(drain, bool):
                raise FastpathError(f"{bwhat}: drain must be true or false")
            spec = BackendSpec(addr, port, check_weight(bconf.get("weight", 1), bwhat), drain,
                               check_mac(bconf["mac"], bwhat) if "mac" in bconf else None)
            name = backend_name(vip, mode, addr, port)
            if name in names:
                raise FastpathError(f"{what}: backend {name} appears twice")
            names.add(name)
            check_backend(vip, mode, addr, port)
            backends.append(spec)
        out.append(VipSpec(vip, mode, hsh, tuple(backends)))
    return out


def backend_port(vip: VipId, mode: str, port: int | None) -> int:
    return port if (port is not None and mode == "nat") else vip.port


def backend_name(vip: VipId, mode: str, addr: IPAddress, port: int | None) -> str:
    return fmt_addr_port(addr, backend_port(vip, mode, port))


def check_backend(vip: VipId, mode: str, addr: IPAddress, port: int | None) -> None:
    what = f"backend {fmt_addr_port(addr, port) if port else addr} of VIP {vip}"
    if addr.version != vip.address.version:
        raise FastpathError(f"{what}: address family differs from the VIP's",
                            fix="IPv4 VIPs take IPv4 backends, IPv6 VIPs IPv6 ones")
    if port is not None and mode != "nat" and port != vip.port:
        raise FastpathError(f"{what}: {mode} cannot change the port ({port} != {vip.port})",
                            fix="give no port, or use --mode nat for port translation")


# ---------------------------------------------------------------------------------------
# the balancer


MacResolver = Callable[[IPAddress], str]


class Balancer:
    """VIPs and backends of one attached program: validates, then writes maps and state."""

    def __init__(self, maps: LbMaps, state: LbState, resolver: MacResolver,
                 defines: Mapping[str, int | str] | None = None) -> None:
        self.maps = maps
        self.state = state
        self.resolver = resolver
        # The program's flow timeouts (seconds), for `explain`.
        self.timeouts = {k: int({**TUNABLES, **(defines or {})}[k]) for k in TIMEOUTS}
        if maps.ring_size != state.table_size:
            raise FastpathError(f"the program's rings hold {maps.ring_size} slots, the state says "
                                f"{state.table_size}", fix="detach and attach again")

    # -- lookups ---------------------------------------------------------------------------

    def vip(self, vip: VipId) -> VipState:
        state = self.state.vips.get(str(vip))
        if state is None:
            raise FastpathError(f"unknown VIP {vip}", fix="see 'fastpath lb vip list'")
        return state

    def backend(self, vip: VipId, addr: IPAddress, port: int | None) -> BackendState:
        vs = self.vip(vip)
        name = backend_name(vip, vs.mode, addr, port)
        b = vs.backends.get(name)
        if b is None:
            raise FastpathError(f"VIP {vip} has no backend {name}",
                                fix=f"see 'fastpath lb backend list {vip}'")
        return b

    # -- writing the data plane ------------------------------------------------------------

    def _alloc(self, used: set[int], limit: int, start: int, what: str) -> int:
        # Round-robin from the last allocation, so a freed id is reused as late as possible
        # (stale conntrack entries then never meet a new owner of their id).
        for i in range(limit):
            cand = (start + i) % limit
            if cand not in used:
                return cand
        raise FastpathError(f"no room for another {what} (the program holds {limit})",
                            fix="remove one, or detach and attach with a larger limit")

    def _vip_value(self, vs: VipState) -> Vip:
        live = sum(1 for b in vs.backends.values() if b.effective_weight > 0)
        return Vip(index=vs.index, flags=vs.flags, mode=MODES[vs.mode], ring=vs.ring, backends=live)

    def _write_backend(self, vs: VipState, b: BackendState) -> None:
        v = Backend()
        v.addr[:] = b.ip.packed.ljust(16, b"\0")
        v.port = socket.htons(b.port) if vs.mode == "nat" else 0
        v.family = b.ip.version
        v.flags = LB_BACKEND_F_EXISTS
        v.mac[:] = bytes.fromhex(b.mac.replace(":", ""))
        v.vip = vs.index
        self.maps["backends"].set(ctypes.c_uint32(b.id), v)

    def table(self, vs: VipState) -> list[int]:
        """The VIP's Maglev table as backend ids (LB_NO_BACKEND for empty slots)."""
        weights = vs.weights()
        order = sorted(weights)
        ids = [vs.backends[n].id for n in order]
        raw = maglev.build_table(weights, self.state.table_size, self.state.seed)
        return [ids[i] if i != maglev.NO_BACKEND else LB_NO_BACKEND for i in raw]

    def _publish(self, vs: VipState) -> None:
        """Write the VIP's table into its idle ring, then flip the VIP entry to it."""
        cur = self.maps["vips"].get(vs.id.key())
        live_ring = cur.ring if cur is not None else vs.ring
        ring = 1 - (live_ring & 1)
        base = (vs.index * 2 + ring) * self.state.table_size
        write_u32_array(self.maps["rings"].fd, base, array("I", self.table(vs)))
        vs.ring = ring
        self.maps["vips"].set(vs.id.key(), self._vip_value(vs))

    def _sync_addresses(self) -> None:
        counts: dict[tuple[bytes, int], int] = {}
        nat = 0
        for vs in self.state.vips.values():
            ip = ipaddress.ip_address(vs.address)
            k = (ip.packed.ljust(16, b"\0"), ip.version)
            counts[k] = counts.get(k, 0) + 1
            nat += vs.mode == "nat"
        m = self.maps["vip_addrs"]
        for key in list(m.keys()):
            if (bytes(key.addr), key.family) not in counts:
                m.delete(key)
        for (addr, fam), n in counts.items():
            akey = AddrKey()
            akey.addr[:] = addr
            akey.family = fam
            m.set(akey, ctypes.c_uint32(n))
        self.maps["config"].set(ctypes.c_uint32(0), Config(nat_vips=nat))

    def _zero_stats(self, name: str, index: int, cls: type[Any]) -> None:
        m = self.maps[name]
        m.set_percpu(ctypes.c_uint32(index), [cls() for _ in range(m.ncpus)])

    # -- VIPs -------------------------------------------------------------------------------

    def _check_new_vip(self, vip: VipId, mode: str, hash_: str) -> None:
        _mode(mode, f"VIP {vip}")
        _hash(hash_, f"VIP {vip}")
        if str(vip) in self.state.vips:
            raise FastpathError(f"VIP {vip} already exists",
                                fix="delete it first, or change it with 'fastpath lb apply CONFIG.yaml'")

    def add_vip(self, vip: VipId, mode: str = "dsr", hash_: str = "5tuple") -> VipState:
        self._check_new_vip(vip, mode, hash_)
        used = {v.index for v in self.state.vips.values()}
        index = self._alloc(used, self.state.max_vips, self.state.next_vip, "VIP")
        return self._insert_vip(vip, mode, hash_, index)

    def _insert_vip(self, vip: VipId, mode: str, hash_: str, index: int) -> VipState:
        vs = VipState(str(vip.address), vip.port, vip.proto, mode, index, hash_)
        self.state.next_vip = (index + 1) % self.state.max_vips
        self._zero_stats("vip_stats", index, VipStats)
        self.state.vips[str(vip)] = vs
        self._sync_addresses()
        self.maps["vips"].set(vip.key(), self._vip_value(vs))
        return vs

    def del_vip(self, vip: VipId) -> VipState:
        vs = self.vip(vip)
        self.maps["vips"].delete(vip.key())
        del self.state.vips[str(vip)]
        self._sync_addresses()
        for b in vs.backends.values():
            self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        return vs

    # -- backends ---------------------------------------------------------------------------

    def _backend_ids(self) -> set[int]:
        return {b.id for v in self.state.vips.values() for b in v.backends.values()}

    def _new_backend(self, vs: VipState, addr: IPAddress, port: int | None, weight: int,
                     mac: str | None, drained: bool, taken: set[int]) -> BackendState:
        """Validate and build (not write) a backend; resolving its MAC is the last check."""
        vip = vs.id
        check_backend(vip, vs.mode, addr, port)
        name = backend_name(vip, vs.mode, addr, port)
        check_weight(weight, f"backend {name}")
        if name in vs.backends:
            raise FastpathError(f"VIP {vip} already has backend {name}",
                                fix="change it with 'fastpath lb backend weight VIP BACKEND N' "
                                    "or '... drain'")
        bid = self._alloc(taken, self.state.max_backends, self.state.next_backend, "backend")
        mac = check_mac(mac, f"backend {name}") if mac is not None else self.resolver(addr)
        taken.add(bid)
        self.state.next_backend = (bid + 1) % self.state.max_backends
        return BackendState(str(addr), backend_port(vip, vs.mode, port), weight, bid, mac, drained)

    def add_backend(self, vip: VipId, addr: IPAddress, port: int | None = None, weight: int = 1,
                    mac: str | None = None) -> BackendState:
        vs = self.vip(vip)
        b = self._new_backend(vs, addr, port, weight, mac, False, self._backend_ids())
        self._zero_stats("backend_stats", b.id, BackendStats)
        self._write_backend(vs, b)
        vs.backends[b.name] = b
        self._publish(vs)
        return b

    def del_backend(self, vip: VipId, addr: IPAddress, port: int | None = None) -> BackendState:
        vs = self.vip(vip)
        b = self.backend(vip, addr, port)
        del vs.backends[b.name]
        self._publish(vs)  # out of the ring first, then gone: pinned flows re-pick
        self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        return b

    def set_drained(self, vip: VipId, addr: IPAddress, port: int | None, drained: bool) -> BackendState:
        b = self.backend(vip, addr, port)
        if b.drained != drained:
            b.drained = drained
            self._publish(self.vip(vip))
        return b

    def set_weight(self, vip: VipId, addr: IPAddress, port: int | None, weight: int) -> BackendState:
        b = self.backend(vip, addr, port)
        check_weight(weight, f"backend {b.name}")
        if b.weight != weight:
            b.weight = weight
            self._publish(self.vip(vip))
        return b

    def set_health(self, vip_name: str, backend_name_: str, up: bool) -> bool:
        """Record a health verdict; True when it changed what the ring holds."""
        vs = self.state.vips.get(vip_name)
        b = vs.backends.get(backend_name_) if vs else None
        if vs is None or b is None:
            return False
        health = "up" if up else "down"
        if b.health == health:
            return False
        before = b.effective_weight
        b.health = health
        if before != b.effective_weight:
            self._publish(vs)
            return True
        return False

    def sync(self) -> None:
        """Write every VIP, backend and ring from the state (after re-creating the maps)."""
        wanted = {bytes(v.id.key()) for v in self.state.vips.values()}
        for key in list(self.maps["vips"].keys()):
            if bytes(key) not in wanted:
                self.maps["vips"].delete(key)
        self._sync_addresses()
        for vs in self.state.vips.values():
            for b in vs.backends.values():
                self._write_backend(vs, b)
            self._publish(vs)

    # -- declarative ------------------------------------------------------------------------

    def apply(self, specs: list[VipSpec]) -> list[str]:
        """Make the state equal `specs`, touching only what differs; returns the changes.

        Everything is validated (capacity and MAC resolution included) before the first
        map write, so a bad config applies nothing.
        """
        want = {str(s.vip): s for s in specs}
        changes: list[str] = []
        drop_vips = [n for n in self.state.vips if n not in want or
                     (self.state.vips[n].mode, self.state.vips[n].hash) != (want[n].mode, want[n].hash)]
        keep_indices = {v.index for n, v in self.state.vips.items() if n not in drop_vips}
        new_vips = [s for n, s in want.items() if n not in self.state.vips or n in drop_vips]
        if len(keep_indices) + len(new_vips) > self.state.max_vips:
            raise FastpathError(f"the config has {len(want)} VIPs, the program holds {self.state.max_vips}",
                                fix="detach and attach with a larger --max-vips")
        # Plan: every new backend validated and its MAC resolved before anything is written.
        taken = self._backend_ids()
        saved_next = self.state.next_backend
        plan_new: dict[str, list[BackendState]] = {}
        try:
            for name, spec in want.items():
                existing = self.state.vips.get(name)
                fresh = existing is None or name in drop_vips
                probe = VipState(str(spec.vip.address), spec.vip.port, spec.vip.proto, spec.mode, 0,
                                 spec.hash, 0, {} if fresh or existing is None else dict(existing.backends))
                for bs in spec.backends:
                    bname = backend_name(spec.vip, spec.mode, bs.address, bs.port)
                    if bname in probe.backends:
                        continue
                    plan_new.setdefault(name, []).append(
                        self._new_backend(probe, bs.address, bs.port, bs.weight, bs.mac, bs.drained, taken))
        except BaseException:
            self.state.next_backend = saved_next
            raise
        # Execute.
        for name in drop_vips:
            self.del_vip(self.state.vips[name].id)
            changes.append(f"removed VIP {name}" if name not in want else f"re-created VIP {name}")
        for name, spec in want.items():
            vs = self.state.vips.get(name)
            if vs is None:
                vs = self.add_vip(spec.vip, spec.mode, spec.hash)
                if name not in drop_vips:
                    changes.append(f"added VIP {name} ({spec.mode})")
            wanted = {backend_name(spec.vip, spec.mode, b.address, b.port): b for b in spec.backends}
            removed = [vs.backends.pop(n) for n in list(vs.backends) if n not in wanted]
            changes.extend(f"removed backend {b.name} from {name}" for b in removed)
            dirty = bool(removed)
            for b in plan_new.get(name, []):
                self._zero_stats("backend_stats", b.id, BackendStats)
                self._write_backend(vs, b)
                vs.backends[b.name] = b
                changes.append(f"added backend {b.name} to {name} (weight {b.weight}"
                               + (", drained)" if b.drained else ")"))
                dirty = True
            for bname, bs in wanted.items():
                b = vs.backends[bname]
                if b.weight != bs.weight:
                    changes.append(f"weight of {bname} in {name}: {b.weight} -> {bs.weight}")
                    b.weight = bs.weight
                    dirty = True
                if b.drained != bs.drained:
                    changes.append(f"{'drained' if bs.drained else 'undrained'} {bname} in {name}")
                    b.drained = bs.drained
                    dirty = True
                if bs.mac is not None and bs.mac != b.mac:
                    changes.append(f"MAC of {bname} in {name}: {b.mac} -> {bs.mac}")
                    b.mac = bs.mac
                    self._write_backend(vs, b)
            if dirty:
                self._publish(vs)
            # Out of the ring first, then gone: flows pinned to them pick a new backend.
            for b in removed:
                self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        return changes

    # -- reading ---------------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """The global counters (enum lb_stat), summed over CPUs."""
        m = self.maps["stats"]
        return {name: m.sum_percpu(ctypes.c_uint32(i)) for i, name in enumerate(STAT_NAMES)}

    def vip_counters(self, vs: VipState) -> dict[str, int]:
        return self.maps["vip_stats"].sum_percpu(ctypes.c_uint32(vs.index))

    def backend_counters(self, b: BackendState) -> dict[str, int]:
        return self.maps["backend_stats"].sum_percpu(ctypes.c_uint32(b.id))

    def stats(self) -> dict[str, Any]:
        """Every VIP with its counters and its backends' (status, Maglev share, counters)."""
        vips = []
        for name, vs in sorted(self.state.vips.items(), key=lambda kv: kv[1].index):
            table = self.table(vs)
            slots: dict[int, int] = {}
            for bid in table:
                slots[bid] = slots.get(bid, 0) + 1
            backends = []
            for bname, b in sorted(vs.backends.items()):
                backends.append({"backend": bname, "id": b.id, "weight": b.weight, "status": b.status,
                                 "health": b.health, "mac": b.mac, "slots": slots.get(b.id, 0),
                                 "share": round(100.0 * slots.get(b.id, 0) / len(table), 2),
                                 **self.backend_counters(b)})
            vips.append({"vip": name, "mode": vs.mode, "hash": vs.hash, "index": vs.index,
                         **self.vip_counters(vs), "backends": backends})
        return {"vips": vips, "counters": self.counters()}

    def explain(self, client: IPAddress, sport: int, vip: VipId) -> dict[str, Any]:
        """Which backend a flow from client:sport to `vip` gets, and why."""
        vs = self.vip(vip)
        if client.version != vip.address.version:
            raise FastpathError(f"client {client} and VIP {vip} are of different address families")
        by_id = {b.id: b for b in vs.backends.values()}
        key = FlowKey()
        key.src[:] = client.packed.ljust(16, b"\0")
        key.dst[:] = vip.address.packed.ljust(16, b"\0")
        key.sport = socket.htons(sport)
        key.dport = socket.htons(vip.port)
        key.proto = PROTOS[vip.proto]
        key.family = vip.address.version
        h = flow_hash(client, sport, vip.port, src_only=vs.hash == "src", seed=self.state.seed)
        slot = h % self.state.table_size
        live = self.maps["vips"].get(vip.key())
        ring = (live.ring if live is not None else vs.ring) & 1
        rkey = (vs.index * 2 + ring) * self.state.table_size + slot
        got = self.maps["rings"].get(ctypes.c_uint32(rkey))
        ring_id = int(got.value) if got is not None else LB_NO_BACKEND
        ring_backend = by_id.get(ring_id)
        flow = self.maps["conntrack"].get(key)
        ct_backend = by_id.get(flow.backend) if flow is not None else None
        state = idle = None
        if flow is not None:
            # bpf_ktime_get_coarse_ns() is CLOCK_MONOTONIC, read at tick granularity; the data
            # plane subtracts modulo 2**64, and so does this.
            since = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - flow.atime) % 2**64
            idle = since / 1e9 if since < 2**63 else 0.0
            closing = bool(flow.flags & LB_FLOW_F_CLOSING)
            limit = self.timeouts["LB_CLOSING_TIMEOUT" if closing else
                                  "LB_TCP_TIMEOUT" if vip.proto == "tcp" else "LB_UDP_TIMEOUT"]
            state = "expired" if idle > limit else "closing" if closing else "established"
            if state == "expired":
                ct_backend = None
        out: dict[str, Any] = {
            "vip": str(vip), "client": fmt_addr_port(client, sport), "mode": vs.mode,
            "hash": h, "slot": slot, "ring": ring,
            "maglev_backend": ring_backend.name if ring_backend else None,
            "conntrack_backend": ct_backend.name if ct_backend else None,
            "conntrack_state": state, "idle_s": None if idle is None else round(idle, 1),
        }
        if flow is not None and ct_backend is not None:
            out["backend"] = ct_backend.name
            out["reason"] = (f"conntrack hit ({state} flow pinned to {ct_backend.name}, idle "
                             f"{idle:.0f} s); a new connection "
                             f"(TCP SYN) would take Maglev slot {slot} -> "
                             f"{ring_backend.name if ring_backend else 'no backend'}")
        elif ring_backend is not None:
            out["backend"] = ring_backend.name
            why = "conntrack entry expired" if state == "expired" else "no conntrack entry"
            out["reason"] = f"{why}: Maglev slot {slot} of {self.state.table_size}"
        else:
            out["backend"] = None
            out["reason"] = "no usable backend: packets are dropped (counted as no_backend)"
        return out


# ---------------------------------------------------------------------------------------
# state files and sessions

def state_path(ifname: str, netns: str | None) -> Path:
    return xdp.RUN_ROOT / "lb" / (netns or "root") / f"{ifname}.json"


def load_state(ifname: str, netns: str | None) -> LbState | None:
    try:
        return LbState.from_json(json.loads(state_path(ifname, netns).read_text()))
    except FileNotFoundError:
        return None


def save_state(ifname: str, netns: str | None, state: LbState) -> None:
    write_json(state_path(ifname, netns), state.to_json())


def remove_state(ifname: str, netns: str | None) -> None:
    path = state_path(ifname, netns)
    for p in (path, path.with_suffix(".lock")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
        path.parent.parent.rmdir()


@contextlib.contextmanager
def _locked(ifname: str, netns: str | None) -> Iterator[None]:
    path = state_path(ifname, netns).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
        # A failed attach (or detach of nothing) leaves no state: leave no lock file either.
        if not state_path(ifname, netns).exists():
            remove_state(ifname, netns)


def attachment(ifname: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(ifname, netns, SPEC.name, "the load balancer", "fastpath lb attach")


@contextlib.contextmanager
def session(ifname: str, netns: str | None, *, write: bool = True) -> Iterator[Balancer]:
    """A Balancer on the program attached to `ifname`, under the state lock; the state is
    saved when the block succeeds (and `write`), left alone when it raises."""
    att = attachment(ifname, netns)
    with _locked(ifname, netns):
        state = load_state(ifname, netns) or LbState.for_defines(att.defines)
        with LbMaps.from_attachment(att) as maps:
            bal = Balancer(maps, state, lambda a: resolve_mac(a, ifname, netns), att.defines)
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
        defines.update(tunables or {})
    check_tunables(defines)
    with _locked(ifname, netns):
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
    return att, replaced


def check_tunables(defines: Mapping[str, int | str]) -> None:
    size = int(defines["LB_RING_SIZE"])
    if not maglev.is_prime(size) or not 7 <= size <= 1_000_003:
        raise FastpathError(f"Maglev table size {size} must be a prime between 7 and 1000003",
                            fix="e.g. 65537 (default), 4099, 131071")
    vips = int(defines["LB_MAX_VIPS"])
    if not 1 <= vips <= 1024:
        raise FastpathError(f"--max-vips {vips} out of range 1-1024")
    if vips * 2 * size >= 2**32 or vips * 2 * size * 4 > 1 << 30:
        raise FastpathError(f"{vips} VIPs x 2 rings x {size} slots needs more than 1 GiB",
                            fix="lower --max-vips or --table-size")
    backends = int(defines["LB_MAX_BACKENDS"])
    if not 1 <= backends <= 65535:
        raise FastpathError(f"--max-backends {backends} out of range 1-65535")
    seed = int(defines["LB_HASH_SEED"])
    if not 0 <= seed <= _M32:
        raise FastpathError(f"--seed {seed} out of range 0-{_M32}")
    for key, opt in zip(TIMEOUTS, ("--udp-timeout", "--tcp-timeout", "--closing-timeout"), strict=True):
        if not 1 <= int(defines[key]) <= MAX_TIMEOUT:
            raise FastpathError(f"{opt} {defines[key]} out of range 1-{MAX_TIMEOUT} seconds")
    ct = int(defines["LB_CONNTRACK_SIZE"])
    if not 1024 <= ct <= 1 << 26:
        raise FastpathError(f"--conntrack {ct} out of range 1024-{1 << 26}")


def detach(ifname: str, netns: str | None) -> xdp.Attachment | None:
    with _locked(ifname, netns):
        att = xdp.detach(ifname, netns, program=SPEC.name)
    remove_state(ifname, netns)
    return att
