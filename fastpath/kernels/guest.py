"""What runs inside each kernel of the matrix: the load sweep, then tests/bpf, with every
load and test outcome written to `results.json` in the output directory.

In a virtme-ng guest the host's root arrives over 9p without caching, where starting Python
and reading kernel headers cost minutes under an emulated CPU. So the guest first mounts a
second share of the host root with `cache=loose` (the host tree is read-only and does not
change during a run) and runs the suite chrooted there (`--outer`), with /proc, /sys, /dev,
bpffs, a tmpfs /run, this kernel's modules and headers at /lib/modules/$(uname -r), and the
output directory (a read-write share) mounted in. On the host, `--inside` runs directly.

    python -m fastpath.kernels.guest --inside --out DIR [--no-tests] [--only PROGRAM] [pytest args...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Tests of tests/bpf that are not about a program's verdicts and cannot run in a guest, by
# node id prefix: deselected in the VMs only (the host runs them), and listed in the results.
VM_DESELECT: dict[str, str] = {
    "tests/bpf/test_kernel_peers.py": "the benchmarks' kernel peers are built with clang and libbpf "
                                      "into build/ (read-only in the guest), not programs of bpf/",
    "tests/bpf/test_bench_counter.py": "a benchmark run whose premise is a speed range (ns per packet); "
                                       "an emulated CPU is 20-50x slower",
    # The per-packet benchmarks' set-up builds their kernel peers too; the sweep loads
    # their harness builds (restoring_harness with syn_guard, l4lb_bench) in every kernel.
    "tests/bpf/test_l4lb_bench.py::test_lb_packet_harness":
        "the lb-packet benchmark's set-up builds its kernel peers into build/ (read-only in the guest)",
    "tests/bpf/test_synflood_bench.py::test_synflood_packet_harness":
        "the synflood-packet benchmark's set-up builds its kernel peers into build/ (read-only in the guest)",
    "tests/bpf/test_synflood_bench.py::test_synflood_kernel_xdp_synproxy":
        "the kernel's XDP SYN proxy is a kernel peer built into build/ (read-only in the guest), and "
        "its conntrack kfuncs come with nf_conntrack, a module the guest does not load",
}

FAST_ROOT = "/run/fastpath-root"
FAST_TAG = "fastpath"
NINEP = "trans=virtio,version=9p2000.L,msize=524288"


def _run(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"guest: {' '.join(argv)} failed: {res.stderr.strip()[-300:]}")


def _is_mount(path: str) -> bool:
    return subprocess.run(["mountpoint", "-q", path], check=False).returncode == 0


def outer(args: argparse.Namespace, rest: list[str]) -> int:
    """Inside the VM: mount the cached share of the host root, chroot into it, run --inside."""
    root = FAST_ROOT
    os.makedirs(root, exist_ok=True)
    _run("mount", "-t", "9p", "-o", f"ro,cache=loose,{NINEP}", FAST_TAG, root)
    for d in ("proc", "sys", "dev"):
        _run("mount", "--rbind", f"/{d}", f"{root}/{d}")
    if not _is_mount(f"{root}/sys/fs/bpf"):
        _run("mount", "-t", "bpf", "bpf", f"{root}/sys/fs/bpf")
    _run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{root}/run")
    modules = f"{root}/usr/lib/modules"
    _run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", modules)
    if args.headers:
        # bcc finds headers through build and source: the ones given instead of the kernel's own
        build, source = args.headers.split(":")
        os.mkdir(f"{modules}/{platform.release()}")
        os.symlink(build, f"{modules}/{platform.release()}/build")
        os.symlink(source, f"{modules}/{platform.release()}/source")
    else:
        os.symlink(args.moddir, f"{modules}/{platform.release()}")
    _run("mount", "--bind", args.out, f"{root}{args.out}")
    os.makedirs(f"{root}/run/tmp", mode=0o1777)
    env = {**os.environ, "TMPDIR": "/run/tmp", "HYPOTHESIS_STORAGE_DIRECTORY": "/run/tmp/hypothesis",
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/run/tmp"}
    argv = [sys.executable, "-m", "fastpath.kernels.guest", "--inside", "--vm", "--out", args.out,
            *(["--no-tests"] if args.no_tests else []), *[f"--only={p}" for p in args.only], *rest]
    return subprocess.run(["chroot", root, "sh", "-c", 'cd "$0" && exec "$@"', os.getcwd(), *argv],
                          env=env, check=False).returncode


def inside(args: argparse.Namespace, rest: list[str]) -> int:
    """The sweep and the tests against the running kernel; results.json in args.out."""
    from fastpath.kernels import programs

    if not _is_mount("/sys/fs/bpf"):
        _run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "started").write_text(f"{time.time()}\n")
    result: dict[str, Any] = {"release": platform.release(), "loads": [], "tests": [], "modules": {},
                              "min_kernel": {}, "sweep_s": 0.0, "tests_s": None, "pytest_exit": None}

    def save() -> None:
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.rename(out / "results.json")

    def say(msg: str) -> None:
        print(f"{platform.release()}: {msg}", flush=True)

    shared = programs.SharedLoads()
    try:
        start = time.monotonic()
        programs.check_variants()
        for name in sorted({v.program for v in programs.variants()} | _bpf_programs()):
            mk = programs.minimum_kernel(name)
            result["min_kernel"][name] = f"{mk[0]}.{mk[1]}" if mk else None
        for variant in programs.variants():
            if args.only and variant.program not in args.only:
                continue
            shared.sweep(variant, say)
            result["loads"] = [r.to_json() for r in shared.records]
            result["sweep_s"] = round(time.monotonic() - start, 1)
            save()  # a run stopped part-way still reports what it loaded
        if not args.no_tests:
            start = time.monotonic()
            last_save = time.monotonic()

            def progress() -> None:  # a run stopped during the tests still reports those done
                nonlocal last_save
                if time.monotonic() - last_save > 10:
                    result["tests"], result["deselected"] = recorder.tests, recorder.deselected
                    result["tests_s"] = round(time.monotonic() - start, 1)
                    save()
                    last_save = time.monotonic()

            recorder = Recorder(shared, say, VM_DESELECT if args.vm else {}, progress)
            with shared.hooked():
                result["pytest_exit"] = _pytest(rest, recorder)
            result["tests_s"] = round(time.monotonic() - start, 1)
            result["tests"] = recorder.tests
            result["deselected"] = recorder.deselected
            result["shared"] = shared.shared
            result["loads"] = [r.to_json() for r in shared.records]
            result["modules"] = {m: sorted({r.program for r in shared.records if r.module == m})
                                 for m in {t["module"] for t in recorder.tests}}
        save()
    finally:
        shared.close()
    return 0


def _bpf_programs() -> set[str]:
    from fastpath.bpf import loader

    return {p.stem for p in loader.bpf_source_dir().glob("*.c")}


def _pytest(rest: list[str], recorder: Recorder) -> int:
    import pytest

    argv = ["-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic", *(rest or ["tests/bpf"])]
    return int(pytest.main(argv, plugins=[recorder]))


class Recorder:
    """A pytest plugin: which module is running (for the load records) and every outcome."""

    def __init__(self, shared: Any, say: Any, deselect: dict[str, str] | None = None,
                 progress: Callable[[], None] = lambda: None) -> None:
        self.shared = shared
        self.progress = progress
        self.say = say
        self.tests: list[dict[str, Any]] = []
        self.deselected: list[dict[str, str]] = []
        self._deselect = deselect or {}
        self._module = ""
        self._setup = 0.0

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        keep, drop = [], []
        for item in items:
            reason = next((why for prefix, why in self._deselect.items() if item.nodeid.startswith(prefix)),
                          None)
            if reason is None:
                keep.append(item)
            else:
                drop.append(item)
                self.deselected.append({"nodeid": item.nodeid, "module": item.nodeid.split("::")[0],
                                        "reason": reason})
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        module = nodeid.split("::")[0]
        self.shared.module = module
        if module != self._module:
            self._module = module
            self.say(f"tests {module}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            message = ""
            if report.failed:
                lines = [ln for ln in str(report.longreprtext).splitlines() if ln.strip()]
                message = " | ".join(lines[-3:])[-600:]
            elif report.skipped and isinstance(report.longrepr, tuple):
                message = str(report.longrepr[2])
            self.tests.append({"nodeid": report.nodeid, "module": report.nodeid.split("::")[0],
                               "outcome": report.outcome, "message": message,
                               "seconds": round(self._setup + report.duration, 2)})
            self._setup = 0.0
        elif report.when == "setup":
            self._setup = report.duration  # a module fixture's compile counts for its first test
            self.progress()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastpath.kernels.guest")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--outer", action="store_true", help="in a VM: set up the cached root, then --inside")
    mode.add_argument("--inside", action="store_true", help="run the sweep and the tests here")
    parser.add_argument("--out", required=True, help="directory for results.json")
    parser.add_argument("--moddir", help="this kernel's modules directory (with --outer)")
    parser.add_argument("--headers", metavar="BUILD:SOURCE",
                        help="compile against these headers (with --outer)")
    parser.add_argument("--vm", action="store_true",
                        help="in a VM (with --inside): leave out the tests VM_DESELECT names")
    parser.add_argument("--no-tests", action="store_true", help="the load sweep only")
    parser.add_argument("--only", action="append", default=[], metavar="PROGRAM",
                        help="sweep only this program of bpf/ (repeatable)")
    args, rest = parser.parse_known_args(argv)
    if args.outer:
        if not args.moddir:
            parser.error("--outer needs --moddir")
        return outer(args, rest)
    return inside(args, rest)


if __name__ == "__main__":
    sys.exit(main())
