// SPDX-License-Identifier: GPL-2.0
/*
 * lb_peers - the textbook XDP load balancer the `lb-packet` benchmark measures l4lb.c against.
 *
 * What most XDP load-balancer tutorials build, Katran's fast path reduced to its core:
 * Ethernet (no VLAN) + IPv4 (options skipped) + TCP/UDP ports; the VIP in a hash map; the
 * flow in a shared LRU hash; on a miss, a jhash of the 5-tuple picks a slot of the VIP's
 * ring and the flow is inserted; the backend's MAC is written and the frame goes back out
 * (XDP_TX, direct routing). No IPv6, no VLAN, no counters, no flow lifetime, no ICMP, no
 * NAT: it does strictly less than l4lb.c's dsr mode, so the ratio between the two is what
 * fastpath's defensive parsing, counters and flow states cost on the same kernel, machine
 * and frame.
 *
 * Techniques: maps keyed by plain integers, so the benchmark fills them with ctypes scalars:
 * `tb_vips` (daddr << 32 | dport << 16 | proto, network-order fields as loaded) -> VIP
 * index, `tb_ring` (index * TB_RING + slot) -> backend index, `tb_macs` (backend index) ->
 * MAC in the low 48 bits. tb_forget (BENCH_AFTER of the miss run) deletes the flow again.
 * Minimum kernel: 4.18 (XDP test runs of an LRU hash user; nothing newer is used).
 * Usage: fastpath/bench/scenarios/lb.py (lb-packet) loads tb_process through
 * fastpath.bpf.testrun.load_restoring([lb_peers.c], "tb_process", ...); the `textbook` entry
 * runs it alone (tests/bpf/test_l4lb_bench.py checks its bytes); never attached.
 * Manual test: fastpath bench lb-packet --quick
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>

#ifndef TB_RING
#define TB_RING 67
#endif
#ifndef TB_FLOWS
#define TB_FLOWS 65536
#endif

struct tb_flow {
	__u32 saddr;
	__u32 daddr;
	__u32 ports;
	__u32 proto;
};

BPF_HASH(tb_vips, __u64, __u32, 16);
BPF_ARRAY(tb_ring, __u32, 16 * TB_RING);
BPF_ARRAY(tb_macs, __u64, 64);
BPF_TABLE("lru_hash", struct tb_flow, __u32, tb_flows, TB_FLOWS);

/* jhash_3words (include/linux/jhash.h) */
#define tb_rol32(w, s) (((w) << (s)) | ((w) >> (32 - (s))))
static __always_inline __u32 tb_jhash_3words(__u32 a, __u32 b, __u32 c)
{
	a += 0xdeadbeef + 12;
	b += 0xdeadbeef + 12;
	c += 0xdeadbeef + 12;
	c ^= b; c -= tb_rol32(b, 14);
	a ^= c; a -= tb_rol32(c, 11);
	b ^= a; b -= tb_rol32(a, 25);
	c ^= b; c -= tb_rol32(b, 16);
	a ^= c; a -= tb_rol32(c, 4);
	b ^= a; b -= tb_rol32(a, 14);
	c ^= b; c -= tb_rol32(b, 24);
	return c;
}

static __always_inline int tb_process(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct tb_flow flow = {};
	__u32 *vip, *backend, slot, idx;
	__u64 key, *mac;
	__u16 *ports;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->ihl < 5 || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP))
		return XDP_PASS;
	ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;

	key = (__u64)ip->daddr << 32 | (__u64)ports[1] << 16 | ip->protocol;
	vip = tb_vips.lookup(&key);
	if (!vip)
		return XDP_PASS;

	flow.saddr = ip->saddr;
	flow.daddr = ip->daddr;
	flow.ports = (__u32)ports[0] << 16 | ports[1];
	flow.proto = ip->protocol;
	backend = tb_flows.lookup(&flow);
	if (backend) {
		idx = *backend;
	} else {
		slot = *vip * TB_RING + tb_jhash_3words(flow.saddr, flow.ports, flow.proto) % TB_RING;
		backend = tb_ring.lookup(&slot);
		if (!backend)
			return XDP_DROP;
		idx = *backend;
		tb_flows.update(&flow, &idx);
	}
	mac = tb_macs.lookup(&idx);
	if (!mac)
		return XDP_DROP;
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		eth->h_dest[i] = (*mac >> (8 * (ETH_ALEN - 1 - i))) & 0xff;
	return XDP_TX;
}

/* After a miss run: forget the flow (Ethernet + IPv4 without options + ports, as the
 * benchmark's frame is built), so the next run misses too. */
static __always_inline void tb_forget(const __u8 *frame)
{
	struct tb_flow flow = {};
	__u16 sport, dport;

	__builtin_memcpy(&flow.saddr, frame + 26, 4);
	__builtin_memcpy(&flow.daddr, frame + 30, 4);
	__builtin_memcpy(&sport, frame + 34, 2);
	__builtin_memcpy(&dport, frame + 36, 2);
	flow.ports = (__u32)sport << 16 | dport;
	flow.proto = frame[23];
	tb_flows.delete(&flow);
}

/* The balancer on its own, for the test that checks it forwards like a balancer. */
int textbook(struct xdp_md *ctx)
{
	return tb_process(ctx);
}
