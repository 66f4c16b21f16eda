"""One root for every kernel file the DPDK control plane and doctor's probes read or write.

On a real machine the root is "/"; unit tests point it at a temporary tree laid out like
/sys, /proc and /dev so binding, hugepage, mount and capability logic runs with no
privileges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

_T = TypeVar("_T")


class Mount(NamedTuple):
    """One line of /proc/mounts."""

    source: str
    path: str
    fstype: str
    options: str


@dataclass(frozen=True)
class Host:
    """The kernel's file interface (sysfs, procfs, /dev, /run) below `root`."""

    root: Path = field(default_factory=lambda: Path("/"))

    def path(self, absolute: str | os.PathLike[str]) -> Path:
        """`absolute` (as the kernel names it, e.g. "/sys/bus/pci") under this root."""
        return self.root / str(absolute).lstrip("/")

    def exists(self, absolute: str | os.PathLike[str]) -> bool:
        return self.path(absolute).exists()

    def read(self, absolute: str | os.PathLike[str]) -> str:
        return self.path(absolute).read_text().strip()

    def read_or(self, absolute: str | os.PathLike[str], default: _T) -> str | _T:
        try:
            return self.read(absolute)
        except OSError:
            return default

    def read_int(self, absolute: str | os.PathLike[str], base: int = 10) -> int:
        return int(self.read(absolute), base)

    def read_int_or(self, absolute: str | os.PathLike[str], default: _T, base: int = 10) -> int | _T:
        """The file's number, or `default` when it is missing or holds no number."""
        try:
            return self.read_int(absolute, base)
        except (OSError, ValueError):
            return default

    def mounts(self) -> list[Mount]:
        """/proc/mounts, with the kernel's octal escape for spaces in paths undone."""
        rows = []
        for line in self.read_or("/proc/mounts", "").splitlines():
            parts = line.split()
            if len(parts) >= 4:
                rows.append(Mount(parts[0], parts[1].replace("\\040", " "), parts[2], parts[3]))
        return rows

    def write(self, absolute: str | os.PathLike[str], value: str) -> None:
        """Write like `echo value > file`; sysfs wants the whole value in one write."""
        with open(self.path(absolute), "w") as f:
            f.write(value)

    def link_name(self, absolute: str | os.PathLike[str]) -> str | None:
        """Last component of a symlink's target (a driver, an IOMMU group), or None."""
        try:
            return os.path.basename(os.readlink(self.path(absolute)))
        except OSError:
            return None

    def listdir(self, absolute: str | os.PathLike[str]) -> list[str]:
        try:
            return sorted(os.listdir(self.path(absolute)))
        except OSError:
            return []

    @property
    def is_real(self) -> bool:
        return self.root == Path("/")


REAL_HOST = Host()
