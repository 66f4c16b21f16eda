"""`fastpath uring ...`: run the io_uring echo server (either engine) and probe io_uring."""

from __future__ import annotations

import argparse
from typing import Any

from fastpath.errors import FastpathError
from fastpath.output import print_json, print_table

EPILOG = """\
examples:
  fastpath uring serve --port 7777                  native server, one ring
  fastpath uring serve --engine python --port 0     Python server on a free port
  fastpath uring serve --threads 2 --stats-interval 5
  fastpath uring probe --json                       kernel features, opcodes, binding
"""


def _int(name: str, text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise FastpathError(f"{name} {text}: expected an integer") from None


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FastpathError(f"{name} {text}: expected a number") from None


def options_from_args(args: argparse.Namespace) -> Any:
    from fastpath.uring.native import EchoOptions

    return EchoOptions(
        addr=args.addr,
        port=_int("--port", args.port),
        threads=_int("--threads", args.threads),
        sqpoll=args.sqpoll,
        buffers=_int("--buffers", args.buffers),
        buffer_size=_int("--buffer-size", args.buffer_size),
        conn_max_bytes=None if args.conn_max_bytes is None
        else _int("--conn-max-bytes", args.conn_max_bytes),
        stats_interval=_float("--stats-interval", args.stats_interval),
        drain_ms=_int("--drain-ms", args.drain_ms),
    ).validate()


def cmd_serve(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    if args.engine == "native":
        from fastpath.uring.native import run_native

        return run_native(opts)
    from fastpath.uring.echo_serve import serve_python

    return serve_python(opts)


def cmd_probe(args: argparse.Namespace) -> int:
    from fastpath.uring.probe import probe_features

    report = probe_features()
    if args.json:
        print_json(report)
        return 0
    functional = report["functional"]
    rows = [
        ("kernel", report["kernel"]),
        ("io_uring_disabled sysctl", report["io_uring_disabled_sysctl"]),
        ("liburing", report["liburing_version"]),
        ("binding", f"{report['binding']} ({report['binding_path']})"),
        ("struct layout checked", "yes" if report["layout_checked"] else "no (runtime checks only)"),
        ("ring setup flags", "|".join(report["setup_flags"]) or "none"),
        ("features", " ".join(report["features"])),
        ("opcodes", f"{len(report['opcodes'])} supported, last {report['last_opcode']}"),
        ("missing for echo", ", ".join(report["missing_for_echo"]) or "none"),
    ]
    rows += [(name, "yes" if v["ok"] else f"no: {v['detail']}") for name, v in functional.items()]
    print_table(["io_uring", "value"], rows, title="fastpath uring probe")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "uring",
        help="io_uring echo server (native or Python) and io_uring probe",
        description="The io_uring echo server, driven from Python, and an io_uring probe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="uring_command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run an echo server until SIGINT/SIGTERM",
        description=(
            "Run the io_uring echo server. Prints a JSON ready line (with the bound port) "
            "and JSON stats lines (on SIGUSR1, every --stats-interval, and at exit) on stdout."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--engine", choices=("native", "python"), default="native",
                       help="native: supervise fastpath-uring-echo; python: fastpath's bindings")
    serve.add_argument("--addr", default="127.0.0.1", help="IPv4 or IPv6 address (default 127.0.0.1)")
    serve.add_argument("--port", default="7777", help="TCP port, 0 picks a free one (default 7777)")
    serve.add_argument("--threads", default="1",
                       help="rings on SO_REUSEPORT listeners (python: worker processes)")
    serve.add_argument("--sqpoll", action="store_true", help="kernel thread polls the SQ")
    serve.add_argument("--buffers", default="4096",
                       help="provided buffers per ring, power of two 16..32768")
    serve.add_argument("--buffer-size", default="4096", help="bytes per buffer, 64..1048576")
    serve.add_argument("--conn-max-bytes", default=None,
                       help="bytes queued per connection before reading pauses")
    serve.add_argument("--stats-interval", default="0", help="print stats every N s (0 = off)")
    serve.add_argument("--drain-ms", default="2000",
                       help="on SIGINT/SIGTERM, time allowed to flush echoes (0..60000)")
    serve.set_defaults(func=cmd_serve)

    probe = sub.add_parser(
        "probe",
        help="io_uring kernel features, opcodes, liburing version and binding in use",
        description="Probe io_uring: features, opcodes, liburing version, ffi or shim binding.",
    )
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=cmd_probe)

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
