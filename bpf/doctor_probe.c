// SPDX-License-Identifier: GPL-2.0
/*
 * doctor_probe - the programs `fastpath doctor` loads to measure what this kernel's BPF
 * can do; one bcc compile serves every BPF row of the report.
 *
 * What it probes:
 * - doctor_pass returns XDP_PASS: the bcc row loads it, the xdp-native, xdp-generic and
 *   xdp-link rows attach it to a veth in a scratch namespace, and the xdp-test-run row runs
 *   it with BPF_PROG_TEST_RUN.
 * - doctor_cookie_v4 / doctor_cookie_v6 run the raw SYN-cookie helpers
 *   (bpf_tcp_raw_{gen,check}_syncookie_ipv{4,6}) through a round trip on a test-run SYN
 *   for the syncookie-helpers row: the verdict says which step failed.
 *
 * Techniques: the helpers are called by id (FUNC_RAW_* -D flags from
 * fastpath/doctor/session.py, the values of enum bpf_func_id) because bcc 0.26's helpers.h
 * predates them; FORGED_DELTA (also a -D flag) is added to a genuine cookie to forge one.
 * Packet layout is spelled as offsets and no header is included: parsing the kernel's
 * ip/tcp headers costs bcc about two seconds, the whole budget of a doctor run.
 *
 * Minimum kernel: 4.12 for doctor_pass (XDP with BPF_PROG_TEST_RUN); 6.0 for the cookie
 * programs (raw SYN-cookie helpers), which the verifier refuses on older kernels.
 * Usage: loaded by `fastpath doctor` (fastpath/doctor/session.py), never attached for long.
 * Manual test: fastpath doctor --only bcc --only syncookie-helpers
 */
#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define TCP_LEN 20
#define TCP_FLAG_ACK 0x10
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BE32(x) __builtin_bswap32(x)
#else
#define BE32(x) (x)
#endif

/* The helper ids and the forging delta come from fastpath/doctor/session.py as -D flags
 * (PROBE_BPF_CFLAGS); there is no sensible default for them. */
#if !defined(FUNC_RAW_GEN_V4) || !defined(FUNC_RAW_GEN_V6) || !defined(FUNC_RAW_CHECK_V4) || \
	!defined(FUNC_RAW_CHECK_V6) || !defined(FORGED_DELTA)
#error "compile with the -D flags of fastpath/doctor/session.py (PROBE_BPF_CFLAGS)"
#endif

static long (*raw_gen_v4)(void *iph, void *th, u32 th_len) = (void *)FUNC_RAW_GEN_V4;
static long (*raw_gen_v6)(void *iph, void *th, u32 th_len) = (void *)FUNC_RAW_GEN_V6;
static long (*raw_check_v4)(void *iph, void *th) = (void *)FUNC_RAW_CHECK_V4;
static long (*raw_check_v6)(void *iph, void *th) = (void *)FUNC_RAW_CHECK_V6;

int doctor_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* Round trip: issue a cookie for the SYN, rewrite the SYN into the client's ACK of our
 * SYN-ACK (seq + 1, ack = cookie + 1) and check it, then check a forged ACK too.
 * XDP_TX = genuine cookie accepted and forged one rejected, XDP_PASS = forged cookie
 * accepted, XDP_DROP = genuine cookie rejected, XDP_ABORTED = no cookie issued. */
static __always_inline void set_ack(u8 *th, u32 ack_seq)
{
	*(u32 *)(th + 8) = BE32(ack_seq);
}

static __always_inline void syn_to_ack(u8 *th, s64 gen)
{
	u32 *seq = (u32 *)(th + 4);

	*seq = BE32(BE32(*seq) + 1);
	th[13] = TCP_FLAG_ACK;
	set_ack(th, (u32)gen + 1);
}

int doctor_cookie_v4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	u8 *ip = data + ETH_LEN, *th = ip + IP4_LEN;

	if ((void *)(th + TCP_LEN) > end)
		return XDP_ABORTED;
	s64 gen = raw_gen_v4(ip, th, TCP_LEN);
	if (gen < 0)
		return XDP_ABORTED;
	syn_to_ack(th, gen);
	if (raw_check_v4(ip, th) != 0)
		return XDP_DROP;
	set_ack(th, (u32)gen + 1 + FORGED_DELTA);
	return raw_check_v4(ip, th) == 0 ? XDP_PASS : XDP_TX;
}

int doctor_cookie_v6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	u8 *ip = data + ETH_LEN, *th = ip + IP6_LEN;

	if ((void *)(th + TCP_LEN) > end)
		return XDP_ABORTED;
	s64 gen = raw_gen_v6(ip, th, TCP_LEN);
	if (gen < 0)
		return XDP_ABORTED;
	syn_to_ack(th, gen);
	if (raw_check_v6(ip, th) != 0)
		return XDP_DROP;
	set_ack(th, (u32)gen + 1 + FORGED_DELTA);
	return raw_check_v6(ip, th) == 0 ? XDP_PASS : XDP_TX;
}
