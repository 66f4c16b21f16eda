// SPDX-License-Identifier: GPL-2.0-only
/*
 * fastpath-uring-echo - a TCP echo server on io_uring that stays correct under load.
 *
 * Purpose:    echo every byte back, in order, to any number of clients, with bounded
 *             memory, and stop cleanly on SIGINT/SIGTERM. fastpath's Python tooling runs,
 *             supervises and benchmarks it (fastpath/uring/native.py).
 * Techniques: one io_uring per thread, each on its own SO_REUSEPORT listener and pinned
 *             to a core; multishot accept; multishot recv into a provided-buffer ring (no
 *             allocation per operation); a received buffer is queued on its connection
 *             and only returned to the ring once its send completed; short sends are
 *             finished from where they stopped; one send in flight per connection keeps
 *             the echo in order. Per-connection backpressure: once a connection has
 *             --conn-max-bytes queued, its recv is cancelled and re-armed when the queue
 *             drains below half of that, so a slow reader costs about that much buffer
 *             space (plus what the kernel already received into buffers when the cancel
 *             landed: one multishot pass takes up to 32) and the whole process never more
 *             than --buffers x --buffer-size per thread, however many connections stall.
 *             ENOBUFS (the pool is empty) parks the connection until a buffer comes back,
 *             then re-arms it: no exit, no shared buffer. EMFILE/ENFILE on accept is
 *             counted and accept re-armed after ACCEPT_RETRY_MS while existing
 *             connections carry on. Ring setup tries SINGLE_ISSUER|DEFER_TASKRUN, then
 *             COOP_TASKRUN, then plain (or SQPOLL with --sqpoll).
 * Kernel:     6.0+ (multishot recv; provided-buffer rings and multishot accept are 5.19).
 * Usage:      fastpath-uring-echo [--addr 127.0.0.1] [--port 7777] [--threads 1]
 *               [--sqpoll] [--buffers 4096] [--buffer-size 4096] [--conn-max-bytes N]
 *               [--stats-interval SEC] [--drain-ms 2000]
 *             Prints one JSON "ready" line (with the bound port: --port 0 picks a free
 *             one) on stdout, JSON "stats" lines on SIGUSR1 / every --stats-interval,
 *             and a final "stats" line at exit.
 * Test:       fastpath-uring-echo --port 7777 & sleep 0.2; echo hi | nc -N 127.0.0.1 7777; kill %1
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Tunables (compile-time; run-time options below are validated against their ranges). */
#define SQ_ENTRIES 1024                   /* SQEs per ring; flushed early when full */
#define CQ_ENTRIES 16384                  /* CQ ring: multishot requests post many CQEs each */
#define BUF_GROUP 0                       /* provided-buffer group id of every ring */
#define DEFAULT_BUFFERS 4096              /* --buffers: pool size per thread (power of two) */
#define MIN_BUFFERS 16
#define MAX_BUFFERS 32768                 /* kernel limit for a buffer ring */
#define DEFAULT_BUFFER_SIZE 4096          /* --buffer-size: bytes per provided buffer */
#define MIN_BUFFER_SIZE 64
#define MAX_BUFFER_SIZE (1u << 20)
#define MAX_POOL_BYTES (1ull << 30)       /* buffers x buffer-size per thread */
#define DEFAULT_CONN_MAX_BYTES (256u * 1024) /* --conn-max-bytes: queued bytes before pausing */
#define DEFAULT_PORT 7777
#define MAX_THREADS 256
#define ACCEPT_RETRY_MS 50                /* back-off after EMFILE/ENFILE/ENOMEM on accept */
#define DEFAULT_DRAIN_MS 2000             /* --drain-ms: SIGTERM grace for queued echoes */
#define MAX_DRAIN_MS 60000
#define JOIN_SLACK_MS 3000                /* beyond the drain, how long main waits for workers */
#define LISTEN_BACKLOG 4096
#define SQPOLL_IDLE_MS 1000               /* SQPOLL thread sleeps after this much idleness */
#define INITIAL_CONN_SLOTS 1024           /* connection table grows by doubling */
#define RING_WINDOW_MIN 64                /* buffers published to the kernel at least ... */
#define RING_WINDOW_SLACK 64              /* ... and this many beyond one per connection */

#define PROG "fastpath-uring-echo"

#include "common.h"

/* user_data: op (8 bits) | connection generation (24 bits) | connection slot (32 bits). */
enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_TIMER, OP_WAKE };
enum timer { TIMER_ACCEPT_RETRY = 1, TIMER_DRAIN };
#define GEN_MASK 0xffffffu

static inline uint64_t mkud(enum op op, uint32_t gen, uint32_t slot)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & GEN_MASK) << 32) | slot;
}
static inline enum op ud_op(uint64_t ud) { return (enum op)(ud >> 56); }
static inline uint32_t ud_gen(uint64_t ud) { return (uint32_t)(ud >> 32) & GEN_MASK; }
static inline uint32_t ud_slot(uint64_t ud) { return (uint32_t)ud; }

enum conn_state { CONN_FREE = 0, CONN_OPEN, CONN_CLOSING };

struct conn {
	int fd;
	uint32_t gen;
	int32_t q_head, q_tail;   /* queued buffer ids, oldest first, linked by buf_next[] */
	uint32_t q_bytes;         /* received, not yet echoed */
	uint32_t sent_off;        /* bytes of q_head already sent */
	int32_t starve_prev, starve_next; /* ENOBUFS wait list (slots), -1 terminated */
	uint8_t state;
	bool recv_armed;          /* multishot recv outstanding (until a CQE without F_MORE) */
	bool send_inflight;
	bool paused;              /* backpressure: recv cancelled until the queue drains */
	bool eof;                 /* no more reads: peer shut down, or server draining */
	bool starved;             /* on the ENOBUFS wait list */
};

/* Counters: written by their worker only, read by main; relaxed atomics keep it defined. */
struct stats {
	uint64_t accepted, closed, messages, bytes_in, sends, bytes_out, cqes, enters;
	uint64_t enobufs, short_sends, accept_emfile, accept_errors, recv_errors, send_errors;
	uint64_t pauses;
	uint64_t queued; /* gauge: bytes received and not yet echoed, all connections */
};
#define STAT_ADD(w, field, n) \
	__atomic_store_n(&(w)->stats.field, (w)->stats.field + (n), __ATOMIC_RELAXED)
#define STAT_SUB(w, field, n) \
	__atomic_store_n(&(w)->stats.field, (w)->stats.field - (n), __ATOMIC_RELAXED)
#define STAT_GET(w, field) __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED)

struct options {
	struct endpoint ep;       /* --addr, --port */
	int threads;
	bool sqpoll;
	unsigned buffers;
	unsigned buffer_size;
	unsigned conn_max_bytes;
	double stats_interval;
	unsigned drain_ms;
};

struct worker {
	int id, cpu;
	int listen_fd, wake_fd;
	const struct options *opt;
	pthread_t thread;
	bool thread_started;
	struct io_uring ring;
	bool ring_ok;
	unsigned setup_flags;
	char setup_err[256];
	/* provided buffers */
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *bufs;
	size_t bufs_bytes;
	int32_t *buf_next;
	uint32_t *buf_len;
	uint16_t *free_bufs;      /* buffers neither queued nor published, most recent on top */
	unsigned nfree_bufs;
	unsigned br_avail;        /* published minus consumed (one per F_BUFFER completion) */
	unsigned br_window;       /* published at least, grown on ENOBUFS with buffers free */
	bool br_registered;
	unsigned br_mask;
	/* connections */
	struct conn *conns;
	uint32_t nslots;
	uint32_t *free_slots;
	uint32_t nfree;
	uint32_t open_conns;
	int32_t starve_head, starve_tail;
	/* state */
	bool accept_armed, accept_timer_armed, stopping, drain_expired;
	uint64_t wake_buf;
	struct __kernel_timespec accept_retry_ts, drain_ts;
	struct stats stats;
};

static sem_t g_ready;

/* ---------------------------------------------------------------- submission helpers */

static struct io_uring_sqe *get_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	int tries;

	/* A full SQ is flushed to the kernel; with SQPOLL we may have to wait for it. */
	for (tries = 0; !sqe && tries < 1000; tries++) {
		io_uring_submit(&w->ring);
		if (w->setup_flags & IORING_SETUP_SQPOLL)
			io_uring_sqring_wait(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	if (!sqe) {
		fprintf(stderr, PROG ": error: thread %d: submission queue stuck full\n", w->id);
		abort();
	}
	return sqe;
}

static void arm_accept(struct worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, mkud(OP_ACCEPT, 0, 0));
	w->accept_armed = true;
}

static void arm_timer(struct worker *w, struct __kernel_timespec *ts, unsigned ms, enum timer t)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	ts->tv_sec = ms / 1000;
	ts->tv_nsec = (long long)(ms % 1000) * 1000000;
	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_TIMER, 0, t));
}

static void arm_wake(struct worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_WAKE, 0, 0));
}

static void cancel_ud(struct worker *w, uint64_t target, uint32_t gen, uint32_t slot)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_CANCEL, gen, slot));
}

static void arm_recv(struct worker *w, struct conn *c, uint32_t slot)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, mkud(OP_RECV, c->gen, slot));
	c->recv_armed = true;
}

static void send_head(struct worker *w, struct conn *c, uint32_t slot)
{
	struct io_uring_sqe *sqe;
	int32_t bid = c->q_head;

	if (c->send_inflight || bid < 0)
		return;
	sqe = get_sqe(w);
	io_uring_prep_send(sqe, c->fd, w->bufs + (size_t)bid * w->opt->buffer_size + c->sent_off,
			   w->buf_len[bid] - c->sent_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, mkud(OP_SEND, c->gen, slot));
	c->send_inflight = true;
}

/* ---------------------------------------------------------------- buffers */

/*
 * A finished buffer goes on top of the free stack; flush_buffers() publishes from the top
 * once per CQE batch. The kernel takes ring entries oldest first, so publishing the whole
 * pool would cycle every recv through all --buffers pages (16 MiB by default): each
 * 128-byte message landed in a cold page, a TLB and cache miss that made the kernel's copy
 * into the buffer 5-30 % of the server's CPU. Publishing only a window of the most
 * recently used buffers keeps the touched set to about one buffer per busy connection.
 */
static void recycle(struct worker *w, int32_t bid)
{
	w->free_bufs[w->nfree_bufs++] = (uint16_t)bid;
}

static void starve_remove(struct worker *w, struct conn *c)
{
	if (!c->starved)
		return;
	if (c->starve_prev >= 0)
		w->conns[c->starve_prev].starve_next = c->starve_next;
	else
		w->starve_head = c->starve_next;
	if (c->starve_next >= 0)
		w->conns[c->starve_next].starve_prev = c->starve_prev;
	else
		w->starve_tail = c->starve_prev;
	c->starved = false;
	c->starve_prev = c->starve_next = -1;
}

static void starve_add(struct worker *w, struct conn *c, uint32_t slot)
{
	if (c->starved)
		return;
	c->starved = true;
	c->starve_next = -1;
	c->starve_prev = w->starve_tail;
	if (w->starve_tail >= 0)
		w->conns[w->starve_tail].starve_next = (int32_t)slot;
	else
		w->starve_head = (int32_t)slot;
	w->starve_tail = (int32_t)slot;
}

static void maybe_resume(struct worker *w, struct conn *c, uint32_t slot);

/* Top the published window up from the free stack (hottest first), then give starved
 * connections a recv each, oldest first. */
static void flush_buffers(struct worker *w)
{
	unsigned want = w->br_window, n = 0;

	if (want < w->open_conns + RING_WINDOW_SLACK)
		want = w->open_conns + RING_WINDOW_SLACK;
	while (w->br_avail < want && w->nfree_bufs) {
		uint16_t bid = w->free_bufs[--w->nfree_bufs];

		io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->opt->buffer_size,
				      w->opt->buffer_size, bid, (int)w->br_mask, (int)n);
		n++;
		w->br_avail++;
	}
	if (!n)
		return;
	io_uring_buf_ring_advance(w->br, (int)n);
	while (n-- && w->starve_head >= 0) {
		uint32_t slot = (uint32_t)w->starve_head;
		struct conn *c = &w->conns[slot];

		starve_remove(w, c);
		maybe_resume(w, c, slot);
	}
}

/* ---------------------------------------------------------------- connections */

static int grow_slots(struct worker *w)
{
	uint32_t old = w->nslots, n = old ? old * 2 : INITIAL_CONN_SLOTS, i;
	struct conn *conns;
	uint32_t *free_slots;

	if (n > (1u << 30))
		return -1;
	conns = realloc(w->conns, (size_t)n * sizeof(*conns));
	if (!conns)
		return -1;
	w->conns = conns;
	free_slots = realloc(w->free_slots, (size_t)n * sizeof(*free_slots));
	if (!free_slots)
		return -1;
	w->free_slots = free_slots;
	memset(&conns[old], 0, (size_t)(n - old) * sizeof(*conns));
	/* Lowest slots on top of the free stack: keeps the hot part of the table small. */
	for (i = n; i > old; i--)
		w->free_slots[w->nfree++] = i - 1;
	w->nslots = n;
	return 0;
}

static void new_conn(struct worker *w, int fd)
{
	struct conn *c;
	uint32_t slot, gen;
	int one = 1;

	if (!w->nfree && grow_slots(w) < 0) {
		STAT_ADD(w, accept_errors, 1);
		close(fd);
		return;
	}
	slot = w->free_slots[--w->nfree];
	c = &w->conns[slot];
	gen = (c->gen + 1) & GEN_MASK;
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->gen = gen;
	c->q_head = c->q_tail = -1;
	c->starve_prev = c->starve_next = -1;
	c->state = CONN_OPEN;
	/* Echo replies are latency-bound: never hold a short segment back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	w->open_conns++;
	STAT_ADD(w, accepted, 1);
	arm_recv(w, c, slot);
}

/* Release everything a closing connection holds once the kernel holds nothing of it. */
static void conn_maybe_free(struct worker *w, struct conn *c, uint32_t slot)
{
	if (c->state != CONN_CLOSING || c->recv_armed || c->send_inflight)
		return;
	while (c->q_head >= 0) {
		int32_t bid = c->q_head;

		c->q_head = w->buf_next[bid];
		recycle(w, bid);
	}
	c->q_tail = -1;
	STAT_SUB(w, queued, c->q_bytes);
	c->q_bytes = 0;
	starve_remove(w, c);
	close(c->fd);
	c->fd = -1;
	c->state = CONN_FREE;
	w->free_slots[w->nfree++] = slot;
	w->open_conns--;
	STAT_ADD(w, closed, 1);
}

/* Close on error, reset or drain timeout: stop both directions, cancel what is armed. */
static void conn_abort(struct worker *w, struct conn *c, uint32_t slot)
{
	if (c->state != CONN_OPEN)
		return;
	c->state = CONN_CLOSING;
	starve_remove(w, c);
	/* shutdown() completes any request the kernel holds on this socket, even one that
	 * a cancel would find already running; the cancels cover the rest. */
	shutdown(c->fd, SHUT_RDWR);
	if (c->recv_armed)
		cancel_ud(w, mkud(OP_RECV, c->gen, slot), c->gen, slot);
	if (c->send_inflight)
		cancel_ud(w, mkud(OP_SEND, c->gen, slot), c->gen, slot);
	conn_maybe_free(w, c, slot);
}

/* Graceful end: the peer shut its side (or we are draining) and every echo went out. */
static void conn_maybe_finish(struct worker *w, struct conn *c, uint32_t slot)
{
	if (c->state != CONN_OPEN || !c->eof || c->q_head >= 0 || c->send_inflight || c->recv_armed)
		return;
	c->state = CONN_CLOSING;
	conn_maybe_free(w, c, slot);
}

static void maybe_resume(struct worker *w, struct conn *c, uint32_t slot)
{
	if (c->state != CONN_OPEN || c->eof || c->recv_armed || c->starved || w->stopping)
		return;
	if (c->paused) {
		if (c->q_bytes > w->opt->conn_max_bytes / 2)
			return;
		c->paused = false;
	}
	arm_recv(w, c, slot);
}

/* ---------------------------------------------------------------- completions */

static void on_accept(struct worker *w, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE))
		w->accept_armed = false;
	if (res >= 0) {
		if (w->stopping)
			close(res);
		else
			new_conn(w, res);
	} else if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
		STAT_ADD(w, accept_emfile, 1);
	} else if (res != -ECANCELED) {
		STAT_ADD(w, accept_errors, 1);
	}
	if (w->accept_armed || w->stopping)
		return;
	if (res < 0 && res != -ECANCELED && res != -ECONNABORTED && res != -EINTR) {
		/* Out of descriptors or memory: retry later instead of spinning on the error. */
		if (!w->accept_timer_armed) {
			arm_timer(w, &w->accept_retry_ts, ACCEPT_RETRY_MS, TIMER_ACCEPT_RETRY);
			w->accept_timer_armed = true;
		}
		return;
	}
	arm_accept(w);
}

static void on_recv(struct worker *w, struct conn *c, uint32_t slot, int res, unsigned flags)
{
	bool more = flags & IORING_CQE_F_MORE;

	if (!more)
		c->recv_armed = false;
	if (flags & IORING_CQE_F_BUFFER) {
		int32_t bid = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);

		if (w->br_avail)
			w->br_avail--;
		if (res > 0 && c->state == CONN_OPEN) {
			w->buf_len[bid] = (uint32_t)res;
			w->buf_next[bid] = -1;
			if (c->q_tail >= 0)
				w->buf_next[c->q_tail] = bid;
			else
				c->q_head = bid;
			c->q_tail = bid;
			c->q_bytes += (uint32_t)res;
			STAT_ADD(w, queued, (uint64_t)res);
			STAT_ADD(w, messages, 1);
			STAT_ADD(w, bytes_in, (uint64_t)res);
			send_head(w, c, slot);
			if (!c->paused && more && c->q_bytes >= w->opt->conn_max_bytes) {
				c->paused = true;
				STAT_ADD(w, pauses, 1);
				cancel_ud(w, mkud(OP_RECV, c->gen, slot), c->gen, slot);
			}
		} else {
			recycle(w, bid);
		}
	}
	if (more)
		return;
	/* The multishot recv has ended; decide whether and when to re-arm it. */
	if (c->state == CONN_CLOSING) {
		conn_maybe_free(w, c, slot);
		return;
	}
	if (res == 0) {
		c->eof = true;
	} else if (res == -ENOBUFS) {
		STAT_ADD(w, enobufs, 1);
		/* The kernel found the ring empty, whatever our count says; and if the window
		 * ran dry while the pool had buffers, publish more from now on. */
		w->br_avail = 0;
		if (w->nfree_bufs && w->br_window < w->opt->buffers)
			w->br_window = w->br_window * 2 < w->opt->buffers ? w->br_window * 2
									: w->opt->buffers;
		if (!c->eof && !w->stopping)
			starve_add(w, c, slot);
	} else if (res < 0 && res != -ECANCELED) {
		STAT_ADD(w, recv_errors, 1);
		conn_abort(w, c, slot);
		return;
	}
	if (c->eof)
		conn_maybe_finish(w, c, slot);
	else
		maybe_resume(w, c, slot);
}

static void on_send(struct worker *w, struct conn *c, uint32_t slot, int res)
{
	int32_t bid = c->q_head;
	uint32_t left;

	c->send_inflight = false;
	if (c->state == CONN_CLOSING) {
		conn_maybe_free(w, c, slot);
		return;
	}
	if (res <= 0) {
		STAT_ADD(w, send_errors, 1);
		conn_abort(w, c, slot);
		return;
	}
	STAT_ADD(w, sends, 1);
	STAT_ADD(w, bytes_out, (uint64_t)res);
	left = w->buf_len[bid] - c->sent_off;
	c->q_bytes -= (uint32_t)res;
	STAT_SUB(w, queued, (uint64_t)res);
	if ((uint32_t)res < left) {
		/* Short send: the rest of this buffer goes next, before anything queued after. */
		STAT_ADD(w, short_sends, 1);
		c->sent_off += (uint32_t)res;
		send_head(w, c, slot);
		return;
	}
	c->q_head = w->buf_next[bid];
	if (c->q_head < 0)
		c->q_tail = -1;
	c->sent_off = 0;
	recycle(w, bid);
	send_head(w, c, slot);
	if (c->eof)
		conn_maybe_finish(w, c, slot);
	else
		maybe_resume(w, c, slot);
}

static void begin_stop(struct worker *w)
{
	uint32_t slot;

	w->stopping = true;
	if (w->accept_armed)
		cancel_ud(w, mkud(OP_ACCEPT, 0, 0), 0, 0);
	for (slot = 0; slot < w->nslots; slot++) {
		struct conn *c = &w->conns[slot];

		if (c->state != CONN_OPEN)
			continue;
		/* Drain: read nothing more, finish echoing what already arrived, then close. */
		c->eof = true;
		starve_remove(w, c);
		if (c->recv_armed)
			cancel_ud(w, mkud(OP_RECV, c->gen, slot), c->gen, slot);
		conn_maybe_finish(w, c, slot);
	}
	arm_timer(w, &w->drain_ts, w->opt->drain_ms, TIMER_DRAIN);
}

static void on_timer(struct worker *w, uint32_t which)
{
	uint32_t slot;

	if (which == TIMER_ACCEPT_RETRY) {
		w->accept_timer_armed = false;
		if (!w->stopping && !w->accept_armed)
			arm_accept(w);
	} else if (which == TIMER_DRAIN && !w->drain_expired) {
		w->drain_expired = true;
		for (slot = 0; slot < w->nslots; slot++)
			conn_abort(w, &w->conns[slot], slot);
	}
}

static void dispatch(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint32_t slot = ud_slot(ud);
	struct conn *c;

	switch (ud_op(ud)) {
	case OP_ACCEPT:
		on_accept(w, cqe->res, cqe->flags);
		return;
	case OP_TIMER:
		on_timer(w, slot);
		return;
	case OP_WAKE:
		if (!w->stopping)
			begin_stop(w);
		return;
	case OP_CANCEL:
		return; /* the cancelled request reports on its own CQE */
	case OP_RECV:
	case OP_SEND:
		break;
	default:
		thread_fail(w->id, "completion with unknown user_data %#llx", (unsigned long long)ud);
		return;
	}
	/* Requests on a connection always finish before its slot is reused, so the
	 * generation check is a guard against logic errors, not a race. */
	c = slot < w->nslots ? &w->conns[slot] : NULL;
	if (!c || c->state == CONN_FREE || c->gen != ud_gen(ud)) {
		thread_fail(w->id, "completion for a dead connection (slot %u)", slot);
		return;
	}
	if (ud_op(ud) == OP_RECV)
		on_recv(w, c, slot, cqe->res, cqe->flags);
	else
		on_send(w, c, slot, cqe->res);
}

/* ---------------------------------------------------------------- worker set-up and loop */

static int setup_ring(struct worker *w)
{
	static const unsigned normal[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
		0,
	};
	static const unsigned sqpoll[] = {
		IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER,
		IORING_SETUP_SQPOLL,
	};
	const unsigned *chain = w->opt->sqpoll ? sqpoll : normal;
	size_t n = w->opt->sqpoll ? 2 : 3, i;
	int ret = -EINVAL;

	for (i = 0; i < n; i++) {
		struct io_uring_params p;

		memset(&p, 0, sizeof(p));
		p.flags = chain[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = CQ_ENTRIES;
		p.sq_thread_idle = SQPOLL_IDLE_MS;
		ret = io_uring_queue_init_params(SQ_ENTRIES, &w->ring, &p);
		if (ret == 0) {
			w->setup_flags = p.flags;
			w->ring_ok = true;
			io_uring_register_ring_fd(&w->ring); /* optional: saves an fdget per enter */
			return 0;
		}
		if (ret != -EINVAL)
			break;
	}
	snprintf(w->setup_err, sizeof(w->setup_err), "io_uring_queue_init_params: %s%s",
		 strerror(-ret),
		 ret == -EPERM ? " (io_uring disabled? check sysctl kernel.io_uring_disabled)" : "");
	return -1;
}

static int setup_buffers(struct worker *w)
{
	const struct options *o = w->opt;
	struct io_uring_buf_reg reg;
	unsigned i;
	int ret;

	w->br_bytes = (size_t)o->buffers * sizeof(struct io_uring_buf);
	w->br = mmap(NULL, w->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->br == MAP_FAILED) {
		w->br = NULL;
		snprintf(w->setup_err, sizeof(w->setup_err), "mmap buffer ring: %s", strerror(errno));
		return -1;
	}
	w->bufs_bytes = (size_t)o->buffers * o->buffer_size;
	w->bufs = mmap(NULL, w->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (w->bufs == MAP_FAILED) {
		w->bufs = NULL;
		snprintf(w->setup_err, sizeof(w->setup_err), "mmap %zu bytes of buffers: %s",
			 w->bufs_bytes, strerror(errno));
		return -1;
	}
	w->buf_next = calloc(o->buffers, sizeof(*w->buf_next));
	w->buf_len = calloc(o->buffers, sizeof(*w->buf_len));
	w->free_bufs = calloc(o->buffers, sizeof(*w->free_bufs));
	if (!w->buf_next || !w->buf_len || !w->free_bufs) {
		snprintf(w->setup_err, sizeof(w->setup_err), "out of memory for buffer tables");
		return -1;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)w->br;
	reg.ring_entries = o->buffers;
	reg.bgid = BUF_GROUP;
	ret = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (ret < 0) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "io_uring_register_buf_ring: %s (provided buffer rings need Linux >= 5.19)",
			 strerror(-ret));
		return -1;
	}
	w->br_registered = true;
	w->br_mask = (unsigned)io_uring_buf_ring_mask(o->buffers);
	io_uring_buf_ring_init(w->br);
	for (i = o->buffers; i > 0; i--)
		recycle(w, (int32_t)(i - 1));
	w->br_window = RING_WINDOW_MIN < o->buffers ? RING_WINDOW_MIN : o->buffers;
	flush_buffers(w);
	return 0;
}

static void worker_cleanup(struct worker *w)
{
	uint32_t slot;

	for (slot = 0; slot < w->nslots; slot++)
		if (w->conns[slot].state != CONN_FREE)
			close(w->conns[slot].fd);
	if (w->br_registered)
		io_uring_unregister_buf_ring(&w->ring, BUF_GROUP);
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring);
	if (w->br)
		munmap(w->br, w->br_bytes);
	if (w->bufs)
		munmap(w->bufs, w->bufs_bytes);
	free(w->buf_next);
	free(w->buf_len);
	free(w->free_bufs);
	free(w->conns);
	free(w->free_slots);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct io_uring_cqe *cqe;
	unsigned head, n;
	int ret;

	/* Step 1: the ring, created by the thread that will submit (SINGLE_ISSUER). */
	/* Step 2: the provided-buffer pool. Step 3: the connection table. */
	if (setup_ring(w) < 0 || setup_buffers(w) < 0 || grow_slots(w) < 0) {
		if (!w->setup_err[0])
			snprintf(w->setup_err, sizeof(w->setup_err), "out of memory");
		sem_post(&g_ready);
		worker_cleanup(w);
		return NULL;
	}
	/* Step 4: arm multishot accept and the stop wake-up, then report ready. */
	arm_accept(w);
	arm_wake(w);
	sem_post(&g_ready);

	/* Step 5: the event loop. Runs until stopping with no connection and no accept left. */
	while (!(w->stopping && w->open_conns == 0 && !w->accept_armed)) {
		ret = io_uring_submit_and_wait(&w->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			thread_fail(w->id, "io_uring_submit_and_wait: %s", strerror(-ret));
			break;
		}
		STAT_ADD(w, enters, 1);
		n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			dispatch(w, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);
		STAT_ADD(w, cqes, n);
		flush_buffers(w);
		if (g_failed)
			break;
	}
	/* Step 6: the single clean-up path. */
	worker_cleanup(w);
	return NULL;
}

/* ---------------------------------------------------------------- options */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PROG " [options]\n"
		"  --addr ADDR            IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
		"  --port PORT            TCP port, 0 picks a free one (default %d)\n"
		"  --threads N            rings/threads on SO_REUSEPORT listeners, 1..%d (default 1)\n"
		"  --sqpoll               let a kernel thread poll the submission queue\n"
		"  --buffers N            provided buffers per thread, power of two %d..%d (default %d)\n"
		"  --buffer-size BYTES    bytes per buffer, %d..%u (default %d)\n"
		"  --conn-max-bytes BYTES bytes queued per connection before reading pauses\n"
		"                         (buffer-size..pool size, default min(%u, pool/4))\n"
		"  --stats-interval SEC   also print stats every SEC seconds (0 = off)\n"
		"  --drain-ms MS          on SIGTERM/SIGINT, time allowed to flush echoes, 0..%d (default %d)\n"
		"signals: SIGUSR1 prints stats; SIGINT/SIGTERM drain, close every connection, exit 0\n"
		"example: " PROG " --port 0 --threads 2\n",
		DEFAULT_PORT, MAX_THREADS, MIN_BUFFERS, MAX_BUFFERS, DEFAULT_BUFFERS, MIN_BUFFER_SIZE,
		MAX_BUFFER_SIZE, DEFAULT_BUFFER_SIZE, DEFAULT_CONN_MAX_BYTES, MAX_DRAIN_MS,
		DEFAULT_DRAIN_MS);
}

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "port", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "sqpoll", no_argument, NULL, 'S' },
		{ "buffers", required_argument, NULL, 'b' },
		{ "buffer-size", required_argument, NULL, 's' },
		{ "conn-max-bytes", required_argument, NULL, 'm' },
		{ "stats-interval", required_argument, NULL, 'i' },
		{ "drain-ms", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	long conn_max = -1;
	int ch;

	memset(o, 0, sizeof(*o));
	parse_addr(&o->ep, "127.0.0.1");
	o->ep.port = DEFAULT_PORT;
	o->threads = 1;
	o->buffers = DEFAULT_BUFFERS;
	o->buffer_size = DEFAULT_BUFFER_SIZE;
	o->drain_ms = DEFAULT_DRAIN_MS;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a': parse_addr(&o->ep, optarg); break;
		case 'p': o->ep.port = (int)parse_long("--port", optarg, 0, 65535); break;
		case 't': o->threads = (int)parse_long("--threads", optarg, 1, MAX_THREADS); break;
		case 'S': o->sqpoll = true; break;
		case 'b':
			o->buffers = (unsigned)parse_long("--buffers", optarg, MIN_BUFFERS, MAX_BUFFERS);
			if (o->buffers & (o->buffers - 1))
				die_usage("--buffers %s: must be a power of two in %d..%d", optarg,
					  MIN_BUFFERS, MAX_BUFFERS);
			break;
		case 's':
			o->buffer_size = (unsigned)parse_long("--buffer-size", optarg, MIN_BUFFER_SIZE,
							      MAX_BUFFER_SIZE);
			break;
		case 'm': conn_max = parse_long("--conn-max-bytes", optarg, 1, UINT32_MAX / 2); break;
		case 'i': o->stats_interval = parse_seconds("--stats-interval", optarg, 0, 86400); break;
		case 'd': o->drain_ms = (unsigned)parse_long("--drain-ms", optarg, 0, MAX_DRAIN_MS); break;
		case 'h': usage(stdout); exit(0);
		default: die_bad_option(argv);
		}
	}
	if (optind < argc)
		die_usage("unexpected argument %s (see --help)", argv[optind]);
	if ((unsigned long long)o->buffers * o->buffer_size > MAX_POOL_BYTES)
		die_usage("--buffers x --buffer-size = %llu bytes per thread exceeds %llu",
			  (unsigned long long)o->buffers * o->buffer_size, MAX_POOL_BYTES);
	if (conn_max < 0) {
		unsigned long long quarter = (unsigned long long)o->buffers * o->buffer_size / 4;

		conn_max = quarter < DEFAULT_CONN_MAX_BYTES ? (long)quarter : DEFAULT_CONN_MAX_BYTES;
		if (conn_max < (long)o->buffer_size)
			conn_max = o->buffer_size;
	} else if (conn_max < (long)o->buffer_size ||
		   (unsigned long long)conn_max > (unsigned long long)o->buffers * o->buffer_size) {
		die_usage("--conn-max-bytes %ld: must lie in buffer-size..pool size (%u..%llu)",
			  conn_max, o->buffer_size, (unsigned long long)o->buffers * o->buffer_size);
	}
	o->conn_max_bytes = (unsigned)conn_max;
}

/* ---------------------------------------------------------------- stats */

static void print_stats(struct worker *ws, int n, double started, bool final)
{
	struct stats t;
	int i;

	memset(&t, 0, sizeof(t));
	for (i = 0; i < n; i++) {
		struct worker *w = &ws[i];

		t.accepted += STAT_GET(w, accepted);
		t.closed += STAT_GET(w, closed);
		t.messages += STAT_GET(w, messages);
		t.bytes_in += STAT_GET(w, bytes_in);
		t.sends += STAT_GET(w, sends);
		t.bytes_out += STAT_GET(w, bytes_out);
		t.cqes += STAT_GET(w, cqes);
		t.enters += STAT_GET(w, enters);
		t.enobufs += STAT_GET(w, enobufs);
		t.short_sends += STAT_GET(w, short_sends);
		t.accept_emfile += STAT_GET(w, accept_emfile);
		t.accept_errors += STAT_GET(w, accept_errors);
		t.recv_errors += STAT_GET(w, recv_errors);
		t.send_errors += STAT_GET(w, send_errors);
		t.pauses += STAT_GET(w, pauses);
		t.queued += STAT_GET(w, queued);
	}
	printf("{\"event\":\"stats\",\"final\":%s,\"engine\":\"native\",\"uptime_s\":%.3f,"
	       "\"threads\":%d,\"connections_accepted\":%llu,\"connections_open\":%llu,"
	       "\"connections_closed\":%llu,\"messages\":%llu,\"bytes_in\":%llu,\"sends\":%llu,"
	       "\"bytes_out\":%llu,\"cqes\":%llu,\"enters\":%llu,\"cqes_per_enter\":%.2f,"
	       "\"enobufs\":%llu,\"short_sends\":%llu,\"accept_emfile\":%llu,"
	       "\"accept_errors\":%llu,\"recv_errors\":%llu,\"send_errors\":%llu,"
	       "\"backpressure_pauses\":%llu,\"bytes_queued\":%llu}\n",
	       final ? "true" : "false", now_s() - started, n, (unsigned long long)t.accepted,
	       (unsigned long long)(t.accepted - t.closed), (unsigned long long)t.closed,
	       (unsigned long long)t.messages, (unsigned long long)t.bytes_in,
	       (unsigned long long)t.sends, (unsigned long long)t.bytes_out,
	       (unsigned long long)t.cqes, (unsigned long long)t.enters,
	       t.enters ? (double)t.cqes / (double)t.enters : 0.0,
	       (unsigned long long)t.enobufs, (unsigned long long)t.short_sends,
	       (unsigned long long)t.accept_emfile, (unsigned long long)t.accept_errors,
	       (unsigned long long)t.recv_errors, (unsigned long long)t.send_errors,
	       (unsigned long long)t.pauses, (unsigned long long)t.queued);
	fflush(stdout);
}

static const char *flags_text(unsigned f, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s%s",
		 f & IORING_SETUP_SQPOLL ? "SQPOLL|" : "",
		 f & IORING_SETUP_SINGLE_ISSUER ? "SINGLE_ISSUER|" : "",
		 f & IORING_SETUP_DEFER_TASKRUN ? "DEFER_TASKRUN|" : "",
		 f & IORING_SETUP_COOP_TASKRUN ? "COOP_TASKRUN|" : "",
		 f & IORING_SETUP_TASKRUN_FLAG ? "TASKRUN_FLAG|" : "");
	if (buf[0])
		buf[strlen(buf) - 1] = '\0';
	else
		snprintf(buf, len, "none");
	return buf;
}

/* ---------------------------------------------------------------- main */

static int wait_ready(int n)
{
	struct timespec deadline;
	int i;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	for (i = 0; i < n; i++)
		while (sem_timedwait(&g_ready, &deadline) < 0)
			if (errno != EINTR)
				return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct options opt;
	struct worker *ws = NULL;
	sigset_t sigs;
	int cpus[CPU_SETSIZE], ncpus, i, probe_fd, rc = 1, started_threads = 0;
	double started = now_s();
	char flagbuf[96];

	/* Step 1: options, validated before anything is opened. */
	parse_options(&opt, argc, argv);
	set_port(&opt.ep, opt.ep.port);

	/* Step 2: signals. Blocked in every thread; main alone takes them with sigtimedwait. */
	block_signals(&sigs);
	if (sem_init(&g_ready, 0, 0) < 0) {
		fprintf(stderr, PROG ": error: sem_init: %s\n", strerror(errno));
		return 1;
	}

	/* Step 3: listeners. A plain bind first, so a port held by anyone (even another
	 * SO_REUSEPORT group of ours) is reported instead of silently shared. */
	ws = calloc((size_t)opt.threads, sizeof(*ws));
	if (!ws) {
		fprintf(stderr, PROG ": error: out of memory\n");
		return 1;
	}
	for (i = 0; i < opt.threads; i++)
		ws[i].listen_fd = ws[i].wake_fd = -1;
	if (opt.ep.port != 0) {
		probe_fd = open_listener(&opt.ep, 0, false);
		if (probe_fd < 0)
			goto out;
		close(probe_fd);
	}
	for (i = 0; i < opt.threads; i++) {
		ws[i].listen_fd = open_listener(&opt.ep, 0, true);
		if (ws[i].listen_fd < 0)
			goto out;
		ws[i].wake_fd = eventfd(0, EFD_CLOEXEC);
		if (ws[i].wake_fd < 0) {
			fprintf(stderr, PROG ": error: eventfd: %s\n", strerror(errno));
			goto out;
		}
	}

	/* Step 4: one worker per listener, pinned round-robin to the CPUs we may use. */
	ncpus = allowed_cpus(cpus);
	for (i = 0; i < opt.threads; i++) {
		struct worker *w = &ws[i];

		w->id = i;
		w->opt = &opt;
		w->starve_head = w->starve_tail = -1;
		w->cpu = ncpus ? cpus[i % ncpus] : -1;
		if (start_pinned(&w->thread, w->cpu, worker_main, w) < 0)
			goto stop;
		w->thread_started = true;
		started_threads++;
	}
	if (wait_ready(started_threads) < 0) {
		fprintf(stderr, PROG ": error: workers did not finish set-up within 10 s\n");
		goto stop;
	}
	for (i = 0; i < opt.threads; i++) {
		if (ws[i].setup_err[0]) {
			fprintf(stderr, PROG ": error: thread %d: %s\n", i, ws[i].setup_err);
			goto stop;
		}
	}

	/* Step 5: ready line, then serve until SIGINT/SIGTERM; SIGUSR1 prints stats. */
	printf("{\"event\":\"ready\",\"engine\":\"native\",\"addr\":\"%s\",\"port\":%d,"
	       "\"threads\":%d,\"pid\":%d,\"setup\":\"%s\",\"buffers\":%u,\"buffer_size\":%u,"
	       "\"conn_max_bytes\":%u,\"drain_ms\":%u}\n",
	       opt.ep.text, opt.ep.port, opt.threads, (int)getpid(),
	       flags_text(ws[0].setup_flags, flagbuf, sizeof(flagbuf)), opt.buffers,
	       opt.buffer_size, opt.conn_max_bytes, opt.drain_ms);
	fflush(stdout);
	for (;;) {
		int sig = wait_signal(&sigs, opt.stats_interval);

		if (sig == SIGINT || sig == SIGTERM)
			break;
		print_stats(ws, opt.threads, started, false); /* SIGUSR1 or the interval */
	}
	rc = 0;

stop:
	/* Step 6: stop every worker (they drain, then close every connection) and wait. */
	for (i = 0; i < opt.threads; i++) {
		uint64_t one = 1;

		if (ws[i].thread_started && write(ws[i].wake_fd, &one, sizeof(one)) < 0)
			fprintf(stderr, PROG ": error: waking thread %d: %s\n", i, strerror(errno));
	}
	for (i = 0; i < opt.threads; i++) {
		if (!ws[i].thread_started)
			continue;
		join_or_exit(ws[i].thread, i, opt.drain_ms + JOIN_SLACK_MS);
	}
	if (rc == 0)
		print_stats(ws, opt.threads, started, true);
	if (g_failed)
		rc = 1;

out:
	/* Step 7: the single clean-up path for main's resources. */
	for (i = 0; i < opt.threads; i++) {
		if (ws[i].listen_fd >= 0)
			close(ws[i].listen_fd);
		if (ws[i].wake_fd >= 0)
			close(ws[i].wake_fd);
	}
	free(ws);
	sem_destroy(&g_ready);
	return rc;
}
