"""The machine a benchmark ran on, recorded next to every result so numbers stay comparable."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastpath import __version__
from fastpath.errors import FastpathError

REPO_ROOT = Path(__file__).resolve().parents[2]


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 "model name", Arm "Hardware"/"CPU part")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Hardware", "Model", "cpu model", "CPU part"):
        if key in fields:
            return fields[key]
    return platform.processor() or platform.machine() or "unknown"


def cpu_busy_ns(cpu: int | None = None) -> int:
    """Busy time so far, in ns, of one CPU or (None) of all: every state but idle and
    iowait, from /proc/stat (guest time is already part of user time, so not added again)."""
    label = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as fh:
        for line in fh:
            fields = line.split()
            if fields and fields[0] == label:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
                ticks = user + nice + system + irq + softirq + steal
                return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    raise FastpathError(f"no {label} line in /proc/stat")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def capture(now: datetime | None = None) -> dict[str, Any]:
    """Kernel, CPU, core counts, frequency governor, git state, time and fastpath version."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "timestamp": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "nproc": usable,
        "cpu_count": os.cpu_count() or 0,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": platform.python_version(),
        "fastpath_version": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }
