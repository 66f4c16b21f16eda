"""Processes inside a namespace: run to completion, run in the background, kill everything.

Commands go through `ip netns exec`, which besides entering the namespace remounts /sys so
that tools reading /sys/class/net see the namespace's interfaces. Each process starts a new
session, so killing its process group also reaches whatever it forked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

from fastpath.core.namespaces import (
    netns_exists,
    netns_fd_inode,
    open_netns,
    pids_in_netns_inode,
)
from fastpath.errors import CapabilityError, FastpathError

# Every background process still running, so a leak check can find the forgotten ones.
_live: set[NodeProcess] = set()
_live_lock = threading.Lock()


class CommandFailed(FastpathError):
    """A command run in a namespace exited non-zero while the caller asked for check=True."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


class CommandTimeout(FastpathError):
    """A command run in a namespace outlived its timeout and was killed."""

    def __init__(self, message: str, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    if not argv:
        raise FastpathError("no command given to run in the namespace")
    ip = shutil.which("ip")
    if ip is None:
        raise CapabilityError("the `ip` command is missing; install iproute2")
    return [ip, "netns", "exec", netns, *argv]


def _require_netns(netns: str) -> None:
    if not netns_exists(netns):
        raise FastpathError(f"network namespace {netns!r} does not exist; is the lab up?")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def run_in_netns(
    netns: str,
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside `netns` and wait, capturing text output.

    A timeout kills the whole process group and raises CommandTimeout; with check=True a
    non-zero exit raises CommandFailed carrying the result.
    """
    _require_netns(netns)
    full = netns_argv(netns, argv)
    proc = subprocess.Popen(
        full,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        # subprocess.run would kill only the direct child; a forked grandchild holding the
        # pipes would then block communicate() forever.
        _killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise CommandTimeout(
            f"`{' '.join(argv)}` in {netns} did not finish within {timeout:g}s and was killed",
            out,
            err,
        ) from None
    except BaseException:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        # Anything the command left in the background dies with it.
        _killpg(proc.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check and proc.returncode != 0:
        detail = _tail(err) or _tail(out) or "no output"
        raise CommandFailed(f"`{' '.join(argv)}` in {netns} exited with {proc.returncode}: {detail}", result)
    return result


class NodeProcess:
    """A background process in a namespace; output goes to a log file readable at any time.

    stop() is idempotent and always ends the whole process group: SIGTERM, a grace period,
    then SIGKILL. A Lab stops every process it spawned before tearing down.
    """

    def __init__(
        self,
        netns: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        _require_netns(netns)
        self.netns = netns
        self.argv = list(argv)
        fd, self.log_path = tempfile.mkstemp(prefix="fastpath-proc-", suffix=".log")
        os.close(fd)
        self._final_output: str | None = None
        # O_APPEND so the child's writes never race with our reads over a shared offset.
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                netns_argv(netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self._popen.pid
        with _live_lock:
            _live.add(self)

    def __repr__(self) -> str:
        state = "running" if self.poll() is None else f"exited {self.returncode}"
        return f"<NodeProcess pid={self.pid} {self.netns} {' '.join(self.argv)!r} {state}>"

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; raise CommandTimeout (process left running) after `timeout`."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"`{' '.join(self.argv)}` in {self.netns} still running after {timeout:g}s",
                self.output(),
                "",
            ) from None

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        if self._final_output is not None:
            return self._final_output
        try:
            with open(self.log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_output(self, word: str, timeout: float = 30.0) -> str:
        """Wait until the process has printed `word` (a ready line, say); returns the output
        so far. CommandTimeout when it never does, or exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if word in out:
                return out
            if self.poll() is not None:
                break
            time.sleep(0.05)
        out = self.output()
        raise CommandTimeout(
            f"`{' '.join(self.argv[:4])}` in {self.netns} never printed {word!r}: {out[-300:]!r}", out, "")

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            self._popen.send_signal(sig)

    def stop(self, grace: float = 2.0) -> int:
        """End the process and its group; returns the exit status (negative: signal)."""
        if self._final_output is not None:
            return self._popen.returncode
        _killpg(self.pid, signal.SIGTERM)
        try:
            self._popen.wait(grace)
        except subprocess.TimeoutExpired:
            _killpg(self.pid, signal.SIGKILL)
            self._popen.wait()
        # The leader is reaped; its children may still hold the group.
        _killpg(self.pid, signal.SIGKILL)
        self._final_output = self.output()
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass
        with _live_lock:
            _live.discard(self)
        return self._popen.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_processes() -> list[NodeProcess]:
    """Background processes spawned by this Python process and not stopped yet."""
    with _live_lock:
        return [p for p in _live if p.poll() is None]


def kill_netns_processes(netns: str, grace: float = 1.0, timeout: float = 5.0) -> list[int]:
    """End every process in `netns` (SIGTERM, then SIGKILL); returns the pids found."""
    try:
        fd = open_netns(netns)
    except FileNotFoundError:
        return []
    try:
        return kill_processes_in(netns_fd_inode(fd), netns, grace, timeout)
    finally:
        os.close(fd)


def kill_processes_in(
    ident: tuple[int, int], label: str, grace: float = 1.0, timeout: float = 5.0
) -> list[int]:
    """End every process whose network namespace is `ident` (see netns_fd_inode).

    The caller must hold the namespace open: nsfs inode numbers are recycled as soon as a
    namespace is freed, and a stale one would match some unrelated new namespace.
    Raises FastpathError if some survive `timeout` (e.g. stuck in uninterruptible sleep):
    removing the namespace under them would leave it alive and invisible.
    """
    first = pids_in_netns_inode(ident)
    if not first:
        return []
    for pid in first:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = first
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = pids_in_netns_inode(ident)
    deadline = time.monotonic() + timeout
    while left:
        for pid in left:
            _kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise FastpathError(
                f"processes {', '.join(map(str, left))} in {label} survived SIGKILL for "
                f"{timeout:g}s; check them with `ps -o pid,stat,cmd -p {left[0]}`"
            )
        time.sleep(0.02)
        left = pids_in_netns_inode(ident)
    return first


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
