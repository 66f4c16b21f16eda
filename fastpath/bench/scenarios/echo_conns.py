"""`echo-conns`: what one echoed request costs the server as concurrent connections grow
from 1 to 10 000 (a sweep: each contender is a connection count).

At every point, each server is started fresh and pinned to one core, the load generator
(fastpath-echo-bench, one thread, one 64-byte message in flight per connection, every
reply checked byte for byte) to another:
- `native`: fastpath-uring-echo, the io_uring server (uring/echo_server.c);
- `epoll`: fastpath-epoll-echo, the level-triggered epoll server (uring/epoll_echo.c).

CPU per request = the server's CPU time (user + system, every thread, to the nanosecond
from /proc/<pid>/task/*/schedstat: the clock ticks of /proc/<pid>/stat are too coarse at
one connection) over a window inside the measured run, divided by the requests it echoed in that same window
(its own bytes_out counter / message size): both are read at the same two instants, so
the number does not depend on how the client's clock lines up with ours.

Premise, checked every run: every connection was accepted and open through the window,
the load generator verified every reply and lost no connection, and the server sent
back exactly the bytes it received.

10 000 connections need two descriptors each (client and server are separate processes,
one each) and 10 000 ephemeral ports: setup raises RLIMIT_NOFILE for the run when it is
too low, checks the port range, and teardown restores the limit.

Time: 5 points x 2 servers x (1 warm-up + 5 repeats) x 2-6 s, about 3 minutes;
--quick runs each point once with 0.4 s windows (~35 s).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastpath.bench import BenchContext, Metric, Scenario, register_scenario
from fastpath.bench.scenarios.echo import load_report, server_argv
from fastpath.errors import FastpathError
from fastpath.uring.native import ServerProcess, find_binary

CONNECTIONS = (1, 10, 100, 1_000, 10_000)
SERVERS = ("native", "epoll")
SIZE = 64  # bytes per message: small, so the cost measured is per request, not per byte
# (warm-up, measured) seconds of each load run, full and --quick.
LOAD_S = (0.3, 1.2)
QUICK_LOAD_S = (0.2, 0.4)
CPU_MARGIN = 0.1  # the CPU window starts and ends this fraction inside the measured run
# The load generator runs this much longer than our window needs (seconds, plus per
# connection): we start our clock when the server has accepted every connection, which on
# a busy machine can be seconds after the generator, connected, started its own.
TAIL_S, TAIL_PER_CONN_S = 1.0, 4e-4


MIN_REQUESTS = 20  # echoed inside the window, or the CPU per request is noise


def tail_s(connections: int) -> float:
    return TAIL_S + TAIL_PER_CONN_S * connections
CONNECT_TIMEOUT_S = 30.0  # for every connection to be accepted
STOP_TIMEOUT_S = 10.0
FD_HEADROOM = 256  # descriptors beyond one per connection (listeners, rings, pipes)
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def cpu_seconds(pid: int) -> float:
    """On-CPU time (user + system) of every thread of `pid`, in seconds, to the nanosecond.

    /proc/<pid>/task/*/schedstat rather than utime + stime from /proc/<pid>/stat: those
    count in clock ticks (10 ms), as coarse as the whole window's CPU at 1 connection.
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def ephemeral_ports() -> int:
    with open(PORT_RANGE) as f:
        lo, hi = (int(x) for x in f.read().split())
    return hi - lo + 1


@dataclass(frozen=True)
class Point:
    cpu_us: float  # server CPU µs per echoed request
    rps: float  # requests echoed per second (server's count)
    batch: float  # completions per io_uring enter / events per epoll_wait, in the window


@register_scenario
class EchoConns(Scenario):
    name = "echo-conns"
    description = (
        "server CPU µs per echoed request vs concurrent connections (1 to 10k, 64-byte "
        "messages, one in flight per connection): fastpath io_uring echo vs C epoll echo"
    )
    sweep = "connections"
    metrics = [
        Metric("cpu_native", "server CPU µs/request", "lower"),
        Metric("cpu_epoll", "server CPU µs/request", "lower"),
        Metric("rps_native", "req/s", "higher"),
        Metric("rps_epoll", "req/s", "higher"),
        # Work found per wake-up: completions per io_uring_enter, events per epoll_wait.
        Metric("batch_native", "completions/enter", "higher"),
        Metric("batch_epoll", "events/wait", "higher"),
    ]
    baseline = "1"
    repeat, quick_repeat, warmup = 5, 1, 1

    def contenders(self) -> list[str]:
        return [str(c) for c in CONNECTIONS]

    def setup(self, ctx: BenchContext) -> None:
        self._live: dict[int, ServerProcess] = {}
        self._turn = 0
        # Any binary missing (CapabilityError): the scenario is unavailable.
        self._bench = find_binary("fastpath-echo-bench")
        find_binary()
        find_binary("fastpath-epoll-echo")
        need = max(CONNECTIONS) + FD_HEADROOM
        self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft, hard = self._nofile
        if soft < need:
            # Raising the hard limit needs CAP_SYS_RESOURCE; children inherit both.
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
            except (ValueError, OSError) as exc:
                raise FastpathError(
                    f"{max(CONNECTIONS)} connections need {need} open files per process; "
                    f"RLIMIT_NOFILE is {soft}/{hard} and cannot be raised ({exc})"
                ) from None
            ctx.log(f"echo-conns: RLIMIT_NOFILE raised from {soft}/{hard} to {need} for this run")
        ports = ephemeral_ports()
        if ports < max(CONNECTIONS) + 1000:
            raise FastpathError(
                f"{max(CONNECTIONS)} connections need as many ephemeral ports; {PORT_RANGE} "
                f"offers {ports}: widen it (sysctl net.ipv4.ip_local_port_range)"
            )
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2:
            self._server_cpu: int | None = allowed[0]
            self._client_cpu: int | None = allowed[1]
            ctx.log(f"echo-conns: servers pinned to CPU {allowed[0]}, load generator to CPU {allowed[1]}")
        else:
            self._server_cpu = self._client_cpu = None
            ctx.log("echo-conns: fewer than 2 usable CPUs; server and load generator share one")

    def teardown(self, ctx: BenchContext) -> None:
        for srv in list(getattr(self, "_live", {}).values()):
            srv.kill()
        self._live = {}
        nofile = getattr(self, "_nofile", None)
        if nofile is not None and resource.getrlimit(resource.RLIMIT_NOFILE) != nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        connections = int(contender)
        warm_s, run_s = ctx.pick(LOAD_S, QUICK_LOAD_S)
        values: dict[str, float] = {}
        # Alternate which server goes first, so neither always runs on a warmer machine.
        self._turn += 1
        for server in SERVERS if self._turn % 2 else SERVERS[::-1]:
            p = self._run(server, connections, warm_s, run_s)
            values[f"cpu_{server}"] = p.cpu_us
            values[f"rps_{server}"] = p.rps
            values[f"batch_{server}"] = p.batch
        return values

    def _run(self, server: str, connections: int, warm_s: float, run_s: float) -> Point:
        where = f"{server} server, {connections} connections"
        srv = ServerProcess(server_argv(server), preexec_fn=_pin(self._server_cpu))
        self._live[srv.pid] = srv
        try:
            point = self._load(srv, where, connections, warm_s, run_s)
            final = self._stop(srv, where)
        finally:
            srv.kill()
            self._live.pop(srv.pid, None)
        if final.get("bytes_out") != final.get("bytes_in"):
            raise FastpathError(
                f"{where}: received {final.get('bytes_in')} bytes but echoed {final.get('bytes_out')}"
            )
        return point

    def _load(self, srv: ServerProcess, where: str, connections: int, warm_s: float,
              run_s: float) -> Point:  # fmt: skip
        argv = [
            str(self._bench), "--addr", "127.0.0.1", "--port", str(srv.port),
            "--connections", str(connections), "--size", str(SIZE), "--depth", "1",
            "--threads", "1", "--warmup", str(warm_s), "--duration", str(run_s + tail_s(connections)),
        ]  # fmt: skip
        pid = int(srv.ready["pid"])
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True, preexec_fn=_pin(self._client_cpu),
        )  # fmt: skip
        try:
            # The load generator starts its clock once every connection is up: so do we.
            t0 = self._wait_connected(srv, proc, where, connections)
            _sleep_until(t0 + warm_s + CPU_MARGIN * run_s)
            s0, cpu0, m0 = srv.stats(), cpu_seconds(pid), time.monotonic()
            _sleep_until(t0 + warm_s + (1 - CPU_MARGIN) * run_s)
            s1, cpu1, m1 = srv.stats(), cpu_seconds(pid), time.monotonic()
            # Too few requests to divide by (a starved client on a busy machine): widen the
            # window into the load generator's tail, which it is sure to still be running.
            latest = t0 + warm_s + run_s + TAIL_S / 2
            while (s1["bytes_out"] - s0["bytes_out"]) / SIZE < MIN_REQUESTS and time.monotonic() < latest:
                time.sleep(0.05)
                s1, cpu1, m1 = srv.stats(), cpu_seconds(pid), time.monotonic()
            try:
                out, err = proc.communicate(timeout=warm_s + run_s + tail_s(connections) + 60)
            except subprocess.TimeoutExpired:
                raise FastpathError(f"{where}: fastpath-echo-bench did not finish in time") from None
        except FileNotFoundError:
            raise FastpathError(f"{where}: the server (pid {pid}) died under load") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        load_report(proc, out, err, where)  # raises when the load generator failed
        for st in (s0, s1):
            if st.get("connections_open") != connections or st.get("connections_accepted") != connections:
                raise FastpathError(
                    f"{where}: {st.get('connections_open')} of {connections} connections open "
                    f"({st.get('connections_accepted')} accepted) inside the measured window"
                )
        requests = (s1["bytes_out"] - s0["bytes_out"]) / SIZE
        if requests < MIN_REQUESTS:
            raise FastpathError(
                f"{where}: only {requests:.0f} requests echoed inside the measured window "
                f"({m1 - m0:.2f} s; at least {MIN_REQUESTS} needed): is the machine overloaded?"
            )
        waits_key, events_key = ("enters", "cqes") if "enters" in s1 else ("epoll_waits", "events")
        waits = s1[waits_key] - s0[waits_key]
        batch = (s1[events_key] - s0[events_key]) / waits if waits > 0 else 0.0
        return Point((cpu1 - cpu0) / requests * 1e6, requests / (m1 - m0), batch)

    def _wait_connected(self, srv: ServerProcess, proc: subprocess.Popen[str], where: str,
                        connections: int) -> float:  # fmt: skip
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            st = srv.stats()
            if st.get("connections_open") == connections:
                return time.monotonic()
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                detail = f": {err[-1]}" if err else f" (exit status {proc.returncode})"
                raise FastpathError(
                    f"{where}: the load generator ended before the server had accepted every "
                    f"connection ({st.get('connections_open')} open){detail}; is the machine "
                    "overloaded?"
                )
            if time.monotonic() > deadline:
                raise FastpathError(
                    f"{where}: only {st.get('connections_open')} connections open after "
                    f"{CONNECT_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.01)

    def _stop(self, srv: ServerProcess, where: str) -> dict[str, Any]:
        """SIGTERM, wait, return the final stats line (counters over the server's life)."""
        rc = srv.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
        if rc != 0:
            lines = srv.stderr_text.strip().splitlines()
            detail = f": {lines[-1]}" if lines else ""
            raise FastpathError(f"{where}: exited with status {rc} on SIGTERM{detail}")
        if srv.final_stats is None:
            raise FastpathError(f"{where}: no final stats line at exit")
        return srv.final_stats

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        return explain_conns(medians)


def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


def explain_conns(medians: dict[str, dict[str, float]]) -> list[str]:
    """Where CPU per request stops being flat, per server, and what the batch size says."""
    points = sorted((int(c), m) for c, m in medians.items())
    if len(points) < 2:
        return []
    out: list[str] = []
    for server in SERVERS:
        cpu = [(c, m[f"cpu_{server}"]) for c, m in points]
        batch = [(c, m[f"batch_{server}"]) for c, m in points]
        lo_i = min(range(len(cpu)), key=lambda i: cpu[i][1])
        lo_c, lo = cpu[lo_i]
        first_c, first = cpu[0]
        last_c, last = cpu[-1]
        unit = "completions per enter" if server == "native" else "events per epoll_wait"
        text = (
            f"{server}: {first:.2f} µs/request at {first_c} connection(s), lowest {lo:.2f} at "
            f"{lo_c}, {last:.2f} at {last_c}; {unit} went from {batch[0][1]:.1f} to {batch[-1][1]:.1f}."
        )
        if first > 1.3 * lo:
            text += (
                " With few connections every request pays a full sleep/wake-up of the "
                "server (about one request per wake-up), so the cost falls as more "
                "connections make each wake-up find more work."
            )
        if last > 1.3 * lo:
            knee = next(c for c, v in cpu[lo_i + 1:] if v > 1.3 * lo)
            b_lo, b_last = batch[lo_i][1], batch[-1][1]
            if b_last >= 0.9 * b_lo:
                text += (
                    f" From {knee} connections it rises again although each wake-up finds as "
                    f"much work ({b_lo:.1f} -> {b_last:.1f}), so the extra is in each request, "
                    f"most likely cache misses: the kernel state of that many sockets (a few "
                    f"KiB each) no longer stays in the CPU caches."
                )
            else:
                text += (
                    f" From {knee} connections it rises again, and each wake-up finds less work "
                    f"({b_lo:.1f} -> {b_last:.1f}): the load generator, not the server, limits "
                    f"how many requests are ready at once."
                )
        elif last_c > lo_c:
            text += f" It stays within 30 % of its lowest up to {last_c} connections."
        out.append(text)
    return out
