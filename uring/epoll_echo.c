// SPDX-License-Identifier: GPL-2.0-only
/*
 * fastpath-epoll-echo - a TCP echo server on epoll: the baseline fastpath-uring-echo is
 *                       measured against.
 *
 * Purpose:    what a careful C programmer builds without io_uring, so `fastpath bench echo`
 *             compares io_uring with the best of readiness-based I/O, not with a strawman.
 *             Same options, ready line, stats lines and signal behaviour as
 *             fastpath-uring-echo, so the same tooling runs and tests both.
 * Techniques: one epoll instance per thread, each on its own SO_REUSEPORT listener and
 *             pinned to a core. Level-triggered on purpose: an echo needs one read() per
 *             readiness event, where edge-triggered would need a second read() to reach
 *             EAGAIN, and interest changes only when a write falls short, never per
 *             message. A reply is written straight from the thread's read buffer; only a
 *             short write copies the rest into the connection's own buffer (allocated on
 *             first need, at most --buffer-size) and swaps EPOLLIN for EPOLLOUT, so that
 *             connection is not read again until its echo is out: a slow reader costs one
 *             buffer and its kernel socket buffers, never more. accept4() in batches; on
 *             EMFILE/ENFILE the listener is parked for ACCEPT_RETRY_MS instead of
 *             spinning, while existing connections carry on. SIGINT/SIGTERM: stop
 *             accepting and reading, flush pending echoes for up to --drain-ms, close
 *             every connection, exit 0.
 * Kernel:     any Linux with epoll and SO_REUSEPORT (3.9+).
 * Usage:      fastpath-epoll-echo [--addr 127.0.0.1] [--port 7777] [--threads 1]
 *               [--buffer-size 16384] [--stats-interval SEC] [--drain-ms 2000]
 *             Prints one JSON "ready" line (with the bound port: --port 0 picks a free
 *             one) on stdout, JSON "stats" lines on SIGUSR1 / every --stats-interval,
 *             and a final "stats" line at exit.
 * Test:       fastpath-epoll-echo --port 7777 & sleep 0.2; echo hi | nc -N 127.0.0.1 7777; kill %1
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

/* Tunables (compile-time; run-time options below are validated against their ranges). */
#define EPOLL_BATCH 256                   /* events taken per epoll_wait */
#define ACCEPT_BATCH 64                   /* accept4 calls per listener wake-up */
#define ACCEPT_RETRY_MS 50                /* listener parked this long after EMFILE/ENFILE */
#define DEFAULT_BUFFER_SIZE 16384         /* --buffer-size: bytes per read, per pending buffer */

#define PROG "fastpath-epoll-echo"

#include "server.h"

struct conn {
	int fd;
	bool eof;                 /* peer shut its side, or draining: close once flushed */
	bool want_out;            /* registered for EPOLLOUT (pending bytes) instead of EPOLLIN */
	char *pend;               /* echo bytes the socket did not take yet */
	uint32_t pend_off, pend_len;
	struct conn *prev, *next; /* the worker's open connections */
};

/* Its counters are server.h's, named as fastpath-uring-echo's where the meaning is the
 * same; waits and events are epoll_waits and the events they returned. */
struct worker {
	struct server_worker base; /* id, cpu, listener, wake-up eventfd, counters */
	int epfd;
	const struct server_options *opt;
	char *scratch;            /* every read lands here first */
	struct conn *conns;       /* open connections, newest first */
	uint32_t open_conns;
	bool listen_parked, stopping;
	uint64_t accept_retry_ms, drain_deadline_ms;
};

static uint64_t now_ms(void)
{
	return now_ns() / 1000000u;
}

/* ---------------------------------------------------------------- connections */

static int set_interest(struct worker *w, struct conn *c, bool want_out)
{
	struct epoll_event ev = { .events = want_out ? EPOLLOUT : EPOLLIN, .data.ptr = c };

	if (c->want_out == want_out)
		return 0;
	c->want_out = want_out;
	return epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct worker *w, struct conn *c)
{
	/* close() also drops the fd from the epoll set: it is never duplicated. */
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	STAT_SUB(w, queued, (uint64_t)(c->pend_len - c->pend_off));
	free(c->pend);
	free(c);
	w->open_conns--;
	STAT_ADD(w, closed, 1);
}

static void new_conn(struct worker *w, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c) {
		STAT_ADD(w, accept_errors, 1);
		close(fd);
		return;
	}
	c->fd = fd;
	ev.data.ptr = c;
	/* Echo replies are latency-bound: never hold a short segment back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		STAT_ADD(w, accept_errors, 1);
		free(c);
		close(fd);
		return;
	}
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->open_conns++;
	STAT_ADD(w, accepted, 1);
}

/* Echo `len` bytes just read; what the socket does not take waits in the connection. */
static void echo(struct worker *w, struct conn *c, const char *data, size_t len)
{
	ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
	size_t left;

	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			STAT_ADD(w, send_errors, 1);
			conn_close(w, c);
			return;
		}
		n = 0;
	} else {
		STAT_ADD(w, sends, 1);
		STAT_ADD(w, bytes_out, (uint64_t)n);
	}
	if ((size_t)n == len)
		return;
	/* Short write: keep the rest and stop reading until it is out (backpressure). */
	left = len - (size_t)n;
	STAT_ADD(w, short_sends, 1);
	STAT_ADD(w, pauses, 1);
	if (!c->pend && !(c->pend = malloc(w->opt->buffer_size))) {
		STAT_ADD(w, send_errors, 1);
		conn_close(w, c);
		return;
	}
	memcpy(c->pend, data + n, left);
	c->pend_off = 0;
	c->pend_len = (uint32_t)left;
	STAT_ADD(w, queued, (uint64_t)left);
	if (set_interest(w, c, true) < 0) {
		STAT_ADD(w, send_errors, 1);
		conn_close(w, c);
	}
}

static void on_readable(struct worker *w, struct conn *c)
{
	ssize_t n = recv(c->fd, w->scratch, w->opt->buffer_size, 0);

	if (n > 0) {
		STAT_ADD(w, messages, 1);
		STAT_ADD(w, bytes_in, (uint64_t)n);
		echo(w, c, w->scratch, (size_t)n);
		return;
	}
	if (n == 0) {
		/* Peer shut its side; every byte read so far was echoed (reading stops while
		 * anything is pending), so the connection is done. */
		conn_close(w, c);
		return;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return;
	STAT_ADD(w, recv_errors, 1);
	conn_close(w, c);
}

static void on_writable(struct worker *w, struct conn *c)
{
	ssize_t n = send(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off, MSG_NOSIGNAL);

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		STAT_ADD(w, send_errors, 1);
		conn_close(w, c);
		return;
	}
	STAT_ADD(w, sends, 1);
	STAT_ADD(w, bytes_out, (uint64_t)n);
	STAT_SUB(w, queued, (uint64_t)n);
	c->pend_off += (uint32_t)n;
	if (c->pend_off < c->pend_len) {
		STAT_ADD(w, short_sends, 1);
		return;
	}
	c->pend_off = c->pend_len = 0;
	if (c->eof) {
		conn_close(w, c);
		return;
	}
	if (set_interest(w, c, false) < 0) {
		STAT_ADD(w, recv_errors, 1);
		conn_close(w, c);
	}
}

/* ---------------------------------------------------------------- listener, stop */

static void park_listener(struct worker *w, bool parked)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &w->base.listen_fd };

	/* DEL rather than MOD to no events: epoll reports EPOLLERR/EPOLLHUP regardless. */
	if (parked)
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->base.listen_fd, NULL);
	else if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->base.listen_fd, &ev) < 0)
		thread_fail(w->base.id, "re-adding the listener to epoll: %s", strerror(errno));
	w->listen_parked = parked;
}

static void on_accept(struct worker *w)
{
	int i, fd;

	for (i = 0; i < ACCEPT_BATCH; i++) {
		fd = accept4(w->base.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			new_conn(w, fd);
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			/* Out of descriptors or memory: level-triggered, the listener would wake
			 * us again at once; retry later while existing connections carry on. */
			STAT_ADD(w, accept_emfile, 1);
			park_listener(w, true);
			w->accept_retry_ms = now_ms() + ACCEPT_RETRY_MS;
			return;
		}
		STAT_ADD(w, accept_errors, 1);
		return;
	}
}

static void begin_stop(struct worker *w)
{
	struct conn *c, *next;

	w->stopping = true;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->base.wake_fd, NULL);
	if (!w->listen_parked)
		park_listener(w, true);
	/* Drain: read nothing more, finish echoing what already arrived, then close. */
	for (c = w->conns; c; c = next) {
		next = c->next;
		c->eof = true;
		if (!c->want_out)
			conn_close(w, c);
	}
	w->drain_deadline_ms = now_ms() + w->opt->drain_ms;
}

static int wait_timeout(const struct worker *w)
{
	uint64_t now = now_ms(), until = UINT64_MAX;

	if (w->stopping)
		until = w->drain_deadline_ms;
	else if (w->listen_parked)
		until = w->accept_retry_ms;
	if (until == UINT64_MAX)
		return -1;
	return until > now ? (int)(until - now) : 0;
}

/* ---------------------------------------------------------------- worker loop */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[EPOLL_BATCH];
	bool stop_requested;
	int i, n;

	while (!(w->stopping && w->open_conns == 0)) {
		n = epoll_wait(w->epfd, evs, EPOLL_BATCH, wait_timeout(w));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			thread_fail(w->base.id, "epoll_wait: %s", strerror(errno));
			break;
		}
		STAT_ADD(w, waits, 1);
		STAT_ADD(w, events, (uint64_t)n);
		stop_requested = false;
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			uint32_t e = evs[i].events;
			struct conn *c = p;

			if (p == &w->base.listen_fd) {
				on_accept(w);
			} else if (p == &w->base.wake_fd) {
				/* Not here: begin_stop frees idle connections, and later events of
				 * this batch may point at them. */
				stop_requested = true;
			} else if (e & EPOLLERR) {
				STAT_ADD(w, recv_errors, 1);
				conn_close(w, c);
			} else if (c->want_out) {
				on_writable(w, c); /* EPOLLHUP too: the send reports the error */
			} else {
				on_readable(w, c);
			}
		}
		if (stop_requested && !w->stopping)
			begin_stop(w);
		if (w->stopping && now_ms() >= w->drain_deadline_ms)
			while (w->conns)
				conn_close(w, w->conns); /* drain time is up: drop what is left */
		else if (!w->stopping && w->listen_parked && now_ms() >= w->accept_retry_ms)
			park_listener(w, false);
		if (g_failed)
			break;
	}
	return NULL;
}

/* ---------------------------------------------------------------- options */

static void usage(void)
{
	server_usage_head();
	printf("  --threads N            epoll threads on SO_REUSEPORT listeners, 1..%d (default 1)\n"
	       "  --buffer-size BYTES    bytes per read and per connection's pending buffer,\n"
	       "                         %d..%u (default %d)\n",
	       MAX_THREADS, MIN_BUFFER_SIZE, MAX_BUFFER_SIZE, DEFAULT_BUFFER_SIZE);
	server_usage_tail();
}

/* ---------------------------------------------------------------- main */

/* run_server's hooks (server.h). */

static int prepare_worker(struct server_worker *base, const void *opt)
{
	struct worker *w = (struct worker *)base;
	struct epoll_event ev = { .events = EPOLLIN };

	w->opt = opt;
	w->scratch = malloc(w->opt->buffer_size);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!w->scratch || w->epfd < 0) {
		fprintf(stderr, PROG ": error: thread %d set-up: %s\n", w->base.id, strerror(errno));
		return -1;
	}
	ev.data.ptr = &w->base.listen_fd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->base.listen_fd, &ev) < 0)
		goto fail;
	ev.data.ptr = &w->base.wake_fd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->base.wake_fd, &ev) < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, PROG ": error: thread %d: epoll_ctl: %s\n", w->base.id, strerror(errno));
	return -1;
}

static void ready_fields(const void *workers, const void *opt, char *buf, size_t len)
{
	const struct server_options *o = opt;

	(void)workers;
	snprintf(buf, len, "\"setup\":\"level-triggered\",\"buffer_size\":%u,", o->buffer_size);
}

static void stats_fields(const struct server_stats *t, char *buf, size_t len)
{
	snprintf(buf, len, "\"epoll_waits\":%llu,\"events\":%llu,\"events_per_wait\":%.2f,",
		 (unsigned long long)t->waits, (unsigned long long)t->events,
		 t->waits ? (double)t->events / (double)t->waits : 0.0);
}

/* Main's part; the worker closed its connections before it ended. */
static void release_worker(struct server_worker *base)
{
	struct worker *w = (struct worker *)base;

	if (w->epfd >= 0)
		close(w->epfd);
	free(w->scratch);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = { SERVER_LONGOPTS, { NULL, 0, NULL, 0 } };
	static const struct server_engine engine = {
		.name = "epoll",
		.worker_size = sizeof(struct worker),
		.sock_flags = SOCK_NONBLOCK,
		.wake_flags = EFD_NONBLOCK,
		.worker_main = worker_main,
		.prepare = prepare_worker,
		.ready_fields = ready_fields,
		.stats_fields = stats_fields,
		.release = release_worker,
	};
	struct server_options opt;

	/* Step 1: options, validated before anything is opened. */
	server_defaults(&opt, DEFAULT_BUFFER_SIZE);
	parse_args(argc, argv, longopts, usage, server_option, &opt);
	/* Steps 2-7 (server.h): signals, listeners, pinned workers, the ready line, serving
	 * until SIGINT/SIGTERM, the drain and the single clean-up path. */
	return run_server(&engine, &opt, &opt);
}
