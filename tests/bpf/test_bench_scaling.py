"""The load balancer's scaling curves (`lb-vips`, `lb-backends`) run on real programs
configured by the real control plane, and say where they bend and why."""

from __future__ import annotations

import os

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.runner import run_scenario

pytestmark = pytest.mark.bpf


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


def test_lb_vips_quick_run():
    _root()
    result = run_scenario(load_scenario("lb-vips"), quick=True, log=lambda _msg: None)
    assert result.sweep == "VIPs"
    assert result.contenders == ["1", "10", "100", "1000"] and "10000" in result.skipped
    for point in result.contenders:
        values = result.values("ns_hit", point)
        # the balancer's own cost, harness taken off: positive, of a packet's magnitude (~40 ns
        # here, some µs under the kernel matrix's emulated CPU)
        assert len(values) == 3 and all(0 < v < 100_000 for v in values), (point, values)
    assert result.knees["ns_hit"].first == "1"
    assert len(result.explanation) == 3 and "1000 VIPs" in result.explanation[-1]


def test_lb_backends_quick_run():
    _root()
    result = run_scenario(load_scenario("lb-backends"), quick=True, log=lambda _msg: None)
    assert result.contenders == ["3", "10", "100", "1000"] and not result.skipped
    for point in result.contenders:
        for metric in ("ns_miss", "ns_hit"):
            # positive and of a packet's magnitude: a new flow takes ~200 ns on this machine,
            # some 10 µs under the kernel matrix's emulated CPU (TCG)
            values = result.values(metric, point)
            assert all(0 < v < 100_000 for v in values), (metric, point, values)
        assert all(v > 0 for v in result.values("table_ms", point))
    # the Maglev rebuild walks more taken slots with more backends (counted: 1.9 -> 9.3 probes
    # per slot), far beyond timing noise
    s = result.summaries["table_ms"]
    assert s["1000"].median > s["3"].median
    assert any("Maglev" in line for line in result.explanation)


def test_lb_churn_quick_run():
    _root()
    result = run_scenario(load_scenario("lb-churn"), quick=True, log=lambda _msg: None)
    assert result.contenders == ["512", "1024", "2048", "10240"]
    occ = {p: result.values("occupancy", p)[0] for p in result.contenders}
    # 256 long-lived + 512 churned flows fit; 10× the table fills it
    assert occ["512"] == pytest.approx(75.0) and occ["10240"] >= 85.0
    # active flows keep their entries; idle ones outlive half a table of churn, not ten tables
    assert all(result.values("hit", p)[0] >= 95.0 for p in result.contenders)
    assert result.values("idle_hit", "512")[0] == 100.0 and result.values("idle_hit", "10240")[0] == 0.0
    assert result.knees["idle_hit"].point is not None
