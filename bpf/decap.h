/* SPDX-License-Identifier: GPL-2.0 */
/*
 * decap.h - what crosses the kernel/user boundary for bpf/decap.c, the XDP tunnel
 * decapsulator that lets a backend take the load balancer's ipip traffic without a kernel
 * tunnel module.
 *
 * Included by bpf/decap.c; mirrored as ctypes.Structures in fastpath/apps/decap/decap.py, and
 * tests/bpf/test_decap.py checks the two layouts against bcc's decoded types. Fixed-width
 * types only, no implicit padding. Addresses are 16 bytes in network order: IPv4 uses the
 * first 4 and leaves the rest zero, `family` (4 or 6) says which.
 */
#ifndef FASTPATH_DECAP_H
#define FASTPATH_DECAP_H

/* Key of `addrs` (an outer destination this host takes tunnelled packets for) and of `vips`
 * (an inner destination the tunnels may carry); value: 1. */
struct decap_addr {
	__be32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* Keys of `sources_v4` / `sources_v6`, LPM tries of the balancers' outer source networks
 * (value: 1). prefixlen counts the bits of addr that must match. */
struct decap_src_v4 {
	__u32 prefixlen;
	__be32 addr;
};

struct decap_src_v6 {
	__u32 prefixlen;
	__be32 addr[4];
};

/* Per-CPU counters (`stats`, keys enum decap_stat). */
struct decap_counter {
	__u64 packets;
	__u64 bytes;
};

enum decap_stat {
	DECAP_STAT_PASS_NOT_IP = 0,      /* not IPv4/IPv6 (ARP, VLAN, ...) or a runt frame */
	DECAP_STAT_PASS_NOT_TUNNEL = 1,  /* IP, but not IPv4-in-IPv4 or IPv6-in-IPv6 (other
					  * protocols, mixed families, IPv6 extension headers) */
	DECAP_STAT_PASS_NOT_LOCAL = 2,   /* a tunnel packet to an address not in `addrs` */
	DECAP_STAT_PASS_MALFORMED = 3,   /* bad outer IP header: left to the kernel, which drops it */
	DECAP_STAT_DECAP_V4 = 4,         /* IPv4-in-IPv4 stripped to the inner packet and passed */
	DECAP_STAT_DECAP_V6 = 5,         /* IPv6-in-IPv6 stripped to the inner packet and passed */
	DECAP_STAT_DROP_FRAGMENT = 6,    /* a fragment of a tunnel packet (XDP cannot reassemble) */
	DECAP_STAT_DROP_MALFORMED = 7,   /* tunnel packet whose inner header is truncated, of the
					  * wrong version or longer than the outer payload */
	DECAP_STAT_DROP_ERROR = 8,       /* bpf_xdp_adjust_head refused */
	DECAP_STAT_DROP_NOT_BALANCER = 9, /* a tunnel to us whose outer source is in no `sources`
					  * network: anyone else's tunnel would be an open relay */
	DECAP_STAT_DROP_NOT_VIP = 10,    /* a tunnel from a balancer whose inner destination is
					  * not in `vips` */
	DECAP_STAT_DROP_CE_NOT_ECT = 11, /* congestion marked (CE) on the outer header of a packet
					  * that does not speak ECN: RFC 6040 drops it */
	DECAP_STAT_MAX = 12,
};

#endif /* FASTPATH_DECAP_H */
