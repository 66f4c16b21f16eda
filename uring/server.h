/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * server.h - what the two echo servers, fastpath-uring-echo and fastpath-epoll-echo,
 *            share: the options they both take, their listeners with one-line bind
 *            errors, the counters both keep, the JSON ready and stats lines, and the life
 *            cycle around their workers (signals, pinned threads, a bounded stop).
 *
 * A server describes itself in a struct server_engine (its name, worker size, hooks);
 * its worker struct begins with a struct server_worker; run_server() does the rest. Like
 * common.h (included first): user space only, static functions, PROG defined by the
 * includer. Both servers print the same line protocol (fastpath/uring/native.py reads
 * it), so an engine only adds the fields that are its own.
 */
#ifndef FASTPATH_URING_SERVER_H
#define FASTPATH_URING_SERVER_H

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common.h"

/* Tunables both servers share. */
#define DEFAULT_PORT 7777
#define MAX_THREADS 256
#define MIN_BUFFER_SIZE 64
#define MAX_BUFFER_SIZE (1u << 20)
#define DEFAULT_DRAIN_MS 2000             /* --drain-ms: SIGTERM grace for queued echoes */
#define MAX_DRAIN_MS 60000
#define JOIN_SLACK_MS 3000                /* beyond the drain, how long main waits for workers */
#define LISTEN_BACKLOG 4096

/* ---------------------------------------------------------------- options */

struct server_options {
	struct endpoint ep;       /* --addr, --port */
	int threads;
	unsigned buffer_size;
	double stats_interval;
	unsigned drain_ms;
};

/* The long options of server_options, for the head of a server's getopt table. */
#define SERVER_LONGOPTS \
	{ "addr", required_argument, NULL, 'a' }, \
	{ "port", required_argument, NULL, 'p' }, \
	{ "threads", required_argument, NULL, 't' }, \
	{ "buffer-size", required_argument, NULL, 's' }, \
	{ "stats-interval", required_argument, NULL, 'i' }, \
	{ "drain-ms", required_argument, NULL, 'd' }, \
	{ "help", no_argument, NULL, 'h' }

COMMON void server_defaults(struct server_options *o, unsigned buffer_size)
{
	memset(o, 0, sizeof(*o));
	parse_addr(&o->ep, "127.0.0.1");
	o->ep.port = DEFAULT_PORT;
	o->threads = 1;
	o->buffer_size = buffer_size;
	o->drain_ms = DEFAULT_DRAIN_MS;
}

/* A parse_args take() for SERVER_LONGOPTS; `ctx` is the struct server_options. */
COMMON bool server_option(void *ctx, int ch, const char *arg)
{
	struct server_options *o = ctx;

	switch (ch) {
	case 'a': parse_addr(&o->ep, arg); return true;
	case 'p': o->ep.port = (int)parse_long("--port", arg, 0, 65535); return true;
	case 't': o->threads = (int)parse_long("--threads", arg, 1, MAX_THREADS); return true;
	case 's':
		o->buffer_size = (unsigned)parse_long("--buffer-size", arg, MIN_BUFFER_SIZE,
						      MAX_BUFFER_SIZE);
		return true;
	case 'i': o->stats_interval = parse_seconds("--stats-interval", arg, 0, 86400); return true;
	case 'd': o->drain_ms = (unsigned)parse_long("--drain-ms", arg, 0, MAX_DRAIN_MS); return true;
	}
	return false;
}

/* --help: these lines frame each server's own (--threads, --buffer-size and the rest). */
COMMON void server_usage_head(void)
{
	printf("usage: " PROG " [options]\n"
	       "  --addr ADDR            IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
	       "  --port PORT            TCP port, 0 picks a free one (default %d)\n",
	       DEFAULT_PORT);
}

COMMON void server_usage_tail(void)
{
	printf("  --stats-interval SEC   also print stats every SEC seconds (0 = off)\n"
	       "  --drain-ms MS          on SIGTERM/SIGINT, time allowed to flush echoes, 0..%d (default %d)\n"
	       "signals: SIGUSR1 prints stats; SIGINT/SIGTERM drain, close every connection, exit 0\n"
	       "example: " PROG " --port 0 --threads 2\n",
	       MAX_DRAIN_MS, DEFAULT_DRAIN_MS);
}

/* ---------------------------------------------------------------- listeners */

COMMON int bind_error(const struct endpoint *ep, int err)
{
	if (err == EADDRINUSE)
		fprintf(stderr, PROG ": error: port %d on %s is already in use; stop the other "
			"server or choose another --port\n", ep->port, ep->text);
	else if (err == EADDRNOTAVAIL)
		fprintf(stderr, PROG ": error: address %s is not configured on this host; "
			"choose a local --addr\n", ep->text);
	else if (err == EACCES)
		fprintf(stderr, PROG ": error: port %d needs CAP_NET_BIND_SERVICE; "
			"choose a --port above 1023\n", ep->port);
	else
		fprintf(stderr, PROG ": error: bind %s port %d: %s\n", ep->text, ep->port,
			strerror(err));
	return -1;
}

/*
 * A TCP socket bound to `ep` (extra socket(2) type flags in `sock_flags`, e.g.
 * SOCK_NONBLOCK). With `reuseport` it joins the SO_REUSEPORT group and listens; without,
 * it is only a probe that the port is free. Port 0: the kernel's pick is written back to
 * `ep`, so later listeners join it. Returns the fd, or -1 after one line on stderr.
 */
COMMON int open_listener(struct endpoint *ep, int sock_flags, bool reuseport)
{
	int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | sock_flags, 0);
	int one = 1, err;
	struct sockaddr_storage bound;
	socklen_t blen = sizeof(bound);

	if (fd < 0) {
		fprintf(stderr, PROG ": error: socket: %s\n", strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		fprintf(stderr, PROG ": error: SO_REUSEPORT: %s\n", strerror(errno));
		close(fd);
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&ep->addr, ep->addrlen) < 0) {
		err = errno;
		close(fd);
		return bind_error(ep, err);
	}
	if (ep->port == 0) {
		getsockname(fd, (struct sockaddr *)&bound, &blen);
		set_port(ep, ntohs(bound.ss_family == AF_INET
					   ? ((struct sockaddr_in *)&bound)->sin_port
					   : ((struct sockaddr_in6 *)&bound)->sin6_port));
	}
	if (reuseport && listen(fd, LISTEN_BACKLOG) < 0) {
		fprintf(stderr, PROG ": error: listen: %s\n", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* ---------------------------------------------------------------- life cycle */

/* Set by a worker that failed; main then exits 1 after stopping the others. */
static volatile sig_atomic_t g_failed __attribute__((unused));

/* A worker's fatal error: one line, then SIGTERM to ourselves wakes main's signal wait,
 * and main stops every worker. */
COMMON void thread_fail(int id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
COMMON void thread_fail(int id, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": error: thread %d: ", id);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	g_failed = 1;
	kill(getpid(), SIGTERM);
}

/* SIGINT, SIGTERM and SIGUSR1 blocked (call it before any thread starts, so every thread
 * inherits the mask) for main alone to take with wait_signal; SIGPIPE ignored. */
COMMON void block_signals(sigset_t *sigs)
{
	sigemptyset(sigs);
	sigaddset(sigs, SIGINT);
	sigaddset(sigs, SIGTERM);
	sigaddset(sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* The next signal of `sigs`, or 0 once `interval` seconds (if > 0) pass without one. */
COMMON int wait_signal(const sigset_t *sigs, double interval)
{
	struct timespec tmo;
	int sig;

	for (;;) {
		if (interval > 0) {
			tmo.tv_sec = (time_t)interval;
			tmo.tv_nsec = (long)((interval - (double)tmo.tv_sec) * 1e9);
			sig = sigtimedwait(sigs, NULL, &tmo);
		} else {
			sig = sigwaitinfo(sigs, NULL);
		}
		if (sig > 0)
			return sig;
		if (errno == EAGAIN)
			return 0;
	}
}

/* The CPUs this process may run on, into `cpus` (CPU_SETSIZE entries); how many. */
COMMON int allowed_cpus(int *cpus)
{
	cpu_set_t allowed;
	int i, n = 0;

	if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
		for (i = 0; i < CPU_SETSIZE; i++)
			if (CPU_ISSET(i, &allowed))
				cpus[n++] = i;
	return n;
}

/* A thread running fn(arg), pinned to `cpu` unless it is < 0; 0, or -1 after one line. */
COMMON int start_pinned(pthread_t *thread, int cpu, void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	cpu_set_t one;
	int err;

	pthread_attr_init(&attr);
	if (cpu >= 0) {
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
	}
	err = pthread_create(thread, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	if (err) {
		fprintf(stderr, PROG ": error: pthread_create: %s\n", strerror(err));
		return -1;
	}
	return 0;
}

/* Join worker `id`, already told to stop, within `ms`: one that hangs ends the process
 * (exit 1) rather than the server never exiting. */
COMMON void join_or_exit(pthread_t thread, int id, unsigned ms)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += ms / 1000 + 1;
	if (pthread_timedjoin_np(thread, NULL, &deadline) != 0) {
		fprintf(stderr, PROG ": error: thread %d did not stop in time\n", id);
		fflush(stdout);
		_exit(1);
	}
}

/* ---------------------------------------------------------------- workers and counters */

/* Counters: written by their worker only, read by main; relaxed atomics keep it defined.
 * `waits` and `events` are the engine's kernel entries and what they returned (io_uring
 * enters and CQEs, epoll_waits and events). */
struct server_stats {
	uint64_t accepted, closed, messages, bytes_in, sends, bytes_out, waits, events;
	uint64_t enobufs, short_sends, accept_emfile, accept_errors, recv_errors, send_errors;
	uint64_t pauses;
	uint64_t queued; /* gauge: bytes received and not yet echoed, all connections */
};
#define STAT_ADD(w, field, n) \
	__atomic_store_n(&(w)->base.stats.field, (w)->base.stats.field + (n), __ATOMIC_RELAXED)
#define STAT_SUB(w, field, n) \
	__atomic_store_n(&(w)->base.stats.field, (w)->base.stats.field - (n), __ATOMIC_RELAXED)
#define STAT_READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

COMMON void stats_add(struct server_stats *t, const struct server_stats *s)
{
	t->accepted += STAT_READ(s->accepted);
	t->closed += STAT_READ(s->closed);
	t->messages += STAT_READ(s->messages);
	t->bytes_in += STAT_READ(s->bytes_in);
	t->sends += STAT_READ(s->sends);
	t->bytes_out += STAT_READ(s->bytes_out);
	t->waits += STAT_READ(s->waits);
	t->events += STAT_READ(s->events);
	t->enobufs += STAT_READ(s->enobufs);
	t->short_sends += STAT_READ(s->short_sends);
	t->accept_emfile += STAT_READ(s->accept_emfile);
	t->accept_errors += STAT_READ(s->accept_errors);
	t->recv_errors += STAT_READ(s->recv_errors);
	t->send_errors += STAT_READ(s->send_errors);
	t->pauses += STAT_READ(s->pauses);
	t->queued += STAT_READ(s->queued);
}

/* The head of every server's worker struct (the member named `base`). */
struct server_worker {
	int id, cpu;
	int listen_fd, wake_fd;   /* its SO_REUSEPORT listener; an eventfd main writes to stop it */
	pthread_t thread;
	struct server_stats stats;
};

/* What a server adds to run_server(): hooks are called from main's thread. */
struct server_engine {
	const char *name;            /* "engine" in the JSON lines */
	size_t worker_size;          /* sizeof its worker struct */
	int sock_flags, wake_flags;  /* extra socket(2) type flags for listeners, eventfd flags */
	void *(*worker_main)(void *worker);
	/* Before the threads start (optional): 0, or -1 after one line on stderr. */
	int (*prepare)(struct server_worker *w, const void *opt);
	/* After `n` threads started (optional): 0 once every worker is set up, or -1. */
	int (*started)(void *workers, int n);
	/* The ready line's fields between "pid" and "drain_ms", each with its comma. */
	void (*ready_fields)(const void *workers, const void *opt, char *buf, size_t len);
	/* Add what a worker counts outside its server_stats (optional). */
	void (*count)(const struct server_worker *w, struct server_stats *t);
	/* The stats line's fields between "bytes_out" and "short_sends", each with its comma. */
	void (*stats_fields)(const struct server_stats *t, char *buf, size_t len);
	/* Main's clean-up of a worker that prepare() was called for (optional). */
	void (*release)(struct server_worker *w);
};

#define SERVER_WORKER(workers, size, i) ((struct server_worker *)((workers) + (size_t)(i) * (size)))

COMMON void print_stats(const struct server_engine *eng, char *workers, int n, double started,
			bool final)
{
	struct server_stats t;
	char fields[512];
	int i;

	memset(&t, 0, sizeof(t));
	for (i = 0; i < n; i++) {
		struct server_worker *w = SERVER_WORKER(workers, eng->worker_size, i);

		stats_add(&t, &w->stats);
		if (eng->count)
			eng->count(w, &t);
	}
	eng->stats_fields(&t, fields, sizeof(fields));
	printf("{\"event\":\"stats\",\"final\":%s,\"engine\":\"%s\",\"uptime_s\":%.3f,"
	       "\"threads\":%d,\"connections_accepted\":%llu,\"connections_open\":%llu,"
	       "\"connections_closed\":%llu,\"messages\":%llu,\"bytes_in\":%llu,\"sends\":%llu,"
	       "\"bytes_out\":%llu,%s\"short_sends\":%llu,\"accept_emfile\":%llu,"
	       "\"accept_errors\":%llu,\"recv_errors\":%llu,\"send_errors\":%llu,"
	       "\"backpressure_pauses\":%llu,\"bytes_queued\":%llu}\n",
	       final ? "true" : "false", eng->name, now_s() - started, n,
	       (unsigned long long)t.accepted, (unsigned long long)(t.accepted - t.closed),
	       (unsigned long long)t.closed, (unsigned long long)t.messages,
	       (unsigned long long)t.bytes_in, (unsigned long long)t.sends,
	       (unsigned long long)t.bytes_out, fields, (unsigned long long)t.short_sends,
	       (unsigned long long)t.accept_emfile, (unsigned long long)t.accept_errors,
	       (unsigned long long)t.recv_errors, (unsigned long long)t.send_errors,
	       (unsigned long long)t.pauses, (unsigned long long)t.queued);
	fflush(stdout);
}

/*
 * Everything of a server's main after its options: `opt` (the server's own options, whose
 * shared part is `so`) goes to the engine's hooks. Returns the exit status: 0 after
 * SIGINT/SIGTERM and a clean drain, 1 when set-up or a worker failed.
 */
COMMON int run_server(const struct server_engine *eng, struct server_options *so,
		      const void *opt)
{
	char *ws, fields[256];
	sigset_t sigs;
	int cpus[CPU_SETSIZE], ncpus, i, probe_fd, rc = 1, nprepared = 0, nstarted = 0;
	double started = now_s();

	/* Step 2: signals. Blocked in every thread; main alone takes them with sigtimedwait. */
	block_signals(&sigs);

	/* Step 3: listeners. A plain bind first, so a port held by anyone (even another
	 * SO_REUSEPORT group of ours) is reported instead of silently shared. */
	set_port(&so->ep, so->ep.port);
	ws = calloc((size_t)so->threads, eng->worker_size);
	if (!ws) {
		fprintf(stderr, PROG ": error: out of memory\n");
		return 1;
	}
	for (i = 0; i < so->threads; i++) {
		struct server_worker *w = SERVER_WORKER(ws, eng->worker_size, i);

		w->id = i;
		w->listen_fd = w->wake_fd = -1;
	}
	if (so->ep.port != 0) {
		probe_fd = open_listener(&so->ep, eng->sock_flags, false);
		if (probe_fd < 0)
			goto out;
		close(probe_fd);
	}
	for (i = 0; i < so->threads; i++) {
		struct server_worker *w = SERVER_WORKER(ws, eng->worker_size, i);

		w->listen_fd = open_listener(&so->ep, eng->sock_flags, true);
		if (w->listen_fd < 0)
			goto out;
		w->wake_fd = eventfd(0, EFD_CLOEXEC | eng->wake_flags);
		if (w->wake_fd < 0) {
			fprintf(stderr, PROG ": error: eventfd: %s\n", strerror(errno));
			goto out;
		}
		nprepared++;
		if (eng->prepare && eng->prepare(w, opt) < 0)
			goto out;
	}

	/* Step 4: one worker per listener, pinned round-robin to the CPUs we may use. */
	ncpus = allowed_cpus(cpus);
	for (i = 0; i < so->threads; i++) {
		struct server_worker *w = SERVER_WORKER(ws, eng->worker_size, i);

		w->cpu = ncpus ? cpus[i % ncpus] : -1;
		if (start_pinned(&w->thread, w->cpu, eng->worker_main, w) < 0)
			goto stop;
		nstarted++;
	}
	if (eng->started && eng->started(ws, nstarted) < 0)
		goto stop;

	/* Step 5: ready line, then serve until SIGINT/SIGTERM; SIGUSR1 prints stats. */
	eng->ready_fields(ws, opt, fields, sizeof(fields));
	printf("{\"event\":\"ready\",\"engine\":\"%s\",\"addr\":\"%s\",\"port\":%d,"
	       "\"threads\":%d,\"pid\":%d,%s\"drain_ms\":%u}\n",
	       eng->name, so->ep.text, so->ep.port, so->threads, (int)getpid(), fields,
	       so->drain_ms);
	fflush(stdout);
	for (;;) {
		int sig = wait_signal(&sigs, so->stats_interval);

		if (sig == SIGINT || sig == SIGTERM)
			break;
		print_stats(eng, ws, so->threads, started, false); /* SIGUSR1 or the interval */
	}
	rc = 0;

stop:
	/* Step 6: stop every worker (they drain, then close every connection) and wait. */
	for (i = 0; i < nstarted; i++) {
		struct server_worker *w = SERVER_WORKER(ws, eng->worker_size, i);
		uint64_t one = 1;

		if (write(w->wake_fd, &one, sizeof(one)) < 0)
			fprintf(stderr, PROG ": error: waking thread %d: %s\n", i, strerror(errno));
	}
	for (i = 0; i < nstarted; i++)
		join_or_exit(SERVER_WORKER(ws, eng->worker_size, i)->thread, i,
			     so->drain_ms + JOIN_SLACK_MS);
	if (rc == 0)
		print_stats(eng, ws, so->threads, started, true);
	if (g_failed)
		rc = 1;

out:
	/* Step 7: the single clean-up path for main's resources (workers closed their
	 * connections). */
	for (i = 0; i < so->threads; i++) {
		struct server_worker *w = SERVER_WORKER(ws, eng->worker_size, i);

		if (i < nprepared && eng->release)
			eng->release(w);
		if (w->listen_fd >= 0)
			close(w->listen_fd);
		if (w->wake_fd >= 0)
			close(w->wake_fd);
	}
	free(ws);
	return rc;
}

#endif /* FASTPATH_URING_SERVER_H */
