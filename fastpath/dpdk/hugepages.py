"""Hugepages for DPDK: show, reserve, release, mount and unmount, safely.

Semantics, made explicit:
- A reservation is either the system-wide *total* of one page size
  (/sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages, spread over NUMA nodes by the
  kernel) or one *node's* count (/sys/devices/system/node/node<N>/hugepages/...).
- `reserve` only ever raises a count to reach the wanted size, reads back what the kernel
  granted, and rolls back (with a hint) when the kernel granted less.
- Every change is written to a ledger under /run/fastpath/dpdk/; `release` removes only
  the pages fastpath added, never pages someone else reserved, and `unmount` only unmounts
  what `mount` mounted.
- Hugepage files left in a mount by a crashed DPDK process are "stale": a file is in use
  while some process maps it (/proc/<pid>/maps, matched by device and inode, so a process
  in another mount namespace counts too) or holds a flock on it (DPDK keeps a shared lock
  on every file it uses). `clean` refuses to run while a process whose maps it may not
  read uses hugepages. `clean` removes stale files named like DPDK's
  (<prefix>map_<n>) and nothing else: other programs keep data in hugetlbfs files on
  purpose.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastpath.core.jsonstate import locked, write_json
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

GLOBAL_DIR = "/sys/kernel/mm/hugepages"
NODE_DIR = "/sys/devices/system/node"
LEDGER = "/run/fastpath/dpdk/hugepages.json"
GIB_KB = 1024 * 1024

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt])?(?:i?b)?\s*$", re.IGNORECASE)
_PAGES_RE = re.compile(r"^\s*(\d+)\s*(?:p|pages?)\s*$", re.IGNORECASE)
_PAGESIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg])(?:i?b)?\s*$", re.IGNORECASE)


def format_kb(kb: int) -> str:
    """2048 -> "2M", 1048576 -> "1G" (how the kernel and DPDK users spell page sizes)."""
    for unit, factor in (("G", GIB_KB), ("M", 1024)):
        if kb % factor == 0:
            return f"{kb // factor}{unit}"
    return f"{kb}K"


def format_bytes(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def parse_pagesize(text: str) -> int:
    """A page size such as "2M", "1G", "2048kB" -> size in kB."""
    m = _PAGESIZE_RE.match(text)
    if not m:
        raise FastpathError(
            f"bad page size {text!r}: give a size with a unit, such as 2M or 1G"
        )
    kb = int(m.group(1)) * _UNITS[m.group(2).lower()] // 1024
    if kb <= 0:
        raise FastpathError(f"bad page size {text!r}: must be at least 4K")
    return kb


@dataclass(frozen=True)
class SizeRequest:
    """What the user asked for: a byte amount, or a page count ("256pages")."""

    text: str
    nbytes: int | None = None
    pages: int | None = None

    def pages_of(self, size_kb: int) -> int:
        if self.pages is not None:
            return self.pages
        assert self.nbytes is not None
        return math.ceil(self.nbytes / (size_kb * 1024))


def parse_size(text: str) -> SizeRequest:
    """"512M", "2G", "1.5GiB" (binary units) or a page count "256pages"/"256p"."""
    m = _PAGES_RE.match(text)
    if m:
        pages = int(m.group(1))
        if pages <= 0:
            raise FastpathError(f"bad size {text!r}: the page count must be above 0")
        return SizeRequest(text, pages=pages)
    m = _SIZE_RE.match(text)
    if not m:
        raise FastpathError(
            f"bad size {text!r}: give an amount with a unit (512M, 2G) or pages (256pages)"
        )
    if m.group(2) is None:
        raise FastpathError(
            f"bad size {text!r}: a bare number is ambiguous; add a unit (512M, 2G) "
            f"or say pages ({text.strip()}pages)"
        )
    nbytes = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if nbytes <= 0:
        raise FastpathError(f"bad size {text!r}: must be above 0")
    return SizeRequest(text, nbytes=nbytes)


def pools_dir(node: int | None) -> str:
    """Where the pools of every page size live, system-wide (node None) or on one node."""
    return GLOBAL_DIR if node is None else f"{NODE_DIR}/node{node}/hugepages"


def page_sizes(host: Host = REAL_HOST, node: int | None = None) -> list[int]:
    """Hugepage sizes (kB) this kernel supports (on `node`, if given), smallest first."""
    sizes = []
    for name in host.listdir(pools_dir(node)):
        m = re.fullmatch(r"hugepages-(\d+)kB", name)
        if m:
            sizes.append(int(m.group(1)))
    return sorted(sizes)


def default_page_kb(host: Host = REAL_HOST) -> int | None:
    for line in host.read_or("/proc/meminfo", "").splitlines():
        if line.startswith("Hugepagesize:"):
            return int(line.split()[1])
    return None


def nodes(host: Host = REAL_HOST) -> list[int]:
    """NUMA nodes that have hugepage pools."""
    found = []
    for name in host.listdir(NODE_DIR):
        m = re.fullmatch(r"node(\d+)", name)
        if m and host.exists(f"{NODE_DIR}/{name}/hugepages"):
            found.append(int(m.group(1)))
    return sorted(found)


def check_pagesize(host: Host, size_kb: int) -> None:
    sizes = page_sizes(host)
    if not sizes:
        raise FastpathError(
            "this kernel has no hugepage support (no /sys/kernel/mm/hugepages); "
            "build it with CONFIG_HUGETLBFS or run DPDK with --no-huge"
        )
    if size_kb not in sizes:
        raise FastpathError(
            f"{format_kb(size_kb)} is not a hugepage size here; "
            f"available: {', '.join(format_kb(s) for s in sizes)}"
        )


def pool_dir(size_kb: int, node: int | None) -> str:
    return f"{pools_dir(node)}/hugepages-{size_kb}kB"


def scope_name(node: int | None) -> str:
    return "system-wide total" if node is None else f"node {node}"


@dataclass
class Pool:
    """The counters of one page size, system-wide (node None) or on one NUMA node."""

    size_kb: int
    node: int | None
    total: int
    free: int
    surplus: int
    reserved: int | None = None  # promised to mappings but not yet faulted (global only)

    @property
    def pagesize(self) -> str:
        return format_kb(self.size_kb)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pagesize"] = self.pagesize
        d["free_bytes"] = self.free * self.size_kb * 1024
        return d


def read_pool(host: Host, size_kb: int, node: int | None = None) -> Pool:
    base = pool_dir(size_kb, node)
    if not host.exists(base):
        if node is not None and not host.exists(f"{NODE_DIR}/node{node}"):
            raise FastpathError(
                f"no NUMA node {node}; nodes: {', '.join(map(str, nodes(host))) or 'none'}"
            )
        raise FastpathError(f"no {format_kb(size_kb)} hugepage pool at {base}")
    reserved = None
    if node is None and host.exists(f"{base}/resv_hugepages"):
        reserved = host.read_int(f"{base}/resv_hugepages")
    return Pool(
        size_kb=size_kb,
        node=node,
        total=host.read_int(f"{base}/nr_hugepages"),
        free=host.read_int(f"{base}/free_hugepages"),
        surplus=host.read_int(f"{base}/surplus_hugepages"),
        reserved=reserved,
    )


def free_bytes(host: Host, size_kb: int) -> int:
    return read_pool(host, size_kb).free * size_kb * 1024


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


# ---------------------------------------------------------------- ledger


class Ledger:
    """What fastpath changed (reservations, mounts), so it undoes only its own changes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_host(cls, host: Host) -> Ledger:
        return cls(host.path(LEDGER))

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Load, let the caller change, save, all under an exclusive lock."""
        with locked(self.path):
            data = self.load()
            yield data
            write_json(self.path, data, sort_keys=True)

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise FastpathError(
                f"cannot read the hugepage ledger {self.path}: {exc}; "
                "fix or delete it (fastpath then forgets what it reserved)"
            ) from exc
        data.setdefault("reservations", {})
        data.setdefault("mounts", [])
        return data


def ledger_key(size_kb: int, node: int | None) -> str:
    return f"{size_kb}kB/{'all' if node is None else f'node{node}'}"


# ---------------------------------------------------------------- reserve / release


@dataclass
class Change:
    """The outcome of a reserve or release on one pool."""

    pagesize: str
    scope: str
    node: int | None
    before: int
    wanted: int
    granted: int
    changed: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _shortfall_hint(size_kb: int, node: int | None, wanted: int) -> str:
    if size_kb >= GIB_KB:
        return (
            f"1 GiB pages rarely fit at run time; reserve them at boot with kernel "
            f"parameters 'hugepagesz=1G hugepages={wanted}' (and 'default_hugepagesz=1G' "
            f"to make them the default)"
        )
    where = f" on node {node}" if node is not None else ""
    return (
        f"memory{where} is short or fragmented; free memory, try "
        f"'echo 1 > /proc/sys/vm/compact_memory', or reserve at boot with "
        f"'hugepages={wanted}'"
    )


def reserve(
    size: SizeRequest,
    size_kb: int,
    node: int | None = None,
    host: Host = REAL_HOST,
    ledger: Ledger | None = None,
) -> Change:
    """Raise the pool (system-wide total, or one node) to hold at least `size`."""
    check_pagesize(host, size_kb)
    ledger = ledger or Ledger.for_host(host)
    wanted = size.pages_of(size_kb)
    before = read_pool(host, size_kb, node).total
    change = Change(format_kb(size_kb), scope_name(node), node, before, wanted, before, False)
    if before >= wanted:
        change.note = f"already {before} pages (>= {wanted} wanted); nothing changed"
        return change
    nr = f"{pool_dir(size_kb, node)}/nr_hugepages"
    with ledger.edit() as data:
        try:
            host.write(nr, str(wanted))
        except PermissionError as exc:
            raise FastpathError(f"cannot write {nr}: permission denied; run as root") from exc
        except OSError as exc:
            # ENOMEM and friends: the kernel may still have granted part of it.
            change.note = f"write failed ({exc.strerror})"
        granted = read_pool(host, size_kb, node).total
        if granted < wanted:
            # Nothing half-done: give back what this call got before reporting.
            with contextlib.suppress(OSError):
                host.write(nr, str(before))
            raise FastpathError(
                f"the kernel granted only {granted} of {wanted} {format_kb(size_kb)} pages "
                f"({scope_name(node)}); rolled back to {before}; "
                + _shortfall_hint(size_kb, node, wanted)
            )
        key = ledger_key(size_kb, node)
        entry = data["reservations"].get(key)
        if entry is None:
            entry = data["reservations"][key] = {"baseline": before}
        entry["reserved"] = granted
    change.granted = granted
    change.changed = True
    change.note = f"added {granted - before} pages"
    return change


def release(
    size_kb: int,
    node: int | None = None,
    host: Host = REAL_HOST,
    ledger: Ledger | None = None,
) -> Change:
    """Give back the pages fastpath reserved on this pool, and no others."""
    check_pagesize(host, size_kb)
    ledger = ledger or Ledger.for_host(host)
    nr = f"{pool_dir(size_kb, node)}/nr_hugepages"
    with ledger.edit() as data:
        key = ledger_key(size_kb, node)
        current = read_pool(host, size_kb, node).total
        change = Change(format_kb(size_kb), scope_name(node), node, current, current, current, False)
        entry = data["reservations"].get(key)
        if entry is None:
            change.note = (
                f"fastpath reserved no {format_kb(size_kb)} pages ({scope_name(node)}); "
                f"the {current} present belong to someone else and stay"
            )
            return change
        ours = max(0, int(entry["reserved"]) - int(entry["baseline"]))
        target = min(current, max(int(entry["baseline"]), current - ours))
        change.wanted = target
        if target < current:
            try:
                host.write(nr, str(target))
            except OSError as exc:
                raise FastpathError(f"cannot write {nr}: {exc.strerror}; run as root") from exc
        pool = read_pool(host, size_kb, node)
        change.granted = pool.total
        change.changed = pool.total != current
        del data["reservations"][key]
    change.note = f"released {current - pool.total} of the {ours} pages fastpath added"
    if pool.surplus > 0:
        change.note += f"; {pool.surplus} still in use become free when their user exits"
    return change


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
    check_pagesize(host, size_kb)
    ledger = ledger or Ledger.for_host(host)
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
