"""The `lb-packet` benchmark's harness: it must measure the real data plane (every mode
forwards, the frame is restored between runs) and its numbers must be sane."""

from __future__ import annotations

import os

import pytest

from fastpath.bench import BenchContext
from fastpath.bench.scenarios import lb as lb_bench
from fastpath.bpf import testrun

pytestmark = pytest.mark.bpf


def test_lb_packet_harness(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    sc = lb_bench.LbPacket()
    ctx = BenchContext("lb-packet", True, 1, tmp_path)
    try:
        sc.setup(ctx)
        for c in sc.contenders():
            frame = lb_bench._frame(lb_bench._PACKET_VIPS[c])
            for metric in ("ns_hit", "ns_miss"):
                res = testrun.run_xdp(sc._run[(c, metric)], frame, repeat=50)
                assert res.verdict == "XDP_TX"
                assert res.output == frame, "the harness restores the frame after every run"
            got = sc.measure(c, ctx)
            assert set(got) == {"ns_hit", "ns_miss"}
            assert all(0 < v < 100_000 for v in got.values()), got
        # the data plane costs more than the empty harness, and a miss more than a hit
        dsr = sc.measure("dsr", ctx)
        noop = sc.measure("harness", ctx)
        assert dsr["ns_hit"] > noop["ns_hit"] and dsr["ns_miss"] > dsr["ns_hit"]
    finally:
        sc.teardown(ctx)
