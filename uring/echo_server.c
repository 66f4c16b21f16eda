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
 *             COOP_TASKRUN, then plain (or SQPOLL with --sqpoll). The per-completion
 *             echo bookkeeping (queues, sends, the published buffer window) is the echo
 *             core, echo_core.c, which the Python server runs too; this file decides.
 * Kernel:     6.0+ (multishot recv; provided-buffer rings and multishot accept are 5.19).
 * Usage:      fastpath-uring-echo [--addr 127.0.0.1] [--port 7777] [--threads 1]
 *               [--sqpoll] [--buffers 4096] [--buffer-size 4096] [--conn-max-bytes N]
 *               [--stats-interval SEC] [--drain-ms 2000]
 *             Prints one JSON "ready" line (with the bound port: --port 0 picks a free
 *             one) on stdout, JSON "stats" lines on SIGUSR1 / every --stats-interval,
 *             and a final "stats" line at exit.
 * Test:       fastpath-uring-echo --port 7777 & sleep 0.2; echo hi | nc -N 127.0.0.1 7777; kill %1
 * Its size is the server's own decisions (pause/resume, the ENOBUFS wait list, drain,
 * timers); the echo core is echo_core.c and the shared main/options are server.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/tcp.h>
#include <semaphore.h>
#include <sys/mman.h>

/* Tunables (compile-time; run-time options below are validated against their ranges). */
#define SQ_ENTRIES 1024                   /* SQEs per ring; flushed early when full */
#define CQ_ENTRIES 16384                  /* CQ ring: multishot requests post many CQEs each */
#define BUF_GROUP 0                       /* provided-buffer group id of every ring */
#define DEFAULT_BUFFERS 4096              /* --buffers: pool size per thread (power of two) */
#define MIN_BUFFERS 16
#define MAX_BUFFERS 32768                 /* kernel limit for a buffer ring */
#define DEFAULT_BUFFER_SIZE 4096          /* --buffer-size: bytes per provided buffer */
#define MAX_POOL_BYTES (1ull << 30)       /* buffers x buffer-size per thread */
#define DEFAULT_CONN_MAX_BYTES (256u * 1024) /* --conn-max-bytes: queued bytes before pausing */
#define ACCEPT_RETRY_MS 50                /* back-off after EMFILE/ENFILE/ENOMEM on accept */
#define SQPOLL_IDLE_MS 1000               /* SQPOLL thread sleeps after this much idleness */
#define INITIAL_CONN_SLOTS 1024           /* connection slots grow by doubling */

#define PROG "fastpath-uring-echo"

#include "echo_core.h"
#include "server.h"

/* user_data: op (8 bits) | connection generation (24 bits) | connection slot (32 bits). */
enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_TIMER, OP_WAKE };
enum timer { TIMER_ACCEPT_RETRY = 1, TIMER_DRAIN };
#define mkud fastpath_echo_ud

struct options {
	struct server_options srv; /* --addr, --port, --threads, --buffer-size, --stats-interval,
				    * --drain-ms */
	bool sqpoll;
	unsigned buffers;
	unsigned conn_max_bytes;
};

/* A connection's place on the ENOBUFS wait list (slots, -1 terminated). */
struct starve_link {
	int32_t prev, next;
};

struct worker {
	struct server_worker base; /* id, cpu, listener, wake-up eventfd, counters */
	const struct options *opt;
	struct io_uring ring;
	bool ring_ok;
	unsigned setup_flags;
	char setup_err[256];
	/* provided buffers, kept by the echo core */
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *bufs;
	size_t bufs_bytes;
	bool br_registered;
	struct fastpath_echo *echo; /* connections, their queues and the buffer pool */
	/* connection slots, lowest free on top */
	uint32_t nslots;
	uint32_t *free_slots;
	uint32_t nfree;
	struct starve_link *starve;
	int32_t starve_head, starve_tail;
	/* state */
	bool accept_armed, accept_timer_armed, stopping, drain_expired;
	uint64_t wake_buf;
	struct __kernel_timespec accept_retry_ts, drain_ts;
};

static sem_t g_ready;

/* ---------------------------------------------------------------- submission helpers */

static void sq_stuck(const struct worker *w) __attribute__((noreturn));
static void sq_stuck(const struct worker *w)
{
	fprintf(stderr, PROG ": error: thread %d: submission queue stuck full\n", w->base.id);
	abort();
}

static struct io_uring_sqe *get_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = fastpath_echo_sqe(w->echo);

	if (!sqe)
		sq_stuck(w);
	return sqe;
}

static void arm_accept(struct worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_multishot_accept(sqe, w->base.listen_fd, NULL, NULL, SOCK_CLOEXEC);
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

	io_uring_prep_read(sqe, w->base.wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_WAKE, 0, 0));
}

static void cancel_ud(struct worker *w, uint64_t target, uint32_t gen, uint32_t slot)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_CANCEL, gen, slot));
}

static void arm_recv(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, mkud(OP_RECV, c->gen, slot));
	c->recv_armed = true;
}

/* ---------------------------------------------------------------- buffers */

static void starve_remove(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	struct starve_link *l = &w->starve[slot];

	if (!c->starved)
		return;
	if (l->prev >= 0)
		w->starve[l->prev].next = l->next;
	else
		w->starve_head = l->next;
	if (l->next >= 0)
		w->starve[l->next].prev = l->prev;
	else
		w->starve_tail = l->prev;
	c->starved = false;
	l->prev = l->next = -1;
}

static void starve_add(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (c->starved)
		return;
	c->starved = true;
	w->starve[slot].next = -1;
	w->starve[slot].prev = w->starve_tail;
	if (w->starve_tail >= 0)
		w->starve[w->starve_tail].next = (int32_t)slot;
	else
		w->starve_head = (int32_t)slot;
	w->starve_tail = (int32_t)slot;
}

static void maybe_resume(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot);

/* Let the echo core top the published window up, then give starved connections a recv
 * each for every buffer it published, oldest first. */
static void flush_buffers(struct worker *w)
{
	unsigned before = w->echo->st.published;
	unsigned n = fastpath_echo_flush(w->echo) - before;

	while (n-- && w->starve_head >= 0) {
		uint32_t slot = (uint32_t)w->starve_head;
		struct fastpath_echo_conn *c = fastpath_echo_conn(w->echo, slot);

		starve_remove(w, c, slot);
		maybe_resume(w, c, slot);
	}
}

/* ---------------------------------------------------------------- connections */

static bool conn_open(const struct fastpath_echo_conn *c)
{
	return c->live && !c->closing;
}

static int grow_slots(struct worker *w)
{
	uint32_t old = w->nslots, n = old ? old * 2 : INITIAL_CONN_SLOTS, i;
	uint32_t *free_slots;
	struct starve_link *starve;

	if (n > FASTPATH_ECHO_MAX_SLOTS)
		return -1;
	free_slots = realloc(w->free_slots, (size_t)n * sizeof(*free_slots));
	if (!free_slots)
		return -1;
	w->free_slots = free_slots;
	starve = realloc(w->starve, (size_t)n * sizeof(*starve));
	if (!starve)
		return -1;
	w->starve = starve;
	/* Lowest slots on top of the free stack: keeps the hot part of the table small. */
	for (i = n; i > old; i--)
		w->free_slots[w->nfree++] = i - 1;
	w->nslots = n;
	return 0;
}

static void new_conn(struct worker *w, int fd)
{
	struct fastpath_echo_conn *c;
	uint32_t slot;
	int one = 1;

	if (!w->nfree && grow_slots(w) < 0)
		goto fail;
	slot = w->free_slots[--w->nfree];
	c = fastpath_echo_open_slot(w->echo, slot, fd);
	if (!c) {
		w->free_slots[w->nfree++] = slot;
		goto fail;
	}
	/* Echo replies are latency-bound: never hold a short segment back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	STAT_ADD(w, accepted, 1);
	arm_recv(w, c, slot);
	return;
fail:
	STAT_ADD(w, accept_errors, 1);
	close(fd);
}

/* Release everything a closing connection holds once the kernel holds nothing of it. */
static void conn_maybe_free(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (!c->live || !c->closing || c->recv_armed || c->send_inflight)
		return;
	starve_remove(w, c, slot);
	close(c->fd);
	fastpath_echo_close(w->echo, slot); /* its queued buffers go back to the pool */
	w->free_slots[w->nfree++] = slot;
	STAT_ADD(w, closed, 1);
}

/* Close on error, reset or drain timeout: stop both directions, cancel what is armed. */
static void conn_abort(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (!conn_open(c))
		return;
	c->closing = true;
	starve_remove(w, c, slot);
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
static void conn_maybe_finish(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (!conn_open(c) || !c->eof || c->q_head >= 0 || c->send_inflight || c->recv_armed)
		return;
	c->closing = true;
	conn_maybe_free(w, c, slot);
}

static void maybe_resume(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (!conn_open(c) || c->eof || c->recv_armed || c->starved || w->stopping)
		return;
	if (c->paused) {
		if (c->q_bytes > w->opt->conn_max_bytes / 2)
			return;
		c->paused = false;
	}
	arm_recv(w, c, slot);
}

/* After a completion that left the connection open: close it once everything is echoed
 * if reading has ended, else make sure it reads. */
static void conn_carry_on(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot)
{
	if (c->eof)
		conn_maybe_finish(w, c, slot);
	else
		maybe_resume(w, c, slot);
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

/* The echo core has queued the buffer and sent it on; what is left is a decision. */
static void on_recv(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot, int res,
		    unsigned flags)
{
	if (flags & IORING_CQE_F_MORE) {
		/* Still armed: backpressure once the queue reaches --conn-max-bytes. */
		if (res > 0 && conn_open(c) && !c->paused && c->q_bytes >= w->opt->conn_max_bytes) {
			c->paused = true;
			STAT_ADD(w, pauses, 1);
			cancel_ud(w, mkud(OP_RECV, c->gen, slot), c->gen, slot);
		}
		return;
	}
	/* The multishot recv has ended; decide whether and when to re-arm it. */
	if (c->closing) {
		conn_maybe_free(w, c, slot);
		return;
	}
	if (res == 0) {
		c->eof = true;
	} else if (res == -ENOBUFS) {
		/* The core has widened its window if the pool had buffers; wait for one. */
		STAT_ADD(w, enobufs, 1);
		if (!c->eof && !w->stopping)
			starve_add(w, c, slot);
	} else if (res < 0 && res != -ECANCELED) {
		STAT_ADD(w, recv_errors, 1);
		conn_abort(w, c, slot);
		return;
	}
	conn_carry_on(w, c, slot);
}

/* The echo core retired what was sent (and sent the rest of a short send). */
static void on_send(struct worker *w, struct fastpath_echo_conn *c, uint32_t slot, int res)
{
	if (c->closing) {
		conn_maybe_free(w, c, slot);
		return;
	}
	if (res <= 0) {
		STAT_ADD(w, send_errors, 1);
		conn_abort(w, c, slot);
		return;
	}
	conn_carry_on(w, c, slot);
}

static void begin_stop(struct worker *w)
{
	uint32_t slot;

	w->stopping = true;
	if (w->accept_armed)
		cancel_ud(w, mkud(OP_ACCEPT, 0, 0), 0, 0);
	for (slot = 0; slot < w->nslots; slot++) {
		struct fastpath_echo_conn *c = fastpath_echo_conn(w->echo, slot);

		if (!c || !conn_open(c))
			continue;
		/* Drain: read nothing more, finish echoing what already arrived, then close. */
		c->eof = true;
		starve_remove(w, c, slot);
		if (c->recv_armed)
			cancel_ud(w, mkud(OP_RECV, c->gen, slot), c->gen, slot);
		conn_maybe_finish(w, c, slot);
	}
	arm_timer(w, &w->drain_ts, w->opt->srv.drain_ms, TIMER_DRAIN);
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
		for (slot = 0; slot < w->nslots; slot++) {
			struct fastpath_echo_conn *c = fastpath_echo_conn(w->echo, slot);

			if (c)
				conn_abort(w, c, slot);
		}
	}
}

/* The echo core's `decide`: every completion it hands up, after its own bookkeeping. */
static int dispatch(void *arg, const struct io_uring_cqe *cqe)
{
	struct worker *w = arg;
	uint64_t ud = cqe->user_data;
	uint32_t slot = fastpath_echo_ud_slot(ud);
	struct fastpath_echo_conn *c;

	switch (fastpath_echo_ud_op(ud)) {
	case OP_ACCEPT:
		on_accept(w, cqe->res, cqe->flags);
		return 1;
	case OP_TIMER:
		on_timer(w, slot);
		return 1;
	case OP_WAKE:
		if (!w->stopping)
			begin_stop(w);
		return 1;
	case OP_CANCEL:
		return 1; /* the cancelled request reports on its own CQE */
	case OP_RECV:
	case OP_SEND:
		break;
	default:
		thread_fail(w->base.id, "completion with unknown user_data %#llx",
			    (unsigned long long)ud);
		return 1;
	}
	/* Requests on a connection always finish before its slot is reused, so the
	 * generation check is a guard against logic errors, not a race. */
	c = fastpath_echo_conn(w->echo, slot);
	if (!c || !c->live || c->gen != fastpath_echo_ud_gen(ud)) {
		thread_fail(w->base.id, "completion for a dead connection (slot %u)", slot);
		return 1;
	}
	if (fastpath_echo_ud_op(ud) == OP_RECV)
		on_recv(w, c, slot, cqe->res, cqe->flags);
	else
		on_send(w, c, slot, cqe->res);
	return 1;
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
	int ret;

	w->br_bytes = (size_t)o->buffers * sizeof(struct io_uring_buf);
	w->br = mmap(NULL, w->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->br == MAP_FAILED) {
		w->br = NULL;
		snprintf(w->setup_err, sizeof(w->setup_err), "mmap buffer ring: %s", strerror(errno));
		return -1;
	}
	w->bufs_bytes = (size_t)o->buffers * o->srv.buffer_size;
	w->bufs = mmap(NULL, w->bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (w->bufs == MAP_FAILED) {
		w->bufs = NULL;
		snprintf(w->setup_err, sizeof(w->setup_err), "mmap %zu bytes of buffers: %s",
			 w->bufs_bytes, strerror(errno));
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
	io_uring_buf_ring_init(w->br);
	/* The echo core takes the pool from here and publishes its first window. */
	w->echo = fastpath_echo_new(&w->ring, w->br, w->bufs, o->srv.buffer_size, o->buffers,
				    o->conn_max_bytes, OP_RECV, OP_SEND);
	if (!w->echo) {
		snprintf(w->setup_err, sizeof(w->setup_err), "out of memory for buffer tables");
		return -1;
	}
	return 0;
}

/* The worker thread's clean-up; the echo core stays for main's final stats line. */
static void worker_cleanup(struct worker *w)
{
	uint32_t slot;

	for (slot = 0; slot < w->nslots; slot++) {
		struct fastpath_echo_conn *c = fastpath_echo_conn(w->echo, slot);

		if (c && c->live)
			close(c->fd);
	}
	if (w->br_registered)
		io_uring_unregister_buf_ring(&w->ring, BUF_GROUP);
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring);
	if (w->br)
		munmap(w->br, w->br_bytes);
	if (w->bufs)
		munmap(w->bufs, w->bufs_bytes);
	free(w->free_slots);
	free(w->starve);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int ret;

	/* Step 1: the ring, created by the thread that will submit (SINGLE_ISSUER). */
	/* Step 2: the provided-buffer pool and the echo core. Step 3: the connection slots. */
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
	while (!(w->stopping && w->echo->st.open_conns == 0 && !w->accept_armed)) {
		ret = fastpath_echo_submit_and_wait(w->echo, 1);
		if (ret < 0) {
			thread_fail(w->base.id, "io_uring_submit_and_wait: %s", strerror(-ret));
			break;
		}
		fastpath_echo_run(w->echo, dispatch, w);
		if (w->echo->st.error)
			sq_stuck(w);
		flush_buffers(w);
		if (g_failed)
			break;
	}
	/* Step 6: the single clean-up path. */
	worker_cleanup(w);
	return NULL;
}

/* ---------------------------------------------------------------- options */

static void usage(void)
{
	server_usage_head();
	printf("  --threads N            rings/threads on SO_REUSEPORT listeners, 1..%d (default 1)\n"
	       "  --sqpoll               let a kernel thread poll the submission queue\n"
	       "  --buffers N            provided buffers per thread, power of two %d..%d (default %d)\n"
	       "  --buffer-size BYTES    bytes per buffer, %d..%u (default %d)\n"
	       "  --conn-max-bytes BYTES bytes queued per connection before reading pauses\n"
	       "                         (buffer-size..pool size, default min(%u, pool/4))\n",
	       MAX_THREADS, MIN_BUFFERS, MAX_BUFFERS, DEFAULT_BUFFERS, MIN_BUFFER_SIZE,
	       MAX_BUFFER_SIZE, DEFAULT_BUFFER_SIZE, DEFAULT_CONN_MAX_BYTES);
	server_usage_tail();
}

struct parse {
	struct options *o;
	long conn_max; /* -1: not given */
};

static bool take_option(void *ctx, int ch, const char *arg)
{
	struct parse *p = ctx;
	struct options *o = p->o;

	if (server_option(&o->srv, ch, arg))
		return true;
	switch (ch) {
	case 'S': o->sqpoll = true; return true;
	case 'b':
		o->buffers = (unsigned)parse_long("--buffers", arg, MIN_BUFFERS, MAX_BUFFERS);
		if (o->buffers & (o->buffers - 1))
			die_usage("--buffers %s: must be a power of two in %d..%d", arg, MIN_BUFFERS,
				  MAX_BUFFERS);
		return true;
	case 'm': p->conn_max = parse_long("--conn-max-bytes", arg, 1, UINT32_MAX / 2); return true;
	}
	return false;
}

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		SERVER_LONGOPTS,
		{ "sqpoll", no_argument, NULL, 'S' },
		{ "buffers", required_argument, NULL, 'b' },
		{ "conn-max-bytes", required_argument, NULL, 'm' },
		{ NULL, 0, NULL, 0 },
	};
	struct parse p = { o, -1 };
	unsigned long long pool;

	memset(o, 0, sizeof(*o));
	server_defaults(&o->srv, DEFAULT_BUFFER_SIZE);
	o->buffers = DEFAULT_BUFFERS;
	parse_args(argc, argv, longopts, usage, take_option, &p);
	pool = (unsigned long long)o->buffers * o->srv.buffer_size;
	if (pool > MAX_POOL_BYTES)
		die_usage("--buffers x --buffer-size = %llu bytes per thread exceeds %llu", pool,
			  MAX_POOL_BYTES);
	if (p.conn_max < 0) {
		p.conn_max = pool / 4 < DEFAULT_CONN_MAX_BYTES ? (long)(pool / 4) : DEFAULT_CONN_MAX_BYTES;
		if (p.conn_max < (long)o->srv.buffer_size)
			p.conn_max = o->srv.buffer_size;
	} else if (p.conn_max < (long)o->srv.buffer_size || (unsigned long long)p.conn_max > pool) {
		die_usage("--conn-max-bytes %ld: must lie in buffer-size..pool size (%u..%llu)",
			  p.conn_max, o->srv.buffer_size, pool);
	}
	o->conn_max_bytes = (unsigned)p.conn_max;
}

/* ---------------------------------------------------------------- main */

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

/* run_server's hooks (server.h). */

static int prepare_worker(struct server_worker *base, const void *opt)
{
	struct worker *w = (struct worker *)base;

	w->opt = opt;
	w->starve_head = w->starve_tail = -1;
	return 0;
}

/* Every worker sets itself up in its own thread (SINGLE_ISSUER): wait for all of them. */
static int workers_started(void *workers, int n)
{
	struct worker *ws = workers;
	struct timespec deadline;
	int i;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	for (i = 0; i < n; i++) {
		while (sem_timedwait(&g_ready, &deadline) < 0) {
			if (errno != EINTR) {
				fprintf(stderr, PROG ": error: workers did not finish set-up within 10 s\n");
				return -1;
			}
		}
	}
	for (i = 0; i < n; i++) {
		if (ws[i].setup_err[0]) {
			fprintf(stderr, PROG ": error: thread %d: %s\n", i, ws[i].setup_err);
			return -1;
		}
	}
	return 0;
}

static void ready_fields(const void *workers, const void *opt, char *buf, size_t len)
{
	const struct worker *ws = workers;
	const struct options *o = opt;
	char flagbuf[96];

	snprintf(buf, len, "\"setup\":\"%s\",\"buffers\":%u,\"buffer_size\":%u,\"conn_max_bytes\":%u,",
		 flags_text(ws[0].setup_flags, flagbuf, sizeof(flagbuf)), o->buffers,
		 o->srv.buffer_size, o->conn_max_bytes);
}

/* The echo core keeps the data-path counters. */
static void count_core(const struct server_worker *base, struct server_stats *t)
{
	const struct fastpath_echo *e = ((const struct worker *)base)->echo;

	if (!e)
		return;
	t->messages += STAT_READ(e->st.messages);
	t->bytes_in += STAT_READ(e->st.bytes_in);
	t->sends += STAT_READ(e->st.sends);
	t->bytes_out += STAT_READ(e->st.bytes_out);
	t->short_sends += STAT_READ(e->st.short_sends);
	t->queued += STAT_READ(e->st.bytes_queued);
	t->waits += STAT_READ(e->st.enters);
	t->events += STAT_READ(e->st.cqes);
}

static void stats_fields(const struct server_stats *t, char *buf, size_t len)
{
	snprintf(buf, len, "\"cqes\":%llu,\"enters\":%llu,\"cqes_per_enter\":%.2f,\"enobufs\":%llu,",
		 (unsigned long long)t->events, (unsigned long long)t->waits,
		 t->waits ? (double)t->events / (double)t->waits : 0.0,
		 (unsigned long long)t->enobufs);
}

static void release_worker(struct server_worker *base)
{
	fastpath_echo_free(((struct worker *)base)->echo);
}

int main(int argc, char **argv)
{
	static const struct server_engine engine = {
		.name = "native",
		.worker_size = sizeof(struct worker),
		.worker_main = worker_main,
		.prepare = prepare_worker,
		.started = workers_started,
		.ready_fields = ready_fields,
		.count = count_core,
		.stats_fields = stats_fields,
		.release = release_worker,
	};
	struct options opt;
	int rc;

	/* Step 1: options, validated before anything is opened. */
	parse_options(&opt, argc, argv);
	if (sem_init(&g_ready, 0, 0) < 0) {
		fprintf(stderr, PROG ": error: sem_init: %s\n", strerror(errno));
		return 1;
	}
	/* Steps 2-7 (server.h): signals, listeners, pinned workers, the ready line, serving
	 * until SIGINT/SIGTERM, the drain and the single clean-up path. */
	rc = run_server(&engine, &opt.srv, &opt);
	sem_destroy(&g_ready);
	return rc;
}
