"""BPF_PROG_TEST_RUN: packet bytes in, verdict, output bytes and ns/packet out.

The core of every data-plane test (golden packets) and per-packet benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpath.bpf import syscall

XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}


@dataclass(frozen=True)
class RunResult:
    verdict: str
    retval: int
    output: bytes
    ns_per_packet: float
    repeat: int


def run_xdp(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """Run an XDP program on one frame `repeat` times; the output is the last run's frame."""
    res = syscall.prog_test_run(prog_fd, packet, repeat=repeat)
    verdict = XDP_VERDICTS.get(res.retval, f"retval={res.retval}")
    return RunResult(verdict, res.retval, res.data_out, float(res.duration_ns), max(repeat, 1))
