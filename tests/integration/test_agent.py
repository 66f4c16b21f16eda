"""`fastpath agent` and `fastpath apply` in a namespace lab: the balancer lab of test_lb (a
client, the balancer with the SYN guard chained before it, three DSR backends), decap on the
third backend, all from one node config.

The agent is a real process in the root namespace, signalled for real; its metrics listener
sits inside the balancer's namespace and is scraped over HTTP from there while long-lived
connections keep traffic flowing. Every scraped value must lie between `stats --json` read
just before and just after the scrape.

The guard's adaptive cookies switch by themselves; the agent reports each switch. That test
runs in the SYN-flood lab (fastpath/labs/floodlab) with a spoofed flood from its attacker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fastpath.agent import plan
from fastpath.apps.decap import decap
from fastpath.apps.guard import synguard
from fastpath.apps.lb import store
from fastpath.bpf import xdp
from fastpath.labs import floodlab

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_agent_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


L = _sibling("test_lb")  # its lab, servers and traffic generators
GUARDED = 23
LB_OWN = "10.20.1.1"  # the balancer node's own address: the guard protects it, not the VIP
METRICS_PORT = 9433
VIP_TEXT = f"{L.VIP}:{L.VIP_PORT}/tcp"
KNOCK = _sibling("test_xdp_chain").KNOCK
RATE_LIMITED = {"ports": [81], "syn_rate": "1/s", "ban_after": 2, "ban_seconds": 2}

# N connection attempts (one SYN each, 0.2 s apart at most) to HOST:PORT.
SYNS = """
import socket, sys
for _ in range(int(sys.argv[3])):
    s = socket.socket()
    s.settimeout(0.2)
    s.connect_ex((sys.argv[1], int(sys.argv[2])))
    s.close()
"""


def node_config(t, weights: dict[str, int], *, extra_backend: str | None = None, decap_first: bool = False,
                guard_drop: tuple[int, ...] = (GUARDED,), health: bool = True,
                guard: dict | None = None) -> dict:
    backends: dict = {L.BACKENDS[n]: {"weight": w} for n, w in weights.items()}
    if extra_backend:
        backends[extra_backend] = {"weight": 1}
    lb_entry = {
        "interface": "eth0", "netns": t.ns, "mode": "native",
        "guard": {"ports": [], "drop_ports": list(guard_drop), "cookies": False, **(guard or {})},
        "balancer": {"table_size": 4099,
                     "health": {"interval": 0.3, "timeout": 0.5, "fall": 2, "rise": 1} if health else False,
                     "vips": {VIP_TEXT: {"mode": "dsr", "backends": backends}}},
    }
    decap_entry = {"interface": "eth0", "netns": t.lab.netns("b3"),
                   "decap": {"from": ["172.16.0.0/16"], "vip": [L.VIP]}}
    return {"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}", "netns": t.ns},
            "interfaces": [decap_entry, lb_entry] if decap_first else [lb_entry, decap_entry]}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class AgentProc:
    """`fastpath agent` as systemd would run it: its own session, events on stdout."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.out = open(log, "w")  # noqa: SIM115 - closed in stop()
        # stdout carries only events; stderr the runtime's notes for people (as journald keeps them).
        self.err = open(log.with_suffix(".err"), "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastpath.cli", "agent", "--config", str(config), "--poll-interval", "0.2",
             *extra], stdout=self.out, stderr=self.err, text=True, start_new_session=True)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"agent wrote a line that is not JSON: {line!r}") from None
        return out

    def wait_event(self, name: str, after: int = 0, timeout: float = 60.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events()[after:]:
                if ev["event"] == name and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            assert self.proc.poll() is None or name == "agent_stopping", \
                f"agent exited {self.proc.returncode}: {self.events()[-5:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {name} event {match} within {timeout}s: {self.events()[after:][-8:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.out.close()
        self.err.close()


@pytest.fixture
def agent_lab(make_lab, tmp_path):
    lab = make_lab(L.topology("dsr"))
    t = L.Bench(lab, "dsr")
    lab.run("lb", ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])
    for node in L.BACKENDS:
        lab.run(node, ["ip", "addr", "add", f"{L.VIP}/32", "dev", "lo"])
        t.start_server(node)
    agents: list[AgentProc] = []
    t.agents = agents
    t.tmp = tmp_path
    try:
        yield t
    finally:
        for a in agents:
            a.stop()
        b3 = lab.netns("b3")
        if xdp.read_state("eth0", b3, "decap"):
            L.fastpath("lb", "decap", "detach", "eth0", "--netns", b3, check=False)
        if xdp.read_state("eth0", t.ns, "syn_guard"):
            L.fastpath("xdp", "detach", "eth0", "--netns", t.ns, check=False)
        if xdp.read_state("eth0", t.ns, "l4lb") or store.state_path("eth0", t.ns).exists():
            L.fastpath("lb", "detach", "eth0", "--netns", t.ns, check=False)
        with contextlib.suppress(FileNotFoundError):
            plan.managed_path().unlink()
        with contextlib.suppress(OSError):
            plan.managed_path().parent.rmdir()


def start_agent(t, config: Path, *extra: str) -> AgentProc:
    a = AgentProc(config, t.tmp / f"agent{len(t.agents)}.log", *extra)
    t.agents.append(a)
    return a


def scrape(t) -> dict[tuple[str, tuple], float]:
    """Every sample of the agent's /metrics, by (name, sorted labels)."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=20).read().decode())")
    text = t.lab.run("lb", [sys.executable, "-c", code], timeout=60).stdout
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def snapshot(t) -> dict[str, dict]:
    b3 = t.lab.netns("b3")
    return {
        "guard": json.loads(L.fastpath("xdp", "stats", "eth0", "--netns", t.ns, "--json", "--interval",
                                       "0").stdout)["counters"],
        "lb": json.loads(t.lb("stats", "--json").stdout),
        "decap": json.loads(L.fastpath("lb", "decap", "stats", "eth0", "--netns", b3,
                                       "--json").stdout)["counters"],
    }


def knock(t) -> str:
    return t.lab.run("client", [sys.executable, "-c", KNOCK, LB_OWN, str(GUARDED)], timeout=30).stdout.strip()


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one error line (notes before it are fine), no traceback."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("fastpath: error:")]
    assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res
    return errors[0]


def between(what: str, low: float, value: float | None, high: float) -> None:
    assert value is not None, f"{what}: not in the scrape"
    assert low <= value <= high, f"{what}: scraped {value}, stats said {low} before and {high} after"


def check_scrape(t) -> dict:
    """Scrape with traffic flowing; every value lies between stats read before and after."""
    before = snapshot(t)
    got = scrape(t)
    after = snapshot(t)
    ns, b3 = t.ns, t.lab.netns("b3")

    def sample(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    for counter in ("drop_port", "pass_other", "pass_tcp"):
        between(f"guard {counter}", before["guard"][counter]["packets"],
                sample("fastpath_xdp_packets_total", netns=ns, interface="eth0", program="syn_guard",
                       counter=counter), after["guard"][counter]["packets"])
    for counter in ("pass_not_tunnel", "pass_not_local"):
        between(f"decap {counter}", before["decap"][counter]["packets"],
                sample("fastpath_xdp_packets_total", netns=b3, interface="eth0", program="decap",
                       counter=counter), after["decap"][counter]["packets"])
    vb, va = before["lb"]["vips"][0], after["lb"]["vips"][0]
    for counter in ("packets", "bytes", "new_flows", "lru_hits"):
        between(f"VIP {counter}", vb[counter], sample("fastpath_lb_vip_total", netns=ns, interface="eth0",
                                                      program="l4lb", vip=VIP_TEXT, counter=counter),
                va[counter])
    for bb, ba in zip(vb["backends"], va["backends"], strict=True):
        for counter in ("packets", "new_flows"):
            between(f"backend {bb['backend']} {counter}", bb[counter],
                    sample("fastpath_lb_backend_total", netns=ns, interface="eth0", program="l4lb",
                           vip=VIP_TEXT, backend=bb["backend"], counter=counter), ba[counter])
        assert sample("fastpath_lb_backend_weight", netns=ns, interface="eth0", program="l4lb", vip=VIP_TEXT,
                      backend=bb["backend"]) == ba["weight"]
    for name, value in before["lb"]["counters"].items():
        between(f"l4lb {name}", value["packets"],
                sample("fastpath_xdp_packets_total", netns=ns, interface="eth0", program="l4lb",
                       counter=name),
                after["lb"]["counters"][name]["packets"])
    return got


def test_agent_runs_guard_balancer_and_decap_from_one_file(agent_lab):
    t = agent_lab
    b3 = t.lab.netns("b3")
    weights = {"b1": 1, "b2": 1, "b3": 1}
    config = write(t.tmp / "node.yaml", node_config(t, weights))

    # The plan, before anything runs: three attaches, nothing changed by a dry run.
    dry = json.loads(L.fastpath("apply", str(config), "--dry-run", "--json").stdout)
    assert [(s["action"], s["program"]) for s in dry["plan"]] == \
        [("attach", "syn_guard"), ("attach", "l4lb"), ("attach", "decap")], dry
    assert xdp.read_state("eth0", t.ns) is None and xdp.read_state("eth0", b3) is None

    agent = start_agent(t, config)
    applied = agent.wait_event("config_applied")
    assert any("added backend 10.20.2.13:80" in c for c in applied["changes"]), applied["changes"]
    for prog, ns in (("syn_guard", t.ns), ("l4lb", t.ns), ("decap", b3)):
        agent.wait_event("attached", program=prog, netns=ns)
    agent.wait_event("metrics_listening")
    # Health checks find every backend answering.
    for node in L.BACKENDS:
        agent.wait_event("backend_up", backend=t.name(node))

    # A second apply changes nothing and says so.
    again = L.fastpath("apply", str(config))
    assert again.stdout == "" and "nothing to do" in again.stderr

    # Long-lived connections and a guarded port knocked on: traffic for every program.
    hold = t.lab.spawn("client", [sys.executable, "-c", L.HOLD, L.VIP, str(L.VIP_PORT), "12"])
    first = json.loads(hold.wait_output("ready").split("ready ", 1)[1].splitlines()[0])
    assert set(first) <= set(L.BACKENDS) and len(first) == 12
    assert knock(t) == "timeout"
    got = check_scrape(t)
    assert got[("fastpath_agent_applies_total", (("result", "ok"),))] == 1
    assert got[("fastpath_agent_last_apply_success", ())] == 1
    assert got[("fastpath_xdp_packets_total", (("counter", "drop_port"), ("interface", "eth0"),
                                               ("netns", t.ns), ("program", "syn_guard")))] >= 1
    assert got[("fastpath_lb_backend_up", (("backend", t.name("b1")), ("interface", "eth0"), ("netns", t.ns),
                                           ("program", "l4lb"), ("vip", VIP_TEXT)))] == 1
    prog_ids = {p: xdp.read_state("eth0", ns, p).prog_id
                for p, ns in (("syn_guard", t.ns), ("l4lb", t.ns), ("decap", b3))}

    # SIGHUP with a changed weight: new flows follow the new Maglev ring, old ones stay.
    mark = len(agent.events())
    write(config, node_config(t, {**weights, "b1": 3}))
    agent.signal(signal.SIGHUP)
    ev = agent.wait_event("config_applied", after=mark)
    assert ev["changes"] == [f"weight of {t.name('b1')} in {VIP_TEXT}: 1 -> 3"], ev
    state = store.load_state("eth0", t.ns)
    assert state.vips[VIP_TEXT].backends[t.name("b1")].weight == 3
    counts = t.check_predicted(t.burst(31000, 300))
    assert counts["b1"] > counts["b2"] and counts["b1"] > counts["b3"], counts

    # A bad file is refused: one event naming the key, the running state kept, metrics served.
    mark = len(agent.events())
    bad = node_config(t, weights)
    bad["interfaces"][0]["guard"]["syn_rate"] = "fast"
    write(config, bad)
    agent.signal(signal.SIGHUP)
    ev = agent.wait_event("config_refused", after=mark)
    assert "guard.syn_rate" in ev["error"] and ev["level"] == "error"
    assert agent.proc.poll() is None
    assert store.load_state("eth0", t.ns).vips[VIP_TEXT].backends[t.name("b1")].weight == 3
    assert scrape(t)[("fastpath_agent_applies_total", (("result", "refused"),))] == 1
    res = L.fastpath("apply", str(config), check=False)
    assert res.stdout == "" and "guard.syn_rate" in one_error_line(res)

    # kill -9 and a restart: the new agent adopts what runs, changes nothing, cuts nothing.
    write(config, node_config(t, {**weights, "b1": 3}))
    agent.proc.kill()
    agent.wait(10)
    agent = start_agent(t, config)
    agent.wait_event("config_unchanged")
    agent.wait_event("metrics_listening")
    assert {p: xdp.read_state("eth0", ns, p).prog_id
            for p, ns in (("syn_guard", t.ns), ("l4lb", t.ns), ("decap", b3))} == prog_ids
    assert not [e for e in agent.events() if e["event"] in ("attached", "replaced", "detached")]

    # Health: a backend that stops taking connections is marked down (with the reason), then
    # back up. Its new SYNs are dropped rather than its server killed, so the connections it
    # holds stay open.
    mark = len(agent.events())
    syn_drop = ["INPUT", "-p", "tcp", "--syn", "--dport", str(L.VIP_PORT), "-j", "DROP"]
    t.lab.run("b2", ["iptables", "-I", *syn_drop])
    down = agent.wait_event("backend_down", after=mark, backend=t.name("b2"))
    assert down["reason"] and down["vip"] == VIP_TEXT
    assert store.load_state("eth0", t.ns).vips[VIP_TEXT].backends[t.name("b2")].health == "down"
    t.lab.run("b2", ["iptables", "-D", *syn_drop])
    agent.wait_event("backend_up", after=mark, backend=t.name("b2"))

    # SIGTERM: the agent stops, the data plane keeps running.
    mark = len(agent.events())
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert agent.wait_event("agent_stopping", after=mark)["detach"] is False
    for p, ns in (("syn_guard", t.ns), ("l4lb", t.ns), ("decap", b3)):
        att = xdp.read_state("eth0", ns, p)
        assert att is not None and xdp.link_alive(att)
    counts = Counter(t.burst(32000, 30).values())
    assert not any(k.startswith("error") for k in counts), counts

    # No established connection noticed any of it: not the applies, the kill -9, the restart.
    hold.signal(signal.SIGTERM)
    hold.wait(30)
    result = json.loads(hold.output().split("result ", 1)[1].splitlines()[0])
    assert result["events"] == [], f"long-lived connections changed backend or failed: {result['events']}"
    assert result["rounds"] > 5


def test_apply_is_all_or_nothing_and_detach_on_exit(agent_lab):
    t = agent_lab
    b3 = t.lab.netns("b3")
    weights = {"b1": 1, "b2": 1}
    # Port 81 is rate-limited (SYNs passed to the stack, cookies off) with a short ban.
    good = node_config(t, weights, health=False, guard=RATE_LIMITED)
    good["interfaces"] = good["interfaces"][:1]  # the balancer's interface only
    first = write(t.tmp / "a.yaml", good)
    L.fastpath("apply", str(first))
    guard_before = synguard.guard_config(synguard.attachment("eth0", t.ns))
    lb_before = store.load_state("eth0", t.ns).to_json()
    managed_before = plan.read_managed()

    # A config whose last step the kernel refuses: a backend with no route through eth0. The
    # decap attach and the guard change done before it are undone.
    bad = node_config(t, weights, extra_backend="192.0.2.99", decap_first=True,
                      guard_drop=(GUARDED, 24), health=False, guard=RATE_LIMITED)
    second = write(t.tmp / "b.yaml", bad)
    steps = json.loads(L.fastpath("apply", str(second), "--dry-run", "--json").stdout)["plan"]
    assert [(s["action"], s["program"]) for s in steps] == \
        [("attach", "decap"), ("configure", "syn_guard"), ("configure", "l4lb")], steps
    error = one_error_line(L.fastpath("apply", str(second), check=False))
    assert "192.0.2.99" in error and "the 2 step(s) before it were undone" in error, error
    assert xdp.read_state("eth0", b3) is None, "the decap attach was undone"
    assert not xdp.pin_dir("eth0", b3).exists()
    assert synguard.guard_config(synguard.attachment("eth0", t.ns)) == guard_before
    assert store.load_state("eth0", t.ns).to_json() == lb_before
    assert plan.read_managed() == managed_before

    # An interface that is not there: refused before any step, naming the key.
    gone = node_config(t, weights, guard_drop=(GUARDED, 24), health=False, guard=RATE_LIMITED)
    gone["interfaces"][1]["interface"] = "eth9"
    error = one_error_line(L.fastpath("apply", str(write(t.tmp / "c.yaml", gone)), check=False))
    assert "interfaces[1] (eth9 in" in error and ".interface: no interface 'eth9'" in error, error
    assert synguard.guard_config(synguard.attachment("eth0", t.ns)) == guard_before

    # --detach-on-exit: the agent takes the running programs, then removes them at SIGTERM.
    agent = start_agent(t, first, "--detach-on-exit")
    agent.wait_event("config_unchanged")

    # A client over the SYN rate is banned, then let go: both leave an event.
    t.lab.run("client", [sys.executable, "-c", SYNS, LB_OWN, "81", "12"], timeout=60)
    banned = agent.wait_event("source_banned", source=L.CLIENT)
    assert banned["interface"] == "eth0" and banned["netns"] == t.ns and 0 < banned["seconds"] <= 2
    agent.wait_event("source_unbanned", source=L.CLIENT)

    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0
    for prog in ("syn_guard", "l4lb"):
        agent.wait_event("detached", program=prog, netns=t.ns)
    assert xdp.read_state("eth0", t.ns) is None and not xdp.pin_dir("eth0", t.ns).exists()
    assert not store.state_path("eth0", t.ns).exists()
    assert decap.SPEC.name not in {a.program for a in xdp.attachments() if a.netns == b3}


# -- cookie_mode_switched: the SYN-flood lab ------------------------------------------------------

COOKIE_PORT = floodlab.SERVICE_PORT
SYN_THRESHOLD = 500  # SYN/s per CPU: a spoofed flood is far over it, the probes (<= 100/s) far under
QUIET_PERIOD = 1.0
FLOOD_FRAMES = 100_000


@pytest.fixture
def flood_agent_lab(make_lab, tmp_path):
    lab = make_lab(floodlab.TOPOLOGY)
    lab.agents = []
    lab.tmp = tmp_path
    try:
        yield lab
    finally:
        for a in lab.agents:
            a.stop()
        floodlab.cleanup(lab)
        with contextlib.suppress(FileNotFoundError):
            plan.managed_path().unlink()
        with contextlib.suppress(OSError):
            plan.managed_path().parent.rmdir()


def test_agent_reports_cookie_mode_switches(flood_agent_lab):
    lab = flood_agent_lab
    ns = lab.netns("server")
    lab.spawn("server", floodlab.serve_argv()).wait_output("ready")
    guard = {"ports": [COOKIE_PORT], "cookies": "adaptive", "syn_threshold": f"{SYN_THRESHOLD}/s",
             "quiet_period": QUIET_PERIOD}
    config = write(lab.tmp / "node.yaml", {"metrics": {"listen": "off"}, "interfaces": [
        {"interface": "eth0", "netns": ns, "mode": "native", "guard": guard}]})
    agent = AgentProc(config, lab.tmp / "agent.log")
    lab.agents.append(agent)
    agent.wait_event("config_applied")

    # Legitimate connects at a rate far under the threshold: SYNs go to the stack, no switch.
    quiet = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=20, timeout=2.0)).stdout)
    assert quiet["ok"] == 20, quiet
    time.sleep(0.5)  # two polls
    assert not [e for e in agent.events() if e["event"] == "cookie_mode_switched"], agent.events()

    # A spoofed flood (no handshake ever completes) far over the threshold: the port switches
    # to cookies, and the agent says so at its next poll. The flood runs to its end (its rate
    # is measured over all of it); the port stays in cookie mode until a SYN finds it quiet.
    mark = len(agent.events())
    gen = lab.spawn("attacker", floodlab.flood_argv(lab, FLOOD_FRAMES, 30.0))
    try:
        gen.wait_output("ready")
        on = agent.wait_event("cookie_mode_switched", after=mark, timeout=30, mode="cookies")
        gen.wait(60)
    finally:
        gen.stop()
    flood = floodlab.flood_result(gen.output())
    print(f"\nflood: {flood.sent} SYNs in {flood.seconds:.2f} s ({flood.rate:,.0f}/s, {flood.engine}); {on}")
    assert flood.rate > 10 * SYN_THRESHOLD * len(os.sched_getaffinity(0)), flood
    assert (on["netns"], on["interface"], on["port"], on["setting"], on["level"]) == \
        (ns, "eth0", COOKIE_PORT, "adaptive", "info"), on
    assert on["to_cookie"] >= 1 and on["to_pass"] == 0, on
    # the on-demand SYNPROXY rules went in for it
    armed = agent.wait_event("synproxy_armed", after=mark, timeout=30)
    assert (armed["netns"], armed["interface"]) == (ns, "eth0") and armed["table"], armed

    # Quiet for longer than the quiet period: the next SYN goes to the stack again, a switch
    # back the agent reports with the port's switch counts.
    mark = len(agent.events())
    time.sleep(QUIET_PERIOD + 0.5)
    after = floodlab.probe_result(lab.run("client", floodlab.probe_argv(count=5, timeout=5.0)).stdout)
    assert after["ok"] == 5, after
    back = agent.wait_event("cookie_mode_switched", after=mark, timeout=30, mode="pass")
    assert (back["netns"], back["interface"], back["port"]) == (ns, "eth0", COOKIE_PORT), back
    assert back["to_pass"] >= 1 and back["to_cookie"] >= on["to_cookie"], back
    port = synguard.port_modes(synguard.attachment("eth0", ns),
                               synguard.guard_config(synguard.attachment("eth0", ns)))
    assert [(m.port, m.mode, m.to_cookie, m.to_pass) for m in port] == \
        [(COOKIE_PORT, "pass", back["to_cookie"], back["to_pass"])], port
