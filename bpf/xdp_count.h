/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdp_count.h - what crosses the kernel/user boundary for bpf/xdp_count.c.
 *
 * Included by bpf/xdp_count.c; mirrored as ctypes.Structures in fastpath/apps/count/xdp_count.py,
 * and tests/bpf/test_xdp_count.py checks the two layouts against bcc's decoded types.
 * Fixed-width types only.
 */
#ifndef FASTPATH_XDP_COUNT_H
#define FASTPATH_XDP_COUNT_H

/* Keys of the `counters` map. */
enum count_stat {
	COUNT_ALL = 0,      /* every frame */
	COUNT_IPV4 = 1,     /* IPv4 frames */
	COUNT_IPV6 = 2,     /* IPv6 frames */
	COUNT_OTHER = 3,    /* everything else, truncated frames included */
	COUNT_WATCHED = 4,  /* UDP to WATCH_PORT, v4 or v6 */
	COUNT_STAT_MAX = 5,
};

/* Slots of the `generations` map: each program version counts watched frames in its own. */
#define COUNT_GENERATIONS 16

struct count_value {
	__u64 packets;
	__u64 bytes;
};

#endif /* FASTPATH_XDP_COUNT_H */
