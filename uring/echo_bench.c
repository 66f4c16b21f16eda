// SPDX-License-Identifier: GPL-2.0-only
/*
 * fastpath-echo-bench - a multi-threaded load generator for TCP echo servers.
 *
 * Purpose:    measure an echo server (fastpath-uring-echo, the Python engine, or any
 *             peer) the same way every time: N connections, a message size, a pipelining
 *             depth, a warm-up and a measured duration. Every reply is read in full and
 *             checked byte for byte; the result is one JSON object on stdout with
 *             req/s, MB/s and p50/p99/p99.9/max latency.
 * Techniques: one epoll loop per thread, connections spread round-robin; message bytes
 *             are a pure function of (connection, sequence number, offset), so neither
 *             side of the check needs a copy of what was sent; up to --depth messages
 *             are in flight per connection, each stamped when its first byte is written
 *             and measured when the last byte of its echo arrives; latencies go into a
 *             log-linear histogram (64 sub-buckets per power of two, < 1.6 % error)
 *             merged across threads. Counters reset when the warm-up ends.
 * Kernel:     any Linux with epoll.
 * Usage:      fastpath-echo-bench --port P [--addr 127.0.0.1] [--connections 64]
 *               [--threads 2] [--size 64] [--depth 1] [--duration 5] [--warmup 1]
 *             Exit status: 0 on success, 1 on a verification or connection failure,
 *             2 on bad options.
 * Test:       fastpath-uring-echo --port 7777 & fastpath-echo-bench --port 7777 --duration 2
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

#define PROG "fastpath-echo-bench"

struct options {
	char addr_text[INET6_ADDRSTRLEN + 2];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int port;
	int connections, threads;
	unsigned size, depth;
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
	bool dead;
	bool want_out;     /* EPOLLOUT is in the interest set (the socket was full) */
};

struct thread_state {
	int id, epfd;
	pthread_t thread;
	const struct options *opt;
	struct conn *conns;
	int nconns;
	unsigned char *scratch;
	/* results, measured after the warm-up */
	uint64_t requests, bytes, verify_failures, conn_errors;
	uint64_t hist[HIST_BUCKETS];
	uint64_t max_ns;
	char err[200];
};

static uint64_t g_start_ns, g_warm_ns, g_end_ns;

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": error: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

static void conn_fail(struct thread_state *t, struct conn *c, const char *what, int err)
{
	if (c->dead)
		return;
	c->dead = true;
	epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	t->conn_errors++;
	if (!t->err[0])
		snprintf(t->err, sizeof(t->err), "connection %u: %s%s%s", c->id, what,
			 err ? ": " : "", err ? strerror(err) : "");
}

static bool measuring(uint64_t now)
{
	return now >= g_warm_ns && now < g_end_ns;
}

/* Write while the pipeline has room; returns false when the socket is full. */
static bool pump_tx(struct thread_state *t, struct conn *c, uint64_t now)
{
	const struct options *o = t->opt;

	while (!c->dead && now < g_end_ns) {
		uint32_t len;
		ssize_t n;

		if (!c->tx_busy) {
			if (c->tx_seq - c->rx_seq >= o->depth)
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
			conn_fail(t, c, "send", errno);
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
				conn_fail(t, c, "recv", errno);
			return;
		}
		if (n == 0) {
			conn_fail(t, c, "server closed the connection", 0);
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
				conn_fail(t, c, "echo of bytes never sent", 0);
				return;
			}
			pattern(c->id, c->rx_seq, c->rx_off, expect, len);
			if (memcmp(expect, t->scratch + pos, len) != 0) {
				t->verify_failures++;
				conn_fail(t, c, "echoed bytes differ from the bytes sent", 0);
				return;
			}
			pos += len;
			c->rx_off += len;
			if (c->rx_off < o->size)
				continue;
			now = now_ns();
			if (measuring(now) && c->sent_ns[c->rx_seq % o->depth] >= g_warm_ns) {
				uint64_t lat = now - c->sent_ns[c->rx_seq % o->depth];

				t->requests++;
				t->bytes += o->size;
				t->hist[hist_index(lat)]++;
				if (lat > t->max_ns)
					t->max_ns = lat;
			}
			c->rx_seq++;
			c->rx_off = 0;
		}
	}
}

/* Only a change of interest costs an epoll_ctl: once per full socket, not per reply. */
static void update_interest(struct thread_state *t, struct conn *c, bool want_out)
{
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c };

	if (c->dead || c->want_out == want_out)
		return;
	c->want_out = want_out;
	epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void *thread_main(void *arg)
{
	struct thread_state *t = arg;
	struct epoll_event evs[EPOLL_BATCH];
	int i, n;

	/* Step 1: start every connection's pipeline. */
	for (i = 0; i < t->nconns; i++)
		update_interest(t, &t->conns[i], !pump_tx(t, &t->conns[i], now_ns()));
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

			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				pump_rx(t, c);
			if (!c->dead)
				update_interest(t, c, !pump_tx(t, c, now_ns()));
		}
	}
	return NULL;
}

/* ---------------------------------------------------------------- options and set-up */

static long parse_long(const char *opt, const char *text, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < lo || v > hi)
		die_usage("%s %s: expected an integer in %ld..%ld", opt, text, lo, hi);
	return v;
}

static double parse_seconds(const char *opt, const char *text, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || !(v >= lo) || v > hi)
		die_usage("%s %s: expected seconds in %g..%g", opt, text, lo, hi);
	return v;
}

static void parse_addr(struct options *o, const char *text)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t len = strlen(text);
	struct sockaddr_in *in4 = (struct sockaddr_in *)&o->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&o->addr;

	if (len >= sizeof(buf))
		die_usage("--addr %s: not an IPv4 or IPv6 address", text);
	memcpy(buf, text, len + 1);
	if (len > 2 && buf[0] == '[' && buf[len - 1] == ']') {
		memmove(buf, buf + 1, len - 2);
		buf[len - 2] = '\0';
	}
	memset(&o->addr, 0, sizeof(o->addr));
	if (inet_pton(AF_INET, buf, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		o->addrlen = sizeof(*in4);
	} else if (inet_pton(AF_INET6, buf, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		o->addrlen = sizeof(*in6);
	} else {
		die_usage("--addr %s: not an IPv4 or IPv6 address", text);
	}
	snprintf(o->addr_text, sizeof(o->addr_text), "%s", buf);
}

static void usage(void)
{
	printf("usage: " PROG " --port PORT [options]\n"
	       "  --addr ADDR          server address, IPv4 or IPv6 (default 127.0.0.1)\n"
	       "  --port PORT          server port (required)\n"
	       "  --connections N      concurrent connections, 1..%d (default 64)\n"
	       "  --threads N          client threads, 1..%d (default 2, at most connections)\n"
	       "  --size BYTES         message size, 1..%u (default 64)\n"
	       "  --depth N            messages in flight per connection, 1..%d (default 1)\n"
	       "  --duration SEC       measured time (default 5)\n"
	       "  --warmup SEC         unmeasured time first (default 1)\n"
	       "output: one JSON object; exit 1 if any echo differs or a connection fails\n"
	       "example: " PROG " --port 7777 --connections 100 --size 512 --depth 8\n",
	       MAX_CONNECTIONS, MAX_THREADS, MAX_SIZE, MAX_DEPTH);
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
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	memset(o, 0, sizeof(*o));
	parse_addr(o, "127.0.0.1");
	o->port = -1;
	o->connections = 64;
	o->threads = 2;
	o->size = 64;
	o->depth = 1;
	o->duration = 5;
	o->warmup = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a': parse_addr(o, optarg); break;
		case 'p': o->port = (int)parse_long("--port", optarg, 1, 65535); break;
		case 'c': o->connections = (int)parse_long("--connections", optarg, 1, MAX_CONNECTIONS); break;
		case 't': o->threads = (int)parse_long("--threads", optarg, 1, MAX_THREADS); break;
		case 's': o->size = (unsigned)parse_long("--size", optarg, 1, MAX_SIZE); break;
		case 'd': o->depth = (unsigned)parse_long("--depth", optarg, 1, MAX_DEPTH); break;
		case 'D': o->duration = parse_seconds("--duration", optarg, 0.1, 86400); break;
		case 'w': o->warmup = parse_seconds("--warmup", optarg, 0, 3600); break;
		case 'h': usage(); exit(0);
		default:
			if (optopt)
				die_usage("option %s needs a value (see --help)", argv[optind - 1]);
			die_usage("unknown option %s (see --help)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die_usage("unexpected argument %s (see --help)", argv[optind]);
	if (o->port < 0)
		die_usage("--port is required (the echo server's port)");
	if ((unsigned long long)o->connections * o->size * o->depth > MAX_INFLIGHT_BYTES)
		die_usage("--connections x --size x --depth exceeds %llu bytes in flight",
			  MAX_INFLIGHT_BYTES);
	if (o->threads > o->connections)
		o->threads = o->connections;
	if (o->addr.ss_family == AF_INET)
		((struct sockaddr_in *)&o->addr)->sin_port = htons((uint16_t)o->port);
	else
		((struct sockaddr_in6 *)&o->addr)->sin6_port = htons((uint16_t)o->port);
}

static int open_conn(const struct options *o, struct conn *c)
{
	int one = 1;

	c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	if (connect(c->fd, (const struct sockaddr *)&o->addr, o->addrlen) < 0) {
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
	uint64_t *stamps = NULL, total_hist[HIST_BUCKETS], requests = 0, bytes = 0, vfail = 0;
	uint64_t cerr = 0, max_ns = 0;
	const char *first_err = NULL;
	double secs;
	int i, rc = 1, ret;

	/* Step 1: options. */
	parse_options(&opt, argc, argv);
	signal(SIGPIPE, SIG_IGN);

	/* Step 2: connections, all established before the clock starts. */
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
		ret = open_conn(&opt, &conns[i]);
		if (ret < 0) {
			fprintf(stderr, PROG ": error: connect to %s port %d (connection %d): %s\n",
				opt.addr_text, opt.port, i, strerror(-ret));
			goto out;
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
		for (j = 0; j < t->nconns; j++) {
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
	for (i = 0; i < opt.threads; i++) {
		unsigned b;

		requests += ts[i].requests;
		bytes += ts[i].bytes;
		vfail += ts[i].verify_failures;
		cerr += ts[i].conn_errors;
		if (ts[i].max_ns > max_ns)
			max_ns = ts[i].max_ns;
		for (b = 0; b < HIST_BUCKETS; b++)
			total_hist[b] += ts[i].hist[b];
		if (!first_err && ts[i].err[0])
			first_err = ts[i].err;
	}
	secs = opt.duration;
	printf("{\"tool\":\"" PROG "\",\"addr\":\"%s\",\"port\":%d,\"connections\":%d,"
	       "\"threads\":%d,\"size\":%u,\"depth\":%u,\"warmup_s\":%g,\"duration_s\":%g,"
	       "\"requests\":%llu,\"req_per_s\":%.1f,\"bytes\":%llu,\"mb_per_s\":%.3f,"
	       "\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},"
	       "\"verify_failures\":%llu,\"connection_errors\":%llu,\"ok\":%s}\n",
	       opt.addr_text, opt.port, opt.connections, opt.threads, opt.size, opt.depth,
	       opt.warmup, opt.duration, (unsigned long long)requests, (double)requests / secs,
	       (unsigned long long)bytes, (double)bytes / secs / 1e6,
	       percentile_us(total_hist, requests, 0.50), percentile_us(total_hist, requests, 0.99),
	       percentile_us(total_hist, requests, 0.999), (double)max_ns / 1000.0,
	       (unsigned long long)vfail, (unsigned long long)cerr,
	       (vfail || cerr || !requests) ? "false" : "true");
	fflush(stdout);
	if (first_err)
		fprintf(stderr, PROG ": error: %s\n", first_err);
	else if (!requests)
		fprintf(stderr, PROG ": error: no request completed in the measured window\n");
	rc = (vfail || cerr || !requests) ? 1 : 0;

out:
	/* Step 5: the single clean-up path. */
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
