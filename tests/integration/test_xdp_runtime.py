"""The BPF runtime end to end with the counting program: native XDP on a veth in a lab,
real UDP traffic, counters read from other CLI processes, atomic program replacement while
packets flow, detach leaving nothing behind."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from fastpath.bpf import xdp
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

PORT = 9000
TOPO = {
    "name": "xdprt",
    "nodes": {"client": {}, "server": {}},
    "links": [{"endpoints": ["client:eth0", "server:eth0"]}],
    "addresses": {"client:eth0": ["10.77.0.1/24"], "server:eth0": ["10.77.0.2/24"]},
}

# Sends UDP datagrams at a paced rate until SIGTERM (or a hard bound), then prints the count.
SENDER = f"""
import signal, socket, sys, time
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, t_end = 0, time.monotonic() + 600
print("ready", flush=True)
while not stop and sent < 3_000_000 and time.monotonic() < t_end:
    for _ in range(20):
        s.sendto(b"fastpath-test-payload", ("10.77.0.2", {PORT}))
        sent += 1
    time.sleep(0.004)
print("sent", sent, flush=True)
"""

# Counts datagrams until SIGTERM, then prints the count.
RECEIVER = f"""
import signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: never drop for want of buffer
s.bind(("0.0.0.0", {PORT}))
s.settimeout(0.2)
got, stop = 0, False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    try:
        s.recv(2048)
        got += 1
    except (TimeoutError, InterruptedError):
        if stop:
            break
print("received", got, flush=True)
"""




def stats(iface: str, netns: str) -> dict:
    return json.loads(fastpath("count", "stats", iface, "--netns", netns, "--json").stdout)


def _count(out: str, word: str) -> int:
    for line in out.splitlines():
        if line.startswith(word + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {word!r} line in {out!r}")


def test_replace_under_load_counts_every_packet(make_lab):
    lab = make_lab(TOPO)
    ns = lab.netns("server")
    att = json.loads(fastpath("count", "attach", "eth0", "--netns", ns, "--mode", "native",
                              "--watch-port", str(PORT), "--json").stdout)
    assert att["mode"] == "native" and att["generation"] == 1 and att["replaced"] is False
    pins = Path(att["pin_dir"])
    assert {p.name for p in pins.iterdir()} == {"link", "prog", "counters", "generations"}
    assert "xdp" in lab.run("server", ["ip", "link", "show", "eth0"]).stdout

    receiver = lab.spawn("server", [sys.executable, "-c", RECEIVER])
    receiver.wait_output("ready")
    sender = lab.spawn("client", [sys.executable, "-c", SENDER])
    sender.wait_output("ready")

    seen: list[int] = []
    for generation in (2, 3, 4):
        # Wait until the running version has counted traffic, then swap it for the next.
        deadline = time.monotonic() + 20
        while str(generation - 1) not in stats("eth0", ns)["generations"]:
            assert time.monotonic() < deadline, f"generation {generation - 1} never saw traffic"
            time.sleep(0.1)
        seen.append(stats("eth0", ns)["counters"]["watched"]["packets"])
        new = json.loads(fastpath("count", "attach", "eth0", "--netns", ns,
                                  "--watch-port", str(PORT), "--json").stdout)
        assert new["replaced"] is True and new["generation"] == generation
        assert new["link_id"] == att["link_id"], "replacement must reuse the pinned link"
        assert new["prog_id"] != att["prog_id"]
        seen.append(stats("eth0", ns)["counters"]["watched"]["packets"])
    deadline = time.monotonic() + 20
    while "4" not in stats("eth0", ns)["generations"]:
        assert time.monotonic() < deadline, "generation 4 never saw traffic"
        time.sleep(0.1)

    sender.signal(15)
    sender.wait(10)
    time.sleep(0.5)
    receiver.signal(15)
    receiver.wait(10)
    sent = _count(sender.output(), "sent")
    received = _count(receiver.output(), "received")

    final = stats("eth0", ns)
    watched = final["counters"]["watched"]["packets"]
    per_gen = {int(g): v["packets"] for g, v in final["generations"].items()}
    assert seen == sorted(seen), f"counter went backwards across replacements: {seen}"
    assert sent > 0
    # No frame passed unprocessed: every datagram the socket got was counted by some version,
    # and every version's share adds up to the total.
    assert received == sent, f"lost datagrams on the veth: sent {sent}, received {received}"
    assert watched == sent
    assert sum(per_gen.values()) == watched
    assert set(per_gen) == {1, 2, 3, 4} and all(v > 0 for v in per_gen.values())
    assert final["counters"]["ipv4"]["packets"] >= watched

    ls = json.loads(fastpath("bpf", "ls", "--json").stdout)
    mine = [a for a in ls if a["netns"] == ns]
    assert len(mine) == 1 and mine[0]["alive"] is True and mine[0]["generation"] == 4

    fastpath("count", "detach", "eth0", "--netns", ns)
    assert not pins.exists()
    assert not xdp.state_path("eth0", ns).exists()
    assert "xdp" not in lab.run("server", ["ip", "link", "show", "eth0"]).stdout


def test_generic_mode_and_counters_from_second_process(make_lab):
    lab = make_lab(TOPO)
    ns = lab.netns("server")
    att = json.loads(fastpath("count", "attach", "eth0", "--netns", ns, "--mode", "generic",
                              "--json").stdout)
    try:
        assert att["mode"] == "generic"
        assert "xdpgeneric" in lab.run("server", ["ip", "link", "show", "eth0"]).stdout
        lab.run("client", ["ping", "-c", "5", "-i", "0.05", "-W", "2", "10.77.0.2"], timeout=20)
        counters = stats("eth0", ns)["counters"]
        # 5 echo requests at least (plus ARP/ND traffic, counted too).
        assert counters["ipv4"]["packets"] >= 5
        assert counters["all"]["packets"] == sum(
            counters[k]["packets"] for k in ("ipv4", "ipv6", "other"))
    finally:
        fastpath("count", "detach", "eth0", "--netns", ns)
    assert "xdp" not in lab.run("server", ["ip", "link", "show", "eth0"]).stdout


@pytest.mark.parametrize("args,needle", [
    (["count", "attach", "nosuch0", "--netns", "{ns}"], "unknown interface 'nosuch0'"),
    (["count", "attach", "eth0", "--netns", "fastpath-no-such-ns"], "does not exist"),
    (["count", "attach", "eth0", "--netns", "{ns}", "--watch-port", "70000"], "out of range"),
    (["count", "stats", "eth0", "--netns", "{ns}"], "not attached"),
    (["count", "detach", "eth0", "--netns", "{ns}"], "nothing attached"),
])
def test_bad_input_one_line_nothing_left(make_lab, args, needle):
    lab = make_lab(TOPO)
    ns = lab.netns("server")
    res = fastpath(*[a.format(ns=ns) for a in args], check=False)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 or "usage:" in res.stderr, res.stderr
    assert needle in res.stderr
    assert not xdp.pin_dir("eth0", ns).exists()
    assert not xdp.state_path("eth0", ns).exists()
