"""EAL command lines for fastpath's DPDK apps.

Rules the builder enforces:
- every run gets a unique --file-prefix, so its runtime dir (/var/run/dpdk/<prefix>) and
  hugepage files (<hugedir>/<prefix>map_*) are its own and can be cleaned after a crash;
- --no-pci when only virtual devices are used (EAL then leaves the host's NICs alone),
  otherwise an allow-list (-a) naming exactly the PCI devices asked for;
- hugepages from one hugetlbfs mount (--huge-dir); free hugepages but no mount: --in-memory
  (memfd, no files); too few free: plain memory with --no-huge --no-shconf (--in-memory
  itself needs hugepages), fine for virtual devices, refused for PCI devices, which DMA.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from fastpath.dpdk import hugepages, hugepools
from fastpath.dpdk.devbind import normalize_bdf
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

RUNTIME_ROOT = "/var/run/dpdk"
PREFIX_BASE = "fastpath"
# Below this much free hugepage memory a run falls back to plain memory (--no-huge).
MIN_HUGEPAGE_BYTES = 64 << 20
# Plain memory (-m, MiB) for --no-huge runs: enough for the mbuf pool of a few ports.
NO_HUGE_MEMORY_MB = 256
LOG_LEVEL = "notice"

VDEV_KINDS = ("af_packet", "af_xdp", "null", "tap", "memif")
_IFNAME_RE = re.compile(r"^[^/\s:,=]{1,15}$")


@dataclass(frozen=True)
class Vdev:
    """A DPDK virtual device as the user names it: af_packet:veth0, null, tap:dtap0..."""

    kind: str
    iface: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def eal_arg(self, index: int) -> str:
        name = f"net_{self.kind}{index}"
        opts: list[tuple[str, str]] = []
        if self.kind in ("af_packet", "af_xdp"):
            assert self.iface is not None
            opts.append(("iface", self.iface))
        elif self.kind == "tap" and self.iface:
            opts.append(("iface", self.iface))
        elif self.kind == "memif" and self.iface:
            opts.append(("socket", self.iface))
        opts.extend(self.options)
        return ",".join([name, *(f"{k}={v}" for k, v in opts)])

    def __str__(self) -> str:
        return self.kind if self.iface is None else f"{self.kind}:{self.iface}"


def parse_vdev(spec: str) -> Vdev:
    """"af_packet:IFACE[,key=value...]", "af_xdp:IFACE", "null", "tap[:NAME]", "memif:SOCK"."""
    head, _, rest = spec.partition(",")
    kind, _, iface = head.partition(":")
    kind = kind.strip().removeprefix("net_")
    if kind not in VDEV_KINDS:
        raise FastpathError(
            f"unknown virtual device {spec!r}: use af_packet:IFACE, af_xdp:IFACE, null, "
            f"tap[:NAME] or memif:SOCKET"
        )
    options = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key or not value or any(c in value for c in " \t"):
            raise FastpathError(f"bad option {item!r} in {spec!r}: write key=value")
        options.append((key, value))
    if kind in ("af_packet", "af_xdp"):
        if not iface:
            raise FastpathError(f"{kind} needs an interface: --vdev {kind}:IFACE")
        if not _IFNAME_RE.match(iface):
            raise FastpathError(f"bad interface name {iface!r} in {spec!r}")
    elif kind == "null" and iface:
        raise FastpathError(f"null takes no interface: --vdev null (got {spec!r})")
    elif kind == "tap" and iface and not _IFNAME_RE.match(iface):
        raise FastpathError(f"bad tap interface name {iface!r}")
    elif kind == "memif" and not iface:
        raise FastpathError("memif needs a socket path: --vdev memif:/run/memif.sock")
    return Vdev(kind=kind, iface=iface or None, options=tuple(options))


def parse_cores(spec: str) -> list[int]:
    """"0-1", "0,2", "3" -> sorted CPU ids."""
    cores: set[int] = set()
    if not spec.strip():
        raise FastpathError("bad core list '': give CPUs like 0-1 or 0,2")
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise FastpathError(f"bad core list {spec!r}: give CPUs like 0-1 or 0,2")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise FastpathError(f"bad core range {part.strip()!r} in {spec!r}: low-high")
        cores.update(range(lo, hi + 1))
    return sorted(cores)


def online_cpus(host: Host = REAL_HOST) -> list[int]:
    text = host.read_or("/sys/devices/system/cpu/online", "")
    if not text:
        return list(range(os.cpu_count() or 1))
    return parse_cores(text)


def unique_file_prefix(app: str = "l2fwd") -> str:
    return f"{PREFIX_BASE}-{app}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass
class MemoryChoice:
    """Where EAL gets memory.

    mode "hugetlbfs": hugepage files in `huge_dir` (named by the file prefix, cleaned up
    after the run); "in-memory": hugepages through memfd, no files (--in-memory);
    "no-huge": plain pages (--no-huge --no-shconf), for virtual devices only.
    """

    mode: str
    huge_dir: str | None
    pagesize_kb: int | None
    free_bytes: int
    reason: str

    @property
    def uses_hugepages(self) -> bool:
        return self.mode != "no-huge"


def choose_memory(
    host: Host = REAL_HOST, min_bytes: int = MIN_HUGEPAGE_BYTES, in_memory: bool = False
) -> MemoryChoice:
    """The page size with the most free memory, if it has at least `min_bytes`.

    Free hugepages and a mount -> hugetlbfs files (unless `in_memory`); free hugepages and
    no mount -> --in-memory; too few free -> --no-huge.
    """
    mounted = {m.size_kb: m.path for m in hugepages.mounts(host, with_files=False)}
    best: tuple[int, int] | None = None
    for size_kb in hugepools.page_sizes(host):
        free = hugepools.free_bytes(host, size_kb)
        # Prefer a mounted size at equal free memory: its files can be checked and cleaned.
        rank = (free, size_kb in mounted)
        if best is None or rank > (best[1], best[0] in mounted):
            best = (size_kb, free)
    if best is None or best[1] < min_bytes:
        why = (
            "no hugepages on this kernel" if best is None
            else f"only {hugepools.format_bytes(best[1])} of hugepages free"
        )
        return MemoryChoice("no-huge", None, None, best[1] if best else 0,
                            f"{why}: running on plain memory (--no-huge)")
    size_kb, free = best
    desc = f"{hugepools.format_bytes(free)} free in {hugepools.format_kb(size_kb)} hugepages"
    if in_memory or size_kb not in mounted:
        why = "asked for" if in_memory else "no hugetlbfs mount"
        return MemoryChoice("in-memory", None, size_kb, free, f"{desc}, {why}: --in-memory")
    return MemoryChoice("hugetlbfs", mounted[size_kb], size_kb, free,
                        f"{desc} at {mounted[size_kb]}")


@dataclass
class EalConfig:
    cores: list[int]
    vdevs: list[Vdev] = field(default_factory=list)
    pci: list[str] = field(default_factory=list)
    file_prefix: str = field(default_factory=unique_file_prefix)
    memory: MemoryChoice | None = None
    log_level: str = LOG_LEVEL

    def runtime_dir(self) -> str:
        return f"{RUNTIME_ROOT}/{self.file_prefix}"


def validate_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", prefix):
        raise FastpathError(f"bad file prefix {prefix!r}: letters, digits, '_', '.', '-'")


def build_eal_args(cfg: EalConfig) -> list[str]:
    """The EAL part of the command line (before "--")."""
    if not cfg.cores:
        raise FastpathError("no cores given: --cores 0 or --cores 0-1")
    if not cfg.vdevs and not cfg.pci:
        raise FastpathError("no ports: give --vdev af_packet:IFACE (or af_xdp, null) or --pci BDF")
    validate_prefix(cfg.file_prefix)
    memory = cfg.memory
    if memory is None:
        raise FastpathError("internal: EAL memory not chosen")
    args = ["-l", ",".join(map(str, cfg.cores)), "--file-prefix", cfg.file_prefix]
    args += ["--log-level", cfg.log_level]
    if memory.mode == "no-huge":
        if cfg.pci:
            raise FastpathError(
                f"PCI devices need hugepages for DMA, but {memory.reason.split(':')[0]}; "
                "reserve some with 'fastpath dpdk hugepages reserve 512M'"
            )
        # --in-memory needs hugepages (memfd); --no-shconf keeps plain-memory runs file-free.
        args += ["--no-huge", "--no-shconf", "-m", str(NO_HUGE_MEMORY_MB)]
    elif memory.mode == "in-memory":
        args.append("--in-memory")
    else:
        assert memory.huge_dir is not None
        args += ["--huge-dir", memory.huge_dir]
    if cfg.pci:
        for bdf in cfg.pci:
            norm = normalize_bdf(bdf)
            if norm is None:
                raise FastpathError(f"bad PCI address {bdf!r}: write it like 0000:03:00.0")
            args += ["-a", norm]
    else:
        args.append("--no-pci")
    for index, vdev in enumerate(cfg.vdevs):
        args.append(f"--vdev={vdev.eal_arg(index)}")
    return args


def leftovers(cfg: EalConfig, host: Host = REAL_HOST) -> list[Path]:
    """Files a run with this prefix leaves when it dies: runtime dir and hugepage files."""
    found = []
    runtime = host.path(cfg.runtime_dir())
    if runtime.exists():
        found.append(runtime)
    if cfg.memory is not None and cfg.memory.huge_dir is not None:
        found += sorted(host.path(cfg.memory.huge_dir).glob(f"{cfg.file_prefix}map_*"))
    return found
