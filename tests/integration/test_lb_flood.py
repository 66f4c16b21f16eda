"""Established connections through the XDP load balancer survive a spoofed-source SYN flood
of ten times its flow tables while the backend set changes, dsr and nat, in a namespace lab
(test_lb's: a client, the balancer, three backends answering with their name).

The connections sit idle through the flood (an idle flow is the first an LRU evicts), and
the client's connections and the flood run on one CPU, so they share the balancer's CPU as
one receive queue would: a per-CPU table share cannot hide an eviction.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.lb import abi
from fastpath.bpf import syscall
from fastpath.bpf.maps import TypedMap

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_flood_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


L = _sibling("test_lb")   # topology, SERVER, the lab fixture and CLI helpers
lb_lab = L.lb_lab
fastpath = L.fastpath

TABLE = 1024                # --conntrack and --half-open: the smallest allowed
FLOOD = 20 * TABLE          # frames sent; at least 10 x TABLE must reach the balancer
CONNS = 48
SPOOFED = "10.99.0.0/16"

# K connections, each asked "who" once; then idle until SIGTERM, when each is asked once
# more. Prints the first answers, then the second ones (or the error). Bounded: 120 s.
IDLE_HOLD = """
import json, signal, socket, sys, time
host, port, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
conns, first = [], []
for i in range(k):
    s = socket.create_connection((host, port), timeout=2)
    s.sendall(b"who\\n")
    first.append(s.recv(64).decode().strip())
    conns.append(s)
print("ready " + json.dumps(first), flush=True)
end = time.monotonic() + 120
while not stop and time.monotonic() < end:
    time.sleep(0.05)
second = []
for s in conns:
    try:
        s.settimeout(2)
        s.sendall(b"who\\n")
        second.append(s.recv(64).decode().strip() or "error: closed")
    except OSError as exc:
        second.append(f"error: {exc}")
print("result " + json.dumps(second), flush=True)
"""


def vip_packets(t) -> int:
    return json.loads(t.lb("stats", "--json").stdout)["vips"][0]["packets"]


@pytest.mark.parametrize("lb_lab", ["dsr", "nat"], indirect=True)
def test_established_connections_survive_a_syn_flood_while_backends_change(lb_lab):
    t = lb_lab
    lab = t.lab
    att = json.loads(fastpath("lb", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--conntrack",
                              str(TABLE), "--half-open", str(TABLE), "--json").stdout)
    t.lb("vip", "add", t.vip, "--mode", t.mode)
    for node in ("b1", "b2"):
        t.lb("backend", "add", t.vip, t.backend(node))
    # The half-open table holds TABLE flows over the CPUs online: each possible CPU's share.
    with TypedMap.open_pinned(str(Path(att["pin_dir"]) / "half_open"), *abi.MAP_TYPES["half_open"]) as m:
        possible, online = syscall.possible_cpus(), syscall.online_cpus()
        assert m.info.max_entries >= TABLE * possible // online

    cpu = ["taskset", "-c", "0"]
    hold = lab.spawn("client", [*cpu, sys.executable, "-c", IDLE_HOLD, L.VIP, str(L.VIP_PORT), str(CONNS)])
    try:
        first = json.loads(hold.wait_output("ready").split("ready ", 1)[1].splitlines()[0])
        assert set(first) == {"b1", "b2"}, first
        # The backend set changes: b3 joins and the ring now sends a third of new flows there.
        t.lb("backend", "add", t.vip, t.backend("b3"))
        before = vip_packets(t)
        flood = lab.run("client", [*cpu, sys.executable, "-m", "fastpath.labs.flood", "--iface", "eth0",
                                   "--dst-mac", lab.mac("lb", "eth0"), "--dst", L.VIP,
                                   "--dport", str(L.VIP_PORT), "--src-net", SPOOFED, "--count", str(FLOOD),
                                   "--seconds", "30", "--engine", "packet"], timeout=60)
        assert "sent" in flood.stdout, flood.stdout
        seen = vip_packets(t) - before
        assert seen >= 10 * TABLE, f"only {seen} flood frames reached the balancer"
        hold.signal(15)
        assert hold.wait(30) == 0
        second = json.loads(hold.output().split("result ", 1)[1].splitlines()[0])
    finally:
        if hold.running:
            hold.signal(9)
    moved = [(i, a, b) for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert not moved, f"{len(moved)} of {CONNS} connections lost their backend: {moved[:5]}"
    counters = json.loads(t.lb("stats", "--json").stdout)["counters"]
    assert counters["flow_confirmed"]["packets"] >= CONNS
