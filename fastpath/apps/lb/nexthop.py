"""A backend's next-hop MAC: what the balancer writes as the destination of the frames it
sends the backend, read from the kernel's neighbour table of the balancer's interface.

Only the balancer needs it (its data plane rewrites Ethernet headers and sends frames back
out the interface they came in on), so it lives here rather than in the runtime.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

from fastpath.apps.lb.abi import IPAddress
from fastpath.core.namespaces import in_netns
from fastpath.errors import FastpathError

# Neighbour states (linux/neighbour.h) whose link-layer address is not to be trusted.
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20


def resolve_mac(address: IPAddress, ifname: str, netns: str | None, timeout: float = 3.0) -> str:
    """The MAC frames to `address` must carry out of `ifname`: the backend's own when it is
    on the link, its gateway's otherwise. Probes (one UDP datagram to the discard port makes
    the kernel resolve the neighbour) when the neighbour table has no usable entry."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    where = f"{ifname} in {netns}" if netns else ifname
    fam = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with in_netns(netns):
        ipr = IPRoute()
        sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise FastpathError(f"unknown interface {ifname!r}", fix="see 'ip link'")
        try:
            route = ipr.route("get", dst=str(address))[0]
        except NetlinkError as exc:
            raise FastpathError(f"backend {address}: no route to it from {where} ({os.strerror(exc.code)})",
                                fix="add an address on that segment or a route, or give --mac") from None
        if route["type"] == 2:  # RTN_LOCAL
            raise FastpathError(f"backend {address} is an address of the balancer itself",
                                fix="use the backend's own address")
        if route.get_attr("RTA_OIF") != idx[0]:
            raise FastpathError(f"backend {address} is not reachable through {where}",
                                fix="XDP sends balanced packets back out the interface they came in on; "
                                    "put backends on that segment or route them via it")
        hop = route.get_attr("RTA_GATEWAY") or str(address)
        deadline = time.monotonic() + timeout
        next_probe = 0.0
        while True:
            for n in ipr.get_neighbours(ifindex=idx[0], dst=hop):
                mac = n.get_attr("NDA_LLADDR")
                if mac and n["state"] not in (0, NUD_INCOMPLETE, NUD_FAILED):
                    return str(mac).lower()
            now = time.monotonic()
            if now >= deadline:
                raise FastpathError(f"backend {address}: cannot resolve its MAC address on {where}"
                                    + (f" (gateway {hop})" if hop != str(address) else ""),
                                    fix="check the backend is up on that segment, or give it with --mac")
            if now >= next_probe:
                with contextlib.suppress(OSError):
                    target: tuple[Any, ...] = (hop, 9) if fam == socket.AF_INET else (hop, 9, 0, idx[0])
                    sock.sendto(b"", target)
                next_probe = now + 0.5
            time.sleep(0.02)
    finally:
        ipr.close()
        sock.close()


