// SPDX-License-Identifier: GPL-2.0
/*
 * syn_guard_bench - the SYN guard (syn_guard.c) behind a spoofing front: every run of a
 * frame from SG_SPOOF_MARK gets a source of its own, as in a spoofed SYN flood.
 *
 * A test run repeats one frame, so a flood of a million distinct sources would otherwise
 * need a million frames. sg_bench_spoofed rewrites the IPv4 source of a frame whose source
 * is SG_SPOOF_MARK to SG_SPOOF_BASE + a per-CPU run number / SG_SPOOF_EACH (frames from any
 * other source pass through unchanged), then runs the guard. With SG_SPOOF_EACH 2 every
 * source sends two SYNs in a row, as flood tools that retransmit do, which is what makes an
 * LRU keep the flood's sources over one that went quiet. fastpath.bpf.testrun.load_restoring
 * compiles it after syn_guard.c (whose sg_process it calls) and before the restoring
 * harness (restoring_harness.c), which puts the original frame back after every run; it is
 * not a program of its own.
 *
 * Techniques: the source is written at a fixed offset (Ethernet without VLAN tags, IPv4);
 * the IPv4 header checksum is left as it was, as the guard never checks it.
 * Minimum kernel: that of syn_guard.c (6.0).
 * Usage: tests/bpf/test_syn_guard.py (bans under a spoofed flood) and
 * fastpath/bench/scenarios/synflood.py (synflood-packet, cookie-flood), through
 * fastpath.bpf.testrun.load_restoring([syn_guard.c, syn_guard_bench.c], "sg_bench_spoofed", ...).
 * Manual test: fastpath bench synflood-packet --quick
 */

/* Frames from this IPv4 source (host byte order; 100.64.0.0) get a new source every run. */
#ifndef SG_SPOOF_MARK
#define SG_SPOOF_MARK 0x64400000
#endif

/* The spoofed sources: SG_SPOOF_BASE + n / SG_SPOOF_EACH for the n-th run on a CPU, modulo
 * 2^22 (100.64.0.0/10, 4,194,304 sources, host byte order). */
#ifndef SG_SPOOF_BASE
#define SG_SPOOF_BASE 0x64400000
#endif
#ifndef SG_SPOOF_EACH
#define SG_SPOOF_EACH 1
#endif
#define SG_SPOOF_MASK 0x3fffff

/* Runs so far, per CPU: the next spoofed source. */
BPF_PERCPU_ARRAY(sg_spoof_seq, u64, 1);

static __always_inline int sg_bench_spoofed(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	u32 zero = 0;
	u64 *seq;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->saddr != bpf_htonl(SG_SPOOF_MARK))
		return sg_process(ctx);
	seq = sg_spoof_seq.lookup(&zero);
	if (!seq)
		return XDP_ABORTED;
	ip->saddr = bpf_htonl(SG_SPOOF_BASE + ((u32)(*seq / SG_SPOOF_EACH) & SG_SPOOF_MASK));
	*seq += 1;
	return sg_process(ctx);
}
