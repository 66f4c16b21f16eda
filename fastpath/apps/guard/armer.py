"""The process that arms a guard's SYNPROXY rules on demand: started by attach, stopped by
detach (the loop itself is fastpath/apps/guard/ondemand.py).

One watcher per guarded interface, in a session of its own (a terminal's Ctrl-C does not
reach it), its output in `<state>.ondemand.log` next to the interface's state file, its pid
in the state's options (`ondemand_pid`). It ends by itself when the attachment goes or
stops being on demand, so a namespace deleted under it leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fastpath.bpf import xdp

MODULE = "fastpath.apps.guard.ondemand"
PID_KEY = "ondemand_pid"


def log_path(ifname: str, netns: str | None) -> Path:
    return xdp.state_path(ifname, netns).with_suffix(".ondemand.log")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def watcher_pid(att: xdp.Attachment) -> int | None:
    """The pid of the attachment's running watcher (checked against its command line, so a
    reused pid is not taken for it), or None."""
    pid = att.options.get(PID_KEY)
    if not isinstance(pid, int) or pid <= 0:
        return None
    argv = _cmdline(pid)
    if MODULE not in argv or att.ifname not in argv or _state(pid) in ("", "Z"):
        return None
    return pid


def command(ifname: str, netns: str | None) -> list[str]:
    return [sys.executable, "-m", MODULE, ifname, *(["--netns", netns] if netns else [])]


def ensure(att: xdp.Attachment) -> int:
    """Start the attachment's watcher unless it runs; its pid (also stored in att.options)."""
    pid = watcher_pid(att)
    if pid is not None:
        return pid
    log = log_path(att.ifname, att.netns)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command(att.ifname, att.netns), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    # a long-lived caller (the agent, a test session) reaps it when it ends
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    att.options[PID_KEY] = proc.pid
    return proc.pid


def stop(att: xdp.Attachment, remove_log: bool = False, timeout: float = 3.0) -> None:
    """Stop the attachment's watcher (SIGTERM, then SIGKILL after `timeout`)."""
    pid = watcher_pid(att)
    att.options.pop(PID_KEY, None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _state(pid) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.02)
        if _state(pid) not in ("", "Z"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if remove_log:
        with contextlib.suppress(FileNotFoundError):
            log_path(att.ifname, att.netns).unlink()
