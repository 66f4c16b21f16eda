"""The `fastpath` command. Sub-commands live in their sub-packages; no logic here."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from fastpath import __version__
from fastpath.errors import FastpathError

# Each module exposes register(subparsers); handlers are set with set_defaults(func=...).
COMMAND_MODULES = (
    "fastpath.doctor.cli",
    "fastpath.labs.demo",
    "fastpath.netns.cli",
    "fastpath.bpf.cli",
    "fastpath.apps.count.cli",
    "fastpath.apps.guard.cli",
    "fastpath.bench.cli",
    "fastpath.dpdk.cli",
    "fastpath.uring.cli",
    "fastpath.apps.lb.cli",
    "fastpath.agent.cli",
)

EPILOG = """\
examples:
  fastpath doctor                          check every capability fastpath uses
  fastpath topo up lab.yaml                build a namespace topology
  fastpath topo exec lab1 client -- ping -c1 10.10.0.2
  fastpath count attach veth0 --netns lab1-server
  fastpath bench counter                   run a benchmark scenario side by side
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastpath",
        description="Kernel-bypass packet processing: XDP, io_uring and DPDK data planes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastpath {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except FastpathError as exc:
        print(f"fastpath: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fastpath ... | head`): stop quietly, as a shell tool does,
        # and keep the interpreter from failing again on flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - no command ends in a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"fastpath: error: {describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EPERM else 1


DEBUG_ENV = "FASTPATH_DEBUG"


def describe(exc: Exception) -> str:
    """One line for an error no command turned into a FastpathError, with what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES):
        what = f"{exc.filename}: " if exc.filename else ""
        return f"{what}{os.strerror(exc.errno)} ({exc}); run as root: sudo fastpath ..."
    if isinstance(exc, OSError):
        return f"{exc}; see 'fastpath doctor' (set {DEBUG_ENV}=1 for the traceback)"
    return (f"unexpected {type(exc).__name__}: {exc}; set {DEBUG_ENV}=1 for the traceback "
            "and report it")


if __name__ == "__main__":
    sys.exit(main())
