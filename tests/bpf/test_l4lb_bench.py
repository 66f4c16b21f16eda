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
            # the kernel's tunnel runs in its own harness (tests/bpf/test_kernel_peers.py)
            for metric in ("ns_hit", "ns_miss") if c != "tunnel" else ():
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


def test_textbook_peer_balances():
    """The peer lb-packet measures fastpath against is a working balancer: a frame to its VIP
    goes back out to a backend's MAC, the flow is pinned, other frames pass."""
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    from fastpath.bpf import loader

    spec = loader.ProgramSpec(name="lb_peers", entry="textbook", maps=())
    with loader.load(spec) as prog:
        lb_bench._fill_textbook(prog, "10.1.0.1", 80, 3)
        frame = lb_bench._frame("10.1.0.1")
        res = testrun.run_xdp(prog.prog_fd, frame)
        assert res.verdict == "XDP_TX"
        out = res.output
        assert out[6:12] == frame[0:6], "the old destination becomes the source"
        backend = int.from_bytes(out[0:6], "big") - 0x0200000000AA
        assert 0 <= backend < 3, out[0:6].hex()
        assert out[12:] == frame[12:], "direct routing leaves the IP packet alone"
        flows = list(prog.table("tb_flows").items())
        assert len(flows) == 1 and flows[0][1].value == backend
        other = testrun.run_xdp(prog.prog_fd, lb_bench._frame("10.1.0.9"))
        assert other.verdict == "XDP_PASS" and other.output == lb_bench._frame("10.1.0.9")
