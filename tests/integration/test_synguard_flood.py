"""The SYN guard against a real spoofed SYN flood in a namespace lab (fastpath/labs/floodlab),
over IPv4 and over IPv6: without it legitimate connects fail; with it >= 99 % of >= 200
connect+exchange attempts succeed during the flood, the counters account for every frame
XDP saw, and detach leaves nothing behind."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from fastpath.apps.guard import abi, nft
from fastpath.bpf import testrun, xdp
from fastpath.labs import floodlab
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

ATTEMPTS = 250




def _sysctl(lab, node: str, name: str) -> str:
    return lab.run(node, ["sysctl", "-n", name]).stdout.strip()


def engines() -> list[str]:
    """The packet engine runs everywhere; the live engine where this host allows live frames
    (doctor's xdp-live-frames row says which)."""
    return ["packet"] + (["live"] if testrun.live_frames_refused() is None else [])


def _flood_and_probe(lab, attempts: int, timeout: float, interval: float,
                     target: str, engine: str) -> tuple[dict, int, float]:
    gen = lab.spawn("attacker", floodlab.flood_argv(lab, floodlab.OUTLAST_FRAMES,
                                                    floodlab.outlast_seconds(timeout=timeout),
                                                    target=target, engine=engine))
    try:
        gen.wait_output("ready")
        assert floodlab.flood_engine(gen.output()) == engine
        lab.run("client", ["sleep", "0.5"])  # let the flood fill the SYN queue first
        probe = floodlab.probe_result(lab.run(
            "client", floodlab.probe_argv(target=target, count=attempts, timeout=timeout, interval=interval,
                                          seconds=floodlab.PROBE_SECONDS),
            timeout=150).stdout)
        assert gen.running, f"the flood must outlast the probe: {probe}"
        gen.signal(signal.SIGTERM)
        gen.wait(30)
        result = floodlab.flood_result(gen.output())
        assert result.engine == engine
    finally:
        gen.stop()
    return probe, result.sent, result.seconds


@pytest.fixture
def lab(make_lab):
    lab = make_lab(floodlab.TOPOLOGY)
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left programs attached


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("target", [floodlab.SERVER4, floodlab.SERVER6], ids=["v4", "v6"])
def test_guard_keeps_service_reachable_under_spoofed_flood(lab, target, engine):
    ns = lab.netns("server")
    assert _sysctl(lab, "server", "net.ipv4.tcp_syncookies") == "0"
    loose_before = _sysctl(lab, "server", "net.netfilter.nf_conntrack_tcp_loose")

    # Without the guard: the spoofed SYNs fill the SYN queue and real clients time out.
    server = lab.spawn("server", floodlab.serve_argv())
    server.wait_output("ready")
    base = floodlab.probe_result(lab.run("client", floodlab.probe_argv(target=target, count=10,
                                                                       timeout=2)).stdout)
    assert base["ok"] == 10, f"service broken before any flood: {base}"
    unguarded, sent0, _ = _flood_and_probe(lab, attempts=20, timeout=1.0, interval=0.05, target=target,
                                           engine=engine)
    print(f"\nwithout guard: {unguarded['ok']}/{unguarded['attempts']} ok, flood {sent0} frames")
    assert unguarded["failed"] >= 0.8 * unguarded["attempts"], f"the flood did not hurt: {unguarded}"
    # A fresh listener drops the half-open connections the unguarded flood left.
    server.stop()
    server = lab.spawn("server", floodlab.serve_argv())
    server.wait_output("ready")

    # With the guard.
    xdp_before = floodlab.xdp_rx_packets(lab)
    att = json.loads(fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "native", "--ports",
                              str(floodlab.SERVICE_PORT), "--cookies", "always", "--json").stdout)
    assert att["mode"] == "native" and att["replaced"] is False
    table = att["nft_table"]
    assert nft.exists(ns, table) and nft.ports(ns, table) == [floodlab.SERVICE_PORT]
    assert _sysctl(lab, "server", "net.netfilter.nf_conntrack_tcp_loose") == "0"
    # 5 s per attempt: a connect whose first SYN or SYN-ACK is lost in the flood still
    # succeeds on the kernel's first retransmit (1 s), as it would for any real client.
    guarded, sent, seconds = _flood_and_probe(lab, attempts=ATTEMPTS, timeout=5.0, interval=0.01,
                                              target=target, engine=engine)
    stats = json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json",
                                "--interval", "0").stdout)
    xdp_seen = floodlab.xdp_rx_packets(lab) - xdp_before
    c = {k: v["packets"] for k, v in stats["counters"].items()}
    print(f"with guard: {guarded['ok']}/{guarded['attempts']} ok {guarded['failures']} "
          f"({guarded['stalled']} stalled after connect), flood {sent} frames "
          f"in {seconds:.1f}s ({sent / seconds:,.0f}/s), XDP saw {xdp_seen}, counters {c}")
    assert guarded["attempts"] >= 200
    if target == floodlab.SERVER4:
        assert guarded["ok"] >= 0.99 * guarded["attempts"], guarded
    else:
        # Over IPv6 at MTU 1500 a handshake ACK lost in the flood cannot be recovered (README:
        # lost handshake ACK; a zero-window probe reads as a valid ACK of the next MSS class):
        # that connection stalls after its connect. Every other attempt must succeed.
        assert guarded["ok"] + guarded["stalled"] >= 0.99 * guarded["attempts"], guarded
        assert guarded["ok"] >= 0.97 * guarded["attempts"], guarded
    # Every frame XDP saw is in exactly one outcome counter; the driver's count also holds the
    # few frames (neighbour discovery) that came between its first reading and the attach.
    assert xdp_seen - 50 <= stats["frames"] <= xdp_seen
    # The premise: the flood reached the guard at many times the rate that keeps the unguarded
    # server's SYN queue full, and XDP answered it with cookies. What share of the frames the
    # generator's socket accepted reaches XDP is the machine's (the bridge and the veth ring in
    # front of XDP drop the rest while the server's CPU is busy), so it is printed, not asserted.
    fill_rate = floodlab.SERVE_BACKLOG / floodlab.HALF_OPEN_SECONDS
    print(f"XDP saw {xdp_seen / sent:.0%} of the frames sent; {c['tx_cookie'] / seconds:,.0f} cookies/s, "
          f"{c['tx_cookie'] / seconds / fill_rate:,.0f}x the rate that fills the unguarded SYN queue")
    assert c["tx_cookie"] >= 100 * fill_rate * seconds, "the flood must reach the guard and be answered"
    # The flood is accounted for: answered with cookies, nothing dropped, nothing to the stack
    # but the good clients' validated ACKs, their flows and a little background traffic.
    # Every frame XDP saw landed in exactly one outcome counter (a client retransmitting an
    # ACK for a cookie it already used lands in drop_cookie).
    assert sum(c[name] for name in abi.OUTCOME_NAMES) == stats["frames"]
    assert c["tx_cookie"] + c["pass_cookie"] + c["pass_flow"] + c["drop_cookie"] >= stats["frames"] - 100
    assert c["pass_other"] + c["pass_tcp"] < 100
    # Every good connect went through a validated cookie, except where the client reused a
    # port whose earlier connection's flow entry the guard still holds (then: pass_flow).
    assert c["pass_cookie"] >= guarded["ok"] - (guarded["attempts"] - guarded["local_ports"]), (
        "every good connect went through a validated cookie")
    assert c["drop_malformed"] == c["drop_error"] == c["pass_syn"] == 0
    synproxy = lab.run("server", ["cat", "/proc/net/stat/synproxy"]).stdout.splitlines()[1:]
    valid = sum(int(line.split()[3], 16) for line in synproxy if line.strip())
    assert valid >= guarded["ok"], "SYNPROXY validated the cookies of the good connects"
    served = server.stop()
    assert served in (0, -15)

    # Detach leaves nothing behind: program, pins, state, nft table, conntrack setting.
    fastpath("xdp", "detach", "eth0", "--netns", ns)
    assert "xdp" not in lab.run("server", ["ip", "link", "show", "eth0"]).stdout
    assert not Path(att["pin_dir"]).exists()
    assert not xdp.state_path("eth0", ns).exists()
    assert not nft.exists(ns, table)
    assert "fastpath" not in lab.run("server", ["nft", "list", "ruleset"]).stdout
    assert _sysctl(lab, "server", "net.netfilter.nf_conntrack_tcp_loose") == loose_before
    assert all(s["netns"] != ns for s in json.loads(fastpath("xdp", "status", "--json").stdout))


BARE = {
    "name": "bare",
    "nodes": {"client": {}, "server": {"sysctls": {"net.ipv4.tcp_syncookies": 0,
                                                   "net.ipv4.tcp_synack_retries": 1}}},
    # One veth pair with the kernel's defaults (GRO off, TX checksum offload on): the
    # setting a first XDP lab, a container or a pod has.
    "links": [{"endpoints": ["client:eth0", "server:eth0"]}],
    "addresses": {"client:eth0": ["10.67.0.1/24"], "server:eth0": ["10.67.0.2/24"]},
    "routes": {"server": [{"dst": floodlab.SPOOFED_NET, "via": "10.67.0.1"}]},
}


def test_guard_on_a_bare_veth_pair(make_lab):
    """The README's `fastpath xdp attach` on a plain veth pair, no program on the peer and
    no helper from the test: by default the guard takes generic mode there (it says so) and
    needs nothing on the peer; attached natively, the runtime puts its pass program on the
    client's end, connects keep working (>= 99 %) with and without a spoofed flood, and
    detach removes both."""
    lab = make_lab(BARE)
    ns, peer_ns = lab.netns("server"), lab.netns("client")
    server = lab.spawn("server", floodlab.serve_argv(port=80))
    server.wait_output("ready")
    try:
        res = fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", "80", "--cookies", "always",
                       "--json")
        att = json.loads(res.stdout)
        assert (att["mode"], att["peer"]) == ("generic", {}), att
        assert "eth0 is a veth: the guard attaches in generic mode" in res.stderr, res.stderr
        assert xdp.read_state("eth0", peer_ns) is None
        fastpath("xdp", "detach", "eth0", "--netns", ns)
        res = fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", "80", "--cookies", "always",
                       "--mode", "native", "--json")
        att = json.loads(res.stdout)
        assert att["mode"] == "native"
        assert att["peer"] == {"ifname": "eth0", "netns": peer_ns, "helper": True}
        assert f"veth peer eth0 in {peer_ns}" in res.stderr
        assert xdp.read_state("eth0", peer_ns).program == xdp.PEER_PROGRAM
        quiet = floodlab.probe_result(lab.run("client", floodlab.probe_argv(
            target="10.67.0.2", port=80, count=100, timeout=2.0, interval=0.005), timeout=120).stdout)
        assert quiet["ok"] >= 99, quiet
        gen = lab.spawn("client", [sys.executable, "-m", "fastpath.labs.flood", "--iface", "eth0",
                                   "--dst-mac", lab.mac("server", "eth0"), "--dst", "10.67.0.2",
                                   "--dport", "80", "--src-net", floodlab.SPOOFED_NET,
                                   "--count", str(floodlab.OUTLAST_FRAMES),
                                   "--seconds", str(floodlab.outlast_seconds())])
        try:
            gen.wait_output("ready")
            flooded = floodlab.probe_result(lab.run("client", floodlab.probe_argv(
                target="10.67.0.2", port=80, count=200, timeout=5.0, interval=0.01,
                seconds=floodlab.PROBE_SECONDS), timeout=150).stdout)
            assert gen.running, "the flood must outlast the probe"
        finally:
            gen.stop()
        stats = json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json",
                                    "--interval", "0").stdout)
        cookies = stats["counters"]["tx_cookie"]["packets"]
        print(f"\nbare veth: quiet {quiet['ok']}/100, flooded {flooded['ok']}/{flooded['attempts']}, "
              f"{cookies} cookies")
        assert cookies > 10_000, "the flood reached the guard"
        assert flooded["ok"] >= 0.99 * flooded["attempts"], flooded
    finally:
        fastpath("xdp", "detach", "eth0", "--netns", ns, check=False)
        server.stop()
    assert xdp.read_state("eth0", peer_ns) is None, "detach removed the peer's pass program"
    assert "xdp" not in lab.run("client", ["ip", "link", "show", "eth0"]).stdout
