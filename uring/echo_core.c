// SPDX-License-Identifier: GPL-2.0-only
/*
 * echo_core.c - the echo core: the per-completion bookkeeping of a TCP echo on io_uring,
 *               shared by fastpath-uring-echo and the Python echo server.
 *
 * Purpose:    one implementation of what every echo completion needs, for both servers:
 *             echo_server.c links it into the native binary, ffi_shim.c into the shim the
 *             Python server (fastpath/uring/echo.py) drives through ctypes. The server
 *             around it accepts, decides when a connection pauses, resumes, finishes or is
 *             aborted, and owns timers, signals and stats; the core hands it only the
 *             completions that need such a decision: everything that is not a recv or
 *             send, a recv whose multishot ended or that crossed the backpressure mark, and
 *             a send that failed, hit a closing connection or left the connection ready to
 *             finish or resume. For Python that turned a few microseconds of ctypes calls
 *             per completion (two per echo) into one call per batch of dozens.
 * Techniques: a recv completion queues its provided buffer on the connection and prepares
 *             the send; one send in flight per connection keeps the echo in order; a send
 *             completion retires the buffer and prepares the next send, and a short send
 *             is finished from where it stopped. Finished buffers go on a free stack and
 *             are published to the kernel as a window of the most recently used ones: the
 *             kernel takes ring entries oldest first, so publishing the whole pool would
 *             cycle every recv through all --buffers pages (16 MiB by default), each
 *             128-byte message landing in a cold page - a TLB and cache miss that made the
 *             kernel's copy into the buffer 5-30 % of the server's CPU. The window starts
 *             at WINDOW_MIN, stays WINDOW_SLACK above one buffer per connection and doubles
 *             when a recv found the ring empty while the pool had buffers. Connections
 *             live in fixed chunks that never move, indexed by the user_data slot, so a
 *             server (Python too) can hold a pointer to one for its whole life.
 * Kernel:     6.0+ (multishot recv into a provided-buffer ring, 5.19 for the ring alone).
 * Usage:      the calls are in echo_core.h; uring/Makefile compiles this file into
 *             fastpath-uring-echo and libfastpath_uring_ffi.so.
 * Test:       python -m pytest -q tests/unit/test_uring_echo_core.py
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "echo_core.h"

#define WINDOW_MIN 64   /* buffers published at least ... */
#define WINDOW_SLACK 64 /* ... and this many beyond one per connection */
#define MAX_BUFFERS 32768 /* kernel limit for a buffer ring */

/* Counters change only in their worker; relaxed stores keep another thread's reads defined. */
#define COUNT(e, field, n) \
	__atomic_store_n(&(e)->st.field, (e)->st.field + (n), __ATOMIC_RELAXED)
#define UNCOUNT(e, field, n) \
	__atomic_store_n(&(e)->st.field, (e)->st.field - (n), __ATOMIC_RELAXED)

struct fastpath_echo_conn *fastpath_echo_conn(struct fastpath_echo *e, __u32 slot)
{
	struct fastpath_echo_conn *chunk;

	if (slot >= FASTPATH_ECHO_MAX_SLOTS)
		return NULL;
	chunk = e->chunks[slot >> FASTPATH_ECHO_CHUNK_SHIFT];
	return chunk ? &chunk[slot & (FASTPATH_ECHO_CHUNK - 1)] : NULL;
}

struct io_uring_sqe *fastpath_echo_sqe(struct fastpath_echo *e)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(e->ring);
	int tries;

	for (tries = 0; !sqe && tries < 1000; tries++) {
		io_uring_submit(e->ring);
		if (e->ring->flags & IORING_SETUP_SQPOLL)
			io_uring_sqring_wait(e->ring);
		sqe = io_uring_get_sqe(e->ring);
	}
	if (!sqe && !e->st.error)
		e->st.error = -EBUSY;
	return sqe;
}

static void send_head(struct fastpath_echo *e, struct fastpath_echo_conn *c, __u32 slot)
{
	struct io_uring_sqe *sqe;
	__s32 bid = c->q_head;

	if (c->send_inflight || bid < 0)
		return;
	sqe = fastpath_echo_sqe(e);
	if (!sqe)
		return;
	io_uring_prep_send(sqe, c->fd, e->base + (size_t)bid * e->buf_size + c->sent_off,
			   e->buf_len[bid] - c->sent_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, fastpath_echo_ud(e->op_send, c->gen, slot));
	c->send_inflight = 1;
}

static inline void recycle(struct fastpath_echo *e, __s32 bid)
{
	e->free_bufs[e->st.free_buffers++] = (__u16)bid;
}

unsigned fastpath_echo_flush(struct fastpath_echo *e)
{
	unsigned want = e->st.window, n = 0;

	if (want < e->st.open_conns + WINDOW_SLACK)
		want = e->st.open_conns + WINDOW_SLACK;
	while (e->st.published < want && e->st.free_buffers) {
		__u16 bid = e->free_bufs[--e->st.free_buffers];

		io_uring_buf_ring_add(e->br, e->base + (size_t)bid * e->buf_size, e->buf_size, bid,
				      (int)e->mask, (int)n);
		n++;
		e->st.published++;
	}
	if (n)
		io_uring_buf_ring_advance(e->br, (int)n);
	return e->st.published;
}

/* Returns 1 when the server must see the completion (the buffer part is done either way). */
static int on_recv(struct fastpath_echo *e, struct fastpath_echo_conn *c, __u32 slot,
		   __s32 res, __u32 flags)
{
	if (flags & IORING_CQE_F_BUFFER) {
		__s32 bid = (__s32)(flags >> IORING_CQE_BUFFER_SHIFT);

		if (e->st.published)
			e->st.published--;
		if (res > 0 && !c->closing) {
			e->buf_len[bid] = (__u32)res;
			e->buf_next[bid] = -1;
			if (c->q_tail >= 0)
				e->buf_next[c->q_tail] = bid;
			else
				c->q_head = bid;
			c->q_tail = bid;
			c->q_bytes += (__u32)res;
			COUNT(e, messages, 1);
			COUNT(e, bytes_in, (__u64)res);
			COUNT(e, bytes_queued, (__u64)res);
			send_head(e, c, slot);
		} else {
			recycle(e, bid);
		}
	}
	if (!(flags & IORING_CQE_F_MORE)) {
		c->recv_armed = 0;
		/* The kernel found the ring empty, whatever our count says; and if the window
		 * ran dry while the pool had buffers, publish more from now on. */
		if (res == -ENOBUFS) {
			e->st.published = 0;
			if (e->st.free_buffers && e->st.window < e->entries)
				e->st.window = e->st.window * 2 < e->entries ? e->st.window * 2
									     : e->entries;
		}
		return 1;
	}
	return res <= 0 || (!c->closing && !c->paused && c->q_bytes >= e->conn_max);
}

static int on_send(struct fastpath_echo *e, struct fastpath_echo_conn *c, __u32 slot, __s32 res)
{
	__s32 bid = c->q_head;
	__u32 left;

	c->send_inflight = 0;
	if (c->closing || res <= 0 || bid < 0)
		return 1;
	COUNT(e, sends, 1);
	COUNT(e, bytes_out, (__u64)res);
	left = e->buf_len[bid] - c->sent_off;
	c->q_bytes -= (__u32)res;
	UNCOUNT(e, bytes_queued, (__u64)res);
	if ((__u32)res < left) {
		/* Short send: the rest of this buffer goes next, before anything queued after. */
		COUNT(e, short_sends, 1);
		c->sent_off += (__u32)res;
		send_head(e, c, slot);
		return 0;
	}
	c->q_head = e->buf_next[bid];
	if (c->q_head < 0)
		c->q_tail = -1;
	c->sent_off = 0;
	recycle(e, bid);
	send_head(e, c, slot);
	return c->eof || c->paused || !c->recv_armed;
}

/* The bookkeeping of one completion; 1 when its server must decide something. */
static int complete(struct fastpath_echo *e, const struct io_uring_cqe *cqe)
{
	__u64 ud = cqe->user_data;
	unsigned op = fastpath_echo_ud_op(ud);
	__u32 slot = fastpath_echo_ud_slot(ud);
	struct fastpath_echo_conn *c;

	if (op != e->op_recv && op != e->op_send)
		return 1;
	c = fastpath_echo_conn(e, slot);
	/* A completion for no live connection is the server's to report. */
	if (!c || !c->live || c->gen != fastpath_echo_ud_gen(ud))
		return 1;
	if (op == e->op_recv)
		return on_recv(e, c, slot, cqe->res, cqe->flags);
	return on_send(e, c, slot, cqe->res);
}

unsigned fastpath_echo_run(struct fastpath_echo *e,
			   int (*decide)(void *ctx, const struct io_uring_cqe *cqe), void *ctx)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	io_uring_for_each_cqe(e->ring, head, cqe) {
		seen++;
		if (complete(e, cqe) && !decide(ctx, cqe))
			break;
	}
	io_uring_cq_advance(e->ring, seen);
	COUNT(e, cqes, seen);
	return seen;
}

int fastpath_echo_submit_and_wait(struct fastpath_echo *e, unsigned wait_nr)
{
	int ret = io_uring_submit_and_wait(e->ring, wait_nr);

	if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
		return ret;
	COUNT(e, enters, 1);
	return 0;
}

struct fastpath_echo *fastpath_echo_new(struct io_uring *ring, struct io_uring_buf_ring *br,
					void *base, unsigned buf_size, unsigned entries,
					unsigned conn_max, unsigned op_recv, unsigned op_send)
{
	struct fastpath_echo *e;
	unsigned i;

	if (!entries || entries > MAX_BUFFERS || (entries & (entries - 1)) || op_recv > 255 ||
	    op_send > 255)
		return NULL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->buf_next = calloc(entries, sizeof(*e->buf_next));
	e->buf_len = calloc(entries, sizeof(*e->buf_len));
	e->free_bufs = calloc(entries, sizeof(*e->free_bufs));
	if (!e->buf_next || !e->buf_len || !e->free_bufs) {
		fastpath_echo_free(e);
		return NULL;
	}
	e->ring = ring;
	e->br = br;
	e->base = base;
	e->buf_size = buf_size;
	e->entries = entries;
	e->mask = (__u32)io_uring_buf_ring_mask(entries);
	e->conn_max = conn_max;
	e->op_recv = (__u8)op_recv;
	e->op_send = (__u8)op_send;
	/* Lowest ids on top of the free stack, so the first ones published are the lowest. */
	for (i = entries; i > 0; i--)
		recycle(e, (__s32)(i - 1));
	e->st.window = WINDOW_MIN < entries ? WINDOW_MIN : entries;
	fastpath_echo_flush(e);
	return e;
}

void fastpath_echo_free(struct fastpath_echo *e)
{
	unsigned i;

	if (!e)
		return;
	for (i = 0; i < FASTPATH_ECHO_MAX_SLOTS / FASTPATH_ECHO_CHUNK; i++)
		free(e->chunks[i]);
	free(e->buf_next);
	free(e->buf_len);
	free(e->free_bufs);
	free(e);
}

struct fastpath_echo_conn *fastpath_echo_open_slot(struct fastpath_echo *e, unsigned slot,
						   int fd)
{
	struct fastpath_echo_conn *c, **chunk;
	__u32 gen;

	if (slot >= FASTPATH_ECHO_MAX_SLOTS)
		return NULL;
	chunk = &e->chunks[slot >> FASTPATH_ECHO_CHUNK_SHIFT];
	if (!*chunk && !(*chunk = calloc(FASTPATH_ECHO_CHUNK, sizeof(**chunk))))
		return NULL;
	c = &(*chunk)[slot & (FASTPATH_ECHO_CHUNK - 1)];
	if (c->live)
		return NULL;
	gen = (c->gen + 1) & FASTPATH_ECHO_GEN_MASK;
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->gen = gen;
	c->q_head = c->q_tail = -1;
	c->live = 1;
	e->st.open_conns++;
	return c;
}

void fastpath_echo_close(struct fastpath_echo *e, unsigned slot)
{
	struct fastpath_echo_conn *c = fastpath_echo_conn(e, slot);

	if (!c || !c->live)
		return;
	while (c->q_head >= 0) {
		__s32 bid = c->q_head;

		c->q_head = e->buf_next[bid];
		recycle(e, bid);
	}
	c->q_tail = -1;
	UNCOUNT(e, bytes_queued, c->q_bytes);
	c->q_bytes = 0;
	c->sent_off = 0;
	c->live = 0;
	e->st.open_conns--;
}
