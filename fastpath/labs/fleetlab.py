"""The fleet lab: three XDP balancers behind a router that spreads flows over them by ECMP,
each balancer announcing the VIP over BGP with its own BIRD, and a failover scenario that
counts every connection.

    client ── router ══ sw0 ══ lb1, lb2, lb3   (XDP l4lb, dsr, BIRD: AS 65001)
     10.30.1.10   │            b1, b2, b3      (VIP on lo, answer the client directly)
                  └─ BIRD (AS 65000), kernel ECMP hashing addresses, protocol and ports

Every balancer gets the same `lb apply` file (VIP, backends, the `bgp` section naming the
router) and the same --seed and --table-size; `fastpath lb health` runs on each, with its
BIRD as a child. The router's BIRD merges the three equal BGP paths into one multipath
kernel route; when one balancer is gone its BFD session expires, the route shrinks, and
Linux rehashes flows over the rest. The scenario takes lb1, the first next hop, down: with
hash-threshold ECMP the hash space is then cut in halves instead of thirds, so part of
lb2's flows move to lb3 as well. A flow that lands on a balancer without its conntrack
entry takes the Maglev pick, which is the same on every node: the connection keeps its
backend. When lb1 returns, the thirds come back and every flow goes back where it was.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpath.apps.lb import config, fleet, program
from fastpath.core.child import Child, die_with_parent
from fastpath.errors import FastpathError

VIP = "10.30.100.1"
VIP_RANGE = "10.30.100.0/24"
PORT = 80
ROUTER = "10.30.2.1"
CLIENT = "10.30.1.10"
BALANCERS = {"lb1": "10.30.2.11", "lb2": "10.30.2.12", "lb3": "10.30.2.13"}
BACKENDS = {"b1": "10.30.2.21", "b2": "10.30.2.22", "b3": "10.30.2.23"}
FLEET_AS = 65001
ROUTER_AS = 65000
TABLE_SIZE = 4099
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 5
HOLD_S = 3


def topology(name: str) -> dict[str, Any]:
    backend_sysctls = {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                       "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}
    # ECMP over the packet's addresses, protocol and ports (custom policy 3, fields 0x37).
    # Policy 1 would do that on a router whose NIC supplies an RSS hash; across veth it takes
    # the sender's socket hash instead, which TCP rerolls at every retransmission timeout.
    router_sysctls = {"net.ipv4.ip_forward": 1, "net.ipv4.fib_multipath_hash_policy": 3,
                      "net.ipv4.fib_multipath_hash_fields": "0x0037",
                      "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                      "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.default.send_redirects": 0}
    fabric = ["router:eth1", *(f"{n}:eth0" for n in (*BALANCERS, *BACKENDS))]
    return {
        "name": name,
        "nodes": {"client": {}, "router": {"sysctls": router_sysctls}, **{n: {} for n in BALANCERS},
                  **{n: {"sysctls": backend_sysctls} for n in BACKENDS}},
        "bridges": {"sw0": {}},
        # TX checksum offload off everywhere: XDP forwards frames as they are, and a partial
        # checksum would reach a backend unfinished.
        "links": [{"endpoints": ["client:eth0", "router:eth0"], "tx_checksum": False},
                  *({"endpoints": [ep, "sw0"], "tx_checksum": False} for ep in fabric)],
        "addresses": {"client:eth0": [f"{CLIENT}/24"], "router:eth0": ["10.30.1.1/24"],
                      "router:eth1": [f"{ROUTER}/24"],
                      **{f"{n}:eth0": [f"{a}/24"] for n, a in {**BALANCERS, **BACKENDS}.items()}},
        "routes": {"client": [{"dst": "default", "via": "10.30.1.1"}],
                   **{n: [{"dst": "default", "via": ROUTER}] for n in BACKENDS}},
    }


def node_config() -> str:
    """The `lb apply` file every balancer gets, byte for byte the same."""
    backends = "\n".join(f"      {a}: {{}}" for a in BACKENDS.values())
    return (f"vips:\n  {VIP}:{PORT}/tcp:\n    mode: dsr\n    backends:\n{backends}\n"
            f"bgp:\n  asn: {FLEET_AS}\n  hold: {HOLD_S}\n  keepalive: 1\n"
            f"  bfd: {{interval_ms: {BFD_INTERVAL_MS}, multiplier: {BFD_MULTIPLIER}}}\n"
            f"  peers:\n    {ROUTER}: {{asn: {ROUTER_AS}}}\n")


def router_config() -> str:
    """The router's BIRD: what a ToR in front of a balancer fleet runs (see README)."""
    peers = "\n".join(f"protocol bgp {n} from balancer {{ neighbor {a} as {FLEET_AS}; }}"
                      for n, a in BALANCERS.items())
    return f"""\
log stderr all;
router id {ROUTER};
protocol device {{ scan time 10; }}
protocol bfd {{
  interface "eth1" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; \
multiplier {BFD_MULTIPLIER}; }};
}}
# Equal BGP paths to a VIP become one multipath kernel route: ECMP over the balancers.
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths on;
}}
template bgp balancer {{
  local as {ROUTER_AS};
  hold time {HOLD_S}; keepalive time 1;
  connect delay time 1; connect retry time 1; error wait time 1, 5;
  graceful restart off;
  bfd on;
  # Only host routes inside the VIP range are taken from the balancers.
  ipv4 {{ import where net ~ [ {VIP_RANGE}{{32,32}} ]; export none; }};
}}
{peers}
"""


@dataclass
class Sample:
    """One look at the fleet: which balancers the router uses, and per balancer the
    long-lived connections it carries now and its VIP packet counter."""

    t: float
    nexthops: set[str]
    carried: dict[str, int]
    carrier: dict[int, str]           # long-lived connection (source port) -> its balancer now
    packets: dict[str, int]
    backend_packets: dict[str, int]   # per backend, summed over the balancers


@dataclass
class Result:
    long_lived: int = 0
    survived_failover: int = 0
    survived_return: int = 0
    new_ok: int = 0
    new_failed: int = 0
    withdraw_s: float | None = None
    return_s: float | None = None
    flows_before: dict[str, int] = field(default_factory=dict)
    flows_failed_over: dict[str, int] = field(default_factory=dict)
    flows_returned: dict[str, int] = field(default_factory=dict)
    # Long-lived connections of the surviving balancers that the router's rehash moved to
    # another survivor when the victim went (hash-threshold ECMP does that).
    moved_from_survivors: int = 0
    flows_per_backend: dict[str, int] = field(default_factory=dict)
    new_per_backend: dict[str, int] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    max_stall_s: float = 0.0
    victim: str = "lb1"
    detection_s: float = BFD_INTERVAL_MS * BFD_MULTIPLIER / 1000

    def to_json(self) -> dict[str, Any]:
        return {"balancers": len(BALANCERS), **{k: v for k, v in vars(self).items()}}


class FleetLab:
    """The lab, built by `up()` and removed by `down()` (a context manager does both):
    balancers attached and configured, BIRD on every balancer and the router, echo servers
    on the backends. `seeds` gives each balancer its --seed (a fleet needs them equal)."""

    def __init__(self, name: str, seeds: dict[str, int] | None = None) -> None:
        self.name = name
        self.seeds = {n: (seeds or {}).get(n, 0) for n in BALANCERS}
        self.lab: Any = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.agents: dict[str, Child] = {}
        self.attached: list[str] = []
        self.router: Any = None

    # -- life cycle ------------------------------------------------------------------------

    def up(self, say: Callable[[str], None] = lambda _m: None, timeout: float = 90.0) -> FleetLab:
        from fastpath.netns import Lab

        self.tmp = tempfile.TemporaryDirectory(prefix="fastpath-fleet-")
        tmp = Path(self.tmp.name)
        self.lab = Lab.up(topology(self.name))
        try:
            for node in BALANCERS:
                # A NIC drops unicast frames for other MACs before XDP sees them; a veth does
                # not. Without this, the bridge would flood a dead balancer's frames (its MAC
                # forgotten) to the live ones, which would balance them: no outage to test.
                port = self.lab.interface(node, "eth0")["bridge_port"]
                self.lab.run("sw", ["bridge", "link", "set", "dev", port, "flood", "off"])
            for node in BACKENDS:
                self.lab.run(node, ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
                proc = self.lab.spawn(node, [sys.executable, "-m", "fastpath.labs.fleetpeers", "server", node,
                                             str(PORT)])
                proc.wait_output('"ready"', timeout=30)
            (tmp / "router.conf").write_text(router_config())
            self.router = self.lab.spawn("router", ["bird", "-f", "-c", str(tmp / "router.conf"),
                                                    "-s", str(tmp / "router.ctl")])
            deadline = time.monotonic() + 30
            while not (tmp / "router.ctl").exists():
                if not self.router.running or time.monotonic() > deadline:
                    raise FastpathError(f"the router's BIRD did not start: {self.router.output()[-300:]!r}")
                time.sleep(0.05)
            cfg = tmp / "lb.yaml"
            cfg.write_text(node_config())
            for node in BALANCERS:
                ns = self.lab.netns(node)
                att, _ = program.attach("eth0", ns, "auto", {"LB_RING_SIZE": TABLE_SIZE, "LB_MAX_VIPS": 4,
                                                             "LB_HASH_SEED": self.seeds[node]})
                self.attached.append(node)
                program.apply_file(cfg, "eth0", ns)
                # In the host's namespaces, as on a real node: `ip netns exec` would hide bpffs.
                self.agents[node] = Child.spawn([sys.executable, "-m", "fastpath.cli", "lb", "health",
                                                 "--iface", "eth0", "--netns", ns],
                                                name=f"fastpath lb health on {node}",
                                                preexec_fn=die_with_parent)
                say(f"{node}: l4lb attached to eth0 in {ns} ({att.mode} mode, seed {self.seeds[node]}); "
                    "fastpath lb health runs its BIRD")
            self.wait_nexthops(set(BALANCERS), timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop the agents (their BIRDs withdraw and exit), detach, remove the lab."""
        errors = []
        for agent in self.agents.values():
            agent.stop([(signal.SIGTERM, 10.0)])
            agent.close()
        self.agents.clear()
        for node in self.attached:
            try:
                program.detach("eth0", self.lab.netns(node))
            except FastpathError as exc:
                errors.append(f"{node}: {exc}")
        self.attached.clear()
        if self.lab is not None:
            self.lab.down()
            self.lab = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None
        if errors:
            raise FastpathError(f"fleet lab {self.name} removed, but detach failed: {'; '.join(errors)}")

    def __enter__(self) -> FleetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- looking -------------------------------------------------------------------------

    def nexthops(self) -> set[str]:
        """The balancers the router's route to the VIP goes through now."""
        res = self.lab.run("router", ["ip", "-j", "route", "show", f"{VIP}/32"], timeout=10)
        by_addr = {a: n for n, a in BALANCERS.items()}
        out = set()
        for route in json.loads(res.stdout or "[]"):
            gws = [h.get("gateway") for h in route.get("nexthops", [])] or [route.get("gateway")]
            out |= {by_addr[g] for g in gws if g in by_addr}
        return out

    def wait_nexthops(self, want: set[str], timeout: float) -> float:
        """Wait until the router's ECMP group is `want`; seconds it took."""
        t0 = time.monotonic()
        while True:
            have = self.nexthops()
            if have == want:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                agents = {n: list(p.log)[-1:] for n, p in self.agents.items()}
                if self.router is not None:
                    agents["router"] = self.router.output().strip().splitlines()[-3:]
                raise FastpathError(f"the router routes {VIP} via {sorted(have) or 'nothing'}, not "
                                    f"{sorted(want)}, after {timeout:g}s (agents: {agents})")
            time.sleep(0.05)

    def sample(self, flows: dict[int, str]) -> Sample:
        """Per balancer: long-lived connections (by source port) it forwarded within the last
        ~2 s (a live conntrack entry, refreshed about once a second), and its VIP packets."""
        vip = config.parse_vip(f"{VIP}:{PORT}/tcp")
        client = ipaddress.ip_address(CLIENT)
        packets: dict[str, int] = {}
        backends: Counter[str] = Counter()
        names = {f"{a}:{PORT}": n for n, a in BACKENDS.items()}
        idle: dict[int, tuple[float, str]] = {}
        for node in BALANCERS:
            with program.session("eth0", self.lab.netns(node), write=False) as bal:
                for sport in flows:
                    got = bal.explain(client, sport, vip)
                    if _recent(got) and got["idle_s"] < idle.get(sport, (99.0, ""))[0]:
                        idle[sport] = (got["idle_s"], node)
                vs = bal.vip(vip)
                packets[node] = int(bal.vip_counters(vs)["packets"])
                for b in vs.backends.values():
                    backends[names.get(b.name, b.name)] += int(bal.backend_counters(b)["packets"])
        carrier = {sport: node for sport, (_idle, node) in idle.items()}
        carried = {n: sum(1 for c in carrier.values() if c == n) for n in BALANCERS}
        return Sample(time.monotonic(), self.nexthops(), carried, carrier, packets, dict(backends))

    def check(self) -> dict[str, Any]:
        """`fastpath lb fleet check` over the three balancers."""
        return fleet.compare([fleet.report("eth0", self.lab.netns(n)) for n in BALANCERS])

    def link(self, node: str, up: bool) -> None:
        self.lab.run(node, ["ip", "link", "set", "eth0", "up" if up else "down"])


def _recent(out: dict[str, Any]) -> bool:
    return out.get("conntrack_state") == "established" and (out.get("idle_s") or 0.0) <= 2.0


# ---------------------------------------------------------------------------------------
# the scenario


def run_scenario(lab: FleetLab, *, long_lived: int = 60, phase_s: float = 5.0, victim: str = "lb1",
                 on_sample: Callable[[str, Sample, dict[str, Any]], None] | None = None,
                 say: Callable[[str], None] = lambda _m: None) -> Result:
    """Long-lived connections and new ones through the fleet; `victim` loses its link
    mid-run and gets it back. Every connection is counted (see Result)."""
    res = Result(victim=victim)
    t_fail = t_restore = float("inf")
    client = lab.lab.spawn("client", [sys.executable, "-m", "fastpath.labs.fleetpeers", "client", VIP,
                                      str(PORT), "--long-lived", str(long_lived),
                                      "--seconds", str(6 * phase_s + 120)])
    try:
        ready = _event(client, "ready", timeout=60)
        flows = {int(p): b for p, b in ready["flows"].items()}
        if ready["errors"] or len(flows) != long_lived:
            raise FastpathError(f"only {len(flows)} of {long_lived} long-lived connections opened: "
                                f"{ready['errors'][:3]}")
        res.long_lived = len(flows)
        res.flows_per_backend = dict(Counter(flows.values()))

        def watch(phase: str, seconds: float) -> Sample:
            end = time.monotonic() + seconds
            last = lab.sample(flows)
            while time.monotonic() < end:
                time.sleep(0.5)
                last = lab.sample(flows)
                if on_sample:
                    on_sample(phase, last, {**_progress(client), "per_backend": res.flows_per_backend})
            return last

        before = watch("all three up", phase_s)
        res.flows_before = before.carried
        say(f"flows per balancer: {res.flows_before}; taking {victim}'s link down")
        t_fail = time.monotonic()
        lab.link(victim, False)
        want = set(BALANCERS) - {victim}
        res.withdraw_s = round(lab.wait_nexthops(want, timeout=HOLD_S * 3 + 5), 3)
        say(f"router withdrew {victim} after {res.withdraw_s:.2f} s")
        left = max(phase_s - (time.monotonic() - t_fail), 1.0)
        during = watch(f"{victim} down", left)
        res.flows_failed_over = during.carried
        res.moved_from_survivors = sum(1 for sport, node in before.carrier.items()
                                       if node != victim and during.carrier.get(sport, node) != node)
        say(f"flows per balancer: {res.flows_failed_over}; bringing {victim} back")
        t_restore = time.monotonic()
        lab.link(victim, True)
        res.return_s = round(lab.wait_nexthops(set(BALANCERS), timeout=60), 3)
        say(f"router uses {victim} again after {res.return_s:.2f} s")
        res.flows_returned = watch(f"{victim} back", phase_s).carried
    finally:
        lab.link(victim, True)
        client.signal(15)
        with contextlib.suppress(FastpathError):
            client.wait(30)
    summary = _event(client, "summary", timeout=1)
    lost = _events(client, "lost")
    res.lost = {str(e["sport"]): f"{e['reason']} ({e['t'] - t_fail:+.2f} s from the failure)" for e in lost}
    failed_early = sum(1 for e in lost if e["t"] < t_restore)
    res.survived_failover = res.long_lived - failed_early
    res.survived_return = res.long_lived - len(lost)
    res.new_ok = int(summary["new_ok"])
    res.new_failed = int(summary["new_failed"])
    res.new_per_backend = dict(summary["new_backends"])
    res.max_stall_s = float(summary["max_stall_s"])
    return res


def _events(proc: Any, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if ev.get("event") == kind:
                    out.append(ev)
    return out


def _event(proc: Any, kind: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = _events(proc, kind)
        if got:
            return got[-1]
        if time.monotonic() > deadline or not proc.running:
            got = _events(proc, kind)
            if got:
                return got[-1]
            raise FastpathError(f"the lab's client never reported {kind!r}: {proc.output()[-300:]!r}")
        time.sleep(0.1)


def _progress(proc: Any) -> dict[str, Any]:
    return {"lost": len(_events(proc, "lost")), "new_failed": len(_events(proc, "new_failed"))}


def problems(res: Result) -> list[str]:
    """Where the run fell short of what it is to show (empty: it showed it)."""
    out = []
    n = res.long_lived
    for node in BALANCERS:
        if res.flows_before.get(node, 0) < max(1, n // 10):
            out.append(f"flows did not spread: {node} carried {res.flows_before.get(node, 0)} of {n}")
    if res.withdraw_s is None or res.withdraw_s > HOLD_S + 1:
        out.append(f"the router took {res.withdraw_s} s to withdraw {res.victim} (hold time {HOLD_S} s)")
    if res.flows_failed_over.get(res.victim, 0):
        out.append(f"{res.victim} still carried {res.flows_failed_over[res.victim]} flows with its link down")
    if not res.flows_returned.get(res.victim, 0):
        out.append(f"no flow went back to {res.victim} after its return: the return was not tested")
    for what, got in (("the failover", res.survived_failover), ("the return", res.survived_return)):
        if got < 0.99 * n:
            out.append(f"{n - got} of {n} long-lived connections did not survive {what}")
    total = res.new_ok + res.new_failed
    if total < 10:
        out.append(f"only {total} new connections were tried")
    elif res.new_failed > 0.01 * total:
        out.append(f"{res.new_failed} of {total} new connections failed")
    return out
