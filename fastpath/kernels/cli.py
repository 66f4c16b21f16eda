"""`python -m fastpath.kernels [KERNEL...]`: the kernel matrix (`make kernels`).

Each KERNEL is a Debian series (`6.1`, `6.12`) booted under qemu with virtme-ng, or `host`
(the running kernel, no VM). Each runs the load sweep and tests/bpf (fastpath.kernels.guest);
the table of programs x kernels follows, with every failure's verifier lines or test message.
Exit status 0 when no program fails on any kernel ("needs X.Y" is not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastpath.errors import CapabilityError, FastpathError
from fastpath.kernels import packages, report, vm

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KERNELS = ("6.1", "6.12", "host")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastpath.kernels",
        description="Compile and load every BPF program of bpf/ and run tests/bpf under several kernels.",
        epilog="examples:\n  python -m fastpath.kernels              # 6.1, 6.12 and the running kernel\n"
               "  python -m fastpath.kernels 6.1 --load-only\n  python -m fastpath.kernels host --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernels", nargs="*", default=list(DEFAULT_KERNELS),
                   help="Debian kernel series (6.1, 6.12) or 'host' (default: 6.1 6.12 host)")
    p.add_argument("--load-only", action="store_true", help="the load sweep only, no tests/bpf")
    p.add_argument("--only", action="append", default=[], metavar="PROGRAM",
                   help="sweep only this program of bpf/ (repeatable; tests/bpf runs unless --load-only)")
    p.add_argument("--tests", metavar="EXPR",
                   help="run only the tests of tests/bpf that match this pytest -k expression (to check "
                        "a fix again without the whole suite)")
    # bcc 0.26 (Debian 12) cannot compile against 6.12's own headers (see the README), so by
    # default every kernel compiles as fastpath does on a host without headers of its own.
    p.add_argument("--headers", choices=("own", "dist"), default="dist",
                   help="compile against the installed linux-headers-amd64, the stand-in "
                        "scripts/setup-host.sh links for a kernel without any (default), or each "
                        "kernel's own headers (own)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--cache", type=Path, default=REPO / "build" / "kernels",
                   help="where kernels are unpacked and results kept (default build/kernels)")
    p.add_argument("--memory", default="3G", help="guest memory (default 3G)")
    p.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="guest CPUs (default 2)")
    p.add_argument("--timeout", type=float, default=120, help="minutes per kernel before it is stopped (120)")
    return p


def say(msg: str) -> None:
    print(f"kernels: {msg}", flush=True)


def _read(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fresh(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def run_host(args: argparse.Namespace, out: Path, guest_args: list[str]) -> dict[str, Any]:
    """The running kernel, no VM: the guest entry in a child, with its own pin and run roots."""
    _fresh(out)
    pins = Path(tempfile.mkdtemp(prefix="fastpath-kernels-", dir="/sys/fs/bpf"))
    run_root = Path(tempfile.mkdtemp(prefix="fastpath-kernels-", dir="/run"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "FASTPATH_PIN_ROOT": str(pins), "FASTPATH_RUN_ROOT": str(run_root)}
    start = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "fastpath.kernels.guest", "--inside", "--out", str(out),
                              *guest_args], cwd=REPO, env=env, check=False)
    finally:
        shutil.rmtree(pins, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    result = _read(out) or {"release": platform.release(), "error": f"the suite exited {res.returncode} "
                                                                    "without results"}
    result.update(machine="host", boot_s=None, total_s=round(time.monotonic() - start, 1))
    return result


def run_vm(args: argparse.Namespace, series: str, guest_args: list[str]) -> dict[str, Any]:
    vm.require_qemu()
    vng = vm.find_vng(sys.executable)
    pkgs = packages.select(series, packages.apt_depends)
    tools = packages.fetch_tools(args.cache, say)
    tree = packages.fetch_kernel(pkgs, args.cache, tools, say)
    out = args.cache / "results" / pkgs.release
    _fresh(out)
    kvm = vm.host_kvm_usable()
    headers = packages.dist_headers() if args.headers == "dist" else None
    boot = vm.Boot(tree, tools, REPO, out, sys.executable, args.memory, args.cpus, kvm, headers)
    accel = "KVM" if kvm else "TCG, no usable KVM"
    which = f"headers {headers[0].name}" if headers else "its own headers"
    say(f"booting {pkgs.release} ({accel}, {args.cpus} CPUs, {args.memory}, {which}); "
        f"console in {out / 'console.log'}")
    res = vm.run(boot, vng, guest_args, args.timeout * 60, out / "console.log",
                 lambda line: print(f"  | {line}", flush=True))
    result = _read(out)
    if result is None or res.timed_out or res.returncode != 0:
        why = (f"stopped after {args.timeout:.0f} min" if res.timed_out
               else f"the VM exited {res.returncode}" + ("" if result else " without results"))
        last = " | ".join(ln for ln in res.tail[-3:] if ln)
        result = {**(result or {"release": pkgs.release}), "error": f"{why}: {last}"}
    result.update(machine="vm", kvm=kvm, boot_s=None if res.boot_s is None else round(res.boot_s, 1),
                  total_s=round(res.total_s, 1), package=pkgs.image,
                  headers=str(headers[0]) if headers else "own")
    return result


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A stopped run (CI's timeout, a closed terminal) still stops its VM and cleans up.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
    try:
        return _main(args)
    except FastpathError as exc:
        print(f"kernels: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kernels: interrupted", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CapabilityError("loading BPF programs and booting kernels needs root", fix="sudo make kernels")
    for k in args.kernels:
        if k != "host":
            packages.select_check(k)
    guest_args = ["--no-tests"] if args.load_only else []
    guest_args += [f"--only={name}" for name in args.only]
    if args.tests and not args.load_only:
        guest_args += ["tests/bpf", f"-k{args.tests}"]
    columns: list[tuple[str, dict[str, Any]]] = []
    for kernel in args.kernels:
        start = time.monotonic()
        if kernel == "host":
            say(f"running kernel {platform.release()} (no VM)")
            result = run_host(args, args.cache / "results" / "host", guest_args)
            heading = f"{platform.release()} (host)"
        else:
            result = run_vm(args, kernel, guest_args)
            heading = str(result.get("release", kernel))
        say(f"{heading}: done in {time.monotonic() - start:.0f} s")
        columns.append((heading, result))
    if args.json:
        rows = [{"kernel": h, **r, "test_files": report.test_files(r)} for h, r in columns]
        print(json.dumps(rows, indent=1))
    else:
        print()
        print(report.render(columns))
    return 1 if any(report.failed(r) for _, r in columns) else 0
