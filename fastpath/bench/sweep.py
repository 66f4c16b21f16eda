"""Scaling curves: where a sweep scenario's cost stops being flat, computed from its medians.

A sweep (Scenario.sweep names its x axis) measures one point per contender, named by its x
value. Its first point is the reference: the curve "stops being flat" at the first point
whose median is worse than the first point's by more than KNEE_FACTOR, in the metric's own
direction (more ns/packet, fewer successful connections). Pure functions, no plotting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastpath.bench.scenario import Better, Metric
from fastpath.bench.stats import Summary, advantage, format_value

# A point more than this many times worse than the first point ends the flat part.
KNEE_FACTOR = 1.25


def x_value(point: str) -> float:
    """A point's x value from its name ("1000" -> 1000.0); ValueError if it is no number."""
    value = float(point)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{point!r} is not a finite number")
    return value


def log_axis(xs: Sequence[float]) -> bool:
    """A log x axis when the points are positive and span at least 100×."""
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100


@dataclass(frozen=True)
class Knee:
    """Where one metric's curve stops being flat: `point` (None: flat over the whole range),
    and `worse`, how many times worse than the first point it is there (or at most anywhere
    when flat; None when undefined, e.g. a first median of 0)."""

    metric: str
    first: str
    last: str
    point: str | None
    worse: float | None
    factor: float

    def statement(self, axis: str, unit: str) -> str:
        if self.point is not None:
            how = "down to 0 from its value" if self.worse == math.inf else f"{self.worse:.2f}× worse than"
            return (f"{self.metric} stops being flat at {self.point} {axis}: {how} at {self.first} {axis} "
                    f"(the first point more than {self.factor:g}× worse)")
        if self.worse is None:
            return (f"{self.metric}: no ratio to the first point ({self.first} {axis}: its median is 0, or "
                    "the medians change sign); flatness not judged")
        return (f"{self.metric} is flat over the whole range ({self.first} → {self.last} {axis}): "
                f"never more than {self.factor:g}× worse than at {self.first} {axis} "
                f"(worst {self.worse:.2f}×)")

    def to_dict(self) -> dict[str, Any]:
        """JSON has no infinity: a fall to 0 is `worse` null with `to_zero` true."""
        finite = self.worse is not None and math.isfinite(self.worse)
        return {"point": self.point, "worse": self.worse if finite else None, "factor": self.factor,
                "to_zero": self.worse == math.inf}


def worse_by(value: float, first: float, better: Better) -> float | None:
    """How many times worse than `first` `value` is (> 1 worse, < 1 better), oriented by
    the metric's direction; None when undefined."""
    adv = advantage(value, first, better)
    if adv is None:
        return None
    return math.inf if adv == 0 else 1 / adv


def find_knee(metric: Metric, points: Sequence[str], medians: Mapping[str, float],
              factor: float = KNEE_FACTOR) -> Knee:
    """The first point (in x order) more than `factor` times worse than the first one."""
    if not points:
        raise ValueError("a curve needs at least one point")
    first = points[0]
    worst: float | None = None
    for p in points[1:]:
        w = worse_by(medians[p], medians[first], metric.better)
        if w is None:
            return Knee(metric.name, first, points[-1], None, None, factor)
        if w > factor:
            return Knee(metric.name, first, points[-1], p, w, factor)
        worst = w if worst is None else max(worst, w)
    return Knee(metric.name, first, points[-1], None, 1.0 if worst is None else worst, factor)


def knees(metrics: Sequence[Metric], points: Sequence[str],
          summaries: Mapping[str, Mapping[str, Summary]], factor: float = KNEE_FACTOR) -> dict[str, Knee]:
    """find_knee for every metric, on the medians of `summaries` (metric -> point -> Summary)."""
    return {m.name: find_knee(m, points, {p: summaries[m.name][p].median for p in points}, factor)
            for m in metrics}


def ratio_text(value: float, first: float) -> str:
    """median / first median, as the tables print it."""
    if first == 0:
        return "n/a"
    return f"{value / first:.3g}"


def axis_label(point: str) -> str:
    """The x value as the tables print it: 10000 -> 10,000."""
    x = x_value(point)
    return format_value(x) if x != int(x) else f"{int(x):,}"
