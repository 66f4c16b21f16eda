"""The `counter` benchmark scenario runs every contender in the kernel and reports real numbers."""

from __future__ import annotations

import os

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.runner import run_scenario

pytestmark = pytest.mark.bpf


def test_counter_scenario_quick_run():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    result = run_scenario(load_scenario("counter"), quick=True, log=lambda _msg: None)
    for metric in ("ns_per_packet", "ns_per_packet_all_cpus"):
        for contender in ("fastpath", "textbook", "noop"):
            values = result.values(metric, contender)
            assert len(values) == 3 and all(0 < v < 10_000 for v in values), (metric, contender)
    # The no-op is the floor: counting can't be cheaper than doing nothing.
    assert min(result.values("ns_per_packet", "fastpath")) >= min(result.values("ns_per_packet", "noop")) - 1
