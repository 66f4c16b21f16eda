"""The `synflood-packet` benchmark's harness (fastpath.bpf.testrun's frame-restoring one,
moving the tail back): every verdict path yields its verdict on an unchanged frame, run
after run, and the numbers are sane."""

from __future__ import annotations

import os

import pytest

from fastpath.bench import BenchContext, kernel_peers, synproxy_live
from fastpath.bench.scenarios import synflood
from fastpath.bpf import peer, testrun
from fastpath.core.namespaces import list_netns
from fastpath.errors import FastpathError

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


@pytest.mark.integration
def test_synflood_kernel_xdp_synproxy_lets_legit_clients_through_a_flood(tmp_path):
    """The `kernel-xdp-synproxy` contender end to end: the kernel's XDP SYN proxy on the
    lab's server answers a spoofed flood from XDP while legit clients connect through it
    (its cookie, netfilter's SYNPROXY, the service); afterwards nothing of it is left."""
    if os.geteuid() != 0:
        pytest.skip("the synflood lab needs root")
    why = kernel_peers.unavailable_reason(kernel_peers.SYNPROXY)
    if why:
        pytest.skip(f"the kernel's SYN proxy cannot be built here: {why}")
    sc = synflood.Synflood()
    ctx = BenchContext("synflood", True, 1, tmp_path, log=lambda _line: None)
    try:
        sc.setup(ctx)
        assert synflood.KERNEL_PROXY not in ctx.skipped
        assert sc._kernel is not None
        lab, ns = sc._lab, sc._lab.netns("server")
        before = sc._kernel.synacks()
        got = sc.measure(synflood.KERNEL_PROXY, ctx)  # checks flood arrival and SYN-ACK count itself
        assert got["success"] >= 50, f"legit connects through the kernel SYN proxy under a flood: {got}"
        assert sc._kernel.synacks() - before > 1000, "the flood's SYNs were answered from XDP"
        # off() took everything away: no XDP program on the server or its bridge port, no
        # rules, the server's sysctls back to the lab's
        bridge_port = peer.find("eth0", ns)
        assert bridge_port is not None and not bridge_port.has_xdp
        assert "xdp" not in lab.run("server", ["ip", "-d", "link", "show", "eth0"]).stdout
        assert synproxy_live.TABLE not in lab.run("server", ["nft", "list", "tables"]).stdout
        assert lab.run("server", ["sysctl", "-n", "net.ipv4.tcp_syncookies"]).stdout.strip() == "0"
        # a set-up failing half-way (no such interface, found after the rules went in)
        # takes back what it had made
        with pytest.raises(FastpathError, match="nosuch0"):
            sc._kernel.on("nosuch0", ns)
        assert synproxy_live.TABLE not in lab.run("server", ["nft", "list", "tables"]).stdout
        assert lab.run("server", ["sysctl", "-n", "net.ipv4.tcp_syncookies"]).stdout.strip() == "0"
    finally:
        sc.teardown(ctx)
    assert not [n for n in list_netns() if n.startswith(sc._lab.name)]
