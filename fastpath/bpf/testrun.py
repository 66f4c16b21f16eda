"""BPF_PROG_TEST_RUN: packet bytes in, verdict, output bytes and ns/packet out.

The core of every data-plane test (golden packets) and per-packet benchmark; the
frame-restoring harness below lets a benchmark repeat a data plane that rewrites its frame.

A test run in live-frames mode transmits what the program returns XDP_TX for, which makes
it a frame generator; not every host allows that, so `live_frames_refused` asks the
kernel, and `choose_engine` picks between it and an AF_PACKET socket for a generator
(the lab's SYN flood) and for doctor's report of that choice.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastpath.bpf import loader, syscall
from fastpath.errors import CapabilityError, FastpathError

XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}


@dataclass(frozen=True)
class RunResult:
    verdict: str
    retval: int
    output: bytes
    ns_per_packet: float
    repeat: int


def run_xdp(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """Run an XDP program on one frame `repeat` times; the output is the last run's frame."""
    res = syscall.prog_test_run(prog_fd, packet, repeat=repeat)
    verdict = XDP_VERDICTS.get(res.retval, f"retval={res.retval}")
    return RunResult(verdict, res.retval, res.data_out, float(res.duration_ns), max(repeat, 1))


def run_expect(prog_fd: int, packet: bytes, want: str, repeat: int = 1, what: str = "program") -> RunResult:
    """`run_xdp`, and a FastpathError unless the verdict is `want` (e.g. "XDP_TX")."""
    res = run_xdp(prog_fd, packet, repeat=repeat)
    if res.verdict != want:
        raise FastpathError(f"{what} returned {res.verdict}, expected {want}")
    return res


# ---------------------------------------------------------------------------------------
# The frame-restoring harness (bpf/restoring_harness.c): ns/packet of a data plane that
# rewrites its frame, with a no-op build as the baseline to take off.

HARNESS_ENTRY = "fp_restoring_harness"


def load_restoring(sources: Sequence[Path], process: str, frame_len: int, defines: Mapping[str, int | str],
                   *, moves: str = "head", after: str | None = None,
                   noop: bool = False) -> loader.LoadedProgram:
    """Load the data plane in `sources` (its `bpf/` C file, then any files of bench hooks
    such as `after`) under the restoring harness, for frames of exactly `frame_len` bytes.
    `process` is the data plane's `int f(struct xdp_md *)`; `defines` its tunables; `moves`
    the end of the frame it may move ("head" for encapsulation, "tail" for an answer of
    another length); `after(saved_frame)` runs after the frame is restored; `noop` builds
    the baseline that runs no data plane.

    The files are joined into one compile unit (bcc rewrites map syntax only in the file it
    compiles, so an #include would not do), each behind a #line that keeps compiler errors
    pointing at the real file."""
    if moves not in ("head", "tail"):
        raise ValueError(f"moves must be 'head' or 'tail', not {moves!r}")
    extra: dict[str, int | str] = {"FRAME_LEN": frame_len, "BENCH_PROCESS": process}
    if moves == "tail":
        extra["BENCH_MOVES_TAIL"] = 1
    if after:
        extra["BENCH_AFTER"] = after
    if noop:
        extra["BENCH_NOOP"] = 1
    parts = [*sources, loader.bpf_source_dir() / "restoring_harness.c"]
    with tempfile.TemporaryDirectory(prefix="fastpath-harness-") as tmp:
        joined = "".join(f'#line 1 "{p}"\n{Path(p).read_text()}\n' for p in parts)
        name = f"{process}_harness"
        Path(tmp, f"{name}.c").write_text(joined)
        spec = loader.ProgramSpec(name=name, entry=HARNESS_ENTRY, maps=(), directory=Path(tmp))
        return loader.load(spec, {**defines, **extra})


# ---------------------------------------------------------------------------------------
# Live frames, and the engine a frame generator uses

# XDP_DROP: the live-frames probe runs the kernel path and sends nothing.
_DROP_INSNS = bytes.fromhex("b700000001000000" "9500000000000000")  # r0 = XDP_DROP; exit
_probe_cache: dict[int, str | None] = {}


def live_frames_refused(ifindex: int = 1) -> str | None:
    """Why BPF_PROG_TEST_RUN with live frames fails in this namespace (None: it works).

    Runs a program that drops its one frame, on `ifindex` (loopback by default), so the
    probe goes through the same kernel checks as a flood and transmits nothing."""
    if ifindex in _probe_cache:
        return _probe_cache[ifindex]
    reason: str | None = None
    try:
        fd = syscall.prog_load_xdp(_DROP_INSNS, "fp_live_probe")
    except syscall.BpfError as exc:
        reason = f"loading an XDP program failed ({exc.reason})"
    else:
        try:
            syscall.prog_test_run_live(fd, bytes(64), 1, ifindex)
        except syscall.BpfError as exc:
            reason = f"BPF_PROG_TEST_RUN with live frames failed: {exc.reason}"
        finally:
            os.close(fd)
    _probe_cache[ifindex] = reason
    return reason


def packet_engine_missing() -> str | None:
    """Why a generator cannot send through an AF_PACKET socket here (None: it can)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        return f"no AF_PACKET socket: {exc.strerror or exc}"
    return None


ENGINES = ("auto", "live", "packet")
ENGINE_ENV = "FASTPATH_FLOOD_ENGINE"


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    note: str  # why this engine: empty when it is the one asked for


def choose_engine(requested: str | None = None, ifindex: int = 1) -> EngineChoice:
    """The engine to use: `requested`, else $FASTPATH_FLOOD_ENGINE, else auto (live where
    the probe passes, packet otherwise). An engine asked for by name that cannot run here
    is an error naming the other one."""
    want = requested or os.environ.get(ENGINE_ENV) or "auto"
    if want not in ENGINES:
        raise FastpathError(f"unknown flood engine {want!r}", fix=f"use one of {', '.join(ENGINES)}")
    if want == "live":
        why = live_frames_refused(ifindex)
        if why:
            raise CapabilityError(f"the live flood engine cannot run here: {why}",
                                  fix="use the packet engine (--engine packet or "
                                      "FASTPATH_FLOOD_ENGINE=packet)")
        return EngineChoice("live", "")
    if want == "packet":
        why = packet_engine_missing()
        if why:
            raise CapabilityError(f"the packet flood engine cannot run here: {why}",
                                  fix="run as root (CAP_NET_RAW), or use --engine live")
        return EngineChoice("packet", "")
    why = live_frames_refused(ifindex)
    if why is None:
        return EngineChoice("live", "")
    missing = packet_engine_missing()
    if missing:
        raise CapabilityError(f"no flood engine can run here: {why}; {missing}",
                              fix="run as root (CAP_NET_RAW and CAP_BPF)")
    return EngineChoice("packet", f"{why}; using the packet engine (AF_PACKET)")
