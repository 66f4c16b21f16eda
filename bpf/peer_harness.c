// SPDX-License-Identifier: GPL-2.0
/*
 * peer_harness - the frame-restoring harness (restoring_harness.c) for the kernel's own
 * XDP programs, the peers the per-packet benchmarks run next to fastpath's data planes.
 *
 * A test run repeats the program on one buffer, and a peer that answers (the kernel's SYN
 * proxy) or encapsulates (the kernel's IPIP tunnel sample) rewrites that buffer, so the
 * second run would see another packet. This entry saves the frame, runs the peer, moves
 * back the end the peer moved and copies the frame back, exactly as restoring_harness.c
 * does around fastpath's data planes; built with BENCH_NOOP it runs no peer: the baseline
 * whose time, taken off a measurement, leaves the peer's own cost.
 *
 * Techniques: the peers are libbpf programs (the SYN proxy calls conntrack kfuncs, which
 * bcc cannot build), so this harness is built with clang as one compile unit with the
 * peer's unchanged source, which comes first (clang -include) and brings the headers. The
 * build turns the peer's entry into an inline function with a -D flag on its name
 * (-D'entry=fp_peer_entry(...); static __always_inline int BENCH_PROCESS'), so the SEC()
 * attribute lands on a declaration nothing defines and only this entry is a program (the
 * peer's licence and maps stay its own).
 * Everything variable is a -D flag: BENCH_PROCESS, FRAME_LEN (bytes of every frame run),
 * BENCH_MOVES_TAIL (the peer moves the tail, an answer of another length; by default the
 * head, encapsulation) and BENCH_NOOP.
 * Minimum kernel: 4.18 (bpf_xdp_adjust_tail); the peer under test may need more.
 * Usage: fastpath/bench/kernel_peers.py builds it into build/kernel-peers/ and loads it
 * through libbpf (fastpath/bpf/libbpf.py); never attached.
 * Manual test: fastpath bench synflood-packet lb-packet --quick
 */

/* Reads ctx->data and ->data_end anew: without the barrier the compiler may keep a pointer
 * to a ctx field in a register across the calls, which the verifier refuses. */
#define fp_reload(ctx, data, data_end)                    \
	do {                                              \
		asm volatile("" : "+r"(ctx));             \
		data = (void *)(long)(ctx)->data;         \
		data_end = (void *)(long)(ctx)->data_end; \
	} while (0)

#if !defined(BENCH_PROCESS) || !defined(FRAME_LEN)
#error "build through fastpath/bench/kernel_peers.py (BENCH_PROCESS, FRAME_LEN)"
#endif

struct fp_bench_frame {
	__u8 b[FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fp_bench_frame);
	__uint(max_entries, 1);
} fp_bench_saved SEC(".maps");

SEC("xdp")
int fp_peer_harness(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_bench_frame *s;
	__u32 zero = 0;
	int ret, grown;

	/* 1. save the frame (runs use frames of exactly FRAME_LEN bytes) */
	s = bpf_map_lookup_elem(&fp_bench_saved, &zero);
	if (!s || data + FRAME_LEN > data_end || data_end - data != FRAME_LEN)
		return XDP_ABORTED;
	__builtin_memcpy(s->b, data, FRAME_LEN);

	/* 2. the peer, or nothing for the baseline */
#ifdef BENCH_NOOP
	ret = XDP_TX;
#else
	ret = BENCH_PROCESS(ctx);
#endif

	/* 3. move the end it moved back to FRAME_LEN bytes */
	fp_reload(ctx, data, data_end);
	grown = (int)(data_end - data) - FRAME_LEN;
#ifdef BENCH_MOVES_TAIL
	if (grown && bpf_xdp_adjust_tail(ctx, -grown))
		return XDP_ABORTED;
#else
	if (grown && bpf_xdp_adjust_head(ctx, grown))
		return XDP_ABORTED;
#endif

	/* 4. put the frame back */
	fp_reload(ctx, data, data_end);
	if (data + FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, s->b, FRAME_LEN);
	return ret;
}
