// SPDX-License-Identifier: GPL-2.0-only
/*
 * fastpath-l2fwd: a layer-2 forwarder for DPDK ports, driven by `fastpath dpdk l2fwd run`.
 *
 * Every frame received on a port is sent out of its paired port. Ports are paired in order
 * from a hex portmask (0<->1, 2<->3, ...; an odd last port forwards to itself) or
 * explicitly with --portmap. By default the Ethernet header is rewritten: destination
 * 02:00:00:00:00:<egress port id>, source = the egress port's MAC.
 *
 * Techniques: burst RX (MAX_PKT_BURST); a full burst is sent as it is, partial bursts
 * gather in per-port TX buffers flushed when full or every BURST_TX_DRAIN_US; headers prefetched PREFETCH_OFFSET frames ahead when MACs are
 * rewritten; the ring sizes the PMD prefers (else RX/TX_DESC_DEFAULT) and one mbuf pool
 * sized from them; one RX queue per port, up to --rx-queues-per-lcore ports
 * polled by each lcore; counters written by exactly one lcore each (relaxed atomics, no
 * locks). Instead of redrawing a screen, the main lcore prints one JSON object per line on
 * stdout: a "ready" event once every port is started, a "stats" event every period with
 * cumulative per-port rx/tx/dropped and totals, an "exit" event with the final counts, and
 * an "error" event naming the cause when set-up fails. SIGINT and SIGTERM stop the lcores,
 * stop and close every port and exit 0. EAL log lines are sent to stderr after EAL start.
 *
 * Minimum DPDK: 22.11 (RTE_ETH_* names, rte_ether_hdr.dst_addr/src_addr).
 *
 * Usage: fastpath-l2fwd [EAL options] -- (-p PORTMASK | --portmap "(a,b)[,(c,d)...]")
 *            [-q PORTS_PER_LCORE] [-T PERIOD_S] [--no-mac-updating] [-P]
 *            [--idle-sleep-us US]
 *
 * Manual test (no NIC, no hugepages needed):
 *   fastpath-l2fwd -l 0 --no-pci --in-memory --vdev=net_null0 --vdev=net_null1 -- -p 0x3 -T 1
 * One file, as DPDK's own example apps: EAL setup, port setup, the forwarding loop and
 * the stats line share a handful of globals the lcores read.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_prefetch.h>
#include <rte_version.h>

/* Descriptors per RX and TX ring when the PMD states no preference of its own (a PMD's
 * preferred size wins, as in testpmd); rte_eth_dev_adjust_nb_rx_tx_desc() clamps either. */
#define RX_DESC_DEFAULT 1024
#define TX_DESC_DEFAULT 1024
/* Frames fetched per rte_eth_rx_burst() and held per TX buffer before a send. */
#define MAX_PKT_BURST 32
/* When rewriting MACs, frames this far ahead in a burst are prefetched. */
#define PREFETCH_OFFSET 3
/* A partly filled TX buffer is sent after this long, so a trickle is not held back. */
#define BURST_TX_DRAIN_US 100
/* Per-lcore mbuf cache of the pool; the pool is sized so every ring can be full at once. */
#define MEMPOOL_CACHE_SIZE 256
/* Lower bound on the pool size, whatever the ring sizes. */
#define MIN_MBUFS 8192U
/* Most ports one lcore may poll (-q upper bound). */
#define MAX_RX_PORTS_PER_LCORE 16
/* Default and bounds of the stats period in seconds (-T; 0 turns periodic stats off). */
#define STATS_PERIOD_DEFAULT_S 1.0
#define STATS_PERIOD_MIN_S 0.01
#define STATS_PERIOD_MAX_S 86400.0
/* Sleep of an lcore that owns no port, between checks for the stop signal (µs). */
#define IDLE_LCORE_SLEEP_US 1000
/* Upper bound of --idle-sleep-us. */
#define IDLE_SLEEP_MAX_US 100000
/* First bytes of the rewritten destination MAC; the last byte is the egress port id. */
#define DST_MAC_PREFIX {0x02, 0x00, 0x00, 0x00, 0x00}

struct port_stats {
	uint64_t rx;
	uint64_t tx;
	uint64_t dropped;
} __rte_cache_aligned;

struct lcore_conf {
	unsigned int n_rx_port;
	uint16_t rx_port_list[MAX_RX_PORTS_PER_LCORE];
} __rte_cache_aligned;

struct app_config {
	uint64_t portmask;           /* ports to use, from -p or derived from --portmap */
	bool have_portmask;
	bool have_portmap;
	unsigned int ports_per_lcore;
	double period_s;
	bool mac_updating;
	bool promiscuous;
	unsigned int idle_sleep_us;
};

static volatile bool force_quit;

static struct app_config cfg = {
	.ports_per_lcore = 1,
	.period_s = STATS_PERIOD_DEFAULT_S,
	.mac_updating = true,
};

static uint16_t dst_port[RTE_MAX_ETHPORTS];
static bool port_mapped[RTE_MAX_ETHPORTS];
static bool port_started[RTE_MAX_ETHPORTS];
static struct rte_ether_addr port_mac[RTE_MAX_ETHPORTS];
static struct rte_eth_dev_tx_buffer *tx_buffer[RTE_MAX_ETHPORTS];
static struct port_stats stats[RTE_MAX_ETHPORTS];
static struct lcore_conf lcore_conf[RTE_MAX_LCORE];
static uint16_t port_lcore[RTE_MAX_ETHPORTS];
static uint16_t port_rxd[RTE_MAX_ETHPORTS];
static uint16_t port_txd[RTE_MAX_ETHPORTS];

/* Counters have one writer each; relaxed atomics keep the stats reader race-free. */
static inline void counter_add(uint64_t *counter, uint64_t n)
{
	__atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static inline uint64_t counter_get(const uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* One {"event":"error"} line on stdout (the supervisor reads it) and a copy on stderr. */
static void report_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "fastpath-l2fwd: error: %s\n", msg);
	printf("{\"event\":\"error\",\"message\":");
	json_string(msg);
	printf("}\n");
	fflush(stdout);
}

static void signal_handler(int signum)
{
	(void)signum;
	force_quit = true;
}

static void tx_error_count(struct rte_mbuf **unsent, uint16_t count, void *userdata)
{
	rte_pktmbuf_free_bulk(unsent, count);
	counter_add(userdata, count);
}

static void print_counts(void)
{
	uint64_t total_rx = 0, total_tx = 0, total_dropped = 0;
	bool first = true;
	uint16_t port;

	printf("\"ports\":[");
	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		uint64_t rx, tx, dropped;

		if (!port_mapped[port])
			continue;
		rx = counter_get(&stats[port].rx);
		tx = counter_get(&stats[port].tx);
		dropped = counter_get(&stats[port].dropped);
		total_rx += rx;
		total_tx += tx;
		total_dropped += dropped;
		printf("%s{\"port\":%u,\"rx\":%" PRIu64 ",\"tx\":%" PRIu64 ",\"dropped\":%" PRIu64 "}",
		       first ? "" : ",", port, rx, tx, dropped);
		first = false;
	}
	printf("],\"total\":{\"rx\":%" PRIu64 ",\"tx\":%" PRIu64 ",\"dropped\":%" PRIu64 "}",
	       total_rx, total_tx, total_dropped);
}

static void print_stats(uint64_t seq, double uptime_s)
{
	printf("{\"event\":\"stats\",\"seq\":%" PRIu64 ",\"uptime_s\":%.3f,", seq, uptime_s);
	print_counts();
	printf("}\n");
	fflush(stdout);
}

static void print_ready(void)
{
	char mac[RTE_ETHER_ADDR_FMT_SIZE];
	char name[RTE_ETH_NAME_MAX_LEN];
	unsigned int lcore;
	bool first = true;
	uint16_t port;

	printf("{\"event\":\"ready\",\"dpdk\":");
	json_string(rte_version());
	printf(",\"pid\":%d,\"mac_updating\":%s,\"promiscuous\":%s,\"period_s\":%.3f,\"lcores\":[",
	       (int)getpid(), cfg.mac_updating ? "true" : "false",
	       cfg.promiscuous ? "true" : "false", cfg.period_s);
	RTE_LCORE_FOREACH(lcore) {
		printf("%s%u", first ? "" : ",", lcore);
		first = false;
	}
	printf("],\"ports\":[");
	first = true;
	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		struct rte_eth_link link;

		if (!port_mapped[port])
			continue;
		if (rte_eth_dev_get_name_by_port(port, name) != 0)
			snprintf(name, sizeof(name), "port%u", port);
		rte_ether_format_addr(mac, sizeof(mac), &port_mac[port]);
		memset(&link, 0, sizeof(link));
		rte_eth_link_get_nowait(port, &link);
		printf("%s{\"port\":%u,\"name\":", first ? "" : ",", port);
		json_string(name);
		printf(",\"mac\":\"%s\",\"dst_port\":%u,\"lcore\":%u,\"rx_desc\":%u,"
		       "\"tx_desc\":%u,\"link_up\":%s}", mac, dst_port[port], port_lcore[port],
		       port_rxd[port], port_txd[port],
		       link.link_status == RTE_ETH_LINK_UP ? "true" : "false");
		first = false;
	}
	printf("]}\n");
	fflush(stdout);
}

/* Destination 02:00:00:00:00:<egress port>, source the egress port's MAC, for a burst. */
static void rewrite_macs(struct rte_mbuf **pkts, uint16_t n, uint16_t out_port)
{
	static const uint8_t prefix[] = DST_MAC_PREFIX;
	uint16_t j;

	for (j = 0; j < n && j < PREFETCH_OFFSET; j++)
		rte_prefetch0(rte_pktmbuf_mtod(pkts[j], void *));
	for (j = 0; j < n; j++) {
		struct rte_ether_hdr *eth = rte_pktmbuf_mtod(pkts[j], struct rte_ether_hdr *);

		if (j + PREFETCH_OFFSET < n)
			rte_prefetch0(rte_pktmbuf_mtod(pkts[j + PREFETCH_OFFSET], void *));
		memcpy(eth->dst_addr.addr_bytes, prefix, sizeof(prefix));
		eth->dst_addr.addr_bytes[5] = (uint8_t)out_port;
		rte_ether_addr_copy(&port_mac[out_port], &eth->src_addr);
	}
}

/*
 * A full burst with nothing buffered before it goes out in one rte_eth_tx_burst(), what
 * the port refuses is dropped and counted; a partial burst joins the port's TX buffer, so
 * a trickle still leaves in batches (one system call per batch on af_packet).
 */
static void send_burst(uint16_t out, struct rte_mbuf **pkts, uint16_t n)
{
	struct rte_eth_dev_tx_buffer *buffer = tx_buffer[out];
	uint16_t sent = 0, j;

	if (buffer->length == 0 && n == MAX_PKT_BURST) {
		sent = rte_eth_tx_burst(out, 0, pkts, n);
		if (unlikely(sent < n))
			tx_error_count(pkts + sent, n - sent, &stats[out].dropped);
	} else {
		for (j = 0; j < n; j++)
			sent += rte_eth_tx_buffer(out, 0, buffer, pkts[j]);
	}
	if (sent > 0)
		counter_add(&stats[out].tx, sent);
}

/* The per-lcore loop: drain TX buffers on a timer, poll owned ports, forward in bursts. */
static int forward_loop(__rte_unused void *arg)
{
	const uint64_t drain_tsc =
		(rte_get_timer_hz() + US_PER_S - 1) / US_PER_S * BURST_TX_DRAIN_US;
	const unsigned int lcore = rte_lcore_id();
	const bool is_main = lcore == rte_get_main_lcore();
	const struct lcore_conf *qconf = &lcore_conf[lcore];
	const uint64_t hz = rte_get_timer_hz();
	const uint64_t period_tsc = (uint64_t)(cfg.period_s * (double)hz);
	const uint64_t start_tsc = rte_get_timer_cycles();
	const bool mac_updating = cfg.mac_updating;
	uint64_t prev_drain = start_tsc, prev_stats = start_tsc, seq = 0;
	struct rte_mbuf *burst[MAX_PKT_BURST];

	while (!force_quit) {
		uint64_t now = rte_get_timer_cycles();
		unsigned int i, received = 0;

		if (now - prev_drain > drain_tsc) {
			for (i = 0; i < qconf->n_rx_port; i++) {
				uint16_t out = dst_port[qconf->rx_port_list[i]];
				uint16_t sent = rte_eth_tx_buffer_flush(out, 0, tx_buffer[out]);

				if (sent > 0)
					counter_add(&stats[out].tx, sent);
			}
			prev_drain = now;
		}
		if (is_main && period_tsc > 0 && now - prev_stats >= period_tsc) {
			print_stats(++seq, (double)(now - start_tsc) / (double)hz);
			prev_stats = now;
		}
		if (qconf->n_rx_port == 0) {
			rte_delay_us_sleep(IDLE_LCORE_SLEEP_US);
			continue;
		}
		for (i = 0; i < qconf->n_rx_port; i++) {
			uint16_t in = qconf->rx_port_list[i];
			uint16_t out = dst_port[in];
			uint16_t n = rte_eth_rx_burst(in, 0, burst, MAX_PKT_BURST);

			if (n == 0)
				continue;
			received += n;
			counter_add(&stats[in].rx, n);
			if (mac_updating)
				rewrite_macs(burst, n, out);
			send_burst(out, burst, n);
		}
		if (received == 0 && cfg.idle_sleep_us > 0)
			rte_delay_us_sleep(cfg.idle_sleep_us);
	}
	/* Send what is still buffered so the final counts include every frame received. */
	for (unsigned int i = 0; i < qconf->n_rx_port; i++) {
		uint16_t out = dst_port[qconf->rx_port_list[i]];
		uint16_t sent = rte_eth_tx_buffer_flush(out, 0, tx_buffer[out]);

		if (sent > 0)
			counter_add(&stats[out].tx, sent);
	}
	return 0;
}

static int parse_portmask(const char *arg, uint64_t *mask)
{
	char *end = NULL;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 16);
	if (errno != 0 || end == arg || *end != '\0' || v == 0 || arg[0] == '-')
		return -1;
	*mask = (uint64_t)v;
	return 0;
}

/* A decimal value of option `opt` in min..max, or -1 after one line naming it and the range. */
static int parse_uint(const char *opt, const char *arg, unsigned long min, unsigned long max,
		      unsigned int *out)
{
	char *end = NULL;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0' || arg[0] == '-' || v < min || v > max) {
		report_error("invalid %s '%s': give %lu..%lu", opt, arg, min, max);
		return -1;
	}
	*out = (unsigned int)v;
	return 0;
}

/* "(0,1),(2,3)" or "(0,0)": every port at most once; fills dst_port and port_mapped. */
static int parse_portmap(const char *arg)
{
	const char *p = arg;

	while (*p != '\0') {
		unsigned long a, b;
		char *end;

		if (*p != '(')
			return -1;
		p++;
		errno = 0;
		a = strtoul(p, &end, 10);
		if (errno != 0 || end == p || *end != ',' || a >= RTE_MAX_ETHPORTS)
			return -1;
		p = end + 1;
		b = strtoul(p, &end, 10);
		if (errno != 0 || end == p || *end != ')' || b >= RTE_MAX_ETHPORTS)
			return -1;
		p = end + 1;
		if (port_mapped[a] || (a != b && port_mapped[b]))
			return -1;
		port_mapped[a] = port_mapped[b] = true;
		dst_port[a] = (uint16_t)b;
		dst_port[b] = (uint16_t)a;
		if (*p == ',')
			p++;
		else if (*p != '\0')
			return -1;
	}
	return p == arg ? -1 : 0;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [EAL options] -- (-p PORTMASK | --portmap \"(a,b)[,(c,d)]\")\n"
		"         [-q PORTS_PER_LCORE] [-T PERIOD_S] [--no-mac-updating] [-P]\n"
		"         [--idle-sleep-us US]\n"
		"  -p PORTMASK          hex mask of ports to forward; paired in order, an odd last\n"
		"                       port forwards to itself\n"
		"  --portmap PAIRS      explicit pairs, e.g. \"(0,1),(2,3)\"; (n,n) forwards to itself\n"
		"  -q N                 ports (one RX queue each) polled per lcore, 1..%d (default 1)\n"
		"  -T S                 stats period in seconds, 0 = off (default %.0f)\n"
		"  --no-mac-updating    forward frames unchanged (default: rewrite MACs)\n"
		"  -P                   put every port in promiscuous mode\n"
		"  --idle-sleep-us US   sleep when a poll round finds no frame (default 0: spin)\n",
		prog, MAX_RX_PORTS_PER_LCORE, STATS_PERIOD_DEFAULT_S);
}

enum { OPT_NO_MAC = 256, OPT_MAC, OPT_PORTMAP, OPT_IDLE };

static int parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"portmask", required_argument, NULL, 'p'},
		{"rx-queues-per-lcore", required_argument, NULL, 'q'},
		{"period", required_argument, NULL, 'T'},
		{"promiscuous", no_argument, NULL, 'P'},
		{"portmap", required_argument, NULL, OPT_PORTMAP},
		{"no-mac-updating", no_argument, NULL, OPT_NO_MAC},
		{"mac-updating", no_argument, NULL, OPT_MAC},
		{"idle-sleep-us", required_argument, NULL, OPT_IDLE},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *prog = argv[0];
	char *end;
	int opt;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "p:q:T:Ph", longopts, NULL)) != -1) {
		switch (opt) {
		case 'p':
			if (parse_portmask(optarg, &cfg.portmask) != 0) {
				report_error("invalid portmask '%s': give a non-zero hex mask such as 0x3",
					     optarg);
				return -1;
			}
			cfg.have_portmask = true;
			break;
		case 'q':
			if (parse_uint("-q", optarg, 1, MAX_RX_PORTS_PER_LCORE, &cfg.ports_per_lcore) != 0)
				return -1;
			break;
		case 'T':
			errno = 0;
			cfg.period_s = strtod(optarg, &end);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    (cfg.period_s != 0.0 && (cfg.period_s < STATS_PERIOD_MIN_S ||
						     cfg.period_s > STATS_PERIOD_MAX_S))) {
				report_error("invalid stats period '%s': give 0 or %.2f..%.0f seconds",
					     optarg, STATS_PERIOD_MIN_S, STATS_PERIOD_MAX_S);
				return -1;
			}
			break;
		case 'P':
			cfg.promiscuous = true;
			break;
		case OPT_PORTMAP:
			if (parse_portmap(optarg) != 0) {
				report_error("invalid portmap '%s': give pairs like (0,1),(2,3), "
					     "each port at most once", optarg);
				return -1;
			}
			cfg.have_portmap = true;
			break;
		case OPT_NO_MAC:
			cfg.mac_updating = false;
			break;
		case OPT_MAC:
			cfg.mac_updating = true;
			break;
		case OPT_IDLE:
			if (parse_uint("--idle-sleep-us", optarg, 0, IDLE_SLEEP_MAX_US,
				       &cfg.idle_sleep_us) != 0)
				return -1;
			break;
		case 'h':
			usage(prog);
			return 1;
		default:
			usage(prog);
			report_error("unknown application option; see the usage above");
			return -1;
		}
	}
	if (optind != argc) {
		report_error("unexpected argument '%s'", argv[optind]);
		return -1;
	}
	if (!cfg.have_portmask && !cfg.have_portmap) {
		report_error("no ports chosen: give -p PORTMASK or --portmap PAIRS");
		return -1;
	}
	return 0;
}

/* Ports from the mask or the map, checked against the ports EAL found; pairs them. */
static int choose_ports(void)
{
	uint16_t port, n_avail = rte_eth_dev_count_avail(), last = RTE_MAX_ETHPORTS;
	unsigned int n_chosen = 0;

	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		bool in_mask = port < 64 && (cfg.portmask & (1ULL << port)) != 0;

		if (cfg.have_portmask && port >= 64 && port_mapped[port]) {
			report_error("portmap names port %u, beyond what a portmask can hold", port);
			return -1;
		}
		if (cfg.have_portmap && cfg.have_portmask && in_mask != port_mapped[port]) {
			report_error("port %u is in %s but not in %s", port,
				     in_mask ? "the portmask" : "the portmap",
				     in_mask ? "the portmap" : "the portmask");
			return -1;
		}
		if (!cfg.have_portmap && in_mask)
			port_mapped[port] = true;
		if (!port_mapped[port])
			continue;
		if (!rte_eth_dev_is_valid_port(port)) {
			report_error("port %u was asked for but EAL found %u port(s); "
				     "add a --vdev or an allowed PCI device", port, n_avail);
			return -1;
		}
		n_chosen++;
		if (cfg.have_portmap)
			continue;
		/* Pair in order; an odd last port forwards to itself. */
		if (last == RTE_MAX_ETHPORTS) {
			last = port;
			dst_port[port] = port;
		} else {
			dst_port[last] = port;
			dst_port[port] = last;
			last = RTE_MAX_ETHPORTS;
		}
	}
	if (n_chosen == 0) {
		report_error("no usable port chosen (EAL found %u)", n_avail);
		return -1;
	}
	if (!cfg.have_portmap && last != RTE_MAX_ETHPORTS)
		fprintf(stderr, "fastpath-l2fwd: odd number of ports: port %u forwards to itself\n",
			last);
	return (int)n_chosen;
}

/* Each lcore polls up to ports_per_lcore ports, lcores taken in order. */
static int assign_lcores(void)
{
	unsigned int lcore = rte_get_next_lcore(-1, 0, 0);
	uint16_t port;

	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		if (!port_mapped[port])
			continue;
		while (lcore < RTE_MAX_LCORE &&
		       lcore_conf[lcore].n_rx_port == cfg.ports_per_lcore)
			lcore = rte_get_next_lcore(lcore, 0, 0);
		if (lcore >= RTE_MAX_LCORE) {
			report_error("not enough lcores: %u lcore(s) poll %u port(s) each; give more "
				     "cores (-l) or a larger -q", rte_lcore_count(),
				     cfg.ports_per_lcore);
			return -1;
		}
		lcore_conf[lcore].rx_port_list[lcore_conf[lcore].n_rx_port++] = port;
		port_lcore[port] = (uint16_t)lcore;
	}
	return 0;
}

/* Ring sizes of a port: the PMD's preferred sizes, else the defaults, clamped to its limits. */
static int port_rings(uint16_t port)
{
	struct rte_eth_dev_info info;
	int ret;

	ret = rte_eth_dev_info_get(port, &info);
	if (ret != 0) {
		report_error("port %u: cannot get device info: %s", port, rte_strerror(-ret));
		return -1;
	}
	port_rxd[port] = info.default_rxportconf.ring_size ? info.default_rxportconf.ring_size
							     : RX_DESC_DEFAULT;
	port_txd[port] = info.default_txportconf.ring_size ? info.default_txportconf.ring_size
							     : TX_DESC_DEFAULT;
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &port_rxd[port], &port_txd[port]);
	if (ret < 0) {
		report_error("port %u: cannot fit ring sizes: %s", port, rte_strerror(-ret));
		return -1;
	}
	return 0;
}

static int port_setup(uint16_t port, struct rte_mempool *pool)
{
	struct rte_eth_conf conf = {.txmode = {.mq_mode = RTE_ETH_MQ_TX_NONE}};
	int socket = rte_eth_dev_socket_id(port);
	struct rte_eth_dev_info info;
	struct rte_eth_rxconf rxq;
	struct rte_eth_txconf txq;
	int ret;

	if (socket < 0)
		socket = (int)rte_socket_id();
	ret = rte_eth_dev_info_get(port, &info);
	if (ret != 0) {
		report_error("port %u: cannot get device info: %s", port, rte_strerror(-ret));
		return -1;
	}
	if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)
		conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
	ret = rte_eth_dev_configure(port, 1, 1, &conf);
	if (ret < 0) {
		report_error("port %u: cannot configure: %s", port, rte_strerror(-ret));
		return -1;
	}
	ret = rte_eth_macaddr_get(port, &port_mac[port]);
	if (ret < 0) {
		report_error("port %u: cannot read MAC address: %s", port, rte_strerror(-ret));
		return -1;
	}
	rxq = info.default_rxconf;
	rxq.offloads = conf.rxmode.offloads;
	ret = rte_eth_rx_queue_setup(port, 0, port_rxd[port], (unsigned int)socket, &rxq, pool);
	if (ret < 0) {
		report_error("port %u: cannot set up RX queue: %s", port, rte_strerror(-ret));
		return -1;
	}
	txq = info.default_txconf;
	txq.offloads = conf.txmode.offloads;
	ret = rte_eth_tx_queue_setup(port, 0, port_txd[port], (unsigned int)socket, &txq);
	if (ret < 0) {
		report_error("port %u: cannot set up TX queue: %s", port, rte_strerror(-ret));
		return -1;
	}
	tx_buffer[port] = rte_zmalloc_socket("tx_buffer", RTE_ETH_TX_BUFFER_SIZE(MAX_PKT_BURST),
					     0, socket);
	if (tx_buffer[port] == NULL) {
		report_error("port %u: cannot allocate TX buffer", port);
		return -1;
	}
	rte_eth_tx_buffer_init(tx_buffer[port], MAX_PKT_BURST);
	ret = rte_eth_tx_buffer_set_err_callback(tx_buffer[port], tx_error_count,
						 &stats[port].dropped);
	if (ret < 0) {
		report_error("port %u: cannot set TX error callback", port);
		return -1;
	}
	ret = rte_eth_dev_start(port);
	if (ret < 0) {
		report_error("port %u: cannot start: %s", port, rte_strerror(-ret));
		return -1;
	}
	port_started[port] = true;
	if (cfg.promiscuous) {
		ret = rte_eth_promiscuous_enable(port);
		if (ret != 0) {
			report_error("port %u: cannot enable promiscuous mode: %s", port,
				     rte_strerror(-ret));
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct rte_mempool *pool = NULL;
	int ret, n_ports, exit_code = EXIT_FAILURE;
	unsigned int nb_mbufs = 0;
	uint16_t port;

	setvbuf(stdout, NULL, _IOLBF, 0);

	/* 1. Signals first, so a stop during EAL start-up still leads to clean-up. */
	signal(SIGINT, signal_handler);
	signal(SIGTERM, signal_handler);

	/* 2. EAL: lcores, memory, devices (vdevs or allowed PCI devices). */
	ret = rte_eal_init(argc, argv);
	if (ret < 0) {
		report_error("EAL initialisation failed: %s; check the EAL options and "
			     "hugepages", rte_strerror(rte_errno));
		return EXIT_FAILURE;
	}
	argc -= ret;
	argv += ret;
	argv[0] = (char *)"fastpath-l2fwd";
	/* EAL logs go to stderr from here on; stdout carries only JSON events. */
	rte_openlog_stream(stderr);

	/* 3. Application options, ports and their lcores. */
	ret = parse_args(argc, argv);
	if (ret != 0) {
		exit_code = ret > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
		goto out_eal;
	}
	n_ports = choose_ports();
	if (n_ports < 0 || assign_lcores() != 0)
		goto out_eal;

	/* 4. Ring sizes, then one mbuf pool big enough for every ring, burst and cache at once. */
	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		if (!port_mapped[port])
			continue;
		if (port_rings(port) != 0)
			goto out_eal;
		nb_mbufs += port_rxd[port] + port_txd[port] + MAX_PKT_BURST +
			    rte_lcore_count() * MEMPOOL_CACHE_SIZE;
	}
	nb_mbufs = RTE_MAX(nb_mbufs, MIN_MBUFS);
	pool = rte_pktmbuf_pool_create("l2fwd_pool", nb_mbufs, MEMPOOL_CACHE_SIZE, 0,
				       RTE_MBUF_DEFAULT_BUF_SIZE, (int)rte_socket_id());
	if (pool == NULL) {
		report_error("cannot create mbuf pool of %u mbufs: %s", nb_mbufs,
			     rte_strerror(rte_errno));
		goto out_eal;
	}

	/* 5. Ports: configure, one RX and one TX queue, TX buffer, start. */
	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		if (port_mapped[port] && port_setup(port, pool) != 0)
			goto out_ports;
	}

	/* 6. Forward on every lcore until SIGINT/SIGTERM. */
	if (!force_quit) {
		print_ready();
		rte_eal_mp_remote_launch(forward_loop, NULL, CALL_MAIN);
		rte_eal_mp_wait_lcore();
	}
	exit_code = EXIT_SUCCESS;

out_ports:
	/* Single clean-up path: stop and close what was started, then free and leave EAL. */
	for (port = 0; port < RTE_MAX_ETHPORTS; port++) {
		if (port_started[port]) {
			rte_eth_dev_stop(port);
			port_started[port] = false;
		}
		if (port_mapped[port] && rte_eth_dev_is_valid_port(port))
			rte_eth_dev_close(port);
		rte_free(tx_buffer[port]);
		tx_buffer[port] = NULL;
	}
	if (exit_code == EXIT_SUCCESS) {
		printf("{\"event\":\"exit\",");
		print_counts();
		printf("}\n");
		fflush(stdout);
	}
	rte_mempool_free(pool);
out_eal:
	rte_eal_cleanup();
	return exit_code;
}
