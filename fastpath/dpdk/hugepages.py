"""Hugepages for DPDK in hugetlbfs: mounts and the files in them, mount and unmount, the
clean-up of stale files, and `show`, the whole picture (pools from fastpath.dpdk.hugepools).

Semantics, made explicit:
- `unmount` only unmounts what `mount` mounted (both recorded in hugepools' ledger).
- Hugepage files left in a mount by a crashed DPDK process are "stale": a file is in use
  while some process maps it (/proc/<pid>/maps, matched by device and inode, so a process
  in another mount namespace counts too) or holds a flock on it (DPDK keeps a shared lock
  on every file it uses). `clean` refuses to run while a process whose maps it may not
  read uses hugepages. `clean` removes stale files named like DPDK's
  (<prefix>map_<n>) and nothing else: other programs keep data in hugetlbfs files on
  purpose.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastpath.dpdk.hugepools import (
    Ledger,
    default_page_kb,
    format_kb,
    ledger_for,
    nodes,
    page_sizes,
    parse_pagesize,
    read_pool,
)
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

# ---------------------------------------------------------------- mounts and files


@dataclass
class HugeFile:
    name: str
    size: int
    in_use: bool


@dataclass
class HugeMount:
    path: str
    size_kb: int
    options: str
    files: list[HugeFile] = field(default_factory=list)

    @property
    def stale(self) -> list[HugeFile]:
        return [f for f in self.files if not f.in_use]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "pagesize": format_kb(self.size_kb),
            "options": self.options,
            "files": len(self.files),
            "files_in_use": len(self.files) - len(self.stale),
            "stale_files": [f.name for f in self.stale],
            "stale_bytes": sum(f.size for f in self.stale),
        }


def file_in_use(path: Path) -> bool:
    """DPDK keeps a shared flock on each hugepage file it maps; no lock means no owner."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


@dataclass
class MappedFiles:
    """Every file some process maps: (st_dev, st_ino) pairs and the paths as mapped.

    `hidden` names processes whose maps we may not read (even root may not, e.g. without
    CAP_SYS_PTRACE or across user namespaces) although they map hugepages (HugetlbPages in
    their world-readable status): pid -> "comm, N kB".
    """

    keys: set[tuple[int, int]] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    hidden: dict[int, str] = field(default_factory=dict)

    def maps(self, path: str, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.keys or path in self.paths


def parse_maps_line(line: str) -> tuple[int, int, str] | None:
    """One /proc/<pid>/maps line -> (st_dev, inode, path), or None for anonymous memory."""
    parts = line.split(maxsplit=5)
    if len(parts) < 5:
        return None
    try:
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        inode = int(parts[4])
    except ValueError:
        return None
    if inode == 0:
        return None
    path = parts[5].strip() if len(parts) == 6 else ""
    return os.makedev(major, minor), inode, path.removesuffix(" (deleted)")


def _hugetlb_usage(host: Host, pid: str) -> str | None:
    """"comm, N kB" when the process maps hugepages (or its status is unreadable too)."""
    status = host.read_or(f"/proc/{pid}/status", "")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    comm = fields.get("Name", "?").strip()
    kb = fields.get("HugetlbPages", "").split()
    if kb and kb[0].isdigit():
        return f"{comm}, {kb[0]} kB" if int(kb[0]) > 0 else None
    return f"{comm}, hugepage use unknown"


def mapped_files(host: Host = REAL_HOST) -> MappedFiles:
    """Files mapped by any process, from /proc/<pid>/maps."""
    found = MappedFiles()
    for pid in host.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            text = host.path(f"/proc/{pid}/maps").read_text(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended while we looked
        except PermissionError:
            usage = _hugetlb_usage(host, pid)
            if usage is not None:
                found.hidden[int(pid)] = usage
            continue
        for line in text.splitlines():
            entry = parse_maps_line(line)
            if entry is not None:
                found.keys.add((entry[0], entry[1]))
                if entry[2]:
                    found.paths.add(entry[2])
    return found


def list_files(host: Host, mount_path: str, mapped: MappedFiles | None = None) -> list[HugeFile]:
    """Files in a hugetlbfs mount; in use when mapped by a process or locked."""
    if mapped is None:
        mapped = mapped_files(host)
    files = []
    base = host.path(mount_path)
    for name in host.listdir(mount_path):
        p = base / name
        if p.is_file():
            st = p.stat()
            in_use = mapped.maps(f"{mount_path.rstrip('/')}/{name}", st) or file_in_use(p)
            files.append(HugeFile(name=name, size=st.st_size, in_use=in_use))
    return files


def mounts(host: Host = REAL_HOST, with_files: bool = True) -> list[HugeMount]:
    """hugetlbfs mounts from /proc/mounts, with their page size and files."""
    default_kb = default_page_kb(host)
    mapped = mapped_files(host) if with_files else None
    found = []
    for mnt in host.mounts():
        if mnt.fstype != "hugetlbfs":
            continue
        size_kb = default_kb or 0
        for opt in mnt.options.split(","):
            if opt.startswith("pagesize="):
                size_kb = parse_pagesize(opt.split("=", 1)[1])
        m = HugeMount(path=mnt.path, size_kb=size_kb, options=mnt.options)
        if with_files:
            m.files = list_files(host, mnt.path, mapped)
        found.append(m)
    return found


def mount_for(host: Host, size_kb: int) -> HugeMount | None:
    for m in mounts(host, with_files=False):
        if m.size_kb == size_kb:
            return m
    return None

# ---------------------------------------------------------------- mount / unmount

Mounter = Callable[[list[str]], None]


def run_mount_command(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FastpathError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def default_mount_path(host: Host, size_kb: int) -> str:
    if size_kb == default_page_kb(host) and not any(
        m.path == "/dev/hugepages" for m in mounts(host, with_files=False)
    ):
        return "/dev/hugepages"
    return f"/dev/hugepages-{format_kb(size_kb)}"


def mount(
    size_kb: int,
    path: str | None = None,
    host: Host = REAL_HOST,
    ledger: Ledger | None = None,
    mounter: Mounter = run_mount_command,
) -> tuple[str, bool]:
    """Mount hugetlbfs for `size_kb` pages; returns (path, newly mounted)."""
    ledger = ledger_for(host, size_kb, ledger)
    existing = mount_for(host, size_kb)
    if existing is not None and (path is None or existing.path == path):
        return existing.path, False
    path = path or default_mount_path(host, size_kb)
    if any(m.path == path for m in mounts(host, with_files=False)):
        raise FastpathError(f"{path} is already a hugetlbfs mount of another page size")
    with ledger.edit() as data:
        host.path(path).mkdir(parents=True, exist_ok=True)
        mounter(["mount", "-t", "hugetlbfs", "-o", f"pagesize={format_kb(size_kb)}", "nodev",
                 str(host.path(path))])
        data["mounts"].append({"path": path, "pagesize_kb": size_kb})
    return path, True


def unmount(
    size_kb: int | None = None,
    path: str | None = None,
    host: Host = REAL_HOST,
    ledger: Ledger | None = None,
    mounter: Mounter = run_mount_command,
) -> list[str]:
    """Unmount the hugetlbfs mounts fastpath made (by path, or of one page size)."""
    ledger = ledger or Ledger.for_host(host)
    done = []
    with ledger.edit() as data:
        ours = [
            e for e in data["mounts"]
            if (path is None or e["path"] == path)
            and (size_kb is None or e["pagesize_kb"] == size_kb)
        ]
        if path is not None and not ours:
            raise FastpathError(
                f"{path} was not mounted by fastpath; it stays (unmount it yourself with "
                f"'umount {path}' if you are sure)"
            )
        live = {m.path: m for m in mounts(host)}
        for entry in ours:
            m = live.get(entry["path"])
            if m is not None:
                in_use = [f.name for f in m.files if f.in_use]
                if in_use:
                    raise FastpathError(
                        f"{m.path} has {len(in_use)} hugepage files in use by a running "
                        f"DPDK process ({in_use[0]}...); stop it first"
                    )
                mounter(["umount", str(host.path(m.path))])
            data["mounts"].remove(entry)
            done.append(entry["path"])
    return done


# ---------------------------------------------------------------- clean

DPDK_FILE_RE = re.compile(r"^(?P<prefix>.*)map_\d+$")


@dataclass
class StaleFile:
    path: str  # as the kernel names it
    prefix: str  # the DPDK --file-prefix that made it
    size: int
    removed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CleanResult:
    stale: list[StaleFile] = field(default_factory=list)
    in_use: int = 0  # DPDK-named files some process still maps or locks
    foreign: list[str] = field(default_factory=list)  # unused files not named like DPDK's
    mounts: list[str] = field(default_factory=list)

    @property
    def stale_bytes(self) -> int:
        return sum(f.size for f in self.stale)

    def to_json(self) -> dict[str, Any]:
        return {
            "mounts": self.mounts,
            "stale": [f.to_json() for f in self.stale],
            "stale_bytes": self.stale_bytes,
            "in_use": self.in_use,
            "left_alone": self.foreign,
        }


def _unlink_if_unlocked(path: Path) -> bool:
    """Unlink while holding an exclusive lock, so no DPDK process can take the file between
    the check and the unlink; False when someone holds a lock after all."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def clean(
    host: Host = REAL_HOST,
    *,
    dry_run: bool = False,
    prefix: str | None = None,
    mount_path: str | None = None,
) -> CleanResult:
    """Remove (or with `dry_run` only list) stale DPDK hugepage files in hugetlbfs mounts.

    A file goes when it is named <prefix>map_<n> (optionally of one `prefix`), no process
    maps it and nobody holds a lock on it; everything else stays.
    """
    result = CleanResult()
    all_mounts = mounts(host, with_files=False)
    if mount_path is not None:
        want = mount_path.rstrip("/") or "/"
        all_mounts = [m for m in all_mounts if (m.path.rstrip("/") or "/") == want]
        if not all_mounts:
            raise FastpathError(f"{mount_path} is not a hugetlbfs mount; see "
                                "'fastpath dpdk hugepages show'")
    mapped = mapped_files(host)
    if mapped.hidden:
        pid, what = next(iter(sorted(mapped.hidden.items())))
        raise FastpathError(
            f"cannot read /proc/{pid}/maps ({what} of hugepages) nor those of "
            f"{len(mapped.hidden) - 1} more such process(es): a hugepage file only they map "
            f"would look unused, so nothing was removed; stop them, or run with "
            f"CAP_SYS_PTRACE in their user namespace"
        )
    for m in all_mounts:
        result.mounts.append(m.path)
        for f in list_files(host, m.path, mapped):
            match = DPDK_FILE_RE.match(f.name)
            if match is None:
                if not f.in_use:
                    result.foreign.append(f"{m.path.rstrip('/')}/{f.name}")
                continue
            if prefix is not None and match.group("prefix") != prefix:
                continue
            if f.in_use:
                result.in_use += 1
                continue
            path = host.path(m.path) / f.name
            removed = False if dry_run else _unlink_if_unlocked(path)
            if not dry_run and not removed:
                if path.exists():
                    result.in_use += 1  # locked between the scan and now
                continue
            result.stale.append(StaleFile(f"{m.path.rstrip('/')}/{f.name}",
                                          match.group("prefix"), f.size, removed))
    return result


# ---------------------------------------------------------------- show


def show(host: Host = REAL_HOST, ledger: Ledger | None = None) -> dict[str, Any]:
    """Everything about hugepages on this host, as one JSON-able dict."""
    ledger = ledger or Ledger.for_host(host)
    recorded = ledger.load()
    all_mounts = mounts(host)
    sizes = []
    for size_kb in page_sizes(host):
        pool = read_pool(host, size_kb)
        entry = pool.to_json()
        entry["nodes"] = [read_pool(host, size_kb, n).to_json() for n in nodes(host)]
        entry["mounts"] = [m.path for m in all_mounts if m.size_kb == size_kb]
        entry["fastpath_reserved"] = {
            k: v for k, v in recorded["reservations"].items() if k.startswith(f"{size_kb}kB/")
        }
        sizes.append(entry)
    default_kb = default_page_kb(host)
    return {
        "default_pagesize": format_kb(default_kb) if default_kb else None,
        "sizes": sizes,
        "mounts": [m.to_json() for m in all_mounts],
        "fastpath_mounts": recorded["mounts"],
    }
