// SPDX-License-Identifier: GPL-2.0
/*
 * l4lb_bench - the load balancer (l4lb.c) plus the hook its conntrack-miss benchmark needs.
 *
 * lb-packet measures a conntrack miss by running the same frame again and again; after
 * each run lb_bench_forget deletes the flow that run created (a half-open entry: the frame is
 * an ACK of no known flow) from both flow tables, so the next run misses too.
 * fastpath.bpf.testrun.load_restoring compiles it after l4lb.c (whose map and key it
 * uses) and before the restoring harness (restoring_harness.c), which calls it as
 * BENCH_AFTER; it is not a program of its own.
 *
 * Techniques: the flow key is read from the saved frame at fixed offsets (Ethernet, IPv4
 * without options, TCP: the lb-packet frame), the way l4lb.c builds it.
 * Minimum kernel: that of l4lb.c (5.11).
 * Usage: fastpath/bench/scenarios/lb.py (lb-packet), through
 * fastpath.bpf.testrun.load_restoring([l4lb.c, l4lb_bench.c], ..., after="lb_bench_forget").
 * Manual test: fastpath bench lb-packet --quick
 */
static __always_inline void lb_bench_forget(const __u8 *frame)
{
	struct lb_flow_key k;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.src, frame + 26, 4);
	__builtin_memcpy(k.dst, frame + 30, 4);
	__builtin_memcpy(&k.sport, frame + 34, 2);
	__builtin_memcpy(&k.dport, frame + 36, 2);
	k.proto = IPPROTO_TCP;
	k.family = 4;
	conntrack.delete(&k);
	half_open.delete(&k);
}
