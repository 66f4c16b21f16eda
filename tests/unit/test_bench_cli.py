"""`fastpath bench` through the real entry point, with only the bench command registered."""

import json
from typing import ClassVar

import pytest

import fastpath.cli
from fastpath.bench import registry
from fastpath.bench import registry as bench_registry
from fastpath.bench.registry import register_scenario
from fastpath.bench.scenario import BenchContext, Metric, Scenario, Target


class Alpha(Scenario):
    name = "alpha"
    description = "fastpath against a peer, scripted"
    metrics: ClassVar = [Metric("drop", "ns/packet", "lower")]
    baseline = "peer"
    targets: ClassVar = [Target("drop", "fastpath", ">=", 2, versus="peer")]  # 3×: met
    repeat = 3
    quick_repeat = 1

    def contenders(self) -> list[str]:
        return ["fastpath", "peer"]

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        return {"drop": 10.0 if contender == "fastpath" else 30.0}


class Beta(Alpha):
    name = "beta"
    description = "a scenario whose target is missed"
    targets: ClassVar = [Target("drop", "fastpath", "<=", 5)]  # 10 ns: missed


@pytest.fixture
def main(monkeypatch, tmp_path):
    monkeypatch.setattr(fastpath.cli, "COMMAND_MODULES", ("fastpath.bench.cli",))
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(bench_registry, "BUILTIN", {})
    register_scenario(Alpha)
    register_scenario(Beta)
    out = tmp_path / "results"

    def run(*argv):
        return fastpath.cli.main(["bench", *argv, "--out", str(out)])

    run.out = out
    return run


def test_unknown_scenario_is_one_line_naming_the_valid_ones(main, capsys):
    assert main("alpha", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["fastpath: error: unknown scenario 'nope'; choose from: alpha, beta"]
    assert not main.out.exists()  # nothing ran, nothing written


def test_list(main, capsys, tmp_path, monkeypatch):
    (tmp_path / "bench_cli_dep.py").write_text("import fastpath_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench_registry, "BUILTIN", {"gamma": "bench_cli_dep"})
    assert main("--list") == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "fastpath against a peer, scripted" in out
    assert "a scenario whose target is missed" in out
    assert "gamma" in out and "unavailable" in out
    assert main("--list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    assert rows["alpha"]["contenders"] == ["fastpath", "peer"]
    assert rows["alpha"]["baseline"] == "peer"
    assert rows["alpha"]["targets"] == ["fastpath drop ≥ 2× better than peer"]
    assert rows["gamma"]["available"] is False and "fastpath_no_such_dependency" in rows["gamma"]["reason"]


def test_json_run_writes_files_and_prints_results(main, capsys):
    assert main("alpha", "--json", "--repeat", "4") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["scenario"]["name"] for s in doc["scenarios"]] == ["alpha"]
    alpha = doc["scenarios"][0]
    assert alpha["config"]["repeat"] == 4 and len(alpha["samples"]) == 4 * 2 + 2  # + warm-up
    assert alpha["targets"][0]["met"] is True
    assert alpha["environment"]["fastpath_version"] == fastpath.__version__
    assert {"kernel", "cpu_model", "nproc", "git_commit", "timestamp"} <= set(alpha["environment"])
    run_dir = main.out / "latest"
    assert str(run_dir.resolve()) == str(main.out.resolve() / doc["run_dir"].rsplit("/", 1)[1])
    assert {p.name for p in run_dir.iterdir()} == {"alpha.json", "alpha.md", "alpha-drop.png"}


def test_missed_target_is_reported_and_fails_only_under_strict(main, capsys):
    assert main("beta", "--quick") == 0
    captured = capsys.readouterr()
    assert "fastpath drop ≤ 5 ns/packet" in captured.out and "NOT MET" in captured.out
    assert "3.00× better" in captured.out
    assert main("beta", "--quick", "--strict") == 1
    assert "--strict: 1 target(s) missed" in capsys.readouterr().err
    assert main("alpha", "--quick", "--strict") == 0


def test_all_scenarios_run_when_none_named_and_unavailable_ones_are_skipped(main, capsys):
    class NoHost(Alpha):
        name = "nohost"

        def setup(self, ctx):
            from fastpath.errors import CapabilityError

            raise CapabilityError("no hugepages reserved")

    register_scenario(NoHost)
    assert main("--quick", "--json") == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert [s["scenario"]["name"] for s in doc["scenarios"]] == ["alpha", "beta"]
    assert "no hugepages reserved" in doc["unavailable"]["nohost"]
    assert "skipping scenario 'nohost'" in captured.err
    assert main("--quick", "--json", "--strict") == 1
    # Named explicitly, an unavailable scenario is an error of its own.
    assert main("nohost") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "fastpath: error: scenario 'nohost' is unavailable: no hugepages reserved"


def test_no_registered_scenarios_is_a_clear_error(main, capsys, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    assert main() == 1
    assert capsys.readouterr().err.startswith("fastpath: error: no benchmark scenarios are registered")


def test_repeat_must_be_positive(main, capsys):
    with pytest.raises(SystemExit) as info:
        main("alpha", "--repeat", "0")
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


class Curve(Alpha):
    name = "curve"
    description = "a scripted scaling curve"
    baseline = "1"
    sweep = "VIPs"
    targets: ClassVar = []

    def contenders(self) -> list[str]:
        return ["1", "10", "100"]

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        return {"drop": 10.0 if contender != "100" else 30.0}

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        return ["the hash table outgrows the cache"]


def test_sweep_is_listed_as_a_curve_and_reported_with_its_knee(main, capsys):
    register_scenario(Curve)
    assert main("--list", "curve") == 0
    assert "a curve over VIPs: 1, 10, 100" in capsys.readouterr().out
    assert main("curve", "--repeat", "2") == 0
    out = capsys.readouterr().out
    assert "drop stops being flat at 100 VIPs: 3.00× worse than at 1 VIPs" in " ".join(out.split())
    assert "why: the hash table outgrows the cache" in out
    assert main("curve", "--repeat", "2", "--json") == 0
    doc = json.loads(capsys.readouterr().out)["scenarios"][0]
    assert doc["sweep"]["curves"]["drop"]["knee"]["point"] == "100"
    assert doc["sweep"]["explanation"] == ["the hash table outgrows the cache"]
    md = (main.out / "latest" / "curve.md").read_text()
    assert "| VIPs | median |" in md and "## Why the curve bends" in md
