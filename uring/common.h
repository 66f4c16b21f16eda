/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * common.h - what fastpath-uring-echo, fastpath-epoll-echo and fastpath-echo-bench share:
 *            the endpoint they listen on or connect to, a getopt loop and option values
 *            parsed with range checks, the listener with its one-line bind errors, and
 *            the servers' life cycle around their workers (signals, pinned threads, a
 *            bounded stop).
 *
 * User space only; every function is static (COMMON: unused ones draw no warning), so each
 * program keeps its own copy and the build stays one translation unit per binary. Define PROG (the program's name, used in
 * every message) before including it. Bad options exit 2 with one line on stderr.
 */
#ifndef FASTPATH_URING_COMMON_H
#define FASTPATH_URING_COMMON_H

#ifndef PROG
#error "define PROG (the program's name) before including common.h"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define COMMON static __attribute__((unused))

#ifndef LISTEN_BACKLOG
#define LISTEN_BACKLOG 4096
#endif

/* An address and port as the user gave them (--addr, --port) and as sockets take them. */
struct endpoint {
	char text[INET6_ADDRSTRLEN + 2];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int port;
};

COMMON void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
COMMON void die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": error: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* getopt_long returned '?' or ':' (opterr = 0): say which option and why. */
COMMON void die_bad_option(char **argv) __attribute__((noreturn));
COMMON void die_bad_option(char **argv)
{
	if (optopt)
		die_usage("option %s needs a value (see --help)", argv[optind - 1]);
	die_usage("unknown option %s (see --help)", argv[optind - 1]);
}

/*
 * The command line, long options only: each option of `longopts` goes to take(ctx, its
 * val, its value), which returns false for one it does not know; --help (val 'h') prints
 * usage() and exits 0. An unknown option, a missing value or a stray argument exits 2
 * with one line that names it.
 */
COMMON void parse_args(int argc, char **argv, const struct option *longopts, void (*usage)(void),
		       bool (*take)(void *ctx, int ch, const char *arg), void *ctx)
{
	int ch;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (ch == 'h') {
			usage();
			exit(0);
		}
		if (ch != '?' && ch != ':' && take(ctx, ch, optarg))
			continue;
		die_bad_option(argv);
	}
	if (optind < argc)
		die_usage("unexpected argument %s (see --help)", argv[optind]);
}

COMMON long parse_long(const char *opt, const char *text, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < lo || v > hi)
		die_usage("%s %s: expected an integer in %ld..%ld", opt, text, lo, hi);
	return v;
}

COMMON double parse_seconds(const char *opt, const char *text, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !(v >= lo) || v > hi)
		die_usage("%s %s: expected seconds in %g..%g", opt, text, lo, hi);
	return v;
}

/* IPv4 or IPv6 literal, brackets allowed around IPv6; the port is left as it was. */
COMMON void parse_addr(struct endpoint *ep, const char *text)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t len = strlen(text);
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ep->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ep->addr;

	if (len >= sizeof(buf))
		die_usage("--addr %s: not an IPv4 or IPv6 address", text);
	memcpy(buf, text, len + 1);
	if (len > 2 && buf[0] == '[' && buf[len - 1] == ']') {
		memmove(buf, buf + 1, len - 2);
		buf[len - 2] = '\0';
	}
	memset(&ep->addr, 0, sizeof(ep->addr));
	if (inet_pton(AF_INET, buf, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		ep->addrlen = sizeof(*in4);
	} else if (inet_pton(AF_INET6, buf, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		ep->addrlen = sizeof(*in6);
	} else {
		die_usage("--addr %s: not an IPv4 or IPv6 address (e.g. 127.0.0.1, ::1, 0.0.0.0)",
			  text);
	}
	snprintf(ep->text, sizeof(ep->text), "%s", buf);
}

COMMON void set_port(struct endpoint *ep, int port)
{
	ep->port = port;
	if (ep->addr.ss_family == AF_INET)
		((struct sockaddr_in *)&ep->addr)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)&ep->addr)->sin6_port = htons((uint16_t)port);
}

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

/* ---------------------------------------------------------------- server life cycle */

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

/* Monotonic time: ns for latencies and deadlines, seconds for uptimes. */
COMMON uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

COMMON double now_s(void)
{
	return (double)now_ns() / 1e9;
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

#endif /* FASTPATH_URING_COMMON_H */
