"""Two scenarios for the XDP SYN-flood guard (bpf/syn_guard.c): `synflood-packet` and
`synflood`.

`synflood-packet`: ns/packet of each verdict path through BPF_PROG_TEST_RUN. A test run
repeats the program on one buffer, and the cookie path rewrites it into a SYN-ACK, so every
path runs inside fastpath.bpf.testrun's frame-restoring harness (save the frame, run the
guard, put the tail and the frame back); the `harness` contender (the baseline) does that
around no guard at all; `ns_net` takes a harness run made just before off each path's time,
which leaves the guard's own cost.
The peer is the kernel's own XDP SYN proxy (fastpath.bench.kernel_peers: the selftests'
xdp_synproxy_kern.c, built from the kernel source package, a conntrack lookup through
kfuncs on every packet) on the same frames: `kernel-cookie-v4`/`-v6` (SYN -> cookie
SYN-ACK), `kernel-drop-cookie` (the bad ACK), `kernel-pass-cookie` (an ACK returning its
cookie), each in the same harness (its no-op build taken off for `ns_net`).
Targets on ns_net, ratios within one run: each cookie path and each drop path at or below
the kernel proxy's time for the same job (its cookie path of the same family, its bad-ACK
drop).
`cookie-flood` runs the guard behind bpf/syn_guard_bench.c, which gives every run's SYN a
new source, with the rate limit on: the path of a spoofed flood's SYN (a new entry in
`sources`, a miss in `bans`, a cookie).
`pass-dest` is a SYN to a guarded port of an address the guard does not protect (a VIP).
Paths that consult the stack's socket table do it in the benchmark's own namespace: `drop-ack`
(an ACK flood's frame: no cached flow, the port's listener found, bad cookie) and
`pass-socket` (no cached flow, a real loopback connection found: its FIN, never cached, so
every run looks it up); `pass-syn-adaptive` is a SYN to an adaptive port below its threshold.

`synflood`: the same spoofed flood (fastpath/labs/flood.py, the fastest this machine makes)
against one server (fastpath/labs/floodlab.py) defended in turn by
- `fastpath`: the guard, SYN cookies from XDP for every SYN (`--cookies always`; adaptive
  mode switches to the same within a window of a flood) + SYNPROXY for the ACKs;
- `syncookies`: the kernel's own SYN cookies (net.ipv4.tcp_syncookies=2), the baseline;
- `synproxy`: nftables SYNPROXY without XDP (SYN notracked, cookies from netfilter);
- `kernel-xdp-synproxy`: the kernel's own XDP SYN proxy (the selftests' xdp_synproxy_kern.c,
  fastpath.bench.synproxy_live): cookies from XDP, a conntrack lookup through kfuncs per
  packet, netfilter's SYNPROXY for the ACKs, set up as its selftest does;
- `fastpath-generic`: the same guard attached in generic (skb) mode;
- `fastpath-drop`: the guard with the port in drop mode (SYNs dropped in XDP);
- `rawdrop`: iptables raw-table drop of SYNs to the port (drop mode's kernel peer).
Per run: legitimate connect+exchange success and the p99 time per attempt (a failed one
counts with the time it took to fail) while the flood runs, and the busy
CPU time per flood SYN that reached the server (`cpu_per_mflood`): the generator is pinned to
one CPU and everything a flood frame sets off (veth, bridge, the server's receive path and
its answers) runs there in softirq context, so that CPU's busy time is the flood's cost;
clients and the service are pinned to the other CPUs. On a shared machine, other work on
that CPU inflates every contender alike, so compare within one run. Right before each run the
same flood is measured against two floors: an XDP program that drops every frame, and one
that sends every frame straight back as a SYN-ACK would go (XDP_TX). `defence_cpu` is the
CPU above the drop floor: what the defence costs per million SYNs beyond the generator and
the frame's way to the server's XDP hook, its answer included, however it sends it (the
stack's cookie SYN-ACK is routed and queued; XDP_TX on veth copies the frame into a page of
its own). `answer_cpu` is the CPU above the reflect floor: what an XDP defence costs beyond
the cheapest XDP answer (for the others a number without that meaning: a stack that
answers cheaper than XDP_TX on veth comes out negative). The attacker drops what comes back
in XDP. Targets: fastpath's defence CPU <= 1/3 of each kernel cookie defence's, and
(`fastpath-linux-syns`) its answer CPU at or below the kernel XDP SYN proxy's on the flood
of SYNs with Linux's options that both get (the proxy cannot answer most of the default
flood's MSS-only SYNs on veth: see KERNEL_PROXY below).
On two cores the generator and the whole receive path share one core, the probe the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastpath.apps.guard import abi, nft
from fastpath.apps.guard import synguard as sg
from fastpath.apps.guard.config import GuardConfig, plan_defines
from fastpath.bench import BenchContext, Metric, Scenario, Target, kernel_peers, register_scenario
from fastpath.bench.environment import cpu_busy_ns
from fastpath.bench.synproxy_live import KernelXdpSynproxy
from fastpath.bpf import loader, testrun, xdp
from fastpath.core.args import parse_cidr
from fastpath.errors import CapabilityError, FastpathError
from fastpath.labs import floodlab

if TYPE_CHECKING:
    from fastpath.labs.flood import Flood

# ---------------------------------------------------------------------------------------
# synflood-packet

FRAME_LEN = 94  # the IPv6 SYN with Linux's options; shorter frames get Ethernet padding

# contender -> (frame builder name, expected verdict, expected outcome counter)
PATHS: dict[str, tuple[str, str, str]] = {
    "pass-other": ("udp", "XDP_PASS", "pass_other"),
    "pass-flow": ("flow_ack", "XDP_PASS", "pass_flow"),
    "pass-dest": ("vip_syn", "XDP_PASS", "pass_dest"),  # a protected port of a balancer's VIP
    "drop-deny": ("denied_syn", "XDP_DROP", "drop_deny"),
    "drop-port": ("closed_syn", "XDP_DROP", "drop_port"),
    "drop-limited": ("syn4", "XDP_DROP", "drop_limited"),
    "drop-cookie": ("bad_ack", "XDP_DROP", "drop_cookie"),
    "drop-ack": ("listener_ack", "XDP_DROP", "drop_cookie"),
    "pass-socket": ("socket_fin", "XDP_PASS", "pass_flow"),
    "pass-syn-adaptive": ("syn4", "XDP_PASS", "pass_syn"),
    "cookie-v4": ("syn4", "XDP_TX", "tx_cookie"),
    "cookie-v6": ("syn6", "XDP_TX", "tx_cookie"),
    # a spoofed flood's SYN: a new source every run (bpf/syn_guard_bench.c), rate limit on
    "cookie-flood": ("spoofed_syn", "XDP_TX", "tx_cookie"),
}
_SPOOF_MARK = "100.64.0.0"  # SG_SPOOF_MARK of bpf/syn_guard_bench.c
_PORT, _CLOSED = 80, 23


def _frames(listen_port: int, conn: tuple[int, int]) -> dict[str, bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("WScale", 7)]
    v4 = eth / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF")  # Linux sends TCP with DF
    frames = {
        "udp": v4 / UDP(sport=5353, dport=53) / (b"q" * 20),
        "syn4": v4 / TCP(sport=40000, dport=_PORT, flags="S", seq=1000, options=opts),
        "spoofed_syn": eth / IP(src=_SPOOF_MARK, dst="10.0.0.2") / TCP(sport=40000, dport=_PORT, flags="S",
                                                                       seq=1000, options=opts),
        "syn6": eth / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=_PORT, flags="S", seq=1000,
                                                                options=opts),
        "denied_syn": eth / IP(src="198.51.100.9", dst="10.0.0.2", flags="DF") / TCP(
            sport=40000, dport=_PORT, flags="S", options=opts),
        "closed_syn": v4 / TCP(sport=40000, dport=_CLOSED, flags="S", options=opts),
        "vip_syn": eth / IP(src="10.0.0.1", dst="10.0.0.100") / TCP(sport=40000, dport=_PORT, flags="S",
                                                                     options=opts),
        "bad_ack": v4 / TCP(sport=40001, dport=_PORT, flags="A", seq=1001, ack=4242),
        "flow_ack": v4 / TCP(sport=40002, dport=_PORT, flags="PA", seq=1001, ack=4242) / b"GET /",
        "listener_ack": v4 / TCP(sport=40003, dport=listen_port, flags="A", seq=1001, ack=4242),
        "socket_fin": eth / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=conn[0], dport=conn[1],
                                                                       flags="FA", seq=1001, ack=4242),
    }
    out = {}
    for name, pkt in frames.items():
        raw = pkt.build()
        if len(raw) > FRAME_LEN:
            raise FastpathError(f"bench frame {name} is {len(raw)} bytes, more than {FRAME_LEN}")
        out[name] = raw + b"\0" * (FRAME_LEN - len(raw))
    return out


@register_scenario
class SynfloodPacket(Scenario):
    name = "synflood-packet"
    description = "ns/packet of each XDP SYN-guard verdict path (BPF_PROG_TEST_RUN, frame-restoring harness)"
    metrics = [Metric("ns_per_packet", "ns/packet", "lower"), Metric("ns_net", "ns/packet net", "lower")]
    baseline = "harness"
    # ratios to the kernel's XDP SYN proxy in the same run (fastpath.bench.kernel_peers)
    targets = [Target("ns_net", c, ">=", 1.0, versus="kernel-drop-cookie")
               for c in ("drop-deny", "drop-port", "drop-limited", "drop-cookie")] + [
        Target("ns_net", f"cookie-{v}", ">=", 1.0, versus=f"kernel-cookie-{v}") for v in ("v4", "v6")]

    def contenders(self) -> list[str]:
        return [*PATHS, *kernel_peers.SynproxyBench.PATHS, "harness"]

    def setup(self, ctx: BenchContext) -> None:
        if os.geteuid() != 0:
            raise CapabilityError("loading BPF programs needs root")
        # a cookie answer (SYN-ACK) is another length than the SYN: the tail moves
        self._progs = [testrun.load_restoring([abi.SPEC.source_path], "sg_process", FRAME_LEN, abi.TUNABLES,
                                              moves="tail", noop=noop) for noop in (False, True)]
        # the guard behind a front that gives every run's SYN a new source (cookie-flood)
        self._progs.append(testrun.load_restoring(
            [abi.SPEC.source_path, abi.SPEC.source_dir / "syn_guard_bench.c"], "sg_bench_spoofed", FRAME_LEN,
            abi.TUNABLES, moves="tail"))
        # what the socket lookups find: a listener, and an open loopback connection
        self._socks = [socket.socket() for _ in range(3)]
        listener, client, server = self._socks
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.connect(listener.getsockname())
        self._socks.append(listener.accept()[0])
        server.bind(("0.0.0.0", 0))
        server.listen()
        listen_port, conn_port = server.getsockname()[1], listener.getsockname()[1]
        self._frames = _frames(listen_port, (client.getsockname()[1], conn_port))
        for prog in (0, 2):
            with self._map("ports", prog) as ports:
                for port in (_PORT, listen_port, conn_port):
                    ports.set(ctypes.c_uint32(port), ctypes.c_uint32(abi.PORT_COOKIE))
                ports.set(ctypes.c_uint32(_CLOSED), ctypes.c_uint32(abi.PORT_DROP))
            # the host's own addresses, as attach finds them (10.0.0.100 stays a VIP's)
            own = [ipaddress.ip_address(a) for a in ("10.0.0.2", "fd00::2", "127.0.0.1")]
            with self._map("protected_addrs", prog) as protected:
                for addr in own:
                    akey = abi.SgAddr()
                    akey.addr[:] = abi.mapped_words(addr)
                    protected.set(akey, ctypes.c_uint32(abi.PROTECT_LOCAL))
            with self._map("protected_list", prog) as inline:
                inline.set(ctypes.c_uint32(0), sg.protected_list(own))
        with self._map("acl_v4") as acl:
            acl.set(abi.lpm_key(parse_cidr("198.51.100.0/24")), ctypes.c_uint32(abi.ACL_DENY))
        # the admitted flow of pass-flow, as a validated cookie ACK would have left it
        key = abi.SgFlowKey()
        key.client[:] = abi.mapped_words(parse_cidr("10.0.0.1/32").network_address)
        key.server[:] = abi.mapped_words(parse_cidr("10.0.0.2/32").network_address)
        key.client_port = int.from_bytes((40002).to_bytes(2, "big"), "little")
        key.server_port = int.from_bytes(_PORT.to_bytes(2, "big"), "little")
        with self._map("flows") as flows:  # stamped now: a flow hit refreshes it (not idle)
            flows.set(key, abi.SgFlow(time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))))
        try:
            self._kernel: kernel_peers.SynproxyBench | None = kernel_peers.SynproxyBench(
                self._frames, _PORT, FRAME_LEN)
        except CapabilityError as exc:
            self._kernel = None
            kernel_peers.skip_or_fail(ctx.skip_contender, kernel_peers.SynproxyBench.PATHS, exc)
        for c in PATHS.keys() | {"harness"}:
            self._configure(c)
            res = testrun.run_xdp(self._fd(c), self._frame(c), repeat=3)
            want = "XDP_TX" if c == "harness" else PATHS[c][1]
            if res.verdict != want or res.output != self._frame(c):
                raise FastpathError(f"synflood-packet: {c} returned {res.verdict} (want {want}) or "
                                    "the harness did not restore the frame")

    def _map(self, name: str, prog: int = 0) -> Any:
        from fastpath.bpf.maps import TypedMap

        key, value = abi.MAP_TYPES[name]
        return TypedMap(os.dup(self._progs[prog].map_fd(name)), key, value)

    def _configure(self, contender: str) -> None:
        if contender == "cookie-flood":  # every source new: within its rate, tracked, answered
            cfg = GuardConfig(cookie_ports=(_PORT,), drop_ports=(_CLOSED,), syn_rate=200, ban_seconds=60,
                              cookies="always")
            with self._map("config", 2) as m:
                m.set(ctypes.c_uint32(0), cfg.to_ctype(True, False))
            return
        limited = contender == "drop-limited"
        adaptive = contender == "pass-syn-adaptive"  # a threshold no benchmark run reaches
        cfg = GuardConfig(cookie_ports=(_PORT,), drop_ports=(_CLOSED,), syn_rate=1 if limited else 0,
                          syn_burst=1 if limited else 0, ban_seconds=0,
                          cookies="adaptive" if adaptive else "always", syn_threshold=1e9)
        with self._map("adaptive") as m:
            m.set(ctypes.c_uint32(0), cfg.adaptive_ctype(abi.TUNABLES["SG_RATE_WINDOW_NS"]))
        with self._map("config") as m:
            m.set(ctypes.c_uint32(0), cfg.to_ctype(True, False))

    def _fd(self, contender: str) -> int:
        return self._progs[{"harness": 1, "cookie-flood": 2}.get(contender, 0)].prog_fd

    def _frame(self, contender: str) -> bytes:
        return self._frames["syn4" if contender == "harness" else PATHS[contender][0]]

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        repeat = ctx.pick(2_000_000, 20_000)
        if self._kernel is not None and contender in kernel_peers.SynproxyBench.PATHS:
            return self._kernel.measure(contender, repeat)
        self._configure(contender)
        harness = testrun.run_xdp(self._fd("harness"), self._frame("harness"), repeat=repeat)
        want = "XDP_TX" if contender == "harness" else PATHS[contender][1]
        res = testrun.run_expect(self._fd(contender), self._frame(contender), want, repeat, contender)
        return {"ns_per_packet": res.ns_per_packet, "ns_net": res.ns_per_packet - harness.ns_per_packet}

    def teardown(self, ctx: BenchContext) -> None:
        for p in getattr(self, "_progs", []):
            p.close()
        kernel = getattr(self, "_kernel", None)
        if kernel is not None:
            kernel.close()
        for s in getattr(self, "_socks", []):
            s.close()


# ---------------------------------------------------------------------------------------
# synflood: the live flood against each defence

# The floors (bpf/synflood_floors.c): the least any defence can do with a flood frame.
FLOORS = {entry: loader.ProgramSpec(name="synflood_floors", entry=entry, maps=())
          for entry in ("drop_all", "reflect")}
KERNEL_PROXY = "kernel-xdp-synproxy"
# The kernel XDP SYN proxy grows every SYN's tail to a 60-byte TCP header before it answers
# (bpf_xdp_adjust_tail); veth's copy of a 58-byte frame (the default flood's SYN: MSS only)
# leaves about 6 bytes of tailroom, so most such SYNs end in XDP_ABORTED. SYNs with Linux's
# options (a 40-byte TCP header, 74-byte frame) leave enough: the proxy and fastpath beside
# it (FASTPATH_LINUX_SYNS) are flooded with those, each against its own floor.
FASTPATH_LINUX_SYNS = "fastpath-linux-syns"
_LINUX_SYNS = {KERNEL_PROXY, FASTPATH_LINUX_SYNS}
# The guard attached in generic (skb) mode: on veth the native path copies every frame the
# stack sends into a page of its own, which generic mode does not.
FASTPATH_GENERIC = "fastpath-generic"

_SYNPROXY = """\
add table inet fastpath_bench_synproxy
delete table inet fastpath_bench_synproxy
table inet fastpath_bench_synproxy {{
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		iifname "eth0" tcp dport {port} tcp flags & (fin | syn | rst | ack) == syn notrack
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "eth0" tcp dport {port} ct state invalid,untracked \
			synproxy mss {mss} wscale {wscale} timestamp sack-perm
		iifname "eth0" tcp dport {port} ct state invalid drop
	}}
}}
"""


# A paced flood sends its frames in slices this long: short enough that a slice's burst
# fits a veth's 256-frame ring at the rates paced, long enough that the per-call cost stays small.
PACE_SLICE_S = 0.002


def paced_flood(flood: Any, rate: float, seconds: float) -> int:
    """Send `rate` frames per second for `seconds` (bounded by both): each slice sends what
    is due by the slice's end, then sleeps until then. Returns the frames sent; below `rate`
    when the generator cannot go that fast."""
    start = time.monotonic()
    end = start + seconds
    sent = 0
    while True:
        now = time.monotonic()
        if now >= end:
            return sent
        due = min(int((now - start + PACE_SLICE_S) * rate), int(seconds * rate)) - sent
        if due > 0:
            sent += flood.run(due, max(end - now, 0.0), chunk=50_000)
        left = min(now + PACE_SLICE_S, end) - time.monotonic()
        if left > 0:
            time.sleep(left)


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@register_scenario
class Synflood(Scenario):
    name = "synflood"
    description = ("legit connects and CPU per flood SYN under one spoofed SYN flood: XDP guard vs "
                   "kernel syncookies, nft SYNPROXY, the kernel's XDP SYN proxy, iptables raw drop")
    metrics = [Metric("success", "% legit connects ok", "higher"),
               Metric("p99_attempt", "ms (p99 per attempt)", "lower"),
               Metric("cpu_per_mflood", "CPU ms per 1M flood SYNs", "lower"),
               Metric("defence_cpu", "CPU ms per 1M flood SYNs above the drop floor", "lower"),
               Metric("answer_cpu", "CPU ms per 1M flood SYNs above the XDP_TX floor", "lower")]
    baseline = "syncookies"
    targets = [Target("success", "fastpath", ">=", 99),
               Target("defence_cpu", "fastpath", ">=", 3.0, versus="syncookies"),
               Target("defence_cpu", "fastpath", ">=", 3.0, versus="synproxy"),
               Target("answer_cpu", FASTPATH_LINUX_SYNS, ">=", 1.0, versus=KERNEL_PROXY)]
    repeat, quick_repeat, warmup = 3, 1, 1

    def contenders(self) -> list[str]:
        return ["fastpath", FASTPATH_GENERIC, "syncookies", "synproxy", FASTPATH_LINUX_SYNS, KERNEL_PROXY,
                "fastpath-drop", "rawdrop"]

    def setup(self, ctx: BenchContext) -> None:
        from fastpath.netns import Lab, netns_unavailable_reason

        if os.geteuid() != 0:
            raise CapabilityError("the synflood lab needs root")
        reason = netns_unavailable_reason()
        if reason:
            raise CapabilityError(reason)
        for tool in ("nft", "iptables", "ethtool"):
            if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":")):
                raise CapabilityError(f"the {tool} command is missing")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise CapabilityError("synflood needs two CPUs: one for the flood, one for the clients")
        self._cpu, self._others = cpus[0], ",".join(str(c) for c in cpus[1:])
        self._lab = Lab.up(floodlab.TOPOLOGY, name=f"fpsf{os.getpid() % 100000}")
        lab = self._lab
        self._server = lab.spawn("server", ["taskset", "-c", self._others, *floodlab.serve_argv()])
        self._server.wait_output("ready")
        with lab.enter("attacker"):
            from fastpath.labs.flood import LINUX_OPTIONS, Flood

            self._flood = Flood("eth0", lab.mac("server", "eth0"), floodlab.SERVER4, floodlab.SERVICE_PORT,
                                floodlab.SPOOFED_NET)
            self._linux_flood = Flood("eth0", lab.mac("server", "eth0"), floodlab.SERVER4,
                                      floodlab.SERVICE_PORT, floodlab.SPOOFED_NET, options=LINUX_OPTIONS)
        # The attacker never needs what comes back (SYN-ACKs to spoofed addresses): drop it
        # on arrival, so the return path costs every answering defence as little as it can.
        xdp.attach(FLOORS["drop_all"], "eth0", lab.netns("attacker"), "native")
        self._defines = plan_defines("eth0", lab.netns("server"))
        self._kernel: KernelXdpSynproxy | None = None
        try:
            self._kernel = KernelXdpSynproxy(floodlab.SERVICE_PORT)
        except CapabilityError as exc:
            kernel_peers.skip_or_fail(ctx.skip_contender, [KERNEL_PROXY], exc)

    # -- defences ----------------------------------------------------------------------------

    def _on(self, contender: str) -> None:
        lab, ns = self._lab, self._lab.netns("server")
        if contender in ("drop_all", "reflect"):
            xdp.attach(FLOORS[contender], "eth0", ns, "native")
        elif contender in ("fastpath", FASTPATH_LINUX_SYNS, FASTPATH_GENERIC):
            cfg = GuardConfig(cookie_ports=(floodlab.SERVICE_PORT,), cookies="always")
            sg.attach("eth0", ns, "generic" if contender == FASTPATH_GENERIC else "native", cfg)
        elif contender == "fastpath-drop":
            cfg = GuardConfig(cookie_ports=(), drop_ports=(floodlab.SERVICE_PORT,))
            sg.attach("eth0", ns, "native", cfg)
        elif contender == "syncookies":
            lab.run("server", ["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"])
        elif contender == "synproxy":
            script = _SYNPROXY.format(port=floodlab.SERVICE_PORT, mss=self._defines["SG_MSS4"],
                                      wscale=self._defines["SG_WSCALE"])
            lab.run("server", ["nft", "-f", "-"], input=script)
            self._loose = nft.set_tcp_loose(ns, 0)
        elif contender == KERNEL_PROXY:
            self._kernel_on()
        elif contender == "rawdrop":
            lab.run("server", ["iptables", "-t", "raw", "-I", "PREROUTING", "-i", "eth0", "-p", "tcp",
                               "--dport", str(floodlab.SERVICE_PORT), "--syn", "-j", "DROP"])

    def _kernel_on(self) -> None:
        """The kernel XDP SYN proxy on the server, and its premise without a flood: legit
        connects go through (the program's cookie, netfilter's SYNPROXY, the service) and
        the program answers SYNs."""
        kernel, lab = self._kernel, self._lab
        if kernel is None:
            raise FastpathError(f"{KERNEL_PROXY} was not set up")
        kernel.on("eth0", lab.netns("server"))
        try:
            # A second look when the first fails: on kernels >= 6.15 an occasional connect
            # through SYNPROXY waits for the 1 s SYN-ACK retransmit (see the README), which a
            # 2 s probe timeout can miss.
            for _ in range(2):
                before = kernel.synacks()
                out = lab.run("client", floodlab.probe_argv(count=5, timeout=2.0, interval=0.05,
                                                            seconds=10.0), timeout=30).stdout
                data = floodlab.probe_result(out)
                answered = kernel.synacks() - before
                if data["ok"] == data["attempts"] and answered >= 1:
                    break
            # A SYN whose 4-tuple conntrack still holds (a client port reused within
            # TIME_WAIT of an earlier run's flow) is passed on by the program, as designed,
            # and netfilter's SYNPROXY answers it: not every legit SYN is answered from XDP.
            if data["ok"] < data["attempts"] or answered < 1:
                raise FastpathError(
                    f"through the kernel XDP SYN proxy (no flood) {data['ok']} of {data['attempts']} legit "
                    f"connects succeeded, with {answered} SYN-ACKs from XDP: failures {data['failures']}")
        except BaseException:
            kernel.off()
            raise

    def _off(self, contender: str) -> None:
        lab, ns = self._lab, self._lab.netns("server")
        if contender in ("drop_all", "reflect"):
            xdp.detach("eth0", ns)
        elif contender in ("fastpath", FASTPATH_LINUX_SYNS, FASTPATH_GENERIC, "fastpath-drop"):
            sg.detach("eth0", ns)
        elif contender == "syncookies":
            lab.run("server", ["sysctl", "-qw", "net.ipv4.tcp_syncookies=0"])
        elif contender == "synproxy":
            lab.run("server", ["nft", "delete", "table", "inet", "fastpath_bench_synproxy"])
            nft.set_tcp_loose(ns, getattr(self, "_loose", 0))
        elif contender == KERNEL_PROXY and self._kernel is not None:
            self._kernel.off()
        elif contender == "rawdrop":
            lab.run("server", ["iptables", "-t", "raw", "-D", "PREROUTING", "-i", "eth0", "-p", "tcp",
                               "--dport", str(floodlab.SERVICE_PORT), "--syn", "-j", "DROP"])

    # -- one flood --------------------------------------------------------------------------

    def _run(self, contender: str, ctx: BenchContext, probe: bool, flood: Flood | None = None,
             rate: float | None = None) -> dict[str, float]:
        """One flood (`flood`, the default one when None) against `contender`: as fast as the
        generator goes, or paced at `rate` SYN/s (see paced_flood); `probe` runs the legitimate
        clients meanwhile."""
        flood = flood or self._flood
        lab = self._lab
        seconds = ctx.pick(5.0, 2.0)
        self._on(contender)
        try:
            client = None
            if probe:
                client = lab.spawn("client", ["taskset", "-c", self._others,
                                              *floodlab.probe_argv(count=100_000, timeout=2.0, interval=0.02,
                                                                   seconds=seconds)])
                time.sleep(0.3)  # the probe's interpreter start-up, off the measured window
            rx0 = floodlab.xdp_rx_packets(lab)
            synacks0 = self._kernel.synacks() if contender == KERNEL_PROXY and self._kernel else 0
            saved = os.sched_getaffinity(0)
            # Generator and everything it sets off (veth, bridge, the server's receive path,
            # the answers) run on one CPU, in the generator's softirq context; count that CPU.
            os.sched_setaffinity(0, {self._cpu})
            try:
                busy0 = cpu_busy_ns(self._cpu)
                own0 = time.thread_time_ns()
                with lab.enter("attacker"):
                    if rate is None:
                        sent = flood.run(10**10, seconds, chunk=50_000)
                    else:
                        sent = paced_flood(flood, rate, seconds)
                busy = cpu_busy_ns(self._cpu) - busy0
                own = time.thread_time_ns() - own0
            finally:
                os.sched_setaffinity(0, saved)
            frames = floodlab.xdp_rx_packets(lab) - rx0
            result = {"cpu_per_mflood": busy / max(frames, 1)}  # ns per SYN == ms per million SYNs
            if rate is not None:  # the sending thread's own CPU time, softirqs it ran included
                result["thread_ns"] = own / max(frames, 1)
                result["sent_rate"] = sent / seconds
            if client is not None:
                client.wait(seconds + 30)
                data = floodlab.probe_result(client.output())
                client.stop()
                result["success"] = 100.0 * data["ok"] / max(data["attempts"], 1)
                result["p99_attempt"] = _p99(data["attempt_ms"])
            if frames < 0.5 * sent:
                raise FastpathError(f"only {frames:,} of {sent:,} flood frames reached the server's XDP "
                                    f"hook ({flood.engine} engine)")
            if contender == KERNEL_PROXY and self._kernel:
                synacks = self._kernel.synacks() - synacks0
                if synacks < 0.5 * frames:
                    raise FastpathError(f"the kernel XDP SYN proxy answered {synacks:,} of {frames:,} flood "
                                        "SYNs with a SYN-ACK (its values[1] counter)")
                ctx.log(f"synflood {contender}: {synacks:,} SYN-ACKs from XDP")
            ctx.log(f"synflood {contender}: {frames:,} flood frames in {seconds:g}s "
                    f"({flood.engine} engine, {sent / seconds:,.0f} sent/s), "
                    f"{result['cpu_per_mflood']:,.0f} CPU ms per 1M")
            return result
        finally:
            self._off(contender)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        flood = self._linux_flood if contender in _LINUX_SYNS else self._flood
        drop = self._run("drop_all", ctx, probe=False, flood=flood)["cpu_per_mflood"]
        reflect = self._run("reflect", ctx, probe=False, flood=flood)["cpu_per_mflood"]
        out = self._run(contender, ctx, probe=True, flood=flood)
        out["defence_cpu"] = out["cpu_per_mflood"] - drop
        out["answer_cpu"] = out["cpu_per_mflood"] - reflect
        return out

    def teardown(self, ctx: BenchContext) -> None:
        kernel = getattr(self, "_kernel", None)
        try:
            if kernel is not None:  # its links and rules first, while the lab is there
                kernel.close()
        finally:
            for name in ("_flood", "_linux_flood"):
                flood = getattr(self, name, None)
                if flood is not None:
                    flood.close()
            lab = getattr(self, "_lab", None)
            if lab is not None:
                with contextlib.suppress(Exception):
                    floodlab.cleanup(lab)
                lab.down()
