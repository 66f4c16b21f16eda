/* SPDX-License-Identifier: GPL-2.0 */
/*
 * syn_guard.h - what crosses the kernel/user boundary for bpf/syn_guard.c.
 *
 * Included by bpf/syn_guard.c (kernel side) only; mirrored as ctypes.Structures in
 * fastpath/apps/guard/synguard.py, and tests/bpf/test_syn_guard.py checks every mirror against
 * bcc's decoded map types and the enum values against this file. Fixed-width types only;
 * addresses and ports in network byte order unless a comment says otherwise.
 */
#ifndef FASTPATH_SYN_GUARD_H
#define FASTPATH_SYN_GUARD_H

/*
 * Keys of the per-CPU `stats` map. Every frame lands in exactly one outcome counter (the
 * SG_OUTCOMES ids below SG_OUTCOMES, and every id appended after the events that is not
 * named SG_EVENT_*), so their sum is the number of frames seen; SG_EVENT_* counters are
 * events (a ban started) that accompany an outcome. New ids are appended before SG_STAT_MAX.
 */
enum sg_stat {
	SG_PASS_OTHER = 0,     /* not TCP to a protected port: non-IP, other protocols, later fragments */
	SG_PASS_ALLOW = 1,     /* source in the allow list */
	SG_DROP_DENY = 2,      /* source in the deny list */
	SG_DROP_PORT = 3,      /* SYN to a drop-mode port */
	SG_DROP_LIMITED = 4,   /* SYN over its source's rate */
	SG_DROP_BANNED = 5,    /* SYN from a banned source */
	SG_TX_COOKIE = 6,      /* SYN answered with a SYN-ACK carrying a SYN cookie (XDP_TX) */
	SG_PASS_SYN = 7,       /* SYN to a cookie port passed to the stack (cookies off, or an
				* adaptive port below its SYN threshold) */
	SG_PASS_COOKIE = 8,    /* ACK whose cookie checked out: a new flow, on to SYNPROXY */
	SG_DROP_COOKIE = 9,    /* ACK of no known flow whose cookie did not check out */
	SG_PASS_FLOW = 10,     /* segment of a known connection: a `flows` hit, or one the stack has
				* a socket for (SG_EVENT_SOCKET) */
	SG_PASS_TCP = 11,      /* other TCP to a protected port: RST, no ACK, drop-mode non-SYN */
	SG_FRAGMENT = 12,      /* first fragment to a protected port (verdict: SG_CFG_FRAG_PASS) */
	SG_DROP_MALFORMED = 13,/* truncated or inconsistent headers, or deeper than the parser walks */
	SG_DROP_ERROR = 14,    /* a helper failed while building a SYN-ACK */
	SG_OUTCOMES = 15,
	SG_EVENT_BAN = 15,     /* a source was banned (counts bans started, not frames) */
	SG_EVENT_PROBE = 16,   /* a zero-window probe stood in for a lost handshake ACK (with SG_PASS_COOKIE) */
	SG_PASS_DEST = 17,     /* TCP to a protected port of an address not in `protected_addrs` (a VIP) */
	SG_EVENT_SOCKET = 18,  /* a `flows` miss the stack knows (a non-listening socket of the
				* exact tuple): passed with SG_PASS_FLOW, cached when established */
	SG_EVENT_FLOW_END = 19,/* a FIN or RST ended a `flows` entry */
	SG_EVENT_FLOW_IDLE = 20,/* a `flows` entry idle past SG_FLOW_IDLE_NS, checked against the stack again */
	SG_EVENT_TO_COOKIE = 21,/* an adaptive port switched to SYN cookies (its SYN rate crossed the threshold) */
	SG_EVENT_TO_PASS = 22, /* an adaptive port went back to passing SYNs after a quiet period */
	SG_EVENT_HELD = 23,    /* a SYN to an adaptive port in cookie mode passed to the stack (with
				* SG_PASS_SYN) because the SYNPROXY rules are not armed yet */
	SG_STAT_MAX = 24,
};

/* Values of the `ports` map, indexed by TCP destination port in host byte order. */
enum sg_port_mode {
	SG_PORT_OPEN = 0,      /* not protected: frames pass untouched */
	SG_PORT_COOKIE = 1,    /* SYNs answered with SYN cookies, ACKs validated */
	SG_PORT_DROP = 2,      /* closed: SYNs dropped */
};

/* Values of the `acl_v4` and `acl_v6` tries: the longest matching prefix decides. */
enum sg_acl_action {
	SG_ACL_ALLOW = 1,
	SG_ACL_DENY = 2,
};

/* Values of `protected_addrs`: why an address is there. */
#define SG_PROTECT_LOCAL  (1U << 0) /* an address of the interface's namespace at attach/refresh */
#define SG_PROTECT_LISTED (1U << 1) /* given with --protect */

/* Bits of sg_config.flags. */
#define SG_CFG_COOKIES   (1U << 0) /* answer SYNs to cookie ports from XDP */
#define SG_CFG_FRAG_PASS (1U << 1) /* let first fragments to protected ports through */
#define SG_CFG_ACL4      (1U << 2) /* acl_v4 has entries; clear: skip the lookup */
#define SG_CFG_ACL6      (1U << 3) /* acl_v6 has entries; clear: skip the lookup */
#define SG_CFG_DESTS     (1U << 4) /* guard only destinations in `protected_addrs`; clear: all */
#define SG_CFG_ADAPTIVE  (1U << 5) /* with SG_CFG_COOKIES: cookies only on ports whose SYN rate
				    * crossed the `adaptive` threshold (port_state) */

/* The one element of the `config` array: everything that changes without a reload. */
struct sg_config {
	__u64 syn_interval_ns; /* 1e9 / per-source SYN rate; 0: no rate limit */
	__u64 syn_burst_ns;    /* (burst - 1) * syn_interval_ns: how far ahead a source may run */
	__u64 ban_ns;          /* how long a ban lasts; 0: never ban */
	__u32 ban_after;       /* SYNs over the rate within SG_BAN_WINDOW_NS that start a ban */
	__u32 flags;           /* SG_CFG_* */
};

/* Values of `stats`. */
struct sg_counter {
	__u64 packets;
	__u64 bytes;
};

/* Keys of the LPM tries. */
struct sg_lpm_v4 {
	__u32 prefixlen;
	__u32 addr;
};

struct sg_lpm_v6 {
	__u32 prefixlen;
	__u32 addr[4];
};

/* Key of `sources`: an IPv4 address as ::ffff:a.b.c.d, an IPv6 source by its /64. */
struct sg_source_key {
	__u32 addr[4];
};

/* Value of `sources`: a GCRA token bucket (theoretical arrival time) plus ban state. */
struct sg_source {
	__u64 tat_ns;          /* when the source's next SYN is due at the configured rate */
	__u64 banned_until_ns; /* a copy of the source's `bans` entry's until_ns (skips that lookup) */
	__u64 window_start_ns; /* start of the window in which `excess` is counted */
	__u32 excess;          /* SYNs over the rate in this window */
	__u32 pad;
};

/* Key of `protected_addrs`: a destination the guard protects (the host's own addresses
 * and those the user lists), IPv4 as ::ffff:a.b.c.d; value: SG_PROTECT_* bits. */
struct sg_addr {
	__u32 addr[4];
};

/* The one element of `protected_list`: the protected addresses again, compared inline when
 * there are at most SG_PROTECTED_INLINE of them (a fraction of a hash lookup's cost);
 * n == SG_PROTECTED_HASH: more than that, look the destination up in `protected_addrs`. */
#define SG_PROTECTED_INLINE 16
#define SG_PROTECTED_HASH 0xffffffffU
struct sg_protected_list {
	__u32 n;
	__u32 pad;
	struct sg_addr addr[SG_PROTECTED_INLINE];
};

/* Value of `bans`, keyed by struct sg_source_key: a source that went over its SYN rate
 * `ban_after` times within SG_BAN_WINDOW_NS. Its SYNs are dropped until `until_ns`. */
struct sg_ban {
	__u64 until_ns;        /* bpf_ktime_get_coarse_ns() clock */
	__u64 since_ns;        /* when the ban started */
};


/* The one element of the `adaptive` array: when an adaptive port switches (SG_CFG_ADAPTIVE). */
struct sg_adaptive {
	__u64 quiet_ns;        /* back to passing SYNs after this long without a window over the threshold */
	__u32 window_syns;     /* SYNs without a completed handshake one CPU may see for a port in one
				  SG_RATE_WINDOW_NS window */
	__u32 armed;           /* 1: the SYNPROXY rules that finish cookie handshakes are in, so a
				  port in cookie mode sends cookies; 0: it passes SYNs to the stack
				  (whose own SYN cookies take over when its queue fills) until the
				  control plane has installed them */
};

/* Value of the per-CPU `port_syns` hash (key: TCP port, host byte order): this CPU's window.
 * A window is over the threshold when its SYNs outnumber its completed handshakes by more
 * than window_syns: a spoofed flood never completes, a busy service completes nearly all. */
struct sg_port_rate {
	__u64 window_start_ns;
	__u32 syns;            /* SYNs to the port in the window that started at window_start_ns */
	__u32 done;            /* handshakes completed in it (stack's or cookie's ACK) */
	__u32 over;            /* 1 once the window went over the threshold */
	__u32 pad;
};

/* Value of `port_state` (key: TCP port, host byte order): an adaptive port's mode. */
struct sg_port_state {
	__u64 since_ns;        /* bpf_ktime_get_coarse_ns() of the last switch (or of the first SYN) */
	__u64 over_ns;         /* the last window over the threshold began about then */
	__u32 cookies;         /* 1: SYNs answered with cookies; 0: SYNs passed to the stack */
	__u32 to_cookie;       /* switches to cookies */
	__u32 to_pass;         /* switches back to passing SYNs */
	__u32 pad;
};

/* Key of `flows`: a known connection (a valid cookie ACK, or a socket the stack has). */
struct sg_flow_key {
	__u32 client[4];       /* IPv4 as ::ffff:a.b.c.d */
	__u32 server[4];
	__u16 client_port;
	__u16 server_port;
};

struct sg_flow {
	__u64 seen_ns;         /* bpf_ktime_get_coarse_ns() of a recent segment (refreshed at most
				* once per SG_FLOW_REFRESH_NS) */
};

#endif /* FASTPATH_SYN_GUARD_H */
