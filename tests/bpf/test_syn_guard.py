"""bpf/syn_guard.c through BPF_PROG_TEST_RUN: a golden table of frames (verdict and the one
counter each must land in), SYN-ACKs checked field by field and their cookies fed back
through the program's own check, every truncation point of every header, allow/deny,
rate limit and ban, and a hypothesis fuzz of random and mutated frames."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from fastpath.apps.guard import abi
from fastpath.apps.guard import synguard as sg
from fastpath.apps.guard.config import GuardConfig
from fastpath.bpf import loader, testrun
from fastpath.bpf.maps import TypedMap, layout
from fastpath.kernels.programs import GUARD_EXTREMES

pytestmark = pytest.mark.bpf

COOKIE, COOKIE2, DROP_PORT, OPEN = 80, 443, 23, 8080
CLIENT4, SERVER4 = "10.0.0.1", "10.0.0.2"
CLIENT6, SERVER6 = "fd00::1", "fd00::2"
VIP4, VIP6 = "10.0.0.100", "fd00::100"  # not the host's own: a balancer's VIP
# the cookie path for every SYN (adaptive mode has its own tests below)
ALWAYS = GuardConfig(cookie_ports=(80,), cookies="always")
CONFIG = GuardConfig(cookie_ports=(COOKIE, COOKIE2), drop_ports=(DROP_PORT,), cookies="always")
ALLOW = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:a::/48"),
         ipaddress.ip_network("198.51.100.7/32")]
DENY = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:d::/48")]

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
LINUX_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("WScale", 7)]
WINDOWS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
MACOS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 6), ("NOP", None), ("NOP", None),
              ("Timestamp", (987654321, 0)), ("SAckOK", b""), ("EOL", None)]


class Guard:
    """One loaded copy of the program with private maps, configured like an attachment
    (`prog`: the guard compiled into another entry, e.g. behind the spoofing front)."""

    def __init__(self, defines: dict[str, int] | None = None,
                 prog: loader.LoadedProgram | None = None) -> None:
        self.prog = prog if prog is not None else loader.load(abi.SPEC, defines or {})
        self.defines = {**abi.TUNABLES, **(defines or {})}

    def map(self, name: str) -> TypedMap:
        key, value = abi.MAP_TYPES[name]
        return TypedMap(os.dup(self.prog.map_fd(name)), key, value)

    def configure(self, config: GuardConfig, allow: list = (), deny: list = (),  # type: ignore[assignment]
                  protected: tuple[str, ...] = (SERVER4, SERVER6, "127.0.0.1", "::1"),
                  armed: bool = True) -> None:
        """Ports, lists and config as given; the servers' addresses are the host's own
        (`protected_addrs`), as attach makes them; `armed`: the SYNPROXY rules are in."""
        with self.map("protected_addrs") as m:
            m.clear()
            for addr in protected:
                key = abi.SgAddr()
                key.addr[:] = abi.mapped_words(ipaddress.ip_address(addr))
                m.set(key, ctypes.c_uint32(abi.PROTECT_LOCAL))
        with self.map("protected_list") as m:
            m.set(ctypes.c_uint32(0), sg.protected_list(ipaddress.ip_address(a) for a in protected))
        with self.map("ports") as m:
            for port in (COOKIE, COOKIE2, DROP_PORT, OPEN, 9999):
                m.set(ctypes.c_uint32(port), ctypes.c_uint32(abi.PORT_OPEN))
            for port, mode in sg._port_modes(config).items():
                m.set(ctypes.c_uint32(port), ctypes.c_uint32(mode))
        for name in ("acl_v4", "acl_v6", "sources", "bans", "flows", "port_state", "port_syns"):
            with self.map(name) as m:
                m.clear()
        for nets, action in ((allow, abi.ACL_ALLOW), (deny, abi.ACL_DENY)):
            for net in nets:
                with self.map("acl_v4" if net.version == 4 else "acl_v6") as m:
                    m.set(abi.lpm_key(net), ctypes.c_uint32(action))
        acl4 = any(n.version == 4 for n in (*allow, *deny))
        acl6 = any(n.version == 6 for n in (*allow, *deny))
        with self.map("adaptive") as m:
            record = config.adaptive_ctype(int(self.defines["SG_RATE_WINDOW_NS"]))
            record.armed = int(armed)
            m.set(ctypes.c_uint32(0), record)
        with self.map("config") as m:
            m.set(ctypes.c_uint32(0), config.to_ctype(acl4, acl6))

    def counters(self) -> list[tuple[int, int]]:
        with self.map("stats") as m:
            out = []
            for i in range(abi.SG_STAT_MAX):
                vals = m.get_percpu(ctypes.c_uint32(i)) or []
                out.append((sum(v.packets for v in vals), sum(v.bytes for v in vals)))
            return out

    def run(self, frame: Packet | bytes) -> tuple[testrun.RunResult, dict[str, tuple[int, int]]]:
        data = frame if isinstance(frame, bytes) else frame.build()
        before = self.counters()
        res = testrun.run_xdp(self.prog.prog_fd, data)
        after = self.counters()
        delta = {abi.STAT_NAMES[i]: (a[0] - b[0], a[1] - b[1])
                 for i, (a, b) in enumerate(zip(after, before, strict=True)) if a != b}
        return res, delta

    def close(self) -> None:
        self.prog.close()


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


@pytest.fixture(scope="module")
def guard():
    _need_root()
    g = Guard()
    yield g
    g.close()


@pytest.fixture
def g(guard):
    """The module's program, reset to the golden-table configuration."""
    guard.configure(CONFIG, ALLOW, DENY)
    return guard


# -- header mirror ---------------------------------------------------------------------------

def _header_constants() -> dict[str, int]:
    text = (loader.bpf_source_dir() / "syn_guard.h").read_text()
    consts = {m.group(1): int(m.group(2), 0) for m in re.finditer(r"\b(SG_[A-Z0-9_]+)\s*=\s*(\d+)", text)}
    consts.update({m.group(1): 1 << int(m.group(2)) for m in
                   re.finditer(r"#define\s+(SG_CFG_[A-Z0-9_]+)\s+\(1U << (\d+)\)", text)})
    return consts


def test_header_mirror_matches_bcc_decoded_types(guard):
    """Every map's key and value mirror has bcc's own size and field offsets."""
    for name, (key, value) in abi.MAP_TYPES.items():
        table = guard.prog.table(name)
        for mine, theirs in ((key, table.Key), (value, guard.prog.leaf_type(name))):
            assert ctypes.sizeof(mine) == ctypes.sizeof(theirs), name
            if issubclass(mine, ctypes.Structure):
                assert layout(mine) == layout(theirs), name
    assert guard.prog.table("stats").max_entries == abi.SG_STAT_MAX
    assert guard.prog.table("ports").max_entries == 65536
    assert set(abi.SPEC.maps) == set(abi.MAP_TYPES)


def test_header_enums_match_python_constants():
    c = _header_constants()
    for i, name in enumerate(abi.STAT_NAMES):
        events = {"bans": "BAN", "probes": "PROBE", "flow_socket": "SOCKET", "flow_ends": "FLOW_END",
                  "flow_idle": "FLOW_IDLE", "to_cookie": "TO_COOKIE", "to_pass": "TO_PASS",
                  "cookie_held": "HELD"}
        key = f"SG_EVENT_{events[name]}" if name in events else f"SG_{name.upper()}"
        assert c[key] == i, name
        assert (name in abi.EVENT_NAMES) == key.startswith("SG_EVENT_"), name
    assert (c["SG_OUTCOMES"], c["SG_STAT_MAX"]) == (abi.SG_OUTCOMES, abi.SG_STAT_MAX)
    assert (c["SG_PORT_OPEN"], c["SG_PORT_COOKIE"], c["SG_PORT_DROP"]) == (
        abi.PORT_OPEN, abi.PORT_COOKIE, abi.PORT_DROP)
    assert (c["SG_ACL_ALLOW"], c["SG_ACL_DENY"]) == (abi.ACL_ALLOW, abi.ACL_DENY)
    flags = ("SG_CFG_COOKIES", "SG_CFG_FRAG_PASS", "SG_CFG_ACL4", "SG_CFG_ACL6", "SG_CFG_DESTS",
             "SG_CFG_ADAPTIVE")
    assert tuple(c[f] for f in flags) == (
        abi.CFG_COOKIES, abi.CFG_FRAG_PASS, abi.CFG_ACL4, abi.CFG_ACL6, abi.CFG_DESTS, abi.CFG_ADAPTIVE)
    text = (loader.bpf_source_dir() / "syn_guard.h").read_text()
    bits = {m.group(1): 1 << int(m.group(2)) for m in
            re.finditer(r"#define\s+(SG_PROTECT_[A-Z]+)\s+\(1U << (\d+)\)", text)}
    assert bits == {"SG_PROTECT_LOCAL": abi.PROTECT_LOCAL, "SG_PROTECT_LISTED": abi.PROTECT_LISTED}


def test_every_tunable_is_an_ifndef_default_in_the_c_source():
    text = (loader.bpf_source_dir() / "syn_guard.c").read_text()
    for name, value in abi.TUNABLES.items():
        m = re.search(rf"#ifndef {name}\n#define {name} (\S+)\n#endif", text)
        assert m is not None, f"{name} is not an #ifndef default"
        assert int(m.group(1).removesuffix("ULL"), 0) == value, name


# -- frames ------------------------------------------------------------------------------------

def syn4(dport: int = COOKIE, src: str = CLIENT4, opts: list | None = None, flags: str = "S") -> Packet:
    return E / IP(src=src, dst=SERVER4) / TCP(sport=40000, dport=dport, flags=flags, seq=1000,
                                               options=LINUX_OPTS if opts is None else opts)


def syn6(dport: int = COOKIE, src: str = CLIENT6, opts: list | None = None, flags: str = "S") -> Packet:
    return E / IPv6(src=src, dst=SERVER6) / TCP(sport=40000, dport=dport, flags=flags, seq=1000,
                                                 options=LINUX_OPTS if opts is None else opts)


def tcp4(flags: str, dport: int = COOKIE, payload: bytes = b"", src: str = CLIENT4) -> Packet:
    return E / IP(src=src, dst=SERVER4) / TCP(sport=40000, dport=dport, flags=flags, seq=1001,
                                               ack=77777) / payload


def tcp6(flags: str, dport: int = COOKIE, payload: bytes = b"") -> Packet:
    return E / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=40000, dport=dport, flags=flags, seq=1001,
                                                     ack=77777) / payload


V6EXT = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
IP_OPTS = [IPOption_RR(routers=["1.2.3.4"]), IPOption_NOP()]

TX, PASS, DROP = "XDP_TX", "XDP_PASS", "XDP_DROP"

# (description, frame, verdict, the one outcome counter it must land in)
GOLDEN: list[tuple[str, Packet | bytes, str, str]] = [
    # SYNs to a cookie port are answered from XDP, whatever the encapsulation
    ("v4 SYN linux options", syn4(), TX, "tx_cookie"),
    ("v4 SYN second cookie port", syn4(dport=COOKIE2), TX, "tx_cookie"),
    ("v4 SYN no options", syn4(opts=[]), TX, "tx_cookie"),
    ("v4 SYN mss only", syn4(opts=[("MSS", 1400)]), TX, "tx_cookie"),
    ("v4 SYN windows options", syn4(opts=WINDOWS_OPTS), TX, "tx_cookie"),
    ("v4 SYN macos options", syn4(opts=MACOS_OPTS), TX, "tx_cookie"),
    ("v4 SYN timestamp no wscale", syn4(opts=[("Timestamp", (5, 0))]), TX, "tx_cookie"),
    ("v4 SYN wscale 14+", syn4(opts=[("Timestamp", (5, 0)), ("WScale", 15)]), TX, "tx_cookie"),
    ("v4 SYN 40 NOPs", syn4(opts=[("NOP", None)] * 40), TX, "tx_cookie"),
    ("v4 SYN with payload", syn4() / (b"x" * 100), TX, "tx_cookie"),
    ("v4 SYN ethernet padding", Ether(syn4(opts=[]).build() + b"\0" * 6), TX, "tx_cookie"),
    ("v4 SYN ip options", E / IP(src=CLIENT4, dst=SERVER4, options=IP_OPTS) /
     TCP(sport=40000, dport=COOKIE, flags="S", seq=1000, options=LINUX_OPTS), TX, "tx_cookie"),
    ("v4 SYN vlan", E / Dot1Q(vlan=10) / syn4()[IP], TX, "tx_cookie"),
    ("v4 SYN qinq", E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / syn4()[IP], TX, "tx_cookie"),
    ("v6 SYN linux options", syn6(), TX, "tx_cookie"),
    ("v6 SYN no options", syn6(opts=[]), TX, "tx_cookie"),
    ("v6 SYN ext headers", E / IPv6(src=CLIENT6, dst=SERVER6) / V6EXT / syn6()[TCP], TX, "tx_cookie"),
    ("v6 SYN AH", E / IPv6(src=CLIENT6, dst=SERVER6) / AH(nh=6, payloadlen=4, icv=b"\0" * 12) /
     syn6()[TCP], TX, "tx_cookie"),
    ("v6 SYN atomic fragment", E / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(offset=0, m=0) /
     syn6()[TCP], TX, "tx_cookie"),
    ("v6 SYN qinq ext headers", E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / IPv6(src=CLIENT6, dst=SERVER6) /
     V6EXT / syn6()[TCP], TX, "tx_cookie"),
    # closed (drop-mode) ports: SYNs dropped, everything else passes
    ("v4 SYN drop port", syn4(dport=DROP_PORT), DROP, "drop_port"),
    ("v6 SYN drop port", syn6(dport=DROP_PORT), DROP, "drop_port"),
    ("v4 ACK drop port", tcp4("A", DROP_PORT), PASS, "pass_tcp"),
    ("v4 data drop port", tcp4("PA", DROP_PORT, b"hello"), PASS, "pass_tcp"),
    # unprotected ports: untouched
    ("v4 SYN open port", syn4(dport=OPEN), PASS, "pass_other"),
    ("v6 SYN open port", syn6(dport=OPEN), PASS, "pass_other"),
    ("v4 ACK open port", tcp4("A", OPEN), PASS, "pass_other"),
    ("v4 data open port", tcp4("PA", OPEN, b"data"), PASS, "pass_other"),
    ("v6 RST open port", tcp6("R", OPEN), PASS, "pass_other"),
    # protected ports of an address that is not the host's own (a VIP): untouched
    ("v4 SYN to a VIP", E / IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=COOKIE, flags="S",
                                                             options=LINUX_OPTS), PASS, "pass_dest"),
    ("v6 SYN to a VIP", E / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=COOKIE, flags="S"),
     PASS, "pass_dest"),
    ("v4 ACK to a VIP", E / IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=COOKIE, flags="A", ack=5),
     PASS, "pass_dest"),
    ("v4 SYN to a VIP's drop port", E / IP(src=CLIENT4, dst=VIP4) / TCP(dport=DROP_PORT, flags="S"),
     PASS, "pass_dest"),
    ("v4 first fragment to a VIP", E / IP(src=CLIENT4, dst=VIP4, flags="MF") /
     TCP(sport=40000, dport=COOKIE, flags="S"), PASS, "pass_dest"),
    ("v6 SYN to a VIP behind ext headers", E / IPv6(src=CLIENT6, dst=VIP6) / V6EXT /
     TCP(sport=40000, dport=COOKIE, flags="S"), PASS, "pass_dest"),
    ("v4 SYN to a VIP from deny list", E / IP(src="198.51.100.9", dst=VIP4) / TCP(dport=COOKIE, flags="S"),
     DROP, "drop_deny"),
    # ACKs to a cookie port: no flow and no valid cookie -> dropped in XDP
    ("v4 ACK bad cookie", tcp4("A"), DROP, "drop_cookie"),
    ("v6 ACK bad cookie", tcp6("A"), DROP, "drop_cookie"),
    ("v4 data bad cookie", tcp4("PA", payload=b"GET / HTTP/1.1\r\n\r\n"), DROP, "drop_cookie"),
    ("v4 FIN-ACK bad cookie", tcp4("FA"), DROP, "drop_cookie"),
    ("v4 SYN-ACK to cookie port", tcp4("SA"), DROP, "drop_cookie"),
    ("v6 SYN-ACK to cookie port", tcp6("SA"), DROP, "drop_cookie"),
    # other TCP to a cookie port goes to the stack (which discards what is invalid)
    ("v4 RST cookie port", tcp4("R"), PASS, "pass_tcp"),
    ("v4 RST-ACK cookie port", tcp4("RA"), PASS, "pass_tcp"),
    ("v6 RST cookie port", tcp6("R"), PASS, "pass_tcp"),
    ("v4 no flags", tcp4(""), PASS, "pass_tcp"),
    ("v4 FIN only", tcp4("F"), PASS, "pass_tcp"),
    ("v4 SYN+RST", syn4(flags="SR"), DROP, "drop_malformed"),
    ("v4 SYN+FIN", syn4(flags="SF"), DROP, "drop_malformed"),
    # not TCP
    ("arp", E / ARP(), PASS, "pass_other"),
    ("lldp ethertype", Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / (b"\0" * 46), PASS, "pass_other"),
    ("v4 udp to port 80", E / IP(src=CLIENT4, dst=SERVER4) / UDP(dport=COOKIE), PASS, "pass_other"),
    ("v4 icmp", E / IP(src=CLIENT4, dst=SERVER4) / ICMP(), PASS, "pass_other"),
    ("v6 udp to port 80", E / IPv6(src=CLIENT6, dst=SERVER6) / UDP(dport=COOKIE), PASS, "pass_other"),
    ("v6 esp", E / IPv6(src=CLIENT6, dst=SERVER6, nh=50) / (b"\0" * 40), PASS, "pass_other"),
    ("v6 no next header", E / IPv6(src=CLIENT6, dst=SERVER6, nh=59), PASS, "pass_other"),
    ("vlan arp", E / Dot1Q(vlan=5) / ARP(), PASS, "pass_other"),
    # fragments: the first one to a protected port gets the fragment verdict (drop)
    ("v4 first fragment to cookie port", E / IP(src=CLIENT4, dst=SERVER4, flags="MF") /
     TCP(sport=40000, dport=COOKIE, flags="S"), DROP, "fragment"),
    ("v4 first fragment to drop port", E / IP(src=CLIENT4, dst=SERVER4, flags="MF") /
     TCP(sport=40000, dport=DROP_PORT, flags="S"), DROP, "fragment"),
    ("v4 first fragment to open port", E / IP(src=CLIENT4, dst=SERVER4, flags="MF") /
     TCP(sport=40000, dport=OPEN, flags="S"), PASS, "pass_other"),
    ("v4 later fragment", E / IP(src=CLIENT4, dst=SERVER4, proto=6, frag=3) / (b"\0\x50" * 8),
     PASS, "pass_other"),
    ("v4 first fragment with 8 bytes of tcp", E / IP(src=CLIENT4, dst=SERVER4, flags="MF", proto=6) /
     TCP(sport=40000, dport=COOKIE, flags="S").build()[:8], DROP, "fragment"),
    ("v6 first fragment to cookie port", E / IPv6(src=CLIENT6, dst=SERVER6) /
     IPv6ExtHdrFragment(offset=0, m=1) / TCP(sport=40000, dport=COOKIE, flags="S"), DROP, "fragment"),
    ("v6 later fragment", E / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(offset=2, m=0, nh=6) /
     (b"\0" * 16), PASS, "pass_other"),
    ("v6 first fragment behind ext headers", E / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrHopByHop() /
     IPv6ExtHdrFragment(offset=0, m=1) / TCP(sport=40000, dport=COOKIE, flags="S"), DROP, "fragment"),
    # what the parser will not walk, or headers that contradict themselves: dropped
    ("three vlan tags", E / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / syn4()[IP],
     DROP, "drop_malformed"),
    ("v6 seven ext headers", E / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrDestOpt() /
     IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() /
     IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / syn6()[TCP], DROP, "drop_malformed"),
    ("v6 ext header past SG_HDR_MAX", E / IPv6(src=CLIENT6, dst=SERVER6, nh=60) /
     Raw(bytes([6, 70]) + b"\0" * 566) / syn6()[TCP], DROP, "drop_malformed"),
    ("v4 ihl 4", E / IP(src=CLIENT4, dst=SERVER4, ihl=4) / TCP(dport=COOKIE, flags="S"),
     DROP, "drop_malformed"),
    ("v4 version 6 in ipv4 ethertype", Ether(E.build()[:12] + b"\x08\x00" + IPv6().build()),
     DROP, "drop_malformed"),
    ("v6 version 4 in ipv6 ethertype", Ether(E.build()[:12] + b"\x86\xdd" + IP().build() + b"\0" * 20),
     DROP, "drop_malformed"),
    ("v4 tot_len below ihl", E / IP(src=CLIENT4, dst=SERVER4, len=16) / TCP(dport=COOKIE, flags="S"),
     DROP, "drop_malformed"),
    ("v4 tot_len beyond frame", E / IP(src=CLIENT4, dst=SERVER4, len=200) / TCP(dport=COOKIE, flags="S"),
     DROP, "drop_malformed"),
    ("v4 tcp only 3 bytes per tot_len", E / IP(src=CLIENT4, dst=SERVER4, len=23, proto=6) /
     TCP(dport=COOKIE, flags="S"), DROP, "drop_malformed"),
    ("v4 tcp doff 4", E / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=COOKIE, flags="S", dataofs=4),
     DROP, "drop_malformed"),
    ("v4 tcp doff beyond segment", E / IP(src=CLIENT4, dst=SERVER4) /
     TCP(dport=COOKIE, flags="S", dataofs=15),
     DROP, "drop_malformed"),
    ("v6 payload_len beyond frame", E / IPv6(src=CLIENT6, dst=SERVER6, plen=400) /
     TCP(dport=COOKIE, flags="S"),
     DROP, "drop_malformed"),
    ("v6 tcp doff beyond segment", E / IPv6(src=CLIENT6, dst=SERVER6) /
     TCP(dport=COOKIE, flags="S", dataofs=12),
     DROP, "drop_malformed"),
    # layer 1: allow and deny lists, longest prefix wins, all protocols
    ("v4 SYN from allow list", syn4(src="192.0.2.9"), PASS, "pass_allow"),
    ("v4 ACK from allow list", E / IP(src="192.0.2.9", dst=SERVER4) / TCP(dport=COOKIE, flags="A"),
     PASS, "pass_allow"),
    ("v6 SYN from allow list", syn6(src="2001:db8:a:1::5"), PASS, "pass_allow"),
    ("v4 SYN from deny list", syn4(src="198.51.100.9"), DROP, "drop_deny"),
    ("v4 udp from deny list", E / IP(src="198.51.100.9", dst=SERVER4) / UDP(dport=53), DROP, "drop_deny"),
    ("v6 SYN from deny list", syn6(src="2001:db8:d:ffff::1"), DROP, "drop_deny"),
    ("v6 open port from deny list", syn6(src="2001:db8:d::1", dport=OPEN), DROP, "drop_deny"),
    ("v4 /32 allow inside a denied /24", syn4(src="198.51.100.7"), PASS, "pass_allow"),
    ("v4 deny list behind qinq", E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / syn4(src="198.51.100.1")[IP],
     DROP, "drop_deny"),
]


@pytest.mark.parametrize("desc,frame,verdict,counter", GOLDEN, ids=[c[0] for c in GOLDEN])
def test_golden(g, desc, frame, verdict, counter):
    """Each frame gets its verdict and lands in exactly one counter, with its length."""
    data = frame if isinstance(frame, bytes) else frame.build()
    res, delta = g.run(data)
    assert res.verdict == verdict, desc
    assert delta == {counter: (1, len(data))}, desc
    if verdict == PASS:
        assert res.output == data, "a passed frame must be untouched"
    if verdict == TX:
        check_synack(frame if isinstance(frame, Packet) else Ether(data), Ether(res.output), g.defines)
        ack = client_ack(Ether(res.output))
        res2, delta2 = g.run(ack)
        assert (res2.verdict, set(delta2)) == (PASS, {"pass_cookie"}), "the cookie must check out"


# -- the SYN-ACK, field by field -----------------------------------------------------------------

def _l3(pkt: Packet) -> Packet:
    return pkt[IP] if IP in pkt else pkt[IPv6]


def _opts(tcp: Packet) -> dict[str, object]:
    return {name: value for name, value in tcp.options}


def kernel_syn_options(tcp: bytes) -> dict[str, int]:
    """The SYN's options as Linux's tcp_parse_options reads them (scapy is more lenient):
    a bad length stops the walk, known kinds with the wrong length are skipped, last wins."""
    found: dict[str, int] = {}
    end = (tcp[12] >> 4) * 4
    i = 20
    while i < end:
        kind = tcp[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        size = tcp[i + 1]
        if size < 2 or i + size > end:
            break
        if kind == 3 and size == 3:
            found["wscale"] = tcp[i + 2]
        elif kind == 4 and size == 2:
            found["sack"] = 1
        elif kind == 8 and size == 10:
            found["tsval"] = int.from_bytes(tcp[i + 2:i + 6], "big")
        i += size
    return found


def check_synack(syn: Packet, out: Packet, defines: dict[str, int]) -> None:
    v6 = IPv6 in syn
    assert (out.src, out.dst) == (syn.dst, syn.src)
    tags_in = [(layer.vlan, layer.type) for layer in (syn[Dot1AD] if Dot1AD in syn else None,
                                                        syn[Dot1Q] if Dot1Q in syn else None) if layer]
    tags_out = [(layer.vlan, layer.type) for layer in (out[Dot1AD] if Dot1AD in out else None,
                                                         out[Dot1Q] if Dot1Q in out else None) if layer]
    assert tags_in == tags_out, "VLAN tags must be kept"
    sl3, ol3 = _l3(syn), _l3(out)
    assert (ol3.src, ol3.dst) == (sl3.dst, sl3.src)
    tcp = out[TCP]
    raw_tcp = bytes(tcp)
    if v6:
        assert (ol3.nh, ol3.hlim, ol3.tc, ol3.fl) == (6, defines["SG_TTL"], 0, 0)
        assert ol3.plen == len(raw_tcp), "no extension headers echoed"
        l3_end = len(out) - len(raw_tcp)
    else:
        assert (ol3.ihl, ol3.proto, ol3.ttl, int(ol3.flags), ol3.frag) == (5, 6, defines["SG_TTL"], 2, 0)
        assert ol3.options == [], "IP options are not echoed"
        assert ol3.len == 20 + len(raw_tcp)
        fresh = ol3.copy()
        fresh.chksum = None
        assert IP(fresh.build()).chksum == ol3.chksum, "IPv4 header checksum"
        l3_end = len(out) - len(raw_tcp)
    assert len(out.build()) == l3_end + len(raw_tcp), "frame trimmed to the SYN-ACK"
    stcp = syn[TCP]
    assert (tcp.sport, tcp.dport) == (stcp.dport, stcp.sport)
    assert tcp.flags == "SA"
    assert tcp.ack == (stcp.seq + 1) % 2**32
    assert (tcp.window, tcp.urgptr) == (0, 0)
    assert tcp.dataofs * 4 == len(raw_tcp), "no payload"
    # TCP checksum over the pseudo header
    fresh_tcp = TCP(raw_tcp)
    fresh_tcp.chksum = None
    pkt = (IPv6(src=ol3.src, dst=ol3.dst) if v6 else IP(src=ol3.src, dst=ol3.dst)) / fresh_tcp
    assert TCP(pkt.build()[40 if v6 else 20:]).chksum == tcp.chksum, "TCP checksum"
    # options
    sopts = kernel_syn_options(bytes(stcp))
    oopts = _opts(tcp)
    assert oopts["MSS"] == defines["SG_MSS6" if v6 else "SG_MSS4"]
    has_ts = "tsval" in sopts and defines["SG_TIMESTAMPS"]
    if not has_ts:
        assert [name for name, _ in tcp.options] == ["MSS"], "no timestamps: nowhere to keep wscale/SACK"
        return
    ws_ok = "wscale" in sopts and defines["SG_WSCALE"] != 15
    sack_ok = "sack" in sopts and defines["SG_SACK"]
    want = ["MSS", "SAckOK", "Timestamp"] if sack_ok else ["MSS", "NOP", "NOP", "Timestamp"]
    if ws_ok:
        want += ["NOP", "WScale"]
    assert [name for name, _ in tcp.options] == want
    tsval, tsecr = oopts["Timestamp"]  # type: ignore[misc]
    assert tsecr == sopts["tsval"]
    assert tsval & 0xF == (min(sopts["wscale"], 14) if ws_ok else 0xF)
    assert bool(tsval & 0x10) == bool(sack_ok)
    assert not tsval & 0x20, "ECN is not offered"
    assert oopts.get("WScale") == (defines["SG_WSCALE"] if ws_ok else None)


def client_ack(synack: Packet, delta: int = 0, payload: bytes = b"") -> Packet:
    """What the client answers to our SYN-ACK (cookie + delta forges a wrong one)."""
    l3 = _l3(synack)
    tcp = synack[TCP]
    opts = []
    o = _opts(tcp)
    if "Timestamp" in o:
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (999, o["Timestamp"][0]))]  # type: ignore[index]
    head = Ether(src=synack.dst, dst=synack.src)
    layer = synack.payload
    while isinstance(layer, Dot1Q | Dot1AD):
        tag = layer.copy()
        tag.remove_payload()
        head = head / tag
        layer = layer.payload
    l3new = IPv6(src=l3.dst, dst=l3.src) if IPv6 in synack else IP(src=l3.dst, dst=l3.src)
    return head / l3new / TCP(sport=tcp.dport, dport=tcp.sport, flags="A", seq=tcp.ack,
                              ack=(tcp.seq + 1 + delta) % 2**32, options=opts) / payload


# -- cookies: the handshake's last step ----------------------------------------------------------

@pytest.mark.parametrize("make", [syn4, syn6], ids=["v4", "v6"])
def test_cookie_ack_opens_a_flow_and_forged_ones_are_dropped(g, make):
    syn = make()
    res, _ = g.run(syn)
    synack = Ether(res.output)
    # +1..+3 only moves the MSS index in the cookie's low bits and may still validate (a
    # kernel property, not a bug); these change the hash bits.
    for delta in (0x10, 0x12345, 1 << 24, -0x100):
        r, d = g.run(client_ack(synack, delta=delta))
        assert (r.verdict, set(d)) == (DROP, {"drop_cookie"}), f"forged cookie (+{delta})"
    r, d = g.run(client_ack(synack))
    assert (r.verdict, set(d)) == (PASS, {"pass_cookie"})
    with g.map("flows") as flows:
        keys = list(flows.keys())
    assert len(keys) == 1
    k = keys[0]
    assert abi.address_of(k.client) == ipaddress.ip_address(_l3(syn).src)
    assert abi.address_of(k.server) == ipaddress.ip_address(_l3(syn).dst)
    assert (socket_port(k.client_port), socket_port(k.server_port)) == (syn[TCP].sport, syn[TCP].dport)
    # Later segments of the flow pass on the flow table, whatever their ack number.
    r, d = g.run(client_ack(synack, delta=5000, payload=b"GET / HTTP/1.1\r\n\r\n"))
    assert (r.verdict, set(d)) == (PASS, {"pass_flow"})
    # The first data segment may come before the ACK (lost ACK): the cookie still checks out.
    g.configure(CONFIG, ALLOW, DENY)
    r, d = g.run(client_ack(synack, payload=b"early data"))
    assert (r.verdict, set(d)) == (PASS, {"pass_cookie"})


def socket_port(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "little"), "big")


def test_cookie_is_bound_to_addresses_and_ports(g):
    res, _ = g.run(syn4())
    synack = Ether(res.output)
    ack = client_ack(synack)
    for field, value in (("sport", 40001), ("seq", ack[TCP].seq + 0x1000)):
        forged = ack.copy()
        setattr(forged[TCP], field, value)
        del forged[TCP].chksum
        r, d = g.run(forged)
        assert set(d) == {"drop_cookie"}, field
    forged = ack.copy()
    forged[IP].src = "10.0.0.9"
    del forged[IP].chksum
    del forged[TCP].chksum
    assert set(g.run(forged)[1]) == {"drop_cookie"}



def _probe(ack: Packet) -> Packet:
    """The zero-window probe a client sends instead: the same ACK one sequence number lower."""
    probe = ack.copy()
    probe[TCP].seq = (probe[TCP].seq - 1) % 2**32
    del probe[TCP].chksum
    return Ether(probe.build())


@pytest.mark.parametrize("make,mss", [(syn4, 1460), (syn6, 9000)], ids=["v4", "v6"])
def test_zero_window_probe_stands_in_for_a_lost_ack(g, make, mss):
    """The handshake ACK was lost; the client's probe (SEG.SEQ = SND.NXT - 1) becomes that ACK,
    checksum included, and opens the flow; later probes pass on the flow."""
    opts = [("MSS", mss), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("WScale", 7)]
    res, _ = g.run(make(opts=opts))
    ack = client_ack(Ether(res.output))
    r, d = g.run(_probe(ack))
    assert (r.verdict, d) == (PASS, {"pass_cookie": (1, len(ack)), "probes": (1, 0)})
    assert r.output == ack.build(), "the probe must come out as the handshake ACK, checksum fixed"
    r, d = g.run(_probe(ack))
    assert (r.verdict, set(d)) == (PASS, {"pass_flow"})
    assert r.output == _probe(ack).build(), "a probe of a known flow passes untouched"


def test_probe_rewrite_only_for_empty_acks_and_never_over_a_valid_cookie(g):
    res, _ = g.run(syn4())
    synack = Ether(res.output)
    # Data, FIN or PSH one below the cookie's sequence number is not a probe.
    for flags, payload in (("A", b"x"), ("PA", b""), ("FA", b"")):
        bad = _probe(client_ack(synack, payload=payload))
        bad[TCP].flags = flags
        del bad[TCP].chksum
        r, d = g.run(Ether(bad.build()))
        assert (r.verdict, set(d)) == (DROP, {"drop_cookie"}), flags
    # MSS 1300 is the cookie's second MSS class: the probe's shift of one lands on the next
    # class and checks out as it stands, so it is indistinguishable from a handshake ACK and
    # passes unchanged (what SYNPROXY does with it too; see the README's lost-ACK note).
    res, _ = g.run(syn4(opts=[("MSS", 1300)]))
    probe = _probe(client_ack(Ether(res.output)))
    r, d = g.run(probe)
    assert (r.verdict, set(d)) == (PASS, {"pass_cookie"})
    assert r.output == probe.build()


# -- every truncation point ------------------------------------------------------------------------

TRUNCATED_BASES = {
    "v4 ip+tcp options": E / IP(src=CLIENT4, dst=SERVER4, options=IP_OPTS) /
    TCP(sport=1, dport=COOKIE, flags="S", options=LINUX_OPTS) / b"payload",
    "v4 qinq": E / Dot1AD(vlan=2) / Dot1Q(vlan=3) / syn4()[IP],
    "v4 ack open port": E / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=OPEN, flags="A") / b"abc",
    "v6 ext headers": E / Dot1Q(vlan=4) / IPv6(src=CLIENT6, dst=SERVER6) / V6EXT /
    IPv6ExtHdrFragment(offset=0, m=0) / syn6()[TCP],
    "v6 ack": E / IPv6(src=CLIENT6, dst=SERVER6) / TCP(dport=COOKIE, flags="A") / b"abc",
}


@pytest.mark.parametrize("name", sorted(TRUNCATED_BASES))
def test_every_truncation_point_is_dropped(g, name):
    """A TCP frame cut anywhere (L2, VLAN, IP, options, extension headers, TCP header,
    payload) claims more than it holds: the stack would drop it, so XDP does, never TX."""
    data = TRUNCATED_BASES[name].build()
    for cut in range(14, len(data)):
        res, delta = g.run(data[:cut])
        assert (res.verdict, delta) == (DROP, {"drop_malformed": (1, cut)}), f"{name} cut at {cut}"
    res, delta = g.run(data)
    assert "drop_malformed" not in delta


# -- the flow cache and the stack's sockets ------------------------------------------------------

@contextlib.contextmanager
def loopback_connection(family: int) -> Iterator[tuple[str, int, int]]:
    """A real TCP connection over loopback in this namespace: (address, client port, server port)."""
    addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as lsock, socket.socket(family) as client:
        lsock.bind((addr, 0))
        lsock.listen()
        client.connect((addr, lsock.getsockname()[1]))
        server, _ = lsock.accept()
        with server:
            yield addr, client.getsockname()[1], lsock.getsockname()[1]


@contextlib.contextmanager
def cookie_port(g: Guard, port: int) -> Iterator[None]:
    with g.map("ports") as m:
        m.set(ctypes.c_uint32(port), ctypes.c_uint32(abi.PORT_COOKIE))
    try:
        yield
    finally:
        with g.map("ports") as m:
            m.set(ctypes.c_uint32(port), ctypes.c_uint32(abi.PORT_OPEN))


def segment(addr: str, sport: int, dport: int, flags: str = "A", payload: bytes = b"") -> Packet:
    l3 = IP(src=addr, dst=addr) if ":" not in addr else IPv6(src=addr, dst=addr)
    return E / l3 / TCP(sport=sport, dport=dport, flags=flags, seq=5000, ack=6000) / payload


def flow_keys(g: Guard) -> list[tuple[str, int, str, int]]:
    with g.map("flows") as m:
        return [(str(abi.address_of(k.client)), socket.ntohs(k.client_port), str(abi.address_of(k.server)),
                 socket.ntohs(k.server_port)) for k in m.keys()]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def test_a_segment_the_stack_knows_passes_without_a_flow_entry(g, family):
    """A segment of an open connection that is not in `flows` (evicted, idle, or opened
    while SYNs went to the stack) passes because the stack has a socket for its tuple, and
    is cached again; the same tuple's segments then hit the cache."""
    with loopback_connection(family) as (addr, cport, sport), cookie_port(g, sport):
        res, delta = g.run(segment(addr, cport, sport, "PA", b"ping"))
        assert (res.verdict, delta.keys()) == (PASS, {"pass_flow", "flow_socket"})
        assert flow_keys(g) == [(addr, cport, addr, sport)]
        res, delta = g.run(segment(addr, cport, sport))
        assert (res.verdict, delta.keys()) == (PASS, {"pass_flow"}), "cached: no second lookup"
        # the listener alone is no proof: another client port must still carry a cookie
        res, delta = g.run(segment(addr, cport ^ 1, sport))
        assert (res.verdict, delta.keys()) == (DROP, {"drop_cookie"})


def test_a_time_wait_tuple_passes_and_its_reuse_needs_a_cookie(g):
    """A segment of a connection in time-wait passes to the stack (which answers it), but a
    new connection reusing the tuple is a handshake like any other: its ACK is checked and
    cached."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        client = socket.create_connection(lsock.getsockname())
        server, _ = lsock.accept()
        server.close()  # the server closes first: its socket ends in time-wait
        cport, sport = client.getsockname()[1], lsock.getsockname()[1]
        client.close()
    with cookie_port(g, sport):
        res, delta = g.run(segment("127.0.0.1", cport, sport))
        assert (res.verdict, delta.keys()) == (PASS, {"pass_flow", "flow_socket"})
        assert flow_keys(g) == [], "not cached: no live connection"
        syn = E / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=cport, dport=sport, flags="S", seq=1000,
                                                           options=LINUX_OPTS)
        res, _ = g.run(syn)
        assert res.verdict == TX
        res, delta = g.run(client_ack(Ether(res.output)))
        assert (res.verdict, delta.keys()) == (PASS, {"pass_cookie"})
        assert flow_keys(g) == [("127.0.0.1", cport, "127.0.0.1", sport)]


def test_an_ack_flood_of_random_tuples_still_ends_in_xdp(g):
    """With a listener on the port (the socket lookup finds it) and without one, ACKs of
    tuples the stack does not know fail the cookie check and are dropped, and leave no
    flow entry behind."""
    rnd = __import__("random").Random(7)
    with socket.socket() as lsock:
        lsock.bind(("0.0.0.0", 0))
        lsock.listen()
        port = lsock.getsockname()[1]
        with cookie_port(g, port):
            for _ in range(200):
                src = str(ipaddress.IPv4Address(rnd.getrandbits(32) | 0x0A000000 & 0xFFFFFFFF))
                frame = E / IP(src=src, dst=SERVER4) / TCP(sport=rnd.randrange(1024, 65536), dport=port,
                                                           flags="A", seq=rnd.getrandbits(32),
                                                           ack=rnd.getrandbits(32))
                res, delta = g.run(frame)
                assert (res.verdict, delta.keys()) == (DROP, {"drop_cookie"})
    assert flow_keys(g) == []


@pytest.mark.parametrize("flags,counter", [("FA", "pass_flow"), ("R", "pass_tcp"), ("RA", "pass_tcp")])
def test_fin_and_rst_end_a_cached_flow(g, flags, counter):
    res, _ = g.run(syn4())
    ack = client_ack(Ether(res.output))
    assert set(g.run(ack)[1]) == {"pass_cookie"}
    assert len(flow_keys(g)) == 1
    closing = ack.copy()
    closing[TCP].flags = flags
    res, delta = g.run(closing)
    assert (res.verdict, delta.keys()) == (PASS, {counter, "flow_ends"})
    assert flow_keys(g) == []


def test_an_idle_flow_is_checked_against_the_stack_again():
    """A cached flow idle past SG_FLOW_IDLE_NS (100 ms here) is looked up in the stack again:
    gone there, it is forgotten and its segments need a cookie; open there, it passes and
    is cached afresh."""
    _need_root()
    idle = Guard({"SG_FLOW_IDLE_NS": 100_000_000})
    try:
        idle.configure(CONFIG)
        key = abi.SgFlowKey()
        key.client[:] = abi.mapped_words(ipaddress.ip_address(CLIENT4))
        key.server[:] = abi.mapped_words(ipaddress.ip_address(SERVER4))
        key.client_port, key.server_port = socket.htons(40000), socket.htons(COOKIE)
        with idle.map("flows") as m:
            m.set(key, abi.SgFlow(time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))))
        time.sleep(0.3)  # more than the idle time (a lower bound, not a timing assertion)
        res, delta = idle.run(tcp4("PA", payload=b"late"))
        assert (res.verdict, delta.keys()) == (DROP, {"drop_cookie", "flow_idle"})
        assert flow_keys(idle) == []
        with loopback_connection(socket.AF_INET) as (addr, cport, sport), cookie_port(idle, sport):
            assert set(idle.run(segment(addr, cport, sport))[1]) == {"pass_flow", "flow_socket"}
            time.sleep(0.3)
            res, delta = idle.run(segment(addr, cport, sport))
            assert (res.verdict, delta.keys()) == (PASS, {"pass_flow", "flow_idle", "flow_socket"})
            assert flow_keys(idle) == [(addr, cport, addr, sport)]
    finally:
        idle.close()


# -- adaptive cookies ----------------------------------------------------------------------------

def port_state(g: Guard, port: int = COOKIE) -> abi.SgPortState | None:
    with g.map("port_state") as m:
        return m.get(ctypes.c_uint32(port))


def test_adaptive_passes_syns_until_the_threshold_then_cookies_then_back(g):
    # 1000 SYN/s per CPU: 100 SYNs in one 100 ms window; back after 50 ms without one
    g.configure(GuardConfig(cookie_ports=(COOKIE, COOKIE2), cookies="adaptive", syn_threshold=1000,
                            quiet_seconds=0.05))
    res, delta = g.run(syn4())
    assert (res.verdict, delta.keys()) == (PASS, {"pass_syn"}), "no flood: the SYN goes to the stack"
    assert res.output == syn4().build(), "untouched"
    st = port_state(g)
    assert st is not None and (st.cookies, st.to_cookie, st.to_pass) == (0, 0, 0)
    # ACKs are checked as always: the adaptive mode only decides who answers SYNs
    assert set(g.run(tcp4("A"))[1]) == {"drop_cookie"}
    # a burst far over the threshold within one window (the program runs it back to back)
    testrun.run_xdp(g.prog.prog_fd, syn4().build(), repeat=2000)
    st = port_state(g)
    assert st is not None and (st.cookies, st.to_cookie) == (1, 1)
    assert g.counters()[abi.STAT["to_cookie"]][0] == 1
    assert set(g.run(syn4())[1]) == {"tx_cookie"}
    assert set(g.run(syn4(dport=COOKIE2))[1]) == {"pass_syn"}, "per port"
    time.sleep(0.3)  # more than a window and the quiet period (a lower bound)
    res, delta = g.run(syn4())
    assert (res.verdict, delta.keys()) == (PASS, {"pass_syn", "to_pass"})
    st = port_state(g)
    assert st is not None and (st.cookies, st.to_cookie, st.to_pass) == (0, 1, 1)


def test_a_port_in_cookie_mode_passes_syns_until_the_rules_are_armed(g):
    """On-demand SYNPROXY rules: a switched port sends no cookie that nothing could finish;
    its SYNs go on to the stack (and its own cookies) until the control plane arms the rules."""
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="adaptive", syn_threshold=1000), armed=False)
    testrun.run_xdp(g.prog.prog_fd, syn4().build(), repeat=2000)
    st = port_state(g)
    assert st is not None and (st.cookies, st.to_cookie) == (1, 1), "the port switched"
    res, delta = g.run(syn4())
    assert (res.verdict, delta.keys()) == (PASS, {"pass_syn", "cookie_held"})
    assert res.output == syn4().build(), "untouched"
    with g.map("adaptive") as m:
        record = m.get(ctypes.c_uint32(0))
        record.armed = 1
        m.set(ctypes.c_uint32(0), record)
    assert set(g.run(syn4())[1]) == {"tx_cookie"}, "armed: cookies at once"
    # cookies for every SYN never wait for the flag (their rules are in from attach on)
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always"), armed=False)
    assert set(g.run(syn4())[1]) == {"tx_cookie"}


def test_always_and_off_ignore_the_threshold(g):
    for mode, want in (("always", "tx_cookie"), ("off", "pass_syn")):
        g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies=mode, syn_threshold=1))
        assert [set(g.run(syn4())[1]) for _ in range(3)] == [{want}] * 3
        assert port_state(g) is None, "no adaptive state outside adaptive mode"


# -- layer 3: rate limit and ban --------------------------------------------------------------------

def test_rate_limit_then_ban(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", syn_rate=1, syn_burst=3, ban_after=2,
                               ban_seconds=60))
    seen = [set(g.run(syn4(src="10.9.9.9"))[1]) for _ in range(7)]
    assert seen == [{"tx_cookie"}] * 3 + [{"drop_limited"}, {"drop_limited", "bans"}] + [{"drop_banned"}] * 2
    assert set(g.run(syn4(src="10.9.9.10"))[1]) == {"tx_cookie"}, "other sources are not limited"
    # Only SYNs count: an ACK from the banned source still reaches the cookie check.
    assert set(g.run(tcp4("A", src="10.9.9.9"))[1]) == {"drop_cookie"}
    with g.map("sources") as m:
        src = {str(abi.address_of(k.addr)): v for k, v in m.items()}
    assert src["10.9.9.9"].banned_until_ns > 0 and "10.9.9.10" in src


def test_rate_limit_without_ban_and_ipv6_per_64(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", syn_rate=1, syn_burst=2, ban_seconds=0))
    outcomes = [set(g.run(syn6(src=f"2001:db8:1:2::{i}"))[1]) for i in range(1, 6)]
    assert outcomes == [{"tx_cookie"}] * 2 + [{"drop_limited"}] * 3, "one bucket per /64, no ban"
    assert set(g.run(syn6(src="2001:db8:1:3::1"))[1]) == {"tx_cookie"}


def test_rate_change_is_live(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", syn_rate=1, syn_burst=1, ban_seconds=0))
    assert [set(g.run(syn4())[1]) for _ in range(2)] == [{"tx_cookie"}, {"drop_limited"}]
    with g.map("config") as m:
        m.set(ctypes.c_uint32(0), ALWAYS.to_ctype(False, False))
    assert [set(g.run(syn4())[1]) for _ in range(3)] == [{"tx_cookie"}] * 3


def _source_key(addr: str) -> abi.SgSourceKey:
    key = abi.SgSourceKey()
    key.addr[:] = abi.mapped_words(ipaddress.ip_address(addr))
    return key


def _coarse_ns() -> int:
    """The clock the program reads (bpf_ktime_get_coarse_ns)."""
    return time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))


@contextlib.contextmanager
def _one_cpu() -> Iterator[None]:
    """Run on one CPU: `sources` keeps an LRU list per CPU, and a flood turns over the list
    of the CPU it runs on, so the abuser's entry must be on that one too."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


SPOOF_MARK = "100.64.0.0"  # SG_SPOOF_MARK of bpf/syn_guard_bench.c
SPOOF_LEN = len(syn4().build())
FLOOD_SOURCES = 1_000_000
SYNS_EACH = 2  # SG_SPOOF_EACH: each spoofed source sends two SYNs, as retransmitting tools do


@pytest.fixture(scope="module")
def spoofer():
    """The guard behind bpf/syn_guard_bench.c's spoofing front, under the restoring harness:
    a frame from SPOOF_MARK comes from a new source every SYNS_EACH runs (frames of SPOOF_LEN
    bytes)."""
    _need_root()
    prog = testrun.load_restoring([abi.SPEC.source_path, abi.SPEC.source_dir / "syn_guard_bench.c"],
                                  "sg_bench_spoofed", SPOOF_LEN, {**abi.TUNABLES, "SG_SPOOF_EACH": SYNS_EACH},
                                  moves="tail")
    g = Guard(prog=prog)
    yield g
    g.close()


def test_a_ban_outlives_a_spoofed_flood_of_a_million_sources(spoofer):
    """A real abuser goes over its rate and is banned and goes quiet; then a million spoofed
    sources, two SYNs each (within their burst), turn the source table over many times; the
    abuser's next SYN is still dropped as banned, and no spoofed source was banned."""
    g = spoofer
    abuser = syn4(src="10.9.9.9")
    with _one_cpu():
        g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", syn_rate=10, syn_burst=3,
                                ban_after=2, ban_seconds=600))
        seen = [set(g.run(abuser)[1]) for _ in range(6)]
        assert seen == [{"tx_cookie"}] * 3 + [{"drop_limited"}, {"drop_limited", "bans"}, {"drop_banned"}]

        flood = syn4(src=SPOOF_MARK).build()
        before = g.counters()
        sent, deadline = 0, time.monotonic() + 600
        while sent < FLOOD_SOURCES * SYNS_EACH:
            assert time.monotonic() < deadline, f"the flood took too long ({sent:,} SYNs sent)"
            n = min(200_000, FLOOD_SOURCES * SYNS_EACH - sent)
            assert testrun.run_xdp(g.prog.prog_fd, flood, repeat=n).verdict == TX
            sent += n
        after = g.counters()
        delta = {abi.STAT_NAMES[i]: a[0] - b[0] for i, (a, b) in enumerate(zip(after, before, strict=True))
                 if a != b}
        assert delta == {"tx_cookie": FLOOD_SOURCES * SYNS_EACH}, "spoofed SYNs within their burst: cookies"
        with g.map("sources") as m:
            assert m.get(_source_key("10.9.9.9")) is None, "the flood made the source table forget the abuser"

        res, d = g.run(abuser)
        assert (res.verdict, d) == (DROP, {"drop_banned": (1, SPOOF_LEN)}), "the ban outlived the flood"
        assert set(g.run(abuser)[1]) == {"drop_banned"}
        with g.map("bans") as m:
            ban = m.get(_source_key("10.9.9.9"))
            spoofed = m.get(_source_key("100.64.0.1"))
        assert ban is not None and ban.until_ns - ban.since_ns == 600 * 10**9
        assert spoofed is None, "no spoofed source was banned"


def test_a_ban_ends_when_it_should(g):
    """A ban lasts --ban-seconds from the SYN that started it, then the source's SYNs are
    answered again and its entry leaves the ban map, whether the source table still knows
    the source or forgot it meanwhile. One token a second: the six SYNs take far less than
    that to run, even under emulation (a kernel matrix VM), so none of them finds a new one."""
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", syn_rate=1, syn_burst=3, ban_after=2,
                            ban_seconds=0.3))
    kept, forgotten = "10.9.9.11", "10.9.9.12"
    for src in (kept, forgotten):
        seen = [set(g.run(syn4(src=src))[1]) for _ in range(6)]
        assert seen[-2:] == [{"drop_limited", "bans"}, {"drop_banned"}], src
    with g.map("bans") as m:
        bans = {src: m.get(_source_key(src)) for src in (kept, forgotten)}
    for src, ban in bans.items():
        assert ban is not None and ban.until_ns - ban.since_ns == 300_000_000, src
    until = max(b.until_ns for b in bans.values() if b is not None)
    deadline = time.monotonic() + 30
    while _coarse_ns() <= until:
        assert time.monotonic() < deadline, "the clock did not pass the ban's end"
        time.sleep(0.02)
    time.sleep(1.2)  # and the kept source's bucket has a token again (one a second)
    with g.map("sources") as m:
        assert m.delete(_source_key(forgotten))
    for src in (kept, forgotten):
        assert set(g.run(syn4(src=src))[1]) == {"tx_cookie"}, src
    with g.map("bans") as m:
        left = [m.get(_source_key(src)) for src in (kept, forgotten)]
    assert left == [None, None], "an ended ban is removed"


def test_a_source_spread_over_cpus_gets_its_burst_and_no_more(g):
    """Two CPUs take SYNs of one source at the same time: together they admit its burst (plus
    what the rate adds meanwhile), not a token more; the bucket is shared and updated
    atomically, so no CPU's update is lost to the other's."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    burst, per_cpu = 1_000_000, 1_000_000
    g.configure(GuardConfig(cookie_ports=(COOKIE,), syn_rate=1, syn_burst=burst, ban_seconds=0,
                            cookies="off"))
    frame = syn4(src="10.7.7.7").build()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def take(cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            start.wait(timeout=30)
            testrun.run_xdp(g.prog.prog_fd, frame, repeat=per_cpu)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    before = g.counters()
    t0 = time.monotonic()
    threads = [threading.Thread(target=take, args=(cpu,)) for cpu in cpus[:2]]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    elapsed = time.monotonic() - t0
    assert not errors and not any(th.is_alive() for th in threads), errors
    after = g.counters()
    passed = after[abi.STAT["pass_syn"]][0] - before[abi.STAT["pass_syn"]][0]
    limited = after[abi.STAT["drop_limited"]][0] - before[abi.STAT["drop_limited"]][0]
    assert passed + limited == 2 * per_cpu
    # The burst, one token per second of the run, and the first SYN (which opens the bucket).
    assert passed <= burst + int(elapsed) + 2, f"{passed - burst:,} SYNs over the burst"
    assert passed >= burst * 0.99, f"only {passed:,} of the burst's {burst:,} SYNs admitted"


# -- configuration flags -------------------------------------------------------------------------------

def test_cookies_off_passes_syns_and_acks(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), drop_ports=(DROP_PORT,), cookies="off"))
    assert g.run(syn4())[0].verdict == PASS
    assert set(g.run(syn4())[1]) == {"pass_syn"}
    assert set(g.run(tcp4("A"))[1]) == {"pass_tcp"}
    assert set(g.run(syn4(dport=DROP_PORT))[1]) == {"drop_port"}


def test_fragment_verdict_pass(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always", fragments="pass"))
    frag = E / IP(src=CLIENT4, dst=SERVER4, flags="MF") / TCP(dport=COOKIE, flags="S")
    res, delta = g.run(frag)
    assert (res.verdict, set(delta)) == (PASS, {"fragment"})


def test_empty_acl_skips_lookup_and_port_change_is_live(g):
    g.configure(GuardConfig(cookie_ports=(COOKIE,), cookies="always"), ALLOW, DENY)
    with g.map("config") as m:
        m.set(ctypes.c_uint32(0), ALWAYS.to_ctype(False, False))
    assert set(g.run(syn4(src="198.51.100.9"))[1]) == {"tx_cookie"}, "ACL4 flag clear: no lookup"
    with g.map("ports") as m:
        m.set(ctypes.c_uint32(COOKIE), ctypes.c_uint32(abi.PORT_OPEN))
    assert set(g.run(syn4())[1]) == {"pass_other"}


def test_more_protected_addresses_than_fit_inline_take_the_hash(g):
    """Up to PROTECTED_INLINE addresses are compared inline, more are looked up in the hash:
    either way the first and the last of them are guarded and others are not."""
    for count in (abi.PROTECTED_INLINE, abi.PROTECTED_INLINE + 1, 200):
        many = tuple(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(count - 1)) + (SERVER4,)
        g.configure(CONFIG, protected=many)
        with g.map("protected_list") as m:
            n = m.get(ctypes.c_uint32(0)).n  # type: ignore[union-attr]
        assert n == (count if count <= abi.PROTECTED_INLINE else abi.PROTECTED_HASH)
        assert set(g.run(syn4())[1]) == {"tx_cookie"}, count
        first = E / IP(src=CLIENT4, dst=many[0]) / TCP(sport=40000, dport=COOKIE, flags="S")
        assert set(g.run(first)[1]) == {"tx_cookie"}, count
        assert set(g.run(E / IP(src=CLIENT4, dst=VIP4) / TCP(dport=COOKIE, flags="S"))[1]) == {"pass_dest"}
        assert set(g.run(syn6())[1]) == {"pass_dest"}, "SERVER6 is not in this list"


def test_only_protected_destinations_are_guarded_and_the_set_is_live(g):
    """A SYN to a protected port of an address that is not the host's own passes untouched
    (pass_dest); adding the address to `protected_addrs` guards it at once; with --protect
    any (SG_CFG_DESTS clear) every destination is guarded without a lookup."""
    vip_syn = E / IP(src=CLIENT4, dst=VIP4) / TCP(sport=40000, dport=COOKIE, flags="S", options=LINUX_OPTS)
    res, d = g.run(vip_syn)
    assert (res.verdict, set(d), res.output) == (PASS, {"pass_dest"}, vip_syn.build())
    g.configure(CONFIG, ALLOW, DENY, protected=(SERVER4, SERVER6, VIP4))
    assert set(g.run(vip_syn)[1]) == {"tx_cookie"}
    g.configure(CONFIG, ALLOW, DENY, protected=())
    assert set(g.run(syn4())[1]) == {"pass_dest"}, "nothing protected: nothing guarded"
    g.configure(GuardConfig(cookie_ports=CONFIG.cookie_ports, drop_ports=CONFIG.drop_ports, protect=("any",),
                            cookies="always"),
                protected=())
    assert set(g.run(vip_syn)[1]) == {"tx_cookie"}
    assert set(g.run(syn6())[1]) == {"tx_cookie"}


# -- compile-time SYN-ACK options ------------------------------------------------------------------------

# The kernel matrix's extremes of the guard (no window scaling, SACK or timestamps and the
# smallest MSS; all options and the largest): the matrix hands its compiles to this test.
@pytest.mark.parametrize("defines", list(GUARD_EXTREMES.values()), ids=list(GUARD_EXTREMES))
def test_synack_options_follow_the_tunables(defines):
    _need_root()
    other = Guard(defines)
    try:
        for syn in (syn4(), syn6(), syn4(opts=MACOS_OPTS)):
            other.configure(CONFIG)
            res, delta = other.run(syn)
            assert set(delta) == {"tx_cookie"}
            check_synack(syn, Ether(res.output), other.defines)
            assert set(other.run(client_ack(Ether(res.output)))[1]) == {"pass_cookie"}
    finally:
        other.close()


# -- fuzz ---------------------------------------------------------------------------------------------

VERDICTS = {PASS, DROP, TX}
SEEDS: list[Callable[[], Packet]] = [
    syn4, syn6, lambda: tcp4("A"), lambda: tcp6("PA", payload=b"x" * 20),
    lambda: E / Dot1AD(vlan=1) / Dot1Q(vlan=2) / syn4()[IP],
    lambda: E / IPv6(src=CLIENT6, dst=SERVER6) / V6EXT / IPv6ExtHdrFragment(m=1) / syn6()[TCP],
    lambda: E / IP(src=CLIENT4, dst=SERVER4, options=IP_OPTS) /
    TCP(dport=COOKIE, flags="S", options=MACOS_OPTS),
    lambda: syn4(dport=DROP_PORT), lambda: syn4(src="198.51.100.3"),
]


def _check_invariants(g: Guard, data: bytes) -> None:
    res, delta = g.run(data)
    assert res.verdict in VERDICTS, res.verdict
    outcomes = {k: v for k, v in delta.items() if k in abi.OUTCOME_NAMES}
    assert list(outcomes.values()) == [(1, len(data))], f"exactly one outcome counter: {delta}"
    (name,) = outcomes
    assert set(delta) - {name} <= {"bans", "probes"}
    if res.verdict == PASS and "probes" not in delta:
        assert res.output == data
    if res.verdict == TX:
        assert name == "tx_cookie"
        check_synack(Ether(data), Ether(res.output), g.defines)
    if name == "drop_error":
        pytest.fail("a helper failed on a frame the parser accepted")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=14, max_size=300))
def test_fuzz_random_frames(guard, data):
    guard.configure(CONFIG, ALLOW, DENY)
    _check_invariants(guard, data)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from(range(len(SEEDS))),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(14, 400)),
       extra=st.binary(max_size=40))
def test_fuzz_mutated_frames(guard, seed, flips, cut, extra):
    guard.configure(CONFIG, ALLOW, DENY)
    data = bytearray(SEEDS[seed]().build() + extra)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        data = data[:max(14, cut)]
    _check_invariants(guard, bytes(data))


def test_counters_add_up_over_a_batch(g):
    """Sum of outcome counters == frames run, bytes included, over the whole golden table."""
    before = g.counters()
    total = 0
    nbytes = 0
    for _desc, frame, _v, _c in GOLDEN:
        data = frame if isinstance(frame, bytes) else frame.build()
        testrun.run_xdp(g.prog.prog_fd, data)
        total += 1
        nbytes += len(data)
    after = g.counters()
    ids = [abi.STAT[n] for n in abi.OUTCOME_NAMES]
    outcome = [(after[i][0] - before[i][0], after[i][1] - before[i][1]) for i in ids]
    assert sum(p for p, _ in outcome) == total
    assert sum(b for _, b in outcome) == nbytes


