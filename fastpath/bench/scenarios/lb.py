"""Two scenarios for the XDP load balancer (bpf/l4lb.c): `lb-packet` and `lb`.

`lb-packet`: ns/packet through BPF_PROG_TEST_RUN, per forwarding mode, for a flow found in
conntrack (`ns_hit`) and a non-SYN packet whose flow is not (`ns_miss`: failed lookup,
Maglev slot, conntrack insert). A test run repeats the program on the same buffer, which a
balancer rewrites (ipip even grows it), so the program runs inside the frame-restoring
harness of fastpath.bpf.testrun (save the frame, run the data plane, shrink the head back,
restore the frame); for `ns_miss` its `after` hook also deletes the flow again. The
`harness` contender (the baseline) does all of that around an empty data plane, so
`value - harness` is the balancer's own cost.
The peer, `textbook` (bpf/lb_peers.c), is the XDP balancer most tutorials build, Katran's
fast path reduced to its core: IPv4 only, no VLAN, no counters, no flow lifetime, a shared
LRU, a MAC rewrite; it runs on the dsr frame under the same harness. It does strictly less
than any l4lb mode, so `textbook / mode` says what fastpath's defensive parsing, counters
and flow states cost on this kernel and machine. Targets: a hit in each mode at least 0.7×
as fast as the textbook's (at most 1.43× its time; ratios within one run, so no machine's
absolute timings are built in).
The kernel's peer, `tunnel` (fastpath.bench.kernel_peers: samples/bpf/xdp_tx_iptunnel_kern.c
built from the kernel source package), looks the VIP up in a hash and pushes an outer IPv4
header (XDP_TX): no hashing, no conntrack, one path for hit and miss alike. It runs in the
same harness steps (bpf/peer_harness.c) on the ipip frame; its own no-op build is swapped
for `harness`. Target: fastpath's ipip hit within 1.3× the tunnel's time.

`lb`: connections/s and requests/s from one client namespace to a VIP, through a
balancer namespace on a bridge, to three backend namespaces running fastpath-epoll-echo.
Contenders, all configured side by side on the same lab and driven by the same clients:
- `fastpath-dsr`: l4lb in dsr mode (replies go from the backends straight to the client);
- `fastpath-nat`: l4lb in nat mode (replies come back through the balancer);
- `nft`: an nftables DNAT load balancer (jhash over source address and port, map to the
  three backends), the baseline;
- `haproxy`: HAProxy in TCP mode (roundrobin), a user-space proxy.
- `direct`: no balancer, the floor: the same client straight to one backend (b1's
  address, from a second client address on the backends' subnet, so not even a router is
  in the way). The client takes one address, so all of it lands on one backend; that is
  fine for what `direct` is for, the cost per connection and per request of everything
  but the balancer (client, backend, veths and bridge).
Throughput comes from the same native client, fastpath-echo-bench, which checks every
echoed byte: conns/s with --new-conn-per-request (32 connections at a time, each connects,
sends 64 bytes, reads the echo and closes with a RST, so no TIME_WAIT socket ties up a
client port); req/s with 64 connections that stay open, one 64-byte message in flight each.
On a small machine client, balancer and backends share the cores, which compresses every
throughput ratio towards 1; in production the clients and backends are other machines and
what matters is what the balancer itself costs, hence the CPU metrics:
- `cpu_per_conn`, `cpu_per_req`: µs of CPU per connection (during the conns/s run) and per
  request (during the req/s run): busy time of all CPUs from /proc/stat (every state but
  idle and iowait), sampled inside the client's measured window (CPU_MARGIN of it left
  out at each end), as a rate divided by the client's conn/s or req/s. Everything on the
  machine counts: client, balancer, backends, softirqs.
- `lb_cpu_per_conn`, `lb_cpu_per_req`: the same minus the floor, `direct` measured right
  around it (a short direct churn run just before the conns/s run, a short direct steady
  run just after the req/s run, FLOOR_S each): what the balancer adds per connection and
  per request. 0 for `direct` itself (its ratio to the baseline then reads n/a); noise can
  push a cheap balancer's value below 0 in a single repeat.
The CPU metrics are reported, not targeted. Other work on the machine inflates them
(all CPUs are counted), so run on a quiet machine and compare within one run.
Time: per repeat a balancer gets a 2.5 s churn and a 2.5 s steady run (0.5 s warm-up
each) and the two 1 s direct floors (0.2 s warm-up), `direct` just its own two runs;
1 warm-up + 5 measured rounds of 5 contenders take about 4 minutes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastpath.apps.lb import abi, config, program, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bench import BenchContext, Metric, Scenario, Target, kernel_peers, register_scenario
from fastpath.bench.environment import cpu_busy_ns
from fastpath.bpf import loader, testrun, xdp
from fastpath.errors import CapabilityError, FastpathError

# ---------------------------------------------------------------------------------------
# lb-packet

# Run after each miss-path run (the harness's `after` hook): forget the flow again, so the
# next run misses too. IPv4/TCP without options at fixed offsets, as _frame builds it.
_PACKET_VIPS = {"dsr": "10.1.0.1", "nat": "10.1.0.2", "ipip": "10.1.0.3", "textbook": "10.1.0.1",
                "tunnel": "10.1.0.3", "harness": "10.1.0.1"}
_TEXTBOOK_RING = 67  # TB_RING in bpf/lb_peers.c


def _fill_textbook(prog: loader.LoadedProgram, vip: str, port: int, backends: int) -> None:
    """The textbook balancer's VIP (index 0), its ring over `backends` and their MACs, keys as
    bpf/lb_peers.c loads them from the frame (network-order fields read as host integers)."""
    import ctypes

    addr = int.from_bytes(ipaddress.IPv4Address(vip).packed, "little")
    nport = int.from_bytes(port.to_bytes(2, "big"), "little")
    prog.table("tb_vips")[ctypes.c_uint64(addr << 32 | nport << 16 | 6)] = ctypes.c_uint32(0)
    ring, macs = prog.table("tb_ring"), prog.table("tb_macs")
    for slot in range(_TEXTBOOK_RING):
        ring[ctypes.c_int(slot)] = ctypes.c_uint32(slot % backends)
    for i in range(backends):
        macs[ctypes.c_int(i)] = ctypes.c_uint64(0x0200000000AA + i)


def _frame(dst: str, client: str = "198.51.100.7", sport: int = 40000) -> bytes:
    """Ethernet + IPv4 + TCP ACK (no options) + 20 bytes from client:sport to dst:80,
    checksums valid."""
    import struct

    from fastpath.labs.flood import checksum

    src = ipaddress.IPv4Address(client).packed
    dsta = ipaddress.IPv4Address(dst).packed
    payload = b"x" * 20
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1000, 1, 5 << 4, 0x10, 512, 0, 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dsta))

    ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
    pseudo = src + dsta + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    eth = bytes.fromhex("020000000b01" "020000000c01" "0800")
    return eth + bytes(ip) + tcp


@register_scenario
class LbPacket(Scenario):
    name = "lb-packet"
    description = "ns/packet of the XDP load balancer per mode, conntrack hit and miss (BPF_PROG_TEST_RUN)"
    metrics = [Metric("ns_hit", "ns/packet", "lower"), Metric("ns_miss", "ns/packet", "lower")]
    baseline = "harness"
    targets = [*(Target("ns_hit", mode, ">=", 0.7, versus="textbook") for mode in ("dsr", "nat", "ipip")),
               Target("ns_hit", "ipip", ">=", 1 / 1.3, versus="tunnel")]

    def contenders(self) -> list[str]:
        return ["dsr", "nat", "ipip", "textbook", "tunnel", "harness"]

    def setup(self, ctx: BenchContext) -> None:
        self._progs: list[loader.LoadedProgram] = []
        self._maps: list[LbMaps] = []
        self._run: dict[tuple[str, str], int] = {}
        # the balancer, and lb_bench_forget, which makes every run of a miss miss again
        src = [abi.SPEC.source_path, abi.SPEC.source_dir / "l4lb_bench.c"]
        frame_len = len(_frame("10.1.0.1"))
        defines = {**abi.TUNABLES, "LB_RING_SIZE": 4099, "LB_MAX_VIPS": 4}
        for kind in ("hit", "miss", "noop-hit", "noop-miss"):
            # ipip grows the frame at the head; a miss forgets its flow after every run
            prog = testrun.load_restoring(src, "lb_process", frame_len, defines, moves="head",
                                          noop=kind.startswith("noop"),
                                          after="lb_bench_forget" if kind.endswith("miss") else None)
            self._progs.append(prog)
            maps = LbMaps.from_program(prog)
            self._maps.append(maps)
            bal = Balancer(maps, store.LbState.for_defines(defines), lambda a: "02:00:00:00:00:aa")
            for mode in ("dsr", "nat", "ipip"):
                vip = config.parse_vip(f"{_PACKET_VIPS[mode]}:80/tcp")
                bal.add_vip(vip, mode)
                for i in range(3):
                    bal.add_backend(vip, ipaddress.ip_address(f"10.0.0.{11 + i}"),
                                    8080 if mode == "nat" else None)
            metric = "ns_miss" if kind.endswith("miss") else "ns_hit"
            for c in ("dsr", "nat", "ipip", "harness"):
                if (c == "harness") == kind.startswith("noop"):
                    self._run[(c, metric)] = prog.prog_fd
        for metric in ("ns_hit", "ns_miss"):
            prog = testrun.load_restoring([abi.SPEC.source_dir / "lb_peers.c"], "tb_process", frame_len, {},
                                          after="tb_forget" if metric == "ns_miss" else None)
            self._progs.append(prog)
            _fill_textbook(prog, _PACKET_VIPS["textbook"], 80, 3)
            self._run[("textbook", metric)] = prog.prog_fd
        for (c, _metric), fd in self._run.items():
            testrun.run_expect(fd, _frame(_PACKET_VIPS[c]), "XDP_TX", what=f"lb-packet: {c}")
        self._tunnel: kernel_peers.TunnelBench | None = None
        try:
            addr = _PACKET_VIPS["tunnel"]
            self._tunnel = kernel_peers.TunnelBench(_frame(addr), addr, 80)
        except CapabilityError as exc:
            kernel_peers.skip_or_fail(ctx.skip_contender, ["tunnel"], exc)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        frame = _frame(_PACKET_VIPS[contender])
        repeat = ctx.pick(2_000_000, 20_000)
        if contender == "tunnel" and self._tunnel is not None:
            # One path (no flow table: hit and miss alike); its harness's no-op time is
            # swapped for this scenario's, so `tunnel - harness` is its own cost.
            ns, noop = self._tunnel.measure(repeat)
            return {m: ns - noop + testrun.run_expect(self._run[("harness", m)], frame, "XDP_TX",
                                                      repeat).ns_per_packet for m in ("ns_hit", "ns_miss")}
        return {metric: testrun.run_expect(self._run[(contender, metric)], frame, "XDP_TX", repeat,
                                           contender).ns_per_packet
                for metric in ("ns_hit", "ns_miss")}

    def teardown(self, ctx: BenchContext) -> None:
        for m in getattr(self, "_maps", []):
            m.close()
        for p in getattr(self, "_progs", []):
            p.close()
        tunnel = getattr(self, "_tunnel", None)
        if tunnel is not None:
            tunnel.close()


# ---------------------------------------------------------------------------------------
# lb: connections and requests per second through the balancer

CLIENT = "10.20.1.10"
BACKENDS = {"b1": "10.20.2.11", "b2": "10.20.2.12", "b3": "10.20.2.13"}
BACKEND_PORT = 8080
# fastpath-nat's own backend port: its reply translation is keyed by backend address, port
# and client address, port, so it must not see the replies of nft's flows (same client
# ports, same backends) as its own.
NAT_BACKEND_PORT = 8081
VIPS = {"fastpath-dsr": ("10.20.100.1", 8080), "fastpath-nat": ("10.20.100.2", 80),
        "nft": ("10.20.100.3", 80), "haproxy": ("10.20.100.4", 80)}
# `direct`: the client's second address is on the backends' subnet, so it reaches b1 over
# the bridge alone, with neither the balancer nor its routing in the way.
CLIENT_DIRECT = "10.20.2.10"
DIRECT = (BACKENDS["b1"], BACKEND_PORT)
LAB = "fpbenchlb"
# CPU is sampled inside the client's measured window, this fraction of it left out at
# each end (the client's start-up, its last connections winding down).
CPU_MARGIN = 0.1
# The direct floor runs around each balancer's runs: seconds measured, seconds of warm-up
# (full run, --quick).
FLOOR_S, FLOOR_WARMUP_S = (1.0, 0.5), (0.2, 0.1)

TOPOLOGY: dict[str, Any] = {
    "name": LAB,
    "nodes": {
        "client": {"sysctls": {"net.ipv4.ip_local_port_range": "10000 60999"}},
        "lb": {"sysctls": {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                           "net.ipv4.conf.default.rp_filter": 0, "net.ipv4.conf.all.send_redirects": 0,
                           "net.ipv4.conf.default.send_redirects": 0}},
        **{n: {"sysctls": {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                           "net.ipv4.conf.all.rp_filter": 0}} for n in BACKENDS},
    },
    "bridges": {"sw0": {}},
    "links": [*({"endpoints": [f"{n}:eth0", "sw0"], "tx_checksum": False} for n in ("client", *BACKENDS)),
              {"endpoints": ["lb:eth0", "sw0"], "gro": True, "tx_checksum": False}],
    "addresses": {"client:eth0": [f"{CLIENT}/24", f"{CLIENT_DIRECT}/24"],
                  "lb:eth0": ["10.20.1.1/24", "10.20.2.1/24"],
                  **{f"{n}:eth0": [f"{a}/24"] for n, a in BACKENDS.items()}},
    "routes": {"client": [{"dst": "10.20.100.0/24", "via": "10.20.1.1"}],
               **{n: [{"dst": "default", "via": "10.20.2.1"}] for n in BACKENDS}},
}

_NFT = """
table ip fastpath_bench_lb {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr %(vip)s tcp dport %(port)d dnat to jhash ip saddr . tcp sport mod 3 map { %(map)s } : %(bport)d
  }
}
"""

_HAPROXY = """
global
  maxconn 8000
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend vip
  bind %(vip)s:%(port)d
  default_backend echo
backend echo
  balance roundrobin
%(servers)s
"""


def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


@register_scenario
class LbThroughput(Scenario):
    name = "lb"
    description = ("connections/s, requests/s and CPU per connection/request through the XDP load "
                   "balancer (dsr, nat) vs nftables DNAT and HAProxy, same lab and clients, "
                   "less a direct (no balancer) floor")
    metrics = [Metric("conns_per_s", "conn/s", "higher"), Metric("reqs_per_s", "req/s", "higher"),
               Metric("conn_p99_us", "µs p99 connect+exchange", "lower"),
               Metric("cpu_per_conn", "µs CPU per connection, all CPUs", "lower"),
               Metric("cpu_per_req", "µs CPU per request, all CPUs", "lower"),
               Metric("lb_cpu_per_conn", "µs CPU per connection above direct", "lower"),
               Metric("lb_cpu_per_req", "µs CPU per request above direct", "lower")]
    baseline = "nft"
    targets = [Target("conns_per_s", "fastpath-dsr", ">=", 1.5, versus="nft"),
               Target("reqs_per_s", "fastpath-dsr", ">=", 1.5, versus="nft"),
               Target("conns_per_s", "fastpath-dsr", ">=", 3.0, versus="haproxy"),
               Target("reqs_per_s", "fastpath-dsr", ">=", 3.0, versus="haproxy")]
    repeat, quick_repeat, warmup = 5, 1, 1

    def contenders(self) -> list[str]:
        return ["fastpath-dsr", "fastpath-nat", "nft", "haproxy", "direct"]

    def setup(self, ctx: BenchContext) -> None:
        from fastpath.netns import Lab, list_labs

        echo = shutil.which("fastpath-epoll-echo") or str(Path(sys.executable).parent / "fastpath-epoll-echo")
        load = shutil.which("fastpath-echo-bench") or str(Path(sys.executable).parent / "fastpath-echo-bench")
        if not (Path(echo).exists() and Path(load).exists()):
            raise CapabilityError("fastpath-epoll-echo / fastpath-echo-bench are not built",
                                  fix="run scripts/setup-host.sh")
        if shutil.which("nft") is None:
            raise CapabilityError("nft is missing", fix="apt-get install nftables")
        if any(s.name == LAB for s in list_labs()):
            raise FastpathError(f"a lab {LAB!r} is already up", fix=f"fastpath topo down {LAB}")
        self._load = load
        self.lab = Lab.up(TOPOLOGY)
        lab = self.lab
        self._ns = lab.netns("lb")
        self._peer_ns = lab.netns("sw")
        self._attached: list[tuple[str, str]] = []
        dsr_vip = VIPS["fastpath-dsr"][0]
        for node in BACKENDS:
            lab.run(node, ["ip", "addr", "add", f"{dsr_vip}/32", "dev", "lo"])
            # dsr replies (from the VIP) go straight to the client; everything else via lb
            lab.run(node, ["ip", "rule", "add", "from", dsr_vip, "lookup", "100"])
            lab.run(node, ["ip", "route", "add", "10.20.1.0/24", "dev", "eth0", "table", "100"])
            for port in (BACKEND_PORT, NAT_BACKEND_PORT):
                lab.spawn(node, [echo, "--addr", "0.0.0.0", "--port", str(port), "--threads", "1"])
        lab.run("lb", ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])
        program.attach("eth0", self._ns, "native", {"LB_RING_SIZE": 4099, "LB_MAX_VIPS": 4})
        self._attached.append(("eth0", self._ns))
        with program.session("eth0", self._ns) as bal:
            for c, mode in (("fastpath-dsr", "dsr"), ("fastpath-nat", "nat")):
                addr, port = VIPS[c]
                vip = config.parse_vip(f"{addr}:{port}/tcp")
                bal.add_vip(vip, mode)
                for a in BACKENDS.values():
                    bal.add_backend(vip, ipaddress.ip_address(a), NAT_BACKEND_PORT if mode == "nat" else None)
        nft_vip, port = VIPS["nft"]
        nmap = ", ".join(f"{i} : {a}" for i, a in enumerate(BACKENDS.values()))
        lab.run("lb", ["nft", "-f", "-"], input=_NFT % {"vip": nft_vip, "port": port, "map": nmap,
                                                        "bport": BACKEND_PORT})
        if shutil.which("haproxy") is None:
            ctx.skip_contender("haproxy", "haproxy is not installed (apt-get install haproxy)")
        else:
            ha_vip, port = VIPS["haproxy"]
            lab.run("lb", ["ip", "addr", "add", f"{ha_vip}/32", "dev", "lo"])
            cfg = Path(ctx.workdir) / "haproxy.cfg"
            servers = "\n".join(f"  server {n} {a}:{BACKEND_PORT}" for n, a in BACKENDS.items())
            cfg.write_text(_HAPROXY % {"vip": ha_vip, "port": port, "servers": servers})
            self._haproxy = lab.spawn("lb", ["haproxy", "-db", "-f", str(cfg)])
        time.sleep(0.5)
        for c in self.contenders():
            if c in ctx.skipped:
                continue
            try:
                self._client(c, 0.3, 0, churn=True, cpu=False)
            except FastpathError as exc:
                hint = ""
                if c == "haproxy":
                    hint = f"; haproxy said: {' | '.join(self._haproxy.output().strip().splitlines()[-3:])}"
                raise FastpathError(f"lb: no connection through {c} succeeded: {exc}{hint}") from None

    def _client(self, contender: str, seconds: float, warmup: float, churn: bool,
                cpu: bool = True) -> tuple[dict[str, Any], float]:
        """One fastpath-echo-bench run from the client to `contender`'s VIP (b1 for
        `direct`): the client's report and µs of CPU (all CPUs) per connection (churn) or
        request (0 with cpu=False: not sampled). Churned connections may fail now and then
        (a SYN lost to a full queue): up to 1 % is accepted; a wrong byte or a lasting
        failure is not."""
        addr, port = DIRECT if contender == "direct" else VIPS[contender]
        argv = [self._load, "--addr", addr, "--port", str(port), "--threads", "2", "--size", "64",
                "--duration", str(seconds), "--warmup", str(warmup)]
        argv += ["--connections", "32", "--new-conn-per-request"] if churn else ["--connections", "64"]
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            run = pool.submit(self.lab.run, "client", argv, timeout=seconds + warmup + 60, check=False)
            if cpu:
                _sleep_until(t0 + warmup + CPU_MARGIN * seconds)
                busy0, m0 = cpu_busy_ns(), time.monotonic()
                _sleep_until(t0 + warmup + (1 - CPU_MARGIN) * seconds)
                busy1, m1 = cpu_busy_ns(), time.monotonic()
            ended_early = cpu and run.done()
            res = run.result()
        err = res.stderr.strip().splitlines()[-1:] or [f"exit status {res.returncode}"]
        if not res.stdout.strip():
            raise FastpathError(f"{contender}: fastpath-echo-bench: {err[0]}")
        out = json.loads(res.stdout)
        done = out["conns"] if churn else out["requests"]
        if out["verify_failures"] or not done or out["connection_errors"] > done // 100:
            raise FastpathError(f"{contender}: fastpath-echo-bench: {done} done, "
                                f"{out['connection_errors']} connection errors, "
                                f"{out['verify_failures']} wrong echoes: {err[0]}")
        if ended_early:
            raise FastpathError(f"{contender}: fastpath-echo-bench ended before the CPU sampling window")
        if not cpu:
            return out, 0.0
        per_s = float(out["conn_per_s"] if churn else out["req_per_s"])
        return out, (busy1 - busy0) / (m1 - m0) / per_s / 1000  # ns/s / (1/s) -> ns -> µs

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        seconds, warmup = ctx.pick(2.5, 0.5), ctx.pick(0.5, 0.2)
        floor_s, floor_warmup = ctx.pick(*FLOOR_S), ctx.pick(*FLOOR_WARMUP_S)
        balancer = contender != "direct"
        # the floors right around the runs they are taken off: churn before, steady after
        floor_conn = self._client("direct", floor_s, floor_warmup, churn=True)[1] if balancer else None
        churn, cpu_conn = self._client(contender, seconds, warmup, churn=True)
        steady, cpu_req = self._client(contender, seconds, warmup, churn=False)
        floor_req = self._client("direct", floor_s, floor_warmup, churn=False)[1] if balancer else None
        out = {"conns_per_s": float(churn["conn_per_s"]), "reqs_per_s": float(steady["req_per_s"]),
               "conn_p99_us": float(churn["conn_latency_us"]["p99"]),
               "cpu_per_conn": cpu_conn, "cpu_per_req": cpu_req,
               "lb_cpu_per_conn": 0.0 if floor_conn is None else cpu_conn - floor_conn,
               "lb_cpu_per_req": 0.0 if floor_req is None else cpu_req - floor_req}
        if balancer:
            ctx.log(f"lb {contender}: {cpu_conn:.1f} µs CPU/conn (direct {floor_conn:.1f}), "
                    f"{cpu_req:.2f} µs CPU/req (direct {floor_req:.2f})")
        return out

    def teardown(self, ctx: BenchContext) -> None:
        lab = getattr(self, "lab", None)
        for ifname, ns in reversed(getattr(self, "_attached", [])):
            with contextlib.suppress(FastpathError):
                if ifname == "eth0":
                    program.detach(ifname, ns)
                else:
                    xdp.detach(ifname, ns)
        if lab is not None:
            lab.down()
