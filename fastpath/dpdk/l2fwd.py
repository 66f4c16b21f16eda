"""Run fastpath-l2fwd under supervision and stream its JSON stats.

The supervisor builds the binary when missing, checks the devices, builds the EAL command
line (eal.py), starts the process (inside `ip netns exec NS` when asked: af_packet and
af_xdp bind to interfaces by name in the process's own namespace), waits for the app's
"ready" event, streams its "stats" events, and stops it with SIGINT, then SIGTERM, then
SIGKILL. Whatever the process leaves behind (its /var/run/dpdk/<prefix> dir, hugepage
files named by its prefix) is removed after it exits, also after a crash.
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpath.core.child import Child, ChildExited, ChildReported, ChildTimeout, Process
from fastpath.dpdk import build, devbind, eal, hugepages
from fastpath.dpdk.eal import EalConfig, MemoryChoice, Vdev
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

READY_TIMEOUT_S = 30.0
# Stop ladder: how long each signal gets before the next, harder one.
SIGINT_GRACE_S = 5.0
SIGTERM_GRACE_S = 3.0
SIGKILL_GRACE_S = 5.0
LOG_LINES = 200
DPDK_DRIVERS_FOR_PCI = {"vfio-pci", "uio_pci_generic", "igb_uio", "mlx5_core", "mlx4_core"}

_PORTMAP_RE = re.compile(r"^\(\d+,\d+\)(,\(\d+,\d+\))*$")


@dataclass
class L2fwdOptions:
    vdevs: list[Vdev] = field(default_factory=list)
    pci: list[str] = field(default_factory=list)
    cores: list[int] = field(default_factory=lambda: [0])
    portmask: str | None = None
    portmap: str | None = None
    ports_per_lcore: int | None = None
    period_s: float = 1.0
    mac_updating: bool = True
    promiscuous: bool = False
    idle_sleep_us: int = 0
    netns: str | None = None
    in_memory: bool = False

    @property
    def n_ports(self) -> int:
        return len(self.vdevs) + len(self.pci)


def parse_portmask(text: str, n_ports: int) -> int:
    try:
        mask = int(text, 16)
    except ValueError:
        raise FastpathError(f"bad portmask {text!r}: give a hex mask such as 0x3") from None
    if mask <= 0:
        raise FastpathError(f"bad portmask {text!r}: it selects no port")
    if mask >> n_ports:
        raise FastpathError(
            f"bad portmask {text!r}: it selects port {mask.bit_length() - 1}, but only "
            f"{n_ports} port(s) (0-{n_ports - 1}) are given"
        )
    return mask


def parse_portmap(text: str, n_ports: int) -> list[tuple[int, int]]:
    compact = text.replace(" ", "")
    if not _PORTMAP_RE.match(compact):
        raise FastpathError(f"bad portmap {text!r}: give pairs like (0,1),(2,3)")
    pairs = [(int(a), int(b)) for a, b in re.findall(r"\((\d+),(\d+)\)", compact)]
    seen: set[int] = set()
    for a, b in pairs:
        for p in {a, b}:
            if p >= n_ports:
                raise FastpathError(f"bad portmap {text!r}: port {p} does not exist "
                                    f"(ports 0-{n_ports - 1})")
            if p in seen:
                raise FastpathError(f"bad portmap {text!r}: port {p} appears twice")
            seen.add(p)
    return pairs


def app_args(opts: L2fwdOptions) -> list[str]:
    """The application part of the command line (after "--")."""
    n = opts.n_ports
    if n == 0:
        raise FastpathError("no ports: give --vdev af_packet:IFACE (or af_xdp, null) or --pci BDF")
    args: list[str] = []
    selected = n
    if opts.portmap is not None:
        pairs = parse_portmap(opts.portmap, n)
        selected = len({p for pair in pairs for p in pair})
        args += ["--portmap", opts.portmap.replace(" ", "")]
    if opts.portmask is not None:
        mask = parse_portmask(opts.portmask, n)
        if opts.portmap is None:
            selected = bin(mask).count("1")
        args += ["-p", hex(mask)]
    elif opts.portmap is None:
        args += ["-p", hex((1 << n) - 1)]
    per_lcore = opts.ports_per_lcore or math.ceil(selected / len(opts.cores))
    if not 1 <= per_lcore <= 16:
        raise FastpathError(f"bad ports per lcore {per_lcore}: give 1..16")
    if per_lcore * len(opts.cores) < selected:
        raise FastpathError(
            f"{selected} ports on {len(opts.cores)} core(s) at {per_lcore} per core do not "
            f"fit; give more --cores or a larger --ports-per-core"
        )
    if not (opts.period_s == 0 or 0.01 <= opts.period_s <= 86400):
        raise FastpathError(f"bad stats period {opts.period_s}: give 0 or 0.01..86400 seconds")
    if not 0 <= opts.idle_sleep_us <= 100000:
        raise FastpathError(f"bad idle sleep {opts.idle_sleep_us}: give 0..100000 µs")
    args += ["-q", str(per_lcore), "-T", f"{opts.period_s:g}"]
    if not opts.mac_updating:
        args.append("--no-mac-updating")
    if opts.promiscuous:
        args.append("-P")
    if opts.idle_sleep_us:
        args += ["--idle-sleep-us", str(opts.idle_sleep_us)]
    return args


def netns_exists(name: str, host: Host = REAL_HOST) -> bool:
    return host.exists(f"/run/netns/{name}")


def interface_exists(name: str, netns: str | None, host: Host = REAL_HOST) -> bool:
    if netns is None:
        return host.exists(f"/sys/class/net/{name}")
    r = subprocess.run(["ip", "-n", netns, "link", "show", "dev", name],
                       capture_output=True, text=True, check=False)
    return r.returncode == 0


def check_devices(opts: L2fwdOptions, host: Host = REAL_HOST) -> None:
    """Unknown interfaces, namespaces and PCI devices fail here, before EAL starts."""
    where = f"netns {opts.netns}" if opts.netns else "this namespace"
    if opts.netns is not None and not netns_exists(opts.netns, host):
        raise FastpathError(f"no network namespace {opts.netns!r} (see 'ip netns list')")
    ifaces = [v.iface for v in opts.vdevs if v.kind in ("af_packet", "af_xdp") and v.iface]
    dupes = {i for i in ifaces if ifaces.count(i) > 1}
    if dupes:
        raise FastpathError(f"interface {sorted(dupes)[0]} is given twice; each port needs its own")
    for vdev in opts.vdevs:
        if vdev.kind in ("af_packet", "af_xdp") and vdev.iface is not None:
            if not interface_exists(vdev.iface, opts.netns, host):
                raise FastpathError(f"unknown device: no interface {vdev.iface!r} in {where}")
    for bdf in opts.pci:
        dev = devbind.resolve(host, bdf)
        if dev.driver not in DPDK_DRIVERS_FOR_PCI:
            raise FastpathError(
                f"{dev.address} is on driver {dev.driver or 'none'}, which DPDK cannot use; "
                f"bind it first: fastpath dpdk bind {dev.address} --driver vfio-pci"
            )


def command(binary: str, eal_args: list[str], app: list[str], netns: str | None) -> list[str]:
    argv = [binary, *eal_args, "--", *app]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


@dataclass
class RunResult:
    returncode: int | None
    signals: list[str]
    ready: dict[str, Any] | None
    stats: list[dict[str, Any]]
    exit_event: dict[str, Any] | None
    cleaned: list[str]
    log_tail: list[str]

    @property
    def crashed(self) -> bool:
        return self.returncode != 0

    @property
    def final(self) -> dict[str, Any] | None:
        """The most complete counts: the exit event, else the last stats event."""
        if self.exit_event is not None:
            return self.exit_event
        return self.stats[-1] if self.stats else None

    def to_json(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode,
            "signals": self.signals,
            "crashed": self.crashed,
            "final": self.final,
            "cleaned": self.cleaned,
        }


class L2fwdProcess:
    """One supervised fastpath-l2fwd run; use as a context manager so it always stops."""

    def __init__(
        self,
        opts: L2fwdOptions,
        *,
        binary: str | None = None,
        host: Host = REAL_HOST,
        memory: MemoryChoice | None = None,
        file_prefix: str | None = None,
        progress: build.Progress = build._quiet,
    ) -> None:
        self.opts = opts
        self.host = host
        self.progress = progress
        self.binary = binary
        memory = memory or eal.choose_memory(host, in_memory=opts.in_memory)
        self.eal = EalConfig(cores=opts.cores, vdevs=opts.vdevs, pci=opts.pci, memory=memory)
        if file_prefix is not None:
            self.eal.file_prefix = file_prefix
        self.eal_args = eal.build_eal_args(self.eal)
        self.app_args = app_args(opts)
        self.child: Child | None = None
        self.ready: dict[str, Any] | None = None
        self.stats: list[dict[str, Any]] = []
        self.exit_event: dict[str, Any] | None = None
        self.error_event: dict[str, Any] | None = None
        self.cleaned: list[str] = []
        self._result: RunResult | None = None

    @property
    def argv(self) -> list[str]:
        return command(self.binary or "fastpath-l2fwd", self.eal_args, self.app_args,
                       self.opts.netns)

    @property
    def proc(self) -> Process | None:
        return self.child.proc if self.child else None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def log(self) -> deque[str]:
        """Its stderr and non-event stdout lines, the newest LOG_LINES."""
        return self.child.log if self.child else deque()

    @property
    def signals(self) -> list[str]:
        return self.child.signals if self.child else []

    # -- start -----------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Start the process and return its "ready" event; on failure nothing is left."""
        check_devices(self.opts, self.host)
        if self.binary is None:
            self.binary = build.ensure_built(progress=self.progress)
        if self.opts.netns is not None and shutil.which("ip") is None:
            raise FastpathError("iproute2's 'ip' is missing: apt-get install iproute2")
        # Its own session: a terminal's Ctrl-C reaches us, and we stop it in order.
        self.child = Child.spawn(self.argv, name="fastpath-l2fwd", on_event=self._on_event,
                                 log_lines=LOG_LINES)  # fmt: skip
        try:
            self.ready = self.child.expect("ready", timeout, errors=True)
        except ChildTimeout:
            self.stop()
            raise FastpathError(
                f"fastpath-l2fwd was not ready after {timeout:.0f}s; last output: "
                f"{self._last_log()}"
            ) from None
        except (ChildExited, ChildReported):
            result = self.stop()
            raise FastpathError(self._failure_message(result)) from None
        return self.ready

    def _on_event(self, ev: dict[str, Any]) -> None:
        """Runs on the reader thread: counts are kept even when nobody iterates."""
        kind = ev["event"]
        if kind == "stats":
            self.stats.append(ev)
        elif kind == "exit":
            self.exit_event = ev
        elif kind == "error":
            self.error_event = ev

    def _failure_message(self, result: RunResult) -> str:
        if self.error_event is not None:
            msg = f"fastpath-l2fwd: {self.error_event.get('message')}"
        else:
            msg = (f"fastpath-l2fwd exited with code {result.returncode} before it was ready; "
                   f"last output: {self._last_log()}")
        hint = self._hint()
        return f"{msg}{'; ' + hint if hint else ''}"

    def _hint(self) -> str:
        text = "\n".join(self.log).lower()
        if any(v.kind == "af_xdp" for v in self.opts.vdevs) and ("xsk" in text or "xdp" in text):
            return "AF_XDP sockets are not usable on this kernel or interface"
        if "cannot create mbuf pool" in text and self.eal.memory is not None \
                and self.eal.memory.mode != "no-huge":
            return "free hugepages ran out; see 'fastpath dpdk hugepages show'"
        return ""

    def _last_log(self) -> str:
        lines = [ln for ln in self.log if ln.strip()]
        return " | ".join(lines[-3:]) if lines else "none"

    # -- run -------------------------------------------------------------------------

    def iter_stats(self, duration: float | None = None) -> Iterator[dict[str, Any]]:
        """Stats events as they arrive, until `duration` seconds pass or the process ends."""
        child = self.child
        if child is None:
            return
        deadline = None if duration is None else time.monotonic() + duration
        while True:
            timeout = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if timeout <= 0:
                return
            ev = child.next_event(timeout)
            if ev is None:
                if child.ended:
                    return
                continue
            if ev["event"] == "stats":
                yield ev

    def wait_stats(self, predicate: Any, timeout: float) -> dict[str, Any] | None:
        """The first stats event for which predicate(event) is true, within `timeout`."""
        for ev in self.iter_stats(timeout):
            if predicate(ev):
                return ev
        return None

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> RunResult:
        """SIGINT, then SIGTERM, then SIGKILL; then clean what the run left behind."""
        if self._result is not None:
            return self._result
        returncode = None
        if self.child is not None:
            returncode = self.child.stop([(signal.SIGINT, SIGINT_GRACE_S),
                                          (signal.SIGTERM, SIGTERM_GRACE_S),
                                          (signal.SIGKILL, SIGKILL_GRACE_S)])  # fmt: skip
            self.child.close()
        self.cleaned = self.clean_leftovers()
        self._result = RunResult(
            returncode=returncode,
            signals=list(self.signals),
            ready=self.ready,
            stats=list(self.stats),
            exit_event=self.exit_event,
            cleaned=self.cleaned,
            log_tail=list(self.log)[-20:],
        )
        return self._result

    def clean_leftovers(self) -> list[str]:
        """Remove this run's runtime dir and hugepage files (never files still locked)."""
        removed = []
        for path in eal.leftovers(self.eal, self.host):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif hugepages.file_in_use(path):
                continue
            else:
                path.unlink(missing_ok=True)
            if not path.exists():
                removed.append(str(path))
        return removed

    def __enter__(self) -> L2fwdProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def runtime_dirs(host: Host = REAL_HOST) -> list[Path]:
    """fastpath's DPDK runtime dirs currently present (a test's leak check uses this)."""
    base = host.path(eal.RUNTIME_ROOT)
    return sorted(p for p in base.glob(f"{eal.PREFIX_BASE}-*") if p.is_dir())
