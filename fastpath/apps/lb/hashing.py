"""The data plane's flow hash in Python, for `lb explain`, `predict` and the golden tests.

bpf/l4lb.c hashes flows with jhash (include/linux/jhash.h); this is the same arithmetic on
32-bit words. tests/bpf/test_l4lb.py checks the two agree flow by flow, and
tests/unit/test_lb.py pins values the kernel's own header computes.
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
    # __jhash_final: seven steps `x ^= y; x -= rol32(y, s)`, x running c, a, b, c, ...
    # and y the word before it in that cycle.
    v = [a, b, c]
    x = 2
    for s in (14, 11, 25, 16, 4, 14, 24):
        y = v[x - 1]
        v[x] = ((v[x] ^ y) - _rol(y, s)) & M32
        x = (x + 1) % 3
    return v[2]


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    # __jhash_mix: six steps `x -= z; x ^= rol32(z, s); z += y` over (a, b, c) rotated left
    # one place per step; six rotations bring the words back to their places.
    x, y, z = a, b, c
    for s in (4, 6, 8, 16, 19, 4):
        x = ((x - z) & M32) ^ _rol(z, s)
        z = (z + y) & M32
        x, y, z = y, z, x
    return x, y, z


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
