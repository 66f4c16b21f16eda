"""What a benchmark scenario declares: its metrics, contenders, baseline and targets.

A scenario runs fastpath and its peers ("contenders") side by side. The runner calls
`setup` once, then `measure(contender, ctx)` once per contender per repeat, rotating the
contender order every repeat so slow drift (thermal, frequency, noisy neighbours) lands
on every contender alike, and finally `teardown`, which runs even when a measurement
fails. See `fastpath.bench.scenarios` for how to add one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

Better = Literal["lower", "higher"]
Op = Literal["<=", ">=", "<", ">"]

# Names end up in file names (plots) and JSON keys, so keep them plain.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
OPS: tuple[str, ...] = ("<=", ">=", "<", ">")

T = TypeVar("T")


@dataclass(frozen=True)
class Metric:
    """One number a measurement yields, e.g. Metric("drop", "ns/packet", "lower")."""

    name: str
    unit: str
    better: Better

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"metric name {self.name!r} must match {NAME_RE.pattern}")
        if self.better not in ("lower", "higher"):
            raise ValueError(f"metric {self.name}: better must be 'lower' or 'higher'")


@dataclass(frozen=True)
class Target:
    """A goal the report checks against the median of the measured samples.

    Without `versus`: the contender's median compared with `value` in the metric's unit,
        Target("drop", "fastpath", "<=", 50)          -> "fastpath drop ≤ 50 ns/packet"
    With `versus`: how many times *better* the contender is than `versus` (direction
    taken from the metric, so 2.0 means twice the throughput or half the latency),
        Target("rps", "fastpath", ">=", 1.3, versus="epoll")
                                                      -> "fastpath rps ≥ 1.3× better than epoll"
    """

    metric: str
    contender: str
    op: Op
    value: float
    versus: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"target op {self.op!r} must be one of {', '.join(OPS)}")
        if self.versus is not None and self.value <= 0:
            raise ValueError("a ratio target needs a positive factor")


@dataclass
class BenchContext:
    """Per-run state handed to every scenario hook."""

    scenario: str
    quick: bool
    repeat: int
    workdir: Path
    state: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def pick(self, full: T, quick: T) -> T:
        """`quick` under --quick (smoke runs), else `full`: e.g. ctx.pick(10_000_000, 100_000)."""
        return quick if self.quick else full

    def skip_contender(self, contender: str, reason: str) -> None:
        """Call from setup() when one contender cannot run here (e.g. no DPDK NIC).

        The report lists it as skipped with the reason; skipping the baseline makes the
        whole scenario unavailable, since nothing could be compared.
        """
        self.skipped[contender] = reason


class Scenario(ABC):
    """Subclass, fill the class attributes, implement contenders() and measure().

    The registry instantiates the class with no arguments for every run.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    metrics: ClassVar[Sequence[Metric]]
    baseline: ClassVar[str]
    targets: ClassVar[Sequence[Target]] = ()
    # Measured repeats per contender (full run / --quick), and discarded warm-up rounds
    # (none under --quick: smoke runs check the plumbing, not the numbers).
    repeat: ClassVar[int] = 10
    quick_repeat: ClassVar[int] = 3
    warmup: ClassVar[int] = 1
    # A scaling curve instead of a race: `sweep` names the x axis (e.g. "VIPs"), each
    # contender is one point on it, named by its x value ("1", "100", "10000"), and the
    # report draws the medians as a line and says where the cost stops being flat.
    sweep: ClassVar[str | None] = None

    @abstractmethod
    def contenders(self) -> list[str]:
        """Every contender's name, fastpath's and its peers', baseline included."""

    def setup(self, ctx: BenchContext) -> None:  # noqa: B027 - optional hook
        """Build, load or start what measurements need; raise CapabilityError if this host can't."""

    def teardown(self, ctx: BenchContext) -> None:  # noqa: B027 - optional hook
        """Undo setup(); runs even when setup or a measurement failed."""

    @abstractmethod
    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        """One repeat for one contender: a value for every declared metric."""

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        """For a sweep: sentences on why the curve bends where it does, given each point's
        median per metric ({contender: {metric: value}}); the report prints them."""
        return []

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


def check_scenario_class(cls: type[Scenario]) -> None:
    """Reject a malformed declaration at registration, before anything runs."""
    where = f"scenario class {cls.__module__}.{cls.__qualname__}"
    for attr in ("name", "description", "metrics", "baseline"):
        if not hasattr(cls, attr):
            raise ValueError(f"{where}: missing class attribute {attr!r}")
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        raise ValueError(f"{where}: name {cls.name!r} must match {NAME_RE.pattern}")
    if not cls.description.strip():
        raise ValueError(f"{where}: empty description")
    names = [m.name for m in cls.metrics]
    if not names:
        raise ValueError(f"{where}: declares no metrics")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate metric names {names}")
    for t in cls.targets:
        if t.metric not in names:
            raise ValueError(f"{where}: target on unknown metric {t.metric!r}")
    if cls.sweep is not None and not cls.sweep.strip():
        raise ValueError(f"{where}: empty sweep axis name")
    if cls.repeat < 1 or cls.quick_repeat < 1 or cls.warmup < 0:
        raise ValueError(f"{where}: repeat and quick_repeat must be >= 1, warmup >= 0")
