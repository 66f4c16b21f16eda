"""Run one scenario: set up, measure every contender R times interleaved, always tear down."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fastpath.bench import environment
from fastpath.bench.registry import ScenarioUnavailable
from fastpath.bench.scenario import NAME_RE, BenchContext, Metric, Scenario
from fastpath.bench.stats import (
    Summary,
    TargetResult,
    advantage,
    describe_advantage,
    evaluate_target,
    ratio,
    summarize,
)
from fastpath.bench.sweep import KNEE_FACTOR, Knee, knees, x_value
from fastpath.errors import CapabilityError, FastpathError

SCHEMA = "fastpath.bench/1"


@dataclass(frozen=True)
class Sample:
    """One measure() call. Warm-up samples are kept in the record but not in the statistics."""

    seq: int  # position in execution order
    repeat: int  # 0-based; warm-up rounds count separately
    warmup: bool
    contender: str
    values: dict[str, float]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "contender": self.contender,
            "values": self.values,
            "elapsed_s": self.elapsed_s,
        }


@dataclass(frozen=True)
class ProgressEvent:
    scenario: str
    contender: str | None  # None once everything is measured
    repeat: int
    warmup: bool
    done: int
    total: int


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class ScenarioResult:
    name: str
    description: str
    baseline: str
    metrics: list[Metric]
    contenders: list[str]  # the ones measured, in declaration order
    skipped: dict[str, str]  # contender -> reason it did not run
    repeat: int
    warmup: int
    quick: bool
    environment: dict[str, Any]
    samples: list[Sample]
    summaries: dict[str, dict[str, Summary]]  # metric -> contender -> summary
    targets: list[TargetResult]
    duration_s: float
    files: dict[str, str] = field(default_factory=dict)  # filled in by the report writer
    # A scaling curve (Scenario.sweep): the x axis name; contenders are its points in x
    # order, the first is the baseline. `knees` says per metric where the cost stops being
    # flat, `explanation` is the scenario's explain() on the medians.
    sweep: str | None = None
    knees: dict[str, Knee] = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def values(self, metric: str, contender: str) -> list[float]:
        """The measured (non-warm-up) samples of one metric for one contender, in order."""
        return [s.values[metric] for s in self.samples if s.contender == contender and not s.warmup]

    def ratio(self, metric: str, contender: str) -> float | None:
        """median(contender) / median(baseline), unoriented."""
        s = self.summaries[metric]
        return ratio(s[contender].median, s[self.baseline].median)

    def advantage(self, metric: Metric, contender: str) -> float | None:
        """How many times better than the baseline the contender is (> 1 is better)."""
        s = self.summaries[metric.name]
        return advantage(s[contender].median, s[self.baseline].median, metric.better)

    @property
    def missed(self) -> list[TargetResult]:
        return [t for t in self.targets if not t.met]

    def sweep_dict(self) -> dict[str, Any] | None:
        """The curve for JSON: axis, points in x order, each metric's medians, ratios to the
        first point and knee, the scenario's explanation."""
        if self.sweep is None:
            return None
        first = self.contenders[0]
        curves: dict[str, Any] = {}
        for m in self.metrics:
            s = self.summaries[m.name]
            knee = self.knees[m.name]
            curves[m.name] = {
                "medians": {p: s[p].median for p in self.contenders},
                "ratios": {p: ratio(s[p].median, s[first].median) for p in self.contenders},
                "knee": knee.to_dict(),
                "statement": knee.statement(self.sweep, m.unit),
            }
        return {"axis": self.sweep, "points": self.contenders, "x": [x_value(p) for p in self.contenders],
                "knee_factor": KNEE_FACTOR, "curves": curves, "explanation": self.explanation}

    def to_dict(self) -> dict[str, Any]:
        comparisons: dict[str, dict[str, Any]] = {}
        for m in self.metrics:
            comparisons[m.name] = {}
            for c in self.contenders:
                if c == self.baseline:
                    continue
                adv = self.advantage(m, c)
                comparisons[m.name][c] = {
                    "ratio": self.ratio(m.name, c),
                    "advantage": adv,
                    "verdict": describe_advantage(adv),
                }
        return {
            "schema": SCHEMA,
            "scenario": {
                "name": self.name,
                "description": self.description,
                "baseline": self.baseline,
                "contenders": self.contenders,
                "skipped": self.skipped,
                "metrics": [{"name": m.name, "unit": m.unit, "better": m.better} for m in self.metrics],
            },
            "config": {"repeat": self.repeat, "warmup": self.warmup, "quick": self.quick},
            "environment": self.environment,
            "duration_s": self.duration_s,
            "samples": [s.to_dict() for s in self.samples],
            "summary": {
                metric: {c: s.to_dict() for c, s in per.items()} for metric, per in self.summaries.items()
            },
            "comparisons": comparisons,
            "targets": [t.to_dict() for t in self.targets],
            "files": self.files,
            **({"sweep": self.sweep_dict()} if self.sweep is not None else {}),
        }


def schedule(contenders: list[str], repeat: int, warmup: int) -> list[tuple[int, bool, str]]:
    """(repeat, warmup?, contender) in execution order.

    Each round runs every contender once; round k starts k places further along the list
    (A B C, B C A, C A B, ...), so no contender is always first or always after the same
    peer, and drift over the run is shared out evenly.
    """
    plan: list[tuple[int, bool, str]] = []
    n = len(contenders)
    for rnd in range(warmup + repeat):
        is_warmup = rnd < warmup
        rep = rnd if is_warmup else rnd - warmup
        for i in range(n):
            plan.append((rep, is_warmup, contenders[(rnd + i) % n]))
    return plan


def _contextual(exc: FastpathError, where: str) -> FastpathError:
    err = FastpathError(f"{where}: {exc.message}", fix=exc.fix)
    err.exit_code = exc.exit_code
    return err


def _check_contenders(scenario: Scenario) -> list[str]:
    name = scenario.name
    declared = list(scenario.contenders())
    if not declared:
        raise FastpathError(f"scenario {name!r} declares no contenders")
    if len(set(declared)) != len(declared):
        raise FastpathError(f"scenario {name!r} declares duplicate contenders: {declared}")
    for c in declared:
        if not NAME_RE.match(c):
            raise FastpathError(f"scenario {name!r}: contender name {c!r} is not plain")
    if scenario.baseline not in declared:
        raise FastpathError(f"scenario {name!r}: baseline {scenario.baseline!r} is not one of {declared}")
    for t in scenario.targets:
        for who in (t.contender, t.versus):
            if who is not None and who not in declared:
                raise FastpathError(f"scenario {name!r}: target names unknown contender {who!r}")
    if scenario.sweep is not None:
        try:
            xs = [x_value(c) for c in declared]
        except ValueError:
            raise FastpathError(f"scenario {name!r} is a sweep over {scenario.sweep}: its points "
                                f"must be named by their x values, got {declared}") from None
        if any(b <= a for a, b in pairwise(xs)) or scenario.baseline != declared[0]:
            raise FastpathError(f"scenario {name!r}: a sweep's points go in increasing x order and "
                                f"the first is the baseline, got {declared} (baseline {scenario.baseline!r})")
    return declared


def _check_values(scenario: Scenario, contender: str, values: object) -> dict[str, float]:
    expected = [m.name for m in scenario.metrics]
    where = f"scenario {scenario.name!r}: measure({contender!r})"
    if not isinstance(values, dict) or sorted(values) != sorted(expected):
        got = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise FastpathError(f"{where} returned {got}, expected values for {sorted(expected)}")
    out: dict[str, float] = {}
    for key in expected:
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise FastpathError(f"{where} returned {key}={v!r}, expected a finite number")
        out[key] = float(v)
    return out


def run_scenario(
    scenario_cls: type[Scenario],
    *,
    repeat: int | None = None,
    quick: bool = False,
    env: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
) -> ScenarioResult:
    """Set up, measure every contender `repeat` times (interleaved), tear down, summarise.

    Raises ScenarioUnavailable when the host can't run the scenario (setup raised
    CapabilityError, or the baseline was skipped) and FastpathError for any other failure;
    teardown has run by then either way.
    """
    scenario = scenario_cls()
    name = scenario.name
    n_repeat = repeat if repeat is not None else (scenario.quick_repeat if quick else scenario.repeat)
    if n_repeat < 1:
        raise FastpathError(f"repeat must be at least 1, got {n_repeat}")
    n_warmup = 0 if quick else scenario.warmup
    declared = _check_contenders(scenario)
    env = env if env is not None else environment.capture()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fastpath-bench-{name}-") as tmp:
        ctx = BenchContext(name, quick, n_repeat, Path(tmp), log=log)
        failure: BaseException | None = None
        try:
            active = _set_up(scenario, ctx, declared)
            samples = _measure_all(scenario, ctx, schedule(active, n_repeat, n_warmup), progress)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _tear_down(scenario, ctx, failure, log)

    summaries, targets = _summarise(scenario, active, samples, ctx.skipped)
    curve: dict[str, Knee] = {}
    explanation: list[str] = []
    if scenario.sweep is not None:
        curve = knees(scenario.metrics, active, summaries)
        medians = {c: {m: summaries[m][c].median for m in summaries} for c in active}
        try:
            explanation = [str(line) for line in scenario.explain(medians)]
        except Exception as exc:
            raise FastpathError(f"scenario {name!r} explain() failed: {type(exc).__name__}: {exc}") from exc
    return ScenarioResult(
        name=name,
        description=scenario.description,
        baseline=scenario.baseline,
        metrics=list(scenario.metrics),
        contenders=active,
        skipped=dict(ctx.skipped),
        repeat=n_repeat,
        warmup=n_warmup,
        quick=quick,
        environment=env,
        samples=samples,
        summaries=summaries,
        targets=targets,
        duration_s=time.perf_counter() - started,
        sweep=scenario.sweep,
        knees=curve,
        explanation=explanation,
    )


def _set_up(scenario: Scenario, ctx: BenchContext, declared: list[str]) -> list[str]:
    """Run the scenario's setup; returns the contenders it did not skip. Unavailable when
    setup lacks a capability or skips the baseline."""
    name = scenario.name
    try:
        scenario.setup(ctx)
    except CapabilityError as exc:
        raise ScenarioUnavailable(f"scenario {name!r} is unavailable: {exc.message}", fix=exc.fix) from exc
    except FastpathError as exc:
        raise _contextual(exc, f"scenario {name!r} setup") from exc
    except Exception as exc:
        raise FastpathError(f"scenario {name!r} setup failed: {type(exc).__name__}: {exc}") from exc
    unknown = sorted(set(ctx.skipped) - set(declared))
    if unknown:
        raise FastpathError(f"scenario {name!r} skipped unknown contenders {unknown}")
    if scenario.baseline in ctx.skipped:
        raise ScenarioUnavailable(
            f"scenario {name!r} is unavailable: baseline {scenario.baseline!r} "
            f"cannot run: {ctx.skipped[scenario.baseline]}"
        )
    return [c for c in declared if c not in ctx.skipped]


def _measure_all(scenario: Scenario, ctx: BenchContext, plan: list[tuple[int, bool, str]],
                 progress: ProgressFn | None) -> list[Sample]:
    """One measure() per step of `plan` (see `schedule`), each checked and timed."""
    name = scenario.name
    samples: list[Sample] = []
    for seq, (rep, warm, contender) in enumerate(plan):
        if progress:
            progress(ProgressEvent(name, contender, rep, warm, seq, len(plan)))
        t0 = time.perf_counter()
        phase = f"warm-up {rep + 1}" if warm else f"repeat {rep + 1}"
        where = f"scenario {name!r}, {contender} ({phase})"
        try:
            raw = scenario.measure(contender, ctx)
        except FastpathError as exc:
            raise _contextual(exc, where) from exc
        except Exception as exc:
            raise FastpathError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - t0
        values = _check_values(scenario, contender, raw)
        samples.append(Sample(seq, rep, warm, contender, values, elapsed))
    if progress:
        progress(ProgressEvent(name, None, ctx.repeat, False, len(plan), len(plan)))
    return samples


def _tear_down(scenario: Scenario, ctx: BenchContext, failure: BaseException | None,
               log: Callable[[str], None]) -> None:
    """Always run teardown; its own failure is the error only when nothing failed before."""
    try:
        scenario.teardown(ctx)
    except Exception as exc:
        if failure is None:
            raise FastpathError(
                f"scenario {scenario.name!r} teardown failed: {type(exc).__name__}: {exc}"
            ) from exc
        log(f"scenario {scenario.name!r} teardown also failed: {type(exc).__name__}: {exc}")


def _summarise(scenario: Scenario, active: list[str], samples: list[Sample], skipped: dict[str, str]
               ) -> tuple[dict[str, dict[str, Summary]], list[TargetResult]]:
    """Statistics of every metric per contender over the measured (not warm-up) samples,
    and each target judged on them."""
    measured = [s for s in samples if not s.warmup]
    summaries = {
        m.name: {c: summarize([s.values[m.name] for s in measured if s.contender == c]) for c in active}
        for m in scenario.metrics
    }
    targets = [
        evaluate_target(t, scenario.metric(t.metric), summaries[t.metric], skipped)
        for t in scenario.targets
    ]
    return summaries, targets
