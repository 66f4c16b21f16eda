"""sd_notify(3) in a few lines: tell systemd (Type=notify) that the agent is ready, reloading
or stopping, through the datagram socket it names in $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") as one datagram; False when not run by
    systemd (no $NOTIFY_SOCKET), True when sent."""
    address = os.environ.get(NOTIFY_ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(fields).encode())
    return True


def reloading() -> list[str]:
    """The fields that start a reload (systemd 253's notify-reload wants the timestamp)."""
    return ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
