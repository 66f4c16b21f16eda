"""The BPF runtime through the counting program: compile with bcc, load, drive crafted
frames through BPF_PROG_TEST_RUN, read the per-CPU maps through our own typed access."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from fastpath.apps.count import xdp_count
from fastpath.bpf import loader, testrun
from fastpath.bpf.maps import TypedMap, layout
from fastpath.errors import FastpathError

pytestmark = pytest.mark.bpf

WATCH = 9000


@pytest.fixture(scope="module")
def prog():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    p = loader.load(xdp_count.SPEC, {"WATCH_PORT": WATCH, "GENERATION": 3})
    yield p
    p.close()


def _totals(prog, name: str) -> dict[int, tuple[int, int]]:
    m = TypedMap(os.dup(prog.map_fd(name)), ctypes.c_uint32, xdp_count.CountValue)
    with m:
        out = {}
        for k in range(m.info.max_entries):
            vals = m.get_percpu(ctypes.c_uint32(k)) or []
            out[k] = (sum(v.packets for v in vals), sum(v.bytes for v in vals))
        return out


def test_header_mirror_matches_bcc_decoded_types(prog):
    """The ctypes mirror of xdp_count.h has bcc's own size and field offsets."""
    for name in xdp_count.SPEC.maps:
        leaf = prog.leaf_type(name)
        assert ctypes.sizeof(leaf) == ctypes.sizeof(xdp_count.CountValue)
        assert layout(leaf) == layout(xdp_count.CountValue)
        assert prog.table(name).max_entries == (
            xdp_count.COUNT_STAT_MAX if name == "counters" else xdp_count.COUNT_GENERATIONS)


E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
CASES = [
    ("ipv4 udp to watched port", E / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=WATCH) / (b"x" * 18),
     {xdp_count.COUNT_IPV4, xdp_count.COUNT_WATCHED}),
    ("ipv6 udp to watched port", E / IPv6(src="fd00::1", dst="fd00::2") / UDP(dport=WATCH) / b"y",
     {xdp_count.COUNT_IPV6, xdp_count.COUNT_WATCHED}),
    ("ipv4 udp to another port", E / IP() / UDP(dport=WATCH + 1), {xdp_count.COUNT_IPV4}),
    ("ipv4 tcp to watched port", E / IP() / TCP(dport=WATCH), {xdp_count.COUNT_IPV4}),
    ("ipv4 with options", E / IP(options=b"\x01\x01\x01\x00") / UDP(dport=WATCH),
     {xdp_count.COUNT_IPV4, xdp_count.COUNT_WATCHED}),
    ("non-first fragment looks like udp", E / IP(frag=10, proto=17) / (b"\x23\x28" * 8),
     {xdp_count.COUNT_IPV4}),
    ("arp", E / ARP(), {xdp_count.COUNT_OTHER}),
    ("ethernet header only", Ether(type=0x0800), {xdp_count.COUNT_OTHER}),
    ("truncated ipv4 header", (E / IP() / UDP(dport=WATCH)).build()[:24], {xdp_count.COUNT_OTHER}),
    ("ipv4 ihl below 5", E / IP(ihl=4) / UDP(dport=WATCH), {xdp_count.COUNT_OTHER}),
    ("truncated udp header", (E / IP() / UDP(dport=WATCH)).build()[:38], {xdp_count.COUNT_IPV4}),
]


@pytest.mark.parametrize("desc,frame,expect", CASES, ids=[c[0] for c in CASES])
def test_golden_frames(prog, desc, frame, expect):
    """Every frame passes unchanged and lands in exactly the expected counters."""
    data = frame if isinstance(frame, bytes) else frame.build()
    before = _totals(prog, "counters")
    gen_before = _totals(prog, "generations")
    res = testrun.run_xdp(prog.prog_fd, data)
    assert res.verdict == "XDP_PASS", desc
    assert res.output == data
    after = _totals(prog, "counters")
    for k in range(xdp_count.COUNT_STAT_MAX):
        delta = (after[k][0] - before[k][0], after[k][1] - before[k][1])
        want = (1, len(data)) if k == xdp_count.COUNT_ALL or k in expect else (0, 0)
        assert delta == want, f"{desc}: counter {xdp_count.STAT_NAMES[k]}"
    gen_after = _totals(prog, "generations")
    watched = xdp_count.COUNT_WATCHED in expect
    assert gen_after[3][0] - gen_before[3][0] == (1 if watched else 0)
    assert all(gen_after[g] == gen_before[g] for g in gen_after if g != 3)


def test_repeat_measures_ns_per_packet(prog):
    frame = (E / IP() / UDP(dport=WATCH)).build()
    before = _totals(prog, "counters")[xdp_count.COUNT_WATCHED][0]
    res = testrun.run_xdp(prog.prog_fd, frame, repeat=2000)
    assert res.verdict == "XDP_PASS"
    assert 0 < res.ns_per_packet < 100_000
    assert _totals(prog, "counters")[xdp_count.COUNT_WATCHED][0] - before == 2000


def test_typed_map_rejects_wrong_layout(prog):
    class Wrong(ctypes.Structure):
        _fields_ = [("packets", ctypes.c_uint64)]

    with pytest.raises(FastpathError, match="value size"):
        TypedMap(os.dup(prog.map_fd("counters")), ctypes.c_uint32, Wrong)


def _spec_in(tmp_path: Path, body: str) -> loader.ProgramSpec:
    (tmp_path / "bad.c").write_text("#include <uapi/linux/bpf.h>\n" + body)
    return loader.ProgramSpec(name="bad", entry="bad", maps=(), directory=tmp_path)


def test_verifier_rejection_quotes_the_verifier(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    spec = _spec_in(tmp_path, """
int bad(struct xdp_md *ctx) {
    unsigned char *p = (void *)(long)ctx->data;
    return p[100] ? XDP_PASS : XDP_DROP;   /* no bounds check: the verifier must refuse */
}
""")
    with pytest.raises(FastpathError) as err:
        loader.load(spec)
    msg = str(err.value)
    assert msg.startswith("the verifier rejected bad:")
    assert "invalid access to packet" in msg or "R1" in msg or "R2" in msg
    assert "\n" not in msg


def test_compile_error_quotes_the_compiler(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    spec = _spec_in(tmp_path, "int bad(struct xdp_md *ctx) { return undefined_symbol; }\n")
    with pytest.raises(FastpathError) as err:
        loader.load(spec)
    assert "compiling bad failed" in str(err.value)
    assert "undefined_symbol" in str(err.value)


def test_tunables_reach_the_program_as_cflags():
    """A -D flag from Python changes what the program counts (no text substitution)."""
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    with loader.load(xdp_count.SPEC, {"WATCH_PORT": 7777}) as p:
        assert "-DWATCH_PORT=7777" in p.cflags
        testrun.run_xdp(p.prog_fd, (E / IP() / UDP(dport=7777)).build())
        testrun.run_xdp(p.prog_fd, (E / IP() / UDP(dport=WATCH)).build())
        assert _totals(p, "counters")[xdp_count.COUNT_WATCHED][0] == 1
