"""The window scale the guard promises is the one the server really uses
(fastpath/apps/guard/listeners.py), in the flood lab (fastpath/labs/floodlab): a server
whose listener sets a small SO_RCVBUF (so the kernel gives it a lower scale than the
namespace's sysctls imply) gets clients that were told its scale through the guard's
cookie SYN-ACK, and a transfer of a few MB from client to server completes; listeners that
need different scales are refused at attach in one line; a listener that appears after
attach with another scale is named by `fastpath xdp stats`."""

from __future__ import annotations

import json
import sys

import pytest

from fastpath.apps.guard import nft
from fastpath.bpf import xdp
from fastpath.labs import floodlab
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

PORT, OTHER_PORT = floodlab.SERVICE_PORT, floodlab.SERVICE_PORT + 1
SMALL_RCVBUF = 16384  # the kernel doubles it: 32 KiB of buffer, window scale 0 on Linux 6.x
TRANSFER = 4 << 20

# A listener with SO_RCVBUF set (0: left alone), on IPv4 and IPv6. Each connection: read
# until EOF, then answer with the byte count, the SHA-256 and the socket's own view of the
# window scales (tcp_info: byte 6, snd_wscale in the low nibble, rcv_wscale in the high).
SERVER = r"""
import hashlib, json, socket, sys, threading
rcvbuf, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
if rcvbuf:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
s.bind(("::", port))
s.listen(16)
print("ready", flush=True)
def serve(c):
    with c:
        c.settimeout(60)
        info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        digest, count = hashlib.sha256(), 0
        while data := c.recv(1 << 16):
            digest.update(data)
            count += len(data)
        c.sendall(json.dumps({"bytes": count, "sha256": digest.hexdigest(),
                              "rcv_wscale": info[6] >> 4}).encode())
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Connect, send N pseudo-random bytes, read the server's report. Prints JSON: the report,
# the SHA-256 sent, the scale the client was told (its snd_wscale), its retransmissions, and
# the error that ended it early (a send or receive stalled for 30 s), if any.
CLIENT = r"""
import hashlib, json, random, socket, sys
target, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = random.Random(11).randbytes(size)
c = socket.create_connection((target, port), timeout=30)
sent, reply, error = 0, b"", None
try:
    while sent < size:
        sent += c.send(payload[sent:sent + (1 << 16)])
    c.shutdown(socket.SHUT_WR)
    while data := c.recv(4096):
        reply += data
except OSError as exc:
    error = f"after {sent} bytes sent: {exc!r}"
info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
print(json.dumps({"server": json.loads(reply) if reply else None,
                  "sha256": hashlib.sha256(payload).hexdigest(), "snd_wscale": info[6] & 0x0F,
                  "total_retrans": int.from_bytes(info[100:104], "little"),
                  "error": error}), flush=True)
"""




@pytest.fixture
def lab(make_lab):
    lab = make_lab(floodlab.TOPOLOGY)
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left the guard attached


def serve(lab, rcvbuf: int, port: int = PORT) -> None:
    lab.spawn("server", [sys.executable, "-c", SERVER, str(rcvbuf), str(port)]).wait_output("ready")


def transfer(lab, target: str = floodlab.SERVER4, port: int = PORT) -> dict:
    out = lab.run("client", [sys.executable, "-c", CLIENT, target, str(port), str(TRANSFER)], timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_small_receive_buffer_gets_its_own_window_scale_through_the_guard(lab):
    ns = lab.netns("server")
    serve(lab, 0, OTHER_PORT)
    serve(lab, SMALL_RCVBUF, PORT)
    # Without the guard: the scale the kernel picks by itself, from the sysctls and from the
    # small buffer (the premise: they differ).
    sysctl_scale = transfer(lab, port=OTHER_PORT)["server"]["rcv_wscale"]
    server_scale = transfer(lab)["server"]["rcv_wscale"]
    assert server_scale < sysctl_scale

    # a cookie for every SYN: the path where the guard, not the listener, states the scale
    att = json.loads(fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports",
                              str(PORT), "--cookies", "always", "--json").stdout)
    before = _counters(ns)
    for target in (floodlab.SERVER4, floodlab.SERVER6):
        result = transfer(lab, target)
        print(f"\n{target}: {result}")
        assert result["error"] is None, result
        assert result["server"]["bytes"] == TRANSFER and result["server"]["sha256"] == result["sha256"]
        # The client reads the server's windows with the scale the server applies to them.
        assert result["snd_wscale"] == result["server"]["rcv_wscale"] == server_scale, result
    after = _counters(ns)
    assert after["tx_cookie"] >= before["tx_cookie"] + 2, "both connections went through the cookies"
    assert after["pass_cookie"] >= before["pass_cookie"] + 2
    assert att["window_scale"]["source"] == "listeners"
    assert att["window_scale"]["value"] == server_scale == att["defines"]["SG_WSCALE"]
    assert f"wscale {server_scale} " in lab.run("server", ["nft", "list", "table", "inet",
                                                          att["nft_table"]]).stdout


def _counters(ns: str) -> dict[str, int]:
    out = json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0").stdout)
    return {k: v["packets"] for k, v in out["counters"].items()}


def test_listeners_with_different_scales_are_refused(lab):
    ns = lab.netns("server")
    serve(lab, SMALL_RCVBUF, PORT)
    serve(lab, 0, OTHER_PORT)
    res = fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", f"{PORT},{OTHER_PORT}", check=False)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "different TCP window scales" in lines[0]
    assert f":{PORT} uses 0" in lines[0] and f":{OTHER_PORT} uses" in lines[0], lines[0]
    assert xdp.read_state("eth0", ns) is None and not xdp.pin_dir("eth0", ns).exists()
    assert "fastpath" not in lab.run("server", ["nft", "list", "ruleset"]).stdout
    # One of them alone is fine; adding the other live is refused the same way, nothing changed.
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--synproxy", "always",
             "--ports", str(OTHER_PORT))
    res = fastpath("xdp", "ports", "eth0", "--netns", ns, "--add", str(PORT), check=False)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"listener on [::]:{PORT} uses window scale 0" in res.stderr
    ports = json.loads(fastpath("xdp", "ports", "eth0", "--netns", ns, "--json").stdout)
    assert ports["cookie_ports"] == [OTHER_PORT] and ports["synproxy_ports"] == [OTHER_PORT]


def test_no_listener_at_attach_uses_sysctls_and_stats_warns_later(lab):
    ns = lab.netns("server")
    att = json.loads(fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports",
                              str(PORT), "--synproxy", "always", "--json").stdout)
    scale = att["window_scale"]
    assert scale["source"] == "sysctl" and scale["listeners"] == []
    assert f"no listener on port {PORT} yet" in scale["note"]
    assert json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0")
                      .stdout)["warnings"] == []
    serve(lab, SMALL_RCVBUF, PORT)
    res = fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0")
    warnings = json.loads(res.stdout)["warnings"]
    assert len(warnings) == 1 and f"[::]:{PORT} uses window scale 0" in warnings[0], warnings
    assert f"guard advertises {scale['value']}" in warnings[0]
    assert "warning:" in res.stderr and "fastpath xdp attach eth0" in res.stderr
    # Re-attach takes the listener's scale.
    again = json.loads(fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports",
                                str(PORT), "--synproxy", "always", "--json").stdout)
    assert again["window_scale"]["source"] == "listeners" and again["window_scale"]["value"] == 0
    assert json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0")
                      .stdout)["warnings"] == []
    assert nft.exists(ns, again["nft_table"])
