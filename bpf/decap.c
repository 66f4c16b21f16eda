// SPDX-License-Identifier: GPL-2.0
/*
 * decap - XDP tunnel decapsulation for load-balancer backends: IPv4-in-IPv4 (protocol 4)
 * and IPv6-in-IPv6 (next header 41) packets addressed to this host lose their outer IP
 * header and go up the stack as the client's own packet. The backend needs no ipip/ip6tnl
 * module and no tunnel device: it holds the VIP on loopback and replies to the client
 * directly, as with `fastpath lb vip add ... --mode ipip` (bpf/l4lb.c) or Katran.
 *
 * Techniques:
 * - Strip in place: copy the Ethernet header, bpf_xdp_adjust_head() past the outer header,
 *   write the Ethernet header back in front of the inner packet with the inner family's
 *   ethertype. No checksum changes: the inner packet is delivered as the client sent it.
 * - Only tunnels to this host's own addresses: the `addrs` map holds them (the control
 *   plane, fastpath/apps/decap/decap.py, fills it with the interface's addresses at attach), so
 *   transit tunnel traffic is never touched.
 * - Only from the balancers and only to the VIPs: a tunnel to us is unwrapped only when its
 *   outer source lies in a configured balancer network (`sources_v4`/`sources_v6`, LPM
 *   tries) and its inner destination is a configured VIP (`vips`); anything else is dropped
 *   and counted, so the backend is no relay past source ACLs for whoever can send it an
 *   IPIP packet (the class of CVE-2020-10136).
 * - Defined verdicts (tests/bpf/test_decap.py pins each): non-IP, non-tunnel and
 *   not-for-us traffic passes untouched; a broken outer header (bad length, version or
 *   IPv4 checksum) passes untouched for the kernel to drop; fragments of tunnel packets
 *   (XDP cannot reassemble them) and tunnel packets whose inner header is truncated, of
 *   the wrong version or longer than the outer payload drop with a counter.
 * - ECN survives the tunnel (RFC 6040 normal mode): congestion the network marked on the
 *   outer header (CE, or ECT(1) over ECT(0)) is copied to the inner packet, IPv4 checksum
 *   updated incrementally (RFC 1624); CE over a packet that is not ECN-capable drops.
 * - Per-CPU counters (packets and bytes per verdict): no atomics on the fast path.
 *
 * Minimum kernel: 5.9 (XDP bpf_link; bpf_xdp_adjust_head is 4.10).
 * Usage: fastpath lb decap attach IFACE --from CIDR --vip ADDR [--netns NS];
 *        fastpath lb decap stats IFACE
 * Manual test: fastpath lb decap attach eth0 --from 172.16.0.0/16 --vip 10.0.0.10 && (from
 *        the balancer, an ipip VIP to this host) fastpath lb decap stats eth0   # decap_v4 up
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "fastpath.h"
#include "decap.h"

/* Outer destination addresses `addrs` holds. */
#ifndef DECAP_MAX_ADDRS
#define DECAP_MAX_ADDRS 64
#endif
/* Balancer source networks per family, and VIPs (both families together). */
#ifndef DECAP_MAX_SOURCES
#define DECAP_MAX_SOURCES 64
#endif
#ifndef DECAP_MAX_VIPS
#define DECAP_MAX_VIPS 1024
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IPPROTO_FRAGMENT_HDR 44

FP_MAP("hash", struct decap_addr, __u32, addrs, DECAP_MAX_ADDRS);
FP_MAP_F("lpm_trie", struct decap_src_v4, __u32, sources_v4, DECAP_MAX_SOURCES, BPF_F_NO_PREALLOC);
FP_MAP_F("lpm_trie", struct decap_src_v6, __u32, sources_v6, DECAP_MAX_SOURCES, BPF_F_NO_PREALLOC);
FP_MAP("hash", struct decap_addr, __u32, vips, DECAP_MAX_VIPS);
FP_MAP("percpu_array", u32, struct decap_counter, stats, DECAP_STAT_MAX);

/* The IPv6 fragment header (RFC 8200 4.5). */
struct frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

static __always_inline int count(__u32 stat, __u64 len, int verdict)
{
	struct decap_counter *c = stats.lookup(&stat);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return verdict;
}

static __always_inline void addr_key(struct decap_addr *k, const void *addr, int family)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (family == 4)
		__builtin_memcpy(k->addr, addr, 4);
	else
		__builtin_memcpy(k->addr, addr, 16);
	k->family = family;
}

static __always_inline int is_local(const void *addr, int family)
{
	struct decap_addr k;

	addr_key(&k, addr, family);
	return addrs.lookup(&k) != NULL;
}

static __always_inline int is_vip(const void *addr, int family)
{
	struct decap_addr k;

	addr_key(&k, addr, family);
	return vips.lookup(&k) != NULL;
}

static __always_inline int from_balancer_v4(__be32 saddr)
{
	struct decap_src_v4 k = {.prefixlen = 32, .addr = saddr};

	return sources_v4.lookup(&k) != NULL;
}

static __always_inline int from_balancer_v6(const struct in6_addr *saddr)
{
	struct decap_src_v6 k = {.prefixlen = 128};

	__builtin_memcpy(k.addr, saddr, 16);
	return sources_v6.lookup(&k) != NULL;
}

/* True when the IPv4 header (hlen bytes, options included) sums to 0xffff. */
static __always_inline int ipv4_csum_ok(const struct iphdr *ip, __u32 hlen, void *data_end)
{
	const __u16 *w = (const void *)ip;
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 30; i++) {
		const __u16 *p = w + i;

		if ((__u32)i * 2 >= hlen)
			break;
		if ((void *)(p + 1) > data_end)
			return 0;
		s += *p;
	}
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s == 0xffff;
}

#define ECN_NOT_ECT 0
#define ECN_ECT1 1
#define ECN_ECT0 2
#define ECN_CE 3

/* The inner packet's ECN field after decapsulation (RFC 6040 4.2, normal mode), or -1 when
 * the packet must be dropped. */
static __always_inline int ecn_decap(__u8 outer, __u8 inner)
{
	if (outer == ECN_CE)
		return inner == ECN_NOT_ECT ? -1 : ECN_CE;
	if (outer == ECN_ECT1 && inner == ECN_ECT0)
		return ECN_ECT1;
	return inner;
}

/* Set the ECN field of an IPv4 header, updating its checksum (RFC 1624, eqn. 3). */
static __always_inline void set_ecn4(struct iphdr *ip, __u8 ecn)
{
	__u16 old = *(__u16 *)ip;
	__u32 sum;

	ip->tos = (ip->tos & ~ECN_CE) | ecn;
	sum = (__u16)~ip->check + (__u16)~old + *(__u16 *)ip;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum;
}

/* Remove the outer_len bytes of outer IP header that follow the Ethernet header. */
static __always_inline int strip(struct xdp_md *ctx, __u32 outer_len, __u16 ethertype)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ethhdr copy;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(&copy, eth, sizeof(copy));
	if (bpf_xdp_adjust_head(ctx, (int)outer_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, copy.h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_source, copy.h_source, ETH_ALEN);
	eth->h_proto = bpf_htons(ethertype);
	return 0;
}

static __always_inline int decap_v4(struct xdp_md *ctx, void *data, void *data_end, __u64 len)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct iphdr *in;
	__u32 hlen;
	__u64 tot;
	__u16 in_tot;
	int ecn;

	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return count(DECAP_STAT_PASS_MALFORMED, len, XDP_PASS);
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	FP_BOUND(tot, 0xffff);
	if (tot < hlen || (void *)ip + tot > data_end)
		return count(DECAP_STAT_PASS_MALFORMED, len, XDP_PASS);
	if (ip->protocol != IPPROTO_IPIP)
		return count(DECAP_STAT_PASS_NOT_TUNNEL, len, XDP_PASS);
	if (!ipv4_csum_ok(ip, hlen, data_end))
		return count(DECAP_STAT_PASS_MALFORMED, len, XDP_PASS);
	if (!is_local(&ip->daddr, 4))
		return count(DECAP_STAT_PASS_NOT_LOCAL, len, XDP_PASS);
	if (!from_balancer_v4(ip->saddr))
		return count(DECAP_STAT_DROP_NOT_BALANCER, len, XDP_DROP);
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return count(DECAP_STAT_DROP_FRAGMENT, len, XDP_DROP);
	in = (void *)ip + hlen;
	if ((void *)(in + 1) > data_end || in->version != 4 || in->ihl < 5)
		return count(DECAP_STAT_DROP_MALFORMED, len, XDP_DROP);
	in_tot = bpf_ntohs(in->tot_len);
	if (in_tot < in->ihl * 4 || in_tot > tot - hlen)
		return count(DECAP_STAT_DROP_MALFORMED, len, XDP_DROP);
	if (!is_vip(&in->daddr, 4))
		return count(DECAP_STAT_DROP_NOT_VIP, len, XDP_DROP);
	ecn = ecn_decap(ip->tos & ECN_CE, in->tos & ECN_CE);
	if (ecn < 0)
		return count(DECAP_STAT_DROP_CE_NOT_ECT, len, XDP_DROP);
	if (ecn != (in->tos & ECN_CE))
		set_ecn4(in, ecn);
	if (strip(ctx, hlen, ETH_P_IP))
		return count(DECAP_STAT_DROP_ERROR, len, XDP_DROP);
	return count(DECAP_STAT_DECAP_V4, len, XDP_PASS);
}

static __always_inline int decap_v6(struct xdp_md *ctx, void *data, void *data_end, __u64 len)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct ipv6hdr *in;
	struct frag6 *fh;
	__u32 outer_w, inner_w;
	__u64 plen;
	int ecn;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return count(DECAP_STAT_PASS_MALFORMED, len, XDP_PASS);
	plen = bpf_ntohs(ip6->payload_len);
	FP_BOUND(plen, 0xffff);
	if ((void *)(ip6 + 1) + plen > data_end)
		return count(DECAP_STAT_PASS_MALFORMED, len, XDP_PASS);
	if (ip6->nexthdr == IPPROTO_FRAGMENT_HDR) {
		/* A fragment of a tunnel packet to us: the kernel could reassemble it but has no
		 * tunnel to give it to, so it is dropped here, counted. */
		fh = (void *)(ip6 + 1);
		if ((void *)(fh + 1) <= data_end && fh->nexthdr == IPPROTO_IPV6 &&
		    is_local(&ip6->daddr, 6)) {
			if (!from_balancer_v6(&ip6->saddr))
				return count(DECAP_STAT_DROP_NOT_BALANCER, len, XDP_DROP);
			return count(DECAP_STAT_DROP_FRAGMENT, len, XDP_DROP);
		}
		return count(DECAP_STAT_PASS_NOT_TUNNEL, len, XDP_PASS);
	}
	if (ip6->nexthdr != IPPROTO_IPV6)
		return count(DECAP_STAT_PASS_NOT_TUNNEL, len, XDP_PASS);
	if (!is_local(&ip6->daddr, 6))
		return count(DECAP_STAT_PASS_NOT_LOCAL, len, XDP_PASS);
	if (!from_balancer_v6(&ip6->saddr))
		return count(DECAP_STAT_DROP_NOT_BALANCER, len, XDP_DROP);
	in = (void *)(ip6 + 1);
	if ((void *)(in + 1) > data_end || in->version != 6 ||
	    sizeof(struct ipv6hdr) + bpf_ntohs(in->payload_len) > plen)
		return count(DECAP_STAT_DROP_MALFORMED, len, XDP_DROP);
	if (!is_vip(&in->daddr, 6))
		return count(DECAP_STAT_DROP_NOT_VIP, len, XDP_DROP);
	/* The traffic class straddles the first two bytes: ECN is bits 20-21 of the first word. */
	outer_w = bpf_ntohl(*(__be32 *)ip6);
	inner_w = bpf_ntohl(*(__be32 *)in);
	ecn = ecn_decap((outer_w >> 20) & ECN_CE, (inner_w >> 20) & ECN_CE);
	if (ecn < 0)
		return count(DECAP_STAT_DROP_CE_NOT_ECT, len, XDP_DROP);
	*(__be32 *)in = bpf_htonl((inner_w & ~((__u32)ECN_CE << 20)) | ((__u32)ecn << 20));
	if (strip(ctx, sizeof(struct ipv6hdr), ETH_P_IPV6))
		return count(DECAP_STAT_DROP_ERROR, len, XDP_DROP);
	return count(DECAP_STAT_DECAP_V6, len, XDP_PASS);
}

int decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return count(DECAP_STAT_PASS_NOT_IP, len, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return decap_v4(ctx, data, data_end, len);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return decap_v6(ctx, data, data_end, len);
	return count(DECAP_STAT_PASS_NOT_IP, len, XDP_PASS);
}
