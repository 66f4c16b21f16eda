"""An idle connection outlives the guard's flow cache: in the flood lab
(fastpath/labs/floodlab), with cookies for every SYN and a `flows` table of 128 entries, a
connection opened through a cookie sits idle while four times the table's size of new
connections come and go through cookies (their FIN or RST ends their entries), then batches
of the table's size stay open at once until one evicts its entry; its next segment misses the table,
the stack's socket for the tuple is found in XDP (bpf_skc_lookup_tcp), and the exchange
works."""

from __future__ import annotations

import signal
import socket
import sys

import pytest

from fastpath.apps.guard import abi
from fastpath.apps.guard import synguard as sg
from fastpath.apps.guard.config import GuardConfig
from fastpath.labs import floodlab

pytestmark = pytest.mark.integration

PORT = floodlab.SERVICE_PORT  # the churn: the lab's one-exchange service
IDLE_PORT = floodlab.SERVICE_PORT + 2  # the idle connection: an echo server that keeps it open
FLOWS = 128
CHURN = 4 * FLOWS
MAX_BATCHES = 6

# An echo server that keeps each connection open until the client closes it. It answers
# more bytes than it gets: were the sequence numbers on both sides to advance alike, a later
# segment could still pass the cookie check while the cookie is young (2 minutes), and the
# test would not see what a real idle connection (idle for longer) sees.
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
            c.sendall(b"echo:" + data)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

# Opens N connections, one exchange each, and holds them all until SIGTERM.
HOLDERS = r"""
import signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
held = []
for _ in range(int(sys.argv[3])):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    c.sendall(b"hold")
    assert c.recv(16) == b"echo:hold"
    held.append(c)
print("held", len(held), flush=True)
signal.sigwait({signal.SIGTERM})
"""

# One exchange, then idle until SIGUSR1, then one more exchange (10 s to get its echo).
IDLE_CLIENT = r"""
import signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"before")
assert c.recv(16) == b"echo:before"
print("connected", c.getsockname()[1], flush=True)
signal.sigwait({signal.SIGUSR1})
try:
    c.sendall(b"after")
    got = c.recv(16)
    print("echo", got.decode() or "closed", flush=True)
except Exception as exc:
    print("echo failed", repr(exc), flush=True)
"""


@pytest.fixture
def lab(make_lab):
    lab = make_lab(floodlab.TOPOLOGY)
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left programs attached


def _flow_ports(att) -> set[int]:
    with sg.open_map(att, "flows") as m:
        return {socket.ntohs(k.client_port) for k in m.keys() if socket.ntohs(k.server_port) == IDLE_PORT}


def test_idle_connection_survives_eviction_from_the_flow_table(lab, monkeypatch):
    ns = lab.netns("server")
    monkeypatch.setitem(abi.TUNABLES, "SG_FLOWS_MAX", FLOWS)
    lab.spawn("server", [sys.executable, "-c", SERVER, str(IDLE_PORT)]).wait_output("ready")
    lab.spawn("server", floodlab.serve_argv()).wait_output("ready")
    res = sg.attach("eth0", ns, "native", GuardConfig(cookie_ports=(PORT, IDLE_PORT), cookies="always"))
    att = res.attachment
    holders = []
    try:
        idle = lab.spawn("client", [sys.executable, "-c", IDLE_CLIENT, floodlab.SERVER4, str(IDLE_PORT)])
        line = idle.wait_output("connected")
        idle_port = int(line.split("connected", 1)[1].split()[0])
        assert idle_port in _flow_ports(att), "the idle connection came through a cookie"

        churn = floodlab.probe_result(lab.run("client", floodlab.probe_argv(
            port=PORT, count=CHURN, timeout=5.0, interval=0.002, seconds=120), timeout=180).stdout)
        assert churn["ok"] >= 0.99 * CHURN, churn
        # Batches of FLOWS open connections until the LRU has evicted the idle one (its
        # choice of victim is approximate; a bounded number of batches).
        for _ in range(MAX_BATCHES):
            holders.append(lab.spawn("client", [sys.executable, "-c", HOLDERS, floodlab.SERVER4,
                                                str(IDLE_PORT), str(FLOWS)]))
            holders[-1].wait_output("held", timeout=120)
            if idle_port not in _flow_ports(att):
                break
        with sg.open_map(att, "flows") as m:
            assert len(list(m.keys())) <= FLOWS
        assert idle_port not in _flow_ports(att), "the churn must have evicted the idle connection's entry"

        idle.signal(signal.SIGUSR1)
        idle.wait(30)
        assert "echo echo:after" in idle.output(), idle.output()
        c = {k: v[0] for k, v in sg.read_counters(att).items()}
        print(f"\nchurn {churn['ok']}/{CHURN} ok; counters {c}")
        assert c["flow_socket"] >= 1, "the evicted connection was found in the stack"
    finally:
        for h in holders:
            h.stop()
        sg.detach("eth0", ns)
