"""`counter`: what counting every frame costs in XDP, per packet, via BPF_PROG_TEST_RUN.

Contenders, all run on the same IPv4/UDP frame in the same kernel:
- `fastpath`: bpf/xdp_count.c (parses L2-L4, per-CPU counters, no atomics);
- `textbook` (bpf/counter_peers.c): the counter most XDP tutorials show, one shared array slot bumped with an
  atomic add per frame (no parsing, so it does strictly less work on one CPU; its cost
  shows up as cache-line bouncing once several CPUs count at once);
- `noop`: XDP_PASS and nothing else, the floor every program pays (the baseline).

Measured once on one CPU, and once with every CPU running the program at the same time.
Targets, ratios within one run (no machine's absolute timings): on one CPU, parsing L2-L4
costs fastpath at most 1.25× the textbook's time (>= 0.8× as fast); with every CPU counting,
per-CPU counters beat the shared atomic by >= 1.1×.
"""

from __future__ import annotations

import os
import threading

from fastpath.apps.count import xdp_count
from fastpath.bench import BenchContext, Metric, Scenario, Target, register_scenario
from fastpath.bpf import loader, testrun

# The textbook counter and the no-op floor (bpf/counter_peers.c), one entry each.
_PEERS = {name: loader.ProgramSpec(name="counter_peers", entry=name, maps=())
          for name in ("textbook", "noop")}

# 14 + 20 + 8 + 22 bytes: a minimal IPv4/UDP frame to the watched port (9).
_FRAME = bytes.fromhex(
    "02000000000202000000000108004500003200010000401166b80a0000010a000002"
    "d4310009001eea47") + b"x" * 22


@register_scenario
class Counter(Scenario):
    name = "counter"
    description = "ns/packet of counting frames in XDP: fastpath xdp_count vs textbook atomic counter"
    metrics = [
        Metric("ns_per_packet", "ns/packet", "lower"),
        # Every CPU counting at once: where a shared counter's cache line starts to bounce.
        Metric("ns_per_packet_all_cpus", "ns/packet", "lower"),
    ]
    baseline = "noop"
    targets = [
        Target("ns_per_packet", "fastpath", ">=", 0.8, versus="textbook"),
        Target("ns_per_packet_all_cpus", "fastpath", ">=", 1.1, versus="textbook"),
    ]

    def contenders(self) -> list[str]:
        return ["fastpath", "textbook", "noop"]

    def setup(self, ctx: BenchContext) -> None:
        self._progs: dict[str, loader.LoadedProgram] = {
            "fastpath": loader.load(xdp_count.SPEC),
        }
        for name, spec in _PEERS.items():
            self._progs[name] = loader.load(spec)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        fd = self._progs[contender].prog_fd
        repeat = ctx.pick(2_000_000, 20_000)
        res = testrun.run_xdp(fd, _FRAME, repeat=repeat)
        if res.verdict != "XDP_PASS":
            raise RuntimeError(f"{contender} returned {res.verdict}")
        return {"ns_per_packet": res.ns_per_packet,
                "ns_per_packet_all_cpus": _all_cpus(fd, repeat)}

    def teardown(self, ctx: BenchContext) -> None:
        for prog in getattr(self, "_progs", {}).values():
            prog.close()


def _all_cpus(prog_fd: int, repeat: int) -> float:
    """Mean ns/packet with one test run per CPU at the same time (threads pinned; the
    syscall releases the GIL, so the runs really overlap)."""
    cpus = sorted(os.sched_getaffinity(0))
    results: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(cpus))

    def worker(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # pid 0 = this thread
        start.wait()
        ns = testrun.run_xdp(prog_fd, _FRAME, repeat=repeat).ns_per_packet
        with lock:
            results.append(ns)

    threads = [threading.Thread(target=worker, args=(c,)) for c in cpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results) / len(results)
