"""What every doctor probe shares: the `Check` row and its `Status`, the kernel release and
module support under a `root` directory (probes read /proc and /sys through a
`fastpath.dpdk.sysfs.Host` on that root, so tests point them at a fake tree), the runner for
external tools (`_run`, `_pkg_config`) and the wording of fixes.

It probes nothing itself; kernel, session, xdp, uring, dpdk and net do, cli runs them.
"""

from __future__ import annotations

import errno
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastpath.dpdk.sysfs import Host

ROOT = Path("/")
SETUP_HOST = "scripts/setup-host.sh"


# ---------------------------------------------------------------------------------------
# Result type


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One row of the report: what was measured, and for anything not OK, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status is not Status.OK and not self.fix:
            raise ValueError(f"check {self.name!r} is {self.status} but names no fix")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def usable(self) -> bool:
        """True unless FAIL: a WARN row still works, with a caveat."""
        return self.status is not Status.FAIL

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        return out


def _ok(name: str, detail: str, **data: Any) -> Check:
    return Check(name, Status.OK, detail, None, data)


def _warn(name: str, detail: str, fix: str, **data: Any) -> Check:
    return Check(name, Status.WARN, detail, fix, data)


def _fail(name: str, detail: str, fix: str, **data: Any) -> Check:
    return Check(name, Status.FAIL, detail, fix, data)


# ---------------------------------------------------------------------------------------
# Facts about the kernel under `root` that several probes need


def _kernel_release(root: Path) -> str:
    return Host(root).read_or("/proc/sys/kernel/osrelease", "") or platform.release()


def parse_kernel_version(release: str) -> tuple[int, int, int]:
    """'6.18.44-fc-v669' -> (6, 18, 44); missing parts are 0."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if match is None:
        raise ValueError(f"unrecognised kernel release {release!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _has_module_support(root: Path) -> bool:
    return Host(root).exists("/proc/modules")


def _kernel_feature_fix(root: Path, *features: tuple[str, str]) -> str:
    """How to get kernel features, given as (CONFIG_ option, module name) pairs."""
    configs = " and ".join(f"{config}=y" for config, _ in features)
    if _has_module_support(root):
        return f"modprobe {' '.join(m for _, m in features)} (or build with {configs})"
    return f"boot a kernel built with {configs} (this kernel cannot load modules)"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _run(cmd: Sequence[str], *, timeout: float = 10.0, stdin: str | None = None) -> tuple[int, str, str]:
    """Run a tool; a missing binary is rc 127, like a shell would say."""
    try:
        proc = subprocess.run(
            list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: not found"
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def _pkg_config(*args: str) -> str | None:
    rc, out, _ = _run(["pkg-config", *args])
    return out if rc == 0 else None


# ---------------------------------------------------------------------------------------
# Failures and logs

ROOT_FIX = "run as root (sudo fastpath doctor); see the privileges row"


def _needs_root(exc: BaseException) -> bool:
    """Whether a failure is the kernel refusing an unprivileged caller."""
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EPERM:
        return True
    text = str(exc)
    return any(words in text for words in ("Operation not permitted", "super-user", "run as root"))


def _last_lines(log: Sequence[str], n: int = 3) -> str:
    """The informative part of a tool's log lines: its first errors, else its last lines."""
    lines = [ln.strip() for ln in log if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    return " | ".join(errors[:2] if errors else lines[-n:])
