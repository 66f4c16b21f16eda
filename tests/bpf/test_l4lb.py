"""bpf/l4lb.c through BPF_PROG_TEST_RUN: golden frames for every forwarding mode (verdict
and exact output bytes), conntrack hit vs miss, the defined verdicts for everything that is
not balanced, counters, the header mirror, and a fuzz test of the verdict contract."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from fastpath.apps.lb import abi, config, hashing, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bpf import loader, testrun
from fastpath.bpf.maps import layout
from fastpath.errors import FastpathError

pytestmark = pytest.mark.bpf

LB_MAC = "02:00:00:00:0b:01"
CLIENT_MAC = "02:00:00:00:0c:01"
CLIENT4 = "198.51.100.7"
CLIENT6 = "2001:db8:c::7"
MACS = {
    "10.0.0.11": "02:00:00:00:00:11", "10.0.0.12": "02:00:00:00:00:12",
    "10.0.0.21": "02:00:00:00:00:21", "10.0.0.22": "02:00:00:00:00:22",
    "10.0.0.31": "02:00:00:00:00:31", "10.0.0.41": "02:00:00:00:00:41",
    "fd00::11": "02:00:00:00:06:11", "fd00::12": "02:00:00:00:06:12",
    "fd00::21": "02:00:00:00:06:21", "fd00::31": "02:00:00:00:06:31",
}

VIPS = {
    # name: (mode, hash, [(backend, weight)])
    "10.100.0.1:80/tcp": ("dsr", "5tuple", [("10.0.0.11", 1), ("10.0.0.12", 1)]),
    "10.100.0.1:53/udp": ("dsr", "5tuple", [("10.0.0.11", 1)]),
    "10.100.0.2:80/tcp": ("nat", "5tuple", [("10.0.0.21:8080", 1), ("10.0.0.22:8080", 1)]),
    "10.100.0.2:53/udp": ("nat", "5tuple", [("10.0.0.21:5353", 1)]),
    "10.100.0.3:80/tcp": ("ipip", "5tuple", [("10.0.0.31", 1)]),
    "10.100.0.3:53/udp": ("ipip", "5tuple", [("10.0.0.31", 1)]),
    "10.100.0.4:80/tcp": ("dsr", "src", [("10.0.0.11", 1), ("10.0.0.12", 1), ("10.0.0.41", 1)]),
    "10.100.0.9:80/tcp": ("dsr", "5tuple", []),
    "[fd00:100::1]:80/tcp": ("dsr", "5tuple", [("fd00::11", 1), ("fd00::12", 1)]),
    "[fd00:100::1]:53/udp": ("dsr", "5tuple", [("fd00::11", 1)]),
    "[fd00:100::2]:80/tcp": ("nat", "5tuple", [("[fd00::21]:8080", 1)]),
    "[fd00:100::2]:53/udp": ("nat", "5tuple", [("[fd00::21]:5353", 1)]),
    "[fd00:100::3]:80/tcp": ("ipip", "5tuple", [("fd00::31", 1)]),
    "[fd00:100::3]:53/udp": ("ipip", "5tuple", [("fd00::31", 1)]),
}


def resolver(addr):
    mac = MACS.get(str(addr))
    if mac is None:
        raise FastpathError(f"backend {addr}: cannot resolve its MAC address")
    return mac


class Env:
    def __init__(self, prog: loader.LoadedProgram) -> None:
        self.prog = prog
        self.maps = LbMaps.from_program(prog)
        self.bal = Balancer(self.maps, store.LbState.for_defines(prog_defines()), resolver, prog_defines())
        self._tables: dict[tuple, list[int]] = {}
        for name, (mode, hsh, backends) in VIPS.items():
            vip = config.parse_vip(name)
            self.bal.add_vip(vip, mode, hsh)
            for text, weight in backends:
                addr, port = config.parse_backend(text)
                self.bal.add_backend(vip, addr, port, weight)

    def run(self, frame: bytes) -> testrun.RunResult:
        return testrun.run_xdp(self.prog.prog_fd, frame)

    def pick(self, vip_text: str, client: str, sport: int) -> store.BackendState:
        """The backend the Maglev ring gives this flow (computed from Python's side)."""
        vip = config.parse_vip(vip_text)
        vs = self.bal.vip(vip)
        h = hashing.flow_hash(ipaddress.ip_address(client), sport, vip.port, src_only=vs.hash == "src",
                         seed=self.bal.state.seed)
        key = (vip_text, tuple(sorted((b.id, b.effective_weight) for b in vs.backends.values())))
        if key not in self._tables:
            self._tables[key] = self.bal.table(vs)
        bid = self._tables[key][h % self.bal.state.table_size]
        return next(b for b in vs.backends.values() if b.id == bid)

    def counters(self) -> dict[str, int]:
        return {k: v["packets"] for k, v in self.bal.counters().items()}

    def vip_stats(self, vip_text: str) -> dict:
        vs = self.bal.vip(config.parse_vip(vip_text))
        return {**self.bal.vip_counters(vs),
                "backends": [{"backend": b.name, **self.bal.backend_counters(b)}
                             for b in vs.backends.values()]}


def prog_defines() -> dict[str, int]:
    # A UDP timeout other than the default: the flow lifetime tests see the -D flag work.
    return {**abi.TUNABLES, "LB_HASH_SEED": 12345, "LB_UDP_TIMEOUT": 20}


@pytest.fixture(scope="module")
def env():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    prog = loader.load(abi.SPEC, prog_defines())
    e = Env(prog)
    yield e
    e.maps.close()
    prog.close()


# ---------------------------------------------------------------------------------------
# frames and their expected rewrites

def eth() -> Ether:
    return Ether(src=CLIENT_MAC, dst=LB_MAC)


def tcp4(dst: str, dport: int, sport: int, flags: str = "S", src: str = CLIENT4, flags_ip: str = "",
         **ip) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst, flags=flags_ip, **ip)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000, window=512) / Raw(b"hello"))


def udp4(dst: str, dport: int, sport: int, src: str = CLIENT4, chksum: int | None = None) -> bytes:
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return bytes(eth() / IP(src=src, dst=dst) / u / Raw(b"query"))


def tcp6(dst: str, dport: int, sport: int, flags: str = "S", src: str = CLIENT6) -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                       seq=1000, window=512) / Raw(b"hello"))


def udp6(dst: str, dport: int, sport: int, src: str = CLIENT6) -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"query"))


def dsr_expected(frame: bytes, mac: str) -> bytes:
    p = Ether(frame)
    p.src, p.dst = p.dst, mac
    return bytes(p)


def nat_expected(frame: bytes, mac: str, addr: str, port: int) -> bytes:
    p = Ether(frame)
    p.src, p.dst = p.dst, mac
    ip = p[IP] if IP in p else p[IPv6]
    ip.dst = addr
    if IP in p:
        del p[IP].chksum
    l4 = p[TCP] if TCP in p else p[UDP]
    l4.dport = port
    if not (UDP in p and IP in p and p[UDP].chksum == 0):
        del l4.chksum
    return bytes(p)


def ipip_expected(frame: bytes, backend: store.BackendState, client: str, sport: int,
                  ident: int = 0) -> bytes:
    """The encapsulated frame; an IPv4 outer header copies the client's DF and carries `ident`."""
    p = Ether(frame)
    inner = bytes(p.payload)
    src = hashing.ipip_source(ipaddress.ip_address(client), sport, prog_defines())
    if p.type == 0x0800:
        outer = IP(src=str(src), dst=backend.address, proto=4, ttl=64, id=ident, flags=p[IP].flags & 2,
                   tos=p[IP].tos) / Raw(inner)
    else:
        tc = p[IPv6].tc
        outer = IPv6(src=str(src), dst=backend.address, nh=41, hlim=64, tc=tc, fl=0) / Raw(inner)
    return bytes(Ether(src=LB_MAC, dst=backend.mac, type=p.type) / outer)


def check_ipip(env: Env, frame: bytes, backend: store.BackendState, client: str, sport: int) -> int:
    """Run an ipip frame; check every byte and the outer IPv4 ID rule (RFC 6864): 0 when the
    client set DF (copied to the outer header), otherwise a real one. Returns the ID."""
    res = env.run(frame)
    assert res.verdict == "XDP_TX"
    ident = 0
    if Ether(frame).type == 0x0800:
        ident = Ether(res.output)[IP].id
        assert (ident == 0) == bool(Ether(frame)[IP].flags.DF), ident
    assert res.output.hex() == ipip_expected(frame, backend, client, sport, ident).hex()
    return ident


def check(env: Env, frame: bytes, verdict: str, expected: bytes | None = None) -> testrun.RunResult:
    res = env.run(frame)
    assert res.verdict == verdict
    if expected is not None:
        assert res.output.hex() == expected.hex()
    return res


# ---------------------------------------------------------------------------------------
# the header mirror

def test_header_mirror_matches_bcc_decoded_types(env):
    for name, (key, value) in abi.MAP_TYPES.items():
        table = env.prog.table(name)
        leaf = env.prog.leaf_type(name)
        assert ctypes.sizeof(table.Key) == ctypes.sizeof(key), name
        assert ctypes.sizeof(leaf) == ctypes.sizeof(value), name
        for ours, theirs in ((key, table.Key), (value, leaf)):
            if hasattr(ours, "_fields_"):
                assert layout(theirs) == layout(ours), name


def test_header_constants_match_python():
    text = open(abi.SPEC.header_path).read()
    stats = re.findall(r"LB_STAT_([A-Z_]+) = (\d+),", text)
    assert [(n.lower(), int(v)) for n, v in stats] == [
        *[(s, i) for i, s in enumerate(abi.STAT_NAMES)], ("max", abi.LB_STAT_MAX)]
    modes = re.findall(r"LB_MODE_([A-Z]+) = (\d+),", text)
    assert {n.lower(): int(v) for n, v in modes} == abi.MODES
    flag = re.search(r"#define LB_VIP_F_HASH_SRC_ONLY (0x\w+)", text).group(1)
    assert flag == hex(abi.LB_VIP_F_HASH_SRC_ONLY)
    assert re.search(r"#define LB_BACKEND_F_EXISTS (0x\w+)", text).group(1) == hex(abi.LB_BACKEND_F_EXISTS)
    assert re.search(r"#define LB_BACKEND_F_DOWN (0x\w+)", text).group(1) == hex(abi.LB_BACKEND_F_DOWN)
    assert re.search(r"#define LB_FLOW_F_CLOSING (0x\w+)", text).group(1) == hex(abi.LB_FLOW_F_CLOSING)
    assert re.search(r"#define LB_FLOW_F_RESET (0x\w+)", text).group(1) == hex(abi.LB_FLOW_F_RESET)
    assert int(re.search(r"#define LB_NO_BACKEND (0x\w+)u", text).group(1), 16) == abi.LB_NO_BACKEND


def test_c_defaults_are_the_python_tunables():
    """The #ifndef defaults in l4lb.c and abi.TUNABLES are one set of values."""
    text = open(abi.SPEC.source_path).read()
    found = dict(re.findall(r"#ifndef (LB_\w+)\n#define \1 (\w+)", text))
    assert {k: int(v, 0) for k, v in found.items()} == abi.TUNABLES


def test_tunables_reach_the_program(env):
    assert "-DLB_HASH_SEED=12345" in env.prog.cflags
    rings = abi.TUNABLES["LB_MAX_VIPS"] * 2 * abi.TUNABLES["LB_RING_SIZE"]
    assert env.prog.table("rings").max_entries == rings


# ---------------------------------------------------------------------------------------
# golden frames: each forwarding mode, v4 and v6, TCP and UDP

@pytest.mark.parametrize("vip,make,client", [
    ("10.100.0.1:80/tcp", lambda sp: tcp4("10.100.0.1", 80, sp), CLIENT4),
    ("10.100.0.1:53/udp", lambda sp: udp4("10.100.0.1", 53, sp), CLIENT4),
    ("[fd00:100::1]:80/tcp", lambda sp: tcp6("fd00:100::1", 80, sp), CLIENT6),
    ("[fd00:100::1]:53/udp", lambda sp: udp6("fd00:100::1", 53, sp), CLIENT6),
], ids=["v4-tcp", "v4-udp", "v6-tcp", "v6-udp"])
def test_dsr_rewrites_macs_only(env, vip, make, client):
    for sport in (40001, 40002, 40003, 40004):
        frame = make(sport)
        be = env.pick(vip, client, sport)
        check(env, frame, "XDP_TX", dsr_expected(frame, be.mac))


def test_dsr_literal_bytes(env):
    """One case spelled out in bytes, independent of scapy's rewriting."""
    frame = udp4("10.100.0.1", 53, 40000)
    res = check(env, frame, "XDP_TX")
    assert res.output[:12] == bytes.fromhex("020000000011" "020000000b01")
    assert res.output[12:] == frame[12:]


@pytest.mark.parametrize("vip,make,client", [
    ("10.100.0.2:80/tcp", lambda sp: tcp4("10.100.0.2", 80, sp), CLIENT4),
    ("10.100.0.2:53/udp", lambda sp: udp4("10.100.0.2", 53, sp), CLIENT4),
    ("10.100.0.2:53/udp", lambda sp: udp4("10.100.0.2", 53, sp, chksum=0), CLIENT4),
    ("[fd00:100::2]:80/tcp", lambda sp: tcp6("fd00:100::2", 80, sp), CLIENT6),
    ("[fd00:100::2]:53/udp", lambda sp: udp6("fd00:100::2", 53, sp), CLIENT6),
], ids=["v4-tcp", "v4-udp", "v4-udp-no-checksum", "v6-tcp", "v6-udp"])
def test_nat_rewrites_address_port_and_checksums(env, vip, make, client):
    for sport in (41001, 41002, 41003, 41004, 65535, 1):
        frame = make(sport)
        be = env.pick(vip, client, sport)
        check(env, frame, "XDP_TX", nat_expected(frame, be.mac, be.address, be.port))


@pytest.mark.parametrize("fwd,reply,vip_addr", [
    (lambda: tcp4("10.100.0.2", 80, 42001),
     lambda be: bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src=be.address, dst=CLIENT4)
                      / TCP(sport=be.port, dport=42001, flags="SA", seq=7, ack=1001) / Raw(b"hi")),
     "10.100.0.2"),
    (lambda: udp4("10.100.0.2", 53, 42002),
     lambda be: bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src=be.address, dst=CLIENT4)
                      / UDP(sport=be.port, dport=42002) / Raw(b"answer")),
     "10.100.0.2"),
    (lambda: tcp6("fd00:100::2", 80, 42003),
     lambda be: bytes(Ether(src=be.mac, dst=LB_MAC) / IPv6(src=be.address, dst=CLIENT6)
                      / TCP(sport=be.port, dport=42003, flags="SA", seq=7, ack=1001) / Raw(b"hi")),
     "fd00:100::2"),
], ids=["v4-tcp", "v4-udp", "v6-tcp"])
def test_nat_replies_are_translated_back_and_passed(env, fwd, reply, vip_addr):
    frame = fwd()
    p = Ether(frame)
    vip_port = (p[TCP] if TCP in p else p[UDP]).dport
    res = check(env, frame, "XDP_TX")
    be_addr = str((IP in Ether(res.output) and Ether(res.output)[IP].dst) or Ether(res.output)[IPv6].dst)
    be = next(b for v in env.bal.state.vips.values() for b in v.backends.values()
              if b.address == be_addr and v.mode == "nat" and v.port == vip_port)
    before = env.counters()["nat_reverse"]
    r = reply(be)
    want = Ether(r)
    (want[IP] if IP in want else want[IPv6]).src = vip_addr
    l4 = want[TCP] if TCP in want else want[UDP]
    l4.sport = vip_port
    if IP in want:
        del want[IP].chksum
    del l4.chksum
    check(env, r, "XDP_PASS", bytes(want))
    assert env.counters()["nat_reverse"] == before + 1


def test_reply_without_nat_flow_passes_unchanged(env):
    frame = bytes(Ether(src=MACS["10.0.0.21"], dst=LB_MAC) / IP(src="10.0.0.21", dst=CLIENT4)
                  / TCP(sport=8080, dport=9, flags="SA"))
    check(env, frame, "XDP_PASS", frame)


@pytest.mark.parametrize("vip,make,client", [
    ("10.100.0.3:80/tcp", lambda sp: tcp4("10.100.0.3", 80, sp, tos=0x28), CLIENT4),
    ("10.100.0.3:53/udp", lambda sp: udp4("10.100.0.3", 53, sp), CLIENT4),
    ("[fd00:100::3]:80/tcp", lambda sp: tcp6("fd00:100::3", 80, sp), CLIENT6),
    ("[fd00:100::3]:53/udp", lambda sp: udp6("fd00:100::3", 53, sp), CLIENT6),
], ids=["v4-tcp", "v4-udp", "v6-tcp", "v6-udp"])
def test_ipip_encapsulates(env, vip, make, client):
    for sport in (43001, 0xBEEF):
        frame = make(sport)
        be = env.pick(vip, client, sport)
        check_ipip(env, frame, be, client, sport)


def test_ipip_outer_header_copies_df_and_numbers_the_rest(env):
    """A client packet with DF gives an outer header with DF and ID 0; one without DF may be
    fragmented on the way to the backend, so its outer header needs IDs that do not repeat."""
    vip, sport = "10.100.0.3:80/tcp", 43050
    be = env.pick(vip, CLIENT4, sport)
    assert check_ipip(env, tcp4("10.100.0.3", 80, sport, flags="A", flags_ip="DF"), be, CLIENT4, sport) == 0
    ids = [check_ipip(env, tcp4("10.100.0.3", 80, sport, flags="A"), be, CLIENT4, sport) for _ in range(50)]
    assert all(ids) and len(set(ids)) == len(ids), ids


def test_ipip_v6_traffic_class_is_copied(env):
    frame = bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::3", tc=0xb8) / TCP(sport=43100, dport=80))
    be = env.pick("[fd00:100::3]:80/tcp", CLIENT6, 43100)
    check_ipip(env, frame, be, CLIENT6, 43100)
    assert Ether(env.run(frame).output)[IPv6].tc == 0xB8


@pytest.mark.parametrize("ip,client,vip,fits", [
    (IP, CLIENT4, "10.100.0.3", 1500 - 20 - 20 - 8),       # outer + inner IPv4 header, UDP
    (IPv6, CLIENT6, "fd00:100::3", 1500 - 40 - 40 - 8),
], ids=["v4", "v6"])
def test_ipip_too_big_drops_with_counter(env, ip, client, vip, fits):
    """Packet and outer header must fit LB_MAX_PACKET: one byte more drops, counted."""
    def frame(sport: int, size: int) -> bytes:
        return bytes(eth() / ip(src=client, dst=vip) / UDP(sport=sport, dport=53) / Raw(b"x" * size))

    before = env.counters()["drop_too_big"]
    check(env, frame(43200, fits + 1), "XDP_DROP")
    assert env.counters()["drop_too_big"] == before + 1
    check(env, frame(43201, fits), "XDP_TX")


# ---------------------------------------------------------------------------------------
# conntrack: hit vs miss, drain, delete, SYN

def test_conntrack_keeps_flows_when_the_ring_changes(env):
    vip = config.parse_vip("10.100.0.1:80/tcp")
    sports = range(44000, 44040)
    first = {}
    for sp in sports:
        res = check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX")
        first[sp] = Ether(res.output).dst
    assert len(set(first.values())) == 2, "40 flows should use both backends"
    st0 = env.vip_stats("10.100.0.1:80/tcp")
    # Weight 1:1 -> 50:1 moves many slots; established packets (ACK) keep their backend.
    env.bal.set_weight(vip, ipaddress.ip_address("10.0.0.11"), None, 50)
    try:
        for sp in sports:
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="A"), "XDP_TX")
            assert Ether(res.output).dst == first[sp], sp
        st1 = env.vip_stats("10.100.0.1:80/tcp")
        assert st1["lru_hits"] - st0["lru_hits"] == len(sports)
        assert st1["new_flows"] == st0["new_flows"]
        moved = [sp for sp in sports if first[sp] == MACS["10.0.0.12"]
                 and env.pick("10.100.0.1:80/tcp", CLIENT4, sp).address == "10.0.0.11"]
        assert moved
        # A SYN that repeats a live flow's tuple (a retransmit, or forged by whoever knows the
        # tuple) keeps the flow's backend: nobody moves a live connection with a SYN.
        res = check(env, tcp4("10.100.0.1", 80, moved[0], flags="S"), "XDP_TX")
        assert Ether(res.output).dst == MACS["10.0.0.12"]
        assert env.vip_stats("10.100.0.1:80/tcp")["new_flows"] == st0["new_flows"]
        # Once the flow has ended, a new connection on the tuple follows the new ring.
        idle(env, flow_key(CLIENT4, moved[0], "10.100.0.1:80/tcp"), abi.TUNABLES["LB_TCP_TIMEOUT"] + 1)
        res = check(env, tcp4("10.100.0.1", 80, moved[0], flags="S"), "XDP_TX")
        assert Ether(res.output).dst == MACS["10.0.0.11"]
    finally:
        env.bal.set_weight(vip, ipaddress.ip_address("10.0.0.11"), None, 1)


def test_conntrack_miss_then_hit_counters(env):
    vs0 = env.vip_stats("10.100.0.1:53/udp")
    frame = udp4("10.100.0.1", 53, 44100)
    check(env, frame, "XDP_TX")
    check(env, frame, "XDP_TX")
    check(env, frame, "XDP_TX")
    vs1 = env.vip_stats("10.100.0.1:53/udp")
    assert vs1["lru_misses"] - vs0["lru_misses"] == 1
    assert vs1["new_flows"] - vs0["new_flows"] == 1
    assert vs1["lru_hits"] - vs0["lru_hits"] == 2
    assert vs1["packets"] - vs0["packets"] == 3
    assert vs1["bytes"] - vs0["bytes"] == 3 * len(frame)
    be = next(b for b in vs1["backends"])
    assert be["packets"] >= 3


def test_drained_backend_gets_no_new_flows_but_keeps_old_ones(env):
    vip = config.parse_vip("10.100.0.1:80/tcp")
    on_12 = [sp for sp in range(45000, 45100) if env.pick(str(vip), CLIENT4, sp).address == "10.0.0.12"][:5]
    for sp in on_12:
        check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX")
    env.bal.set_drained(vip, ipaddress.ip_address("10.0.0.12"), None, True)
    try:
        for sp in on_12:
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="PA"), "XDP_TX")
            assert Ether(res.output).dst == MACS["10.0.0.12"]
        for sp in range(45100, 45150):
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX")
            assert Ether(res.output).dst == MACS["10.0.0.11"]
    finally:
        env.bal.set_drained(vip, ipaddress.ip_address("10.0.0.12"), None, False)


def test_a_syn_leaves_a_backend_marked_down_its_other_packets_stay(env):
    """A client retransmitting its SYN to a backend that died (or reusing the port of a
    connection it refused) reaches a live one once the health checks mark it down; the
    down backend's established flows keep their packets (it may still serve them)."""
    vip = config.parse_vip("10.100.0.1:80/tcp")
    on_12 = [sp for sp in range(45200, 45300) if env.pick(str(vip), CLIENT4, sp).address == "10.0.0.12"][:4]
    assert len(on_12) == 4
    for sp in on_12:
        res = check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX")
        assert Ether(res.output).dst == MACS["10.0.0.12"]
    established, pending = on_12[:2], on_12[2:]
    for sp in established:  # the handshake's ACK confirms the flow (conntrack)
        check(env, tcp4("10.100.0.1", 80, sp, flags="A"), "XDP_TX")
    vs = env.bal.vip(vip)
    name = env.bal.backend(vip, ipaddress.ip_address("10.0.0.12"), None).name
    assert env.bal.set_health(str(vip), name, False)
    try:
        entry = env.bal.maps["backends"].get(ctypes.c_uint32(vs.backends[name].id))
        assert entry.flags == abi.LB_BACKEND_F_EXISTS | abi.LB_BACKEND_F_DOWN
        for sp in established:
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="PA"), "XDP_TX")
            assert Ether(res.output).dst == MACS["10.0.0.12"], "an established flow keeps its backend"
        for sp in pending + established[:1]:
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX")
            assert Ether(res.output).dst == MACS["10.0.0.11"], "a SYN picks again, off the down backend"
            res = check(env, tcp4("10.100.0.1", 80, sp, flags="A"), "XDP_TX")
            assert Ether(res.output).dst == MACS["10.0.0.11"], "and the flow stays where it went"
    finally:
        env.bal.set_health(str(vip), name, True)
    entry = env.bal.maps["backends"].get(ctypes.c_uint32(vs.backends[name].id))
    assert entry.flags == abi.LB_BACKEND_F_EXISTS
    # Up again: a repeated SYN keeps its (new) flow's backend, as for any live flow.
    res = check(env, tcp4("10.100.0.1", 80, pending[0], flags="S"), "XDP_TX")
    assert Ether(res.output).dst == MACS["10.0.0.11"]


def test_deleted_backend_flows_pick_again(env):
    vip = config.parse_vip("10.100.0.4:80/tcp")   # source-hash VIP, three backends
    clients = [f"198.51.100.{i}" for i in range(10, 40)]
    on_41 = [c for c in clients if env.pick(str(vip), c, 1).address == "10.0.0.41"]
    assert on_41
    for c in on_41:
        res = check(env, tcp4("10.100.0.4", 80, 50000, flags="S", src=c), "XDP_TX")
        assert Ether(res.output).dst == MACS["10.0.0.41"]
    env.bal.del_backend(vip, ipaddress.ip_address("10.0.0.41"))
    try:
        for c in on_41:
            res = check(env, tcp4("10.100.0.4", 80, 50000, flags="A", src=c), "XDP_TX")
            assert Ether(res.output).dst in (MACS["10.0.0.11"], MACS["10.0.0.12"])
    finally:
        env.bal.add_backend(vip, ipaddress.ip_address("10.0.0.41"))



def test_conntrack_hit_without_its_vip_ref_goes_the_long_way(env):
    """A conntrack hit reaches its VIP through `vip_refs`; with the entry missing (a program
    upgraded from one without the map, before attach fills it) the flow still goes to its
    pinned backend, and a hit, through `vips`."""
    vip_text, sport = "10.100.0.4:80/tcp", 50100
    vs = env.bal.vip(config.parse_vip(vip_text))
    be = env.pick(vip_text, CLIENT4, sport)
    check(env, tcp4("10.100.0.4", 80, sport, flags="S"), "XDP_TX")
    check(env, tcp4("10.100.0.4", 80, sport, flags="A"), "XDP_TX")   # confirmed
    env.bal.maps["vip_refs"].set(ctypes.c_uint32(vs.index), abi.VipRef())
    try:
        hits = env.bal.vip_counters(vs)["lru_hits"]
        res = check(env, tcp4("10.100.0.4", 80, sport, flags="A"), "XDP_TX")
        assert Ether(res.output).dst == MACS[be.address]
        assert env.bal.vip_counters(vs)["lru_hits"] == hits + 1
    finally:
        env.bal.sync_refs()
    assert env.bal.maps["vip_refs"].get(ctypes.c_uint32(vs.index)).vip.port == socket.htons(80)


@pytest.mark.parametrize("vip_text,make,client", [
    ("10.100.0.3:80/tcp", lambda sp, flags: tcp4("10.100.0.3", 80, sp, flags=flags), CLIENT4),
    ("[fd00:100::3]:80/tcp", lambda sp, flags: tcp6("fd00:100::3", 80, sp, flags=flags), CLIENT6),
], ids=["v4", "v6"])
def test_established_flow_is_served_before_its_vip_is_looked_up(env, vip_text, make, client):
    """An established flow's packet goes to its backend through conntrack and `vip_refs`
    alone: with the `vips` entry taken away (only here; deleting a VIP clears its backends
    too) it is still forwarded. This holds only if config's address bits, computed in
    Python, select the VIP's address as the data plane computes it."""
    vip = config.parse_vip(vip_text)
    sport = 50300
    assert env.bal.maps["config"].get(ctypes.c_uint32(0)).vip_addr_bits & abi.addr_bit(vip.address.packed)
    be = env.pick(vip_text, client, sport)
    check(env, make(sport, "S"), "XDP_TX")
    check(env, make(sport, "A"), "XDP_TX")   # confirmed
    saved = env.bal.maps["vips"].get(vip.key())
    env.bal.maps["vips"].delete(vip.key())
    try:
        check_ipip(env, make(sport, "A"), be, client, sport)
        check(env, make(sport + 1, "S"), "XDP_PASS")   # no flow: the VIP lookup decides
    finally:
        env.bal.maps["vips"].set(vip.key(), saved)

def test_deleted_vip_flows_pass_even_when_index_and_backend_are_reused(env):
    """Traffic to a deleted VIP is not balanced, even by a live conntrack entry whose
    backend id and VIP index both went to another VIP meanwhile (as the control plane would
    write them after many additions): the entry's VIP must be the packet's."""
    old, new = config.parse_vip("10.100.0.5:80/tcp"), config.parse_vip("10.100.0.6:80/tcp")
    sport = 50200
    env.bal.add_vip(old, "ipip")
    b_old = env.bal.add_backend(old, ipaddress.ip_address("10.0.0.31"))
    index = env.bal.vip(old).index
    frame = tcp4("10.100.0.5", 80, sport, flags="A")
    check(env, tcp4("10.100.0.5", 80, sport, flags="S"), "XDP_TX")
    check(env, frame, "XDP_TX")   # confirmed: in conntrack
    env.bal.del_vip(old)
    env.bal.add_vip(new, "ipip")
    b_new = env.bal.add_backend(new, ipaddress.ip_address("10.0.0.31"))
    try:
        # the reuse: the new VIP's backend under the old id, its ref under the old index
        reused = env.bal.maps["backends"].get(ctypes.c_uint32(b_new.id))
        reused.vip = index
        env.bal.maps["backends"].set(ctypes.c_uint32(b_old.id), reused)
        ref = abi.VipRef(vip=new.key(), mode=abi.MODES["ipip"])
        env.bal.maps["vip_refs"].set(ctypes.c_uint32(index), ref)
        before = env.counters()["pass_non_vip"]
        check(env, frame, "XDP_PASS", frame)
        assert env.counters()["pass_non_vip"] == before + 1
        check(env, tcp4("10.100.0.6", 80, sport, flags="S"), "XDP_TX")
    finally:
        env.bal.del_vip(new)
        env.bal.maps["backends"].set(ctypes.c_uint32(b_old.id), abi.Backend())
        env.bal.sync_refs()

def test_source_hash_ignores_ports(env):
    outs = {Ether(check(env, tcp4("10.100.0.4", 80, sp, src="198.51.100.50"), "XDP_TX").output).dst
            for sp in range(47000, 47030)}
    assert len(outs) == 1


def test_python_explain_agrees_with_the_data_plane(env):
    vip = config.parse_vip("10.100.0.2:80/tcp")
    for sp in range(48000, 48050):
        res = check(env, tcp4("10.100.0.2", 80, sp, flags="S"), "XDP_TX")
        got = Ether(res.output)[IP].dst
        ex = env.bal.explain(ipaddress.ip_address(CLIENT4), sp, vip)
        assert ex["backend"].startswith(got + ":"), (sp, ex)
        assert ex["conntrack_backend"] == ex["backend"]
    ex = env.bal.explain(ipaddress.ip_address(CLIENT4), 48999, vip)
    assert ex["conntrack_backend"] is None and ex["maglev_backend"] == ex["backend"]


def test_no_backend_drops_with_counter(env):
    before = env.vip_stats("10.100.0.9:80/tcp")["no_backend"]
    g = env.counters()["drop_no_backend"]
    check(env, tcp4("10.100.0.9", 80, 49000), "XDP_DROP")
    check(env, tcp4("10.100.0.9", 80, 49000, flags="A"), "XDP_DROP")
    assert env.vip_stats("10.100.0.9:80/tcp")["no_backend"] == before + 2
    assert env.counters()["drop_no_backend"] == g + 2


def test_all_drained_drops(env):
    vip = config.parse_vip("10.100.0.1:53/udp")
    env.bal.set_drained(vip, ipaddress.ip_address("10.0.0.11"), None, True)
    try:
        check(env, udp4("10.100.0.1", 53, 49100), "XDP_DROP")
    finally:
        env.bal.set_drained(vip, ipaddress.ip_address("10.0.0.11"), None, False)
    check(env, udp4("10.100.0.1", 53, 49101), "XDP_TX")


# ---------------------------------------------------------------------------------------
# defined verdicts for everything that is not balanced

V4 = "10.100.0.1"


def icmp4_error(dst: str, quoted: IP, type_: int = 3, code: int = 4, src: str = "192.0.2.254",
                quote: int = 28) -> bytes:
    """An ICMP error to `dst` quoting the first 28 bytes of `quoted`, as routers send them."""
    return bytes(eth() / IP(src=src, dst=dst) / ICMP(type=type_, code=code, nexthopmtu=1400)
                 / Raw(bytes(quoted)[:quote]))


def cut_l4(dst: str, l4: bytes, keep: int, proto: int = 6) -> bytes:
    """An IP packet whose L4 header is cut after `keep` bytes (the IP length says so too)."""
    return bytes(eth() / IP(src=CLIENT4, dst=dst, proto=proto) / Raw(l4[:keep]))


TCP_HDR = bytes(TCP(sport=1, dport=80))
DEFINED = [
    # (description, frame, verdict, global counter that must move)
    ("arp", bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=V4)), "XDP_PASS", "pass_not_ip"),
    ("vlan tagged to vip", bytes(Ether(src=CLIENT_MAC, dst=LB_MAC) / Dot1Q(vlan=5)
                                 / IP(src=CLIENT4, dst=V4) / TCP(dport=80)), "XDP_PASS", "pass_not_ip"),
    ("ethernet header only", bytes(Ether(src=CLIENT_MAC, dst=LB_MAC, type=0x0800)), "XDP_PASS",
     "pass_malformed"),
    ("truncated ipv4 header", tcp4(V4, 80, 1)[:14 + 12], "XDP_PASS", "pass_malformed"),
    ("ipv4 ihl below 5", bytes(eth() / IP(src=CLIENT4, dst=V4, ihl=4) / TCP(dport=80)), "XDP_PASS",
     "pass_malformed"),
    ("ipv4 total length beyond frame", bytes(eth() / IP(src=CLIENT4, dst=V4, len=400) / TCP(dport=80)),
     "XDP_PASS", "pass_malformed"),
    ("ipv4 version 6 in v4 ethertype", bytes(eth() / IP(src=CLIENT4, dst=V4, version=6) / TCP(dport=80)),
     "XDP_PASS", "pass_malformed"),
    ("truncated ipv6 header", bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::1"))[:40], "XDP_PASS",
     "pass_malformed"),
    ("ipv6 payload length beyond frame", bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::1", plen=900)
                                              / TCP(dport=80)), "XDP_PASS", "pass_malformed"),
    ("non-vip tcp", tcp4("192.0.2.1", 80, 1234), "XDP_PASS", "pass_non_vip"),
    ("vip address, other port", tcp4(V4, 81, 1234), "XDP_PASS", "pass_non_vip"),
    ("vip address and port, other protocol", udp4(V4, 80, 1234), "XDP_PASS", "pass_non_vip"),
    ("non-vip ipv6 udp", udp6("2001:db8::1", 53, 1234), "XDP_PASS", "pass_non_vip"),
    ("first fragment to vip", bytes(eth() / IP(src=CLIENT4, dst=V4, flags="MF") / TCP(dport=80)),
     "XDP_DROP", "drop_fragment"),
    ("later fragment to vip", bytes(eth() / IP(src=CLIENT4, dst=V4, frag=100, proto=6) / Raw(b"x" * 24)),
     "XDP_DROP", "drop_fragment"),
    ("fragment to non-vip", bytes(eth() / IP(src=CLIENT4, dst="192.0.2.1", flags="MF") / TCP(dport=80)),
     "XDP_PASS", "pass_non_vip"),
    ("ipv6 fragment header to vip", bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::1") / IPv6ExtHdrFragment()
                                          / TCP(dport=80)), "XDP_DROP", "drop_fragment"),
    ("ipv6 hop-by-hop to vip", bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::1") / IPv6ExtHdrHopByHop()
                                     / TCP(dport=80)), "XDP_DROP", "drop_unsupported"),
    ("ipv6 hop-by-hop to non-vip", bytes(eth() / IPv6(src=CLIENT6, dst="2001:db8::1") / IPv6ExtHdrHopByHop()
                                         / TCP(dport=80)), "XDP_PASS", "pass_non_vip"),
    ("gre to vip address", bytes(eth() / IP(src=CLIENT4, dst=V4, proto=47) / Raw(b"\0" * 8)), "XDP_DROP",
     "drop_unsupported"),
    ("gre to non-vip", bytes(eth() / IP(src=CLIENT4, dst="192.0.2.1", proto=47) / Raw(b"\0" * 8)),
     "XDP_PASS", "pass_non_vip"),
    ("tcp header cut after ports, to vip", cut_l4(V4, TCP_HDR, 8), "XDP_DROP", "drop_malformed"),
    ("tcp header cut within ports, to vip", cut_l4(V4, TCP_HDR, 3), "XDP_DROP", "drop_malformed"),
    ("udp with two bytes, to vip address", bytes(eth() / IP(src=CLIENT4, dst=V4, proto=17) / Raw(b"\0\1")),
     "XDP_DROP", "drop_malformed"),
    ("tcp data offset below 5, to vip", bytes(eth() / IP(src=CLIENT4, dst=V4) / TCP(dport=80, dataofs=4)),
     "XDP_DROP", "drop_malformed"),
    ("tcp header cut, non-vip", cut_l4("192.0.2.1", TCP_HDR, 8), "XDP_PASS", "pass_non_vip"),
    ("icmp echo to vip address", bytes(eth() / IP(src=CLIENT4, dst=V4) / ICMP()), "XDP_PASS", "pass_icmp"),
    ("icmpv6 echo to vip address", bytes(eth() / IPv6(src=CLIENT6, dst="fd00:100::1") / ICMPv6EchoRequest()),
     "XDP_PASS", "pass_icmp"),
    ("icmp error quoting a non-vip flow", icmp4_error(
        "192.0.2.1", IP(src="192.0.2.1", dst=CLIENT4) / TCP(sport=80, dport=1234)), "XDP_PASS", "pass_icmp"),
    ("icmp error to vip quoting another source", icmp4_error(
        V4, IP(src="192.0.2.1", dst=CLIENT4) / TCP(sport=80, dport=1234)), "XDP_PASS", "pass_icmp"),
    ("icmp error quoting a vip's other port", icmp4_error(
        V4, IP(src=V4, dst=CLIENT4) / TCP(sport=81, dport=1234)), "XDP_PASS", "pass_icmp"),
    ("icmp error quote cut short", icmp4_error(
        V4, IP(src=V4, dst=CLIENT4) / TCP(sport=80, dport=1234), quote=22), "XDP_PASS", "pass_icmp"),
    ("icmp error for nat vip, no flow: to the maglev pick", icmp4_error(
        "10.100.0.2", IP(src="10.100.0.2", dst=CLIENT4) / TCP(sport=80, dport=1234)), "XDP_TX",
     "icmp_forwarded"),
    ("icmp error from a nat backend about no flow", bytes(
        Ether(src=MACS["10.0.0.21"], dst=LB_MAC) / IP(src="10.0.0.21", dst=CLIENT4) / ICMP(type=3, code=3)
        / IP(src=CLIENT4, dst="10.0.0.21") / UDP(sport=1234, dport=5353)), "XDP_PASS", "pass_icmp"),
]


@pytest.mark.parametrize("desc,frame,verdict,counter", DEFINED, ids=[d[0] for d in DEFINED])
def test_defined_verdicts(env, desc, frame, verdict, counter):
    before = env.counters()
    res = check(env, frame, verdict)
    if verdict == "XDP_PASS":
        assert res.output == frame, "passed frames are untouched"
    after = env.counters()
    moved = {k for k in after if after[k] != before[k]}
    assert moved == {counter}, desc


def test_ip_options_are_balanced(env):
    opts = [IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]
    frame = bytes(eth() / IP(src=CLIENT4, dst="10.100.0.1", options=opts) / TCP(sport=50100, dport=80))
    assert Ether(frame)[IP].ihl > 5
    be = env.pick("10.100.0.1:80/tcp", CLIENT4, 50100)
    check(env, frame, "XDP_TX", dsr_expected(frame, be.mac))
    frame = bytes(eth() / IP(src=CLIENT4, dst="10.100.0.2", options=opts) / TCP(sport=50101, dport=80))
    be = env.pick("10.100.0.2:80/tcp", CLIENT4, 50101)
    check(env, frame, "XDP_TX", nat_expected(frame, be.mac, be.address, be.port))


def test_icmp_errors_follow_the_flow_to_its_backend(env):
    # dsr v4: the flow first, then a "fragmentation needed" quoting the VIP's reply to it.
    res = check(env, tcp4("10.100.0.1", 80, 51000), "XDP_TX")
    mac = Ether(res.output).dst
    before = env.counters()["icmp_forwarded"]
    err = icmp4_error("10.100.0.1", IP(src="10.100.0.1", dst=CLIENT4) / TCP(sport=80, dport=51000))
    check(env, err, "XDP_TX", dsr_expected(err, mac))
    assert env.counters()["icmp_forwarded"] == before + 1
    # ipip v4: encapsulated to the flow's backend
    be = env.pick("10.100.0.3:80/tcp", CLIENT4, 51001)
    err = icmp4_error("10.100.0.3", IP(src="10.100.0.3", dst=CLIENT4) / TCP(sport=80, dport=51001),
                      type_=11, code=0)
    check_ipip(env, err, be, CLIENT4, 51001)
    # dsr v6: packet too big
    res = check(env, tcp6("fd00:100::1", 80, 51002), "XDP_TX")
    mac = Ether(res.output).dst
    err = bytes(eth() / IPv6(src="2001:db8::fe", dst="fd00:100::1") / ICMPv6PacketTooBig(mtu=1280)
                / IPv6(src="fd00:100::1", dst=CLIENT6) / TCP(sport=80, dport=51002))
    check(env, err, "XDP_TX", dsr_expected(err, mac))
    err = bytes(eth() / IPv6(src="2001:db8::fe", dst="fd00:100::1") / ICMPv6DestUnreach()
                / IPv6(src="fd00:100::1", dst=CLIENT6) / TCP(sport=80, dport=51002))
    check(env, err, "XDP_TX", dsr_expected(err, mac))


def test_pass_counts_bytes(env):
    frame = tcp4("192.0.2.77", 80, 1)
    before = env.bal.counters()["pass_non_vip"]
    check(env, frame, "XDP_PASS", frame)
    after = env.bal.counters()["pass_non_vip"]
    assert (after["packets"] - before["packets"], after["bytes"] - before["bytes"]) == (1, len(frame))


# ---------------------------------------------------------------------------------------
# flow lifetime: RST ends a flow, FIN shortens it, idle flows expire

ROUTER4 = "192.0.2.254"
ROUTER6 = "2001:db8::fe"
TILT = ("10.100.0.1:80/tcp", "10.0.0.11", 50)  # this weight moves flows from .12 to .11


def flow_key(client: str, sport: int, vip_text: str) -> abi.FlowKey:
    """The conntrack key of client:sport -> VIP."""
    vip = config.parse_vip(vip_text)
    k = abi.FlowKey()
    k.src[:] = ipaddress.ip_address(client).packed.ljust(16, b"\0")
    k.dst[:] = vip.address.packed.ljust(16, b"\0")
    k.sport, k.dport = socket.htons(sport), socket.htons(vip.port)
    k.proto, k.family = abi.PROTOS[vip.proto], vip.address.version
    return k


def reply_key(be: store.BackendState, client: str, sport: int, proto: str) -> abi.FlowKey:
    """The nat_reverse key of the replies backend -> client:sport."""
    k = abi.FlowKey()
    k.src[:] = be.ip.packed.ljust(16, b"\0")
    k.dst[:] = ipaddress.ip_address(client).packed.ljust(16, b"\0")
    k.sport, k.dport = socket.htons(be.port), socket.htons(sport)
    k.proto, k.family = abi.PROTOS[proto], be.ip.version
    return k


def flow_entry(env: Env, key: abi.FlowKey) -> tuple[str, abi.Flow] | None:
    """The flow's entry and the table holding it: conntrack (established) or half_open."""
    for table in ("conntrack", "half_open"):
        f = env.maps[table].get(key)
        if f is not None:
            return table, f
    return None


def idle(env: Env, key: abi.FlowKey, seconds: float) -> None:
    """Make the flow look idle for `seconds`: move its last refresh back."""
    found = flow_entry(env, key)
    assert found is not None
    table, f = found
    f.atime -= int(seconds * 1e9)
    env.maps[table].set(key, f)


def nat_backend(env: Env, vip_text: str, address: str) -> store.BackendState:
    return next(b for b in env.bal.vip(config.parse_vip(vip_text)).backends.values() if b.address == address)


@contextlib.contextmanager
def tilted(env: Env):
    vip, addr, weight = TILT
    env.bal.set_weight(config.parse_vip(vip), ipaddress.ip_address(addr), None, weight)
    try:
        yield
    finally:
        env.bal.set_weight(config.parse_vip(vip), ipaddress.ip_address(addr), None, 1)


def moved_flows(env: Env, sports: range) -> list[int]:
    """Ports of flows opened on .12 that the tilted ring would give .11 (call while tilted)."""
    return [sp for sp in sports if env.pick(TILT[0], CLIENT4, sp).address == "10.0.0.11"]


def open_on_12(env: Env, sports: range) -> list[int]:
    """Open flows (SYN, then the handshake's ACK) on the untilted ring; the ports that landed
    on .12."""
    out = []
    for sp in sports:
        if Ether(check(env, tcp4("10.100.0.1", 80, sp, flags="S"), "XDP_TX").output).dst == MACS["10.0.0.12"]:
            out.append(sp)
        check(env, tcp4("10.100.0.1", 80, sp, flags="A"), "XDP_TX")
    return out


def to(env: Env, frame: bytes) -> str:
    """The backend address a frame is sent to (by its MAC)."""
    mac = Ether(check(env, frame, "XDP_TX").output).dst
    return next(a for a, m in MACS.items() if m == mac)


def test_rst_marks_the_flow_reset_and_only_silence_ends_it(env):
    """A RST (the client's, or forged by whoever knows the tuple) cannot end a live flow: it
    marks it reset; the flow's next packet clears the mark and still reaches its backend
    although the ring now picks another. A reset flow that stays silent ages out."""
    on_12 = open_on_12(env, range(52000, 52040))
    with tilted(env):
        sp = moved_flows(env, range(52000, 52040))
        sp = [p for p in sp if p in on_12][0]
        key = flow_key(CLIENT4, sp, TILT[0])
        be12 = nat_backend(env, TILT[0], "10.0.0.12")
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.12", "pinned before the RST"
        c0 = env.counters()
        # The RST reaches the flow's backend and marks the flow, which stays pinned.
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="R")) == "10.0.0.12"
        assert env.counters()["flow_reset"] == c0["flow_reset"] + 1
        f = env.maps["conntrack"].get(key)
        assert (f.flags, f.backend) == (abi.LB_FLOW_F_RESET, be12.id)
        ex = env.bal.explain(ipaddress.ip_address(CLIENT4), sp, config.parse_vip(TILT[0]))
        assert (ex["conntrack_state"], ex["backend"]) == ("reset", "10.0.0.12:80")
        # The flow goes on (the RST was forged): its backend, the mark cleared.
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="PA")) == "10.0.0.12"
        assert env.maps["conntrack"].get(key).flags == 0
        assert env.counters()["flow_revived"] == c0["flow_revived"] + 1
        # Even after a pause shorter than the closing timeout.
        closing_s = abi.TUNABLES["LB_CLOSING_TIMEOUT"]
        check(env, tcp4("10.100.0.1", 80, sp, flags="R"), "XDP_TX")
        idle(env, key, closing_s - 2)
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.12"
        assert env.maps["conntrack"].get(key).flags == 0
        # A reset flow silent past the closing timeout is gone: the next packet is a miss and
        # takes the current Maglev pick, as does a new connection on the tuple.
        check(env, tcp4("10.100.0.1", 80, sp, flags="R"), "XDP_TX")
        idle(env, key, closing_s + 2)
        v0, exp = env.vip_stats(TILT[0]), env.counters()["flow_expired"]
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.11"
        v1 = env.vip_stats(TILT[0])
        assert v1["lru_misses"] == v0["lru_misses"] + 1 and v1["new_flows"] == v0["new_flows"] + 1
        assert env.counters()["flow_expired"] == exp + 1
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="S")) == "10.0.0.11"
        # A RST of no flow is forwarded (Maglev) but begins none.
        key2 = flow_key(CLIENT4, 52999, TILT[0])
        check(env, tcp4("10.100.0.1", 80, 52999, flags="R"), "XDP_TX")
        assert flow_entry(env, key2) is None
        # A RST does not confirm a handshake: the flow stays half-open, marked.
        key3 = flow_key(CLIENT4, 52998, TILT[0])
        check(env, tcp4("10.100.0.1", 80, 52998, flags="S"), "XDP_TX")
        check(env, tcp4("10.100.0.1", 80, 52998, flags="R"), "XDP_TX")
        table, f = flow_entry(env, key3)
        assert (table, f.flags) == ("half_open", abi.LB_FLOW_F_RESET)


def test_fin_marks_the_flow_closing_with_the_short_timeout(env):
    on_12 = open_on_12(env, range(52100, 52140))
    with tilted(env):
        ports = [p for p in moved_flows(env, range(52100, 52140)) if p in on_12]
        closing, open_ = ports[0], ports[1]
        for sp in (closing, open_):
            idle(env, flow_key(CLIENT4, sp, TILT[0]), 3)
        assert to(env, tcp4("10.100.0.1", 80, closing, flags="FA")) == "10.0.0.12"
        f = env.maps["conntrack"].get(flow_key(CLIENT4, closing, TILT[0]))
        assert f.flags == abi.LB_FLOW_F_CLOSING and f.backend == nat_backend(env, TILT[0], "10.0.0.12").id
        ex = env.bal.explain(ipaddress.ip_address(CLIENT4), closing, config.parse_vip(TILT[0]))
        assert (ex["conntrack_state"], ex["backend"]) == ("closing", "10.0.0.12:80")
        assert env.maps["conntrack"].get(flow_key(CLIENT4, open_, TILT[0])).flags == 0
        closing_s = abi.TUNABLES["LB_CLOSING_TIMEOUT"]
        # Within the closing timeout: still the flow's backend (last ACKs, retransmitted FINs).
        idle(env, flow_key(CLIENT4, closing, TILT[0]), closing_s - 2)
        assert to(env, tcp4("10.100.0.1", 80, closing, flags="A")) == "10.0.0.12"
        # Idle past it: expired, picked again; an established flow as idle is not.
        exp = env.counters()["flow_expired"]
        for sp in (closing, open_):
            idle(env, flow_key(CLIENT4, sp, TILT[0]), closing_s + 2)
        assert to(env, tcp4("10.100.0.1", 80, closing, flags="A")) == "10.0.0.11"
        assert to(env, tcp4("10.100.0.1", 80, open_, flags="A")) == "10.0.0.12"
        assert env.counters()["flow_expired"] == exp + 1


def test_idle_tcp_flow_expires_into_a_miss(env):
    on_12 = open_on_12(env, range(52200, 52240))
    with tilted(env):
        sp = [p for p in moved_flows(env, range(52200, 52240)) if p in on_12][0]
        key = flow_key(CLIENT4, sp, TILT[0])
        tcp_s = abi.TUNABLES["LB_TCP_TIMEOUT"]

        def explain():
            return env.bal.explain(ipaddress.ip_address(CLIENT4), sp, config.parse_vip(TILT[0]))

        # 30 s short of the timeout: explain works out the Maglev pick in Python, which took
        # more than 2 s in the kernel matrix's emulated CPU, and the flow kept ageing meanwhile.
        idle(env, key, tcp_s - 30)
        ex = explain()
        assert (ex["conntrack_state"], ex["backend"], ex["maglev_backend"]) == (
            "established", "10.0.0.12:80", "10.0.0.11:80")
        assert tcp_s - 31 < ex["idle_s"] < tcp_s
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.12"
        v0, exp = env.vip_stats(TILT[0]), env.counters()["flow_expired"]
        idle(env, key, tcp_s + 2)
        ex = explain()
        assert (ex["conntrack_state"], ex["backend"], ex["conntrack_backend"]) == (
            "expired", "10.0.0.11:80", None)
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.11"
        v1 = env.vip_stats(TILT[0])
        assert (v1["lru_misses"] - v0["lru_misses"], v1["new_flows"] - v0["new_flows"]) == (1, 1)
        assert env.counters()["flow_expired"] == exp + 1
        # The new entry is fresh and pinned to the new pick.
        assert to(env, tcp4("10.100.0.1", 80, sp, flags="A")) == "10.0.0.11"


def test_idle_udp_flow_expires_after_the_configured_timeout(env):
    vip = "10.100.0.1:53/udp"
    udp_s = prog_defines()["LB_UDP_TIMEOUT"]
    assert udp_s != abi.TUNABLES["LB_UDP_TIMEOUT"], "the -D flag, not the default, must decide"
    frame = udp4("10.100.0.1", 53, 52300)
    check(env, frame, "XDP_TX")
    key = flow_key(CLIENT4, 52300, vip)
    v0 = env.vip_stats(vip)
    idle(env, key, udp_s - 2)
    check(env, frame, "XDP_TX")
    v1 = env.vip_stats(vip)
    assert (v1["lru_hits"] - v0["lru_hits"], v1["lru_misses"] - v0["lru_misses"]) == (1, 0)
    exp = env.counters()["flow_expired"]
    idle(env, key, udp_s + 2)
    check(env, frame, "XDP_TX")
    v2 = env.vip_stats(vip)
    assert (v2["lru_hits"] - v1["lru_hits"], v2["lru_misses"] - v1["lru_misses"]) == (0, 1)
    assert v2["new_flows"] == v1["new_flows"] + 1
    assert env.counters()["flow_expired"] == exp + 1


def nat_reply(be: store.BackendState, sport: int, flags: str = "A", payload: bytes = b"hi") -> bytes:
    return bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src=be.address, dst=CLIENT4)
                 / TCP(sport=be.port, dport=sport, flags=flags, seq=7, ack=1001) / Raw(payload))


def as_from_vip(frame: bytes, vip_addr: str, vip_port: int) -> bytes:
    """`frame` (backend -> client) as reverse NAT makes it: from the VIP."""
    p = Ether(frame)
    ip = p[IP] if IP in p else p[IPv6]
    ip.src = vip_addr
    l4 = p[TCP] if TCP in p else p[UDP]
    l4.sport = vip_port
    if IP in p:
        del p[IP].chksum
    del l4.chksum
    return bytes(p)


def test_nat_rst_from_either_side_marks_the_flow_and_replies_stay_translated(env):
    """A RST from the backend's side (a forged one too) or from the client's marks the flow
    reset: the flow's later packets still go to the backend and its replies are still
    translated to the VIP, clearing the mark; silent past the closing timeout, it ends."""
    vip = "10.100.0.2:80/tcp"
    closing_s = abi.TUNABLES["LB_CLOSING_TIMEOUT"]
    # The backend resets: translated (the client must see it), and the flow stays.
    sp = 52400
    be = nat_backend(env, vip, Ether(check(env, tcp4("10.100.0.2", 80, sp), "XDP_TX").output)[IP].dst)
    fkey, rkey = flow_key(CLIENT4, sp, vip), reply_key(be, CLIENT4, sp, "tcp")
    check(env, nat_reply(be, sp, "SA"), "XDP_PASS", as_from_vip(nat_reply(be, sp, "SA"), "10.100.0.2", 80))
    check(env, tcp4("10.100.0.2", 80, sp, flags="A"), "XDP_TX")   # the handshake completes
    assert env.maps["conntrack"].get(fkey) and env.maps["nat_reverse"].get(rkey)
    check(env, nat_reply(be, sp, "FA"), "XDP_PASS", as_from_vip(nat_reply(be, sp, "FA"), "10.100.0.2", 80))
    assert env.maps["conntrack"].get(fkey).flags == abi.LB_FLOW_F_CLOSING, "a backend's FIN closes too"
    c0 = env.counters()
    check(env, nat_reply(be, sp, "R"), "XDP_PASS", as_from_vip(nat_reply(be, sp, "R"), "10.100.0.2", 80))
    assert env.counters()["flow_reset"] == c0["flow_reset"] + 1
    assert env.maps["conntrack"].get(fkey).flags == abi.LB_FLOW_F_CLOSING | abi.LB_FLOW_F_RESET
    assert env.maps["nat_reverse"].get(rkey) is not None
    # The RST was forged: the backend's next reply is still translated, and clears the mark.
    late = nat_reply(be, sp)
    check(env, late, "XDP_PASS", as_from_vip(late, "10.100.0.2", 80))
    assert env.maps["conntrack"].get(fkey).flags == abi.LB_FLOW_F_CLOSING
    assert env.counters()["flow_revived"] == c0["flow_revived"] + 1
    # A real RST, then silence: the flow ages out and replies pass untranslated.
    check(env, nat_reply(be, sp, "R"), "XDP_PASS", as_from_vip(nat_reply(be, sp, "R"), "10.100.0.2", 80))
    idle(env, fkey, closing_s + 2)
    check(env, late, "XDP_PASS", late)
    assert env.maps["nat_reverse"].get(rkey) is None
    # The client resets: forwarded to the backend; the flow's entries stay, replies are
    # translated and the client's next packet still goes to the backend.
    sp = 52401
    be = nat_backend(env, vip, Ether(check(env, tcp4("10.100.0.2", 80, sp), "XDP_TX").output)[IP].dst)
    ack = tcp4("10.100.0.2", 80, sp, flags="A")
    check(env, ack, "XDP_TX", nat_expected(ack, be.mac, be.address, be.port))
    fkey, rkey = flow_key(CLIENT4, sp, vip), reply_key(be, CLIENT4, sp, "tcp")
    rst = tcp4("10.100.0.2", 80, sp, flags="R")
    check(env, rst, "XDP_TX", nat_expected(rst, be.mac, be.address, be.port))
    assert env.maps["conntrack"].get(fkey).flags == abi.LB_FLOW_F_RESET
    assert env.maps["nat_reverse"].get(rkey) is not None
    check(env, nat_reply(be, sp), "XDP_PASS", as_from_vip(nat_reply(be, sp), "10.100.0.2", 80))
    assert env.maps["conntrack"].get(fkey).flags == 0
    check(env, ack, "XDP_TX", nat_expected(ack, be.mac, be.address, be.port))


def test_nat_replies_of_an_expired_flow_are_not_translated(env):
    vip = "10.100.0.2:80/tcp"
    sp = 52410
    be = nat_backend(env, vip, Ether(check(env, tcp4("10.100.0.2", 80, sp), "XDP_TX").output)[IP].dst)
    check(env, tcp4("10.100.0.2", 80, sp, flags="A"), "XDP_TX")
    fkey, rkey = flow_key(CLIENT4, sp, vip), reply_key(be, CLIENT4, sp, "tcp")
    assert env.maps["nat_reverse"].get(rkey) is not None
    # Replies keep the flow alive: one after a long client silence refreshes it.
    idle(env, fkey, abi.TUNABLES["LB_TCP_TIMEOUT"] - 2)
    check(env, nat_reply(be, sp), "XDP_PASS", as_from_vip(nat_reply(be, sp), "10.100.0.2", 80))
    idle(env, fkey, 3)
    check(env, nat_reply(be, sp), "XDP_PASS", as_from_vip(nat_reply(be, sp), "10.100.0.2", 80))
    assert env.maps["conntrack"].get(fkey).atime > 0
    c0 = env.counters()
    idle(env, fkey, abi.TUNABLES["LB_TCP_TIMEOUT"] + 2)
    check(env, nat_reply(be, sp), "XDP_PASS", nat_reply(be, sp))
    c1 = env.counters()
    assert (c1["flow_expired"] - c0["flow_expired"], c1["nat_reverse"] - c0["nat_reverse"]) == (1, 0)
    assert env.maps["nat_reverse"].get(rkey) is None


# ---------------------------------------------------------------------------------------
# ICMP errors of nat flows: translated both ways, every checksum right

def assert_checksums_valid(frame: bytes) -> None:
    """scapy, recomputing the outer IP and ICMP checksums, gets the bytes of `frame`."""
    p = Ether(frame)
    if IP in p:
        del p[IP].chksum
        del p[ICMP].chksum
    else:
        icmp = p[IPv6].payload
        del icmp.cksum
    assert bytes(p).hex() == frame.hex()


def open_nat(env: Env, frame: bytes, vip_text: str) -> tuple[store.BackendState, bytes]:
    """Send the client's first packet of a nat flow; its backend and the packet as the
    backend gets it (IP and up)."""
    out = Ether(check(env, frame, "XDP_TX").output)
    ip = out[IP] if IP in out else out[IPv6]
    return nat_backend(env, vip_text, ip.dst), bytes(out.payload)


@pytest.mark.parametrize("quote", [28, None], ids=["8-bytes-of-tcp", "whole-packet"])
def test_icmp_error_to_a_nat_vip_reaches_the_backend_translated_v4(env, quote):
    """A router between balancer and client cannot pass the VIP's reply (fragmentation
    needed): the error goes to the backend, about the packet the backend sent."""
    sp = 52500 if quote else 52501
    be, _ = open_nat(env, tcp4("10.100.0.2", 80, sp), "10.100.0.2:80/tcp")
    sent = (IP(src=be.address, dst=CLIENT4, id=99)
            / TCP(sport=be.port, dport=sp, flags="PA", seq=7, ack=1001) / Raw(b"r" * 64))
    res = check(env, bytes(Ether(src=be.mac, dst=LB_MAC) / sent), "XDP_PASS")
    seen = bytes(Ether(res.output).payload)  # the reply as the client side has it: VIP -> client
    assert IP(seen).src == "10.100.0.2" and IP(seen)[TCP].sport == 80
    q = quote or len(seen)
    err = bytes(eth() / IP(src=ROUTER4, dst="10.100.0.2", ttl=60) / ICMP(type=3, code=4, nexthopmtu=1400)
                / Raw(seen[:q]))
    want = bytes(Ether(src=LB_MAC, dst=be.mac) / IP(src=ROUTER4, dst=be.address, ttl=60)
                 / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(bytes(sent)[:q]))
    before = env.counters()["icmp_forwarded"]
    res = check(env, err, "XDP_TX", want)
    assert env.counters()["icmp_forwarded"] == before + 1
    assert_checksums_valid(res.output)


def test_icmp_error_to_a_nat_vip_reaches_the_backend_translated_v4_udp(env):
    sp = 52502
    be, _ = open_nat(env, udp4("10.100.0.2", 53, sp), "10.100.0.2:53/udp")
    sent = IP(src=be.address, dst=CLIENT4) / UDP(sport=be.port, dport=sp) / Raw(b"answer" * 20)
    seen = bytes(Ether(check(env, bytes(Ether(src=be.mac, dst=LB_MAC) / sent), "XDP_PASS").output).payload)
    err = bytes(eth() / IP(src=ROUTER4, dst="10.100.0.2") / ICMP(type=11, code=0) / Raw(seen))
    want = bytes(Ether(src=LB_MAC, dst=be.mac) / IP(src=ROUTER4, dst=be.address) / ICMP(type=11, code=0)
                 / Raw(bytes(sent)))
    res = check(env, err, "XDP_TX", want)
    assert_checksums_valid(res.output)


def test_packet_too_big_to_a_nat_vip_reaches_the_backend_translated_v6(env):
    sp = 52503
    vip = "[fd00:100::2]:80/tcp"
    be, _ = open_nat(env, tcp6("fd00:100::2", 80, sp), vip)
    sent = (IPv6(src=be.address, dst=CLIENT6)
            / TCP(sport=be.port, dport=sp, flags="PA", seq=7, ack=1001) / Raw(b"r" * 1400))
    res = check(env, bytes(Ether(src=be.mac, dst=LB_MAC) / sent), "XDP_PASS")
    seen = bytes(Ether(res.output).payload)
    assert IPv6(seen).src == "fd00:100::2"
    q = 1280 - 48  # as much as fits a minimum-MTU error
    err = bytes(eth() / IPv6(src=ROUTER6, dst="fd00:100::2") / ICMPv6PacketTooBig(mtu=1280) / Raw(seen[:q]))
    want = bytes(Ether(src=LB_MAC, dst=be.mac) / IPv6(src=ROUTER6, dst=be.address)
                 / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(sent)[:q]))
    before = env.counters()["icmp_forwarded"]
    res = check(env, err, "XDP_TX", want)
    assert env.counters()["icmp_forwarded"] == before + 1
    assert_checksums_valid(res.output)


@pytest.mark.parametrize("sp,query,vip,ip,client,unreachable", [
    (52510, udp4, "10.100.0.2", IP, CLIENT4, lambda: ICMP(type=3, code=3)),
    (52512, udp6, "fd00:100::2", IPv6, CLIENT6, lambda: ICMPv6DestUnreach(code=4)),
], ids=["v4", "v6"])
def test_port_unreachable_from_a_nat_backend_is_translated_back(env, sp, query, vip, ip, client, unreachable):
    """The backend has no socket for a UDP flow: the client learns it about the VIP."""
    sent = query(vip, 53, sp)
    be, got = open_nat(env, sent, config.fmt_addr_port(ipaddress.ip_address(vip), 53) + "/udp")
    err = bytes(Ether(src=be.mac, dst=LB_MAC) / ip(src=be.address, dst=client) / unreachable() / Raw(got))
    want = bytes(Ether(src=be.mac, dst=LB_MAC) / ip(src=vip, dst=client) / unreachable()
                 / Raw(bytes(Ether(sent).payload)))
    before = env.counters()["icmp_reverse"]
    res = check(env, err, "XDP_PASS", want)
    assert env.counters()["icmp_reverse"] == before + 1
    assert_checksums_valid(res.output)


def test_router_error_behind_the_balancer_keeps_its_source_v4(env):
    """Fragmentation needed from a router between balancer and backend, 8 bytes of TCP
    quoted: the quote is translated, the router stays the sender."""
    sp = 52511
    frame = tcp4("10.100.0.2", 80, sp, flags="S")
    be, got = open_nat(env, frame, "10.100.0.2:80/tcp")
    err = bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src="10.0.0.1", dst=CLIENT4)
                / ICMP(type=3, code=4, nexthopmtu=1300) / Raw(got[:28]))
    want = bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src="10.0.0.1", dst=CLIENT4)
                 / ICMP(type=3, code=4, nexthopmtu=1300) / Raw(bytes(Ether(frame).payload)[:28]))
    res = check(env, err, "XDP_PASS", want)
    assert_checksums_valid(res.output)


def test_icmp_error_about_an_ended_nat_flow_passes_untouched(env):
    sp = 52513
    query = udp4("10.100.0.2", 53, sp)
    be, got = open_nat(env, query, "10.100.0.2:53/udp")
    idle(env, flow_key(CLIENT4, sp, "10.100.0.2:53/udp"), prog_defines()["LB_UDP_TIMEOUT"] + 2)
    err = bytes(Ether(src=be.mac, dst=LB_MAC) / IP(src=be.address, dst=CLIENT4) / ICMP(type=3, code=3)
                / Raw(got))
    before = env.counters()
    check(env, err, "XDP_PASS", err)
    after = env.counters()
    assert after["pass_icmp"] == before["pass_icmp"] + 1 and after["icmp_reverse"] == before["icmp_reverse"]


# ---------------------------------------------------------------------------------------
# fuzz: no frame yields an out-of-contract verdict

BACKEND_MACS = {bytes.fromhex(m.replace(":", "")) for m in MACS.values()}
VIP_ADDRS4 = ["10.100.0.1", "10.100.0.2", "10.100.0.3", "10.100.0.4", "10.100.0.9", "192.0.2.1"]
VIP_ADDRS6 = ["fd00:100::1", "fd00:100::2", "fd00:100::3", "2001:db8::1"]


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["raw", "v4", "v6", "reply"]))
    if kind == "raw":
        return draw(st.binary(min_size=14, max_size=200))
    ports = st.sampled_from([53, 80, 81, 8080, 5353, 0, 65535])
    l4 = draw(st.sampled_from([TCP, UDP, ICMP, None]))
    if kind in ("v4", "reply"):
        src = draw(st.sampled_from([CLIENT4, "10.0.0.21", "10.0.0.22"]))
        ip = IP(src=src, dst=draw(st.sampled_from([*VIP_ADDRS4, CLIENT4])),
                flags=draw(st.sampled_from([0, 1, 2])), frag=draw(st.sampled_from([0, 0, 0, 3])),
                ihl=draw(st.sampled_from([None, None, 6, 15])), ttl=draw(st.integers(0, 255)),
                proto=draw(st.sampled_from([6, 17, 1, 47])))
        if ip.ihl:
            ip.options = [IPOption_NOP()] * ((ip.ihl - 5) * 4)
    else:
        ip = IPv6(src=CLIENT6, dst=draw(st.sampled_from(VIP_ADDRS6)),
                  nh=draw(st.sampled_from([6, 17, 58, 44, 0])))
    pkt = eth() / ip
    if l4 is TCP:
        flags = draw(st.sampled_from(["S", "A", "SA", "R"]))
        pkt = pkt / TCP(sport=draw(ports), dport=draw(ports), flags=flags)
    elif l4 is UDP:
        pkt = pkt / UDP(sport=draw(ports), dport=draw(ports))
    elif l4 is ICMP:
        pkt = pkt / ICMP(type=draw(st.sampled_from([0, 3, 8, 11]))) / IP(
            src=draw(st.sampled_from(VIP_ADDRS4)), dst=CLIENT4) / TCP(sport=draw(ports), dport=draw(ports))
    pkt = pkt / Raw(draw(st.binary(max_size=64)))
    data = bytes(pkt)
    cut = draw(st.integers(min_value=14, max_value=len(data)))
    data = data[:cut]
    if draw(st.booleans()):
        i = draw(st.integers(min_value=14, max_value=len(data) - 1)) if len(data) > 14 else 14
        if i < len(data):
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    return data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(frame=frames())
def test_fuzz_verdict_contract(env, frame):
    def translated():
        c = env.counters()
        return c["nat_reverse"] + c["icmp_reverse"]

    before = translated()
    res = env.run(frame)
    assert res.verdict in ("XDP_PASS", "XDP_DROP", "XDP_TX"), res.verdict
    if res.verdict == "XDP_PASS":
        if translated() == before:
            assert res.output == frame
        else:
            assert len(res.output) == len(frame) and res.output[:14] == frame[:14]
    elif res.verdict == "XDP_TX":
        assert res.output[:6] in BACKEND_MACS
        assert res.output[6:12] == frame[:6]
        assert len(res.output) - len(frame) in (0, 20, 40)
