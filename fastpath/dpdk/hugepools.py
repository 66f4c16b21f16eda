"""Hugepage pools for DPDK: page sizes and their counters, and reserving or releasing
pages, safely.

Semantics, made explicit:
- A reservation is either the system-wide *total* of one page size
  (/sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages, spread over NUMA nodes by the
  kernel) or one *node's* count (/sys/devices/system/node/node<N>/hugepages/...).
- `reserve` only ever raises a count to reach the wanted size, reads back what the kernel
  granted, and rolls back (with a hint) when the kernel granted less.
- Every change is written to a ledger under /run/fastpath/dpdk/ (hugetlbfs mounts are
  recorded there too, by fastpath.dpdk.hugepages); `release` removes only the pages
  fastpath added, never pages someone else reserved.

Sizes are parsed and printed here as users write them ("2M", "512M", "256pages").
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
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


def ledger_for(host: Host, size_kb: int, ledger: Ledger | None) -> Ledger:
    """`ledger`, else the host's, once `size_kb` is known to be a page size here: where
    every change to a pool or a mount of one page size starts."""
    check_pagesize(host, size_kb)
    return ledger or Ledger.for_host(host)


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
    ledger = ledger_for(host, size_kb, ledger)
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
    ledger = ledger_for(host, size_kb, ledger)
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
