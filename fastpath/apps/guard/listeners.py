"""The TCP window scale the servers behind the guard really use, asked of the kernel.

The guard's SYN-ACKs (XDP's and SYNPROXY's) promise the client a window scale, and
SYNPROXY then opens the server's side and splices the two without translating windows: the
client reads every window the server advertises with the scale the guard promised. When
the server uses a lower one, the client takes a window of W for W << (promised - real)
bytes, overruns the server's buffer and the server drops what lies beyond its real window:
retransmissions, stalls, resets. The server's scale is not a function of the namespace's
sysctls alone: the kernel picks it per listening socket when it answers a SYN
(tcp_openreq_init_rwin, tcp_select_initial_window), from the largest window the socket
may offer, which a listener's SO_RCVBUF (the buffer is then locked and the clamp becomes
its whole space), TCP_WINDOW_CLAMP or a route's `window` metric lowers. Of those, sock_diag
shows only the buffer's size, not whether it is locked, nor the clamp.

So the guard asks each listener: it sends one SYN from a raw socket over loopback to
every listening socket on a cookie port (found through sock_diag, as `ss -ltn`) and reads
the window scale in the SYN-ACK. The source port is bound by a socket that does not listen,
so the SYN-ACK finds no socket and the kernel resets the half-open connection at once: the
application never sees it. A listener that does not answer within a second (its SYN queue
full, a firewall on loopback) is left out and said so.

    scale = listeners.window_scale("lab1-server", [8080], fallback=7)
    scale.value, scale.source, scale.note
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fastpath.apps.guard.existing import Address, _unmap, diag_dump
from fastpath.bpf import xdp
from fastpath.errors import FastpathError

TCP_LISTEN = 10
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_RCVBUF = 1
NO_SCALE = 15  # SG_WSCALE's "no window scale option" (the server does not scale)
PROBE_SECONDS = 1.0

TCPOPT_EOL, TCPOPT_NOP, TCPOPT_WSCALE = 0, 1, 3
SYN, ACK = 0x02, 0x10


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket; an IPv4-mapped bound address comes out as IPv4."""

    family: int
    address: Address
    port: int
    rcvbuf: int  # bytes (skmem rb)

    def where(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass
class Probe:
    listener: Listener
    wscale: int | None  # None: no SYN-ACK came; NO_SCALE: it had no window-scale option

    def as_json(self) -> dict[str, object]:
        return {"address": str(self.listener.address), "port": self.listener.port,
                "rcvbuf": self.listener.rcvbuf, "wscale": self.wscale}


@dataclass
class WindowScale:
    """The scale the guard advertises and where it comes from."""

    value: int
    source: str                      # "listeners" or "sysctl"
    note: str
    probes: list[Probe] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"value": self.value, "source": self.source, "note": self.note,
                "listeners": [p.as_json() for p in self.probes]}


# -- the listening sockets (sock_diag) ----------------------------------------------------------

def _listen_request(family: int) -> bytes:
    ext = 1 << (INET_DIAG_SKMEMINFO - 1)
    return struct.pack("=BBBBI", family, socket.IPPROTO_TCP, ext, 0, 1 << TCP_LISTEN) + b"\0" * 48


def _rcvbuf(body: bytes) -> int:
    off = 72  # the attributes follow the fixed inet_diag_msg
    while off + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, off)
        if length < 4:
            break
        if kind == INET_DIAG_SKMEMINFO and length >= 4 + 8:
            return int(struct.unpack_from("=I", body, off + 4 + 4 * SK_MEMINFO_RCVBUF)[0])
        off += (length + 3) & ~3
    return 0


def listeners(netns: str | None, ports: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets in `netns` on `ports`, from sock_diag."""
    wanted = set(ports)
    out: list[Listener] = []
    if not wanted:
        return out
    for family, body in diag_dump(netns, _listen_request):
        if body[1] != TCP_LISTEN:
            continue
        port = struct.unpack_from("!H", body, 4)[0]
        if port not in wanted:
            continue
        raw = body[8:12] if family == socket.AF_INET else body[8:24]
        out.append(Listener(family, _unmap(ipaddress.ip_address(raw)), port, _rcvbuf(body)))
    return sorted(set(out), key=lambda x: (x.port, x.family, int(x.address)))


# -- asking a listener ----------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_segment(src: Address, dst: Address, sport: int, dport: int, seq: int) -> bytes:
    """A SYN as Linux sends it (MSS, SACK, timestamps, window scale), checksum included."""
    options = (struct.pack("!BBH", 2, 4, 1460) + struct.pack("!BB", 4, 2)
               + struct.pack("!BBII", 8, 10, 1, 0) + struct.pack("!BBBB", TCPOPT_NOP, 3, 3, 7))
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (20 + len(options)) // 4 << 4, SYN,
                         65535, 0, 0) + options
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(header), socket.IPPROTO_TCP)
    check = _checksum(pseudo + header)
    return header[:16] + struct.pack("!H", check) + header[18:]


def synack_wscale(segment: bytes, sport: int, dport: int) -> int | None:
    """The window scale of `segment` if it is the SYN-ACK from `sport` to `dport`
    (NO_SCALE when it carries none); None for any other segment."""
    if len(segment) < 20:
        return None
    src, dst, _seq, _ack, off, flags = struct.unpack_from("!HHIIBB", segment)
    if (src, dst) != (sport, dport) or flags & (SYN | ACK) != SYN | ACK:
        return None
    end, i = min(len(segment), (off >> 4) * 4), 20
    while i < end:
        kind = segment[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end or segment[i + 1] < 2:
            break
        if kind == TCPOPT_WSCALE and segment[i + 1] == 3 and i + 2 < end:
            return min(segment[i + 2], 14)
        i += segment[i + 1]
    return NO_SCALE


def _target(listener: Listener) -> Address:
    if listener.address.is_unspecified:
        return ipaddress.ip_address("127.0.0.1" if listener.address.version == 4 else "::1")
    return listener.address


def probe(netns: str | None, listener: Listener, seconds: float = PROBE_SECONDS) -> int | None:
    """The window scale `listener` answers a SYN with (None: no answer in `seconds`)."""
    dst = _target(listener)
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    with xdp.in_netns(netns):
        holder = socket.socket(family, socket.SOCK_STREAM)  # owns the source port, never listens
        raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with holder, raw:
        try:  # an address we cannot send from (link-local, a freebind one): no answer
            holder.bind((str(dst), 0))
            sport = holder.getsockname()[1]
            raw.bind((str(dst), 0))
            raw.sendto(syn_segment(dst, dst, sport, listener.port, random.getrandbits(32)), (str(dst), 0))
        except OSError:
            return None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            data = raw.recv(65535)
            if family == socket.AF_INET:  # IPv4 raw sockets see the IP header, IPv6 ones do not
                data = data[(data[0] & 0x0F) * 4:]
            wscale = synack_wscale(data, listener.port, sport)
            if wscale is not None:
                return wscale
    return None


def probes(netns: str | None, ports: Sequence[int]) -> list[Probe]:
    """Every listener on `ports` and the scale it answered with."""
    return [Probe(lst, probe(netns, lst)) for lst in listeners(netns, ports)]


def _scale_text(value: int | None) -> str:
    return "none (no window scaling)" if value == NO_SCALE else str(value)


def window_scale(netns: str | None, ports: Sequence[int], fallback: int) -> WindowScale:
    """The one window scale the guard can advertise for `ports`: the listeners' (when they
    all agree), else `fallback` (the sysctls') when no listener is there or answers.
    Listeners that need different scales: FastpathError naming them."""
    found = probes(netns, ports)
    answered = [p for p in found if p.wscale is not None]
    silent = sorted({p.listener.where() for p in found if p.wscale is None})
    if not answered:
        why = (f"the listener(s) {', '.join(silent)} did not answer a SYN over loopback" if silent
               else f"no listener on port {','.join(map(str, sorted(ports)))} yet")
        return WindowScale(fallback, "sysctl", f"{why}: window scale {_scale_text(fallback)} from the "
                           "namespace's TCP sysctls", found)
    scales = sorted({p.wscale for p in answered if p.wscale is not None})
    if len(scales) > 1:
        each = ", ".join(f"{p.listener.where()} uses {_scale_text(p.wscale)}" for p in answered)
        raise FastpathError(
            f"the listeners on the cookie ports use different TCP window scales ({each}); SYNPROXY "
            "does not translate windows, so one guard cannot promise each its own",
            fix="give those listeners the same receive buffer (SO_RCVBUF, TCP_WINDOW_CLAMP), "
                "or leave the odd port out of --ports")
    value = scales[0]
    note = f"window scale {_scale_text(value)}, as the listener(s) on port " \
           f"{','.join(str(p) for p in sorted({p.listener.port for p in answered}))} answer"
    if silent:
        note += f" ({', '.join(silent)} did not answer)"
    return WindowScale(value, "listeners", note, found)


def mismatches(netns: str | None, ports: Sequence[int], advertised: int) -> list[str]:
    """One line per listener on `ports` whose window scale differs from `advertised`."""
    return [f"the listener on {p.listener.where()} uses window scale {_scale_text(p.wscale)} but the "
            f"guard advertises {_scale_text(advertised)}: its clients misread its window"
            for p in probes(netns, ports) if p.wscale is not None and p.wscale != advertised]
