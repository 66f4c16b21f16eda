"""Control plane of bpf/syn_guard.c: the XDP SYN-flood guard.

Mirrors bpf/syn_guard.h (tests/bpf/test_syn_guard.py checks the mirror against bcc) and
drives the program through its pinned maps, so every change after attach (ports, rate,
allow/deny lists) is live, with no reload. Attach also installs the netfilter SYNPROXY
rules that finish handshakes whose cookie XDP has checked (fastpath/apps/guard/nft.py), in the
interface's own namespace; detach removes them. Connections already open on cookie ports
are carried into the flow table and conntrack first (fastpath/apps/guard/existing.py), at attach,
re-attach and port changes, so the guard never cuts them.

    att = synguard.attach("eth0", netns="lab1-server", config=GuardConfig(cookie_ports=(80,)))
    synguard.acl_change([att], "deny", "add", [ip_network("203.0.113.0/24")])
    synguard.read_counters(att)["tx_cookie"]
    synguard.detach("eth0", "lab1-server")
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fastpath.apps.guard import existing, nft
from fastpath.bpf import xdp
from fastpath.bpf.loader import ProgramSpec
from fastpath.bpf.maps import TypedMap
from fastpath.core.args import parse_port
from fastpath.errors import FastpathError

PROGRAM = "syn_guard"

# Compile-time tunables (the #ifndef defaults of bpf/syn_guard.c, passed back as -D flags).
# attach() overrides the SYN-ACK options from the interface: MSS from its MTU, window scale,
# timestamps and SACK from its namespace's TCP sysctls.
TUNABLES: dict[str, int] = {
    "SG_ACL_MAX": 16384,          # entries per ACL trie (IPv4, IPv6)
    "SG_SOURCES_MAX": 65536,      # sources whose SYN rate is tracked (LRU)
    "SG_FLOWS_MAX": 65536,        # flows admitted by a cookie (LRU)
    "SG_MSS4": 1460,              # MSS advertised in IPv4 SYN-ACKs
    "SG_MSS6": 1440,              # MSS advertised in IPv6 SYN-ACKs
    "SG_WSCALE": 7,               # window scale advertised (15: window scaling off)
    "SG_TIMESTAMPS": 1,           # offer timestamps (and so wscale/SACK) in SYN-ACKs
    "SG_SACK": 1,                 # offer SACK
    "SG_TTL": 64,                 # TTL / hop limit of SYN-ACKs
    "SG_IPV6_EXT_MAX": 6,         # IPv6 extension headers walked before dropping
    "SG_HDR_MAX": 512,            # TCP header must start within this many bytes
    "SG_BAN_WINDOW_NS": 1_000_000_000,  # window in which excess SYNs count towards a ban
}

SPEC = ProgramSpec(
    name=PROGRAM,
    entry="syn_guard",
    maps=("stats", "config", "ports", "acl_v4", "acl_v6", "sources", "flows"),
    defaults=TUNABLES,
    command="fastpath xdp",
    chain_slot=0,
)

# enum sg_stat: outcome counters (every frame lands in exactly one), then event counters.
STAT_NAMES = (
    "pass_other", "pass_allow", "drop_deny", "drop_port", "drop_limited", "drop_banned",
    "tx_cookie", "pass_syn", "pass_cookie", "drop_cookie", "pass_flow", "pass_tcp",
    "fragment", "drop_malformed", "drop_error", "bans", "probes",
)
SG_OUTCOMES = 15
SG_STAT_MAX = 17
STAT = {name: i for i, name in enumerate(STAT_NAMES)}
OUTCOME_NAMES = STAT_NAMES[:SG_OUTCOMES]

SIOCGIFMTU = 0x8921

# enum sg_port_mode, enum sg_acl_action, SG_CFG_* flags.
PORT_OPEN, PORT_COOKIE, PORT_DROP = 0, 1, 2
ACL_ALLOW, ACL_DENY = 1, 2
ACL_ACTIONS = {"allow": ACL_ALLOW, "deny": ACL_DENY}
CFG_COOKIES, CFG_FRAG_PASS, CFG_ACL4, CFG_ACL6 = 1, 2, 4, 8


class SgConfig(ctypes.Structure):
    _fields_ = [
        ("syn_interval_ns", ctypes.c_uint64),
        ("syn_burst_ns", ctypes.c_uint64),
        ("ban_ns", ctypes.c_uint64),
        ("ban_after", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class SgCounter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class SgLpmV4(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class SgLpmV6(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32 * 4)]


class SgSourceKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint32 * 4)]


class SgSource(ctypes.Structure):
    _fields_ = [
        ("tat_ns", ctypes.c_uint64),
        ("banned_until_ns", ctypes.c_uint64),
        ("window_start_ns", ctypes.c_uint64),
        ("excess", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class SgFlowKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint32 * 4),
        ("server", ctypes.c_uint32 * 4),
        ("client_port", ctypes.c_uint16),
        ("server_port", ctypes.c_uint16),
    ]


class SgFlow(ctypes.Structure):
    _fields_ = [("created_ns", ctypes.c_uint64)]


# Key and value type of every map, for the header test and for opening pins.
MAP_TYPES: dict[str, tuple[type[ctypes._SimpleCData] | type[ctypes.Structure], type[ctypes.Structure] |
                           type[ctypes._SimpleCData]]] = {
    "stats": (ctypes.c_uint32, SgCounter),
    "config": (ctypes.c_uint32, SgConfig),
    "ports": (ctypes.c_uint32, ctypes.c_uint32),
    "acl_v4": (SgLpmV4, ctypes.c_uint32),
    "acl_v6": (SgLpmV6, ctypes.c_uint32),
    "sources": (SgSourceKey, SgSource),
    "flows": (SgFlowKey, SgFlow),
}


# -- addresses in map words ------------------------------------------------------------------

def _words(packed: bytes) -> list[int]:
    """Network-order bytes as the u32 words the C side sees in memory."""
    return [int.from_bytes(packed[i:i + 4], sys.byteorder) for i in range(0, len(packed), 4)]


def _unwords(words: Iterable[int]) -> bytes:
    return b"".join(int(w).to_bytes(4, sys.byteorder) for w in words)


def mapped_words(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    """The 4 words of an address as the program keys it (IPv4 as ::ffff:a.b.c.d)."""
    if addr.version == 4:
        return _words(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return _words(addr.packed)


def address_of(words: Sequence[int]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.IPv6Address(_unwords(words))
    return addr.ipv4_mapped or addr


# -- user input ---------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ports(text: str) -> tuple[int, ...]:
    """'80,443' -> (80, 443); '' -> ()."""
    if not text.strip():
        return ()
    return tuple(sorted({parse_port(p) for p in text.split(",")}))


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*$")


def parse_rate(text: str) -> float:
    """'200/s', '200', '6000/min' -> SYNs per second; '0' or 'off' turns the limit off."""
    if text.strip().lower() in ("off", "0"):
        return 0.0
    m = _RATE_RE.match(text)
    if m is None:
        raise FastpathError(f"bad SYN rate {text!r}", fix="write it as N/s or N/min, e.g. 200/s")
    value = float(m.group(1))
    if m.group(2) and m.group(2).startswith("m"):
        value /= 60.0
    if not 0 < value <= 1e9:
        raise FastpathError(f"SYN rate {text!r} out of range", fix="use a rate above 0 and up to 1e9/s")
    return value


def parse_cidr(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        fix = "write an IPv4 or IPv6 network such as 203.0.113.0/24 or 2001:db8::/32"
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(text.strip(), strict=False)
            fix = f"host bits are set; did you mean {net}?"
        raise FastpathError(f"bad CIDR {text!r}: {exc}", fix=fix) from None


@dataclass(frozen=True)
class GuardConfig:
    """What the guard protects and how; everything here can change without a reload."""

    cookie_ports: tuple[int, ...] = (80, 443)
    drop_ports: tuple[int, ...] = ()
    syn_rate: float = 0.0          # SYNs per second per source; 0: no limit
    syn_burst: int = 0             # SYNs a source may send back to back; 0: same as the rate
    ban_after: int = 0             # SYNs over the rate within a second that start a ban; 0: burst
    ban_seconds: float = 60.0      # ban length; 0: never ban
    cookies: bool = True           # answer SYNs from XDP (else: pass them to the stack)
    fragments: str = "drop"        # verdict for first fragments to protected ports

    def validate(self) -> GuardConfig:
        both = sorted(set(self.cookie_ports) & set(self.drop_ports))
        if both:
            raise FastpathError(
                f"port {both[0]} is both a cookie port and a drop port",
                fix="list each port in only one of --ports and --drop-ports")
        for p in (*self.cookie_ports, *self.drop_ports):
            if not 1 <= p <= 65535:
                raise FastpathError(f"port {p} out of range", fix="ports are 1-65535")
        if not self.cookie_ports and not self.drop_ports:
            raise FastpathError("no port to protect", fix="give --ports and/or --drop-ports")
        if self.syn_rate < 0 or self.syn_burst < 0 or self.ban_after < 0 or self.ban_seconds < 0:
            raise FastpathError("rates, bursts and ban settings cannot be negative")
        if self.syn_burst and not self.syn_rate:
            raise FastpathError("--syn-burst needs --syn-rate",
                                fix="give both, e.g. --syn-rate 200/s --syn-burst 400")
        if self.fragments not in ("drop", "pass"):
            raise FastpathError(f"bad fragment verdict {self.fragments!r}", fix="use drop or pass")
        return self

    @property
    def burst(self) -> int:
        return self.syn_burst or max(1, math.ceil(self.syn_rate))

    @property
    def ban_threshold(self) -> int:
        return self.ban_after or self.burst

    def to_ctype(self, acl4: bool, acl6: bool) -> SgConfig:
        cfg = SgConfig()
        if self.syn_rate:
            interval = max(1, round(1e9 / self.syn_rate))
            cfg.syn_interval_ns = interval
            cfg.syn_burst_ns = interval * (self.burst - 1)
            cfg.ban_ns = round(self.ban_seconds * 1e9)
            cfg.ban_after = self.ban_threshold if self.ban_seconds else 0
        flags = 0
        if self.cookies:
            flags |= CFG_COOKIES
        if self.fragments == "pass":
            flags |= CFG_FRAG_PASS
        if acl4:
            flags |= CFG_ACL4
        if acl6:
            flags |= CFG_ACL6
        cfg.flags = flags
        return cfg

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["cookie_ports"] = list(self.cookie_ports)
        data["drop_ports"] = list(self.drop_ports)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GuardConfig:
        known = {f for f in cls.__dataclass_fields__}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for key in ("cookie_ports", "drop_ports"):
            if key in kw:
                kw[key] = tuple(int(p) for p in kw[key])
        return cls(**kw)

    def describe(self) -> str:
        parts = []
        if self.cookie_ports:
            how = "SYN cookies" if self.cookies else "rate limit only (cookies off)"
            parts.append(f"{how} on {','.join(map(str, self.cookie_ports))}")
        if self.drop_ports:
            parts.append(f"SYNs dropped on {','.join(map(str, self.drop_ports))}")
        if self.syn_rate:
            ban = (f", ban {self.ban_seconds:g}s after {self.ban_threshold} excess"
                   if self.ban_seconds else "")
            parts.append(f"{self.syn_rate:g} SYN/s per source (burst {self.burst}{ban})")
        parts.append(f"fragments {self.fragments}")
        return "; ".join(parts)


# -- defines derived from the interface ----------------------------------------------------------

def _read_sysctl(name: str, default: str) -> str:
    try:
        return Path("/proc/sys", name.replace(".", "/")).read_text().strip()
    except OSError:
        return default


def _mtu(ifname: str) -> int:
    """The MTU by ioctl on a socket of the calling thread's namespace (/sys/class/net shows
    the namespace sysfs was mounted in, not ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si", ifname.encode(), 0))
    return int(struct.unpack("16si", req)[1])


def server_wscale(tcp_rmem_max: int, rmem_max: int) -> int:
    """The window scale Linux advertises (tcp_select_initial_window): SYNPROXY does not
    translate windows, so our SYN-ACKs must promise exactly what the server will use."""
    space = max(tcp_rmem_max, rmem_max, 1)
    return max(0, min(14, space.bit_length() - 1 - 15))


def interface_defines(ifname: str, netns: str | None) -> dict[str, int]:
    """MSS from the MTU, timestamp/SACK/window-scale offers from the namespace's sysctls."""
    rmem_max = int(_read_sysctl("net.core.rmem_max", "212992"))  # global, read from here
    with xdp.in_netns(netns):
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            where = f"namespace {netns!r}" if netns else "the root namespace"
            hint = "see 'ip link'" + (f" in 'ip netns exec {netns}'" if netns else "")
            raise FastpathError(f"unknown interface {ifname!r} in {where}", fix=hint) from None
        mtu = _mtu(ifname)
        timestamps = _read_sysctl("net.ipv4.tcp_timestamps", "1") != "0"
        sack = _read_sysctl("net.ipv4.tcp_sack", "1") != "0"
        scaling = _read_sysctl("net.ipv4.tcp_window_scaling", "1") != "0"
        rmem = _read_sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456").split()
    tcp_rmem_max = int(rmem[-1]) if rmem else 6291456
    return {
        "SG_MSS4": max(536, min(65495, mtu - 40)),
        "SG_MSS6": max(1220, min(65475, mtu - 60)),
        "SG_WSCALE": server_wscale(tcp_rmem_max, rmem_max) if scaling else 15,
        "SG_TIMESTAMPS": int(timestamps),
        "SG_SACK": int(sack),
    }


# -- the pinned maps of one attachment ------------------------------------------------------------

@contextlib.contextmanager
def open_map(att: xdp.Attachment, name: str) -> Iterator[TypedMap]:
    key, value = MAP_TYPES[name]
    with TypedMap.open_pinned(att.map_path(name), key, value) as m:
        yield m


def read_counters(att: xdp.Attachment) -> dict[str, tuple[int, int]]:
    """(packets, bytes) per counter, summed over CPUs."""
    with open_map(att, "stats") as m:
        sums = [m.sum_percpu(ctypes.c_uint32(i)) for i in range(len(STAT_NAMES))]
    return {name: (s["packets"], s["bytes"]) for name, s in zip(STAT_NAMES, sums, strict=True)}


def _acl_nonempty(att: xdp.Attachment) -> tuple[bool, bool]:
    out = []
    for name in ("acl_v4", "acl_v6"):
        with open_map(att, name) as m:
            out.append(next(iter(m.keys()), None) is not None)
    return out[0], out[1]


def write_config(att: xdp.Attachment, config: GuardConfig) -> None:
    acl4, acl6 = _acl_nonempty(att)
    with open_map(att, "config") as m:
        m.set(ctypes.c_uint32(0), config.to_ctype(acl4, acl6))


def read_raw_config(att: xdp.Attachment) -> SgConfig:
    with open_map(att, "config") as m:
        cfg = m.get(ctypes.c_uint32(0))
    return cfg if cfg is not None else SgConfig()


def _port_modes(config: GuardConfig) -> dict[int, int]:
    modes = {p: PORT_COOKIE for p in config.cookie_ports}
    modes.update({p: PORT_DROP for p in config.drop_ports})
    return modes


def write_ports(att: xdp.Attachment, config: GuardConfig, previous: GuardConfig | None) -> None:
    """Set every protected port's mode and open the ports `previous` protected and
    `config` does not (the array is only ever changed through here)."""
    new = _port_modes(config)
    old = _port_modes(previous) if previous is not None else {}
    with open_map(att, "ports") as m:
        for port in old.keys() - new.keys():
            m.set(ctypes.c_uint32(port), ctypes.c_uint32(PORT_OPEN))
        for port, mode in new.items():
            m.set(ctypes.c_uint32(port), ctypes.c_uint32(mode))


def read_ports(att: xdp.Attachment) -> dict[int, int]:
    """Protected ports as the program sees them (a full walk of the array)."""
    with open_map(att, "ports") as m:
        buf = _array_values(m)
    return {p: mode for p, mode in enumerate(buf) if mode != PORT_OPEN}


def _array_values(m: TypedMap) -> list[int]:
    values = (m.get(ctypes.c_uint32(i)) for i in range(m.info.max_entries))
    return [int(v.value) if v is not None else 0 for v in values]


def lpm_key(net: Network) -> SgLpmV4 | SgLpmV6:
    if net.version == 4:
        return SgLpmV4(net.prefixlen, _words(net.network_address.packed)[0])
    key = SgLpmV6()
    key.prefixlen = net.prefixlen
    key.addr[:] = _words(net.network_address.packed)
    return key


def lpm_network(key: SgLpmV4 | SgLpmV6) -> Network:
    if isinstance(key, SgLpmV4):
        return ipaddress.IPv4Network((_unwords([key.addr]), key.prefixlen))
    return ipaddress.IPv6Network((_unwords(key.addr), key.prefixlen))


def acl_entries(att: xdp.Attachment) -> list[tuple[Network, str]]:
    """(network, 'allow'|'deny') for every list entry, IPv4 first."""
    names = {v: k for k, v in ACL_ACTIONS.items()}
    out: list[tuple[Network, str]] = []
    for name in ("acl_v4", "acl_v6"):
        with open_map(att, name) as m:
            for key, value in m.items():
                out.append((lpm_network(key), names.get(int(value.value), f"?{int(value.value)}")))
    return sorted(out, key=lambda e: (e[0].version, e[0]))


def acl_change(atts: Sequence[xdp.Attachment], action: str, verb: str, nets: Sequence[Network]) -> list[str]:
    """Add or remove `nets` in the allow or deny list of every attachment in `atts`.

    Everything is checked first (a prefix cannot be in both lists, a removed prefix must be
    in the list named), so an error leaves every list as it was. Returns what changed.
    """
    want = ACL_ACTIONS[action]
    other = "deny" if action == "allow" else "allow"
    current = {id(att): dict(acl_entries(att)) for att in atts}
    for att in atts:
        have = current[id(att)]
        for net in nets:
            if verb == "add" and have.get(net) == other:
                raise FastpathError(
                    f"{net} is in the {other} list of {_where(att)}",
                    fix=f"remove it first: fastpath xdp {other} del {net}")
            if verb == "del" and have.get(net) != action:
                raise FastpathError(f"{net} is not in the {action} list of {_where(att)}",
                                    fix=f"see: fastpath xdp {action} list")
    changed = []
    for att in atts:
        for net in nets:
            name = "acl_v4" if net.version == 4 else "acl_v6"
            with open_map(att, name) as m:
                if verb == "add":
                    m.set(lpm_key(net), ctypes.c_uint32(want))
                else:
                    m.delete(lpm_key(net))
            changed.append(f"{verb} {net} {'to' if verb == 'add' else 'from'} {action} list of {_where(att)}")
        # The lookup is skipped while a family's trie is empty; recompute the flags.
        write_config(att, guard_config(att))
    return changed


def _ns_flag(netns: str | None) -> str:
    return f" --netns {netns}" if netns else ""


def _where(att: xdp.Attachment) -> str:
    return f"{att.ifname}" + (f" in {att.netns}" if att.netns else "")


def guard_config(att: xdp.Attachment) -> GuardConfig:
    data = att.options.get("config")
    if not isinstance(data, dict):
        raise FastpathError(f"the state of {_where(att)} has no guard settings",
                            fix="attach again: fastpath xdp attach " + att.ifname)
    return GuardConfig.from_json(data)


# -- attach / detach -------------------------------------------------------------------------------

def attachment(ifname: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(ifname, netns, PROGRAM, "the SYN guard", "fastpath xdp attach")


def attachments(ifname: str | None = None, netns: str | None = None,
                live_only: bool = False) -> list[xdp.Attachment]:
    """Every SYN-guard attachment, optionally only those on `ifname` / in `netns`, and with
    `live_only` only those whose namespace and pinned maps still exist."""
    out = []
    for att in xdp.attachments():
        if att.program != PROGRAM:
            continue
        if ifname is not None and att.ifname != ifname:
            continue
        if netns is not None and att.netns != netns:
            continue
        if live_only and not (_netns_alive(att.netns) and Path(att.map_path("config")).exists()):
            continue
        out.append(att)
    return out


def _netns_alive(netns: str | None) -> bool:
    return netns is None or os.path.exists(f"/run/netns/{netns}")


@dataclass
class AttachResult:
    attachment: xdp.Attachment
    replaced: bool
    nft_table: str | None
    defines: dict[str, int] = field(default_factory=dict)
    kept: int = 0  # connections open at attach carried into conntrack and the flows map


def plan_defines(ifname: str, netns: str | None) -> dict[str, int]:
    return {**TUNABLES, **interface_defines(ifname, netns)}


# -- carried-over connections: the XDP flows map ----------------------------------------------

def add_flows(att: xdp.Attachment, conns: Sequence[existing.Connection]) -> None:
    if not conns:
        return
    # The program stamps flows with bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC_COARSE (6).
    now = time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))
    with open_map(att, "flows") as m:
        for conn in conns:
            key = SgFlowKey()
            key.client[:] = mapped_words(conn.client)
            key.server[:] = mapped_words(conn.server)
            key.client_port = socket.htons(conn.client_port)  # as read from the header
            key.server_port = socket.htons(conn.server_port)
            m.set(key, SgFlow(created_ns=now))


@dataclass
class Seeded:
    connections: int = 0  # open connections (ESTABLISHED .. LAST-ACK) on cookie ports
    conntrack: int = 0    # conntrack entries created (the rest were tracked already)


def seed_existing(att: xdp.Attachment, ports: Iterable[int], conntrack: bool = True) -> Seeded:
    """Carry the namespace's open connections on `ports` into the flows map and (unless
    `conntrack` is False) into conntrack."""
    conns = existing.connections(att.netns, ports)
    add_flows(att, conns)
    created = existing.add_conntrack(att.netns, conns) if conntrack else 0
    return Seeded(len(conns), created)


def attach(
    ifname: str,
    netns: str | None = None,
    mode: str = "auto",
    config: GuardConfig | None = None,
    peer_program: bool = True,
) -> AttachResult:
    """Attach the guard to `ifname` (or replace it atomically, keeping every map) and make
    the maps and SYNPROXY rules match `config`. On a first attach that fails half-way,
    everything is removed again."""
    cfg = (config or GuardConfig()).validate()
    defines = plan_defines(ifname, netns)
    use_nft = cfg.cookies and bool(cfg.cookie_ports)
    if use_nft:
        nft.require()
    xdp.clear_stale(ifname, netns)
    old = xdp.read_state(ifname, netns, PROGRAM)
    ours = old is not None and old.program == PROGRAM and "config" in old.options
    previous = guard_config(old) if ours and old is not None else None
    options: dict[str, object] = {"config": cfg.to_json()}
    if old is not None and old.program == PROGRAM:
        for key in ("nft_table", "tcp_loose_was"):
            if key in old.options:
                options[key] = old.options[key]
    att, replaced = xdp.attach(SPEC, ifname, netns, mode, defines, options, peer_program)
    seeded = Seeded()
    try:
        table = nft.table_name(ifname, att.ifindex)
        # A first attach starts with every port open (zeroed maps), a re-attach with the old
        # settings: the connections open now are carried over before cookies are checked.
        seeded = _switch(att, cfg, previous, defines, table if use_nft else None)
        xdp.save_state(att)
    except BaseException:
        if not replaced:
            with contextlib.suppress(Exception):
                _remove_nft(att, force_table=nft.table_name(ifname, att.ifindex))
            with contextlib.suppress(Exception):
                xdp.detach(ifname, netns, program=PROGRAM)
        raise
    nft_table = att.options.get("nft_table")
    return AttachResult(att, replaced, nft_table if isinstance(nft_table, str) else None, defines,
                        seeded.connections)


def _switch(att: xdp.Attachment, cfg: GuardConfig, previous: GuardConfig | None,
            defines: Mapping[str, int], table: str | None) -> Seeded:
    """Make the maps and the SYNPROXY table match `cfg` without cutting open connections
    (fastpath/apps/guard/existing.py): flows seeded, XDP maps (cookies on, so a flood never reaches
    conntrack), nft table, flows and conntrack seeded, tcp_loose=0."""
    if table is None:
        write_ports(att, cfg, previous)
        write_config(att, cfg)
        _remove_nft(att)
        return Seeded()
    first = seed_existing(att, cfg.cookie_ports, conntrack=False)
    write_ports(att, cfg, previous)
    write_config(att, cfg)
    nft.install(att.netns, table, att.ifname, cfg.cookie_ports, defines)
    att.options["nft_table"] = table
    seeded = seed_existing(att, cfg.cookie_ports)  # and handshakes completed meanwhile
    if "tcp_loose_was" not in att.options:
        att.options["tcp_loose_was"] = nft.set_tcp_loose(att.netns, 0)
    return Seeded(max(first.connections, seeded.connections), seeded.conntrack)


def _remove_nft(att: xdp.Attachment, force_table: str | None = None) -> None:
    """Remove this attachment's SYNPROXY table and restore conntrack's tcp_loose when no
    other guard in the namespace still needs it."""
    table = att.options.pop("nft_table", None) or force_table
    loose = att.options.pop("tcp_loose_was", None)
    if not _netns_alive(att.netns):
        return
    if isinstance(table, str):
        nft.remove(att.netns, table)
    others = [a for a in attachments(netns=att.netns)
              if a.ifname != att.ifname and a.netns == att.netns and "nft_table" in a.options]
    if loose is not None and not others:
        nft.set_tcp_loose(att.netns, int(str(loose)))


# An entry whose interface or namespace went away still leaves its nft table behind when
# only the interface went: the runtime calls this when it removes the dead entry.
xdp.STALE_HOOKS[PROGRAM] = _remove_nft


def detach(ifname: str, netns: str | None = None) -> xdp.Attachment | None:
    """Remove the program, its pins and state, and its SYNPROXY rules."""
    att = xdp.read_state(ifname, netns, PROGRAM)
    if att is not None and att.program != PROGRAM:
        raise FastpathError(f"{ifname} runs fastpath program {att.program}, not the SYN guard",
                            fix=f"use '{xdp.detach_hint(att)}'")
    if att is not None:
        _remove_nft(att)
    return xdp.detach(ifname, netns, program=PROGRAM)


def set_config(att: xdp.Attachment, config: GuardConfig) -> xdp.Attachment:
    """Apply a new GuardConfig live (ports, rate, cookies, fragments), no reload."""
    cfg = config.validate()
    previous = guard_config(att)
    if cfg.cookies and cfg.cookie_ports:
        nft.require()
    table = None
    if cfg.cookies and cfg.cookie_ports:
        table = str(att.options.get("nft_table") or nft.table_name(att.ifname, att.ifindex))
    _switch(att, cfg, previous, {k: int(v) for k, v in att.defines.items()}, table)
    att.options["config"] = cfg.to_json()
    xdp.save_state(att)
    return att


def with_changes(config: GuardConfig, **changes: Any) -> GuardConfig:
    return replace(config, **changes)


def status(att: xdp.Attachment) -> dict[str, object]:
    """One attachment as `fastpath xdp status` reports it."""
    data: dict[str, object] = {
        "ifname": att.ifname, "netns": att.netns, "mode": att.mode, "prog_id": att.prog_id,
        "generation": att.generation, "alive": xdp.link_alive(att), "pin_dir": str(att.pin_dir),
        "nft_table": att.options.get("nft_table"), "peer": att.peer,
    }
    with contextlib.suppress(FastpathError):
        data["config"] = guard_config(att).to_json()
    try:
        counters = read_counters(att)
    except FastpathError:
        counters = {}
    data["counters"] = {k: v[0] for k, v in counters.items()}
    return data
