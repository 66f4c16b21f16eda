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
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Tunables (compile-time; run-time options below are validated against their ranges). */
#define EPOLL_BATCH 256                   /* events taken per epoll_wait */
#define ACCEPT_BATCH 64                   /* accept4 calls per listener wake-up */
#define ACCEPT_RETRY_MS 50                /* listener parked this long after EMFILE/ENFILE */
#define DEFAULT_BUFFER_SIZE 16384         /* --buffer-size: bytes per read, per pending buffer */
#define MIN_BUFFER_SIZE 64
#define MAX_BUFFER_SIZE (1u << 20)
#define DEFAULT_PORT 7777
#define MAX_THREADS 256
#define DEFAULT_DRAIN_MS 2000             /* --drain-ms: SIGTERM grace for pending echoes */
#define MAX_DRAIN_MS 60000
#define JOIN_SLACK_MS 3000                /* beyond the drain, how long main waits for workers */
#define LISTEN_BACKLOG 4096

#define PROG "fastpath-epoll-echo"

#include "common.h"

struct conn {
	int fd;
	bool eof;                 /* peer shut its side, or draining: close once flushed */
	bool want_out;            /* registered for EPOLLOUT (pending bytes) instead of EPOLLIN */
	char *pend;               /* echo bytes the socket did not take yet */
	uint32_t pend_off, pend_len;
	struct conn *prev, *next; /* the worker's open connections */
};

/* Counters: written by their worker only, read by main; relaxed atomics keep it defined.
 * Names match fastpath-uring-echo's where the meaning is the same. */
struct stats {
	uint64_t accepted, closed, messages, bytes_in, sends, bytes_out, waits, events;
	uint64_t short_sends, accept_emfile, accept_errors, recv_errors, send_errors, pauses;
	uint64_t queued; /* gauge: bytes read and not yet echoed, all connections */
};
#define STAT_ADD(w, field, n) \
	__atomic_store_n(&(w)->stats.field, (w)->stats.field + (n), __ATOMIC_RELAXED)
#define STAT_SUB(w, field, n) \
	__atomic_store_n(&(w)->stats.field, (w)->stats.field - (n), __ATOMIC_RELAXED)
#define STAT_GET(w, field) __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED)

struct options {
	struct endpoint ep;       /* --addr, --port */
	int threads;
	unsigned buffer_size;
	double stats_interval;
	unsigned drain_ms;
};

struct worker {
	int id, cpu;
	int listen_fd, wake_fd, epfd;
	const struct options *opt;
	pthread_t thread;
	bool thread_started;
	char *scratch;            /* every read lands here first */
	struct conn *conns;       /* open connections, newest first */
	uint32_t open_conns;
	bool listen_parked, stopping;
	uint64_t accept_retry_ms, drain_deadline_ms;
	struct stats stats;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &w->listen_fd };

	/* DEL rather than MOD to no events: epoll reports EPOLLERR/EPOLLHUP regardless. */
	if (parked)
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->listen_fd, NULL);
	else if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &ev) < 0)
		thread_fail(w->id, "re-adding the listener to epoll: %s", strerror(errno));
	w->listen_parked = parked;
}

static void on_accept(struct worker *w)
{
	int i, fd;

	for (i = 0; i < ACCEPT_BATCH; i++) {
		fd = accept4(w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->wake_fd, NULL);
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
			thread_fail(w->id, "epoll_wait: %s", strerror(errno));
			break;
		}
		STAT_ADD(w, waits, 1);
		STAT_ADD(w, events, (uint64_t)n);
		stop_requested = false;
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			uint32_t e = evs[i].events;
			struct conn *c = p;

			if (p == &w->listen_fd) {
				on_accept(w);
			} else if (p == &w->wake_fd) {
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

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PROG " [options]\n"
		"  --addr ADDR            IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
		"  --port PORT            TCP port, 0 picks a free one (default %d)\n"
		"  --threads N            epoll threads on SO_REUSEPORT listeners, 1..%d (default 1)\n"
		"  --buffer-size BYTES    bytes per read and per connection's pending buffer,\n"
		"                         %d..%u (default %d)\n"
		"  --stats-interval SEC   also print stats every SEC seconds (0 = off)\n"
		"  --drain-ms MS          on SIGTERM/SIGINT, time allowed to flush echoes, 0..%d (default %d)\n"
		"signals: SIGUSR1 prints stats; SIGINT/SIGTERM drain, close every connection, exit 0\n"
		"example: " PROG " --port 0 --threads 2\n",
		DEFAULT_PORT, MAX_THREADS, MIN_BUFFER_SIZE, MAX_BUFFER_SIZE, DEFAULT_BUFFER_SIZE,
		MAX_DRAIN_MS, DEFAULT_DRAIN_MS);
}

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "port", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "buffer-size", required_argument, NULL, 's' },
		{ "stats-interval", required_argument, NULL, 'i' },
		{ "drain-ms", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	memset(o, 0, sizeof(*o));
	parse_addr(&o->ep, "127.0.0.1");
	o->ep.port = DEFAULT_PORT;
	o->threads = 1;
	o->buffer_size = DEFAULT_BUFFER_SIZE;
	o->drain_ms = DEFAULT_DRAIN_MS;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a': parse_addr(&o->ep, optarg); break;
		case 'p': o->ep.port = (int)parse_long("--port", optarg, 0, 65535); break;
		case 't': o->threads = (int)parse_long("--threads", optarg, 1, MAX_THREADS); break;
		case 's':
			o->buffer_size = (unsigned)parse_long("--buffer-size", optarg, MIN_BUFFER_SIZE,
							      MAX_BUFFER_SIZE);
			break;
		case 'i': o->stats_interval = parse_seconds("--stats-interval", optarg, 0, 86400); break;
		case 'd': o->drain_ms = (unsigned)parse_long("--drain-ms", optarg, 0, MAX_DRAIN_MS); break;
		case 'h': usage(stdout); exit(0);
		default: die_bad_option(argv);
		}
	}
	if (optind < argc)
		die_usage("unexpected argument %s (see --help)", argv[optind]);
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
		t.waits += STAT_GET(w, waits);
		t.events += STAT_GET(w, events);
		t.short_sends += STAT_GET(w, short_sends);
		t.accept_emfile += STAT_GET(w, accept_emfile);
		t.accept_errors += STAT_GET(w, accept_errors);
		t.recv_errors += STAT_GET(w, recv_errors);
		t.send_errors += STAT_GET(w, send_errors);
		t.pauses += STAT_GET(w, pauses);
		t.queued += STAT_GET(w, queued);
	}
	printf("{\"event\":\"stats\",\"final\":%s,\"engine\":\"epoll\",\"uptime_s\":%.3f,"
	       "\"threads\":%d,\"connections_accepted\":%llu,\"connections_open\":%llu,"
	       "\"connections_closed\":%llu,\"messages\":%llu,\"bytes_in\":%llu,\"sends\":%llu,"
	       "\"bytes_out\":%llu,\"epoll_waits\":%llu,\"events\":%llu,\"events_per_wait\":%.2f,"
	       "\"short_sends\":%llu,\"accept_emfile\":%llu,\"accept_errors\":%llu,"
	       "\"recv_errors\":%llu,\"send_errors\":%llu,\"backpressure_pauses\":%llu,"
	       "\"bytes_queued\":%llu}\n",
	       final ? "true" : "false", now_s() - started, n, (unsigned long long)t.accepted,
	       (unsigned long long)(t.accepted - t.closed), (unsigned long long)t.closed,
	       (unsigned long long)t.messages, (unsigned long long)t.bytes_in,
	       (unsigned long long)t.sends, (unsigned long long)t.bytes_out,
	       (unsigned long long)t.waits, (unsigned long long)t.events,
	       t.waits ? (double)t.events / (double)t.waits : 0.0,
	       (unsigned long long)t.short_sends, (unsigned long long)t.accept_emfile,
	       (unsigned long long)t.accept_errors, (unsigned long long)t.recv_errors,
	       (unsigned long long)t.send_errors, (unsigned long long)t.pauses,
	       (unsigned long long)t.queued);
	fflush(stdout);
}

/* ---------------------------------------------------------------- main */

static int setup_worker(struct worker *w)
{
	struct epoll_event ev = { .events = EPOLLIN };

	w->scratch = malloc(w->opt->buffer_size);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!w->scratch || w->epfd < 0) {
		fprintf(stderr, PROG ": error: thread %d set-up: %s\n", w->id, strerror(errno));
		return -1;
	}
	ev.data.ptr = &w->listen_fd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &ev) < 0)
		goto fail;
	ev.data.ptr = &w->wake_fd;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev) < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, PROG ": error: thread %d: epoll_ctl: %s\n", w->id, strerror(errno));
	return -1;
}

int main(int argc, char **argv)
{
	struct options opt;
	struct worker *ws = NULL;
	sigset_t sigs;
	int cpus[CPU_SETSIZE], ncpus, i, probe_fd, rc = 1;
	double started = now_s();

	/* Step 1: options, validated before anything is opened. */
	parse_options(&opt, argc, argv);
	set_port(&opt.ep, opt.ep.port);

	/* Step 2: signals. Blocked in every thread; main alone takes them with sigwaitinfo. */
	block_signals(&sigs);

	/* Step 3: listeners. A plain bind first, so a port held by anyone (even another
	 * SO_REUSEPORT group of ours) is reported instead of silently shared. */
	ws = calloc((size_t)opt.threads, sizeof(*ws));
	if (!ws) {
		fprintf(stderr, PROG ": error: out of memory\n");
		return 1;
	}
	for (i = 0; i < opt.threads; i++)
		ws[i].listen_fd = ws[i].wake_fd = ws[i].epfd = -1;
	if (opt.ep.port != 0) {
		probe_fd = open_listener(&opt.ep, SOCK_NONBLOCK, false);
		if (probe_fd < 0)
			goto out;
		close(probe_fd);
	}
	for (i = 0; i < opt.threads; i++) {
		ws[i].id = i;
		ws[i].opt = &opt;
		ws[i].listen_fd = open_listener(&opt.ep, SOCK_NONBLOCK, true);
		if (ws[i].listen_fd < 0)
			goto out;
		ws[i].wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (ws[i].wake_fd < 0) {
			fprintf(stderr, PROG ": error: eventfd: %s\n", strerror(errno));
			goto out;
		}
		if (setup_worker(&ws[i]) < 0)
			goto out;
	}

	/* Step 4: one worker per listener, pinned round-robin to the CPUs we may use. */
	ncpus = allowed_cpus(cpus);
	for (i = 0; i < opt.threads; i++) {
		struct worker *w = &ws[i];

		w->cpu = ncpus ? cpus[i % ncpus] : -1;
		if (start_pinned(&w->thread, w->cpu, worker_main, w) < 0)
			goto stop;
		w->thread_started = true;
	}

	/* Step 5: ready line, then serve until SIGINT/SIGTERM; SIGUSR1 prints stats. */
	printf("{\"event\":\"ready\",\"engine\":\"epoll\",\"addr\":\"%s\",\"port\":%d,"
	       "\"threads\":%d,\"pid\":%d,\"setup\":\"level-triggered\",\"buffer_size\":%u,"
	       "\"drain_ms\":%u}\n",
	       opt.ep.text, opt.ep.port, opt.threads, (int)getpid(), opt.buffer_size,
	       opt.drain_ms);
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
		ws[i].thread_started = false;
	}
	if (rc == 0)
		print_stats(ws, opt.threads, started, true);
	if (g_failed)
		rc = 1;

out:
	/* Step 7: the single clean-up path (workers have closed their connections). */
	for (i = 0; i < opt.threads; i++) {
		if (ws[i].epfd >= 0)
			close(ws[i].epfd);
		if (ws[i].listen_fd >= 0)
			close(ws[i].listen_fd);
		if (ws[i].wake_fd >= 0)
			close(ws[i].wake_fd);
		free(ws[i].scratch);
	}
	free(ws);
	return rc;
}
