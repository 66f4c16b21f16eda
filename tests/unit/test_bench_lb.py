"""The `lb` benchmark scenario's declaration and its CPU arithmetic: metrics, contenders,
targets, the direct floor and the /proc/stat reader. Nothing is started here."""

from __future__ import annotations

import ipaddress
import time

import pytest

from fastpath.bench import BenchContext
from fastpath.bench.environment import cpu_busy_ns
from fastpath.bench.registry import load_scenario
from fastpath.bench.scenario import check_scenario_class
from fastpath.bench.scenarios import lb as lb_bench


def test_registered_and_well_formed():
    cls = load_scenario("lb")
    check_scenario_class(cls)
    assert cls is lb_bench.LbThroughput and cls.baseline == "nft"
    assert cls().contenders() == ["fastpath-dsr", "fastpath-nat", "nft", "haproxy", "direct"]


def test_metrics_cpu_ones_are_lower_is_better():
    by = {m.name: m for m in lb_bench.LbThroughput.metrics}
    assert list(by) == ["conns_per_s", "reqs_per_s", "conn_p99_us", "cpu_per_conn", "cpu_per_req",
                        "lb_cpu_per_conn", "lb_cpu_per_req"]
    assert by["conns_per_s"].better == by["reqs_per_s"].better == "higher"
    assert all(by[n].better == "lower" and by[n].unit.startswith("µs CPU")
               for n in ("cpu_per_conn", "cpu_per_req", "lb_cpu_per_conn", "lb_cpu_per_req"))


def test_targets_are_the_issues_and_none_on_cpu():
    got = {(t.metric, t.contender, t.op, t.value, t.versus) for t in lb_bench.LbThroughput.targets}
    assert got == {(m, "fastpath-dsr", ">=", v, peer) for m in ("conns_per_s", "reqs_per_s")
                   for v, peer in ((1.5, "nft"), (3.0, "haproxy"))}


def test_direct_reaches_a_backend_on_its_own_subnet():
    addr, port = lb_bench.DIRECT
    assert addr in lb_bench.BACKENDS.values() and port == lb_bench.BACKEND_PORT
    client = ipaddress.ip_interface(f"{lb_bench.CLIENT_DIRECT}/24")
    assert ipaddress.ip_address(addr) in client.network
    assert f"{lb_bench.CLIENT_DIRECT}/24" in lb_bench.TOPOLOGY["addresses"]["client:eth0"]


def _scripted(monkeypatch, sc, cpu_us):
    """Replace the client run: `cpu_us` maps (target, churn) -> a list of µs values, used in turn."""
    calls = []

    def client(contender, seconds, warmup, churn, cpu=True):
        calls.append((contender, churn, seconds))
        report = {"conn_per_s": 1000.0, "req_per_s": 5000.0, "conn_latency_us": {"p99": 900.0}}
        return report, cpu_us[(contender, churn)].pop(0)

    monkeypatch.setattr(sc, "_client", client)
    return calls


@pytest.mark.parametrize("quick", [False, True])
def test_balancer_cpu_is_taken_off_a_direct_floor_right_around_it(monkeypatch, tmp_path, quick):
    sc = lb_bench.LbThroughput()
    ctx = BenchContext("lb", quick, 1, tmp_path, log=lambda _msg: None)
    calls = _scripted(monkeypatch, sc, {("direct", True): [50.0], ("nft", True): [80.0],
                                        ("nft", False): [12.5], ("direct", False): [10.0]})
    got = sc.measure("nft", ctx)
    # the churn floor just before the churn run, the steady floor just after the steady one
    assert [(c, churn) for c, churn, _ in calls] == [("direct", True), ("nft", True), ("nft", False),
                                                     ("direct", False)]
    floor_s = ctx.pick(*lb_bench.FLOOR_S)
    assert calls[0][2] == calls[3][2] == floor_s <= calls[1][2] == calls[2][2]
    assert got == {"conns_per_s": 1000.0, "reqs_per_s": 5000.0, "conn_p99_us": 900.0,
                   "cpu_per_conn": 80.0, "cpu_per_req": 12.5, "lb_cpu_per_conn": 30.0,
                   "lb_cpu_per_req": 2.5}


def test_direct_is_its_own_floor(monkeypatch, tmp_path):
    sc = lb_bench.LbThroughput()
    ctx = BenchContext("lb", False, 1, tmp_path)
    calls = _scripted(monkeypatch, sc, {("direct", True): [50.0], ("direct", False): [10.0]})
    got = sc.measure("direct", ctx)
    assert [(c, churn) for c, churn, _ in calls] == [("direct", True), ("direct", False)]
    assert got["cpu_per_conn"] == 50.0 and got["cpu_per_req"] == 10.0
    assert got["lb_cpu_per_conn"] == got["lb_cpu_per_req"] == 0.0
    assert set(got) == {m.name for m in lb_bench.LbThroughput.metrics}


def test_busy_ns_counts_this_process_work():
    before = cpu_busy_ns()
    end = time.process_time() + 0.1
    while time.process_time() < end:  # bounded busy loop: 0.1 s of CPU
        pass
    assert cpu_busy_ns() - before >= 50_000_000
