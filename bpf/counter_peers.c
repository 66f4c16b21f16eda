// SPDX-License-Identifier: GPL-2.0
/*
 * counter_peers - what the `counter` benchmark measures fastpath's xdp_count.c against.
 *
 * - textbook: the counter most XDP tutorials show, one shared array slot bumped with an
 *   atomic add per frame; no parsing, so on one CPU it does strictly less work than
 *   xdp_count, and its cost shows once several CPUs count at once (the cache line bounces);
 * - noop: XDP_PASS and nothing else, the floor every program pays (the baseline).
 *
 * Techniques: __sync_fetch_and_add on a plain array (what per-CPU maps avoid).
 * Minimum kernel: 4.12 (XDP with BPF_PROG_TEST_RUN).
 * Usage: fastpath/bench/scenarios/counter.py loads each entry and runs it through
 * BPF_PROG_TEST_RUN; never attached.
 * Manual test: fastpath bench counter --quick
 */
#include <uapi/linux/bpf.h>

BPF_ARRAY(rx, u64, 1);

int textbook(struct xdp_md *ctx)
{
	int key = 0;
	u64 *v = rx.lookup(&key);

	if (v)
		__sync_fetch_and_add(v, 1);
	return XDP_PASS;
}

int noop(struct xdp_md *ctx)
{
	return XDP_PASS;
}
