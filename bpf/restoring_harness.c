// SPDX-License-Identifier: GPL-2.0
/*
 * restoring_harness - ns/packet of a data plane that rewrites its frame, through
 * BPF_PROG_TEST_RUN's repeat loop.
 *
 * A test run repeats the program on one buffer, and a data plane that answers (SYN
 * cookies) or encapsulates (ipip) rewrites that buffer, so the second run would see another
 * packet. This entry saves the frame, runs the data plane, moves back the end it may have
 * moved and copies the frame back; an optional hook then undoes state the run left (a
 * conntrack entry, say). Built with BENCH_NOOP it runs no data plane at all: the baseline
 * whose time, taken off a measurement, leaves the data plane's own cost.
 *
 * Techniques: fastpath/bpf/testrun.py:load_restoring compiles the data plane's file(s) and
 * this one as one unit, joined rather than #included because bcc rewrites its map syntax
 * (map.lookup()) only in the file it compiles; the process function then inlines and the
 * data plane's maps are this program's maps. Everything variable is a -D flag, the C text
 * never changes.
 * Minimum kernel: 4.18 (bpf_xdp_adjust_tail); the data plane under test may need more.
 * Usage: fastpath.bpf.testrun.load_restoring([source], process, frame_len, defines), from the
 * per-packet benchmarks (fastpath/bench/scenarios/synflood.py, lb.py).
 * Manual test: fastpath bench synflood-packet --quick
 */

/* The data plane's `int BENCH_PROCESS(struct xdp_md *)` does the work on frames of exactly
 * FRAME_LEN bytes. */
#if !defined(BENCH_PROCESS) || !defined(FRAME_LEN)
#error "compile through fastpath/bpf/testrun.py:load_restoring (BENCH_PROCESS, FRAME_LEN)"
#endif

/* Which end the data plane moves: the tail (BENCH_MOVES_TAIL: an answer of another length)
 * or, by default, the head (encapsulation). BENCH_AFTER(saved_frame), if defined, runs last. */

struct fp_bench_frame {
	__u8 b[FRAME_LEN];
};
BPF_PERCPU_ARRAY(fp_bench_saved, struct fp_bench_frame, 1);

int fp_restoring_harness(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_bench_frame *s;
	__u32 zero = 0;
	int ret, grown;

	/* 1. save the frame (runs use frames of exactly FRAME_LEN bytes) */
	s = fp_bench_saved.lookup(&zero);
	if (!s || data + FRAME_LEN > data_end || data_end - data != FRAME_LEN)
		return XDP_ABORTED;
	__builtin_memcpy(s->b, data, FRAME_LEN);

	/* 2. the data plane, or nothing for the baseline */
#ifdef BENCH_NOOP
	ret = XDP_TX;
#else
	ret = BENCH_PROCESS(ctx);
#endif

	/* 3. move the end it moved back to FRAME_LEN bytes */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	grown = (int)(data_end - data) - FRAME_LEN;
#ifdef BENCH_MOVES_TAIL
	if (grown && bpf_xdp_adjust_tail(ctx, -grown))
		return XDP_ABORTED;
#else
	if (grown && bpf_xdp_adjust_head(ctx, grown))
		return XDP_ABORTED;
#endif

	/* 4. put the frame back, then undo what the run left behind */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, s->b, FRAME_LEN);
#ifdef BENCH_AFTER
	BENCH_AFTER(s->b);
#endif
	return ret;
}
