"""The veth peer of an interface, and the pass program the runtime puts there.

veth hands a frame sent with XDP_TX (or redirected into it) to its peer's receive ring, but
wakes the peer's NAPI poll only when the peer runs an XDP program of its own
(drivers/net/veth.c, veth_xdp_flush); otherwise the frame waits until unrelated traffic
drains the ring, and a SYN-ACK or a balanced packet arrives seconds late or never. Most
first XDP labs, and every container and pod, sit on a veth, so the runtime
(fastpath.bpf.xdp) gives such a peer a two-instruction XDP_PASS program when it attaches
in native mode. The program is raw bytecode loaded with bpf(2): a compiler for two
instructions would cost seconds per attach. It is loaded multi-buffer aware where the
kernel allows (Linux 5.18+), so the peer keeps its MTU and GSO.

The peer is found from the interface's IFLA_LINK (its index) and IFLA_LINK_NETNSID (the
namespace id, relative to the interface's namespace), which is matched against the
namespace fastpath runs in and every named namespace (ip netns). A peer in an unnamed
namespace (a container's) cannot be addressed by name and is reported as unreachable.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastpath.bpf import syscall
from fastpath.core.namespaces import in_netns
from fastpath.errors import FastpathError

# r0 = XDP_PASS; exit
PASS_INSNS = bytes.fromhex("b700000002000000" "9500000000000000")
NETNS_DIR = Path("/run/netns")


class PeerUnreachable(FastpathError):
    """The interface is a veth whose peer fastpath cannot reach."""


@dataclass(frozen=True)
class VethPeer:
    ifname: str
    netns: str | None
    ifindex: int
    has_xdp: bool  # some XDP program (fastpath's or not) already runs on it

    def where(self) -> str:
        return f"{self.ifname} in {self.netns}" if self.netns else f"{self.ifname} (root namespace)"


def _link(ipr: Any, ifindex: int) -> Any:
    links = ipr.get_links(ifindex)
    return links[0] if links else None


def _xdp_attached(link: Any) -> bool:
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return False
    return bool(xdp.get_attr("IFLA_XDP_ATTACHED") or xdp.get_attr("IFLA_XDP_PROG_ID"))


def _namespace_of(nsid: int, netns: str | None, home_fd: int) -> str | None:
    """The name of the namespace that `netns` calls `nsid` (None: the home namespace)."""
    from pyroute2 import IPRoute

    candidates: list[tuple[str | None, str]] = [(None, f"/proc/self/fd/{home_fd}")]
    if NETNS_DIR.is_dir():
        candidates += [(p.name, str(p)) for p in sorted(NETNS_DIR.iterdir())]
    with in_netns(netns), IPRoute() as ipr:
        for name, path in candidates:
            if name == netns:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                got = ipr.get_netnsid(fd=fd)
            except Exception:  # noqa: BLE001 - a namespace being deleted answers with an error
                continue
            finally:
                os.close(fd)
            if isinstance(got, dict) and got.get("nsid") == nsid:
                return name
    where = f"namespace {netns}" if netns else "the root namespace"
    raise PeerUnreachable(
        f"the veth peer lives in a namespace that has no name (namespace id {nsid} seen from {where})")


def _veth_link(ipr: Any, ifname: str) -> Any:
    """The link `ifname` of `ipr`'s namespace when it is one end of a veth pair, else None."""
    found = ipr.link_lookup(ifname=ifname)
    link = _link(ipr, found[0]) if found else None
    info = link.get_attr("IFLA_LINKINFO") if link is not None else None
    return link if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth" else None


def is_veth(ifname: str, netns: str | None) -> bool:
    """`ifname` in `netns` is one end of a veth pair (False also when it is not there)."""
    from pyroute2 import IPRoute

    with in_netns(netns), IPRoute() as ipr:
        return _veth_link(ipr, ifname) is not None


def find(ifname: str, netns: str | None) -> VethPeer | None:
    """The veth peer of `ifname` in `netns`; None when the interface is not a veth."""
    from pyroute2 import IPRoute

    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with in_netns(netns), IPRoute() as ipr:
            link = _veth_link(ipr, ifname)
            if link is None:
                return None
            peer_index = link.get_attr("IFLA_LINK")
            nsid = link.get_attr("IFLA_LINK_NETNSID")
        if not peer_index:
            raise PeerUnreachable(f"the veth peer of {ifname} is gone")
        peer_ns = netns if nsid is None else _namespace_of(int(nsid), netns, home_fd)
        with in_netns(peer_ns), IPRoute() as ipr:
            plink = _link(ipr, int(peer_index))
            if plink is None:
                raise PeerUnreachable(f"the veth peer of {ifname} (index {peer_index}) is gone")
            return VethPeer(plink.get_attr("IFLA_IFNAME"), peer_ns, int(peer_index), _xdp_attached(plink))
    finally:
        os.close(home_fd)


def load_pass_program() -> int:
    """The pass program's fd (multi-buffer aware where the kernel knows the flag)."""
    try:
        return syscall.prog_load_xdp(PASS_INSNS, "fp_peer_pass", frags=True)
    except syscall.BpfError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return syscall.prog_load_xdp(PASS_INSNS, "fp_peer_pass")


def attach_pass(peer: VethPeer) -> int:
    """A native-mode XDP link running the pass program on `peer`; the caller owns the fd."""
    prog = load_pass_program()
    try:
        with in_netns(peer.netns):
            return syscall.xdp_link_create(prog, peer.ifindex, syscall.XDP_FLAGS_DRV_MODE)
    finally:
        os.close(prog)
