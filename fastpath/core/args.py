"""Command-line pieces every command shares: the shape of a `fastpath NAME` command and of
its ACTION sub-commands, ports, the interface + namespace pair, --json and --watch."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
from typing import Any

from fastpath.errors import FastpathError

PORT_FIX = "ports are 1-65535"


def parse_port(text: str, what: str = "", fix: str = PORT_FIX) -> int:
    """'443' -> 443; anything else is one FastpathError naming `what` (e.g. "VIP 10.0.0.1:x")."""
    text = text.strip()
    prefix = f"bad {what}: " if what else ""
    if not text.isdigit():
        raise FastpathError(f"{prefix}port {text!r} is not a number", fix=fix)
    value = int(text)
    if not 1 <= value <= 65535:
        raise FastpathError(f"{prefix}port {value} out of range 1-65535", fix=fix)
    return value


def parse_cidr(text: str, what: str = "CIDR",
               example: str = "write an IPv4 or IPv6 network such as 203.0.113.0/24 or 2001:db8::/32",
               ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'203.0.113.0/24' -> the network; anything else is one FastpathError naming `what`, whose
    fix names the network meant when only host bits are wrong, else `example`."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        fix = example
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(text.strip(), strict=False)
            fix = f"did you mean {net}?"  # the error already says host bits are set
        raise FastpathError(f"bad {what} {text!r}: {exc}", fix=fix) from None


def port_type(text: str) -> int:
    """parse_port as an argparse `type=`: argparse prints the usage line and the reason."""
    try:
        return parse_port(text)
    except FastpathError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_iface_args(parser: argparse.ArgumentParser, netns_help: str = "network namespace of the interface "
                   "(ip netns)") -> None:
    parser.add_argument("iface", metavar="IFACE", help="interface name")
    parser.add_argument("--netns", metavar="NAME", help=netns_help)


def add_json_arg(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_watch_arg(parser: argparse.ArgumentParser, help: str = "redraw every SECS seconds") -> None:
    """--watch [SECS] (1 s when given bare), for fastpath.core.watch.watch."""
    parser.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECS", help=help)


def add_command(subparsers: Any, name: str, *, help: str, description: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """`fastpath NAME`: its epilog of example invocations keeps its line breaks."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_actions(parser: argparse.ArgumentParser, dest: str, metavar: str = "ACTION") -> Any:
    """The sub-commands of a command group; the group given alone prints its help (exit 2)."""

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
    return parser.add_subparsers(dest=dest, metavar=metavar)
