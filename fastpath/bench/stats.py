"""Pure statistics for benchmark samples: summaries, oriented ratios, target verdicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fastpath.bench.scenario import Better, Metric, Target

OP_SYMBOLS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
# Advantages this close to 1 are reported as "same" rather than "1.00× better".
SAME_TOLERANCE = 0.005


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p25: float
    p75: float
    min: float
    max: float
    mean: float
    stdev: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks.

    Same definition as numpy's default, so p50 of an even-length list is the midpoint.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("summary of no values")
    return Summary(
        n=len(values),
        median=percentile(values, 50),
        p25=percentile(values, 25),
        p75=percentile(values, 75),
        min=min(values),
        max=max(values),
        mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, or None when that is undefined (zero or sign-crossing baseline)."""
    if baseline == 0 or (value < 0) != (baseline < 0):
        return None
    return value / baseline


def advantage(value: float, reference: float, better: Better) -> float | None:
    """How many times better `value` is than `reference`: > 1 better, < 1 worse.

    For a higher-is-better metric that is value/reference; for lower-is-better it is
    reference/value, so 20 ns vs 60 ns is 3× better, not 0.33.
    """
    return ratio(value, reference) if better == "higher" else ratio(reference, value)


def describe_advantage(adv: float | None) -> str:
    """'3.10× better', '1.25× worse', 'same' or 'n/a'."""
    if adv is None:
        return "n/a"
    if abs(adv - 1) < SAME_TOLERANCE:
        return "same"
    if adv > 1:
        return f"{adv:.2f}× better"
    if adv == 0:
        return "n/a"
    return f"{1 / adv:.2f}× worse"


def format_value(value: float | None) -> str:
    """Compact human rendering: thousands separators for big numbers, 3 significant digits
    for small ones."""
    if value is None:
        return "n/a"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    return f"{value:.3g}"


def describe_target(target: Target, metric: Metric) -> str:
    sym = OP_SYMBOLS[target.op]
    if target.versus is None:
        return f"{target.contender} {metric.name} {sym} {target.value:g} {metric.unit}"
    return f"{target.contender} {metric.name} {sym} {target.value:g}× better than {target.versus}"


def compare(measured: float, op: str, value: float) -> bool:
    if op == "<=":
        return measured <= value
    if op == ">=":
        return measured >= value
    if op == "<":
        return measured < value
    if op == ">":
        return measured > value
    raise ValueError(f"unknown comparison {op!r}")


@dataclass(frozen=True)
class TargetResult:
    target: Target
    description: str
    measured: float | None  # median in the metric's unit, or the advantage factor
    met: bool
    reason: str  # why it was not evaluated, or "" when it was

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "metric": self.target.metric,
            "contender": self.target.contender,
            "op": self.target.op,
            "value": self.target.value,
            "versus": self.target.versus,
            "measured": self.measured,
            "met": self.met,
            "reason": self.reason,
        }


def evaluate_target(
    target: Target,
    metric: Metric,
    summaries: Mapping[str, Summary],
    skipped: Mapping[str, str] | None = None,
) -> TargetResult:
    """Judge `target` on the medians in `summaries` (contender -> Summary of `metric`).

    A target whose contender did not run is reported as not met, with the reason
    (from `skipped`, contender -> why it was skipped, when known).
    """
    desc = describe_target(target, metric)
    for name in (target.contender, target.versus):
        if name is not None and name not in summaries:
            why = (skipped or {}).get(name)
            reason = f"{name} skipped: {why}" if why else f"{name} was not measured"
            return TargetResult(target, desc, None, False, reason)
    median = summaries[target.contender].median
    measured = median
    if target.versus is not None:
        ratio = advantage(median, summaries[target.versus].median, metric.better)
        if ratio is None:
            return TargetResult(target, desc, None, False, "ratio undefined (zero median)")
        measured = ratio
    return TargetResult(target, desc, measured, compare(measured, target.op, target.value), "")


def format_measured(result: TargetResult, metric: Metric) -> str:
    if result.measured is None:
        return result.reason or "n/a"
    if result.target.versus is None:
        return f"{format_value(result.measured)} {metric.unit}"
    text = f"{result.measured:.2f}× better"
    if 0 < result.measured < 1:
        text += f" (i.e. {1 / result.measured:.2f}× worse)"
    return text
