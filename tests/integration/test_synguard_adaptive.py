"""Adaptive SYN cookies (the default) in the flood lab (fastpath/labs/floodlab): with no
flood, SYNs reach the server untouched, so a client without TCP timestamps still gets
window scaling (as `ss -ti` on the server shows), where cookies for every SYN cost it; under
a spoofed flood the port switches to cookies after at most one window's threshold of SYNs
per CPU, >= 99 % of legitimate connects succeed, `fastpath xdp stats` shows the mode and the
switches, and after the quiet period the port passes SYNs again."""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest

from fastpath.apps.guard import abi
from fastpath.apps.guard.config import DEFAULT_SYN_THRESHOLD
from fastpath.labs import floodlab
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

PORT = floodlab.SERVICE_PORT  # the lab's one-exchange service (probe, flood)
HOLD_PORT = floodlab.SERVICE_PORT + 3  # an echo server that keeps connections open (ss -ti)
FLOOD_FRAMES = 60_000_000
FLOOD_SECONDS = 40.0
ATTEMPTS = 250

SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
def echo(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

# Connects, exchanges once, prints its local port and holds the connection until SIGTERM.
HOLD_CLIENT = r"""
import signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"hello")
assert c.recv(16) == b"hello"
print("connected", c.getsockname()[1], flush=True)
signal.sigwait({signal.SIGTERM})
"""




def stats(ns: str) -> dict:
    return json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0").stdout)


@pytest.fixture
def lab(make_lab):
    topo = copy.deepcopy(floodlab.TOPOLOGY)
    # A client that offers no timestamps (Windows' default): cookies cannot keep its wscale.
    topo["nodes"]["client"] = {"sysctls": {"net.ipv4.tcp_timestamps": 0}}
    lab = make_lab(topo)
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left programs attached


def _server_tcp_info(lab, client_port: int) -> str:
    """`ss -tin` of the server's side of the connection from `client_port`."""
    out = lab.run("server", ["ss", "-tinH", "state", "established", f"( dport = :{client_port} )"]).stdout
    assert out.strip(), f"no server socket for client port {client_port}"
    return out


def _held_connection_info(lab) -> str:
    client = lab.spawn("client", [sys.executable, "-c", HOLD_CLIENT, floodlab.SERVER4, str(HOLD_PORT)])
    try:
        line = client.wait_output("connected")
        return _server_tcp_info(lab, int(line.split("connected", 1)[1].split()[0]))
    finally:
        client.stop()


def test_no_flood_client_without_timestamps_keeps_window_scaling(lab):
    ns = lab.netns("server")
    lab.spawn("server", [sys.executable, "-c", SERVER, str(HOLD_PORT)]).wait_output("ready")
    res = fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "native", "--ports", str(HOLD_PORT))
    assert "adaptive SYN cookies on" in res.stderr
    info = _held_connection_info(lab)
    print(f"\nadaptive, no flood: {info.strip()}")
    assert re.search(r"\bwscale:\d+,\d+", info), f"window scaling negotiated end to end: {info}"
    assert "ts " not in info.split("wscale")[0], "the client offered no timestamps"
    st = stats(ns)
    c = {k: v["packets"] for k, v in st["counters"].items()}
    assert c["pass_syn"] >= 1 and c["tx_cookie"] == 0 and c["to_cookie"] == 0, c
    [port] = st["ports"]
    assert (port["port"], port["mode"], port["setting"], port["to_cookie"], port["to_pass"]) == (
        HOLD_PORT, "pass", "adaptive", 0, 0)

    # What cookies for every SYN cost such a client: no timestamp to carry wscale in.
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", str(HOLD_PORT), "--cookies", "always")
    info = _held_connection_info(lab)
    print(f"always: {info.strip()}")
    assert "wscale" not in info, info
    assert stats(ns)["ports"][0]["mode"] == "cookies"
    fastpath("xdp", "detach", "eth0", "--netns", ns)


def test_a_busy_service_with_no_flood_keeps_passing_syns(lab):
    """What switches a port is SYNs that never complete a handshake, not the SYN rate: a
    churn client opening new connections at many times the threshold (every one completes)
    leaves the port in pass mode, with no cookie sent. The threshold's share of one window
    (threshold / 10) stays above the handshakes the client has in flight at once (32): a
    burst of more new connections than that on one CPU counts before any completes. The
    client runs on one CPU, so each connection's SYN and handshake ACK reach the guard on
    the same CPU, as a NIC's RSS keeps them; on veth a client thread that moves between
    CPUs can complete a handshake on another CPU than its SYN, which counts as unanswered."""
    threshold = 1000
    ns = lab.netns("server")
    bindir = Path(sys.executable).parent
    lab.spawn("server", [str(bindir / "fastpath-epoll-echo"), "--addr", "0.0.0.0", "--port", str(HOLD_PORT),
                         "--threads", "1"])
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "native", "--ports", str(HOLD_PORT),
             "--syn-threshold", f"{threshold}/s")
    res = lab.run("client", ["taskset", "-c", "0", str(bindir / "fastpath-echo-bench"),
                             "--addr", floodlab.SERVER4,
                             "--port", str(HOLD_PORT), "--threads", "2", "--size", "64", "--duration", "1.5",
                             "--warmup", "0", "--connections", "16", "--new-conn-per-request"],
                  timeout=60, check=False)
    out = json.loads(res.stdout)
    print(f"\nbusy service: {out['conn_per_s']:,.0f} conn/s, {out['connection_errors']} errors")
    # The premise: far over the threshold on any one CPU, which the SYN rate alone would switch.
    assert out["conn_per_s"] > 3 * threshold, out
    assert out["verify_failures"] == 0 and out["connection_errors"] == 0, out
    st = stats(ns)
    c = {k: v["packets"] for k, v in st["counters"].items()}
    assert c["pass_syn"] >= out["conns"] and c["tx_cookie"] == 0 and c["to_cookie"] == 0, c
    assert st["ports"][0]["mode"] == "pass", st["ports"]
    fastpath("xdp", "detach", "eth0", "--netns", ns)


def test_flood_switches_the_port_to_cookies_and_back(lab):
    ns = lab.netns("server")
    lab.spawn("server", floodlab.serve_argv()).wait_output("ready")
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "native", "--ports", str(PORT),
             "--quiet-period", "1")
    quiet = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=20, timeout=2.0)).stdout)
    assert quiet["ok"] == 20, quiet
    before = stats(ns)
    assert before["ports"][0]["mode"] == "pass"

    gen = lab.spawn("attacker", floodlab.flood_argv(lab, FLOOD_FRAMES, FLOOD_SECONDS))
    try:
        gen.wait_output("ready")
        probe = floodlab.probe_result(lab.run("client", floodlab.probe_argv(
            count=ATTEMPTS, timeout=5.0, interval=0.01, seconds=90), timeout=150).stdout)
        during = stats(ns)
        assert gen.running, f"the flood must outlast the probe: {probe}"
    finally:
        gen.stop()
    c = {k: v["packets"] for k, v in during["counters"].items()}
    port = during["ports"][0]
    print(f"\nadaptive under flood: {probe['ok']}/{probe['attempts']} ok; port {port}; counters {c}")
    assert port["mode"] == "cookies" and port["to_cookie"] >= 1, port
    assert c["tx_cookie"] > 10_000, "the flood was answered from XDP"
    # The switch comes in the first window in which one CPU sees more than the threshold:
    # until then each CPU passes at most one window's threshold of SYNs (+ the legitimate ones).
    window = abi.TUNABLES["SG_RATE_WINDOW_NS"] / 1e9
    bound = (len(os.sched_getaffinity(0)) * DEFAULT_SYN_THRESHOLD * window * port["to_cookie"]
             + quiet["attempts"] + ATTEMPTS)
    assert c["pass_syn"] - before["counters"]["pass_syn"]["packets"] <= bound, (c, bound)
    assert probe["ok"] >= 0.99 * probe["attempts"], probe

    # Quiet again: after the quiet period the next SYN goes to the stack.
    lab.run("client", ["sleep", "1.5"])
    after = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=5, timeout=2.0)).stdout)
    assert after["ok"] == 5, after
    port = stats(ns)["ports"][0]
    assert port["mode"] == "pass" and port["to_pass"] >= 1, port
    out = fastpath("xdp", "stats", "eth0", "--netns", ns, "--interval", "0").stdout
    assert "cookie ports" in out and str(PORT) in out
    fastpath("xdp", "detach", "eth0", "--netns", ns)
