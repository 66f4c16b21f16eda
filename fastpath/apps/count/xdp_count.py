"""Control plane of bpf/xdp_count.c: the counting program that proves the runtime.

Mirrors bpf/xdp_count.h; tests/bpf/test_xdp_count.py checks the mirror against bcc.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from fastpath.bpf import xdp
from fastpath.bpf.loader import ProgramSpec
from fastpath.bpf.maps import TypedMap

SPEC = ProgramSpec(name="xdp_count", entry="xdp_count", maps=("counters", "generations"),
                   defaults={"WATCH_PORT": 9, "GENERATION": 0}, command="fastpath count")

# enum count_stat
COUNT_ALL, COUNT_IPV4, COUNT_IPV6, COUNT_OTHER, COUNT_WATCHED, COUNT_STAT_MAX = range(6)
STAT_NAMES = ("all", "ipv4", "ipv6", "other", "watched")
COUNT_GENERATIONS = 16


class CountValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


@dataclass(frozen=True)
class Totals:
    packets: int
    bytes: int


def read_counters(att: xdp.Attachment) -> dict[str, Totals]:
    """Totals over all CPUs per counter, read from the pinned map."""
    with TypedMap.open_pinned(att.map_path("counters"), ctypes.c_uint32, CountValue) as m:
        return {name: Totals(**m.sum_percpu(ctypes.c_uint32(i))) for i, name in enumerate(STAT_NAMES)}


def read_generations(att: xdp.Attachment) -> dict[int, Totals]:
    """Watched frames counted by each program version that has run."""
    with TypedMap.open_pinned(att.map_path("generations"), ctypes.c_uint32, CountValue) as m:
        out = {g: Totals(**m.sum_percpu(ctypes.c_uint32(g))) for g in range(COUNT_GENERATIONS)}
    return {g: t for g, t in out.items() if t.packets}
