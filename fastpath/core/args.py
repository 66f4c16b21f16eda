"""Command-line pieces every command shares: ports, and the interface + namespace pair."""

from __future__ import annotations

import argparse

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
