"""Find, run and supervise the native `fastpath-uring-echo` binary (uring/echo_server.c).

Both echo engines speak the same line protocol on stdout: one JSON ``ready`` line once
the listeners are bound (with the port actually bound, so ``--port 0`` works), JSON
``stats`` lines on SIGUSR1 / ``--stats-interval``, and a final ``stats`` line (with
``"final": true``) after SIGINT/SIGTERM drained and closed every connection.
:class:`ServerProcess` drives any command that speaks it, as a fastpath.core.child.Child.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fastpath.core.child import Child, ChildExited, die_with_parent
from fastpath.errors import CapabilityError, FastpathError

BINARY = "fastpath-uring-echo"
REPO_URING_DIR = Path(__file__).resolve().parents[2] / "uring"

# Option ranges shared by both engines; the C binary enforces the same ones.
PORT_RANGE = (0, 65535)
THREADS_RANGE = (1, 256)
BUFFERS_RANGE = (16, 32768)  # power of two
BUFFER_SIZE_RANGE = (64, 1 << 20)
MAX_POOL_BYTES = 1 << 30
DRAIN_MS_RANGE = (0, 60000)
DEFAULT_PORT = 7777
DEFAULT_BUFFERS = 4096
DEFAULT_BUFFER_SIZE = 4096
DEFAULT_CONN_MAX_BYTES = 256 * 1024
DEFAULT_DRAIN_MS = 2000


def find_binary(name: str = BINARY) -> Path:
    """The installed binary (venv PATH first), else the one built in the source tree."""
    candidates = [shutil.which(name), Path(sys.prefix) / "bin" / name, REPO_URING_DIR / "build" / name]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK) and Path(cand).is_file():
            return Path(cand)
    raise CapabilityError(
        f"{name} not found on PATH, in {sys.prefix}/bin or uring/build",
        fix="run `make setup` (or `make -C uring install PREFIX=.venv`)",
    )


@dataclass
class EchoOptions:
    """What both engines accept; validate() raises one clear line per bad value."""

    addr: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int = 1
    sqpoll: bool = False
    buffers: int = DEFAULT_BUFFERS
    buffer_size: int = DEFAULT_BUFFER_SIZE
    conn_max_bytes: int | None = None
    stats_interval: float = 0.0
    drain_ms: int = DEFAULT_DRAIN_MS

    def validate(self) -> EchoOptions:
        import ipaddress

        try:
            ipaddress.ip_address(self.addr.strip("[]"))
        except ValueError:
            raise FastpathError(
                f"--addr {self.addr}: not an IPv4 or IPv6 address (e.g. 127.0.0.1, ::1, 0.0.0.0)"
            ) from None
        _check_range("--port", self.port, PORT_RANGE)
        _check_range("--threads", self.threads, THREADS_RANGE)
        _check_range("--buffers", self.buffers, BUFFERS_RANGE)
        if self.buffers & (self.buffers - 1):
            raise FastpathError(
                f"--buffers {self.buffers}: must be a power of two in "
                f"{BUFFERS_RANGE[0]}..{BUFFERS_RANGE[1]}"
            )
        _check_range("--buffer-size", self.buffer_size, BUFFER_SIZE_RANGE)
        pool = self.buffers * self.buffer_size
        if pool > MAX_POOL_BYTES:
            raise FastpathError(
                f"--buffers x --buffer-size = {pool} bytes per thread exceeds {MAX_POOL_BYTES}"
            )
        if self.conn_max_bytes is not None and not (
            self.buffer_size <= self.conn_max_bytes <= pool
        ):
            raise FastpathError(
                f"--conn-max-bytes {self.conn_max_bytes}: must lie in buffer-size..pool size "
                f"({self.buffer_size}..{pool})"
            )
        if not 0 <= self.stats_interval <= 86400:
            raise FastpathError(f"--stats-interval {self.stats_interval}: expected 0..86400 s")
        _check_range("--drain-ms", self.drain_ms, DRAIN_MS_RANGE)
        return self

    @property
    def effective_conn_max_bytes(self) -> int:
        if self.conn_max_bytes is not None:
            return self.conn_max_bytes
        return max(self.buffer_size, min(DEFAULT_CONN_MAX_BYTES, self.buffers * self.buffer_size // 4))

    def native_argv(self, binary: Path | str | None = None) -> list[str]:
        argv = [
            str(binary or find_binary()),
            "--addr", self.addr,
            "--port", str(self.port),
            "--threads", str(self.threads),
            "--buffers", str(self.buffers),
            "--buffer-size", str(self.buffer_size),
            "--drain-ms", str(self.drain_ms),
        ]  # fmt: skip
        if self.sqpoll:
            argv.append("--sqpoll")
        if self.conn_max_bytes is not None:
            argv += ["--conn-max-bytes", str(self.conn_max_bytes)]
        if self.stats_interval:
            argv += ["--stats-interval", str(self.stats_interval)]
        return argv


def _check_range(name: str, value: int, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise FastpathError(f"{name} {value}: out of range {lo}..{hi}")


class ServerProcess:
    """An echo server child speaking the ready/stats line protocol (a core.child.Child).

    Use as a context manager: the child is killed on exit whatever happened.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> None:
        self.argv = list(argv)
        self.ready: dict[str, Any] = {}
        self.final_stats: dict[str, Any] | None = None
        # start_new_session (Child.spawn): kill() reaches the whole tree (CLI + native binary)
        self.child = Child.spawn(self.argv, env=env, preexec_fn=preexec_fn, stderr=stderr,
                                 on_event=self._on_event)  # fmt: skip
        try:
            self.ready = self._expect("ready", ready_timeout)
        except BaseException:
            self.kill()
            raise

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "stats" and event.get("final"):
            self.final_stats = event

    def _expect(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            return self.child.expect(event, timeout)
        except ChildExited as exc:
            raise FastpathError(f"echo server exited before '{event}': {exc.detail}") from None

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def address(self) -> tuple[str, int]:
        return str(self.ready["addr"]), self.port

    @property
    def other_output(self) -> list[str]:
        """Lines on stdout that were not JSON events."""
        return list(self.child.output)

    @property
    def stderr_text(self) -> str:
        return "\n".join(self.child.stderr)

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask for counters (SIGUSR1) and return the next stats line."""
        self.child.proc.send_signal(signal.SIGUSR1)
        return self._expect("stats", timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal, wait for exit within `timeout`, return the exit status; kills on timeout."""
        rc = self.child.stop([(sig, timeout)])
        if self.child.killed:
            raise FastpathError(f"echo server ignored signal {sig} for {timeout} s; killed")
        return rc

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it leads its own session), reap it,
        and close the pipes once their readers have seen EOF."""
        self.child.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_native(options: EchoOptions, *, out: IO[str] | None = None) -> int:
    """`fastpath uring serve --engine native`: run the binary in the foreground, relay its
    JSON lines, forward SIGINT/SIGTERM/SIGUSR1, and exit with its status."""
    from fastpath.output import info

    out = out or sys.stdout
    argv = options.validate().native_argv()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,
    )
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in forwarded}
    ready = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if not ready and line.startswith('{"event":"ready"'):
                ready = True
                r = json.loads(line)
                info(
                    f"echo server (native, pid {r['pid']}) on {r['addr']} port {r['port']}, "
                    f"{r['threads']} thread(s), io_uring setup {r['setup']}; "
                    "SIGUSR1 prints stats, Ctrl-C stops"
                )
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc < 0:
        raise FastpathError(f"{argv[0]} died from signal {-rc}")
    return rc
