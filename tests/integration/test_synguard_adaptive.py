"""Adaptive SYN cookies (the default) in the flood lab (fastpath/labs/floodlab): with no
flood, SYNs reach the server untouched, so a client without TCP timestamps still gets
window scaling (as `ss -ti` on the server shows), where cookies for every SYN cost it; under
a spoofed flood the port switches to cookies after at most one window's threshold of SYNs
per CPU, >= 99 % of legitimate connects succeed, `fastpath xdp stats` shows the mode and the
switches, and after the quiet period the port passes SYNs again. The SYNPROXY rules (and
the conntrack they turn on) are in only while the port needs cookies."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastpath.apps.guard import abi, existing, nft, ondemand
from fastpath.apps.guard.config import DEFAULT_SYN_THRESHOLD
from fastpath.labs import floodlab
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

PORT = floodlab.SERVICE_PORT  # the lab's one-exchange service (probe, flood)
HOLD_PORT = floodlab.SERVICE_PORT + 3  # an echo server that keeps connections open (ss -ti)
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




def nft_tables(ns: str) -> list[str]:
    """The guard's SYNPROXY tables in the namespace."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if nft.TABLE_PREFIX in line]


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
    (threshold / 10 = 50) stays above the handshakes the client has in flight at once (32): a
    burst of more new connections than that on one CPU counts before any completes. The
    client runs on one CPU, so each connection's SYN and handshake ACK reach the guard on
    the same CPU, as a NIC's RSS keeps them; on veth a client thread that moves between
    CPUs can complete a handshake on another CPU than its SYN, which counts as unanswered."""
    threshold = 500
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

    assert before["synproxy"]["setting"] == "on-demand" and not before["synproxy"]["armed"], before
    assert before["synproxy"]["watcher_pid"], "attach started the on-demand watcher"
    assert not nft_tables(ns), "no SYNPROXY table (and no conntrack) while no port needs cookies"

    gen = lab.spawn("attacker", floodlab.flood_argv(lab, floodlab.OUTLAST_FRAMES, floodlab.outlast_seconds()))
    try:
        gen.wait_output("ready")
        t0 = time.monotonic()
        probe = floodlab.probe_result(lab.run("client", floodlab.probe_argv(
            count=ATTEMPTS, timeout=5.0, interval=0.01, seconds=floodlab.PROBE_SECONDS), timeout=150).stdout)
        during = stats(ns)
        elapsed = time.monotonic() - t0
        assert gen.running, f"the flood must outlast the probe: {probe}"
        tables = nft_tables(ns)
    finally:
        gen.stop()
    c = {k: v["packets"] for k, v in during["counters"].items()}
    port = during["ports"][0]
    print(f"\nadaptive under flood: {probe['ok']}/{probe['attempts']} ok; port {port}; counters {c}")
    assert port["mode"] == "cookies" and port["to_cookie"] >= 1, port
    assert c["tx_cookie"] > 10_000, "the flood was answered from XDP"
    proxy = during["synproxy"]
    assert proxy["armed"] and tables == [proxy["table"]], (proxy, tables)
    # Until the watcher has armed the rules, the switched port passes SYNs to the stack: tens
    # of ms of the flood here (the watcher polls every 50 ms; arming takes tens of ms); the
    # bound, 3 s, leaves room for a slow machine under the flood.
    held = c["cookie_held"]
    rate = (c["tx_cookie"] + held) / elapsed
    print(f"held while arming: {held} SYNs, {held / rate * 1e3:.0f} ms of a {rate:,.0f} SYN/s flood")
    assert 0 < held <= rate * 3.0, (held, rate)
    # The switch comes in the first window in which one CPU sees more than the threshold:
    # until then each CPU passes at most one window's threshold of SYNs (+ the legitimate ones).
    window = abi.TUNABLES["SG_RATE_WINDOW_NS"] / 1e9
    bound = (len(os.sched_getaffinity(0)) * DEFAULT_SYN_THRESHOLD * window * port["to_cookie"]
             + quiet["attempts"] + ATTEMPTS)
    assert c["pass_syn"] - held - before["counters"]["pass_syn"]["packets"] <= bound, (c, bound)
    assert probe["ok"] >= 0.99 * probe["attempts"], probe

    # Quiet again: after the quiet period the next SYN goes to the stack.
    lab.run("client", ["sleep", "1.5"])
    after = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=5, timeout=2.0)).stdout)
    assert after["ok"] == 5, after
    port = stats(ns)["ports"][0]
    assert port["mode"] == "pass" and port["to_pass"] >= 1, port
    out = fastpath("xdp", "stats", "eth0", "--netns", ns, "--interval", "0").stdout
    assert "cookie ports" in out and str(PORT) in out
    # Every port back in pass mode and no connection SYNPROXY opened still open: the watcher
    # takes the rules out again (after its linger), and conntrack with them.
    deadline = time.monotonic() + ondemand.LINGER_S + 10
    while stats(ns)["synproxy"]["armed"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stats(ns)["synproxy"]["armed"] and not nft_tables(ns)
    after = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=5, timeout=2.0)).stdout)
    assert after["ok"] == 5, after
    fastpath("xdp", "detach", "eth0", "--netns", ns)


def test_on_demand_rules_outlive_the_flood_while_a_synproxy_connection_is_open(lab):
    """A connection SYNPROXY opened during a flood needs its rules for its whole life (they
    translate its sequence numbers): after the flood and the quiet period the rules stay
    armed while it is open, it still echoes, and once it closed the watcher takes them out.
    The watcher goes with the guard: a switch to `--synproxy always` stops it, detach too."""
    ns = lab.netns("server")
    lab.spawn("server", [sys.executable, "-c", SERVER, str(HOLD_PORT)]).wait_output("ready")
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports", str(HOLD_PORT),
             "--syn-threshold", "1000/s", "--quiet-period", "0.5")
    pid = stats(ns)["synproxy"]["watcher_pid"]
    assert pid and Path(f"/proc/{pid}").exists()
    assert _sysctl(lab, "net.ipv4.tcp_syncookies") == "1", "attach turned the kernel's cookies on"
    # Half-open connections live ~7 s (two SYN-ACK retransmits) instead of the lab's ~3 s: the
    # full queue outlasts the checks below on a slow machine too.
    lab.run("server", ["sysctl", "-qw", "net.ipv4.tcp_synack_retries=2"])
    # Stopped below; its bound is a backstop (every step before the check is bounded).
    gen = lab.spawn("attacker", floodlab.flood_argv(lab, floodlab.OUTLAST_FRAMES, 300.0, port=HOLD_PORT))
    holder = None
    try:
        gen.wait_output("ready")
        deadline = time.monotonic() + 30
        while not (armed := stats(ns)["synproxy"]["armed"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert armed, "the flood armed the rules"
        # The SYNs that reached the stack before the switch and while the rules armed filled
        # the listener's SYN queue (64) with half-open connections. SYNPROXY's SYN to the
        # server still gets an answer, a cookie, as attach set tcp_syncookies to 1 (at 0 the
        # server drops it, and the client, which sees its connection open, hangs).
        assert _syn_recv(lab, HOLD_PORT) >= 64, "the premise: a full SYN queue"
        assert lab.run("client", [sys.executable, "-c", CONNECT, floodlab.SERVER4, str(HOLD_PORT)]) \
            .stdout.split() == ["ok"] * 3
        # Once they expired, the server answers SYNPROXY with an ISN of its own, which
        # SYNPROXY translates for the connection's whole life.
        deadline = time.monotonic() + 30
        while _syn_recv(lab, HOLD_PORT) >= 64 and time.monotonic() < deadline:
            time.sleep(0.2)
        holder = lab.spawn("client", [sys.executable, "-u", "-c", HOLD_ECHO, floodlab.SERVER4,
                                      str(HOLD_PORT)])
        holder.wait_output("connected", timeout=30)
        assert gen.running, "the flood outlasted the connect"
    finally:
        gen.stop()
    c = {k: v["packets"] for k, v in stats(ns)["counters"].items()}
    assert c["pass_cookie"] >= 1, ("the held connection went through a cookie and SYNPROXY", c)
    assert existing.spliced(ns, [HOLD_PORT]) == 1, "SYNPROXY translates the held connection"
    assert nft_tables(ns)
    # the port goes back to pass mode after the quiet period (at its next SYN) ...
    time.sleep(1.0)
    assert lab.run("client", [sys.executable, "-c", CONNECT, floodlab.SERVER4, str(HOLD_PORT)]).stdout \
        .split() == ["ok"] * 3
    assert stats(ns)["ports"][0]["mode"] == "pass", stats(ns)["ports"]
    # ... but the rules stay past the watcher's linger while the spliced connection is open
    time.sleep(ondemand.LINGER_S + 1.5)
    assert stats(ns)["synproxy"]["armed"] and nft_tables(ns), "rules kept for the open connection"
    echoes = holder.output().count("echo ok")
    time.sleep(1.0)
    out = holder.output()
    assert "broken" not in out and out.count("echo ok") > echoes, ("the spliced connection still echoes", out)
    holder.stop()
    deadline = time.monotonic() + ondemand.SPLICE_RECHECK_S + 10
    while stats(ns)["synproxy"]["armed"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stats(ns)["synproxy"]["armed"] and not nft_tables(ns), "rules out once it closed"
    # the watcher goes with on-demand rules and with the guard
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports", str(HOLD_PORT),
             "--synproxy", "always")
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "a switch to --synproxy always stopped it"
    assert stats(ns)["synproxy"] == {"setting": "always", "armed": True, "table": nft_tables(ns)[0],
                                     "watcher_pid": None}
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports", str(HOLD_PORT))
    pid = stats(ns)["synproxy"]["watcher_pid"]
    assert pid, "back on demand: a new watcher runs"
    # it found the rules armed (nothing is cut at the switch) and takes them out after its linger
    deadline = time.monotonic() + ondemand.LINGER_S + 10
    while nft_tables(ns) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not nft_tables(ns) and not stats(ns)["synproxy"]["armed"]
    fastpath("xdp", "detach", "eth0", "--netns", ns)
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "detach stopped the watcher"
    assert _sysctl(lab, "net.ipv4.tcp_syncookies") == "0", "detach restored the lab's setting"


def _sysctl(lab, key: str) -> str:
    return lab.run("server", ["sysctl", "-n", key]).stdout.strip()


def _syn_recv(lab, port: int) -> int:
    """Half-open connections to `port` in the server's SYN queue."""
    out = lab.run("server", ["ss", "-Htn", "state", "syn-recv", f"( sport = :{port} )"]).stdout
    return len(out.splitlines())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# Three connect + echo + close, an "ok" line each.
CONNECT = r"""
import socket, sys
for _ in range(3):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
        c.sendall(b"hi")
        print("ok" if c.recv(8) == b"hi" else "wrong", flush=True)
"""

# Connects, prints "connected", then every 0.3 s sends a ping through the connection and
# prints "echo ok" when it comes back ("broken" and the error when it does not).
HOLD_ECHO = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"hello")
assert c.recv(16) == b"hello"
print("connected", flush=True)
while True:
    time.sleep(0.3)
    try:
        c.sendall(b"ping")
        ok = c.recv(16) == b"ping"
    except OSError as exc:
        print("broken", exc, flush=True)
        break
    print("echo ok" if ok else "broken: wrong echo", flush=True)
"""
