"""The ABI of bpf/syn_guard.c: its program spec and compile-time tunables, and ctypes
mirrors of bpf/syn_guard.h (stat ids, port modes, ACL actions, config flags, every map's key
and value), which tests/bpf/test_syn_guard.py checks against bcc's own view of the header.
Addresses are keyed as four u32 words, IPv4 mapped into IPv6.
"""

from __future__ import annotations

import ctypes
import ipaddress
import sys
from collections.abc import Iterable, Sequence

from fastpath.bpf.loader import ProgramSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROGRAM = "syn_guard"

# Compile-time tunables (the #ifndef defaults of bpf/syn_guard.c, passed back as -D flags).
# attach() overrides the SYN-ACK options from the interface: MSS from its MTU, window scale,
# timestamps and SACK from its namespace's TCP sysctls.
TUNABLES: dict[str, int] = {
    "SG_ACL_MAX": 16384,          # entries per ACL trie (IPv4, IPv6)
    "SG_SOURCES_MAX": 65536,      # sources whose SYN rate is tracked (LRU)
    "SG_PROTECTED_MAX": 4096,     # destination addresses the guard protects
    "SG_BANS_MAX": 16384,         # bans in force (LRU, its own map: a flood of sources cannot flush it)
    "SG_RATE_TRIES": 4,           # compare-and-swap attempts on a token bucket before a SYN is over
    "SG_FLOWS_MAX": 65536,        # known connections cached (LRU; a miss costs a socket lookup)
    "SG_FLOW_IDLE_NS": 300_000_000_000,  # a cached flow idle this long is checked against the stack
    "SG_FLOW_REFRESH_NS": 1_000_000_000,  # a cached flow's last-seen time is refreshed at most this often
    "SG_RATE_WINDOW_NS": 100_000_000,  # adaptive cookies: window of each CPU's per-port SYN count
    "SG_ADAPTIVE_PORTS": 1024,    # ports with adaptive state (beyond: cookies always)
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
    maps=("stats", "config", "ports", "acl_v4", "acl_v6", "sources", "bans", "flows", "protected_addrs",
          "protected_list", "adaptive", "port_syns", "port_state"),
    defaults=TUNABLES,
    command="fastpath xdp",
    chain_slot=0,
)

# enum sg_stat: outcome counters (every frame lands in exactly one), event counters (with
# an outcome), and outcomes appended later.
STAT_NAMES = (
    "pass_other", "pass_allow", "drop_deny", "drop_port", "drop_limited", "drop_banned",
    "tx_cookie", "pass_syn", "pass_cookie", "drop_cookie", "pass_flow", "pass_tcp",
    "fragment", "drop_malformed", "drop_error", "bans", "probes", "pass_dest", "flow_socket",
    "flow_ends", "flow_idle", "to_cookie", "to_pass", "cookie_held",
)
SG_OUTCOMES = 15
SG_STAT_MAX = 24
STAT = {name: i for i, name in enumerate(STAT_NAMES)}
# SG_EVENT_*: events that accompany an outcome
EVENT_NAMES = ("bans", "probes", "flow_socket", "flow_ends", "flow_idle", "to_cookie", "to_pass",
               "cookie_held")
OUTCOME_NAMES = tuple(n for n in STAT_NAMES if n not in EVENT_NAMES)

# enum sg_port_mode, enum sg_acl_action, SG_CFG_* flags.
PORT_OPEN, PORT_COOKIE, PORT_DROP = 0, 1, 2
ACL_ALLOW, ACL_DENY = 1, 2
ACL_ACTIONS = {"allow": ACL_ALLOW, "deny": ACL_DENY}
CFG_COOKIES, CFG_FRAG_PASS, CFG_ACL4, CFG_ACL6, CFG_DESTS, CFG_ADAPTIVE = 1, 2, 4, 8, 16, 32
PROTECT_LOCAL, PROTECT_LISTED = 1, 2  # SG_PROTECT_*: values of protected_addrs


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


class SgAddr(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint32 * 4)]


PROTECTED_INLINE = 16          # SG_PROTECTED_INLINE: addresses compared inline
PROTECTED_HASH = 0xFFFFFFFF    # SG_PROTECTED_HASH: more than that, the hash decides


class SgProtectedList(ctypes.Structure):
    _fields_ = [("n", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("addr", SgAddr * PROTECTED_INLINE)]


class SgBan(ctypes.Structure):
    _fields_ = [("until_ns", ctypes.c_uint64), ("since_ns", ctypes.c_uint64)]


class SgFlowKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint32 * 4),
        ("server", ctypes.c_uint32 * 4),
        ("client_port", ctypes.c_uint16),
        ("server_port", ctypes.c_uint16),
    ]


class SgFlow(ctypes.Structure):
    _fields_ = [("seen_ns", ctypes.c_uint64)]


class SgAdaptive(ctypes.Structure):
    _fields_ = [("quiet_ns", ctypes.c_uint64), ("window_syns", ctypes.c_uint32), ("armed", ctypes.c_uint32)]


class SgPortRate(ctypes.Structure):
    _fields_ = [("window_start_ns", ctypes.c_uint64), ("syns", ctypes.c_uint32), ("done", ctypes.c_uint32),
                ("over", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class SgPortState(ctypes.Structure):
    _fields_ = [
        ("since_ns", ctypes.c_uint64),
        ("over_ns", ctypes.c_uint64),
        ("cookies", ctypes.c_uint32),
        ("to_cookie", ctypes.c_uint32),
        ("to_pass", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


# Key and value type of every map, for the header test and for opening pins.
MAP_TYPES: dict[str, tuple[type[ctypes._SimpleCData] | type[ctypes.Structure], type[ctypes.Structure] |
                           type[ctypes._SimpleCData]]] = {
    "stats": (ctypes.c_uint32, SgCounter),
    "config": (ctypes.c_uint32, SgConfig),
    "ports": (ctypes.c_uint32, ctypes.c_uint32),
    "acl_v4": (SgLpmV4, ctypes.c_uint32),
    "acl_v6": (SgLpmV6, ctypes.c_uint32),
    "sources": (SgSourceKey, SgSource),
    "bans": (SgSourceKey, SgBan),
    "flows": (SgFlowKey, SgFlow),
    "protected_addrs": (SgAddr, ctypes.c_uint32),
    "protected_list": (ctypes.c_uint32, SgProtectedList),
    "adaptive": (ctypes.c_uint32, SgAdaptive),
    "port_syns": (ctypes.c_uint32, SgPortRate),
    "port_state": (ctypes.c_uint32, SgPortState),
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
