"""`fastpath uring serve --engine python`: one echo worker (echo.py) in this process, or with
``--threads N`` N forked worker processes supervised as fastpath.core.child Children.

The workers of a forked server each own a ring and an SO_REUSEPORT listener and report on a
pipe in the stdout line protocol; this process adds their ready and stats lines up into one
(the native server's shape), turns SIGUSR1 and ``--stats-interval`` into a stats request to
every worker, and on SIGINT/SIGTERM lets them drain, then reports their final counts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, Any

from fastpath.core.child import Child, ChildError, ChildReported, ForkedProcess, die_with_parent
from fastpath.errors import FastpathError
from fastpath.uring.echo import COUNTERS, EchoWorker, open_listeners, print_json, write_json
from fastpath.uring.native import EchoOptions

Emit = Callable[[dict[str, Any]], None]
READY_TIMEOUT_S = 15.0  # for every worker to set up its ring and report ready
STATS_TIMEOUT_S = 5.0  # for every worker to answer a stats request
JOIN_SLACK_S = 3.0  # beyond the drain, how long the parent waits for worker processes


def _ready_line(
    opts: EchoOptions, port: int, setup: str, threads: int, core: str
) -> dict[str, Any]:
    return {
        "event": "ready",
        "engine": "python",
        "addr": opts.addr.strip("[]"),
        "port": port,
        "threads": threads,
        "pid": os.getpid(),
        "setup": setup,
        "echo_core": core,
        "buffers": opts.buffers,
        "buffer_size": opts.buffer_size,
        "conn_max_bytes": opts.effective_conn_max_bytes,
        "drain_ms": opts.drain_ms,
    }


def sum_stats(parts: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    """Add up per-worker stats lines into one, as the native server reports them."""
    out: dict[str, Any] = {"event": "stats", "final": final, "engine": "python"}
    out["uptime_s"] = max((p.get("uptime_s", 0.0) for p in parts), default=0.0)
    out["threads"] = len(parts)
    for key in COUNTERS:
        out[key] = sum(int(p.get(key, 0)) for p in parts)
    out["connections_open"] = out["connections_accepted"] - out["connections_closed"]
    out["cqes_per_enter"] = round(out["cqes"] / out["enters"], 2) if out["enters"] else 0.0
    return out


def serve_python(opts: EchoOptions, *, out: IO[str] | None = None) -> int:
    """`fastpath uring serve --engine python`: serve until SIGINT/SIGTERM, return 0."""
    opts.validate()
    listeners, port = open_listeners(opts)
    emit: Emit = print_json if out is None else functools.partial(write_json, out)
    try:
        if opts.threads == 1:
            return _serve_here(opts, listeners[0], port, emit)
        return _serve_forked(opts, listeners, port, emit)
    finally:
        for s in listeners:
            s.close()


def _serve_here(opts: EchoOptions, listener: socket.socket, port: int, emit: Emit) -> int:
    from fastpath.output import info

    worker = EchoWorker(opts, listener)
    worker.emit = emit
    try:
        worker.install_signals()

        def ready() -> None:
            emit(_ready_line(opts, port, worker.setup_text, 1, worker.core.name))
            info(
                f"echo server (python, pid {os.getpid()}) on {opts.addr} port {port}, "
                f"io_uring setup {worker.setup_text}; SIGUSR1 prints stats, Ctrl-C stops"
            )

        worker.serve(ready)
        emit(worker.snapshot(final=True))
    finally:
        worker.close()
    return 0


# --- N worker processes ---------------------------------------------------------------------


def _worker(opts: EchoOptions, listener: socket.socket, out: IO[str]) -> int:
    """Body of one worker process: report on `out` (a pipe) instead of stdout."""
    try:
        worker = EchoWorker(opts, listener)
    except FastpathError as exc:
        write_json(out, {"event": "error", "message": str(exc)})
        return 1
    worker.emit = functools.partial(write_json, out)
    worker.opts = EchoOptions(**{**opts.__dict__, "stats_interval": 0.0})  # the parent's job
    try:
        worker.install_signals()
        worker.serve(lambda: worker.emit(
            {"event": "ready", "setup": worker.setup_text, "echo_core": worker.core.name}
        ))  # fmt: skip
        worker.emit(worker.snapshot(final=True))
    finally:
        worker.close()
    return 0


def _fork_workers(opts: EchoOptions, listeners: list[socket.socket]) -> list[Child]:
    """One forked worker per listener, pinned to a core each; every fork comes before any
    Child starts its reader threads."""
    procs: list[ForkedProcess] = []

    def body(index: int, siblings: list[int], out: IO[str]) -> int:
        die_with_parent()
        for fd in siblings:  # the pipes of the workers forked before this one
            os.close(fd)
        for j, other in enumerate(listeners):
            if j != index:
                other.close()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {index % (os.cpu_count() or 1)})
        return _worker(opts, listeners[index], out)

    try:
        for i in range(len(listeners)):
            siblings = [p.stdout.fileno() for p in procs if p.stdout is not None]
            procs.append(ForkedProcess(functools.partial(body, i, siblings)))
    except BaseException:
        for p in procs:
            Child(p, name=f"python echo worker {p.pid}").close()
        raise
    return [Child(p, name=f"python echo worker {p.pid}") for p in procs]


class _StopSignals:
    """SIGINT/SIGTERM request a stop, SIGUSR1 a stats line; wait() returns as soon as one
    arrives (a wake-up pipe: select() would otherwise resume its timeout)."""

    def __init__(self) -> None:
        self.stop = False
        self.stats = False

    def _on_stop(self, _s: int, _f: FrameType | None) -> None:
        self.stop = True

    def _on_stats(self, _s: int, _f: FrameType | None) -> None:
        self.stats = True

    def __enter__(self) -> _StopSignals:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_stop),
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_stop),
            signal.SIGUSR1: signal.signal(signal.SIGUSR1, self._on_stats),
        }
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return self

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._wake_r)
        os.close(self._wake_w)


def _collect(children: Sequence[Child], event: str, timeout: float) -> dict[int, dict[str, Any]]:
    """Each worker's next `event` line within `timeout` s in all, by pid; a worker that is
    silent or gone is left out, one that reports an error raises it."""
    deadline = time.monotonic() + timeout
    got: dict[int, dict[str, Any]] = {}
    for child in children:
        try:
            got[child.pid] = child.expect(event, deadline - time.monotonic(), errors=True)
        except ChildReported:
            raise
        except ChildError:
            continue
    return got


def _signal_all(children: Sequence[Child], sig: int) -> None:
    for child in children:
        child.proc.send_signal(sig)


def _await_ready(children: Sequence[Child]) -> dict[str, Any]:
    ready = _collect(children, "ready", READY_TIMEOUT_S)
    if len(ready) != len(children):
        raise FastpathError(f"python echo workers did not start within {READY_TIMEOUT_S:.0f} s")
    return ready[children[0].pid]


def _relay_until_stopped(
    children: Sequence[Child], opts: EchoOptions, signals: _StopSignals, emit: Emit
) -> None:
    """Until SIGINT/SIGTERM: summed stats on SIGUSR1 and every ``--stats-interval``."""
    latest: dict[int, dict[str, Any]] = {}
    next_stats = time.monotonic() + opts.stats_interval if opts.stats_interval else None
    while not signals.stop:
        timeout = 1.0 if next_stats is None else max(0.0, next_stats - time.monotonic())
        signals.wait(min(timeout, 1.0))
        if any(child.proc.poll() is not None for child in children):
            raise FastpathError("a python echo worker process died")
        due = next_stats is not None and time.monotonic() >= next_stats
        if signals.stats or due:
            signals.stats = False
            if next_stats is not None and due:
                next_stats += opts.stats_interval
            _signal_all(children, signal.SIGUSR1)
            latest.update(_collect(children, "stats", STATS_TIMEOUT_S))
            emit(sum_stats(list(latest.values()), final=False))


def _drain_timeout(opts: EchoOptions) -> float:
    return opts.drain_ms / 1000 + JOIN_SLACK_S


def _stop_workers(children: Sequence[Child], opts: EchoOptions) -> bool:
    """SIGTERM every worker at once, wait for all within the drain time, SIGKILL any left,
    release every pipe. True when each exited 0 on its own."""
    _signal_all(children, signal.SIGTERM)
    deadline = time.monotonic() + _drain_timeout(opts)
    clean = True
    for child in children:
        rc = child.stop([(None, deadline - time.monotonic())])
        clean = clean and rc == 0
        child.close()
    return clean


def _serve_forked(
    opts: EchoOptions, listeners: list[socket.socket], port: int, emit: Emit
) -> int:
    """Fork the workers, relay their lines until SIGINT/SIGTERM, drain; 1 if a worker did
    not exit cleanly."""
    from fastpath.output import info

    children = _fork_workers(opts, listeners)
    with _StopSignals() as signals:
        try:
            first = _await_ready(children)
            emit(_ready_line(opts, port, first["setup"], len(children), first["echo_core"]))
            info(
                f"echo server (python, {len(children)} worker processes, pid {os.getpid()}) on "
                f"{opts.addr} port {port}, io_uring setup {first['setup']}; SIGUSR1 prints "
                "stats, Ctrl-C stops"
            )
            _relay_until_stopped(children, opts, signals, emit)
            _signal_all(children, signal.SIGTERM)
            finals = _collect(children, "stats", _drain_timeout(opts))
            emit(sum_stats([v for v in finals.values() if v.get("final")], final=True))
        finally:
            clean = _stop_workers(children, opts)
    return 0 if clean else 1
