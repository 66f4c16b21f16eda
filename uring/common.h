/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * common.h - what fastpath-uring-echo, fastpath-epoll-echo and fastpath-echo-bench share:
 *            the endpoint they listen on or connect to, their command lines (a getopt
 *            loop, option values parsed with range checks) and the clock. The two servers
 *            add server.h on top.
 *
 * User space only; every function is static (COMMON: unused ones draw no warning), so each
 * program compiles its own copy and PROG can name it in every message. Define PROG (the
 * program's name) before including it. Bad options exit 2 with one line on stderr.
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
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define COMMON static __attribute__((unused))

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
		if (optopt)
			die_usage("option %s needs a value (see --help)", argv[optind - 1]);
		die_usage("unknown option %s (see --help)", argv[optind - 1]);
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

#endif /* FASTPATH_URING_COMMON_H */
