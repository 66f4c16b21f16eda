"""The load sweep: every program of `bpf/`, compiled with bcc and loaded by the running
kernel, with its default -D options and the extremes its control plane can produce.

Compiles are the costly part under an emulated CPU, so the sweep's loads are kept open and
handed, unused, to the first test of tests/bpf that asks for the same program with the same
cflags (`SharedLoads`): one compile serves both. Every load, the sweep's and the tests', is
recorded with its outcome and the verifier's last lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastpath.apps.count import xdp_count
from fastpath.apps.decap import decap
from fastpath.apps.guard import abi as guard_abi
from fastpath.apps.lb import abi as lb_abi
from fastpath.apps.lb import config as lb_config
from fastpath.bpf import loader, testrun
from fastpath.errors import FastpathError
from fastpath.labs import flood

Version = tuple[int, int]


@dataclass(frozen=True)
class Harness:
    """A program compiled only inside the restoring harness (fastpath.bpf.testrun.load_restoring)."""

    sources: tuple[str, ...]   # stems in bpf/, the data plane first
    process: str
    frame_len: int
    moves: str = "head"
    after: str | None = None


@dataclass(frozen=True)
class Variant:
    """One way of compiling a program: a label, its spec and -D options, the entries loaded."""

    program: str
    label: str
    spec: loader.ProgramSpec
    defines: Mapping[str, int | str] = field(default_factory=dict)
    entries: tuple[str, ...] = ()
    # Entries that need a newer kernel than the program as a whole.
    entry_needs: Mapping[str, Version] = field(default_factory=dict)
    harness: Harness | None = None

    @property
    def all_entries(self) -> tuple[str, ...]:
        return (self.spec.entry, *[e for e in self.entries if e != self.spec.entry])


def _spec(name: str, entry: str) -> loader.ProgramSpec:
    return loader.ProgramSpec(name=name, entry=entry, maps=())


# What attach derives from an interface and its namespace (fastpath.apps.guard.config): MSS
# from the smallest and largest MTU, window scaling off (15) or at its largest, timestamps
# and SACK off or on; and the SYN-ACK's TTL, a tunable attach leaves at 64, at both ends.
# tests/bpf/test_syn_guard.py checks the SYN-ACKs of exactly these builds, so in the matrix
# the sweep's compiles serve that test too.
GUARD_EXTREMES: dict[str, dict[str, int | str]] = {
    "low": {"SG_MSS4": 536, "SG_MSS6": 1220, "SG_WSCALE": 15, "SG_TIMESTAMPS": 0, "SG_SACK": 0, "SG_TTL": 1},
    "high": {"SG_MSS4": 65495, "SG_MSS6": 65475, "SG_WSCALE": 14, "SG_TIMESTAMPS": 1, "SG_SACK": 1,
             "SG_TTL": 255},
}


# The balancer's extremes, within fastpath.apps.lb.config.check_tunables. Map sizes that
# fit a 3 GiB guest: the largest VIP and backend counts with a mid-size Maglev table and
# conntrack (the limits 1000003 slots and 2**26 flows would need gigabytes of map memory).
LB_LOW: dict[str, int | str] = {"LB_MAX_VIPS": 1, "LB_MAX_BACKENDS": 1, "LB_RING_SIZE": 7,
                                "LB_CONNTRACK_SIZE": 1024, "LB_UDP_TIMEOUT": 1, "LB_TCP_TIMEOUT": 1,
                                "LB_CLOSING_TIMEOUT": 1}
LB_HIGH: dict[str, int | str] = {"LB_MAX_VIPS": 1024, "LB_MAX_BACKENDS": 65535, "LB_RING_SIZE": 4099,
                                 "LB_CONNTRACK_SIZE": 1 << 20, "LB_HASH_SEED": 0xFFFFFFFF,
                                 "LB_UDP_TIMEOUT": lb_abi.MAX_TIMEOUT, "LB_TCP_TIMEOUT": lb_abi.MAX_TIMEOUT,
                                 "LB_CLOSING_TIMEOUT": lb_abi.MAX_TIMEOUT}


def _doctor_defines() -> dict[str, int | str]:
    from fastpath.doctor.session import PROBE_BPF_CFLAGS

    out: dict[str, int | str] = {}
    for flag in PROBE_BPF_CFLAGS:
        key, _, value = flag.removeprefix("-D").partition("=")
        out[key] = value
    return out


def variants() -> list[Variant]:
    """Every compile of the sweep, in the order it runs (most used programs first)."""
    out = [Variant("xdp_count", "default", xdp_count.SPEC),
           Variant("xdp_count", "high", xdp_count.SPEC,
                   {"WATCH_PORT": 65535, "GENERATION": xdp_count.COUNT_GENERATIONS - 1}),
           Variant("syn_guard", "default", guard_abi.SPEC)]
    out += [Variant("syn_guard", label, guard_abi.SPEC, d) for label, d in GUARD_EXTREMES.items()]
    out += [Variant("l4lb", "default", lb_abi.SPEC),
            Variant("l4lb", "low", lb_abi.SPEC, LB_LOW),
            Variant("l4lb", "high", lb_abi.SPEC, LB_HIGH),
            Variant("decap", "default", decap.SPEC, decap.TUNABLES),
            Variant("syn_flood", "ipv4", flood.SPEC, flood.program_defines(_net("10.66.0.0/16"))),
            Variant("syn_flood", "ipv6", flood.SPEC, flood.program_defines(_net("fd00:66::/64"))),
            Variant("doctor_probe", "default", _spec("doctor_probe", "doctor_pass"), _doctor_defines(),
                    ("doctor_cookie_v4", "doctor_cookie_v6"),
                    {"doctor_cookie_v4": (6, 0), "doctor_cookie_v6": (6, 0)}),
            Variant("counter_peers", "default", _spec("counter_peers", "textbook"), {}, ("noop",)),
            Variant("lb_peers", "default", _spec("lb_peers", "textbook")),
            Variant("synflood_floors", "default", _spec("synflood_floors", "drop_all"), {}, ("reflect",)),
            Variant("l2fwd_redirect", "default", _spec("l2fwd_redirect", "xdp_redirect")),
            # The benchmarks' builds: the guard's answer moves the tail; the balancer's miss
            # path forgets its flow after each run (l4lb_bench.c).
            Variant("restoring_harness", "syn_guard", _spec("restoring_harness", testrun.HARNESS_ENTRY),
                    guard_abi.TUNABLES, harness=Harness(("syn_guard",), "sg_process", 94, "tail")),
            Variant("l4lb_bench", "default", _spec("l4lb_bench", testrun.HARNESS_ENTRY),
                    {**lb_abi.TUNABLES, "LB_RING_SIZE": 4099, "LB_MAX_VIPS": 4},
                    harness=Harness(("l4lb", "l4lb_bench"), "lb_process", 74, after="lb_bench_forget")),
            # the guard behind a front that gives every run's SYN a new source (cookie-flood)
            Variant("syn_guard_bench", "default", _spec("syn_guard_bench", testrun.HARNESS_ENTRY),
                    guard_abi.TUNABLES, harness=Harness(("syn_guard", "syn_guard_bench"), "sg_bench_spoofed",
                                                        94, "tail"))]
    return out


# bpf/ files the sweep does not load with bcc, and why.
NOT_BCC = {"peer_harness": "clang and libbpf build it around the kernel's own peers at bench time "
                           "(fastpath.bench.kernel_peers)"}


def _net(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_network(text)


def check_variants() -> None:
    """The balancer's extremes are ones its control plane accepts."""
    for d in (LB_LOW, LB_HIGH):
        lb_config.check_tunables({**lb_abi.TUNABLES, **d})


def minimum_kernel(program: str) -> Version | None:
    """The 'Minimum kernel: X.Y' its C file's opening comment states."""
    path = loader.bpf_source_dir() / f"{program}.c"
    try:
        m = re.search(r"Minimum kernel:[^\n]*?(\d+)\.(\d+)", path.read_text())
    except OSError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def programs_of(spec_name: str, cflags: list[str]) -> list[str]:
    """The bpf/ programs a load compiled: the restoring harness joins a data plane, and
    perhaps a bench hook, with restoring_harness.c."""
    if not spec_name.endswith("_harness"):
        return [spec_name]
    defs = dict(f.removeprefix("-D").partition("=")[::2] for f in cflags if f.startswith("-D"))
    plane = {"sg_process": "syn_guard", "lb_process": "l4lb", "tb_process": "lb_peers",
             "sg_bench_spoofed": "syn_guard"}
    out = ["restoring_harness"]
    if defs.get("BENCH_PROCESS") in plane:
        out.append(plane[defs["BENCH_PROCESS"]])
    if defs.get("BENCH_PROCESS") == "sg_bench_spoofed":
        out.append("syn_guard_bench")
    if defs.get("BENCH_AFTER") == "lb_bench_forget":
        out.append("l4lb_bench")
    return out


@dataclass
class LoadRecord:
    program: str
    label: str          # the sweep's variant, or "test"
    entry: str
    cflags: list[str]
    ok: bool
    seconds: float
    error: str = ""
    module: str = ""    # the test module that asked for it
    needs: str | None = None  # an entry's own minimum kernel, where it has one

    def to_json(self) -> dict[str, Any]:
        return {"program": self.program, "label": self.label, "entry": self.entry, "cflags": self.cflags,
                "ok": self.ok, "seconds": round(self.seconds, 2), "error": self.error, "module": self.module,
                "needs": self.needs}


Key = tuple[str, str, tuple[str, ...], str]


def _key(spec: loader.ProgramSpec, cflags: list[str], prog_type: str) -> Key:
    return (str(spec.source_path), spec.entry, tuple(cflags), prog_type)


class SharedLoads:
    """The sweep's loads, each handed once to a test loading the same thing; and a record of
    every load made while `hooked()` is active."""

    def __init__(self) -> None:
        self.records: list[LoadRecord] = []
        self.module = ""
        self.shared = 0
        self._kept: dict[Key, loader.LoadedProgram] = {}
        self._load: Callable[..., loader.LoadedProgram] = loader.load

    def sweep(self, variant: Variant, say: Callable[[str], None]) -> None:
        cflags = loader.build_cflags(variant.spec, variant.defines, None)
        start = time.monotonic()
        try:
            prog = self._compile(variant)
        except FastpathError as exc:
            self._record(variant.program, variant.label, variant.spec.entry, cflags, start, str(exc))
            say(f"load {variant.program} ({variant.label}): FAILED {exc}")
            return
        self._record(variant.program, variant.label, variant.spec.entry, cflags, start, "")
        for entry in variant.all_entries[1:]:
            t = time.monotonic()
            error = _load_entry(prog, entry)
            self._record(variant.program, variant.label, entry, cflags, t, error)
            needs = variant.entry_needs.get(entry)
            self.records[-1].needs = f"{needs[0]}.{needs[1]}" if needs else None
        took = time.monotonic() - start
        bad = [r for r in self.records[-len(variant.all_entries):] if not r.ok]
        verdict = f"{len(bad)} of {len(variant.all_entries)} entries FAILED" if bad else "ok"
        say(f"load {variant.program} ({variant.label}): {verdict} in {took:.0f} s")
        if variant.harness:
            prog.close()  # a harness build is the tests' own, in a directory of its own
        else:
            self._kept[_key(variant.spec, cflags, "XDP")] = prog

    def _compile(self, variant: Variant) -> loader.LoadedProgram:
        h = variant.harness
        if h is None:
            return self._load(variant.spec, variant.defines)
        sources = [loader.bpf_source_dir() / f"{stem}.c" for stem in h.sources]
        return testrun.load_restoring(sources, h.process, h.frame_len, variant.defines, moves=h.moves,
                                      after=h.after)

    def _record(self, program: str, label: str, entry: str, cflags: list[str], start: float,
                error: str) -> None:
        took = time.monotonic() - start
        self.records.append(LoadRecord(program, label, entry, cflags, not error, took, error, self.module))

    def load(self, spec: loader.ProgramSpec, defines: Mapping[str, int | str] | None = None,
             pin_dir: str | None = None, prog_type: str = "XDP") -> loader.LoadedProgram:
        """loader.load, served from the sweep when it already compiled exactly this."""
        cflags = loader.build_cflags(spec, defines or {}, pin_dir)
        kept = self._kept.pop(_key(spec, cflags, prog_type), None) if pin_dir is None else None
        if kept is not None:
            self.shared += 1
            return loader.LoadedProgram(spec, kept.bpf, kept.prog_fd, kept.cflags)
        start = time.monotonic()
        try:
            prog = self._load(spec, defines, pin_dir, prog_type)
        except FastpathError as exc:
            self._note(spec, cflags, start, str(exc))
            raise
        self._note(spec, cflags, start, "")
        return prog

    def _note(self, spec: loader.ProgramSpec, cflags: list[str], start: float, error: str) -> None:
        ours = spec.source_dir == loader.bpf_source_dir() or spec.name.endswith("_harness")
        if ours:
            for program in programs_of(spec.name, cflags):
                self._record(program, "test", spec.entry, cflags, start, error)

    @contextmanager
    def hooked(self) -> Iterator[None]:
        loader.load = self.load  # the tests call loader.load through the module
        try:
            yield
        finally:
            loader.load = self._load

    def close(self) -> None:
        for prog in self._kept.values():
            prog.close()
        self._kept.clear()


def _load_entry(prog: loader.LoadedProgram, entry: str) -> str:
    """Load another entry function of an already compiled program; '' or the verifier's lines."""
    with loader.captured_stderr() as out:
        try:
            prog.bpf.load_func(entry.encode(), prog.bpf.XDP)
        except Exception as exc:  # bcc raises bare Exception
            tail = " | ".join([ln.strip() for ln in out if ln.strip()][-3:]) or str(exc)
            return f"the verifier rejected {entry}: {tail}"
    return ""
