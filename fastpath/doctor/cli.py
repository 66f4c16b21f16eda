"""`fastpath doctor`: the registry of probes in report order, the runner that turns each one
into a row (whatever a probe raises becomes a FAIL row), the --json report and the command
line. It probes nothing itself; each row's probe lives in its area's module.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# The area modules by their own names: `from fastpath.doctor import ...` would go through
# this package's __init__, which imports this module.
import fastpath.doctor.dpdk as dpdk
import fastpath.doctor.kernel as kernel
import fastpath.doctor.net as net
import fastpath.doctor.uring as uring
import fastpath.doctor.xdp as xdp
from fastpath.core.args import add_command, add_json_arg
from fastpath.doctor.checks import ROOT, ROOT_FIX, Check, Status, _fail, _needs_root
from fastpath.doctor.session import DoctorSession, reap_stale_netns
from fastpath.errors import FastpathError

# ---------------------------------------------------------------------------------------
# Registry and runner

Probe = Callable[[DoctorSession], Check]

PROBES: dict[str, Probe] = {
    "privileges": lambda s: kernel.probe_privileges(s.root),
    "kernel": lambda s: kernel.probe_kernel(s.root),
    "bpffs": lambda s: kernel.probe_bpffs(s.root),
    "bpf-memlock": lambda s: kernel.probe_bpf_memlock(s.root),
    "btf": lambda s: kernel.probe_btf(s.root),
    "kernel-headers": lambda s: kernel.probe_kernel_headers(s.root),
    "bcc": kernel.probe_bcc,
    "xdp-native": xdp.probe_xdp_native,
    "xdp-generic": xdp.probe_xdp_generic,
    "xdp-link": xdp.probe_xdp_link,
    "xdp-test-run": xdp.probe_xdp_test_run,
    "xdp-live-frames": lambda s: xdp.probe_live_frames(),
    "veth-peer-programs": lambda s: xdp.probe_veth_peers(),
    "syncookie-helpers": xdp.probe_syncookie_helpers,
    "kernel-peers": lambda s: xdp.probe_kernel_peers(),
    "io-uring": lambda s: uring.probe_io_uring(s.root),
    "io-uring-opcodes": lambda s: uring.probe_io_uring_opcodes(),
    "io-uring-multishot": lambda s: uring.probe_io_uring_multishot(s.root),
    "liburing": lambda s: uring.probe_liburing(),
    "hugepages": lambda s: dpdk.probe_hugepages(s.root),
    "vfio": lambda s: dpdk.probe_vfio(s.root),
    "pci-nics": lambda s: dpdk.probe_pci_nics(s.root),
    "dpdk": lambda s: dpdk.probe_dpdk(),
    "dpdk-pmds": lambda s: dpdk.probe_dpdk_pmds(),
    "ipip-gre": lambda s: net.probe_tunnels(s, s.root),
    "ipvs": lambda s: net.probe_ipvs(s.root),
    "synproxy": net.probe_synproxy,
}


def run_probe(name: str, probe: Probe, session: DoctorSession) -> Check:
    """Run one probe; whatever it raises becomes a FAIL row, and the time it took is kept."""
    t0 = time.monotonic()
    try:
        result = probe(session)
    except Exception as exc:
        fix = (
            ROOT_FIX
            if _needs_root(exc)
            else f"fix the cause above, then re-run `fastpath doctor --only {name}`"
        )
        result = _fail(name, f"probe error: {type(exc).__name__}: {exc}", fix)
    return replace(result, name=name, elapsed_s=round(time.monotonic() - t0, 4))


def run_checks(names: Sequence[str] | None = None, *, root: Path = ROOT) -> list[Check]:
    """Run the named probes (all by default) in registry order, sharing one session."""
    selected = list(PROBES) if not names else list(names)
    unknown = [n for n in selected if n not in PROBES]
    if unknown:
        raise FastpathError(f"unknown check {', '.join(unknown)}", fix=f"choose from: {', '.join(PROBES)}")
    if root == ROOT:
        reap_stale_netns()
    with DoctorSession(root) as session:
        return [run_probe(n, PROBES[n], session) for n in PROBES if n in selected]


def check(name: str) -> Check:
    """Run a single probe, e.g. for a test's skip decision."""
    return run_checks([name])[0]


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def report(checks: Sequence[Check], elapsed_s: float | None = None) -> dict[str, Any]:
    """The --json document."""
    counts = {str(s): sum(c.status is s for c in checks) for s in Status}
    doc: dict[str, Any] = {
        "ok": exit_code(checks) == 0,
        "summary": counts,
        "checks": [c.to_dict() for c in checks],
    }
    if elapsed_s is not None:
        doc["elapsed_s"] = round(elapsed_s, 3)
    return doc


# ---------------------------------------------------------------------------------------
# CLI

STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}

EPILOG = """\
examples:
  fastpath doctor                   every check as a table; exit 1 if any FAILs
  fastpath doctor --json            the same with measured data, for scripts
  fastpath doctor --only xdp-native --only io-uring-opcodes
"""


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_json_arg(parser, "print the report as JSON")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=list(PROBES),
        help=f"run only this check (repeatable): {', '.join(PROBES)}",
    )
    parser.set_defaults(func=handler)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    configure_parser(add_command(
        subparsers, "doctor", help="check every capability fastpath uses",
        description="Probe the kernel, tools and privileges that fastpath's data planes need.",
        epilog=EPILOG))


def build_parser() -> argparse.ArgumentParser:
    return configure_parser(
        argparse.ArgumentParser(
            prog="fastpath doctor",
            description="Probe what fastpath's data planes need.",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def handler(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fastpath.output import info, print_json, print_table

    t0 = time.monotonic()
    checks = run_checks(args.only)
    elapsed = time.monotonic() - t0
    if args.json:
        print_json(report(checks, elapsed))
    else:
        rows = [
            (
                escape(c.name),
                f"[{STATUS_STYLE[c.status]}]{c.status}[/]",
                escape(c.detail),
                escape(c.fix or ""),
            )
            for c in checks
        ]
        print_table(
            ("capability", "status", "detail", "fix"),
            rows,
            title=f"fastpath doctor: {platform.node()} {platform.release()}",
        )
        counts = report(checks)["summary"]
        info(f"{len(checks)} checks in {elapsed:.1f} s: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return exit_code(checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return handler(args)
    except FastpathError as exc:
        print(f"fastpath doctor: error: {exc}", file=sys.stderr)
        return exc.exit_code
