"""The benchmark runner and registry, driven by scenarios defined here with scripted values."""

import hashlib
from typing import ClassVar

import pytest

from fastpath.bench import registry
from fastpath.bench import registry as bench_registry
from fastpath.bench.registry import (
    ScenarioUnavailable,
    list_scenarios,
    load_scenario,
    register_scenario,
)
from fastpath.bench.runner import ProgressEvent, run_scenario, schedule
from fastpath.bench.scenario import BenchContext, Metric, Scenario, Target
from fastpath.errors import CapabilityError, FastpathError

ENV = {"kernel": "test", "timestamp": "2024-01-01T00:00:00+00:00"}


class Scripted(Scenario):
    """Three contenders; `drop` is a scripted ns/packet, `hashes` comes from real work."""

    name = "scripted"
    description = "scripted values for runner tests"
    metrics: ClassVar = [Metric("drop", "ns/packet", "lower"), Metric("hashes", "count", "higher")]
    baseline = "kernel"
    targets: ClassVar = [Target("drop", "fastpath", "<=", 25)]
    repeat = 4
    quick_repeat = 2
    warmup = 1
    base: ClassVar[dict[str, float]] = {"fastpath": 20.0, "kernel": 60.0, "epoll": 40.0}

    def __init__(self) -> None:
        self.events: list[tuple] = []
        Scripted.last = self  # type: ignore[attr-defined]

    def contenders(self) -> list[str]:
        return ["fastpath", "kernel", "epoll"]

    def setup(self, ctx: BenchContext) -> None:
        assert ctx.workdir.is_dir()
        self.events.append(("setup",))

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        self.events.append(("measure", contender))
        rounds = ctx.pick(200, 50)
        digest = b""
        for _ in range(rounds):  # deterministic work that takes real time
            digest = hashlib.sha256(digest + contender.encode()).digest()
        n = sum(1 for e in self.events if e == ("measure", contender))
        return {"drop": self.base[contender] + n, "hashes": float(rounds)}

    def teardown(self, ctx: BenchContext) -> None:
        self.events.append(("teardown",))


def measured_order(scenario: Scripted) -> list[str]:
    return [e[1] for e in scenario.events if e[0] == "measure"]


@pytest.fixture
def isolated(monkeypatch):
    """An empty registry and no built-ins, so tests never run the real scenarios."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(bench_registry, "BUILTIN", {})


def test_schedule_rotates_contenders_every_round():
    assert schedule(["a", "b", "c"], repeat=3, warmup=0) == [
        (0, False, "a"), (0, False, "b"), (0, False, "c"),
        (1, False, "b"), (1, False, "c"), (1, False, "a"),
        (2, False, "c"), (2, False, "a"), (2, False, "b"),
    ]  # fmt: skip
    plan = schedule(["a", "b"], repeat=2, warmup=1)
    assert plan == [(0, True, "a"), (0, True, "b"), (0, False, "b"), (0, False, "a"),
                    (1, False, "a"), (1, False, "b")]  # fmt: skip


def test_run_interleaves_and_repeats():
    events: list[ProgressEvent] = []
    result = run_scenario(Scripted, env=ENV, progress=events.append)
    sc = Scripted.last
    # 1 warm-up round + 4 measured rounds, order rotating every round.
    rotations = [["fastpath", "kernel", "epoll"], ["kernel", "epoll", "fastpath"],
                 ["epoll", "fastpath", "kernel"]]  # fmt: skip
    assert measured_order(sc) == [c for r in range(5) for c in rotations[r % 3]]
    assert sc.events[0] == ("setup",) and sc.events[-1] == ("teardown",)
    assert result.repeat == 4 and result.warmup == 1
    assert len(result.samples) == 15 and sum(s.warmup for s in result.samples) == 3
    assert [s.seq for s in result.samples] == list(range(15))
    for c in ("fastpath", "kernel", "epoll"):
        assert result.summaries["drop"][c].n == 4
        # Warm-up got n=1; the measured repeats saw n=2..5.
        assert result.values("drop", c) == [Scripted.base[c] + n for n in (2, 3, 4, 5)]
    assert result.summaries["drop"]["fastpath"].median == 23.5
    assert result.advantage(Scripted.metrics[0], "fastpath") == pytest.approx(63.5 / 23.5)
    assert [t.met for t in result.targets] == [True]
    assert all(s.elapsed_s > 0 for s in result.samples)
    assert [e.done for e in events] == list(range(16))
    assert events[-1].contender is None and events[0].total == 15


def test_quick_uses_quick_repeat_without_warmup_and_repeat_overrides():
    quick = run_scenario(Scripted, quick=True, env=ENV)
    assert (quick.repeat, quick.warmup, quick.quick) == (2, 0, True)
    assert len(quick.samples) == 6 and quick.values("hashes", "kernel") == [50.0, 50.0]
    full = run_scenario(Scripted, repeat=7, env=ENV)
    assert full.summaries["hashes"]["epoll"].n == 7 and full.values("hashes", "epoll")[0] == 200
    with pytest.raises(FastpathError, match="at least 1"):
        run_scenario(Scripted, repeat=0, env=ENV)


def test_teardown_runs_when_measure_fails():
    class Failing(Scripted):
        def measure(self, contender, ctx):
            if contender == "epoll" and len(self.events) > 4:
                raise RuntimeError("peer crashed")
            return super().measure(contender, ctx)

    with pytest.raises(FastpathError) as info:
        run_scenario(Failing, env=ENV)
    msg = str(info.value)
    assert "scripted" in msg and "epoll" in msg and "RuntimeError: peer crashed" in msg
    assert "\n" not in msg
    assert Scripted.last.events[-1] == ("teardown",)


def test_teardown_runs_when_setup_lacks_a_capability():
    class NoCap(Scripted):
        def setup(self, ctx):
            raise CapabilityError("BPF_PROG_TEST_RUN needs CAP_BPF", fix="run as root")

    with pytest.raises(ScenarioUnavailable, match="'scripted' is unavailable: BPF_PROG") as info:
        run_scenario(NoCap, env=ENV)
    assert "run as root" in str(info.value) and info.value.exit_code == 2
    assert Scripted.last.events == [("teardown",)]


def test_teardown_failure_is_reported_but_never_masks_the_first_error():
    class BadTeardown(Scripted):
        def teardown(self, ctx):
            super().teardown(ctx)
            raise OSError("pin busy")

    with pytest.raises(FastpathError, match="teardown failed: OSError: pin busy"):
        run_scenario(BadTeardown, env=ENV)

    class BothFail(BadTeardown):
        def measure(self, contender, ctx):
            raise ValueError("first")

    logged: list[str] = []
    with pytest.raises(FastpathError, match="ValueError: first"):
        run_scenario(BothFail, env=ENV, log=logged.append)
    assert logged and "pin busy" in logged[0]


@pytest.mark.parametrize(
    "values",
    [{"drop": 1.0}, {"drop": 1.0, "hashes": 2.0, "extra": 3.0}, {"drop": float("nan"), "hashes": 1.0},
     {"drop": True, "hashes": 1.0}, [1.0, 2.0]],
)  # fmt: skip
def test_measure_must_return_every_declared_metric_as_a_number(values):
    class Wrong(Scripted):
        def measure(self, contender, ctx):
            self.events.append(("measure", contender))
            return values

    with pytest.raises(FastpathError, match=r"measure\('fastpath'\) returned"):
        run_scenario(Wrong, env=ENV)
    assert Scripted.last.events[-1] == ("teardown",)


def test_skipped_contender_is_left_out_and_its_targets_missed():
    class NoEpoll(Scripted):
        targets: ClassVar = [Target("drop", "fastpath", ">=", 1.5, versus="epoll")]

        def setup(self, ctx):
            ctx.skip_contender("epoll", "no epoll here")

    result = run_scenario(NoEpoll, env=ENV)
    assert result.contenders == ["fastpath", "kernel"]
    assert set(measured_order(Scripted.last)) == {"fastpath", "kernel"}
    assert result.skipped == {"epoll": "no epoll here"}
    assert not result.targets[0].met and "no epoll here" in result.targets[0].reason

    class NoBaseline(Scripted):
        def setup(self, ctx):
            ctx.skip_contender("kernel", "kernel path disabled")

    with pytest.raises(ScenarioUnavailable, match="baseline 'kernel' cannot run"):
        run_scenario(NoBaseline, env=ENV)


def test_declaration_errors_are_caught():
    class BadBaseline(Scripted):
        baseline = "dpdk"

    with pytest.raises(FastpathError, match="baseline 'dpdk' is not one of"):
        run_scenario(BadBaseline, env=ENV)

    class NoMetric(Scripted):
        name = "nometric"
        metrics: ClassVar = []

    with pytest.raises(ValueError, match="no metrics"):
        register_scenario(NoMetric)

    class BadTarget(Scripted):
        name = "badtarget"
        targets: ClassVar = [Target("latency", "fastpath", "<=", 1)]

    with pytest.raises(ValueError, match="unknown metric 'latency'"):
        register_scenario(BadTarget)


def test_registry_unknown_name_lists_valid_ones(isolated):
    register_scenario(Scripted)
    assert load_scenario("scripted") is Scripted
    with pytest.raises(FastpathError) as info:
        load_scenario("nope")
    assert str(info.value) == "unknown scenario 'nope'; choose from: scripted"

    class Twin(Scripted):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_scenario(Twin)


def test_lazy_builtin_import_and_missing_dependency(isolated, tmp_path, monkeypatch):
    (tmp_path / "bench_ok_mod.py").write_text(
        "from fastpath.bench import Metric, Scenario, register_scenario\n"
        "@register_scenario\n"
        "class Ok(Scenario):\n"
        "    name = 'ok'\n"
        "    description = 'imported on demand'\n"
        "    metrics = [Metric('t', 's', 'lower')]\n"
        "    baseline = 'a'\n"
        "    def contenders(self): return ['a']\n"
        "    def measure(self, contender, ctx): return {'t': 1.0}\n"
    )
    (tmp_path / "bench_dep_mod.py").write_text("import fastpath_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench_registry, "BUILTIN", {"ok": "bench_ok_mod", "needs-dep": "bench_dep_mod"})
    assert registry.scenario_names() == ["needs-dep", "ok"]
    assert "ok" not in registry._REGISTRY  # nothing imported yet
    listing = {item.name: item for item in list_scenarios()}
    assert listing["ok"].available and listing["ok"].description == "imported on demand"
    assert not listing["needs-dep"].available
    assert "'needs-dep' is unavailable" in listing["needs-dep"].reason
    assert "fastpath_no_such_dependency" in listing["needs-dep"].reason
    with pytest.raises(ScenarioUnavailable, match="scenario 'needs-dep' is unavailable"):
        load_scenario("needs-dep")


TIME_UNITS = ("ns", "µs", "us", "ms", "s")


def test_builtin_targets_carry_no_machine_timings():
    """A target in a unit of time only holds on the machine it was measured on: every
    built-in target on a time metric must be a ratio to a contender of the same run."""
    absolute = []
    for name in registry.scenario_names():
        try:
            cls = registry.load_scenario(name)
        except FastpathError:
            continue  # an optional dependency is missing here; --list reports it
        units = {m.name: m.unit for m in cls.metrics}
        for t in cls.targets:
            unit = units[t.metric].split()[0].split("/")[0]
            if t.versus is None and unit in TIME_UNITS:
                absolute.append(f"{name}: {t.contender} {t.metric} {t.op} {t.value} {units[t.metric]}")
    assert not absolute, absolute
