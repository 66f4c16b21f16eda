"""The kernel's XDP SYN proxy on a live interface, set up as its selftest sets it up.

The program is the selftests' xdp_synproxy_kern.c as fastpath.bench.kernel_peers builds it
(the `plain` build, loaded through libbpf: it calls conntrack kfuncs, which bcc cannot).
tools/testing/selftests/bpf/prog_tests/xdp_synproxy.c runs it like this, and so does
`KernelXdpSynproxy.on()`, in the server's namespace:
- sysctls net.ipv4.tcp_syncookies=2, net.ipv4.tcp_timestamps=1 and
  net.netfilter.nf_conntrack_tcp_loose=0 (conntrack then leaves the cookie ACK invalid, so
  SYNPROXY sees it);
- SYNs to the port notracked in the raw table; in the filter table's input, packets to the
  port in state invalid or untracked go to SYNPROXY (--sack-perm --timestamp --wscale 7
  --mss 1460), and what is still invalid is dropped. The selftest writes these with
  iptables-legacy; here they are the same rules in one nftables table (fastpath's other
  SYNPROXY contender uses nftables too, and legacy and nft rules on one host do not mix well);
- the program's maps filled as its user-space part fills them (xdp_synproxy --ports 8080
  --mss4 1460 --mss6 1440 --wscale 7 --ttl 64): `allowed_ports` ends with a 0, `values[0]`
  packs MSS, window scale and TTL, and `values[1]` is the program's count of the SYN-ACKs it
  sent (what `xdp_synproxy --single` prints);
- the program attached in native mode on the interface, and on a veth an XDP program on
  the peer (the selftest puts xdp_dummy there), without which veth leaves XDP_TX frames
  in the peer's ring until other traffic wakes it (fastpath.bpf.peer).
Both XDP programs are held by bpf_link fds that only this object owns, so nothing is pinned
and the links go at the latest with the process. `off()` undoes every step that `on()` made,
in reverse order, and `on()` undoes its own steps when one of them fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from fastpath.apps.guard import nft
from fastpath.bench import kernel_peers as kp
from fastpath.bpf import peer, syscall
from fastpath.core.namespaces import in_netns
from fastpath.errors import FastpathError
from fastpath.netns.model import sysctl_path
from fastpath.netns.procs import run_in_netns

TABLE = "fastpath_bench_xdp_synproxy"
SYSCTLS = {"net.ipv4.tcp_syncookies": 2, "net.ipv4.tcp_timestamps": 1}

_RULES = """\
add table inet {table}
delete table inet {table}
table inet {table} {{
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		iifname "{ifname}" tcp dport {port} tcp flags & (fin | syn | rst | ack) == syn notrack
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "{ifname}" tcp dport {port} ct state invalid,untracked \
			synproxy mss {mss} wscale {wscale} timestamp sack-perm
		iifname "{ifname}" ct state invalid drop
	}}
}}
"""


def rules(ifname: str, port: int) -> str:
    """The selftest's netfilter rules for `port` on `ifname`, as one nftables table."""
    return _RULES.format(table=TABLE, ifname=ifname, port=port, mss=kp.SYNPROXY_MSS4,
                         wscale=kp.SYNPROXY_WSCALE)


def _set_sysctl(netns: str, name: str, value: int) -> int:
    """Set `name` in `netns`; returns the previous value."""
    return nft.swap_sysctl(netns, sysctl_path(name), lambda _old: value)


class KernelXdpSynproxy:
    """The kernel's XDP SYN proxy, loaded once (its maps kept across runs), attached by
    `on()` to one interface with the selftest's set-up around it and removed by `off()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        path = kp.build({"synproxy": 94})[("synproxy", "plain")]  # frame length: unused by `plain`
        self._prog = kp.LoadedPeer(kp.SYNPROXY, "plain", path)
        self._undo: contextlib.ExitStack | None = None
        try:
            kp.configure_synproxy(self._prog, (port,))
        except BaseException:
            self._prog.close()
            raise

    def synacks(self) -> int:
        """SYN-ACKs the program has sent since it was loaded (its `values[1]`)."""
        with self._prog.map("values", ctypes.c_uint32, ctypes.c_uint64) as m:
            got = m.get(ctypes.c_uint32(1))
        return int(got.value) if got is not None else 0

    def on(self, ifname: str, netns: str) -> None:
        """Everything the selftest sets up, in `netns` on `ifname`; on a failure the steps
        already made are undone before the error propagates."""
        if self._undo is not None:
            raise FastpathError("the kernel XDP SYN proxy is attached already")
        with contextlib.ExitStack() as undo:
            for name, value in SYSCTLS.items():
                old = _set_sysctl(netns, name, value)
                undo.callback(_set_sysctl, netns, name, old)
            run_in_netns(netns, ["nft", "-f", "-"], input=rules(ifname, self.port))
            undo.callback(run_in_netns, netns, ["nft", "delete", "table", "inet", TABLE])
            old_loose = nft.set_tcp_loose(netns, 0)  # conntrack is loaded now (the rules use it)
            undo.callback(nft.set_tcp_loose, netns, old_loose)
            found = peer.find(ifname, netns)
            if found is not None and not found.has_xdp:
                undo.callback(os.close, peer.attach_pass(found))  # closing the link's fd detaches it
            with in_netns(netns):
                ifindex = _ifindex(ifname)
                link = syscall.xdp_link_create(self._prog.prog_fd, ifindex, syscall.XDP_FLAGS_DRV_MODE)
            undo.callback(os.close, link)
            self._undo = undo.pop_all()

    def off(self) -> None:
        """Undo what on() made (nothing when it is not attached)."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo.close()

    def close(self) -> None:
        try:
            self.off()
        finally:
            self._prog.close()


def _ifindex(ifname: str) -> int:
    import socket

    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise FastpathError(f"unknown interface {ifname!r}") from None
