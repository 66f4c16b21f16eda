"""The kernel/user boundary of bpf/l4lb.c: its tunables, maps, enums and flags, and ctypes
mirrors of the structs in bpf/l4lb.h.

tests/bpf/test_l4lb.py checks every mirror's size and field offsets against bcc's decoded
types of the compiled header, so the two sides cannot drift.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from typing import Any

from fastpath.apps.lb import maglev
from fastpath.bpf.loader import ProgramSpec

# Tunables of bpf/l4lb.c (its #ifndef defaults), passed as -D flags: the one Python copy.
TUNABLES: dict[str, int] = {
    "LB_MAX_VIPS": 32,
    "LB_MAX_BACKENDS": 4096,
    "LB_RING_SIZE": maglev.DEFAULT_TABLE_SIZE,
    "LB_CONNTRACK_SIZE": 131072,       # established flows
    "LB_HALF_OPEN_SIZE": 32768,        # half-open flows, all CPUs that run the program together
    "LB_POSSIBLE_CPUS": 1,             # attach sets both from the host (see host_cpus)
    "LB_RX_CPUS": 1,
    "LB_HASH_SEED": 0,
    "LB_UDP_TIMEOUT": 30,              # seconds idle before a flow is forgotten: UDP,
    "LB_TCP_TIMEOUT": 300,             # TCP,
    "LB_CLOSING_TIMEOUT": 10,          # TCP after a FIN (a RST ends it at once)
    "LB_MAX_PACKET": 1500,
    "LB_IPIP_V4_PREFIX": 0xAC10,       # outer IPv4 sources 172.16.x.y
    "LB_IPIP_V6_PREFIX": 0x01000000,   # outer IPv6 sources 100::x:y (discard prefix)
}
MAPS = ("vips", "vip_refs", "vip_addrs", "rings", "backends", "conntrack", "nat_reverse", "half_open",
        "half_open_reverse", "vip_stats", "backend_stats", "stats", "config", "ipip_ids")
SPEC = ProgramSpec(name="l4lb", entry="l4lb", maps=MAPS, defaults=TUNABLES, command="fastpath lb",
                   chain_slot=1)

# enum lb_mode
MODES: dict[str, int] = {"dsr": 0, "nat": 1, "ipip": 2}
PROTOS: dict[str, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
HASHES = ("5tuple", "src")
LB_VIP_F_HASH_SRC_ONLY = 0x1
LB_BACKEND_F_EXISTS = 0x1
LB_BACKEND_F_DOWN = 0x2
LB_FLOW_F_CLOSING = 0x1
LB_FLOW_F_RESET = 0x2
# Seconds of the flow timeouts: they change no map, so a hot reload may change them.
TIMEOUTS = ("LB_UDP_TIMEOUT", "LB_TCP_TIMEOUT", "LB_CLOSING_TIMEOUT")
MAX_TIMEOUT = 7 * 86400
LB_NO_BACKEND = 0xFFFFFFFF
# enum lb_stat, in order
STAT_NAMES = ("pass_not_ip", "pass_non_vip", "pass_malformed", "pass_icmp", "nat_reverse",
              "icmp_forwarded", "drop_fragment", "drop_malformed", "drop_unsupported",
              "drop_no_backend", "drop_too_big", "drop_error", "icmp_reverse", "flow_reset",
              "flow_expired", "flow_confirmed", "flow_revived")
LB_STAT_MAX = len(STAT_NAMES)
MAX_WEIGHT = maglev.MAX_WEIGHT

# What the header's 16-byte address fields hold, with their family (4 or 6).
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


class VipRef(ctypes.Structure):
    _fields_ = [("vip", VipKey), ("mode", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


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
    _fields_ = [("nat_vips", ctypes.c_uint32), ("vip_addr_bits", ctypes.c_uint32)]


def addr_bit(packed: bytes) -> int:
    """lb_addr_bit() of bpf/l4lb.c: the bit of Config.vip_addr_bits an address (4 or 16
    bytes, network order) stands for; its words are read as the host lays them out."""
    w = struct.unpack("=4I", packed.ljust(16, b"\0"))
    x = w[0] ^ w[1] ^ w[2] ^ w[3]
    x ^= x >> 16
    x ^= x >> 8
    return 1 << (x & 31)


# map name -> (key type, value type): what the header declares for each map.
MAP_TYPES: dict[str, tuple[type[Any], type[Any]]] = {
    "vips": (VipKey, Vip),
    "vip_refs": (ctypes.c_uint32, VipRef),
    "vip_addrs": (AddrKey, ctypes.c_uint32),
    "rings": (ctypes.c_uint32, ctypes.c_uint32),
    "backends": (ctypes.c_uint32, Backend),
    "conntrack": (FlowKey, Flow),
    "nat_reverse": (FlowKey, VipKey),
    "half_open": (FlowKey, Flow),
    "half_open_reverse": (FlowKey, VipKey),
    "vip_stats": (ctypes.c_uint32, VipStats),
    "backend_stats": (ctypes.c_uint32, BackendStats),
    "stats": (ctypes.c_uint32, Counter),
    "config": (ctypes.c_uint32, Config),
    "ipip_ids": (ctypes.c_uint32, ctypes.c_uint32),
}

