"""bpf/l4lb.c under a flood of new tuples, through BPF_PROG_TEST_RUN: established flows keep
their backend (the output bytes of their next packet) and, in nat mode, their replies stay
translated, while the backend set changes and a random-source flood ten times the size of
the flow tables goes to the VIP. The program runs with small tables so the flood is quick.

The test thread is pinned to one CPU: a flow and the flood then share the CPU, as RSS would
put them on one receive queue, so a per-CPU LRU share cannot hide an eviction."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import struct
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from fastpath.apps.lb import abi, config, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bpf import loader, testrun
from fastpath.errors import FastpathError
from fastpath.labs import flood

pytestmark = pytest.mark.bpf

LB_MAC = "02:00:00:00:0b:01"
CLIENT_MAC = "02:00:00:00:0c:01"
TABLE = 1024            # conntrack and half_open (the smallest `lb attach` allows)
FLOOD = 10 * TABLE      # tuples in a flood: ten times either table
FLOWS = 120             # established flows per case
FLOOD_NET = ipaddress.ip_network("10.99.0.0/16")

# VIP -> (mode, backends at first, the backend added while the flows are established)
VIPS = {
    "10.100.0.1:80/tcp": ("dsr", ["10.0.0.11", "10.0.0.12"], "10.0.0.13"),
    "10.100.0.2:80/tcp": ("nat", ["10.0.0.21:8080", "10.0.0.22:8080"], "10.0.0.23:8080"),
    "10.100.0.3:80/tcp": ("ipip", ["10.0.0.31", "10.0.0.32"], "10.0.0.33"),
    "10.100.0.1:53/udp": ("dsr", ["10.0.0.11", "10.0.0.12"], "10.0.0.13"),
    "10.100.0.2:53/udp": ("nat", ["10.0.0.21:5353", "10.0.0.22:5353"], "10.0.0.23:5353"),
}


def resolver(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return "02:00:00:00:00:%02x" % (int(addr) & 0xFF)


def defines() -> dict[str, int]:
    return {**abi.TUNABLES, "LB_CONNTRACK_SIZE": TABLE, "LB_HALF_OPEN_SIZE": TABLE, "LB_RING_SIZE": 4099,
            "LB_MAX_VIPS": 8}


class Env:
    def __init__(self, prog: loader.LoadedProgram) -> None:
        self.prog = prog
        self.maps = LbMaps.from_program(prog)
        self.bal = Balancer(self.maps, store.LbState.for_defines(defines()), resolver, defines())
        for name, (mode, backends, _added) in VIPS.items():
            vip = config.parse_vip(name)
            self.bal.add_vip(vip, mode)
            for text in backends:
                self.bal.add_backend(vip, *config.parse_backend(text))

    def run(self, frame: bytes, verdict: str) -> bytes:
        res = testrun.run_xdp(self.prog.prog_fd, frame)
        assert res.verdict == verdict
        return res.output


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    prog = loader.load(abi.SPEC, defines())
    e = Env(prog)
    yield e
    e.maps.close()
    prog.close()


@pytest.fixture(autouse=True)
def no_flows(env: Env) -> None:
    """Each test starts with empty flow tables."""
    for table in ("conntrack", "nat_reverse", "half_open", "half_open_reverse"):
        with contextlib.suppress(KeyError):   # a table this build of the program lacks
            env.maps[table].clear()


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


@contextlib.contextmanager
def backend_added(env: Env, vip_text: str) -> Iterator[None]:
    """The VIP's backend set changes (a backend joins, so Maglev moves about a third of the
    flows); restored afterwards."""
    vip = config.parse_vip(vip_text)
    addr, port = config.parse_backend(VIPS[vip_text][2])
    env.bal.add_backend(vip, addr, port)
    try:
        yield
    finally:
        env.bal.del_backend(vip, addr, port)


def client(i: int) -> tuple[str, int]:
    return f"198.18.{i // 250}.{1 + i % 250}", 20000 + i


def frame(vip_text: str, src: str, sport: int, flags: str = "A") -> bytes:
    vip = config.parse_vip(vip_text)
    l4 = (TCP(sport=sport, dport=vip.port, flags=flags, seq=1000, ack=2000, window=512) if vip.proto == "tcp"
          else UDP(sport=sport, dport=vip.port))
    return bytes(Ether(src=CLIENT_MAC, dst=LB_MAC) / IP(src=src, dst=str(vip.address)) / l4 / Raw(b"hello"))


def backend_of(mode: str, out: bytes) -> str:
    """The backend a forwarded frame goes to, as its bytes say: the destination MAC (dsr),
    the rewritten destination address:port (nat), the outer destination (ipip)."""
    p = Ether(out)
    if mode == "dsr":
        return p.dst
    if mode == "nat":
        return f"{p[IP].dst}:{p[IP].payload.dport}"
    return str(p[IP].dst)


def check_bytes(mode: str, sent: bytes, out: bytes, backend: str) -> None:
    """`out` is exactly what `sent` becomes on its way to `backend` (as backend_of names it):
    MACs rewritten (dsr); MACs, destination address, port and checksums (nat); the packet
    unchanged inside an outer header to the backend (ipip)."""
    p = Ether(sent)
    if mode == "ipip":
        o = Ether(out)
        assert (o[IP].dst, o[IP].proto, bytes(o[IP].payload)) == (backend, 4, bytes(p.payload))
        return
    p.src = LB_MAC
    if mode == "dsr":
        p.dst = backend
    else:
        addr, port = backend.rsplit(":", 1)
        p.dst = resolver(ipaddress.ip_address(addr))
        p[IP].dst = addr
        p[IP].payload.dport = int(port)
        del p[IP].chksum
        del p[IP].payload.chksum
    assert out.hex() == bytes(p).hex()


def reply(mode_backend: str, src: str, sport: int, proto: str) -> bytes:
    addr, port = mode_backend.rsplit(":", 1)
    l4 = (TCP(sport=int(port), dport=sport, flags="A", seq=2000, ack=1005) if proto == "tcp"
          else UDP(sport=int(port), dport=sport))
    return bytes(Ether(src=resolver(ipaddress.ip_address(addr)), dst=LB_MAC) / IP(src=addr, dst=src) / l4
                 / Raw(b"reply"))


def as_from_vip(out: bytes, vip_text: str) -> bytes:
    vip = config.parse_vip(vip_text)
    p = Ether(out)
    p[IP].src = str(vip.address)
    p[IP].payload.sport = vip.port
    del p[IP].chksum
    del p[IP].payload.chksum
    return bytes(p)


def syn_flood(vip_text: str, n: int, rng: random.Random) -> Iterator[bytes]:
    vip = config.parse_vip(vip_text)
    syn = flood.syn_frame(bytes.fromhex(CLIENT_MAC.replace(":", "")), bytes.fromhex(LB_MAC.replace(":", "")),
                          "10.99.0.1", str(vip.address), vip.port)
    pool = flood.frame_pool(syn, FLOOD_NET, n, rng)
    size = len(syn)
    for i in range(n):
        yield pool[i * size:(i + 1) * size]


def ack_flood(vip_text: str, n: int, rng: random.Random) -> Iterator[bytes]:
    """Stray ACKs from random sources: one packet per tuple, no handshake before it."""
    for syn in syn_flood(vip_text, n, rng):
        f = bytearray(syn)
        f[47] = 0x10                      # TCP flags: ACK (checksum not redone: never checked)
        yield bytes(f)


def udp_flood(vip_text: str, n: int, rng: random.Random) -> Iterator[bytes]:
    vip = config.parse_vip(vip_text)
    head = bytes.fromhex(LB_MAC.replace(":", "") + CLIENT_MAC.replace(":", "") + "0800")
    for _ in range(n):
        src = FLOOD_NET[rng.randrange(1, FLOOD_NET.num_addresses - 1)]
        udp = struct.pack("!HHHH", rng.randrange(1024, 65536), vip.port, 8 + 5, 0) + b"flood"
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), rng.randrange(65536), 0, 64,
                                   17, 0, src.packed, vip.address.packed))
        ip[10:12] = struct.pack("!H", flood.checksum(bytes(ip)))
        yield head + bytes(ip) + udp


FLOODS: dict[str, Callable[[str, int, random.Random], Iterator[bytes]]] = {
    "syn": syn_flood, "ack": ack_flood, "udp": udp_flood}


def flood_entries(env: Env, table: str) -> int:
    """Entries of `table` whose client is a flood source."""
    return sum(1 for k in env.maps[table].keys() if bytes(k.src[:2]) == FLOOD_NET.network_address.packed[:2])


@pytest.mark.parametrize("vip_text,flood_kind", [
    ("10.100.0.1:80/tcp", "syn"),
    ("10.100.0.2:80/tcp", "syn"),
    ("10.100.0.3:80/tcp", "syn"),
    ("10.100.0.1:80/tcp", "ack"),
    ("10.100.0.2:80/tcp", "udp"),
    ("10.100.0.1:53/udp", "udp"),
    ("10.100.0.2:53/udp", "udp"),
], ids=["dsr-syn", "nat-syn", "ipip-syn", "dsr-ack", "nat-tcp-under-udp-flood", "dsr-udp", "nat-udp"])
def test_established_flows_survive_a_flood_while_the_backends_change(env, vip_text, flood_kind):
    mode = VIPS[vip_text][0]
    proto = config.parse_vip(vip_text).proto
    flood_vip = vip_text if proto == "udp" or flood_kind != "udp" else vip_text.replace(":80/tcp", ":53/udp")
    rng = random.Random(f"{vip_text} {flood_kind}")
    first = 1000 if flood_kind == "ack" else 0
    with one_cpu():
        # Established flows: a TCP handshake (SYN, then the client's ACK) or two UDP datagrams.
        pinned = {}
        for i in range(first, first + FLOWS):
            src, sport = client(i)
            out = env.run(frame(vip_text, src, sport, "S"), "XDP_TX")
            env.run(frame(vip_text, src, sport, "A"), "XDP_TX")
            pinned[(src, sport)] = backend_of(mode, out)
        assert len(set(pinned.values())) == 2
        with backend_added(env, vip_text):
            # The premise: the ring now sends a good part of these flows elsewhere.
            added = VIPS[vip_text][2]
            moved = [c for c in pinned if env.bal.explain(ipaddress.ip_address(c[0]), c[1],
                                                          config.parse_vip(vip_text))["maglev_backend"]
                     == config.backend_name(config.parse_vip(vip_text), mode, *config.parse_backend(added))]
            assert len(moved) > FLOWS // 6, "adding a backend should move flows"
            kinds: dict[str, int] = {}
            for f in FLOODS[flood_kind](flood_vip, FLOOD, rng):
                v = testrun.run_xdp(env.prog.prog_fd, f).verdict
                kinds[v] = kinds.get(v, 0) + 1
            assert kinds == {"XDP_TX": FLOOD}, "the flood is balanced like any new flow"
            # Every established flow's next packet goes to its backend, byte for byte ...
            lost = []
            for (src, sport), backend in pinned.items():
                sent = frame(vip_text, src, sport, "PA")
                out = env.run(sent, "XDP_TX")
                if backend_of(mode, out) != backend:
                    lost.append((src, sport, backend, backend_of(mode, out)))
                else:
                    check_bytes(mode, sent, out, backend)
            assert not lost, f"{len(lost)} of {FLOWS} established flows moved, e.g. {lost[:3]}"
            # ... and in nat mode the backend's replies still come from the VIP.
            if mode == "nat":
                for (src, sport), backend in pinned.items():
                    r = reply(backend, src, sport, proto)
                    res = testrun.run_xdp(env.prog.prog_fd, r)
                    assert (res.verdict, res.output.hex()) == ("XDP_PASS", as_from_vip(r, vip_text).hex()), (
                        src, sport)
            assert flood_entries(env, "conntrack") == 0, "no flood tuple took an established flow's slot"


def test_a_handshake_keeps_its_pick_while_the_ring_changes(env):
    """The SYN's pick holds for the handshake's ACK though the ring changed in between: the
    half-open entry carries it into conntrack."""
    vip_text = "10.100.0.1:80/tcp"
    vip = config.parse_vip(vip_text)
    added = config.parse_backend(VIPS[vip_text][2])
    with one_cpu():
        picks = {}
        for i in range(2000, 2100):
            src, sport = client(i)
            picks[(src, sport)] = backend_of("dsr", env.run(frame(vip_text, src, sport, "S"), "XDP_TX"))
        c0 = env.bal.counters()["flow_confirmed"]["packets"]
        with backend_added(env, vip_text):
            target = config.backend_name(vip, "dsr", *added)
            moved = [c for c in picks
                     if env.bal.explain(ipaddress.ip_address(c[0]), c[1], vip)["maglev_backend"] == target]
            assert moved
            for (src, sport), mac in picks.items():
                assert backend_of("dsr", env.run(frame(vip_text, src, sport, "A"), "XDP_TX")) == mac
            assert env.bal.counters()["flow_confirmed"]["packets"] == c0 + len(picks)
            src, sport = moved[0]
            ex = env.bal.explain(ipaddress.ip_address(src), sport, vip)
            assert ex["conntrack_state"] == "established" and ex["backend"] != ex["maglev_backend"]


def test_a_syn_takes_no_established_slot(env):
    vip_text = "10.100.0.2:80/tcp"
    src, sport = client(3000)
    key_src = ipaddress.ip_address(src).packed
    env.run(frame(vip_text, src, sport, "S"), "XDP_TX")

    def held(table: str) -> bool:
        return any(bytes(k.src[:4]) == key_src and socket.ntohs(k.sport) == sport
                   for k in env.maps[table].keys())

    assert (held("half_open"), held("conntrack")) == (True, False)
    env.run(frame(vip_text, src, sport, "S"), "XDP_TX")   # a retransmitted SYN confirms nothing
    assert (held("half_open"), held("conntrack")) == (True, False)
    env.run(frame(vip_text, src, sport, "A"), "XDP_TX")
    assert (held("half_open"), held("conntrack")) == (False, True)


def test_half_open_is_sized_by_the_cpus_that_run_the_program(env):
    """A per-CPU LRU gives every possible CPU an equal share: the map holds the half-open
    size times possible CPUs over the CPUs that run the program."""
    prog = loader.load(abi.SPEC, {**defines(), "LB_POSSIBLE_CPUS": 64, "LB_RX_CPUS": 8})
    try:
        assert prog.table("half_open").max_entries >= TABLE * 8
        assert prog.table("half_open_reverse").max_entries >= TABLE * 8
        assert prog.table("conntrack").max_entries == TABLE
    finally:
        prog.close()
    with pytest.raises(FastpathError, match="--rx-cpus 3 out of range 1-2"):
        config.check_tunables({**defines(), "LB_POSSIBLE_CPUS": 2, "LB_RX_CPUS": 3})
