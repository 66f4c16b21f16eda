"""bpf/decap.c through BPF_PROG_TEST_RUN: IPv4-in-IPv4 and IPv6-in-IPv6 packets to a local
address, from a balancer network and to a VIP, come out as the inner packet (exact bytes);
tunnels from anyone else or to anything but a VIP are dropped; everything else gets its
defined verdict and counter, the header mirror matches bcc, and what the balancer's ipip mode sends decaps
back to the client's packet."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from fastpath.apps.decap import decap
from fastpath.apps.lb import abi, config, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bpf import loader, testrun
from fastpath.bpf.maps import TypedMap, layout

pytestmark = pytest.mark.bpf

LB_MAC = "02:00:00:00:0b:01"
HOST_MAC = "02:00:00:00:0d:01"
LOCAL4, LOCAL6 = "10.0.0.31", "fd00::31"
OTHER4, OTHER6 = "10.0.0.99", "fd00::99"
OUTER4, OUTER6 = "172.16.1.2", "100::1:2"      # what l4lb's ipip mode uses as sources
BALANCERS = ("172.16.0.0/16", "100::/96")       # l4lb's ipip source prefixes (its defaults)
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:c::7"
VIP4, VIP6 = "10.100.0.3", "fd00:100::3"


@pytest.fixture(scope="module")
def prog():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    p = loader.load(decap.SPEC, decap.TUNABLES)
    with TypedMap(os.dup(p.map_fd("addrs")), decap.DecapAddr, ctypes.c_uint32) as m:
        for a in (LOCAL4, LOCAL6):
            m.set(decap.addr_key(ipaddress.ip_address(a)), ctypes.c_uint32(1))
    with TypedMap(os.dup(p.map_fd("vips")), decap.DecapAddr, ctypes.c_uint32) as m:
        for a in (VIP4, VIP6):
            m.set(decap.addr_key(ipaddress.ip_address(a)), ctypes.c_uint32(1))
    for text in BALANCERS:
        net = decap.parse_source(text)
        name = f"sources_v{net.version}"
        with TypedMap(os.dup(p.map_fd(name)), decap.MAP_TYPES[name][0], ctypes.c_uint32) as m:
            m.set(decap.source_key(net), ctypes.c_uint32(1))
    yield p
    p.close()


def counters(prog) -> dict[str, tuple[int, int]]:
    with TypedMap(os.dup(prog.map_fd("stats")), ctypes.c_uint32, decap.DecapCounter) as m:
        out = {}
        for i, name in enumerate(decap.STAT_NAMES):
            vals = m.get_percpu(ctypes.c_uint32(i)) or []
            out[name] = (sum(v.packets for v in vals), sum(v.bytes for v in vals))
        return out


def run(prog, frame: bytes, verdict: str, counter: str) -> bytes:
    """Run one frame; check the verdict and that exactly `counter` counted it (bytes too)."""
    before = counters(prog)
    res = testrun.run_xdp(prog.prog_fd, frame)
    after = counters(prog)
    assert res.verdict == verdict
    moved = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after
             if after[k] != before[k]}
    assert moved == {counter: (1, len(frame))}
    return res.output


def eth(ethertype: int | None = None) -> Ether:
    e = Ether(src=LB_MAC, dst=HOST_MAC)
    if ethertype is not None:
        e.type = ethertype
    return e


def inner4(proto: str = "tcp", ecn: int = 0) -> bytes:
    l4 = TCP(sport=40000, dport=80, flags="S", seq=1000, window=512) if proto == "tcp" else \
        UDP(sport=40000, dport=53)
    return bytes(IP(src=CLIENT4, dst=VIP4, ttl=63, tos=0x10 | ecn) / l4 / Raw(b"hello"))


def inner6(proto: str = "tcp", ecn: int = 0) -> bytes:
    l4 = TCP(sport=40000, dport=80, flags="S", seq=1000, window=512) if proto == "tcp" else \
        UDP(sport=40000, dport=53)
    return bytes(IPv6(src=CLIENT6, dst=VIP6, hlim=63, tc=0x20 | ecn) / l4 / Raw(b"hello"))


def ipip4(inner: bytes, dst: str = LOCAL4, src: str = OUTER4, **ip) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst, proto=4, ttl=64, **ip) / Raw(inner))


def ipip6(inner: bytes, dst: str = LOCAL6, src: str = OUTER6, tc: int = 0) -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst, nh=41, hlim=64, tc=tc) / Raw(inner))


def to(inner: bytes, dst: str) -> bytes:
    """`inner` re-addressed to `dst` (checksums recomputed)."""
    pkt = IP(inner) if dst.count(".") == 3 else IPv6(inner)
    pkt.dst = dst
    if pkt.version == 4:
        del pkt.chksum
    del pkt.payload.chksum
    return bytes(pkt.__class__(bytes(pkt)))


def with_ethertype(ethertype: int, inner: bytes) -> bytes:
    """What the host must see after decap: the same MACs, the inner packet's ethertype."""
    return bytes(eth(ethertype)) + inner


# ---------------------------------------------------------------------------------------
# the header mirror

def test_header_mirror_matches_bcc_decoded_types(prog):
    for name, (key, value) in decap.MAP_TYPES.items():
        table = prog.table(name)
        leaf = prog.leaf_type(name)
        assert ctypes.sizeof(table.Key) == ctypes.sizeof(key), name
        assert ctypes.sizeof(leaf) == ctypes.sizeof(value), name
        for ours, theirs in ((key, table.Key), (value, leaf)):
            if hasattr(ours, "_fields_"):
                assert layout(theirs) == layout(ours), name
    assert prog.table("stats").max_entries == decap.DECAP_STAT_MAX
    assert prog.table("addrs").max_entries == decap.TUNABLES["DECAP_MAX_ADDRS"]
    assert prog.table("vips").max_entries == decap.TUNABLES["DECAP_MAX_VIPS"]
    assert prog.table("sources_v6").max_entries == decap.TUNABLES["DECAP_MAX_SOURCES"]


def test_header_constants_match_python():
    text = open(decap.SPEC.header_path).read()
    stats = re.findall(r"DECAP_STAT_([A-Z0-9_]+) = (\d+),", text)
    assert [(n.lower(), int(v)) for n, v in stats] == [
        *[(s, i) for i, s in enumerate(decap.STAT_NAMES)], ("max", decap.DECAP_STAT_MAX)]
    c = open(decap.SPEC.source_path).read()
    found = dict(re.findall(r"#ifndef (DECAP_\w+)\n#define \1 (\w+)", c))
    assert {k: int(v, 0) for k, v in found.items()} == decap.TUNABLES


# ---------------------------------------------------------------------------------------
# golden frames: decapsulated, exact bytes

@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv4_in_ipv4_is_stripped(prog, proto):
    inner = inner4(proto)
    out = run(prog, ipip4(inner), "XDP_PASS", "decap_v4")
    assert out.hex() == with_ethertype(0x0800, inner).hex()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv6_in_ipv6_is_stripped(prog, proto):
    inner = inner6(proto)
    out = run(prog, ipip6(inner), "XDP_PASS", "decap_v6")
    assert out.hex() == with_ethertype(0x86DD, inner).hex()


def ip_checksum(header: bytes) -> bytes:
    s = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s & 0xFFFF).to_bytes(2, "big")


def test_literal_bytes_v4(prog):
    """One frame spelled out byte by byte, so the test does not only trust scapy."""
    inner = bytes.fromhex(
        "4500001d000100004011" + "0000"         # IPv4, 29 bytes, UDP, checksum 0 (not checked)
        + "c6336407" + "0a640003"               # 198.51.100.7 -> 10.100.0.3
        + "9c40003500090000" + "78")            # UDP 40000 -> 53, length 9; payload 'x'
    outer = bytes.fromhex("45000031" "00000000" "4004" "0000" "ac100102" "0a00001f")  # 172.16.1.2 > 10.0.0.31
    outer = outer[:10] + ip_checksum(outer) + outer[12:]
    macs = bytes.fromhex("020000000d01" "020000000b01")
    out = run(prog, macs + b"\x08\x00" + outer + inner, "XDP_PASS", "decap_v4")
    assert out == macs + b"\x08\x00" + inner


def test_outer_ipv4_options_are_stripped_too(prog):
    inner = inner4()
    frame = ipip4(inner, options=[IPOption_Router_Alert()])
    assert Ether(frame)[IP].ihl == 6
    out = run(prog, frame, "XDP_PASS", "decap_v4")
    assert out.hex() == with_ethertype(0x0800, inner).hex()


def test_ethernet_padding_is_kept_after_the_inner_packet(prog):
    """A short frame padded to 60 bytes: the inner packet keeps its length field, the
    kernel trims the padding as for any frame."""
    inner = bytes(IP(src=CLIENT4, dst=VIP4) / UDP(sport=1, dport=53))
    frame = ipip4(inner)
    padded = frame + b"\0" * (60 - len(frame))
    out = run(prog, padded, "XDP_PASS", "decap_v4")
    assert out == with_ethertype(0x0800, inner) + b"\0" * (60 - len(frame))


# ---------------------------------------------------------------------------------------
# ECN through the tunnel (RFC 6040 normal mode): Not-ECT 0, ECT(1) 1, ECT(0) 2, CE 3

ECN_CASES = [  # outer, inner, what the inner packet carries on
    (3, 2, 3), (3, 1, 3), (3, 3, 3),     # congestion marked on the way reaches the client's packet
    (1, 2, 1),                           # ECT(1) over ECT(0) is kept
    (2, 1, 1), (2, 2, 2), (1, 1, 1), (0, 2, 2), (0, 3, 3), (2, 0, 0), (1, 0, 0), (0, 0, 0),
]


def with_ecn(inner: bytes, ecn: int) -> bytes:
    if inner[0] >> 4 == 4:
        p = IP(inner)
        p.tos = (p.tos & ~3) | ecn
        del p.chksum
        return bytes(p)
    q = IPv6(inner)
    q.tc = (q.tc & ~3) | ecn
    return bytes(q)


@pytest.mark.parametrize("outer,inner,result", ECN_CASES, ids=[f"{o}over{i}" for o, i, _ in ECN_CASES])
@pytest.mark.parametrize("family", [4, 6])
def test_ecn_is_carried_to_the_inner_packet(prog, family, outer, inner, result):
    if family == 4:
        packet = inner4(ecn=inner)
        frame = ipip4(packet, tos=0xB8 | outer)
    else:
        packet = inner6(ecn=inner)
        frame = ipip6(packet, tc=0xB8 | outer)
    out = run(prog, frame, "XDP_PASS", f"decap_v{family}")
    assert out[14:].hex() == with_ecn(packet, result).hex()
    if family == 4:
        assert IP(out[14:]).chksum == IP(with_ecn(packet, result)).chksum  # the incremental update is exact


@pytest.mark.parametrize("family", [4, 6])
def test_ce_over_a_packet_without_ecn_drops(prog, family):
    frame = ipip4(inner4(), tos=3) if family == 4 else ipip6(inner6(), tc=3)
    run(prog, frame, "XDP_DROP", "drop_ce_not_ect")


# ---------------------------------------------------------------------------------------
# defined verdicts for everything else

BAD_CSUM = bytearray(ipip4(inner4()))
BAD_CSUM[14 + 10] ^= 0xFF
LONG_INNER4 = bytearray(inner4())
LONG_INNER4[2:4] = (len(LONG_INNER4) + 1).to_bytes(2, "big")
LONG_INNER6 = bytearray(inner6())
LONG_INNER6[4:6] = (len(LONG_INNER6) - 40 + 1).to_bytes(2, "big")
SHORT_OUTER4 = bytearray(ipip4(inner4()))
SHORT_OUTER4[14 + 2:14 + 4] = (len(SHORT_OUTER4) - 14 + 8).to_bytes(2, "big")  # beyond the frame

CASES = [
    # desc, frame, verdict, counter
    ("arp", bytes(eth() / ARP()), "XDP_PASS", "pass_not_ip"),
    ("ethernet header only, ipv4", bytes(eth(0x0800)), "XDP_PASS", "pass_malformed"),
    ("ethernet header only, ipv6", bytes(eth(0x86DD)), "XDP_PASS", "pass_malformed"),
    ("vlan-tagged ipip", bytes(eth() / Dot1Q(vlan=5) / IP(dst=LOCAL4, proto=4) / Raw(inner4())), "XDP_PASS",
     "pass_not_ip"),
    ("plain tcp to us", bytes(eth() / IP(src=CLIENT4, dst=LOCAL4) / TCP(dport=22)), "XDP_PASS",
     "pass_not_tunnel"),
    ("plain tcp6 to us", bytes(eth() / IPv6(src=CLIENT6, dst=LOCAL6) / TCP(dport=22)), "XDP_PASS",
     "pass_not_tunnel"),
    ("ipv6 in ipv4 (6in4)", bytes(eth() / IP(dst=LOCAL4, proto=41) / Raw(inner6())), "XDP_PASS",
     "pass_not_tunnel"),
    ("ipv4 in ipv6", bytes(eth() / IPv6(dst=LOCAL6, nh=4) / Raw(inner4())), "XDP_PASS", "pass_not_tunnel"),
    ("gre to us", bytes(eth() / IP(dst=LOCAL4, proto=47) / Raw(b"\0" * 24)), "XDP_PASS", "pass_not_tunnel"),
    ("ipv6 fragment, not a tunnel", bytes(eth() / IPv6(dst=LOCAL6) / IPv6ExtHdrFragment(nh=6, m=1)
                                          / Raw(b"\0" * 16)), "XDP_PASS", "pass_not_tunnel"),
    ("ipip v4 to another host", ipip4(inner4(), dst=OTHER4), "XDP_PASS", "pass_not_local"),
    ("ipip v6 to another host", ipip6(inner6(), dst=OTHER6), "XDP_PASS", "pass_not_local"),
    ("ipip v4 to the inner packet's vip", ipip4(inner4(), dst=VIP4), "XDP_PASS", "pass_not_local"),
    ("truncated outer ipv4 header", ipip4(inner4())[:14 + 12], "XDP_PASS", "pass_malformed"),
    ("outer ipv4 ihl below 5", bytes(eth() / IP(dst=LOCAL4, proto=4, ihl=4) / Raw(inner4())), "XDP_PASS",
     "pass_malformed"),
    ("outer ipv4 length beyond the frame", bytes(SHORT_OUTER4), "XDP_PASS", "pass_malformed"),
    ("outer ipv4 bad checksum", bytes(BAD_CSUM), "XDP_PASS", "pass_malformed"),
    ("outer ipv4 version 6 with ethertype ipv4", bytes(eth(0x0800)) + ipip6(inner6())[14:], "XDP_PASS",
     "pass_malformed"),
    ("truncated outer ipv6 header", ipip6(inner6())[:14 + 30], "XDP_PASS", "pass_malformed"),
    ("outer ipv6 payload beyond the frame", ipip6(inner6())[:-4], "XDP_PASS", "pass_malformed"),
    ("ipip v4 first fragment", ipip4(inner4(), flags="MF"), "XDP_DROP", "drop_fragment"),
    ("ipip v4 later fragment", ipip4(inner4()[:16], frag=8), "XDP_DROP", "drop_fragment"),
    ("ipip v6 fragment", bytes(eth() / IPv6(src=OUTER6, dst=LOCAL6) / IPv6ExtHdrFragment(nh=41, m=1)
                               / Raw(inner6())),
     "XDP_DROP", "drop_fragment"),
    ("ipip v4, inner header truncated", ipip4(inner4()[:12]), "XDP_DROP", "drop_malformed"),
    ("ipip v4, inner is ipv6", ipip4(inner6()), "XDP_DROP", "drop_malformed"),
    ("ipip v4, inner ihl below 5", ipip4(bytes([0x44]) + inner4()[1:]), "XDP_DROP", "drop_malformed"),
    ("ipip v4, inner longer than the outer payload", ipip4(bytes(LONG_INNER4)), "XDP_DROP", "drop_malformed"),
    ("ipip v4, empty", ipip4(b""), "XDP_DROP", "drop_malformed"),
    ("ipip v6, inner header truncated", ipip6(inner6()[:39]), "XDP_DROP", "drop_malformed"),
    ("ipip v6, inner is ipv4", ipip6(inner4()), "XDP_DROP", "drop_malformed"),
    ("ipip v6, inner longer than the outer payload", ipip6(bytes(LONG_INNER6)), "XDP_DROP", "drop_malformed"),
    # the trust boundary: only the balancers' tunnels, only to the VIPs
    ("ipip v4 from an outside host", ipip4(inner4(), src="203.0.113.9"), "XDP_DROP", "drop_not_balancer"),
    ("ipip v4 from just outside the balancer prefix", ipip4(inner4(), src="172.17.0.1"), "XDP_DROP",
     "drop_not_balancer"),
    ("ipip v4 from the last balancer address", ipip4(inner4(), src="172.16.255.255"), "XDP_PASS", "decap_v4"),
    ("ipip v6 from an outside host", ipip6(inner6(), src="2001:db8:bad::1"), "XDP_DROP", "drop_not_balancer"),
    ("ipip v6 from just outside the balancer prefix", ipip6(inner6(), src="100::1:0:0:2"), "XDP_DROP",
     "drop_not_balancer"),
    ("ipip v6 fragment from an outside host", bytes(eth() / IPv6(src="2001:db8:bad::1", dst=LOCAL6)
                                                  / IPv6ExtHdrFragment(nh=41, m=1) / Raw(inner6())),
     "XDP_DROP", "drop_not_balancer"),
    ("ipip v4 to the backend's own address", ipip4(to(inner4(), LOCAL4)), "XDP_DROP", "drop_not_vip"),
    ("ipip v4 to a host behind the backend", ipip4(to(inner4(), "192.168.7.7")), "XDP_DROP", "drop_not_vip"),
    ("ipip v6 to the backend's own address", ipip6(to(inner6(), LOCAL6)), "XDP_DROP", "drop_not_vip"),
    ("ipip v6 to a host behind the backend", ipip6(to(inner6(), "fd00:7::7")), "XDP_DROP", "drop_not_vip"),
]


@pytest.mark.parametrize("desc,frame,verdict,counter", CASES, ids=[c[0] for c in CASES])
def test_defined_verdicts(prog, desc, frame, verdict, counter):
    out = run(prog, frame, verdict, counter)
    if verdict == "XDP_PASS" and not counter.startswith("decap"):
        assert out == frame, "passed frames are untouched"


# ---------------------------------------------------------------------------------------
# the balancer's ipip output decaps to the client's own packet

@pytest.fixture(scope="module")
def balancer():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    defines = {**abi.TUNABLES, "LB_RING_SIZE": 251, "LB_MAX_VIPS": 2, "LB_MAX_BACKENDS": 8,
               "LB_CONNTRACK_SIZE": 1024}
    p = loader.load(abi.SPEC, defines)
    maps = LbMaps.from_program(p)
    bal = Balancer(maps, store.LbState.for_defines(defines), lambda a: HOST_MAC)
    for vip, backend in ((f"{VIP4}:80/tcp", LOCAL4), (f"[{VIP6}]:80/tcp", LOCAL6)):
        v = config.parse_vip(vip)
        bal.add_vip(v, "ipip")
        bal.add_backend(v, ipaddress.ip_address(backend))
    yield p
    maps.close()
    p.close()


@pytest.mark.parametrize("family", [4, 6])
def test_balancer_ipip_output_decaps_to_the_client_packet(prog, balancer, family):
    inner = inner4() if family == 4 else inner6()
    client = bytes(Ether(src="02:00:00:00:0c:01", dst=LB_MAC, type=0x0800 if family == 4 else 0x86DD)) + inner
    enc = testrun.run_xdp(balancer.prog_fd, client)
    assert enc.verdict == "XDP_TX"
    assert Ether(enc.output).dst == HOST_MAC
    out = run(prog, enc.output, "XDP_PASS", f"decap_v{family}")
    assert out[14:] == inner
    assert out[:12] == enc.output[:12]


# ---------------------------------------------------------------------------------------
# fuzz: every frame gets a verdict of the contract, and only tunnels to us change

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([ipip4(inner4()), ipip6(inner6()), ipip4(inner4("udp")), ipip6(inner6("udp"))]),
       st.integers(min_value=14, max_value=200), st.integers(min_value=0, max_value=199),
       st.integers(min_value=0, max_value=255))
def test_fuzz_verdict_contract(prog, base, cut, pos, value):
    frame = bytearray(base[:cut])
    if pos < len(frame):
        frame[pos] = value
    frame = bytes(frame)
    res = testrun.run_xdp(prog.prog_fd, frame)
    assert res.verdict in ("XDP_PASS", "XDP_DROP")
    if res.verdict == "XDP_PASS" and res.output != frame:
        # Decapsulated: the same MACs, then a whole inner IP packet of the outer's family.
        p = Ether(frame)
        outer_len = p[IP].ihl * 4 if frame[12:14] == b"\x08\x00" else 40
        assert res.output[:12] == frame[:12]
        # Byte for byte, but for the ECN field (RFC 6040 may carry the outer one in) and the
        # IPv4 checksum that follows it.
        got, want = bytearray(res.output[14:]), bytearray(frame[14 + outer_len:])
        for b in (got, want):
            if len(b) >= 12 and b[0] >> 4 == 4:
                b[1] &= 0xFC
                b[10:12] = b"\0\0"
            elif len(b) >= 2:
                b[1] &= 0xCF
        assert got == want
