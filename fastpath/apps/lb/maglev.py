"""Weighted Maglev hashing: the lookup table that spreads a VIP's flows over its backends.

Maglev (Eisenbud et al., NSDI 2016) gives every backend a pseudo-random permutation of
the table's slots and lets the backends take turns claiming their next free preferred
slot until the table is full. Weights follow Katran's "Maglev V2": a backend takes a turn
only when its accumulated weight reaches the largest weight, so the share of slots each
backend owns matches its share of the total weight to within one slot.

Determinism is the point: a backend's permutation depends only on its name (e.g.
"10.0.0.2:80"), the table size and a seed, never on list order, process or host, so every
balancer of a fleet fed the same config computes a byte-identical table and a flow lands
on the same backend whichever balancer receives it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_TABLE_SIZE = 65537
MAX_WEIGHT = 1000
# Slot value for "no backend" (a VIP whose backends are all drained or removed).
NO_BACKEND = -1


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@dataclass(frozen=True)
class Permutation:
    """Where a backend starts in the table and how far it jumps between preferences."""

    offset: int
    skip: int


def permutation(name: str, size: int, seed: int = 0) -> Permutation:
    """The backend's slot preferences: slot j is (offset + j * skip) mod size.

    blake2b keyed with the seed, over the UTF-8 name: stable across Python versions and
    hosts (Python's own hash() is salted per process).
    """
    digest = hashlib.blake2b(name.encode(), digest_size=16,
                             key=seed.to_bytes(8, "little", signed=False)).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little")
    return Permutation(h1 % size, h2 % (size - 1) + 1)


def build_table(backends: Mapping[str, int] | Sequence[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE,
                seed: int = 0) -> list[int]:
    """The Maglev table: for each slot, the index of its backend in name order, or NO_BACKEND.

    `backends` maps a backend's name to its weight (0 = takes no slots: drained). Indices
    refer to `sorted(names)`, so callers and other nodes agree whatever order they list in.
    """
    if not is_prime(size):
        raise ValueError(f"Maglev table size {size} is not prime")
    items = dict(backends)
    for name, weight in items.items():
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"backend {name}: weight {weight} out of range 0-{MAX_WEIGHT}")
    names = sorted(items)
    table = [NO_BACKEND] * size
    live = [(i, items[n]) for i, n in enumerate(names) if items[n] > 0]
    if not live:
        return table
    max_weight = max(w for _, w in live)
    perms = [permutation(names[i], size, seed) for i, _ in live]
    index = [i for i, _ in live]
    weights = [w for _, w in live]
    pos = [p.offset for p in perms]
    skip = [p.skip for p in perms]
    credit = [0] * len(live)
    filled = 0
    while True:
        for k in range(len(live)):
            credit[k] += weights[k]
            if credit[k] < max_weight:
                continue
            credit[k] -= max_weight
            c, s = pos[k], skip[k]
            while table[c] != NO_BACKEND:
                c += s
                if c >= size:
                    c -= size
            table[c] = index[k]
            c += s
            pos[k] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return table


def shares(table: Sequence[int]) -> dict[int, int]:
    """How many slots each backend index owns."""
    out: dict[int, int] = {}
    for b in table:
        if b != NO_BACKEND:
            out[b] = out.get(b, 0) + 1
    return out


def table_bytes(table: Sequence[int]) -> bytes:
    """The table as the data plane stores it: little-endian u32 per slot, 0xffffffff = none."""
    return b"".join((b & 0xFFFFFFFF).to_bytes(4, "little") for b in table)
