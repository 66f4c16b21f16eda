"""The `synflood-packet` benchmark's harness (fastpath.bpf.testrun's frame-restoring one,
moving the tail back): every verdict path yields its verdict on an unchanged frame, run
after run, and the numbers are sane."""

from __future__ import annotations

import os

import pytest

from fastpath.bench import BenchContext
from fastpath.bench.scenarios import synflood
from fastpath.bpf import testrun

pytestmark = pytest.mark.bpf


def test_synflood_packet_harness(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    sc = synflood.SynfloodPacket()
    ctx = BenchContext("synflood-packet", True, 1, tmp_path)
    try:
        sc.setup(ctx)  # checks every path's verdict and the restored frame itself
        for c in ("cookie-v4", "cookie-v6", "drop-port", "cookie-flood", "harness"):
            sc._configure(c)
            frame = sc._frame(c)
            res = testrun.run_xdp(sc._fd(c), frame, repeat=50)
            assert res.verdict == ("XDP_TX" if c == "harness" else synflood.PATHS[c][1])
            assert res.output == frame, "the harness restores the frame after every run"
        with sc._map("sources", 2) as sources:
            assert sum(1 for _ in sources.keys()) >= 50, "cookie-flood: a new source every run"
        got = sc.measure("cookie-v4", ctx)
        assert 0 < got["ns_per_packet"] < 100_000 and got["ns_net"] < got["ns_per_packet"]
    finally:
        sc.teardown(ctx)


def test_load_restoring_rejects_an_unknown_end(tmp_path):
    with pytest.raises(ValueError, match="moves"):
        testrun.load_restoring([tmp_path / "f.c"], "f", 64, {}, moves="middle")
