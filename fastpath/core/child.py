"""Supervised children that report as JSON lines: start one, await its events with a
timeout, report one that died with the tail of its log, stop it with a signal ladder, and
always clean up.

fastpath runs long-lived children that speak one protocol on stdout: one JSON object per
line with an "event" key (ready, stats, error, exit, ...); any other stdout line, and all of
stderr, is log text. A :class:`Child` reads both pipes on threads from the moment it starts,
so a child never blocks on a full pipe and an event nobody awaits is still seen
(`on_event`). stop() sends each signal of a ladder (say SIGINT, SIGTERM, then SIGKILL) until
the child exits and records what it sent; close() leaves no process, thread or pipe behind,
whatever happened before.

A child is a command (:meth:`Child.spawn`, in a session of its own so that a terminal's
Ctrl-C reaches fastpath, which then stops the child in order) or a function run in a forked
copy of this process (:class:`ForkedProcess`, for workers that inherit a socket).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

from fastpath.errors import FastpathError

Event = dict[str, Any]
LOG_LINES = 200  # log lines a Child keeps, newest last
JOIN_S = 5.0  # how long close() waits for the process and its reader threads


class ChildError(FastpathError):
    """A supervised child did not do what was awaited."""


class ChildTimeout(ChildError):
    """No awaited line arrived in time; the child may still run."""


class ChildExited(ChildError):
    """The child closed its stdout (it exited) before the awaited line."""

    def __init__(self, message: str, *, returncode: int | None, detail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.detail = detail


class ChildReported(ChildError):
    """The child printed an "error" event; the message is the event's own."""

    def __init__(self, event: Event) -> None:
        super().__init__(str(event.get("message", event)))
        self.event = event


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (a preexec_fn, or a forked body): receive `sig` if the parent dies, so a
    supervisor killed outright leaves no orphan behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)


class ForkedProcess:
    """`body(out)` run in a forked copy of this process: `out` is the write end of the pipe
    the parent reads as the child's stdout, and body's return value its exit status. Offers
    the part of subprocess.Popen a Child uses. Fork every worker before starting a Child on
    any of them: a fork copies only the calling thread, not a reader thread's locks."""

    def __init__(self, body: Callable[[IO[str]], int]) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        # Output still buffered here would be written once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                with os.fdopen(w, "w", buffering=1) as out:
                    code = body(out)
            except Exception as exc:  # noqa: BLE001 - the one line the parent's log gets
                sys.stderr.write(f"worker {os.getpid()}: {exc!r}\n")
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: IO[str] | None = os.fdopen(r, "r", errors="replace")
        self.stderr: IO[str] | None = None  # shared with the parent

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return rc

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


Process = subprocess.Popen[str] | ForkedProcess


def _event(line: str) -> Event | None:
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


class Child:
    """One supervised child speaking JSON lines on stdout. Use as a context manager."""

    def __init__(
        self, proc: Process, *, name: str, on_event: Callable[[Event], None] | None = None,
        log_lines: int = LOG_LINES, own_session: bool = False,
    ) -> None:  # fmt: skip
        self.proc = proc
        self.name = name
        self.own_session = own_session
        self.on_event = on_event
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.log: deque[str] = deque(maxlen=log_lines)  # stderr and other stdout, as they came
        self.output: deque[str] = deque(maxlen=log_lines)  # stdout lines that are no event
        self.stderr: deque[str] = deque(maxlen=log_lines)
        self.signals: list[str] = []  # what stop() sent, by name
        self.killed = False  # stop() had to SIGKILL it
        self._ended = False
        self._threads: list[tuple[threading.Thread, IO[str]]] = []
        for stream, read in ((proc.stdout, self._read_stdout), (proc.stderr, self._read_stderr)):
            if stream is not None:
                thread = threading.Thread(target=read, args=(stream,), daemon=True)
                thread.start()
                self._threads.append((thread, stream))

    @classmethod
    def spawn(
        cls, argv: Sequence[str], *, name: str | None = None, env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        on_event: Callable[[Event], None] | None = None, log_lines: int = LOG_LINES,
    ) -> Child:  # fmt: skip
        """Run `argv` with stdout (and by default stderr) piped to us, in its own session."""
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            text=True, errors="replace", env=env, preexec_fn=preexec_fn,
            start_new_session=True,
        )  # fmt: skip
        return cls(proc, name=name or argv[0], on_event=on_event, log_lines=log_lines,
                   own_session=True)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ended(self) -> bool:
        """True once every event was taken and the child's stdout is closed."""
        return self._ended

    # -- reading
    def _read_stdout(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                line = raw.strip()
                if not line:
                    continue
                event = _event(line)
                if event is None:
                    self.output.append(line)
                    self.log.append(line)
                    continue
                if event["event"] == "error":
                    self.log.append(f"error: {event.get('message')}")
                if self.on_event is not None:
                    self.on_event(event)
                self.events.put(event)
        finally:
            self.events.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip()
            if line:
                self.stderr.append(line)
                self.log.append(line)

    def next_event(self, timeout: float) -> Event | None:
        """The next event within `timeout` s; None on timeout or once the child's stdout
        has ended (then `ended` is True)."""
        if self._ended:
            return None
        try:
            event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if event is None:
            self._ended = True
        return event

    def expect(self, event: str, timeout: float, *, errors: bool = False) -> Event:
        """The next `event` line; other events are passed over. Raises ChildTimeout after
        `timeout` s, ChildExited when the child's stdout ends first, and with `errors`
        ChildReported on an "error" event."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ended:
                raise self._exited(event)
            left = deadline - time.monotonic()
            got = self.next_event(left)  # at or past the deadline, a line already read counts
            if got is None:
                if left <= 0 and not self._ended:
                    raise ChildTimeout(f"{self.name}: no '{event}' line within {timeout:.0f} s")
                continue
            if errors and got["event"] == "error":
                raise ChildReported(got)
            if got["event"] == event:
                return got

    def _exited(self, awaited: str) -> ChildExited:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=JOIN_S)
        self._join()  # the whole of stderr, for the detail
        rc = self.proc.poll()
        if self.stderr:
            detail = self.stderr[-1]
        else:
            detail = f"exit status {rc}" if rc is not None else "it closed its stdout"
        return ChildExited(f"{self.name} exited before '{awaited}': {detail}", returncode=rc,
                           detail=detail)  # fmt: skip

    # -- stopping
    def stop(self, ladder: Sequence[tuple[int | None, float]]) -> int:
        """Send each (signal, grace seconds) of `ladder` in turn until the child exits; a
        None signal only waits (the child was told to stop some other way). If it outlives
        the ladder, SIGKILL it (`killed`). Returns its exit status."""
        proc = self.proc
        for sig, grace in ladder:
            if proc.poll() is not None:
                break
            if sig is not None:
                proc.send_signal(sig)
                self.signals.append(signal.Signals(sig).name)
            try:
                proc.wait(timeout=max(0.0, grace))
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            self.killed = True
            self._kill()
        rc = proc.wait()
        self._join()
        return rc

    def _kill(self) -> None:
        if self.own_session:  # the whole tree it started, e.g. a CLI and its server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def _join(self) -> None:
        for thread, _ in self._threads:
            thread.join(timeout=JOIN_S)

    def close(self) -> None:
        """SIGKILL whatever still runs, reap it, and close the pipes once their readers
        are done. Safe to call more than once."""
        self._kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=JOIN_S)
        self._join()
        for thread, stream in self._threads:
            # Closing a pipe under a blocked reader thread would deadlock on its lock.
            if not thread.is_alive():
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
