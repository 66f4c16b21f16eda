"""fastpath/apps/guard/listeners.py without a kernel: the probe SYN's bytes, reading the
scale from a SYN-ACK, and the choice of one scale from what the listeners answered."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from fastpath.apps.guard import listeners
from fastpath.errors import FastpathError


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_probe_syn_is_a_valid_linux_like_syn(addr):
    a = ipaddress.ip_address(addr)
    seg = listeners.syn_segment(a, a, 40000, 8080, 12345)
    l3 = IP(src=addr, dst=addr) if a.version == 4 else IPv6(src=addr, dst=addr)
    tcp = TCP(seg)
    assert (tcp.sport, tcp.dport, tcp.seq, str(tcp.flags)) == (40000, 8080, 12345, "S")
    assert dict(tcp.options)["WScale"] == 7 and dict(tcp.options)["MSS"] == 1460
    assert "SAckOK" in dict(tcp.options) and "Timestamp" in dict(tcp.options)
    again = l3 / TCP(seg)
    del again[TCP].chksum  # scapy computes it anew over the pseudo header
    assert type(l3)(bytes(again))[TCP].chksum == tcp.chksum


def _synack(options: list, sport: int = 8080, dport: int = 40000, flags: str = "SA") -> bytes:
    return bytes(TCP(sport=sport, dport=dport, flags=flags, options=options))


def test_synack_wscale():
    full = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 0)]
    assert listeners.synack_wscale(_synack(full), 8080, 40000) == 0
    assert listeners.synack_wscale(_synack([("WScale", 9)]), 8080, 40000) == 9
    assert listeners.synack_wscale(_synack([("WScale", 20)]), 8080, 40000) == 14, "RFC 7323: at most 14"
    assert listeners.synack_wscale(_synack([("MSS", 1460)]), 8080, 40000) == listeners.NO_SCALE
    assert listeners.synack_wscale(_synack(full, flags="S"), 8080, 40000) is None, "our own SYN"
    assert listeners.synack_wscale(_synack(full, dport=40001), 8080, 40000) is None
    assert listeners.synack_wscale(_synack(full)[:12], 8080, 40000) is None
    bad = bytearray(_synack([("MSS", 1460)]))
    bad[21] = 0  # an option length of 0 must not loop
    assert listeners.synack_wscale(bytes(bad), 8080, 40000) == listeners.NO_SCALE


def _listener(port: int, addr: str = "::", rcvbuf: int = 131072) -> listeners.Listener:
    a = ipaddress.ip_address(addr)
    return listeners.Listener(socket.AF_INET if a.version == 4 else socket.AF_INET6, a, port, rcvbuf)


def test_window_scale_choice(monkeypatch):
    answers: list[listeners.Probe] = []
    monkeypatch.setattr(listeners, "probes", lambda netns, ports: answers)
    got = listeners.window_scale("ns", [80], fallback=10)
    assert (got.value, got.source) == (10, "sysctl") and "no listener on port 80 yet" in got.note
    answers[:] = [listeners.Probe(_listener(80), None)]
    got = listeners.window_scale("ns", [80], fallback=10)
    assert got.source == "sysctl" and "[::]:80 did not answer" in got.note
    answers[:] = [listeners.Probe(_listener(80), 0), listeners.Probe(_listener(80, "0.0.0.0"), 0),
                  listeners.Probe(_listener(443), None)]
    got = listeners.window_scale("ns", [80, 443], fallback=10)
    assert (got.value, got.source) == (0, "listeners")
    assert "port 80 answer" in got.note and "[::]:443 did not answer" in got.note
    assert got.as_json()["listeners"][0] == {"address": "::", "port": 80, "rcvbuf": 131072, "wscale": 0}
    answers[:] = [listeners.Probe(_listener(80), 0), listeners.Probe(_listener(443), 10)]
    with pytest.raises(FastpathError, match=r"different TCP window scales \(\[::\]:80 uses 0, "
                                            r"\[::\]:443 uses 10\)") as exc:
        listeners.window_scale("ns", [80, 443], fallback=10)
    assert exc.value.fix and "SO_RCVBUF" in exc.value.fix
    answers[:] = [listeners.Probe(_listener(80), listeners.NO_SCALE)]
    assert listeners.window_scale("ns", [80], fallback=7).value == listeners.NO_SCALE
    answers[:] = [listeners.Probe(_listener(80), 0), listeners.Probe(_listener(443), 7)]
    assert listeners.mismatches("ns", [80, 443], 7) == [
        "the listener on [::]:80 uses window scale 0 but the guard advertises 7: its clients misread "
        "its window"]


def test_listen_request_asks_for_listeners_and_their_memory():
    req = listeners._listen_request(socket.AF_INET6)
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req)
    assert (family, proto, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << 10)
    assert ext == 1 << (listeners.INET_DIAG_SKMEMINFO - 1) and len(req) == 56
