"""The data plane's flow hash in Python, for `lb explain`, `predict` and the golden tests.

bpf/l4lb.c hashes flows with jhash (include/linux/jhash.h); this is the same arithmetic on
32-bit words. tests/bpf/test_l4lb.py checks the two agree flow by flow, and
tests/unit/test_lb.py pins its values.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping

from fastpath.apps.lb.abi import TUNABLES, IPAddress

M32 = 0xFFFFFFFF
_JHASH_INITVAL = 0xDEADBEEF


def _rol(w: int, s: int) -> int:
    return ((w << s) | (w >> (32 - s))) & M32


def _jhash_final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & M32
    a ^= c
    a = (a - _rol(c, 11)) & M32
    b ^= a
    b = (b - _rol(a, 25)) & M32
    c ^= b
    c = (c - _rol(b, 16)) & M32
    a ^= c
    a = (a - _rol(c, 4)) & M32
    b ^= a
    b = (b - _rol(a, 14)) & M32
    c ^= b
    c = (c - _rol(b, 24)) & M32
    return c


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32
    a ^= _rol(c, 4)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 6)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 8)
    b = (b + a) & M32
    a = (a - c) & M32
    a ^= _rol(c, 16)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 19)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 4)
    b = (b + a) & M32
    return a, b, c


def jhash_2words(a: int, b: int, initval: int) -> int:
    iv = (initval + _JHASH_INITVAL + (2 << 2)) & M32
    return _jhash_final((a + iv) & M32, (b + iv) & M32, iv)


def jhash_4words(k: tuple[int, ...], initval: int) -> int:
    """jhash2(k, 4, initval)."""
    a = b = c = (_JHASH_INITVAL + (4 << 2) + initval) & M32
    a, b, c = _jhash_mix((a + k[0]) & M32, (b + k[1]) & M32, (c + k[2]) & M32)
    return _jhash_final((a + k[3]) & M32, b, c)


def flow_hash(client: IPAddress, sport: int, dport: int, *, src_only: bool = False,
              seed: int = 0) -> int:
    """The hash the data plane takes the Maglev slot from (slot = hash % table size).

    Words are read as the little-endian CPU sees packet bytes, as in bpf/l4lb.c.
    """
    seed &= M32
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
    last = (int(client) & M32) ^ sport
    return ipaddress.IPv6Address((tunables["LB_IPIP_V6_PREFIX"] << 96) | last)
