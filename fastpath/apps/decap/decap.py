"""Control plane of bpf/decap.c: XDP decapsulation of the balancer's ipip traffic on a backend.

A backend of an ipip VIP receives the client's packet wrapped in an outer IPv4 (protocol 4)
or IPv6 (next header 41) header addressed to the backend. Without a kernel tunnel module
(ipip/ip6_tunnel) the stack cannot unwrap it; this program does so in XDP, before the
stack, for packets addressed to one of the addresses in its `addrs` map (the interface's own
addresses when attached, plus any given with `--addr`), coming from a balancer network
(`--from`, the `sources_v4`/`sources_v6` LPM tries) and carrying a packet to a VIP (`--vip`,
the `vips` map). Tunnels from anyone else, or to anything but a VIP, are dropped and counted:
a backend that unwrapped them would relay past every source ACL. Attach, re-attach and detach
go through fastpath.bpf.xdp, so pins and state follow the usual layout.

Mirrors bpf/decap.h as ctypes Structures (tests/bpf/test_decap.py checks them against bcc's
decoded types).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from fastpath.bpf import xdp
from fastpath.bpf.loader import ProgramSpec
from fastpath.bpf.maps import TypedMap
from fastpath.core.args import parse_cidr
from fastpath.errors import FastpathError

# Tunables of bpf/decap.c (its #ifndef defaults), passed as -D flags.
TUNABLES: dict[str, int] = {"DECAP_MAX_ADDRS": 64, "DECAP_MAX_SOURCES": 64, "DECAP_MAX_VIPS": 1024}
SPEC = ProgramSpec(name="decap", entry="decap", maps=("addrs", "sources_v4", "sources_v6", "vips", "stats"),
                   defaults=TUNABLES, command="fastpath lb decap")

# enum decap_stat, in order
STAT_NAMES = ("pass_not_ip", "pass_not_tunnel", "pass_not_local", "pass_malformed", "decap_v4",
              "decap_v6", "drop_fragment", "drop_malformed", "drop_error", "drop_not_balancer",
              "drop_not_vip", "drop_ce_not_ect")
DECAP_STAT_MAX = len(STAT_NAMES)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DecapAddr(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class DecapSrcV4(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class DecapSrcV6(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class DecapCounter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


MAP_TYPES: dict[str, tuple[type[Any], type[Any]]] = {
    "addrs": (DecapAddr, ctypes.c_uint32),
    "sources_v4": (DecapSrcV4, ctypes.c_uint32),
    "sources_v6": (DecapSrcV6, ctypes.c_uint32),
    "vips": (DecapAddr, ctypes.c_uint32),
    "stats": (ctypes.c_uint32, DecapCounter),
}


def addr_key(address: IPAddress) -> DecapAddr:
    k = DecapAddr()
    k.addr[:] = address.packed.ljust(16, b"\0")
    k.family = address.version
    return k


def source_key(net: Network) -> DecapSrcV4 | DecapSrcV6:
    k: DecapSrcV4 | DecapSrcV6 = DecapSrcV4() if net.version == 4 else DecapSrcV6()
    k.prefixlen = net.prefixlen
    k.addr[:] = net.network_address.packed
    return k


def parse_source(text: str) -> Network:
    """A balancer network given to --from."""
    return parse_cidr(text, "balancer network", "give the outer sources the balancer's ipip uses, "
                                                "e.g. --from 172.16.0.0/16 --from 100::/96")


def parse_addr(text: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise FastpathError(f"bad address {text!r}: not an IPv4 or IPv6 address",
                            fix="give the address the balancer sends tunnels to, e.g. 10.0.1.21") from None
    if addr.is_multicast or addr.is_unspecified:
        raise FastpathError(f"bad address {addr}: not a unicast address")
    return addr


def interface_addresses(ifname: str, netns: str | None) -> list[IPAddress]:
    """The IPv4 and IPv6 addresses on `ifname` (link-local ones included)."""
    from pyroute2 import IPRoute

    with xdp.in_netns(netns):
        ipr = IPRoute()
    try:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise FastpathError(f"unknown interface {ifname!r}", fix="see 'ip link'")
        out = []
        for msg in ipr.get_addr(index=idx[0]):
            if msg["family"] in (socket.AF_INET, socket.AF_INET6):
                out.append(ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")))
        return sorted(out, key=lambda a: (a.version, a))
    finally:
        ipr.close()


def _write_set(att: xdp.Attachment, name: str, keys: Sequence[ctypes.Structure]) -> None:
    """Make the pinned map `name` hold exactly `keys` (value 1). Entries in both the old and
    the new set stay throughout, so a re-attach never drops a tunnel it still takes."""
    key_type, _ = MAP_TYPES[name]
    wanted = {bytes(k): k for k in keys}
    with TypedMap.open_pinned(att.map_path(name), key_type, ctypes.c_uint32) as m:
        for key in list(m.keys()):
            if bytes(key) not in wanted:
                m.delete(key)
        for k in wanted.values():
            m.set(k, ctypes.c_uint32(1))


def check_sets(sources: Sequence[Network], vips: Sequence[IPAddress]) -> None:
    if not sources:
        raise FastpathError("decap needs the balancers' source networks",
                            fix="add --from CIDR for each (the balancer's ipip sources are "
                                "172.16.0.0/16 and 100::/96 by default)")
    if not vips:
        raise FastpathError("decap needs the VIPs the tunnels carry", fix="add --vip ADDR for each VIP")
    for family in (4, 6):
        count = sum(1 for n in sources if n.version == family)
        if count > TUNABLES["DECAP_MAX_SOURCES"]:
            raise FastpathError(f"{count} IPv{family} balancer networks, decap holds "
                                f"{TUNABLES['DECAP_MAX_SOURCES']}", fix="merge them into wider CIDRs")
    if len(vips) > TUNABLES["DECAP_MAX_VIPS"]:
        raise FastpathError(f"{len(vips)} VIPs, decap holds {TUNABLES['DECAP_MAX_VIPS']}",
                            fix="attach with fewer --vip")


def attach(ifname: str, netns: str | None, sources: Iterable[Network], vips: Iterable[IPAddress],
           mode: str = "auto", extra: Iterable[IPAddress] = (), peer_program: bool = True,
           ) -> tuple[xdp.Attachment, bool, list[IPAddress]]:
    """Attach decap (or replace it, keeping its counters) and load the addresses it takes
    tunnels for (the interface's own plus `extra`), the balancer networks they may come from
    and the VIPs they may carry. Returns the attachment, whether it replaced a running
    program, and the addresses."""
    extra = sorted(set(extra), key=lambda a: (a.version, a))
    source_list = sorted(set(sources), key=lambda n: (n.version, n))
    vip_list = sorted(set(vips), key=lambda a: (a.version, a))
    check_sets(source_list, vip_list)
    xdp.clear_stale(ifname, netns)
    old = xdp.read_state(ifname, netns)
    if old is not None and old.program not in (SPEC.name, xdp.PEER_PROGRAM):
        raise FastpathError(f"{ifname} runs fastpath program {old.program}; decap cannot share it",
                            fix="run decap on the backend's interface, not the balancer's")
    addrs = sorted(set(interface_addresses(ifname, netns)) | set(extra), key=lambda a: (a.version, a))
    limit = TUNABLES["DECAP_MAX_ADDRS"]
    if len(addrs) > limit:
        raise FastpathError(f"{ifname} has {len(addrs)} addresses, decap holds {limit}",
                            fix="remove addresses from the interface")
    options = {"addrs": [str(a) for a in extra], "sources": [str(n) for n in source_list],
               "vips": [str(a) for a in vip_list]}
    att, replaced = xdp.attach(SPEC, ifname, netns, mode, dict(TUNABLES), options,
                               peer_program=peer_program)
    try:
        _write_set(att, "addrs", [addr_key(a) for a in addrs])
        _write_set(att, "sources_v4", [source_key(n) for n in source_list if n.version == 4])
        _write_set(att, "sources_v6", [source_key(n) for n in source_list if n.version == 6])
        _write_set(att, "vips", [addr_key(a) for a in vip_list])
    except BaseException:
        if not replaced:
            xdp.detach(ifname, netns, program=SPEC.name)
        raise
    return att, replaced, addrs


def attachment(ifname: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(ifname, netns, SPEC.name, "decap", "fastpath lb decap attach")


def detach(ifname: str, netns: str | None) -> xdp.Attachment | None:
    attachment(ifname, netns)
    return xdp.detach(ifname, netns, program=SPEC.name)


def _read_addrs(att: xdp.Attachment, name: str) -> list[IPAddress]:
    with TypedMap.open_pinned(att.map_path(name), DecapAddr, ctypes.c_uint32) as m:
        out = [ipaddress.ip_address(bytes(k.addr)[:4] if k.family == 4 else bytes(k.addr)) for k in m.keys()]
    return sorted(out, key=lambda a: (a.version, a))


def addresses(att: xdp.Attachment) -> list[IPAddress]:
    """The outer destinations the running program takes tunnels for."""
    return _read_addrs(att, "addrs")


def vips(att: xdp.Attachment) -> list[IPAddress]:
    """The inner destinations the running program lets through."""
    return _read_addrs(att, "vips")


def sources(att: xdp.Attachment) -> list[Network]:
    """The balancer networks the running program takes tunnels from."""
    out: list[Network] = []
    for name, key_type in (("sources_v4", DecapSrcV4), ("sources_v6", DecapSrcV6)):
        with TypedMap.open_pinned(att.map_path(name), key_type, ctypes.c_uint32) as m:
            out += [ipaddress.ip_network((bytes(k.addr), k.prefixlen)) for k in m.keys()]
    return sorted(out, key=lambda n: (n.version, n))


def read_counters(att: xdp.Attachment) -> dict[str, dict[str, int]]:
    """Packets and bytes per verdict, summed over CPUs."""
    out = {}
    with TypedMap.open_pinned(att.map_path("stats"), ctypes.c_uint32, DecapCounter) as m:
        for i, name in enumerate(STAT_NAMES):
            out[name] = m.sum_percpu(ctypes.c_uint32(i))
    return out
