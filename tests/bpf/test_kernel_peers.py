"""The kernel's own XDP programs the benchmarks run as peers (fastpath.bench.kernel_peers),
built from the kernel source package: they do their job on the benchmarks' frames (the
premise of every ratio against them), and the harness around them restores every frame.

The first run extracts the peers' files from the source package and compiles them into
build/kernel-peers/ (tens of seconds, most of it reading the compressed archive); later
runs reuse that build and take a second or two."""

from __future__ import annotations

import os
import subprocess

import pytest

from fastpath.bench import kernel_peers as kp
from fastpath.bench.scenarios import lb, synflood
from fastpath.bpf import libbpf, loader, testrun

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def frames():
    return synflood._frames(8080, (40004, 8081))  # ports of the socket-lookup frames, unused here


def _need(peer):
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    why = kp.unavailable_reason(peer)
    if why:
        pytest.skip(f"the kernel peers cannot be built here: {why}")


def test_synproxy_answers_drops_and_passes_on_the_bench_frames(frames):
    _need(kp.SYNPROXY)
    bench = kp.SynproxyBench(frames, 80, synflood.FRAME_LEN)  # runs check() itself
    try:
        plain = bench._fd("plain")
        syn = frames["syn4"]
        res = testrun.run_xdp(plain, syn)
        assert res.verdict == "XDP_TX"
        cookie = kp.check_synack(syn, res.output)  # ack = seq + 1, swapped, checksums valid
        good = kp.cookie_ack(syn, cookie, synflood.FRAME_LEN)
        assert testrun.run_xdp(plain, good).verdict == "XDP_PASS", "the kernel accepts its own cookie"
        wrong = kp.cookie_ack(syn, cookie ^ 0x5A5A, synflood.FRAME_LEN)
        assert testrun.run_xdp(plain, wrong).verdict == "XDP_DROP", "a wrong cookie is dropped"
        assert testrun.run_xdp(plain, frames["bad_ack"]).verdict == "XDP_DROP"
        for c in bench.PATHS:
            got = bench.measure(c, 200)
            assert got["ns_per_packet"] > 0 and got["ns_net"] < got["ns_per_packet"]
    finally:
        bench.close()


def test_tunnel_encapsulates_the_ipip_frame_to_its_tunnel():
    _need(kp.TUNNEL)
    vip = lb._PACKET_VIPS["tunnel"]
    frame = lb._frame(vip)
    bench = kp.TunnelBench(frame, vip, 80)
    try:
        res = testrun.run_xdp(bench._fd("plain"), frame)
        assert res.verdict == "XDP_TX" and len(res.output) == len(frame) + 20
        kp.check_tunnel(frame, res.output, bench.SADDR, bench.DADDR, bench.DMAC)
        assert res.output[:6] == bench.DMAC and res.output[23] == 4  # outer protocol: IPIP
        other = lb._frame("10.1.0.99")  # no tunnel for that VIP: the sample passes it
        assert testrun.run_xdp(bench._fd("plain"), other).verdict == "XDP_PASS"
        ns, noop = bench.measure(200)
        assert ns > 0 and noop > 0
    finally:
        bench.close()


def test_peer_harness_builds_clean_and_restores_the_frame(tmp_path):
    """bpf/peer_harness.c on its own terms: -Wall -Wextra -Werror with a stand-in peer that
    rewrites the frame, and every run sees the original frame again."""
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    why = libbpf.missing()
    if why:
        pytest.skip(why)
    stand_in = tmp_path / "stand_in.c"
    stand_in.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        "static __always_inline int stand_in(struct xdp_md *ctx)\n{\n"
        "\tunsigned char *d = (void *)(long)ctx->data;\n"
        "\tif ((void *)(d + 1) > (void *)(long)ctx->data_end)\n\t\treturn XDP_ABORTED;\n"
        "\td[0] ^= 0xff;\n\treturn bpf_xdp_adjust_head(ctx, -20) ? XDP_ABORTED : XDP_TX;\n}\n"
        'char _license[] SEC("license") = "GPL";\n')
    out = tmp_path / "h.o"
    argv = ["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Wextra", "-Werror", *kp._multiarch_include(),
            "-include", str(stand_in), "-DBENCH_PROCESS=stand_in", "-DFRAME_LEN=64", "-c",
            str(loader.bpf_source_dir() / "peer_harness.c"), "-o", str(out)]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    frame = bytes(range(64))
    with libbpf.BpfObject(out) as obj:
        obj.load()
        got = testrun.run_xdp(obj.prog_fd("fp_peer_harness"), frame, repeat=50)
    assert got.verdict == "XDP_TX" and got.output == frame
