// SPDX-License-Identifier: GPL-2.0-only
/*
 * fastpath-echo-bench - a multi-threaded load generator for TCP echo servers.
 *
 * Purpose:    measure an echo server (fastpath-uring-echo, the Python engine, or any
 *             peer, directly or behind a load balancer) the same way every time: N
 *             connections, a message size, a pipelining depth, a warm-up and a measured
 *             duration. Every reply is read in full and checked byte for byte; the result
 *             is one JSON object on stdout with req/s, MB/s and p50/p99/p99.9/max latency.
 *             With --requests-per-conn N (--new-conn-per-request: N = 1) every connection
 *             is opened, carries N requests and is closed again, over and over: the
 *             report then also has conn/s and the latency of connect + exchange.
 * Techniques: one epoll loop per thread, connections spread round-robin; message bytes
 *             are a pure function of (connection, sequence number, offset), so neither
 *             side of the check needs a copy of what was sent; up to --depth messages
 *             are in flight per connection, each stamped when its first byte is written
 *             and measured when the last byte of its echo arrives; latencies go into a
 *             log-linear histogram (64 sub-buckets per power of two, < 1.6 % error)
 *             merged across threads. Counters reset when the warm-up ends. Churned
 *             connections connect without blocking (EPOLLOUT says when) and are closed
 *             with SO_LINGER 0 by default: a RST leaves no TIME_WAIT socket behind, so a
 *             long run at tens of thousands of conn/s never runs out of source ports
 *             (--close fin measures an orderly close instead, within the port budget).
 *             A failed churned connection is counted and replaced; a wrong byte is not.
 * Kernel:     any Linux with epoll.
 * Usage:      fastpath-echo-bench --port P [--addr 127.0.0.1] [--connections 64]
 *               [--threads 2] [--size 64] [--depth 1] [--duration 5] [--warmup 1]
 *               [--requests-per-conn N | --new-conn-per-request] [--close reset|fin]
 *             Exit status: 0 on success, 1 on a verification or connection failure,
 *             2 on bad options.
 * Test:       fastpath-uring-echo --port 7777 & fastpath-echo-bench --port 7777 --duration 2
 * One program: connection driver, pacing, latency histogram and report share its state;
 * the option parser and clock come from common.h.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Tunables. */
#define IO_CHUNK (64 * 1024)        /* bytes generated / read per syscall */
#define EPOLL_BATCH 256             /* events per epoll_wait */
#define TICK_MS 50                  /* epoll_wait timeout: how often the clock is checked */
#define HIST_SUB_BITS 6             /* 64 sub-buckets per power of two */
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)
#define MAX_CONNECTIONS 100000
#define MAX_THREADS 256
#define MAX_SIZE (1u << 20)
#define MAX_DEPTH 1024
#define MAX_INFLIGHT_BYTES (1ull << 32) /* connections x size x depth, a sanity cap */
#define MAX_REQUESTS_PER_CONN 1000000000

#define PROG "fastpath-echo-bench"

#include "common.h"

struct options {
	struct endpoint ep;        /* --addr, --port */
	int connections, threads;
	unsigned size, depth;
	unsigned requests_per_conn; /* 0: every connection lasts the whole run */
	bool close_fin;            /* churned connections end with FIN, not RST */
	double duration, warmup;
};

struct conn {
	int fd;
	uint32_t id;
	uint64_t tx_seq;   /* next message to start sending */
	uint32_t tx_off;   /* bytes of message tx_seq - 1 still being written, 0 when idle */
	bool tx_busy;      /* a message is partly written */
	uint64_t rx_seq;   /* message whose echo is arriving */
	uint32_t rx_off;
	uint64_t *sent_ns; /* ring of depth send timestamps */
	bool dead;         /* failed for good: no more traffic on this slot */
	bool want_out;     /* EPOLLOUT is in the interest set (the socket was full) */
	/* churn mode (--requests-per-conn) */
	bool connecting;   /* connect() in progress, EPOLLOUT reports the outcome */
	bool idle;         /* between connections: no socket, to be opened again */
	uint64_t first_seq;     /* first message of the current connection */
	uint64_t conn_start_ns; /* before socket(): what connect + exchange is measured from */
};

struct thread_state {
	int id, epfd;
	pthread_t thread;
	const struct options *opt;
	struct conn *conns;
	int nconns, nidle;
	unsigned char *scratch;
	/* results, measured after the warm-up */
	uint64_t requests, bytes, verify_failures, conn_errors;
	uint64_t hist[HIST_BUCKETS];
	uint64_t max_ns;
	uint64_t conns_done;        /* churned connections completed in the window */
	uint64_t conn_hist[HIST_BUCKETS];
	uint64_t conn_max_ns;
	char err[200];
};

static uint64_t g_start_ns, g_warm_ns, g_end_ns;

/* ---------------------------------------------------------------- payload pattern */

static inline uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Byte `off` of message `seq` on connection `id`: recomputable anywhere. */
static void pattern(uint32_t id, uint64_t seq, uint32_t off, unsigned char *out, uint32_t len)
{
	uint64_t key = ((uint64_t)id << 40) ^ (seq << 20), word = 0;
	uint32_t i, w = UINT32_MAX;

	for (i = 0; i < len; i++) {
		uint32_t o = off + i;

		if (o / 8 != w) {
			w = o / 8;
			word = splitmix64(key ^ ((uint64_t)w << 1));
		}
		out[i] = (unsigned char)(word >> (8 * (o % 8)));
	}
}

/* ---------------------------------------------------------------- histogram */

static unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return (msb - HIST_SUB_BITS + 1) * HIST_SUB + (unsigned)((v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

static uint64_t hist_value(unsigned idx)
{
	unsigned band = idx / HIST_SUB, sub = idx % HIST_SUB;

	if (band == 0)
		return sub;
	/* upper edge of the bucket: a conservative percentile */
	return ((uint64_t)(HIST_SUB + sub + 1) << (band - 1)) - 1;
}

static double percentile_us(const uint64_t *hist, uint64_t total, double p)
{
	uint64_t want = (uint64_t)((double)total * p), seen = 0;
	unsigned i;

	if (!total)
		return 0.0;
	if (want >= total)
		want = total - 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += hist[i];
		if (seen > want)
			return (double)hist_value(i) / 1000.0;
	}
	return 0.0;
}

/* ---------------------------------------------------------------- per-connection I/O */

static bool measuring(uint64_t now)
{
	return now >= g_warm_ns && now < g_end_ns;
}

static void record(uint64_t *hist, uint64_t *max_ns, uint64_t lat)
{
	hist[hist_index(lat)]++;
	if (lat > *max_ns)
		*max_ns = lat;
}

/* Churn mode: start the slot's next connection. Whatever fails at once is counted and the
 * slot left idle; the thread loop retries idle slots after its next wait. */
static void conn_open(struct thread_state *t, struct conn *c, uint64_t now)
{
	const struct options *o = t->opt;
	struct linger reset = { .l_onoff = 1, .l_linger = 0 };
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
	int one = 1, err;

	if (c->idle) {
		c->idle = false;
		t->nidle--;
	}
	c->conn_start_ns = now;
	c->first_seq = c->rx_seq = c->tx_seq;
	c->tx_off = c->rx_off = 0;
	c->tx_busy = false;
	c->fd = socket(o->ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		err = errno;
		goto fail;
	}
	/* A RST on close: the client keeps no TIME_WAIT socket, so no source port runs out. */
	if (!o->close_fin)
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (const struct sockaddr *)&o->ep.addr, o->ep.addrlen) < 0 &&
	    errno != EINPROGRESS) {
		err = errno;
		goto fail;
	}
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		err = errno;
		goto fail;
	}
	c->connecting = true;
	return;
fail:
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->idle = true;
	t->nidle++;
	t->conn_errors++;
	if (!t->err[0])
		snprintf(t->err, sizeof(t->err), "connection %u: connect: %s", c->id, strerror(err));
}

/* Churn mode: close the slot's connection (close() also leaves the epoll set) and, while
 * the run lasts, open the next. */
static void conn_recycle(struct thread_state *t, struct conn *c, uint64_t now)
{
	close(c->fd);
	c->fd = -1;
	c->connecting = false;
	if (now < g_end_ns)
		conn_open(t, c, now);
}

/* A connection failed. Churn mode replaces it unless the failure is `fatal` (a wrong
 * byte); otherwise the slot is dead for the rest of the run. Counted either way. */
static void conn_fail(struct thread_state *t, struct conn *c, const char *what, int err, bool fatal)
{
	if (c->dead)
		return;
	t->conn_errors++;
	if (!t->err[0])
		snprintf(t->err, sizeof(t->err), "connection %u: %s%s%s", c->id, what,
			 err ? ": " : "", err ? strerror(err) : "");
	if (t->opt->requests_per_conn && !fatal) {
		conn_recycle(t, c, now_ns());
		return;
	}
	c->dead = true;
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
}

/* Churn mode: the connection's last echo is in; connect + exchange is measured here. */
static void conn_done(struct thread_state *t, struct conn *c, uint64_t now)
{
	if (measuring(now) && c->conn_start_ns >= g_warm_ns) {
		t->conns_done++;
		record(t->conn_hist, &t->conn_max_ns, now - c->conn_start_ns);
	}
	conn_recycle(t, c, now);
}

/* EPOLLOUT or an error on a connecting socket: connect() has finished. A failed connect
 * always raises EPOLLERR or EPOLLHUP, so success costs no getsockopt. */
static void on_connected(struct thread_state *t, struct conn *c, uint32_t events)
{
	socklen_t len = sizeof(int);
	int err = 0;

	if (events & (EPOLLERR | EPOLLHUP)) {
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || !err)
			err = ECONNRESET;
		conn_fail(t, c, "connect", err, false);
		return;
	}
	c->connecting = false;
}

/* Write while the pipeline has room; returns false when the socket is full (or still
 * connecting). */
static bool pump_tx(struct thread_state *t, struct conn *c, uint64_t now)
{
	const struct options *o = t->opt;

	if (c->connecting || c->fd < 0)
		return false;
	while (!c->dead && now < g_end_ns) {
		uint32_t len;
		ssize_t n;

		if (!c->tx_busy) {
			if (c->tx_seq - c->rx_seq >= o->depth)
				return true;
			if (o->requests_per_conn && c->tx_seq - c->first_seq >= o->requests_per_conn)
				return true;
			c->sent_ns[c->tx_seq % o->depth] = now;
			c->tx_seq++;
			c->tx_off = 0;
			c->tx_busy = true;
		}
		len = o->size - c->tx_off;
		if (len > IO_CHUNK)
			len = IO_CHUNK;
		pattern(c->id, c->tx_seq - 1, c->tx_off, t->scratch, len);
		n = send(c->fd, t->scratch, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return false;
			conn_fail(t, c, "send", errno, false);
			return false;
		}
		c->tx_off += (uint32_t)n;
		if (c->tx_off == o->size)
			c->tx_busy = false;
	}
	return true;
}

static void pump_rx(struct thread_state *t, struct conn *c)
{
	const struct options *o = t->opt;
	unsigned char expect[IO_CHUNK];
	bool avail = true;

	/* A short read drained the socket: level-triggered epoll reports the next bytes, so
	 * no second recv() just to collect EAGAIN (a syscall per reply the servers would
	 * otherwise be measured against). */
	while (!c->dead && avail) {
		ssize_t n = recv(c->fd, t->scratch, IO_CHUNK, MSG_DONTWAIT);
		ssize_t pos = 0;

		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				conn_fail(t, c, "recv", errno, false);
			return;
		}
		if (n == 0) {
			conn_fail(t, c, "server closed the connection", 0, false);
			return;
		}
		avail = n == IO_CHUNK;
		while (pos < n) {
			uint32_t len = o->size - c->rx_off;
			uint64_t now;

			if ((ssize_t)len > n - pos)
				len = (uint32_t)(n - pos);
			if (c->rx_seq >= c->tx_seq) {
				t->verify_failures++;
				conn_fail(t, c, "echo of bytes never sent", 0, true);
				return;
			}
			pattern(c->id, c->rx_seq, c->rx_off, expect, len);
			if (memcmp(expect, t->scratch + pos, len) != 0) {
				t->verify_failures++;
				conn_fail(t, c, "echoed bytes differ from the bytes sent", 0, true);
				return;
			}
			pos += len;
			c->rx_off += len;
			if (c->rx_off < o->size)
				continue;
			now = now_ns();
			if (measuring(now) && c->sent_ns[c->rx_seq % o->depth] >= g_warm_ns) {
				t->requests++;
				t->bytes += o->size;
				record(t->hist, &t->max_ns, now - c->sent_ns[c->rx_seq % o->depth]);
			}
			c->rx_seq++;
			c->rx_off = 0;
			if (o->requests_per_conn && c->rx_seq - c->first_seq == o->requests_per_conn) {
				if (pos < n) {
					t->verify_failures++;
					conn_fail(t, c, "echo of bytes never sent", 0, true);
					return;
				}
				conn_done(t, c, now);
				return;
			}
		}
	}
}

/* Only a change of interest costs an epoll_ctl: once per full socket, not per reply.
 * Churned sockets never need one: they wait edge-triggered for both directions (a short
 * read has drained the socket; EPOLLOUT comes only after a send found it full). */
static void update_interest(struct thread_state *t, struct conn *c, bool want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c };

	if (c->dead || c->fd < 0 || t->opt->requests_per_conn || c->want_out == want_out)
		return;
	c->want_out = want_out;
	epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void *thread_main(void *arg)
{
	struct thread_state *t = arg;
	struct epoll_event evs[EPOLL_BATCH];
	int i, n;

	/* Step 1: start every connection's pipeline (churn mode: its first connect). */
	for (i = 0; i < t->nconns; i++) {
		if (t->opt->requests_per_conn)
			conn_open(t, &t->conns[i], now_ns());
		else
			update_interest(t, &t->conns[i], !pump_tx(t, &t->conns[i], now_ns()));
	}
	/* Step 2: the event loop, until the measured window closes. */
	for (;;) {
		uint64_t now = now_ns();

		if (now >= g_end_ns)
			break;
		n = epoll_wait(t->epfd, evs, EPOLL_BATCH, TICK_MS);
		if (n < 0 && errno != EINTR) {
			snprintf(t->err, sizeof(t->err), "epoll_wait: %s", strerror(errno));
			break;
		}
		for (i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			uint32_t e = evs[i].events;

			if (c->connecting) {
				on_connected(t, c, e);
				e &= EPOLLIN; /* bytes already there: edge-triggered, the only notice */
			}
			if (!c->connecting && c->fd >= 0 && (e & (EPOLLIN | EPOLLERR | EPOLLHUP)))
				pump_rx(t, c);
			if (!c->dead)
				update_interest(t, c, !pump_tx(t, c, now_ns()));
		}
		for (i = 0; t->nidle && i < t->nconns; i++)
			if (t->conns[i].idle && now_ns() < g_end_ns)
				conn_open(t, &t->conns[i], now_ns());
	}
	return NULL;
}

/* ---------------------------------------------------------------- options and set-up */

static void usage(void)
{
	printf("usage: " PROG " --port PORT [options]\n"
	       "  --addr ADDR              server address, IPv4 or IPv6 (default 127.0.0.1)\n"
	       "  --port PORT              server port (required)\n"
	       "  --connections N          concurrent connections, 1..%d (default 64)\n"
	       "  --threads N              client threads, 1..%d (default 2, at most connections)\n"
	       "  --size BYTES             message size, 1..%u (default 64)\n"
	       "  --depth N                messages in flight per connection, 1..%d (default 1)\n"
	       "  --duration SEC           measured time (default 5)\n"
	       "  --warmup SEC             unmeasured time first (default 1)\n"
	       "  --requests-per-conn N    close each connection after N requests and open a new\n"
	       "                           one, 0..%d (default 0: connections last the whole run)\n"
	       "  --new-conn-per-request   the same as --requests-per-conn 1: connect, one request,\n"
	       "                           the full reply, close\n"
	       "  --close reset|fin        how churned connections end: reset (SO_LINGER 0, no\n"
	       "                           TIME_WAIT, the default) or fin (an orderly close)\n"
	       "output: one JSON object (with conn/s and connect+exchange latency when connections\n"
	       "churn); exit 1 if any echo differs or a connection fails\n"
	       "example: " PROG " --port 7777 --connections 100 --size 512 --depth 8\n"
	       "         " PROG " --port 7777 --connections 32 --new-conn-per-request\n",
	       MAX_CONNECTIONS, MAX_THREADS, MAX_SIZE, MAX_DEPTH, MAX_REQUESTS_PER_CONN);
}

static bool take_option(void *ctx, int ch, const char *arg)
{
	struct options *o = ctx;

	switch (ch) {
	case 'a': parse_addr(&o->ep, arg); return true;
	case 'p': o->ep.port = (int)parse_long("--port", arg, 1, 65535); return true;
	case 'c': o->connections = (int)parse_long("--connections", arg, 1, MAX_CONNECTIONS); return true;
	case 't': o->threads = (int)parse_long("--threads", arg, 1, MAX_THREADS); return true;
	case 's': o->size = (unsigned)parse_long("--size", arg, 1, MAX_SIZE); return true;
	case 'd': o->depth = (unsigned)parse_long("--depth", arg, 1, MAX_DEPTH); return true;
	case 'D': o->duration = parse_seconds("--duration", arg, 0.1, 86400); return true;
	case 'w': o->warmup = parse_seconds("--warmup", arg, 0, 3600); return true;
	case 'r':
		o->requests_per_conn = (unsigned)parse_long("--requests-per-conn", arg, 0,
							    MAX_REQUESTS_PER_CONN);
		return true;
	case 'n': o->requests_per_conn = 1; return true;
	case 'C':
		if (strcmp(arg, "reset") && strcmp(arg, "fin"))
			die_usage("--close %s: expected reset or fin", arg);
		o->close_fin = !strcmp(arg, "fin");
		return true;
	}
	return false;
}

static void parse_options(struct options *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "port", required_argument, NULL, 'p' },
		{ "connections", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "size", required_argument, NULL, 's' },
		{ "depth", required_argument, NULL, 'd' },
		{ "duration", required_argument, NULL, 'D' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "requests-per-conn", required_argument, NULL, 'r' },
		{ "new-conn-per-request", no_argument, NULL, 'n' },
		{ "close", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};

	memset(o, 0, sizeof(*o));
	parse_addr(&o->ep, "127.0.0.1");
	o->ep.port = -1;
	o->connections = 64;
	o->threads = 2;
	o->size = 64;
	o->depth = 1;
	o->duration = 5;
	o->warmup = 1;
	parse_args(argc, argv, longopts, usage, take_option, o);
	if (o->ep.port < 0)
		die_usage("--port is required (the echo server's port)");
	if ((unsigned long long)o->connections * o->size * o->depth > MAX_INFLIGHT_BYTES)
		die_usage("--connections x --size x --depth exceeds %llu bytes in flight",
			  MAX_INFLIGHT_BYTES);
	if (o->threads > o->connections)
		o->threads = o->connections;
	set_port(&o->ep, o->ep.port);
}

/* A blocking connect: every persistent connection, and churn mode's first probe. */
static int open_conn(const struct options *o, struct conn *c)
{
	int one = 1;

	c->fd = socket(o->ep.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	if (connect(c->fd, (const struct sockaddr *)&o->ep.addr, o->ep.addrlen) < 0) {
		int err = errno;

		close(c->fd);
		c->fd = -1;
		return -err;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return 0;
}

int main(int argc, char **argv)
{
	struct options opt;
	struct thread_state *ts = NULL;
	struct conn *conns = NULL;
	uint64_t *stamps = NULL, total_hist[HIST_BUCKETS], conn_hist[HIST_BUCKETS];
	uint64_t requests = 0, bytes = 0, vfail = 0, cerr = 0, max_ns = 0, nconns = 0;
	uint64_t conn_max_ns = 0;
	const char *first_err = NULL;
	bool churn;
	double secs;
	int i, rc = 1, ret;

	/* Step 1: options. */
	parse_options(&opt, argc, argv);
	churn = opt.requests_per_conn > 0;
	signal(SIGPIPE, SIG_IGN);

	/* Step 2: connections, all established before the clock starts. Churn mode opens
	 * its own as it goes; one probe first, so an unreachable server is one clear line. */
	conns = calloc((size_t)opt.connections, sizeof(*conns));
	stamps = calloc((size_t)opt.connections * opt.depth, sizeof(*stamps));
	ts = calloc((size_t)opt.threads, sizeof(*ts));
	if (!conns || !stamps || !ts) {
		fprintf(stderr, PROG ": error: out of memory\n");
		goto out;
	}
	for (i = 0; i < opt.threads; i++)
		ts[i].epfd = -1;
	for (i = 0; i < opt.connections; i++)
		conns[i].fd = -1;
	for (i = 0; i < opt.connections; i++) {
		conns[i].id = (uint32_t)i;
		conns[i].sent_ns = stamps + (size_t)i * opt.depth;
		if (churn && i > 0)
			continue;
		ret = open_conn(&opt, &conns[i]);
		if (ret < 0) {
			fprintf(stderr, PROG ": error: connect to %s port %d (connection %d): %s\n",
				opt.ep.text, opt.ep.port, i, strerror(-ret));
			goto out;
		}
		if (churn) {
			struct linger reset = { .l_onoff = 1, .l_linger = 0 };

			setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
			close(conns[i].fd);
			conns[i].fd = -1;
		}
	}

	/* Step 3: threads, each with its own epoll set and slice of the connections. */
	for (i = 0; i < opt.threads; i++) {
		ts[i].id = i;
		ts[i].opt = &opt;
	}
	for (i = 0; i < opt.threads; i++) {
		struct thread_state *t = &ts[i];
		int per = opt.connections / opt.threads, extra = opt.connections % opt.threads;
		int first = i * per + (i < extra ? i : extra), j;

		t->nconns = per + (i < extra);
		t->conns = &conns[first];
		t->scratch = malloc(IO_CHUNK);
		t->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (!t->scratch || t->epfd < 0) {
			fprintf(stderr, PROG ": error: thread set-up: %s\n", strerror(errno));
			goto out;
		}
		for (j = 0; j < t->nconns && !churn; j++) {
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &t->conns[j] };

			epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->conns[j].fd, &ev);
		}
	}
	g_start_ns = now_ns();
	g_warm_ns = g_start_ns + (uint64_t)(opt.warmup * 1e9);
	g_end_ns = g_warm_ns + (uint64_t)(opt.duration * 1e9);
	for (i = 0; i < opt.threads; i++) {
		if (pthread_create(&ts[i].thread, NULL, thread_main, &ts[i]) != 0) {
			fprintf(stderr, PROG ": error: pthread_create failed\n");
			g_end_ns = 0; /* stop the ones already running */
			while (--i >= 0)
				pthread_join(ts[i].thread, NULL);
			goto out;
		}
	}
	for (i = 0; i < opt.threads; i++)
		pthread_join(ts[i].thread, NULL);

	/* Step 4: merge and report. */
	memset(total_hist, 0, sizeof(total_hist));
	memset(conn_hist, 0, sizeof(conn_hist));
	for (i = 0; i < opt.threads; i++) {
		unsigned b;

		requests += ts[i].requests;
		bytes += ts[i].bytes;
		vfail += ts[i].verify_failures;
		cerr += ts[i].conn_errors;
		nconns += ts[i].conns_done;
		if (ts[i].max_ns > max_ns)
			max_ns = ts[i].max_ns;
		if (ts[i].conn_max_ns > conn_max_ns)
			conn_max_ns = ts[i].conn_max_ns;
		for (b = 0; b < HIST_BUCKETS; b++) {
			total_hist[b] += ts[i].hist[b];
			conn_hist[b] += ts[i].conn_hist[b];
		}
		if (!first_err && ts[i].err[0])
			first_err = ts[i].err;
	}
	secs = opt.duration;
	printf("{\"tool\":\"" PROG "\",\"addr\":\"%s\",\"port\":%d,\"connections\":%d,"
	       "\"threads\":%d,\"size\":%u,\"depth\":%u,\"requests_per_conn\":%u,"
	       "\"warmup_s\":%g,\"duration_s\":%g,"
	       "\"requests\":%llu,\"req_per_s\":%.1f,\"bytes\":%llu,\"mb_per_s\":%.3f,"
	       "\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},",
	       opt.ep.text, opt.ep.port, opt.connections, opt.threads, opt.size, opt.depth,
	       opt.requests_per_conn, opt.warmup, opt.duration, (unsigned long long)requests,
	       (double)requests / secs, (unsigned long long)bytes, (double)bytes / secs / 1e6,
	       percentile_us(total_hist, requests, 0.50), percentile_us(total_hist, requests, 0.99),
	       percentile_us(total_hist, requests, 0.999), (double)max_ns / 1000.0);
	if (churn)
		printf("\"close\":\"%s\",\"conns\":%llu,\"conn_per_s\":%.1f,"
		       "\"conn_latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},",
		       opt.close_fin ? "fin" : "reset", (unsigned long long)nconns,
		       (double)nconns / secs, percentile_us(conn_hist, nconns, 0.50),
		       percentile_us(conn_hist, nconns, 0.99), percentile_us(conn_hist, nconns, 0.999),
		       (double)conn_max_ns / 1000.0);
	printf("\"verify_failures\":%llu,\"connection_errors\":%llu,\"ok\":%s}\n",
	       (unsigned long long)vfail, (unsigned long long)cerr,
	       (vfail || cerr || !requests) ? "false" : "true");
	fflush(stdout);
	if (first_err)
		fprintf(stderr, PROG ": error: %s\n", first_err);
	else if (!requests)
		fprintf(stderr, PROG ": error: no request completed in the measured window\n");
	rc = (vfail || cerr || !requests) ? 1 : 0;

out:
	/* Step 5: the single clean-up path (churned sockets carry SO_LINGER 0: a RST). */
	if (conns)
		for (i = 0; i < opt.connections; i++)
			if (conns[i].fd >= 0)
				close(conns[i].fd);
	if (ts)
		for (i = 0; i < opt.threads; i++) {
			if (ts[i].epfd >= 0)
				close(ts[i].epfd);
			free(ts[i].scratch);
		}
	free(ts);
	free(conns);
	free(stamps);
	return rc;
}
