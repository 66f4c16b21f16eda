"""ICMP errors of nat flows through the balancer, judged by real kernels: a backend's "port
unreachable" reaches the client's connected UDP socket as ECONNREFUSED (so it was
translated back to the VIP with checksums the client's kernel accepts), and a client-side
"fragmentation needed" about a VIP reply lowers the backend's path MTU to the client (so it
was translated to the backend's flow with checksums the backend's kernel accepts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.lb import store
from fastpath.bpf import xdp

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_icmp_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


L = _sibling("test_lb")  # its lab: client -> balancer -> three backends
ECHO_PORT, CLOSED_PORT = 5353, 5454
ECHO_VIP, CLOSED_VIP = f"{L.VIP}:53/udp", f"{L.VIP}:54/udp"
CLIENT_PORT = 41000

# A UDP echo server on one unconnected socket.
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

# One datagram to the VIP from a connected socket: "answer", "refused" or "timeout".
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"query")
try:
    s.recv(64)
    print("answer")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""

# From the client: "fragmentation needed" to the VIP about its reply VIP:53 -> client.
FRAG_NEEDED = """
import sys
from scapy.all import ICMP, IP, UDP, Raw, send
vip, client, sport, mtu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
quoted = IP(src=vip, dst=client) / UDP(sport=53, dport=sport) / Raw(b"query")
send(IP(src=client, dst=vip) / ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(bytes(quoted)), verbose=False)
"""


@pytest.fixture
def nat_lab(make_lab):
    lab = make_lab(L.topology("nat"))
    t = L.Bench(lab, "nat")
    sw = lab.netns("sw")
    lab.run("lb", ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])
    echo = lab.spawn("b1", [sys.executable, "-c", ECHO, str(ECHO_PORT)])
    echo.wait_output("ready")
    try:
        L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--table-size", "4099")
        t.lb("vip", "add", ECHO_VIP, "--mode", "nat")
        t.lb("backend", "add", ECHO_VIP, f"{L.BACKENDS['b1']}:{ECHO_PORT}")
        t.lb("vip", "add", CLOSED_VIP, "--mode", "nat")
        t.lb("backend", "add", CLOSED_VIP, f"{L.BACKENDS['b1']}:{CLOSED_PORT}")
        yield t
    finally:
        if store.state_path("eth0", t.ns).exists() or xdp.read_state("eth0", t.ns):
            L.fastpath("lb", "detach", "eth0", "--netns", t.ns, check=False)
        assert xdp.read_state("lb-eth0", sw) is None, "detach removes the peer's pass program"


def ask(t, port: int, sport: int) -> str:
    argv = [sys.executable, "-c", ASK, L.VIP, str(port), str(sport)]
    return t.lab.run("client", argv, timeout=30).stdout.strip()


def counters(t) -> dict[str, int]:
    return {k: v["packets"] for k, v in json.loads(t.lb("stats", "--json").stdout)["counters"].items()}


def test_port_unreachable_from_a_backend_reaches_the_client_about_the_vip(nat_lab):
    t = nat_lab
    assert ask(t, 53, CLIENT_PORT) == "answer", "the nat flow itself works"
    before = counters(t)
    assert ask(t, 54, CLIENT_PORT + 1) == "refused"
    assert counters(t)["icmp_reverse"] >= before["icmp_reverse"] + 1


def test_fragmentation_needed_about_a_vip_reply_reaches_the_backend(nat_lab):
    t = nat_lab
    client, backend = L.CLIENT, L.BACKENDS["b1"]
    assert ask(t, 53, CLIENT_PORT + 2) == "answer"
    assert "mtu 1300" not in t.lab.run("b1", ["ip", "route", "get", client]).stdout
    before = counters(t)
    t.lab.run("client", [sys.executable, "-c", FRAG_NEEDED, L.VIP, client, str(CLIENT_PORT + 2), "1300"],
              timeout=30)
    assert counters(t)["icmp_forwarded"] == before["icmp_forwarded"] + 1
    # The backend's kernel took the error for its own flow backend:5353 -> client.
    route = t.lab.run("b1", ["ip", "route", "get", client, "from", backend]).stdout
    assert "mtu 1300" in route, route
