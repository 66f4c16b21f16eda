"""fastpath-l2fwd for real: af_packet and af_xdp ports in a forwarder namespace between a
generator and a sink namespace (veth pairs), net_null smoke runs, crash clean-up, and the
CLI end to end. Traffic stays inside the lab's namespaces and is bounded in count and time;
every run gets its own file prefix and leaves no runtime dir or hugepage file behind.

    gen:eth0 ---- fwd:p0 [l2fwd port 0] <-> [port 1] fwd:p1 ---- sink:eth0
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpath.dpdk import build, eal, l2fwd
from fastpath.dpdk.eal import parse_vdev
from fastpath.dpdk.l2fwd import L2fwdOptions, L2fwdProcess
from fastpath.errors import CapabilityError, FastpathError
from fastpath.netns.lab import Lab

pytestmark = pytest.mark.integration

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33  # Linux; the socket module does not name it
ETHERTYPE = 0x88B5  # IEEE local experimental: nothing in the lab answers it
MARKER = b"fastpath-l2fwd-test"
FRAMES = 300
BACK_FRAMES = 50
# Bounds: every wait in this file gives up after these.
RECEIVE_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 10.0

QUIET = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
TOPOLOGY = {
    "name": "dpdk",
    "nodes": {"gen": {"sysctls": QUIET}, "fwd": {"sysctls": QUIET}, "sink": {"sysctls": QUIET}},
    "links": [{"endpoints": ["gen:eth0", "fwd:p0"]}, {"endpoints": ["fwd:p1", "sink:eth0"]}],
}


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


@pytest.fixture(scope="module")
def binary() -> str:
    if os.geteuid() != 0:
        pytest.skip("DPDK runs in namespaces need root")
    try:
        return build.ensure_built()
    except CapabilityError as exc:
        pytest.skip(f"cannot build fastpath-l2fwd: {exc}")


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Each test leaves no fastpath DPDK runtime dir or hugepage file of this process."""
    yield
    mine = f"{eal.PREFIX_BASE}-l2fwd-{os.getpid()}-"
    left = [p for p in l2fwd.runtime_dirs() if p.name.startswith(mine)]
    left += [p for p in Path("/dev/hugepages").glob(f"{mine}*")]
    assert left == [], f"left behind: {left}"


@pytest.fixture
def lab(make_lab: object) -> Lab:
    return make_lab(TOPOLOGY)  # type: ignore[operator]


def sniffer(lab: Lab, node: str, ifname: str) -> socket.socket:
    """A packet socket on node:ifname that sees every frame arriving there."""
    with lab.enter(node):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind((ifname, ETH_P_ALL))
    return s


def send_frames(lab: Lab, node: str, ifname: str, dst: str, count: int, tag: bytes,
                src_mac: str | None = None) -> None:
    with lab.enter(node):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with s:
        s.bind((ifname, 0))
        src = mac_bytes(src_mac or lab.mac(node, ifname))
        for seq in range(count):
            payload = MARKER + tag + struct.pack("!I", seq)
            frame = mac_bytes(dst) + src + struct.pack("!H", ETHERTYPE) + payload
            s.send(frame.ljust(60, b"\0"))
            if seq % 32 == 31:
                time.sleep(0.002)  # a paced burst: the test is about counts, not speed


def receive(sock: socket.socket, count: int, tag: bytes) -> list[bytes]:
    """Frames carrying our marker and tag, until `count` arrived or the time bound ran out."""
    got: list[bytes] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        frame = sock.recv(2048)
        if frame[14:14 + len(MARKER) + len(tag)] == MARKER + tag:
            got.append(frame)
    return got


def seqs(frames: list[bytes], tag: bytes) -> list[int]:
    off = 14 + len(MARKER) + len(tag)
    return sorted(struct.unpack("!I", f[off:off + 4])[0] for f in frames)


def ports_of(event: dict[str, object]) -> dict[int, dict[str, int]]:
    return {p["port"]: p for p in event["ports"]}  # type: ignore[index, union-attr]


def forwarder(lab: Lab, binary: str, kind: str, **kw: object) -> L2fwdProcess:
    o = L2fwdOptions(vdevs=[parse_vdev(f"{kind}:p0"), parse_vdev(f"{kind}:p1")],
                     netns=lab.netns("fwd"), period_s=0.2, idle_sleep_us=20, **kw)  # type: ignore[arg-type]
    return L2fwdProcess(o, binary=binary)


def start_or_skip(run: L2fwdProcess, kind: str) -> dict[str, object]:
    try:
        return run.start()
    except FastpathError as exc:
        if kind == "af_xdp" and "AF_XDP" in str(exc):
            pytest.skip(f"AF_XDP unavailable here: {exc}")
        raise


@pytest.mark.parametrize("kind", ["af_packet", "af_xdp"])
def test_forwards_every_frame_with_rewritten_macs(lab: Lab, binary: str, kind: str) -> None:
    """N frames gen -> sink and M frames sink -> gen all arrive, once each, with destination
    02:00:00:00:00:<egress port> and the egress port's MAC as source; l2fwd's JSON counts
    match exactly and it exits 0 on SIGINT."""
    fwd_p0, fwd_p1 = lab.mac("fwd", "p0"), lab.mac("fwd", "p1")
    with forwarder(lab, binary, kind) as run:
        ready = start_or_skip(run, kind)
        ports = ports_of(ready)
        assert ports[0]["dst_port"] == 1 and ports[1]["dst_port"] == 0
        assert str(ports[0]["mac"]).lower() == fwd_p0 and str(ports[1]["mac"]).lower() == fwd_p1
        at_sink, at_gen = sniffer(lab, "sink", "eth0"), sniffer(lab, "gen", "eth0")
        with at_sink, at_gen:
            send_frames(lab, "gen", "eth0", fwd_p0, FRAMES, b"AB")
            forward = receive(at_sink, FRAMES, b"AB")
            send_frames(lab, "sink", "eth0", fwd_p1, BACK_FRAMES, b"BA")
            back = receive(at_gen, BACK_FRAMES, b"BA")
        stats = run.wait_stats(
            lambda ev: ev["total"]["tx"] >= FRAMES + BACK_FRAMES, STATS_TIMEOUT_S)
        assert stats is not None, "l2fwd's stats never counted every frame"
    result = run.stop()

    assert seqs(forward, b"AB") == list(range(FRAMES))
    assert {mac_text(f[0:6]) for f in forward} == {"02:00:00:00:00:01"}
    assert {mac_text(f[6:12]) for f in forward} == {fwd_p1}
    assert seqs(back, b"BA") == list(range(BACK_FRAMES))
    assert {mac_text(f[0:6]) for f in back} == {"02:00:00:00:00:00"}
    assert {mac_text(f[6:12]) for f in back} == {fwd_p0}

    assert result.returncode == 0 and result.signals == ["SIGINT"]
    assert result.exit_event is not None
    final = ports_of(result.exit_event)
    assert (final[0]["rx"], final[1]["tx"]) == (FRAMES, FRAMES)
    assert (final[1]["rx"], final[0]["tx"]) == (BACK_FRAMES, BACK_FRAMES)
    assert final[0]["dropped"] == final[1]["dropped"] == 0
    assert result.exit_event["total"] == {"rx": FRAMES + BACK_FRAMES,
                                          "tx": FRAMES + BACK_FRAMES, "dropped": 0}


def test_no_mac_updating_leaves_frames_as_sent(lab: Lab, binary: str) -> None:
    """--no-mac-updating: the sink sees the generator's own MACs, unchanged. Also -P: the
    ports are promiscuous while l2fwd runs."""
    with forwarder(lab, binary, "af_packet", mac_updating=False, promiscuous=True) as run:
        ready = run.start()
        assert ready["mac_updating"] is False and ready["promiscuous"] is True
        link = lab.run("fwd", ["ip", "link", "show", "p0"]).stdout
        assert "PROMISC" in link
        with sniffer(lab, "sink", "eth0") as at_sink:
            send_frames(lab, "gen", "eth0", lab.mac("fwd", "p0"), 100, b"NM")
            got = receive(at_sink, 100, b"NM")
    result = run.stop()
    assert seqs(got, b"NM") == list(range(100))
    assert {mac_text(f[0:6]) for f in got} == {lab.mac("fwd", "p0")}
    assert {mac_text(f[6:12]) for f in got} == {lab.mac("gen", "eth0")}
    assert result.returncode == 0 and result.exit_event is not None
    assert ports_of(result.exit_event)[1]["tx"] == 100


def test_null_ports_smoke_and_odd_port(binary: str) -> None:
    """Three net_null ports: 0 <-> 1 paired, port 2 forwards to itself; counts balance."""
    o = L2fwdOptions(vdevs=[parse_vdev("null")] * 3, period_s=0.2)
    with L2fwdProcess(o, binary=binary) as run:
        ready = run.start()
        assert [p["dst_port"] for p in ready["ports"]] == [1, 0, 2]  # type: ignore[index]
        assert run.wait_stats(lambda ev: ev["total"]["rx"] > 0, STATS_TIMEOUT_S) is not None
    result = run.stop()
    assert result.returncode == 0 and result.exit_event is not None
    p = ports_of(result.exit_event)
    assert p[0]["rx"] > 0 and p[0]["rx"] == p[1]["tx"] and p[1]["rx"] == p[0]["tx"]
    assert p[2]["rx"] > 0 and p[2]["rx"] == p[2]["tx"]
    assert not eal.leftovers(run.eal)


def test_sigterm_closes_ports_and_exits_0(binary: str) -> None:
    """SIGTERM, like SIGINT, makes l2fwd stop its ports, print final counts and exit 0."""
    o = L2fwdOptions(vdevs=[parse_vdev("null")] * 2, period_s=0.2, idle_sleep_us=100)
    with L2fwdProcess(o, binary=binary) as run:
        run.start()
        assert run.pid is not None and run.proc is not None
        os.kill(run.pid, signal.SIGTERM)
        assert run.proc.wait(timeout=10) == 0
        result = run.stop()
    assert result.signals == [] and result.exit_event is not None
    assert result.exit_event["total"]["rx"] == result.exit_event["total"]["tx"]


def test_crash_is_cleaned_up(binary: str) -> None:
    """SIGKILL l2fwd behind the supervisor's back: its runtime dir and hugepage files (which
    a dead DPDK process leaves) are removed by stop()."""
    memory = eal.choose_memory()
    if memory.mode != "hugetlbfs":
        pytest.skip(f"needs free, mounted hugepages to leave files behind: {memory.reason}")
    o = L2fwdOptions(vdevs=[parse_vdev("null")] * 2, period_s=0.2, idle_sleep_us=100)
    with L2fwdProcess(o, binary=binary, memory=memory) as run:
        run.start()
        left = eal.leftovers(run.eal)
        assert any(p.name.endswith("map_0") for p in left), "the run holds hugepage files"
        assert Path(run.eal.runtime_dir()) in left
        assert run.pid is not None
        os.kill(run.pid, signal.SIGKILL)
        assert run.proc is not None
        run.proc.wait(timeout=10)  # dead before stop(): no signal left to send
        result = run.stop()
    assert result.returncode == -signal.SIGKILL and result.signals == []
    assert result.crashed and result.exit_event is None
    assert {str(p) for p in left} <= set(result.cleaned)
    assert eal.leftovers(run.eal) == []


def test_cli_run_streams_json(binary: str) -> None:
    """`fastpath dpdk l2fwd run --json` end to end: ready, stats lines, result; exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastpath.cli", "dpdk", "l2fwd", "run", "--vdev", "null",
         "--vdev", "null", "--duration", "1.5", "--period", "0.25", "--idle-sleep-us", "100",
         "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "ready" and events[-1]["event"] == "result"
    stats = [e for e in events if e["event"] == "stats"]
    assert len(stats) >= 3
    assert [s["seq"] for s in stats] == list(range(1, len(stats) + 1))
    assert events[-1]["crashed"] is False and events[-1]["signals"] == ["SIGINT"]
    assert events[-1]["final"]["total"]["rx"] >= stats[-1]["total"]["rx"] > 0
    assert "l2fwd running" in proc.stderr


def test_tap_ports_forward_between_kernel_interfaces(make_lab: object, binary: str) -> None:
    """net_tap smoke test: l2fwd's two tap ports appear as kernel interfaces dtap0/dtap1 in
    the lab node; frames written to dtap0 come out of dtap1 rewritten, and both interfaces
    are gone once l2fwd has stopped."""
    lab: Lab = make_lab({"name": "tap", "nodes": {"n": {"sysctls": QUIET}}})  # type: ignore[operator]
    o = L2fwdOptions(vdevs=[parse_vdev("tap:dtap0"), parse_vdev("tap:dtap1")],
                     netns=lab.netns("n"), period_s=0.2, idle_sleep_us=20)
    with L2fwdProcess(o, binary=binary) as run:
        ready = run.start()
        ports = ports_of(ready)
        links = lab.run("n", ["ip", "-br", "link", "show"]).stdout
        assert "dtap0" in links and "dtap1" in links
        with sniffer(lab, "n", "dtap1") as out:
            send_frames(lab, "n", "dtap0", "02:aa:bb:cc:dd:ee", 100, b"TP",
                        src_mac="02:11:22:33:44:55")
            got = receive(out, 100, b"TP")
    result = run.stop()
    assert seqs(got, b"TP") == list(range(100))
    assert {mac_text(f[0:6]) for f in got} == {"02:00:00:00:00:01"}
    assert {mac_text(f[6:12]) for f in got} == {str(ports[1]["mac"]).lower()}
    assert result.returncode == 0 and result.exit_event is not None
    assert ports_of(result.exit_event)[0]["rx"] >= 100
    links = lab.run("n", ["ip", "-br", "link", "show"]).stdout
    assert "dtap0" not in links and "dtap1" not in links


def test_memif_pair_carries_frames(binary: str, tmp_path: Path) -> None:
    """net_memif smoke test, one process: null0 <-> memif server, memif client <-> null1.
    The two memif ports connect over one socket, so frames from null0 reach port 2 through
    shared memory (and null1's the other way); the socket is gone after the run."""
    sock = tmp_path / "memif.sock"
    vdevs = [parse_vdev("null"), parse_vdev(f"memif:{sock},role=server,id=0"),
             parse_vdev(f"memif:{sock},role=client,id=0"), parse_vdev("null")]
    o = L2fwdOptions(vdevs=vdevs, portmap="(0,1),(2,3)", period_s=0.2)
    with L2fwdProcess(o, binary=binary) as run:
        ready = run.start()
        assert [p["name"] for p in ready["ports"]] == [  # type: ignore[index]
            "net_null0", "net_memif1", "net_memif2", "net_null3"]
        crossed = run.wait_stats(
            lambda ev: all(p["rx"] > 10_000 for p in ev["ports"]), STATS_TIMEOUT_S)
        assert crossed is not None, f"memif never carried frames: {run.stats[-1:]}"
    result = run.stop()
    assert result.returncode == 0 and result.exit_event is not None
    p = ports_of(result.exit_event)
    # Every frame the client received came from the server's TX, and the other way round.
    assert 0 < p[2]["rx"] <= p[1]["tx"] and 0 < p[1]["rx"] <= p[2]["tx"]
    assert not sock.exists()
