"""Pure benchmark statistics: percentiles, oriented ratios, target verdicts, formatting."""

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.bench.scenario import Metric, Target
from fastpath.bench.stats import (
    advantage,
    describe_advantage,
    describe_target,
    evaluate_target,
    format_measured,
    format_value,
    percentile,
    ratio,
    summarize,
)

NS = Metric("drop", "ns/packet", "lower")
PPS = Metric("rate", "Mpps", "higher")

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def test_percentile_interpolates_between_ranks():
    # Same definition as numpy.percentile's default ("linear").
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 25) == 1.75
    assert percentile([1, 2, 3, 4], 75) == 3.25
    assert percentile([10, 1, 5], 50) == 5  # unsorted input
    assert percentile([7], 25) == 7
    assert percentile([1, 2, 3, 4, 5], 0) == 1
    assert percentile([1, 2, 3, 4, 5], 100) == 5


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(finite, min_size=1, max_size=40), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_bounded_and_monotone(values, q1, q2):
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    eps = 1e-9 * (max(abs(v) for v in values) + 1)  # interpolation rounding
    assert min(values) - eps <= p_lo <= p_hi + eps
    assert p_hi <= max(values) + eps


@given(st.lists(finite, min_size=1, max_size=40))
def test_median_matches_statistics_median(values):
    assert math.isclose(percentile(values, 50), statistics.median(values), rel_tol=1e-9, abs_tol=1e-6)


def test_summarize():
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s.n, s.median, s.p25, s.p75, s.min, s.max) == (5, 3.0, 2.0, 4.0, 1.0, 10.0)
    assert s.mean == 4.0
    assert math.isclose(s.stdev, statistics.stdev([4, 1, 3, 2, 10]))
    assert summarize([5.0]).stdev == 0.0
    assert set(s.to_dict()) == {"n", "median", "p25", "p75", "min", "max", "mean", "stdev"}


def test_ratio_and_advantage_follow_the_metric_direction():
    assert ratio(20, 60) == pytest.approx(1 / 3)
    assert ratio(1, 0) is None
    assert ratio(-1, 2) is None
    # 20 ns vs 60 ns: lower is better, so three times better.
    assert advantage(20, 60, "lower") == pytest.approx(3.0)
    # 20 Mpps vs 60 Mpps: higher is better, so three times worse.
    assert advantage(20, 60, "higher") == pytest.approx(1 / 3)
    assert advantage(0, 60, "lower") is None


def test_describe_advantage():
    assert describe_advantage(3.1) == "3.10× better"
    assert describe_advantage(0.8) == "1.25× worse"
    assert describe_advantage(1.001) == "same"
    assert describe_advantage(None) == "n/a"


def test_format_value():
    assert format_value(1234567.8) == "1,234,568"
    assert format_value(123.456) == "123.5"
    assert format_value(12.345) == "12.35"
    assert format_value(0.012345) == "0.0123"
    assert format_value(0) == "0"
    assert format_value(None) == "n/a"


def _summaries(**medians):
    return {c: summarize([m]) for c, m in medians.items()}


def test_absolute_target():
    t = Target("drop", "fastpath", "<=", 50)
    assert describe_target(t, NS) == "fastpath drop ≤ 50 ns/packet"
    met = evaluate_target(t, NS, _summaries(fastpath=42, kernel=90))
    assert met.met and met.measured == 42 and met.reason == ""
    assert format_measured(met, NS) == "42.00 ns/packet"
    missed = evaluate_target(t, NS, _summaries(fastpath=51, kernel=90))
    assert not missed.met and missed.measured == 51


@pytest.mark.parametrize(
    ("metric", "fast", "peer", "met"),
    [
        (PPS, 13.0, 10.0, True),  # 1.3× the throughput
        (PPS, 12.0, 10.0, False),
        (NS, 10.0, 13.0, True),  # 1.3× less time per packet
        (NS, 10.0, 12.0, False),
        (NS, 13.0, 10.0, False),  # slower than the peer
    ],
)
def test_ratio_target_is_oriented_by_better(metric, fast, peer, met):
    t = Target(metric.name, "fastpath", ">=", 1.3, versus="epoll")
    assert describe_target(t, metric) == f"fastpath {metric.name} ≥ 1.3× better than epoll"
    result = evaluate_target(t, metric, _summaries(fastpath=fast, epoll=peer))
    assert result.met is met
    assert result.measured == pytest.approx(advantage(fast, peer, metric.better))


def test_ratio_target_below_one_reads_as_worse():
    t = Target("rate", "fastpath", ">=", 1.3, versus="epoll")
    result = evaluate_target(t, PPS, _summaries(fastpath=8, epoll=10))
    assert format_measured(result, PPS) == "0.80× better (i.e. 1.25× worse)"


def test_target_on_a_contender_that_did_not_run_is_missed_with_reason():
    t = Target("rate", "fastpath", ">=", 2, versus="dpdk")
    result = evaluate_target(t, PPS, _summaries(fastpath=8), {"dpdk": "no vfio-pci"})
    assert not result.met and result.measured is None
    assert result.reason == "dpdk skipped: no vfio-pci"
    assert "was not measured" in evaluate_target(t, PPS, _summaries(fastpath=8)).reason


def test_ratio_target_with_zero_median_is_missed_not_crashed():
    t = Target("drop", "fastpath", ">=", 2, versus="kernel")
    result = evaluate_target(t, NS, _summaries(fastpath=0.0, kernel=5.0))
    assert not result.met and "undefined" in result.reason


def test_target_and_metric_validation():
    with pytest.raises(ValueError):
        Target("drop", "fastpath", "=>", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Target("drop", "fastpath", ">=", 0, versus="kernel")
    with pytest.raises(ValueError):
        Metric("Bad Name", "ns", "lower")
    with pytest.raises(ValueError):
        Metric("x", "ns", "faster")  # type: ignore[arg-type]
