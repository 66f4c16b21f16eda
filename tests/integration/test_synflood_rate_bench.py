"""`fastpath bench synflood-rate --quick` through the runner API: the paced flood reaches
each point's rate in the lab, legitimate connects succeed under the guard, the curve is
judged and explained, and the lab is gone afterwards."""

from __future__ import annotations

import os

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.runner import run_scenario
from fastpath.bench.scenarios import synflood_rate
from fastpath.core.namespaces import list_netns

pytestmark = pytest.mark.integration


def test_synflood_rate_quick_run():
    lab = f"fpsf{os.getpid() % 100000}"  # the synflood lab's name in this process
    result = run_scenario(load_scenario("synflood-rate"), quick=True, log=lambda _msg: None)
    # The lowest point runs on any machine; a higher one runs where the generator has the
    # headroom for it (10k here) and is skipped, saying so, where it has not.
    assert result.sweep == "SYN/s" and result.contenders[:1] == ["3000"]
    assert sorted([*result.contenders, *result.skipped], key=float) == synflood_rate.RATES
    for point in result.contenders:
        reached = result.values("rate", point)[0]
        # sent at the rate; what a busy receive path drops before XDP is not counted
        assert 0.5 * float(point) <= reached <= 1.2 * float(point), (point, reached)
        assert result.values("success", point)[0] >= 90, point
        assert result.values("send_ns", point)[0] > 0
    for point in result.skipped:
        assert "generator reached" in result.skipped[point]
    assert set(result.knees) == {"success", "guard_ns", "send_ns", "rate"}
    assert any("cookie" in line for line in result.explanation)
    assert not [ns for ns in list_netns() if ns.startswith(lab)]
