"""`echo`: TCP echo servers on loopback, fastpath's io_uring engines against their peers.

Contenders, each a single-threaded server started fresh for every repeat and pinned to
one core while the load generator is pinned to another:
- `native`: fastpath-uring-echo (uring/echo_server.c);
- `python`: fastpath's Python engine on the same io_uring design (fastpath/uring/echo.py);
- `epoll`: fastpath-epoll-echo (uring/epoll_echo.c), a careful level-triggered epoll
  server in C: the baseline;
- `asyncio`, `uvloop`: the Protocol echo servers of fastpath/uring/peers.py.

Load: fastpath-echo-bench, one thread, one message in flight per connection, every reply
checked byte for byte. Each fresh server first gets a short unmeasured load run (see
PRIME_S), then every contender runs the whole grid, connections {1, 50, 100, 500}
x message {64, 512, 4096} B, plus 100 x 128 B where the targets are set, so one repeat
of one contender is 13 load runs against one server. A metric's suffix names its grid
point: `rps_c100_s128` is req/s at 100 connections x 128-byte messages.

Metrics per grid point: `rps_*` (req/s), `p99_*` (99th-percentile round trip, µs) and
`cpu_*`: server CPU seconds (user + system, from /proc/<pid>/stat, sampled inside the
measured window) per million requests, i.e. what a request costs the server whatever
throughput the client managed. Loopback TCP is partly processed in the sender's context,
so part of each side's kernel work is billed to the other; this is the same for every
contender.

Time: a full run is 5 contenders x (1 warm-up + 5 measured repeats) x 13 points x 1.3 s,
about 9-10 minutes; --quick runs every point for 0.25 s, once (under a minute).

Environment knobs, for focused runs and for checking whether the load generator is the
bottleneck (each is logged at the start of a run):
- FASTPATH_ECHO_GRID=c100_s128,c500_s64: measure only these points (the headline point,
  which the targets need, is always kept);
- FASTPATH_ECHO_DEPTH=N: messages in flight per connection (default 1);
- FASTPATH_ECHO_CLIENT_THREADS=N: load-generator threads (default 1, all on the client CPU).

Reading the numbers: with one message in flight per connection, throughput is bound by
how fast each side wakes the other as much as by server CPU; on a small or shared
machine neither side may saturate its core, req/s ratios then shrink towards 1 and the
`cpu_*` metrics tell the servers apart better.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastpath.bench import BenchContext, Metric, Scenario, Target, register_scenario
from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring.native import ServerProcess, find_binary

CONNECTIONS = (1, 50, 100, 500)
SIZES = (64, 512, 4096)
HEADLINE = (100, 128)  # the targets' grid point
FULL_GRID: tuple[tuple[int, int], ...] = (HEADLINE, *((c, s) for c in CONNECTIONS for s in SIZES))
GRID_ENV, DEPTH_ENV, THREADS_ENV = (
    "FASTPATH_ECHO_GRID", "FASTPATH_ECHO_DEPTH", "FASTPATH_ECHO_CLIENT_THREADS",
)  # fmt: skip

# (warm-up, measured) seconds of each load run: full, --quick.
LOAD_S = (0.3, 1.0)
QUICK_LOAD_S = (0.05, 0.2)
# Every fresh server first gets this much unmeasured load at the headline point (full,
# --quick): an asyncio server's first load run is 3-4x slower than every later one, for
# as long as it lasts, and the warm-up rounds of the runner cannot help since each
# measure() starts a new server.
PRIME_S = (0.3, 0.1)  # fastpath-echo-bench measures at least 0.1 s
# CPU is sampled inside the measured window, this fraction in from each end, so the
# bench's start-up (exec, connects) and shut-down never fall inside it.
CPU_MARGIN = 0.1
IDLE_TIMEOUT_S = 15.0  # a server must close the last run's connections within this
STOP_TIMEOUT_S = 10.0  # SIGTERM to exit: drain (2 s default) + interpreter exit
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONTENDERS = ("native", "python", "epoll", "asyncio", "uvloop")
BASELINE = "epoll"


def point_name(connections: int, size: int) -> str:
    return f"c{connections}_s{size}"


def grid_from_env(text: str | None) -> tuple[tuple[int, int], ...]:
    """The points $FASTPATH_ECHO_GRID names ("c100_s128,c1_s64"), headline first; the
    full grid when unset or empty."""
    if not text or not text.strip():
        return FULL_GRID
    wanted = {p.strip() for p in text.split(",") if p.strip()}
    by_name = {point_name(c, s): (c, s) for c, s in FULL_GRID}
    unknown = sorted(wanted - set(by_name))
    if unknown:
        raise FastpathError(
            f"{GRID_ENV}: unknown grid point(s) {', '.join(unknown)}; "
            f"choose from {', '.join(by_name)}"
        )
    return tuple(p for p in FULL_GRID if p == HEADLINE or point_name(*p) in wanted)


def _positive_env(name: str, hi: int) -> int:
    """An integer setting from the environment, 1 when unset (fastpath-echo-bench's limits)."""
    text = os.environ.get(name, "").strip() or "1"
    if not text.isdigit() or not 1 <= int(text) <= hi:
        raise FastpathError(f"{name}={text}: expected an integer in 1..{hi}")
    return int(text)


POINTS = grid_from_env(os.environ.get(GRID_ENV))


def _metrics() -> list[Metric]:
    names = [point_name(c, s) for c, s in POINTS]
    return (
        [Metric(f"rps_{p}", "req/s", "higher") for p in names]
        + [Metric(f"p99_{p}", "µs", "lower") for p in names]
        + [Metric(f"cpu_{p}", "server CPU s per 1M requests", "lower") for p in names]
    )


def server_argv(contender: str) -> list[str]:
    """How each contender is started: one thread/process, a free loopback port."""
    port = ["--addr", "127.0.0.1", "--port", "0"]
    if contender == "native":
        return [str(find_binary()), *port, "--threads", "1"]
    if contender == "epoll":
        return [str(find_binary("fastpath-epoll-echo")), *port, "--threads", "1"]
    if contender == "python":
        return [sys.executable, "-m", "fastpath.cli", "uring", "serve", "--engine", "python",
                *port, "--threads", "1"]  # fmt: skip
    if contender in ("asyncio", "uvloop"):
        return [sys.executable, "-m", "fastpath.uring.peers", "--loop", contender, *port]
    raise ValueError(f"unknown echo contender {contender!r}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()  # the command may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def load_report(proc: subprocess.Popen[str], out: str, err: str, where: str) -> dict[str, Any]:
    """fastpath-echo-bench's JSON report; its last stderr line as the error when it failed."""
    report: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError):
        report = json.loads(out) if out.strip() else {}
    if proc.returncode != 0 or not report.get("ok"):
        lines = err.strip().splitlines()
        raise FastpathError(f"{where}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return report


def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p99_us: float
    cpu_per_mreq: float


@register_scenario
class Echo(Scenario):
    name = "echo"
    description = (
        "TCP echo on loopback, server and client on different cores: req/s, p99 latency "
        "and server CPU per 1M requests; fastpath io_uring (native, python) vs C epoll, "
        "asyncio, uvloop; suffix cN_sB = N connections x B-byte messages"
    )
    metrics = _metrics()
    baseline = BASELINE
    targets = [
        Target("rps_c100_s128", "native", ">=", 1.3, versus="epoll"),
        Target("rps_c100_s128", "python", ">=", 1.5, versus="asyncio"),
        # "On par with uvloop": at least 90 % of its throughput.
        Target("rps_c100_s128", "python", ">=", 0.9, versus="uvloop"),
    ]
    repeat, quick_repeat, warmup = 5, 1, 1

    def contenders(self) -> list[str]:
        return list(CONTENDERS)

    # -- set-up and tear-down
    def setup(self, ctx: BenchContext) -> None:
        self._live: dict[int, ServerProcess] = {}
        self._depth = _positive_env(DEPTH_ENV, 1024)
        self._client_threads = _positive_env(THREADS_ENV, 256)
        if POINTS != FULL_GRID:
            ctx.log(f"echo: {GRID_ENV} restricts the grid to {', '.join(point_name(*p) for p in POINTS)}")
        ctx.log(f"echo: load generator: {self._client_threads} thread(s), {self._depth} message(s) "
                "in flight per connection")  # fmt: skip
        self._bench = find_binary("fastpath-echo-bench")  # no load generator: unavailable
        find_binary("fastpath-epoll-echo")  # the baseline: unavailable without it
        try:
            find_binary()
        except CapabilityError as exc:
            ctx.skip_contender("native", exc.message)
        if importlib.util.find_spec("uvloop") is None:
            ctx.skip_contender("uvloop", "uvloop is not installed (pip install -e '.[bench]')")
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2:
            self._server_cpu: int | None = allowed[0]
            self._client_cpu: int | None = allowed[1]
            ctx.log(f"echo: servers pinned to CPU {allowed[0]}, load generator to CPU {allowed[1]}")
        else:
            self._server_cpu = self._client_cpu = None
            ctx.log("echo: fewer than 2 usable CPUs; server and load generator share one")
        # A contender that cannot even echo once (no io_uring here, say) is skipped with
        # its own error line rather than failing the whole run.
        for contender in CONTENDERS:
            if contender in ctx.skipped:
                continue
            try:
                self._smoke_test(contender)
            except FastpathError as exc:
                if contender == BASELINE:
                    raise
                ctx.skip_contender(contender, str(exc))

    def teardown(self, ctx: BenchContext) -> None:
        for srv in list(getattr(self, "_live", {}).values()):
            srv.kill()
        self._live = {}

    def _start(self, contender: str) -> ServerProcess:
        srv = ServerProcess(server_argv(contender), preexec_fn=_pin(self._server_cpu))
        self._live[srv.pid] = srv
        return srv

    def _stop(self, contender: str, srv: ServerProcess) -> None:
        try:
            rc = srv.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
            if rc != 0:
                lines = srv.stderr_text.strip().splitlines()
                detail = f": {lines[-1]}" if lines else ""
                raise FastpathError(f"{contender} server exited with status {rc} on SIGTERM{detail}")
        finally:
            srv.kill()
            self._live.pop(srv.pid, None)

    def _smoke_test(self, contender: str) -> None:
        srv = self._start(contender)
        try:
            with socket.create_connection(srv.address, timeout=5) as s:
                s.sendall(b"fastpath")
                got = b""
                while len(got) < 8:
                    data = s.recv(8 - len(got))
                    if not data:
                        break
                    got += data
            if got != b"fastpath":
                raise FastpathError(f"{contender} server echoed {got!r} instead of b'fastpath'")
            self._stop(contender, srv)
        finally:
            srv.kill()
            self._live.pop(srv.pid, None)

    # -- measurement
    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        warm_s, run_s = ctx.pick(LOAD_S, QUICK_LOAD_S)
        values: dict[str, float] = {}
        srv = self._start(contender)
        try:
            self._load(contender, srv, *HEADLINE, 0.0, ctx.pick(*PRIME_S))  # not measured
            for connections, size in POINTS:
                self._wait_idle(contender, srv)
                res = self._load(contender, srv, connections, size, warm_s, run_s)
                p = point_name(connections, size)
                values[f"rps_{p}"] = res.rps
                values[f"p99_{p}"] = res.p99_us
                values[f"cpu_{p}"] = res.cpu_per_mreq
            self._stop(contender, srv)
        finally:
            srv.kill()
            self._live.pop(srv.pid, None)
        return values

    def _wait_idle(self, contender: str, srv: ServerProcess) -> None:
        """Until the previous run's connections are closed, so runs do not overlap."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            st = srv.stats()
            if st.get("connections_open", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise FastpathError(
                    f"{contender} server still has {st['connections_open']} connections open "
                    f"{IDLE_TIMEOUT_S:.0f} s after the load generator exited"
                )
            time.sleep(0.02)

    def _load(self, contender: str, srv: ServerProcess, connections: int, size: int,
              warm_s: float, run_s: float) -> LoadResult:  # fmt: skip
        argv = [
            str(self._bench), "--addr", "127.0.0.1", "--port", str(srv.port),
            "--connections", str(connections), "--size", str(size), "--depth", str(self._depth),
            "--threads", str(self._client_threads), "--warmup", str(warm_s), "--duration", str(run_s),
        ]  # fmt: skip
        pid = int(srv.ready["pid"])
        where = f"{contender}, {connections} connections x {size} B"
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True, preexec_fn=_pin(self._client_cpu),
        )  # fmt: skip
        try:
            t0 = time.monotonic()
            _sleep_until(t0 + warm_s + CPU_MARGIN * run_s)
            cpu0, m0 = cpu_seconds(pid), time.monotonic()
            _sleep_until(t0 + warm_s + (1 - CPU_MARGIN) * run_s)
            cpu1, m1 = cpu_seconds(pid), time.monotonic()
            try:
                out, err = proc.communicate(timeout=warm_s + run_s + 60)
            except subprocess.TimeoutExpired:
                raise FastpathError(f"{where}: fastpath-echo-bench did not finish in time") from None
        except FileNotFoundError:
            raise FastpathError(f"{where}: the {contender} server (pid {pid}) died under load") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        report = load_report(proc, out, err, where)
        rps = float(report["req_per_s"])
        cpu_rate = (cpu1 - cpu0) / (m1 - m0)  # CPU seconds per second
        return LoadResult(rps, float(report["latency_us"]["p99"]), cpu_rate / rps * 1e6)

