"""Connections that are already open when the SYN guard starts checking cookies.

A connection opened before attach never showed the guard a cookie, so two things would
cut it: XDP finds no entry in its `flows` map and the ACK fails the cookie check, and with
`nf_conntrack_tcp_loose=0` (which SYNPROXY needs) conntrack calls every segment of a
connection it did not see open INVALID, so the SYNPROXY rule takes it as a bad cookie and
drops it. This module carries them over, in the interface's namespace:

1. The kernel's socket table (sock_diag, what `ss` reads) lists the connections whose
   local port is a cookie port, in every state that still exchanges segments
   (ESTABLISHED to LAST-ACK). Request sockets (SYN-RECV) are left out: when the guard is
   attached under a flood they are the attacker's half-open connections, and carrying them
   would hand the spoofed tuples a flow entry and a conntrack entry each.
2. Each gets a conntrack entry through ctnetlink (IPCTNL_MSG_CT_NEW, create-exclusive):
   the tuple the client opened, the conntrack state matching the socket's, the sysctl
   timeout of that state, ASSURED|SEEN_REPLY, and in both directions the TCP flags
   `SACK_PERM|BE_LIBERAL`, the ones the kernel sets itself when `tcp_loose=1` picks a
   connection up mid-stream (the window history is unknown, so windows are not enforced).
   Netfilter then sees these flows as ESTABLISHED (not INVALID), the SYNPROXY rules
   (`ct state invalid,untracked`) never touch them, any other `ct state established
   accept` policy keeps working, and the entries end with
   the connection (FIN/RST) or time out like any other. An entry conntrack already has
   (EEXIST) is left as it is: conntrack is tracking that connection already.
3. Each is added to the XDP `flows` map, so XDP passes it on a flow hit.

Why conntrack entries rather than an nft set of exempt flows: an exemption would leave the
packets INVALID for every other rule and conntrack user in the namespace, nothing would
remove the elements when the connections end, and the replies would still be untracked.

Ordering (synguard.attach / set_config): flows first, then XDP starts answering SYNs and
checking cookies (so a flood running at attach never reaches conntrack, which would fill
with its half-open entries), then the nft table (it turns conntrack on in the namespace,
while tcp_loose still has its old value), then flows and conntrack entries for every open
connection (also those whose handshake completed meanwhile), then tcp_loose=0. What is not
carried: a handshake still in flight when XDP starts checking cookies (the stack sent its
SYN-ACK, the client's ACK comes after): that ACK fails the cookie check and that one
connection is cut, as without this module.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastpath.bpf import xdp
from fastpath.errors import FastpathError

# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
NETLINK_SOCK_DIAG = 4
NETLINK_NETFILTER = 12
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLA_F_NESTED = 0x8000

# TCP socket states (include/net/tcp_states.h)
TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2 = 1, 4, 5
TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING = 8, 9, 11

# conntrack TCP states (enum tcp_conntrack) and the sysctl holding each one's timeout
CT_ESTABLISHED, CT_FIN_WAIT, CT_CLOSE_WAIT, CT_LAST_ACK = 3, 4, 5, 6
CT_TIMEOUT_SYSCTL = {
    CT_ESTABLISHED: ("established", 432000),
    CT_FIN_WAIT: ("fin_wait", 120), CT_CLOSE_WAIT: ("close_wait", 60), CT_LAST_ACK: ("last_ack", 30),
}
# Socket state (server side) -> the conntrack state of the whole connection: conntrack's
# FIN_WAIT is "one FIN seen", CLOSE_WAIT "that FIN acked", LAST_ACK "both FINs seen".
CT_STATE = {
    TCP_ESTABLISHED: CT_ESTABLISHED,
    TCP_FIN_WAIT1: CT_FIN_WAIT, TCP_FIN_WAIT2: CT_CLOSE_WAIT, TCP_CLOSE_WAIT: CT_CLOSE_WAIT,
    TCP_LAST_ACK: CT_LAST_ACK, TCP_CLOSING: CT_LAST_ACK,
}

# ctnetlink (linux/netfilter/nfnetlink_conntrack.h)
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 1, 0, 1
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_SYNPROXY, CTA_SYNPROXY_TSOFF = 24, 3  # SYNPROXY's extension (Linux >= 5.3): ISN, ITS, TSOFF
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 1, 4, 5
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_SEQ_ADJUST = 1 << 1, 1 << 2, 1 << 3, 1 << 6
CT_TIME_WAIT = 7  # conntrack TCP states from here on (TIME_WAIT, CLOSE) exchange no more data
# ctnetlink refuses to change CONFIRMED (EBUSY) and marks a new entry confirmed before it
# applies CTA_STATUS on current kernels, so the status we send must carry the bit as well;
# a kernel that applies the status first gets the one without it.
STATUS_CHOICES = (IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED, IPS_SEEN_REPLY | IPS_ASSURED)
IP_CT_TCP_FLAG_SACK_PERM, IP_CT_TCP_FLAG_BE_LIBERAL = 0x02, 0x08

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Connection:
    """One TCP connection as the server sees it; IPv4-mapped addresses come out as IPv4."""

    client: Address
    client_port: int
    server: Address
    server_port: int
    state: int  # TCP socket state

    @property
    def family(self) -> int:
        return socket.AF_INET if self.client.version == 4 else socket.AF_INET6


# -- netlink plumbing -------------------------------------------------------------------------------

def _nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, 0) + payload


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 16 <= len(data):
        length, msg_type, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        yield msg_type, data[off + 16:off + length]
        off += (length + 3) & ~3


def _attr(kind: int, value: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(value), kind | (NLA_F_NESTED if nested else 0))
    return head + value + b"\0" * (-len(value) % 4)


def _unmap(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


# -- the socket table ---------------------------------------------------------------------------------

def _diag_request(family: int) -> bytes:
    states = 0
    for state in CT_STATE:
        states |= 1 << state
    # inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
    return struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + b"\0" * 48


def _parse_diag(family: int, body: bytes) -> tuple[int, int, int, bytes, bytes]:
    """(state, sport, dport, src, dst) of one inet_diag_msg."""
    _fam, state, _timer, _retrans = struct.unpack_from("=BBBB", body, 0)
    sport, dport = struct.unpack_from("!HH", body, 4)
    size = 4 if family == socket.AF_INET else 16
    return state, sport, dport, body[8:8 + size], body[24:24 + size]


def diag_dump(netns: str | None, request: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """Every inet_diag_msg sock_diag returns in `netns` for `request(family)`, IPv4 then IPv6,
    as (family, message)."""
    with xdp.in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    with sock:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            sock.send(_nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, request(family)))
            done = False
            while not done:
                for msg_type, body in _messages(sock.recv(1 << 16)):
                    if msg_type == NLMSG_DONE:
                        done = True
                        break
                    if msg_type == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        raise FastpathError(f"listing sockets (sock_diag) failed: {os.strerror(code)}")
                    if msg_type == SOCK_DIAG_BY_FAMILY and len(body) >= 72:
                        yield family, body


def connections(netns: str | None, ports: Iterable[int]) -> list[Connection]:
    """Connections in `netns` whose local port is in `ports`, from sock_diag."""
    wanted = set(ports)
    out: list[Connection] = []
    if not wanted:
        return out
    for family, body in diag_dump(netns, _diag_request):
        state, sport, dport, src, dst = _parse_diag(family, body)
        if sport not in wanted or state not in CT_STATE:
            continue
        out.append(Connection(_unmap(ipaddress.ip_address(dst)), dport,
                              _unmap(ipaddress.ip_address(src)), sport, state))
    return out


# -- conntrack ------------------------------------------------------------------------------------------

def _tuple(kind: int, src: Address, dst: Address, sport: int, dport: int) -> bytes:
    if src.version == 4:
        ip = _attr(CTA_IP_V4_SRC, src.packed) + _attr(CTA_IP_V4_DST, dst.packed)
    else:
        ip = _attr(CTA_IP_V6_SRC, src.packed) + _attr(CTA_IP_V6_DST, dst.packed)
    proto = (_attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP])) +
             _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)) +
             _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return _attr(kind, _attr(CTA_TUPLE_IP, ip, True) + _attr(CTA_TUPLE_PROTO, proto, True), True)


def conntrack_message(conn: Connection, timeout: int, seq: int = 1,
                      status: int | None = STATUS_CHOICES[0]) -> bytes:
    """The IPCTNL_MSG_CT_NEW request for one connection: create, exclusive; with `status`
    None, an update of the entry conntrack has (state, timeout and liberal window checks)."""
    flags = bytes([IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL] * 2)  # flags, mask
    tcp = (_attr(CTA_PROTOINFO_TCP_STATE, bytes([CT_STATE[conn.state]])) +
           _attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, flags) + _attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, flags))
    attrs = _tuple(CTA_TUPLE_ORIG, conn.client, conn.server, conn.client_port, conn.server_port)
    if status is not None:
        attrs += (_tuple(CTA_TUPLE_REPLY, conn.server, conn.client, conn.server_port, conn.client_port) +
                  _attr(CTA_STATUS, struct.pack("!I", status)))
    attrs += (_attr(CTA_TIMEOUT, struct.pack("!I", timeout)) +
              _attr(CTA_PROTOINFO, _attr(CTA_PROTOINFO_TCP, tcp, True), True))
    nfgen = struct.pack("=BBH", conn.family, 0, 0)
    flags_nl = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if status is not None else 0)
    return _nlmsg(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW, flags_nl, seq, nfgen + attrs)


def _timeouts() -> dict[int, int]:
    """conntrack's TCP timeouts in the calling thread's namespace."""
    out = {}
    for state, (name, default) in CT_TIMEOUT_SYSCTL.items():
        try:
            out[state] = int(Path(f"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_{name}").read_text())
        except (OSError, ValueError):
            out[state] = default
    return out


def _request(sock: socket.socket, msg: bytes) -> int:
    """Send one request and return the errno of its acknowledgement (0: done)."""
    sock.send(msg)
    while True:
        for msg_type, body in _messages(sock.recv(1 << 16)):
            if msg_type == NLMSG_ERROR:
                return int(-struct.unpack_from("=i", body)[0])


def add_conntrack(netns: str | None, conns: Sequence[Connection], refresh: bool = False) -> int:
    """Create a conntrack entry per connection; returns how many were new (EEXIST: conntrack
    tracks that connection already, and its entry is kept). With `refresh`, an entry conntrack
    has is brought up to date instead (state, timeout, liberal window checks): the SYNPROXY
    rules armed on demand turn conntrack on again, over entries it stopped updating while
    it was off, whose window history would call the connection's next segments INVALID."""
    if not conns:
        return 0
    with xdp.in_netns(netns):
        timeouts = _timeouts()
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    created = 0
    with sock:
        for seq, conn in enumerate(conns, start=1):
            for status in STATUS_CHOICES:
                code = _request(sock, conntrack_message(conn, timeouts[CT_STATE[conn.state]], seq, status))
                if code != errno.EBUSY:
                    break
            if code == errno.EEXIST and refresh:
                code = _request(sock, conntrack_message(conn, timeouts[CT_STATE[conn.state]], seq, None))
                if code == errno.ENOENT:  # it ended meanwhile
                    code = 0
            elif code == 0:
                created += 1
            if code not in (0, errno.EEXIST):
                raise FastpathError(
                    f"creating the conntrack entry of {conn.client}:{conn.client_port} -> "
                    f"{conn.server}:{conn.server_port} failed: {os.strerror(code)}",
                    fix="the kernel needs nf_conntrack_netlink (modprobe nf_conntrack_netlink)")
    return created


def _attrs(data: bytes) -> dict[int, bytes]:
    """A netlink attribute stream as {type: payload} (NLA_F_NESTED cleared)."""
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _spliced_entry(body: bytes, ports: set[int]) -> bool:
    """One conntrack entry (after its nfgenmsg): TCP to one of `ports`, still exchanging
    data, with sequence numbers or timestamps translated (what SYNPROXY sets up on the
    handshake it completes; either can be 0: a server that answers SYNPROXY's SYN with a
    cookie of its own picks the same ISN as the guard's cookie, a client without timestamps
    has no offset)."""
    attrs = _attrs(body[4:])
    status = attrs.get(CTA_STATUS)
    if status is None:
        return False
    tsoff = _attrs(attrs.get(CTA_SYNPROXY, b"")).get(CTA_SYNPROXY_TSOFF, b"\0\0\0\0")
    if not (struct.unpack("!I", status[:4])[0] & IPS_SEQ_ADJUST or struct.unpack("!I", tsoff[:4])[0]):
        return False
    proto = _attrs(_attrs(attrs.get(CTA_TUPLE_ORIG, b"")).get(CTA_TUPLE_PROTO, b""))
    if proto.get(CTA_PROTO_NUM, b"\0")[:1] != bytes([socket.IPPROTO_TCP]):
        return False
    dport = proto.get(CTA_PROTO_DST_PORT)
    if dport is None or struct.unpack("!H", dport[:2])[0] not in ports:
        return False
    tcp = _attrs(_attrs(attrs.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
    state = tcp.get(CTA_PROTOINFO_TCP_STATE, b"\0")[0]
    return state < CT_TIME_WAIT


def spliced(netns: str | None, ports: Iterable[int]) -> int:
    """Connections to `ports` in `netns` that SYNPROXY opened and that still exchange data:
    they need its rules (and conntrack) until they end, so on-demand rules stay armed."""
    wanted = set(ports)
    with xdp.in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    count = 0
    with sock:
        nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
        kind = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
        sock.send(_nlmsg(kind, NLM_F_REQUEST | NLM_F_DUMP, 1, nfgen))
        while True:
            for msg_type, body in _messages(sock.recv(1 << 20)):
                if msg_type == NLMSG_DONE:
                    return count
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code == 0:
                        continue
                    raise FastpathError(f"listing conntrack entries failed: {os.strerror(code)}",
                                        fix="the kernel needs nf_conntrack_netlink")
                if msg_type & 0xFF == IPCTNL_MSG_CT_NEW and _spliced_entry(body, wanted):
                    count += 1
