// SPDX-License-Identifier: GPL-2.0
/*
 * l4lb - XDP layer-4 load balancer: VIPs (address, port, TCP/UDP, IPv4/IPv6) spread over
 * backends by a weighted Maglev ring, flows pinned by conntrack, forwarded per VIP by
 * direct routing at L2 (dsr), destination NAT with reverse translation (nat), or
 * IPv4-in-IPv4 / IPv6-in-IPv6 encapsulation (ipip, Katran-compatible DSR).
 *
 * Techniques:
 * - The control plane (fastpath/apps/lb/balancer.py) computes each VIP's Maglev table and
 *   writes it into the idle one of the VIP's two rings, then replaces the VIP entry (a hash map
 *   element, swapped whole under RCU) to flip `ring`: a packet sees the old table or the
 *   new one, never a half-written one.
 * - Two flow tables, so that no flood evicts an established flow: `half_open` holds flows
 *   seen once (a SYN, the first packet of a UDP flow or of a TCP flow picked up mid-stream),
 *   `conntrack` the flows a second packet from the client that is not a SYN confirmed (the
 *   handshake's ACK, a UDP flow's second datagram). A spoofed-source flood (one packet per
 *   tuple: SYNs, UDP, stray ACKs) only churns half_open. half_open keeps a handshake on
 *   its first pick while the ring changes; it has per-CPU LRU lists (BPF_F_NO_COMMON_LRU,
 *   as Katran: no shared lock while a flood inserts at line rate) and is sized by the CPUs
 *   that run the program (the kernel gives every possible CPU an equal share). conntrack
 *   and nat_reverse have a common LRU: inserts (one per confirmed flow) are rare, lookups
 *   take no lock either way, and the whole table serves whichever CPUs run the program.
 *   nat replies of half-open flows (the SYN-ACK) are translated through half_open_reverse.
 *   A drained backend gets no new flows while established ones stay.
 * - A packet's flow is looked up before its VIP: a live conntrack entry names its backend,
 *   the backend its VIP's index, and `vip_refs` (an array) the VIP at that index, which must
 *   be the packet's destination; a hit so costs one hash lookup, not two. A miss, or an entry
 *   whose VIP is not the packet's (deleted, its index and backend id since reused), takes
 *   the long way through `vips` with the same flow lookup. A 32-bit hint of the VIP
 *   addresses in `config` lets most other traffic (nat replies) skip the flow lookup.
 * - NAT rewrites address and port with incremental checksums (RFC 1624), v4 and v6;
 *   replies from backends are translated back through `nat_reverse` and handed to the
 *   kernel to route to the client.
 * - Defined verdicts (tests/bpf/test_l4lb.py pins each): non-IP, non-VIP and broken IP
 *   headers pass untouched; fragments, truncated L4 headers and unsupported protocols or
 *   IPv6 extension headers to a VIP address drop with a counter; IPv4 options are parsed
 *   past and balanced; ICMP errors quoting a VIP flow follow the flow to its backend
 *   (dsr, ipip; nat translated, see below); other ICMP passes.
 * - Flow lifetime: an entry idle longer than LB_UDP_TIMEOUT / LB_TCP_TIMEOUT counts as
 *   absent (the next packet is a miss, picked by Maglev again); a TCP FIN (the client's, or
 *   a nat backend's) marks the flow closing (LB_CLOSING_TIMEOUT idle); a TCP RST (either
 *   side) marks it reset, which ends it after LB_CLOSING_TIMEOUT idle unless a later packet
 *   of the flow (not a RST) clears the mark: a forged RST cannot end a live flow, and the
 *   entries of a reset one age out. RSTs are not checked against sequence numbers: dsr and
 *   ipip show us one direction only, without window scale, and tracking sequence numbers
 *   would write the entry on every packet (now at most once a second); the end hosts check
 *   RSTs against their window (RFC 5961). The entry is the one authority: a reply is
 *   translated only while its flow is live and pinned to the replying backend, and refreshes
 *   it. A SYN that repeats a live flow's tuple keeps the flow's backend (a forged SYN cannot
 *   move a connection); only a SYN of no live flow, or of a gone backend or one the health
 *   checks marked down, picks anew (a client retransmitting its SYN, or reusing the port of
 *   a connection the dead backend refused, reaches a live one; the down backend's other
 *   packets stay with it).
 * - ICMP errors of nat flows (RFC 5508 section 4.2), both directions, v4 and v6: an error
 *   to the VIP quoting a reply VIP -> client goes to the flow's backend, outer destination
 *   and quoted source address:port rewritten to the backend's; an error from the backend
 *   side to a client quoting client -> backend (port unreachable from the backend, or
 *   fragmentation needed from a router behind it) is translated back like a reply: quoted
 *   destination becomes the VIP, and the outer source too when the backend sent it. The
 *   quoted IPv4 header checksum, the quoted TCP/UDP checksum when quoted, the ICMP checksum
 *   and the outer checksums are updated incrementally.
 * - Per-CPU counters per VIP, per backend and global: no atomics on the fast path.
 * - Everything is reached through maps, so the program can later run as a tail-call target
 *   behind a dispatcher (e.g. after the SYN guard) without change.
 *
 * Minimum kernel: 5.11 (bpf_ktime_get_coarse_ns; XDP bpf_link needs 5.9).
 * Usage: fastpath lb attach IFACE [--netns NS]; fastpath lb vip add 10.0.0.10:80/tcp;
 *        fastpath lb backend add 10.0.0.10:80/tcp 10.0.0.21
 * Manual test: fastpath lb attach eth0 && fastpath lb vip add 10.9.0.1:80/tcp --mode dsr &&
 *        fastpath lb backend add 10.9.0.1:80/tcp 10.0.0.2 && fastpath lb stats
 * One file by design: bcc compiles one translation unit and rewrites map syntax only in
 * it, so the balancer's maps, parsers and modes live together (headers hold only types).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>

#include "fastpath.h"
#include "l4lb.h"

/* VIPs the maps hold (the rings take LB_MAX_VIPS * 2 * LB_RING_SIZE * 4 bytes). */
#ifndef LB_MAX_VIPS
#define LB_MAX_VIPS 32
#endif

/* VIP-backend pairs the maps hold. */
#ifndef LB_MAX_BACKENDS
#define LB_MAX_BACKENDS 4096
#endif

/* Maglev table size per VIP: a prime. */
#ifndef LB_RING_SIZE
#define LB_RING_SIZE 65537
#endif

/* Established flows conntrack (and nat_reverse) hold before the least recently used are
 * evicted. */
#ifndef LB_CONNTRACK_SIZE
#define LB_CONNTRACK_SIZE 131072
#endif

/* Half-open flows half_open (and half_open_reverse) hold, all CPUs that run the program
 * together; a flood of new tuples evicts only these. */
#ifndef LB_HALF_OPEN_SIZE
#define LB_HALF_OPEN_SIZE 32768
#endif

/* CPUs the kernel may ever bring up, and CPUs that run the program (those serving the
 * NIC's receive queues). half_open's per-CPU LRU gives each possible CPU an equal share and
 * a CPU evicts only from its own, so the map gets LB_HALF_OPEN_SIZE * POSSIBLE / RX entries. */
#ifndef LB_POSSIBLE_CPUS
#define LB_POSSIBLE_CPUS 1
#endif

#ifndef LB_RX_CPUS
#define LB_RX_CPUS 1
#endif

/* Seed of the flow hash; fastpath/apps/lb/hashing.py computes the same hash for
 * `lb explain`. */
#ifndef LB_HASH_SEED
#define LB_HASH_SEED 0
#endif

/* Seconds a flow may stay idle before its next packet counts as a conntrack miss (a new
 * Maglev pick) and its nat replies are no longer translated: UDP, TCP, and TCP once a FIN
 * or a RST was seen. */
#ifndef LB_UDP_TIMEOUT
#define LB_UDP_TIMEOUT 30
#endif

#ifndef LB_TCP_TIMEOUT
#define LB_TCP_TIMEOUT 300
#endif

#ifndef LB_CLOSING_TIMEOUT
#define LB_CLOSING_TIMEOUT 10
#endif

/* Largest IP packet (bytes) an encapsulated packet may become; larger ones drop. */
#ifndef LB_MAX_PACKET
#define LB_MAX_PACKET 1500
#endif

/* Outer IPv4 source of ipip: these 16 bits (172.16) then 16 bits of flow entropy. */
#ifndef LB_IPIP_V4_PREFIX
#define LB_IPIP_V4_PREFIX 0xac10
#endif

/* Outer IPv6 source of ipip: these 32 bits (0100::, the discard prefix), 64 zero bits,
 * then 32 bits of flow entropy. */
#ifndef LB_IPIP_V6_PREFIX
#define LB_IPIP_V6_PREFIX 0x01000000
#endif

#define LB_HALF_OPEN_ENTRIES \
	((__u32)(((__u64)LB_HALF_OPEN_SIZE * LB_POSSIBLE_CPUS + LB_RX_CPUS - 1) / LB_RX_CPUS))
#define LB_NSEC_PER_SEC 1000000000ULL
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IPPROTO_FRAGMENT_HDR 44
/* CPUs start their outer IPv4 ID sequences this far apart. */
#define LB_IPIP_ID_SPREAD 0x1000

FP_MAP_F("hash", struct lb_vip_key, struct lb_vip, vips, LB_MAX_VIPS, BPF_F_NO_PREALLOC);
FP_MAP("hash", struct lb_addr_key, __u32, vip_addrs, LB_MAX_VIPS);
FP_MAP("array", u32, struct lb_vip_ref, vip_refs, LB_MAX_VIPS);
FP_MAP("array", u32, u32, rings, LB_MAX_VIPS * 2 * LB_RING_SIZE);
FP_MAP("array", u32, struct lb_backend, backends, LB_MAX_BACKENDS);
FP_MAP("lru_hash", struct lb_flow_key, struct lb_flow, conntrack, LB_CONNTRACK_SIZE);
FP_MAP("lru_hash", struct lb_flow_key, struct lb_vip_key, nat_reverse, LB_CONNTRACK_SIZE);
FP_MAP_F("lru_hash", struct lb_flow_key, struct lb_flow, half_open, LB_HALF_OPEN_ENTRIES,
	 BPF_F_NO_COMMON_LRU);
FP_MAP_F("lru_hash", struct lb_flow_key, struct lb_vip_key, half_open_reverse,
	 LB_HALF_OPEN_ENTRIES, BPF_F_NO_COMMON_LRU);
FP_MAP("percpu_array", u32, struct lb_vip_stats, vip_stats, LB_MAX_VIPS);
FP_MAP("percpu_array", u32, struct lb_backend_stats, backend_stats, LB_MAX_BACKENDS);
FP_MAP("percpu_array", u32, struct lb_counter, stats, LB_STAT_MAX);
FP_MAP("array", u32, struct lb_config, config, 1);
/* Per-CPU sequence of outer IPv4 IDs for ipip packets that may be fragmented. */
FP_MAP("percpu_array", u32, u32, ipip_ids, 1);

/* What the parsers found, and so what the program does next. */
enum next_step {
	NEXT_L4,         /* TCP/UDP with a complete header: balance, or reverse NAT */
	NEXT_L4_SHORT,   /* ports known, header truncated: drop if it is for a VIP */
	NEXT_NO_PORTS,   /* TCP/UDP too short to hold ports: drop if to a VIP address */
	NEXT_ICMP_ERR,   /* ICMP error quoting a packet; `flow` is the quoted flow reversed:
			  * client -> VIP when the quote went VIP -> client, backend -> client
			  * when it went client -> backend (a nat flow's reply leg) */
	NEXT_ICMP_OTHER, /* any other ICMP: pass */
	NEXT_FRAG,       /* a fragment: drop if to a VIP address */
	NEXT_OTHER,      /* another protocol or an IPv6 extension header */
	NEXT_MALFORMED,  /* IP header the kernel should judge: pass */
};

struct pkt {
	struct lb_flow_key flow;  /* client -> VIP */
	__u16 l4_off;             /* L4 header offset from the start of the frame */
	__u16 ip_len;             /* whole IP packet, header included (what ipip wraps) */
	__u8 tos;                 /* IPv4 TOS / IPv6 traffic class, copied to the outer header */
	__u8 syn;                 /* TCP SYN without ACK: a new connection */
	__u8 fin;                 /* TCP FIN: the flow is closing */
	__u8 rst;                 /* TCP RST: the flow ends */
	__u8 icmp;                /* an ICMP error being forwarded: never recorded */
};

/* ---- jhash (include/linux/jhash.h), mirrored by fastpath/apps/lb/hashing.py ---- */

#define LB_JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 lb_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

#define lb_jhash_mix(a, b, c)                                 \
	{                                                    \
		a -= c; a ^= lb_rol32(c, 4);  c += b;           \
		b -= a; b ^= lb_rol32(a, 6);  a += c;           \
		c -= b; c ^= lb_rol32(b, 8);  b += a;           \
		a -= c; a ^= lb_rol32(c, 16); c += b;           \
		b -= a; b ^= lb_rol32(a, 19); a += c;           \
		c -= b; c ^= lb_rol32(b, 4);  b += a;           \
	}

#define lb_jhash_final(a, b, c)                               \
	{                                                    \
		c ^= b; c -= lb_rol32(b, 14);                   \
		a ^= c; a -= lb_rol32(c, 11);                   \
		b ^= a; b -= lb_rol32(a, 25);                   \
		c ^= b; c -= lb_rol32(b, 16);                   \
		a ^= c; a -= lb_rol32(c, 4);                    \
		b ^= a; b -= lb_rol32(a, 14);                   \
		c ^= b; c -= lb_rol32(b, 24);                   \
	}

static __always_inline __u32 lb_jhash_2words(__u32 a, __u32 b, __u32 initval)
{
	__u32 c = 0;

	initval += LB_JHASH_INITVAL + (2 << 2);
	a += initval;
	b += initval;
	c += initval;
	lb_jhash_final(a, b, c);
	return c;
}

static __always_inline __u32 lb_jhash_4words(const __u32 *k, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = LB_JHASH_INITVAL + (4 << 2) + initval;
	a += k[0];
	b += k[1];
	c += k[2];
	lb_jhash_mix(a, b, c);
	a += k[3];
	lb_jhash_final(a, b, c);
	return c;
}

/* The Maglev slot hash of a client -> VIP flow. */
static __always_inline __u32 flow_hash(const struct lb_flow_key *f, int src_only)
{
	__u32 ports = src_only ? 0 : ((__u32)f->dport << 16) | f->sport;
	__u32 src = f->family == 4 ? f->src[0] : lb_jhash_4words(f->src, LB_HASH_SEED);

	return lb_jhash_2words(src, ports, LB_HASH_SEED);
}

/* ---- checksums: RFC 1624 incremental update, HC' = ~(~HC + ~m + m') ---- */

static __always_inline __u16 lb_csum_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u64 diff4(__u32 from, __u32 to)
{
	return (__u64)(__u32)~from + to;
}

static __always_inline __u64 diff2(__u16 from, __u16 to)
{
	return (__u64)(__u16)~from + to;
}

static __always_inline __u16 csum_apply(__u16 check, __u64 diff)
{
	return (__u16)~lb_csum_fold((__u64)(__u16)~check + diff);
}

static __always_inline __u64 diff_addr(const __be32 *from, const __be32 *to, int family)
{
	__u64 d = diff4(from[0], to[0]);

	if (family == 6)
		d += diff4(from[1], to[1]) + diff4(from[2], to[2]) + diff4(from[3], to[3]);
	return d;
}

/* The checksum of an IPv4 header without options, from the values written into it rather
 * than read back from the packet (a load of 16 bits that two byte stores just wrote waits for
 * them). Each term is a 16-bit word as it lies in memory; a one's complement sum is the same
 * in either byte order (RFC 1071 2(B)), so the result is stored as it is. `vtos` and
 * `ttlproto` are the first and fifth words, in network order. */
static __always_inline __u16 ipv4_csum(__be16 vtos, __be16 tot_len, __be16 id, __be16 frag_off,
				       __be16 ttlproto, __be32 saddr, __be32 daddr)
{
	__u64 s = (__u64)vtos + tot_len + id + frag_off + ttlproto +
		  (saddr >> 16) + (saddr & 0xffff) + (daddr >> 16) + (daddr & 0xffff);

	return (__u16)~lb_csum_fold(s);
}

/* ---- counters ---- */

static __always_inline int count(__u32 stat, __u64 len, int verdict)
{
	struct lb_counter *c = stats.lookup(&stat);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return verdict;
}

/* Which bit of lb_config.vip_addr_bits an address stands for: its 32-bit words as they lie
 * in memory, folded to 5 bits (fastpath/apps/lb/balancer.py computes the same). */
static __always_inline __u32 lb_addr_bit(const __be32 *a)
{
	__u32 x = a[0] ^ a[1] ^ a[2] ^ a[3];

	x ^= x >> 16;
	x ^= x >> 8;
	return 1u << (x & 31);
}

static __always_inline int is_vip_addr(const struct lb_flow_key *f)
{
	struct lb_addr_key k;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.addr, f->dst, sizeof(k.addr));
	k.family = f->family;
	return vip_addrs.lookup(&k) != NULL;
}

/* ---- parsing: every read bounds-checked against data_end ---- */

static __always_inline int parse_ports(void *l4, void *data_end, struct pkt *p)
{
	__be16 *ports = l4;

	if ((void *)(ports + 2) > data_end)
		return NEXT_NO_PORTS;
	p->flow.sport = ports[0];
	p->flow.dport = ports[1];
	if (p->flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end || tcp->doff < 5)
			return NEXT_L4_SHORT;
		p->syn = tcp->syn && !tcp->ack;
		p->fin = tcp->fin;
		p->rst = tcp->rst;
	} else if ((void *)((struct udphdr *)l4 + 1) > data_end) {
		return NEXT_L4_SHORT;
	}
	return NEXT_L4;
}

static __always_inline int parse_icmp4(void *l4, void *data_end, struct pkt *p)
{
	struct icmphdr *icmp = l4;
	struct iphdr *in = (void *)(icmp + 1);
	__be16 *ports = (void *)(in + 1);

	if ((void *)(ports + 2) > data_end)
		return NEXT_ICMP_OTHER;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return NEXT_ICMP_OTHER;
	if (in->version != 4 || in->ihl != 5 ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
		return NEXT_ICMP_OTHER;
	/* Only errors sent to the address the quoted packet came from: the VIP. */
	if (in->saddr != p->flow.dst[0])
		return NEXT_ICMP_OTHER;
	/* The quoted packet went VIP -> client; the flow is its reverse. */
	p->flow.proto = in->protocol;
	p->flow.src[0] = in->daddr;
	p->flow.sport = ports[1];
	p->flow.dport = ports[0];
	return NEXT_ICMP_ERR;
}

static __always_inline int parse_v4(void *data, void *data_end, struct pkt *p)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 hlen;
	__u64 tot;

	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return NEXT_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	FP_BOUND(tot, 0xffff);
	if (tot < hlen || (void *)ip + tot > data_end)
		return NEXT_MALFORMED;
	p->flow.family = 4;
	p->flow.proto = ip->protocol;
	p->flow.src[0] = ip->saddr;
	p->flow.dst[0] = ip->daddr;
	p->tos = ip->tos;
	p->ip_len = tot;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return NEXT_FRAG;
	p->l4_off = sizeof(struct ethhdr) + hlen;
	if (ip->protocol == IPPROTO_ICMP)
		return parse_icmp4((void *)ip + hlen, data_end, p);
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return NEXT_OTHER;
	return parse_ports((void *)ip + hlen, data_end, p);
}

static __always_inline int same6(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int parse_icmp6(void *l4, void *data_end, struct pkt *p)
{
	struct icmp6hdr *icmp = l4;
	struct ipv6hdr *in = (void *)(icmp + 1);
	__be16 *ports = (void *)(in + 1);
	__u8 type;

	if ((void *)(ports + 2) > data_end)
		return NEXT_ICMP_OTHER;
	type = icmp->icmp6_type;
	if (type != ICMPV6_DEST_UNREACH && type != ICMPV6_PKT_TOOBIG &&
	    type != ICMPV6_TIME_EXCEED && type != ICMPV6_PARAMPROB)
		return NEXT_ICMP_OTHER;
	if (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP)
		return NEXT_ICMP_OTHER;
	if (!same6((__be32 *)&in->saddr, p->flow.dst))
		return NEXT_ICMP_OTHER;
	p->flow.proto = in->nexthdr;
	__builtin_memcpy(p->flow.src, &in->daddr, 16);
	p->flow.sport = ports[1];
	p->flow.dport = ports[0];
	return NEXT_ICMP_ERR;
}

static __always_inline int parse_v6(void *data, void *data_end, struct pkt *p)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u64 plen;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return NEXT_MALFORMED;
	plen = bpf_ntohs(ip6->payload_len);
	FP_BOUND(plen, 0xffff);
	if ((void *)(ip6 + 1) + plen > data_end)
		return NEXT_MALFORMED;
	p->flow.family = 6;
	p->flow.proto = ip6->nexthdr;
	__builtin_memcpy(p->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(p->flow.dst, &ip6->daddr, 16);
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	p->ip_len = sizeof(struct ipv6hdr) + plen;
	p->l4_off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return parse_ports(ip6 + 1, data_end, p);
	case IPPROTO_ICMPV6:
		return parse_icmp6(ip6 + 1, data_end, p);
	case IPPROTO_FRAGMENT_HDR:
		return NEXT_FRAG;
	default:
		return NEXT_OTHER;
	}
}

/* ---- rewriting ---- */

/* Rewrite the destination (dir 0) or source (dir 1) address and port of the IP packet at
 * the start of the frame, fixing the IPv4 header and the TCP/UDP checksums. */
static __always_inline int rewrite(struct xdp_md *ctx, const struct pkt *p, const __be32 *addr,
				   __be16 port, int dir)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *l4 = data + (p->l4_off & 0x7f);
	__be32 *old;
	__u64 adiff;
	__u16 c;

	if (p->flow.family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > data_end)
			return -1;
		old = dir ? &ip->saddr : &ip->daddr;
		adiff = diff4(*old, addr[0]);
		ip->check = csum_apply(ip->check, adiff);
		*old = addr[0];
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		old = dir ? (__be32 *)&ip6->saddr : (__be32 *)&ip6->daddr;
		adiff = diff_addr(old, addr, 6);
		__builtin_memcpy(old, addr, 16);
	}
	if (p->flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		__be16 *pp;

		if ((void *)(tcp + 1) > data_end)
			return -1;
		pp = dir ? &tcp->source : &tcp->dest;
		tcp->check = csum_apply(tcp->check, adiff + diff2(*pp, port));
		*pp = port;
	} else {
		struct udphdr *udp = l4;
		__be16 *pp;

		if ((void *)(udp + 1) > data_end)
			return -1;
		pp = dir ? &udp->source : &udp->dest;
		/* A zero IPv4 UDP checksum means "none" and stays so; 0 is sent as 0xffff. */
		if (udp->check || p->flow.family == 6) {
			c = csum_apply(udp->check, adiff + diff2(*pp, port));
			udp->check = c ? c : 0xffff;
		}
		*pp = port;
	}
	return 0;
}

/* The quoted TCP/UDP checksum of an ICMP error, when the quote holds it (a router may
 * quote only 8 bytes of TCP), updated by `diff`; returns what the ICMP checksum changes by. */
static __always_inline __u64 quoted_l4_csum(void *data_end, const struct pkt *p, __be16 *ports,
					    __u32 ports_off, __u64 diff)
{
	__u32 at = p->flow.proto == IPPROTO_TCP ? 16 : 6;
	__u16 *check = (void *)ports + at;
	__u16 old, c;

	if ((void *)(check + 1) > data_end ||
	    ports_off + at + 2 > sizeof(struct ethhdr) + (__u32)p->ip_len)
		return 0;
	old = *check;
	/* A zero IPv4 UDP checksum means "none" and stays so; 0 is sent as 0xffff. */
	if (p->flow.proto == IPPROTO_UDP && !old && p->flow.family == 4)
		return 0;
	c = csum_apply(old, diff);
	if (p->flow.proto == IPPROTO_UDP && !c)
		c = 0xffff;
	*check = c;
	return diff2(old, c);
}

/* NAT of an ICMP error about a nat flow (RFC 5508 section 4.2): the quoted packet's VIP-side
 * address and port become addr:port - its source when it went VIP -> client (dir 0, the
 * error goes to the backend), its destination when it went client -> backend (dir 1, the
 * error goes to the client) - and so does the outer destination (dir 0) or the outer
 * source when the backend sent the error itself (dir 1; a router on the way keeps its own).
 * Fixes the quoted IPv4 header checksum, the quoted TCP/UDP checksum when quoted, the ICMP
 * checksum (ICMPv6 with its pseudo-header) and the outer IPv4 header checksum. */
static __always_inline int icmp_nat(struct xdp_md *ctx, const struct pkt *p, const __be32 *addr,
				    __be16 port, int dir)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off & 0x7f;
	__be16 *ports, *pp;
	__be32 *ia, *oa;
	__u64 adiff, d;
	__u16 c;

	if (p->flow.family == 4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		struct icmphdr *icmp = data + off;
		struct iphdr *in = (void *)(icmp + 1);

		ports = (void *)(in + 1);
		if ((void *)(ip + 1) > data_end || (void *)(ports + 2) > data_end)
			return -1;
		ia = dir ? &in->daddr : &in->saddr;
		oa = dir ? &ip->saddr : &ip->daddr;
		pp = dir ? &ports[1] : &ports[0];
		adiff = diff4(*ia, addr[0]);
		d = adiff + diff2(*pp, port);
		d += quoted_l4_csum(data_end, p, ports, off + 8 + 20, d);
		c = csum_apply(in->check, adiff);
		d += diff2(in->check, c);
		in->check = c;
		if (*oa == *ia) {
			ip->check = csum_apply(ip->check, diff4(*oa, addr[0]));
			*oa = addr[0];
		}
		*ia = addr[0];
		*pp = port;
		icmp->checksum = csum_apply(icmp->checksum, d);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		struct icmp6hdr *icmp = (void *)(ip6 + 1);
		struct ipv6hdr *in = (void *)(icmp + 1);

		ports = (void *)(in + 1);
		if ((void *)(ports + 2) > data_end)
			return -1;
		ia = dir ? (__be32 *)&in->daddr : (__be32 *)&in->saddr;
		oa = dir ? (__be32 *)&ip6->saddr : (__be32 *)&ip6->daddr;
		pp = dir ? &ports[1] : &ports[0];
		adiff = diff_addr(ia, addr, 6);
		d = adiff + diff2(*pp, port);
		d += quoted_l4_csum(data_end, p, ports, off + 8 + 40, d);
		if (same6(oa, ia)) {
			/* the outer address is in ICMPv6's pseudo-header */
			d += diff_addr(oa, addr, 6);
			__builtin_memcpy(oa, addr, 16);
		}
		__builtin_memcpy(ia, addr, 16);
		*pp = port;
		icmp->icmp6_cksum = csum_apply(icmp->icmp6_cksum, d);
	}
	return 0;
}

/* A MAC address copied as three 16-bit words (MACs in frames and in lb_backend start at even
 * offsets): __builtin_memcpy cannot assume an alignment of packet memory and copies bytes. */
static __always_inline void copy_mac(void *dst, const void *src)
{
	__u16 *d = dst;
	const __u16 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

static __always_inline int set_macs(struct xdp_md *ctx, const __u8 *dst)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	/* The frame was addressed to this interface: its destination is our own MAC. */
	copy_mac(eth->h_source, eth->h_dest);
	copy_mac(eth->h_dest, dst);
	return 0;
}

/* Open room for an outer IP header of `hlen` bytes in front of the packet and address the
 * frame to the backend (`ours` is the interface's MAC, read before the head moved). Returns
 * where the outer header goes, or NULL with *stat saying why the packet is dropped. */
static __always_inline void *push_outer(struct xdp_md *ctx, const struct pkt *p,
					const struct lb_backend *be, const __u16 *ours,
					__u32 hlen, __u16 eth_proto, __u32 *stat)
{
	void *data, *data_end;
	struct ethhdr *eth;

	*stat = LB_STAT_DROP_TOO_BIG;
	if (p->ip_len + hlen > LB_MAX_PACKET)
		return NULL;
	*stat = LB_STAT_DROP_ERROR;
	if (bpf_xdp_adjust_head(ctx, 0 - (int)hlen))
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if (data + sizeof(struct ethhdr) + hlen > data_end)
		return NULL;
	copy_mac(eth->h_dest, be->mac);
	copy_mac(eth->h_source, ours);
	eth->h_proto = bpf_htons(eth_proto);
	return data + sizeof(struct ethhdr);
}

/* The outer IPv4 ID of a packet that may be fragmented (RFC 6864: unique per source,
 * destination and protocol for as long as fragments may live). A flow stays on one CPU, so
 * a per-CPU sequence never repeats an ID within the flow's outer address pair before it
 * wraps; CPUs start their sequences apart. */
static __always_inline __u16 next_ipip_id(void)
{
	u32 zero = 0;
	u32 *seq = ipip_ids.lookup(&zero);

	if (!seq)
		return 1;
	*seq += 1;
	return (__u16)(*seq + bpf_get_smp_processor_id() * LB_IPIP_ID_SPREAD);
}

static __always_inline int encap(struct xdp_md *ctx, const struct pkt *p,
				 const struct lb_backend *be, __u64 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u16 ours[3];
	__u32 stat;

	if ((void *)(eth + 1) > data_end)
		return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
	copy_mac(ours, eth->h_dest);
	if (p->flow.family == 4) {
		struct iphdr *o = push_outer(ctx, p, be, ours, sizeof(*o), ETH_P_IP, &stat);
		struct iphdr *in;
		__be16 vtos, tot_len, id, df;
		__be32 saddr, daddr;
		__u32 entropy;

		if (!o)
			return count(stat, len, XDP_DROP);
		in = (void *)(o + 1);
		if ((void *)(in + 1) > (void *)(long)ctx->data_end)
			return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
		entropy = (bpf_ntohl(p->flow.src[0]) ^ bpf_ntohs(p->flow.sport)) & 0xffff;
		/* The client's DF holds for the tunnel too (RFC 2003 3.1); an outer header that may
		 * be fragmented gets a real ID, an atomic one ID 0 (RFC 6864). */
		df = in->frag_off & bpf_htons(IP_DF);
		vtos = bpf_htons(0x4500 | p->tos);
		tot_len = bpf_htons(p->ip_len + sizeof(struct iphdr));
		id = df ? 0 : bpf_htons(next_ipip_id());
		saddr = bpf_htonl(((__u32)LB_IPIP_V4_PREFIX << 16) | entropy);
		daddr = be->addr[0];
		*(__be16 *)o = vtos;
		o->tot_len = tot_len;
		o->id = id;
		o->frag_off = df;
		o->ttl = 64;
		o->protocol = IPPROTO_IPIP;
		o->check = ipv4_csum(vtos, tot_len, id, df, bpf_htons((64 << 8) | IPPROTO_IPIP),
				     saddr, daddr);
		o->saddr = saddr;
		o->daddr = daddr;
	} else {
		struct ipv6hdr *o = push_outer(ctx, p, be, ours, sizeof(*o), ETH_P_IPV6, &stat);
		__be32 *src;

		if (!o)
			return count(stat, len, XDP_DROP);
		*(__u32 *)o = bpf_htonl((6u << 28) | ((__u32)p->tos << 20));
		o->payload_len = bpf_htons(p->ip_len);
		o->nexthdr = IPPROTO_IPV6;
		o->hop_limit = 64;
		src = (__be32 *)&o->saddr;
		src[0] = bpf_htonl(LB_IPIP_V6_PREFIX);
		src[1] = 0;
		src[2] = 0;
		src[3] = p->flow.src[3] ^ bpf_htonl(bpf_ntohs(p->flow.sport));
		__builtin_memcpy(&o->daddr, be->addr, 16);
	}
	return XDP_TX;
}

/* ---- balancing ---- */

/* How long a flow may stay idle (ns). */
static __always_inline __u64 flow_timeout(const struct lb_flow *f, __u8 proto)
{
	if (f->flags & (LB_FLOW_F_CLOSING | LB_FLOW_F_RESET))
		return LB_CLOSING_TIMEOUT * LB_NSEC_PER_SEC;
	if (proto == IPPROTO_TCP)
		return LB_TCP_TIMEOUT * LB_NSEC_PER_SEC;
	return LB_UDP_TIMEOUT * LB_NSEC_PER_SEC;
}

/* Whether a pinned flow's packet stays with its backend: a SYN leaves a backend the health
 * checks marked down (see the file's head). */
static __always_inline int pin_holds(const struct lb_backend *be, const struct pkt *p)
{
	return !(p->syn && (be->flags & LB_BACKEND_F_DOWN));
}

/* The backend of a flow entry that still serves a VIP's flow: its backend exists and serves
 * the VIP, the packet stays pinned to it, and the flow has not been idle past its timeout.
 * NULL otherwise. */
static __always_inline struct lb_backend *flow_backend(const struct lb_flow *f, __u32 vidx,
							const struct pkt *p, __u64 now, __u64 len)
{
	__u32 bid = f->backend;
	struct lb_backend *be = backends.lookup(&bid);

	if (!be || !(be->flags & LB_BACKEND_F_EXISTS) || be->vip != vidx || !pin_holds(be, p))
		return NULL;
	if (now - f->atime > flow_timeout(f, p->flow.proto)) {
		count(LB_STAT_FLOW_EXPIRED, len, 0);
		return NULL;
	}
	return be;
}

/* A RST (from either side) marks the flow reset; any later packet of the flow that is not a
 * RST clears the mark: the RST was stale, or forged by someone who knew the tuple. */
static __always_inline void flow_seen(struct lb_flow *f, const struct pkt *p, __u64 now, __u64 len)
{
	if (p->rst) {
		if (!(f->flags & LB_FLOW_F_RESET)) {
			f->flags |= LB_FLOW_F_RESET;
			f->atime = now;
			count(LB_STAT_FLOW_RESET, len, 0);
		}
		return;
	}
	if (f->flags & LB_FLOW_F_RESET) {
		f->flags &= ~LB_FLOW_F_RESET;
		f->atime = now;
		count(LB_STAT_FLOW_REVIVED, len, 0);
	}
	if (p->fin && !(f->flags & LB_FLOW_F_CLOSING)) {
		f->flags |= LB_FLOW_F_CLOSING;
		f->atime = now;
	}
}

/* The backend of a conntrack entry found before the packet's VIP was looked up, when the
 * entry is live and its backend serves the packet's VIP: the backend's VIP index names the
 * VIP in `vip_refs`, which must be the packet's destination. Fills `vip` with what a hit
 * needs of the VIP (index, mode) and *now with the time read. NULL otherwise: the packet
 * then takes the long way (`vips`, then balance() judges the entry, counting an expiry). */
static __always_inline struct lb_backend *conntrack_hit(const struct lb_flow *f, const struct pkt *p,
							struct lb_vip *vip, __u64 *now)
{
	__u32 bid = f->backend;
	struct lb_backend *be = backends.lookup(&bid);
	struct lb_vip_ref *ref;
	__u32 vidx;

	if (!be || !(be->flags & LB_BACKEND_F_EXISTS) || !pin_holds(be, p))
		return NULL;
	vidx = be->vip;
	ref = vip_refs.lookup(&vidx);
	if (!ref || !same6(ref->vip.addr, p->flow.dst) || ref->vip.port != p->flow.dport ||
	    ref->vip.proto != p->flow.proto || ref->vip.family != p->flow.family)
		return NULL;
	*now = bpf_ktime_get_coarse_ns();
	if (*now - f->atime > flow_timeout(f, p->flow.proto))
		return NULL;
	vip->index = vidx;
	vip->mode = ref->mode;
	return be;
}

/* The nat_reverse key of a flow's replies: backend -> client. */
static __always_inline void reply_key(struct lb_flow_key *rk, const struct pkt *p,
				      const struct lb_backend *be)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	__builtin_memcpy(rk->src, be->addr, 16);
	__builtin_memcpy(rk->dst, p->flow.src, 16);
	rk->sport = be->port ? be->port : p->flow.dport;
	rk->dport = p->flow.sport;
	rk->proto = p->flow.proto;
	rk->family = p->flow.family;
}

/* Record how the flow's replies are translated back: in nat_reverse for an established
 * flow, in half_open_reverse for a half-open one. */
static __always_inline void record_reverse(const struct pkt *p, const struct lb_backend *be,
					   int half)
{
	struct lb_flow_key rk;
	struct lb_vip_key vk;

	reply_key(&rk, p, be);
	__builtin_memset(&vk, 0, sizeof(vk));
	__builtin_memcpy(vk.addr, p->flow.dst, 16);
	vk.port = p->flow.dport;
	vk.proto = p->flow.proto;
	vk.family = p->flow.family;
	if (half)
		half_open_reverse.update(&rk, &vk);
	else
		nat_reverse.update(&rk, &vk);
}

/* A half-open flow is confirmed: it moves to conntrack (and its reply translation to
 * nat_reverse), where no flood of new tuples can evict it. On failure it stays half-open
 * and the next packet tries again. */
static __always_inline void confirm_flow(const struct pkt *p, const struct lb_vip *vip,
					 const struct lb_backend *be, const struct lb_flow *f,
					 __u64 now, __u64 len)
{
	struct lb_flow nf = {
		.backend = f->backend,
		.flags = f->flags,
		.atime = now,
	};
	struct lb_flow_key rk;

	if (conntrack.update(&p->flow, &nf))
		return;
	if (vip->mode == LB_MODE_NAT) {
		record_reverse(p, be, 0);
		reply_key(&rk, p, be);
		half_open_reverse.delete(&rk);
	}
	half_open.delete(&p->flow);
	count(LB_STAT_FLOW_CONFIRMED, len, 0);
}

/* Balance a packet to `vip`. `f` is the flow's conntrack entry (NULL: none), which the caller
 * looked up; `be` its backend when the caller found the entry live (now: the time it read),
 * NULL when this function is to judge the entry. */
static __always_inline int balance(struct xdp_md *ctx, struct pkt *p, const struct lb_vip *vip,
				   struct lb_flow *f, struct lb_backend *be, __u64 now, __u64 len)
{
	__u32 vidx = vip->index;
	struct lb_vip_stats *vs = vip_stats.lookup(&vidx);
	struct lb_backend_stats *bs;
	__u32 bid = 0;
	__u32 key;
	__u32 *slot;
	int new_flow = 0;
	int half = 0;

	if (vs) {
		vs->packets++;
		vs->bytes += len;
	}
	if (f && !be) {
		now = bpf_ktime_get_coarse_ns();
		be = flow_backend(f, vidx, p, now, len);
		/* An entry that no longer serves is dead: the flow starts again half-open. */
		if (!be)
			conntrack.delete(&p->flow);
	}
	if (!be) {
		f = half_open.lookup(&p->flow);
		if (f) {
			now = now ? now : bpf_ktime_get_coarse_ns();
			be = flow_backend(f, vidx, p, now, len);
			half = 1;
		}
	}
	if (be) {
		bid = f->backend;
		if (vs)
			vs->lru_hits++;
		if (p->syn) {
			/* A new connection on the tuple lives as one; it stays where it is. */
			f->flags = 0;
			f->atime = now;
		} else if (!p->icmp) {
			flow_seen(f, p, now, len);
			/* The client's second packet that is not a SYN (nor a RST) confirms it. */
			if (half && !p->rst) {
				confirm_flow(p, vip, be, f, now, len);
			} else if (now - f->atime > LB_NSEC_PER_SEC) {
				f->atime = now;
				/* nat_reverse is an LRU of its own: keep the pair together. */
				if (vip->mode == LB_MODE_NAT)
					record_reverse(p, be, half);
			}
		}
	} else {
		if (vs)
			vs->lru_misses++;
		if (vip->backends == 0 || vidx >= LB_MAX_VIPS)
			goto no_backend;
		key = (vidx * 2 + (vip->ring & 1)) * LB_RING_SIZE +
		      flow_hash(&p->flow, vip->flags & LB_VIP_F_HASH_SRC_ONLY) % LB_RING_SIZE;
		slot = rings.lookup(&key);
		if (!slot || *slot == LB_NO_BACKEND)
			goto no_backend;
		bid = *slot;
		be = backends.lookup(&bid);
		if (!be || !(be->flags & LB_BACKEND_F_EXISTS))
			goto no_backend;
		/* A RST begins no flow; anything else begins a half-open one. */
		if (!p->rst && !p->icmp) {
			struct lb_flow nf = {
				.backend = bid,
				.flags = p->fin ? LB_FLOW_F_CLOSING : 0,
				.atime = now ? now : bpf_ktime_get_coarse_ns(),
			};

			half_open.update(&p->flow, &nf);
			if (vip->mode == LB_MODE_NAT)
				record_reverse(p, be, 1);
			new_flow = 1;
			if (vs)
				vs->new_flows++;
		}
	}
	bs = backend_stats.lookup(&bid);
	if (bs) {
		bs->packets++;
		bs->bytes += len;
		bs->new_flows += new_flow;
	}
	if (p->icmp)
		count(LB_STAT_ICMP_FORWARDED, len, 0);

	if (vip->mode == LB_MODE_IPIP)
		return encap(ctx, p, be, len);
	if (vip->mode == LB_MODE_NAT) {
		__be16 port = be->port ? be->port : p->flow.dport;

		if (p->icmp ? icmp_nat(ctx, p, be->addr, port, 0) : rewrite(ctx, p, be->addr, port, 0))
			return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
	}
	if (set_macs(ctx, be->mac))
		return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
	return XDP_TX;

no_backend:
	if (vs)
		vs->no_backend++;
	return count(LB_STAT_DROP_NO_BACKEND, len, XDP_DROP);
}

/* The flow entry (conntrack, else half_open) that a reply from backend `src`:`sport` may be
 * translated by: live, and pinned to that backend. NULL otherwise. */
static __always_inline struct lb_flow *reply_flow(const struct lb_flow_key *fk, const struct pkt *p,
						  __be16 vport, __u64 now, __u64 len)
{
	struct lb_flow *f = conntrack.lookup(fk);
	struct lb_backend *be;
	__u32 bid;

	if (!f)
		f = half_open.lookup(fk);
	if (!f)
		return NULL;
	if (now - f->atime > flow_timeout(f, p->flow.proto)) {
		count(LB_STAT_FLOW_EXPIRED, len, 0);
		return NULL;
	}
	bid = f->backend;
	be = backends.lookup(&bid);
	if (!be || !same6(be->addr, p->flow.src) || (be->port ? be->port : vport) != p->flow.sport)
		return NULL;
	return f;
}

/* A packet from a nat backend to a client (a reply, or an ICMP error about a packet the
 * backend got from the client): make it come from the VIP. Only while the flow is live
 * (established, or half-open: the SYN-ACK) and pinned to this backend; a stale entry is
 * dropped and the packet passes as it is. Replies keep the flow alive and mark it as the
 * client's packets do (FIN, RST), but never confirm it: a backend answers spoofed clients
 * too. */
static __always_inline int reverse_nat(struct xdp_md *ctx, struct pkt *p, __u64 len)
{
	struct lb_vip_key *vk = nat_reverse.lookup(&p->flow);
	struct lb_flow_key fk;
	struct lb_flow *f;
	__be32 addr[4];
	__be16 port;
	__u64 now;
	int half = 0;

	if (!vk) {
		vk = half_open_reverse.lookup(&p->flow);
		half = 1;
	}
	if (!vk)
		return count(p->icmp ? LB_STAT_PASS_ICMP : LB_STAT_PASS_NON_VIP, len, XDP_PASS);
	__builtin_memcpy(addr, vk->addr, 16);
	port = vk->port;
	/* The flow: client -> VIP. */
	__builtin_memset(&fk, 0, sizeof(fk));
	__builtin_memcpy(fk.src, p->flow.dst, 16);
	__builtin_memcpy(fk.dst, addr, 16);
	fk.sport = p->flow.dport;
	fk.dport = port;
	fk.proto = p->flow.proto;
	fk.family = p->flow.family;
	now = bpf_ktime_get_coarse_ns();
	f = reply_flow(&fk, p, port, now, len);
	if (!f)
		goto stale;
	if (p->icmp) {
		if (icmp_nat(ctx, p, addr, port, 1))
			return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
		return count(LB_STAT_ICMP_REVERSE, len, XDP_PASS);
	}
	if (rewrite(ctx, p, addr, port, 1))
		return count(LB_STAT_DROP_ERROR, len, XDP_DROP);
	flow_seen(f, p, now, len);
	if (now - f->atime > LB_NSEC_PER_SEC)
		f->atime = now;
	return count(LB_STAT_NAT_REVERSE, len, XDP_PASS);

stale:
	if (half)
		half_open_reverse.delete(&p->flow);
	else
		nat_reverse.delete(&p->flow);
	return count(p->icmp ? LB_STAT_PASS_ICMP : LB_STAT_PASS_NON_VIP, len, XDP_PASS);
}

/* The whole data plane; inlined into the entry point below and, by the benchmark's
 * harness, into one that restores the frame after each run. */
static __always_inline int lb_process(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	struct lb_vip_key vk;
	struct lb_vip *vp;
	struct lb_vip vip = {};
	struct lb_config *cfg;
	struct lb_backend *be;
	struct lb_flow *ct = NULL;
	struct pkt p;
	__u64 now = 0;
	__u32 zero = 0;
	int next;

	__builtin_memset(&p, 0, sizeof(p));
	if ((void *)(eth + 1) > data_end)
		return count(LB_STAT_PASS_NOT_IP, len, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		next = parse_v4(data, data_end, &p);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		next = parse_v6(data, data_end, &p);
	else
		return count(LB_STAT_PASS_NOT_IP, len, XDP_PASS);

	switch (next) {
	case NEXT_MALFORMED:
		return count(LB_STAT_PASS_MALFORMED, len, XDP_PASS);
	case NEXT_ICMP_OTHER:
		return count(LB_STAT_PASS_ICMP, len, XDP_PASS);
	case NEXT_FRAG:
		if (is_vip_addr(&p.flow))
			return count(LB_STAT_DROP_FRAGMENT, len, XDP_DROP);
		return count(LB_STAT_PASS_NON_VIP, len, XDP_PASS);
	case NEXT_NO_PORTS:
		if (is_vip_addr(&p.flow))
			return count(LB_STAT_DROP_MALFORMED, len, XDP_DROP);
		return count(LB_STAT_PASS_NON_VIP, len, XDP_PASS);
	case NEXT_OTHER:
		if (is_vip_addr(&p.flow))
			return count(LB_STAT_DROP_UNSUPPORTED, len, XDP_DROP);
		return count(LB_STAT_PASS_NON_VIP, len, XDP_PASS);
	default:
		break;
	}

	p.icmp = next == NEXT_ICMP_ERR;
	/* Every packet looks its flow up, SYNs too: a SYN that repeats a live flow's tuple (a
	 * retransmit, a reused port, or a forged one) keeps the flow's backend, so nobody can
	 * move a live connection by sending a SYN with its tuple. Only a gone backend re-picks.
	 * The flow comes first: a live one names its VIP (see conntrack_hit); traffic to an
	 * address no VIP may have (replies to nat clients, the node's own) skips it. */
	cfg = config.lookup(&zero);
	if ((next == NEXT_L4 || next == NEXT_ICMP_ERR) && cfg &&
	    (cfg->vip_addr_bits & lb_addr_bit(p.flow.dst))) {
		ct = conntrack.lookup(&p.flow);
		if (ct) {
			be = conntrack_hit(ct, &p, &vip, &now);
			if (be)
				return balance(ctx, &p, &vip, ct, be, now, len);
		}
	}
	__builtin_memset(&vk, 0, sizeof(vk));
	__builtin_memcpy(vk.addr, p.flow.dst, 16);
	vk.port = p.flow.dport;
	vk.proto = p.flow.proto;
	vk.family = p.flow.family;
	vp = vips.lookup(&vk);
	if (!vp) {
		if ((next == NEXT_L4 || next == NEXT_ICMP_ERR) && cfg && cfg->nat_vips)
			return reverse_nat(ctx, &p, len);
		return count(p.icmp ? LB_STAT_PASS_ICMP : LB_STAT_PASS_NON_VIP, len, XDP_PASS);
	}
	vip = *vp;
	if (next == NEXT_L4_SHORT)
		return count(LB_STAT_DROP_MALFORMED, len, XDP_DROP);
	return balance(ctx, &p, &vip, ct, NULL, 0, len);
}

#ifdef FP_CHAIN
FP_CHAIN_MAP();

/* Traffic that is not for a VIP goes on to the next program of the chain, if any. */
int l4lb(struct xdp_md *ctx)
{
	int verdict = lb_process(ctx);

	if (verdict == XDP_PASS)
		chain.call(ctx, FP_CHAIN_NEXT);
	return verdict;
}
#else
int l4lb(struct xdp_md *ctx)
{
	return lb_process(ctx);
}
#endif
