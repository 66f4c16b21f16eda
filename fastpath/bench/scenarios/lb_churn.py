"""`lb-churn`: the XDP load balancer's flow table under churn, a scaling curve
(Scenario.sweep): how full conntrack gets, and whether long-lived flows keep their entries,
as ever more new flows pass through a small table.

The balancer (bpf/l4lb.c) is loaded with the smallest tables `lb attach` allows
(`--conntrack 1024 --half-open 1024`, sized for this host's CPUs as attach does) and one dsr
VIP with 3 backends, configured by the real control plane. Packets go through
BPF_PROG_TEST_RUN one by one. Per repeat, from empty tables:
1. 2 × LONG_LIVED flows are established (two ACKs each: half-open, then confirmed): half
   of them active, half idle;
2. the point's number of new flows is churned through, each confirmed the same way, in
   chunks of CHUNK; after every chunk each active long-lived flow sends one packet, and
   before it does its entry is looked up from user space (a lookup that leaves the LRU alone);
3. `occupancy`: conntrack's entries at the end, % of its size; `hit`: % of the active
   flows' packets that found their entry (a miss re-creates it, half-open first);
   `idle_hit`: % of the idle flows (silent through the churn) whose entry is still there.
The points are new flows: 0.5×, 1×, 2× and 10× the table.
"""

from __future__ import annotations

import ipaddress
import os

from fastpath.apps.lb import abi, config, program, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bench import BenchContext, Metric, Scenario, register_scenario
from fastpath.bench.scenarios.lb import _frame
from fastpath.bpf import loader, testrun
from fastpath.errors import CapabilityError, FastpathError

TABLE = 1024  # the smallest --conntrack (and --half-open) lb attach takes
POINTS = [str(TABLE // 2), str(TABLE), str(2 * TABLE), str(10 * TABLE)]
LONG_LIVED = 128
CHUNK = 128
VIP = "10.66.0.1"


def _key(client: str, sport: int) -> abi.FlowKey:
    """The conntrack key of client:sport -> VIP:80/tcp, as l4lb.c builds it from the frame."""
    k = abi.FlowKey()
    k.src[:4] = ipaddress.IPv4Address(client).packed
    k.dst[:4] = ipaddress.IPv4Address(VIP).packed
    k.sport = int.from_bytes(sport.to_bytes(2, "big"), "little")
    k.dport = int.from_bytes((80).to_bytes(2, "big"), "little")
    k.proto = 6
    k.family = 4
    return k


def _client(i: int) -> tuple[str, int]:
    """The i-th flow's client address and port: 100.64.0.0/10 spread over ports."""
    addr = ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + i // 50_000)
    return str(addr), 10_000 + i % 50_000


@register_scenario
class LbChurn(Scenario):
    name = "lb-churn"
    description = ("XDP load balancer under flow churn: conntrack occupancy and long-lived flows' hit "
                   f"rate vs new flows through a {TABLE}-entry table, 0.5× → 10× its size")
    metrics = [Metric("occupancy", "% of conntrack in use", "lower"),
               Metric("hit", "% active long-lived packets finding their flow", "higher"),
               Metric("idle_hit", "% idle long-lived flows still found", "higher")]
    baseline = POINTS[0]
    sweep = "new flows"
    repeat, quick_repeat, warmup = 5, 1, 1

    def contenders(self) -> list[str]:
        return list(POINTS)

    def setup(self, ctx: BenchContext) -> None:
        if os.geteuid() != 0:
            raise CapabilityError("loading BPF programs needs root")
        self._defines: dict[str, int | str] = {**abi.TUNABLES, **program.host_cpus(),
                                               "LB_CONNTRACK_SIZE": TABLE, "LB_HALF_OPEN_SIZE": TABLE,
                                               "LB_RING_SIZE": 4099, "LB_MAX_VIPS": 1, "LB_MAX_BACKENDS": 4}
        config.check_tunables(self._defines)
        self._prog = loader.load(abi.SPEC, self._defines)
        self._maps = LbMaps.from_program(self._prog)
        bal = Balancer(self._maps, store.LbState.for_defines(self._defines), lambda _a: "02:00:00:00:00:aa")
        bal.apply(config.parse_config({"vips": {f"{VIP}:80/tcp": {
            "backends": {f"10.0.0.{11 + i}": None for i in range(3)}}}}, "lb-churn"))

    def _send(self, i: int) -> None:
        client, sport = _client(i)
        testrun.run_expect(self._prog.prog_fd, _frame(VIP, client, sport), "XDP_TX", 1, "lb-churn")

    def _clear(self) -> None:
        for name in ("conntrack", "half_open"):
            m = self._maps[name]
            for k in list(m.keys()):
                m.delete(k)

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        self._clear()
        ct = self._maps["conntrack"]
        long_lived, idle = list(range(LONG_LIVED)), list(range(LONG_LIVED, 2 * LONG_LIVED))
        for i in long_lived + idle:
            self._send(i)
            self._send(i)
        if len(list(ct.keys())) != 2 * LONG_LIVED:
            raise FastpathError(f"lb-churn: {2 * LONG_LIVED} flows established, conntrack holds "
                                f"{len(list(ct.keys()))}: the flows are not being confirmed")
        keys = [_key(*_client(i)) for i in long_lived]
        hits = packets = 0
        churn = int(contender)
        for start in range(0, churn, CHUNK):
            for i in range(2 * LONG_LIVED + start, 2 * LONG_LIVED + min(start + CHUNK, churn)):
                self._send(i)
                self._send(i)
            for i, key in zip(long_lived, keys, strict=True):
                hits += ct.get(key) is not None
                packets += 1
                self._send(i)
        entries = len(list(ct.keys()))
        kept = sum(ct.get(_key(*_client(i))) is not None for i in idle)
        return {"occupancy": 100.0 * entries / TABLE, "hit": 100.0 * hits / max(packets, 1),
                "idle_hit": 100.0 * kept / len(idle)}

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        points = list(medians)

        def row(metric: str) -> str:
            return ", ".join(f"{medians[p][metric]:.0f} % at {p}" for p in points)

        return [
            f"conntrack holds {TABLE} flows; each new flow that sends a second packet is confirmed "
            "into it, so occupancy rises with the churn until the table is full, then stays there "
            "as every confirmed flow evicts an old one (an LRU hash with one list for all CPUs; the "
            "kernel hands out free entries in batches of 128, LOCAL_FREE_TARGET, so it may sit a "
            f"little short of 100 %): {row('occupancy')}.",
            "Active long-lived flows are found on lookup, which marks their entries referenced, so "
            "eviction passes them over while colder entries remain: their hit rate stays up "
            f"({row('hit')}) as long as the churn between two of their packets ({CHUNK} new flows "
            f"here) is well below the table's {TABLE}.",
            "Idle flows get no such mark: once the churn since their last packet passes what the "
            f"table holds, their entries are gone ({row('idle_hit')}); their next packet is a miss "
            "and a new Maglev pick, which lands on the same backend while the backends are "
            "unchanged, so the connection survives, only its entry was re-made. Size --conntrack "
            "for the flows confirmed within the longest idle time you want kept.",
            "Flows of one packet (a spoofed flood) churn half_open, a separate table with per-CPU "
            "LRU lists, and never reach conntrack.",
        ]

    def teardown(self, ctx: BenchContext) -> None:
        maps = getattr(self, "_maps", None)
        if maps is not None:
            maps.close()
        prog = getattr(self, "_prog", None)
        if prog is not None:
            prog.close()
