/* SPDX-License-Identifier: GPL-2.0 */
/*
 * l4lb.h - what crosses the kernel/user boundary for bpf/l4lb.c, the XDP load balancer.
 *
 * Included by bpf/l4lb.c; mirrored as ctypes.Structures in fastpath/apps/lb/abi.py, and
 * tests/bpf/test_l4lb.py checks the two layouts against bcc's decoded types. Fixed-width
 * types only, no implicit padding. Addresses are 16 bytes in network order: IPv4 uses the
 * first 4 and leaves the rest zero, `family` (4 or 6) says which.
 */
#ifndef FASTPATH_L4LB_H
#define FASTPATH_L4LB_H

/* Forwarding mode of a VIP (struct lb_vip.mode). */
enum lb_mode {
	LB_MODE_DSR = 0,   /* rewrite MACs, XDP_TX; backends hold the VIP on loopback */
	LB_MODE_NAT = 1,   /* destination NAT to backend address:port, replies translated back */
	LB_MODE_IPIP = 2,  /* IPv4-in-IPv4 / IPv6-in-IPv6 to the backend (Katran-style DSR) */
};

/* struct lb_vip.flags */
#define LB_VIP_F_HASH_SRC_ONLY 0x1  /* Maglev on the client address only (ports ignored) */

/* struct lb_backend.flags */
#define LB_BACKEND_F_EXISTS 0x1     /* cleared on delete: pinned flows pick a new backend */
#define LB_BACKEND_F_DOWN 0x2       /* health checks fail: a SYN of a flow pinned to it picks
				     * again (its other packets stay) */

/* struct lb_flow.flags */
#define LB_FLOW_F_CLOSING 0x1       /* a FIN was seen: LB_CLOSING_TIMEOUT idle ends it */
#define LB_FLOW_F_RESET 0x2         /* a RST was seen: LB_CLOSING_TIMEOUT idle ends it, unless a
				     * later packet of the flow (not a RST) clears it first */

/* A ring slot with no backend (every backend of the VIP drained or removed). */
#define LB_NO_BACKEND 0xffffffffu

/* Key of `vips`: one VIP is an address, a port and a protocol. */
struct lb_vip_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;         /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;        /* 4 or 6 */
};

/* Value of `vips`, replaced whole by the control plane (so readers see old or new). */
struct lb_vip {
	__u32 index;        /* slot in vip_stats; rings of this VIP start at index*2*RING_SIZE */
	__u32 flags;        /* LB_VIP_F_* */
	__u8 mode;          /* enum lb_mode */
	__u8 ring;          /* which of the VIP's two rings is live; flipped after a rebuild */
	__u16 backends;     /* backends in the live ring; 0 = drop, counted as no_backend */
};

/* Value of `vip_refs`, indexed by the VIP's index: which VIP holds that index, and its mode.
 * A conntrack hit reaches its VIP through the flow's backend (lb_backend.vip) and this entry
 * instead of a `vips` lookup; an entry whose `vip` is not the packet's VIP (deleted, or the
 * index now held by another) sends the packet the long way, through `vips`. */
struct lb_vip_ref {
	struct lb_vip_key vip;
	__u8 mode;          /* enum lb_mode */
	__u8 pad[3];
};

/* Key of `vip_addrs`: every address some VIP uses (value: how many VIPs use it). */
struct lb_addr_key {
	__be32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* Value of `backends`, indexed by the backend's id (one per VIP-backend pair). */
struct lb_backend {
	__be32 addr[4];
	__be16 port;        /* nat: destination port (network order); other modes: 0 */
	__u8 family;
	__u8 flags;         /* LB_BACKEND_F_* */
	__u8 mac[6];        /* next-hop MAC: the backend's own (dsr, nat) or its gateway's */
	__u16 vip;          /* index of the VIP it serves: a reused id never inherits flows */
};

/* Key of `conntrack` and `half_open` (client -> VIP) and of `nat_reverse` and
 * `half_open_reverse` (backend -> client). */
struct lb_flow_key {
	__be32 src[4];
	__be32 dst[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Value of `conntrack` (established flows: confirmed by a second packet from the client that
 * is not a SYN, e.g. the handshake's ACK) and of `half_open` (flows seen once: a TCP
 * handshake in progress, the first packet of a UDP flow or of a TCP flow picked up
 * mid-stream). An entry idle longer
 * than its timeout (LB_UDP_TIMEOUT, LB_TCP_TIMEOUT, or LB_CLOSING_TIMEOUT once closing or
 * reset) counts as absent. */
struct lb_flow {
	__u32 backend;      /* backend id */
	__u8 flags;         /* LB_FLOW_F_* */
	__u8 pad[3];
	__u64 atime;        /* coarse ktime (ns) of the last refresh, at most once a second */
};

/* Value of `nat_reverse` (and `half_open_reverse`): the VIP a reply must appear to come from
 * is its lb_vip_key. The entry serves only while the flow's entry (conntrack or half_open)
 * is live and names its backend. */

/* Per-CPU counters of one VIP (`vip_stats`). */
struct lb_vip_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;    /* flows given a backend by the Maglev ring */
	__u64 lru_hits;     /* packets whose flow was live in conntrack or half_open */
	__u64 lru_misses;   /* packets whose flow was not (picked by Maglev) */
	__u64 no_backend;   /* dropped: no usable backend */
};

/* Per-CPU counters of one backend (`backend_stats`). */
struct lb_backend_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* Per-CPU global counters (`stats`, keys enum lb_stat). */
struct lb_counter {
	__u64 packets;
	__u64 bytes;
};

enum lb_stat {
	LB_STAT_PASS_NOT_IP = 0,        /* not IPv4/IPv6 (ARP, VLAN, ...) or a runt frame */
	LB_STAT_PASS_NON_VIP = 1,       /* IP traffic to no VIP */
	LB_STAT_PASS_MALFORMED = 2,     /* bad IP header: left to the kernel, which drops it */
	LB_STAT_PASS_ICMP = 3,          /* ICMP that is not an error about a VIP flow */
	LB_STAT_NAT_REVERSE = 4,        /* replies translated back to the VIP, then routed */
	LB_STAT_ICMP_FORWARDED = 5,     /* ICMP errors about a VIP flow sent to its backend */
	LB_STAT_DROP_FRAGMENT = 6,      /* IP fragments to a VIP address */
	LB_STAT_DROP_MALFORMED = 7,     /* VIP traffic with a truncated L4 header */
	LB_STAT_DROP_UNSUPPORTED = 8,   /* other protocols or IPv6 extension headers to a VIP
					 * address */
	LB_STAT_DROP_NO_BACKEND = 9,    /* VIP with no usable backend */
	LB_STAT_DROP_TOO_BIG = 10,      /* encapsulated packet would exceed LB_MAX_PACKET */
	LB_STAT_DROP_ERROR = 11,        /* bpf_xdp_adjust_head refused */
	LB_STAT_ICMP_REVERSE = 12,      /* ICMP errors about a nat flow's reply leg (a packet
					 * client -> backend) translated back to the VIP, then routed */
	/* Events, counted besides the packet's own outcome: */
	LB_STAT_FLOW_RESET = 13,        /* TCP RSTs that marked a live flow reset (it ends after
					 * LB_CLOSING_TIMEOUT idle unless its traffic goes on) */
	LB_STAT_FLOW_EXPIRED = 14,      /* packets that found their flow idle past its timeout */
	LB_STAT_FLOW_CONFIRMED = 15,    /* flows moved from half_open to conntrack by a second
					 * packet from the client that is not a SYN */
	LB_STAT_FLOW_REVIVED = 16,      /* flows marked reset whose traffic went on (a packet of
					 * the flow after the RST: it was stale or forged) */
	LB_STAT_MAX = 17,
};

/* The one element of `config`. */
struct lb_config {
	__u32 nat_vips;     /* how many VIPs use nat: replies are looked up only when > 0 */
	__u32 vip_addr_bits; /* bit lb_addr_bit(addr) set for every VIP address: a packet to
			      * an address whose bit is clear is no VIP's, and skips the flow
			      * lookup that comes before the VIP's (a hint: never decides alone) */
};

#endif /* FASTPATH_L4LB_H */
