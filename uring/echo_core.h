/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * echo_core.h - the echo core's structs and calls, for the two servers built on it:
 *               fastpath-uring-echo (echo_server.c) and the Python server, which loads it
 *               from the shim (ffi_shim.c) through ctypes.
 *
 * User space only. The three structs cross into Python: fastpath/uring/liburing.py mirrors
 * them as ctypes Structures and the shim's layout table lets it check the mirrors against
 * this header before it runs, so a change here is a change of SHIM_ABI on both sides.
 * Calls marked FASTPATH_ECHO_API are exported by the shim under these names; the others
 * are for the C side only (hidden: the shim is built with -fvisibility=hidden).
 */
#ifndef FASTPATH_URING_ECHO_CORE_H
#define FASTPATH_URING_ECHO_CORE_H

#include <linux/types.h>

struct io_uring;
struct io_uring_buf_ring;
struct io_uring_cqe;
struct io_uring_sqe;

#define FASTPATH_ECHO_API __attribute__((visibility("default")))

#define FASTPATH_ECHO_CHUNK_SHIFT 10
#define FASTPATH_ECHO_CHUNK (1u << FASTPATH_ECHO_CHUNK_SHIFT) /* connections per chunk */
#define FASTPATH_ECHO_MAX_SLOTS (1u << 20)                    /* fs.nr_open's default ceiling */
#define FASTPATH_ECHO_GEN_MASK 0xffffffu

/* One connection. Its server reads and writes it between calls; the core keeps the queue
 * (buffer ids, bytes, send offset) and recv_armed/send_inflight current as completions
 * arrive, the server sets closing, paused, eof and starved as it decides. */
struct fastpath_echo_conn {
	__s32 fd;
	__u32 gen;
	__s32 q_head, q_tail; /* queued buffer ids, oldest first, linked by buf_next */
	__u32 q_bytes;        /* received, not yet echoed */
	__u32 sent_off;       /* bytes of q_head already sent */
	__u8 live;            /* set by fastpath_echo_open_slot, cleared by fastpath_echo_close */
	__u8 closing;         /* server: aborting or finishing, buffers are recycled */
	__u8 recv_armed;      /* multishot recv outstanding (cleared by the core when it ends) */
	__u8 send_inflight;
	__u8 paused;          /* server: backpressure, recv cancelled */
	__u8 eof;             /* server: no more reads */
	__u8 starved;         /* server: waiting for buffers after ENOBUFS */
	__u8 pad;
};

/* Counters and pool state for the servers' stats lines. The counters are stored with
 * relaxed atomics: the native server's main thread reads them while its worker runs. */
struct fastpath_echo_stats {
	__u64 enters, cqes, messages, bytes_in, sends, bytes_out, short_sends, bytes_queued;
	__u32 open_conns;
	__u32 free_buffers;    /* neither queued nor published */
	__u32 published;       /* buffers the kernel may still pick (an estimate, see flush) */
	__u32 window;          /* published at least; doubles on ENOBUFS with buffers free */
	__s32 error;           /* first failure (-errno): the submission queue stayed full */
	__u32 pad;
};

struct fastpath_echo {
	struct fastpath_echo_stats st; /* first: Python maps its mirror at the same address */
	struct io_uring *ring;
	struct io_uring_buf_ring *br;
	char *base;
	__u32 buf_size, entries, mask, conn_max;
	__u8 op_recv, op_send;
	__s32 *buf_next;
	__u32 *buf_len;
	__u16 *free_bufs;
	struct fastpath_echo_conn *chunks[FASTPATH_ECHO_MAX_SLOTS / FASTPATH_ECHO_CHUNK];
};

/* user_data of every request: op (8 bits) | connection generation (24) | slot (32). */
static inline __u64 fastpath_echo_ud(unsigned op, __u32 gen, __u32 slot)
{
	return ((__u64)op << 56) | ((__u64)(gen & FASTPATH_ECHO_GEN_MASK) << 32) | slot;
}
static inline unsigned fastpath_echo_ud_op(__u64 ud) { return (unsigned)(ud >> 56); }
static inline __u32 fastpath_echo_ud_slot(__u64 ud) { return (__u32)ud; }
static inline __u32 fastpath_echo_ud_gen(__u64 ud)
{
	return (__u32)(ud >> 32) & FASTPATH_ECHO_GEN_MASK;
}

/*
 * Set up the core on a ring and a registered, still empty provided-buffer ring (`entries`
 * buffers of `buf_size` bytes at `base`, buffer i at base + i * buf_size) and publish the
 * first window of buffers. Recv completions carry user_data op `op_recv`, sends `op_send`;
 * a connection whose queue reaches `conn_max` bytes is handed to its server to pause.
 * NULL: bad arguments or out of memory.
 */
FASTPATH_ECHO_API struct fastpath_echo *fastpath_echo_new(struct io_uring *ring,
							  struct io_uring_buf_ring *br, void *base,
							  unsigned buf_size, unsigned entries,
							  unsigned conn_max, unsigned op_recv,
							  unsigned op_send);
FASTPATH_ECHO_API void fastpath_echo_free(struct fastpath_echo *e);

/* Release a connection the kernel holds nothing of any more: its queue goes back to the
 * pool (published by the next flush) and its slot is free. The caller closes the fd. */
FASTPATH_ECHO_API void fastpath_echo_close(struct fastpath_echo *e, unsigned slot);

/* Top the published window up from the free stack, most recently used first; returns how
 * many buffers the kernel may pick now. */
FASTPATH_ECHO_API unsigned fastpath_echo_flush(struct fastpath_echo *e);

/* Claim `slot` for a new connection on `fd` (the next generation of that slot); the caller
 * arms its recv. NULL: slot out of range, busy, or out of memory. */
struct fastpath_echo_conn *fastpath_echo_open_slot(struct fastpath_echo *e, unsigned slot,
						   int fd);

/* The connection in `slot` (live or not), or NULL when its chunk was never used. */
struct fastpath_echo_conn *fastpath_echo_conn(struct fastpath_echo *e, __u32 slot);

/* A free SQE; a full SQ is flushed to the kernel first (with SQPOLL, waited for). NULL,
 * with st.error set, when it stays full. */
struct io_uring_sqe *fastpath_echo_sqe(struct fastpath_echo *e);

/* Submit what is queued and wait for `wait_nr` completions. 0, or -errno when entering
 * the kernel failed (EINTR and the like count as success with nothing new). */
int fastpath_echo_submit_and_wait(struct fastpath_echo *e, unsigned wait_nr);

/*
 * Do the echo bookkeeping of every ready completion, in order, and hand each one that
 * needs its server's decision to `decide` right after its own bookkeeping; `decide`
 * returns 0 to end the batch there. Every completion looked at is retired from the CQ
 * ring. Returns how many were looked at. Never enters the kernel unless the SQ is full.
 */
unsigned fastpath_echo_run(struct fastpath_echo *e,
			   int (*decide)(void *ctx, const struct io_uring_cqe *cqe), void *ctx);

#endif /* FASTPATH_URING_ECHO_CORE_H */
