"""`--fragments pass` and SYNs that come in fragments, in the flood lab
(fastpath/labs/floodlab): XDP lets the first fragment through, the kernel reassembles the
SYN, and the guard's nft table (fastpath/apps/guard/nft.py) must keep it from the listener:
a fragmented SYN flood from spoofed sources leaves no half-open connection in the server;
over IPv4 each SYN gets a SYNPROXY cookie SYN-ACK and a client whose SYN came in fragments
completes the handshake and exchanges data with the server; over IPv6 (where no client
fragments a SYN and the kernel's nft SYNPROXY cannot take a reassembled one) it is dropped."""

from __future__ import annotations

import json
import sys

import pytest

from fastpath.apps.guard import synguard as sg
from fastpath.apps.guard.config import GuardConfig
from fastpath.labs import floodlab

pytestmark = pytest.mark.integration

PORT = floodlab.SERVICE_PORT
FLOOD_SYNS = 400  # per family; the server's backlog is 128, so a quarter would already show

# Sends COUNT SYNs to TARGET:PORT, each from its own random source in the lab's spoofed
# network and split into fragments of 16 bytes of TCP header (IPv4) or 24 (IPv6), as raw
# frames on eth0 to the server's MAC. Prints the number of frames sent.
FRAG_FLOOD = r"""
import random, sys
from scapy.all import IP, IPv6, IPv6ExtHdrFragment, TCP, Ether, fragment, fragment6, sendp
iface, mac, target, port, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rnd = random.Random(7)
opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
frames = []
for _ in range(count):
    tcp = TCP(sport=rnd.randrange(1024, 65535), dport=port, flags="S", seq=rnd.randrange(1 << 32),
              window=64240, options=opts)
    if ":" in target:
        src = "fd99::%x:%x" % (rnd.randrange(1, 0xffff), rnd.randrange(1, 0xffff))
        pkt = IPv6(src=src, dst=target) / IPv6ExtHdrFragment(id=rnd.randrange(1 << 32)) / tcp
        frags = fragment6(pkt, 40 + 8 + 24)
    else:
        src = "10.99.%d.%d" % (rnd.randrange(256), rnd.randrange(1, 255))
        frags = fragment(IP(src=src, dst=target, id=rnd.randrange(1 << 16)) / tcp, fragsize=16)
    assert len(frags) >= 2
    frames += [Ether(dst=mac) / f for f in frags]
sendp(frames, iface=iface, verbose=False)
print("sent", len(frames), flush=True)
"""

# One client handshake by hand whose SYN comes in two fragments: wait for the SYN-ACK,
# ACK it, wait for the window to open, send a line and read the server's echo. Prints JSON.
# The client's kernel knows nothing of this connection; the test drops the RSTs it would send.
FRAG_CLIENT = r"""
import json, random, sys, time
from scapy.all import IP, IPv6, IPv6ExtHdrFragment, TCP, Ether, AsyncSniffer, fragment, fragment6, sendp
iface, mac, src, target, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
v6 = ":" in target
L3 = (lambda: IPv6(src=src, dst=target)) if v6 else (lambda: IP(src=src, dst=target))
sport, isn = random.randrange(20000, 30000), random.randrange(1 << 32)
def ts(opts):
    return dict((k, v) for k, v in opts).get("Timestamp")
def from_server(p):
    return TCP in p and p[TCP].sport == port and p[TCP].dport == sport
seen = []
sniffer = AsyncSniffer(iface=iface, lfilter=from_server, prn=seen.append, store=False)
sniffer.start()
time.sleep(0.5)
def wait(pred, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in list(seen):
            if pred(p[TCP]):
                return p[TCP]
        time.sleep(0.05)
    return None
out = {"synack": None}
syn = TCP(sport=sport, dport=port, flags="S", seq=isn, window=64240,
          options=[("MSS", 1400), ("SAckOK", b""), ("Timestamp", (1000, 0)), ("NOP", None), ("WScale", 0)])
if v6:
    frames = fragment6(IPv6(src=src, dst=target) / IPv6ExtHdrFragment(id=random.randrange(1 << 32)) / syn, 72)
else:
    frames = fragment(IP(src=src, dst=target, id=random.randrange(1 << 16)) / syn, fragsize=16)
out["fragments"] = len(frames)
sendp([Ether(dst=mac) / f for f in frames], iface=iface, verbose=False)
sa = wait(lambda t: t.flags == "SA")
if sa is not None:
    out["synack"] = {"window": sa.window, "options": [k for k, _ in sa.options]}
    their = ts(sa.options)[0]
    sendp(Ether(dst=mac) / L3() / TCP(sport=sport, dport=port, flags="A", seq=isn + 1, ack=sa.seq + 1,
          window=64240, options=[("NOP", None), ("NOP", None), ("Timestamp", (1001, their))]),
          iface=iface, verbose=False)
    opened = wait(lambda t: t.flags == "A" and t.window > 0)
    out["window_opened"] = opened is not None
    if opened is not None:
        msg = b"hello in fragments"
        stamp = ("Timestamp", (1002, ts(opened.options)[0]))
        sendp(Ether(dst=mac) / L3() / TCP(sport=sport, dport=port, flags="PA", seq=isn + 1, ack=sa.seq + 1,
              window=64240, options=[("NOP", None), ("NOP", None), stamp]) / msg, iface=iface, verbose=False)
        echo = wait(lambda t: bytes(t.payload).startswith(b"echo:"))
        out["echo"] = bytes(echo.payload).decode() if echo is not None else None
        sendp(Ether(dst=mac) / L3() / TCP(sport=sport, dport=port, flags="R", seq=isn + 1 + len(msg)),
              iface=iface, verbose=False)
sniffer.stop()
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def lab(make_lab):
    lab = make_lab(floodlab.TOPOLOGY)
    lab.spawn("server", floodlab.serve_argv()).wait_output("ready")
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left the guard attached


def half_open(lab) -> list[str]:
    """The server's SYN-RECV sockets on the service port (request sockets)."""
    out = lab.run("server", ["ss", "-Htn", "state", "syn-recv", f"( sport = :{PORT} )"]).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def synproxy_syns(lab) -> int:
    """SYNs SYNPROXY answered in the server's namespace (/proc/net/stat/synproxy, per CPU)."""
    rows = lab.run("server", ["cat", "/proc/net/stat/synproxy"]).stdout.splitlines()
    col = rows[0].split().index("syn_received")
    return sum(int(r.split()[col], 16) for r in rows[1:])


@pytest.mark.parametrize("target", [floodlab.SERVER4, floodlab.SERVER6], ids=["v4", "v6"])
def test_fragmented_syn_flood_gets_synproxy_not_the_listener(lab, target):
    ns = lab.netns("server")
    res = sg.attach("eth0", ns, "generic", GuardConfig(cookie_ports=(PORT,), fragments="pass"))
    before = synproxy_syns(lab)
    sent = lab.run("attacker", [sys.executable, "-c", FRAG_FLOOD, "eth0", lab.mac("server", "eth0"),
                                target, str(PORT), str(FLOOD_SYNS)], timeout=120).stdout
    assert sent.split()[:1] == ["sent"] and int(sent.split()[1]) >= 2 * FLOOD_SYNS, sent
    c = {k: v[0] for k, v in sg.read_counters(res.attachment).items()}
    assert c["fragment"] == FLOOD_SYNS, ("every first fragment seen by XDP and passed", c)
    # Half-open connections would last ~3 s (tcp_synack_retries=1): none may be there.
    spoofed = half_open(lab)
    assert spoofed == [], f"{len(spoofed)} fragmented spoofed SYNs reached the listener: {spoofed[:3]}"
    answered = synproxy_syns(lab) - before
    if ":" in target:
        assert answered == 0, ("a reassembled IPv6 SYN is dropped, not answered", answered)
    else:  # every SYN reassembled and answered by SYNPROXY (a few may still be in flight)
        assert answered >= FLOOD_SYNS * 0.9, (answered, c)


def test_client_with_fragmented_syn_connects_through_synproxy(lab):
    target, source = floodlab.SERVER4, floodlab.CLIENT4
    ns = lab.netns("server")
    sg.attach("eth0", ns, "generic", GuardConfig(cookie_ports=(PORT,), fragments="pass"))
    # The client's kernel would reset a connection it did not open.
    lab.run("client", ["nft", "-f", "-"], input=(
        "table inet fastpath_test_norst {\n chain out {\n"
        "  type filter hook output priority filter; policy accept;\n"
        f"  tcp dport {PORT} tcp flags & rst == rst drop\n }}\n}}\n"))
    before = synproxy_syns(lab)
    out = lab.run("client", [sys.executable, "-c", FRAG_CLIENT, "eth0", lab.mac("server", "eth0"), source,
                             target, str(PORT)], timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\n{result}")
    assert result["fragments"] >= 2
    assert result["synack"] is not None, "no SYN-ACK for the fragmented SYN"
    # SYNPROXY's SYN-ACK: a cookie, a zero window, the options the guard offers.
    assert result["synack"]["window"] == 0 and "Timestamp" in result["synack"]["options"]
    assert synproxy_syns(lab) > before
    assert result["window_opened"], result
    assert result["echo"] == "echo:hello in fragments", result
