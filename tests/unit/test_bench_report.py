"""Report files written from a real runner result: JSON schema, Markdown tables, PNG plots."""

import json
import struct
from datetime import UTC, datetime
from typing import ClassVar

import pytest

from fastpath.bench.report import make_run_dir, render_markdown, write_reports
from fastpath.bench.runner import SCHEMA, run_scenario
from fastpath.bench.scenario import BenchContext, Metric, Scenario, Target

ENV = {
    "timestamp": "2024-05-01T12:00:00+00:00",
    "hostname": "bench-host",
    "kernel": "6.8.0-test",
    "cpu_model": "Test CPU 3000",
    "nproc": 4,
    "git_commit": "0123abcd",
    "git_dirty": True,
    "fastpath_version": "9.9.9",
}

# Per contender, the values its repeats return, in order (medians: 20, 60, 40 ns; 30, 10, 15 Mpps).
NS = {"fastpath": [19, 20, 21, 22, 18], "kernel": [60, 58, 62, 61, 59], "epoll": [40] * 5}
MPPS = {"fastpath": [30, 29, 31, 30, 30], "kernel": [10] * 5, "epoll": [15, 14, 16, 15, 15]}


class Table(Scenario):
    name = "table"
    description = "scripted | values"
    metrics: ClassVar = [Metric("drop", "ns/packet", "lower"), Metric("rate", "Mpps", "higher")]
    baseline = "kernel"
    targets: ClassVar = [
        Target("drop", "fastpath", "<=", 50),  # met: 20 ns
        Target("rate", "fastpath", ">=", 3.5, versus="kernel"),  # missed: 3×
        Target("drop", "fastpath", ">=", 1.5, versus="epoll"),  # met: 2×
    ]
    repeat = 5
    warmup = 0

    def contenders(self) -> list[str]:
        return ["fastpath", "kernel", "epoll"]

    def setup(self, ctx: BenchContext) -> None:
        self.seen: dict[str, int] = {}

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        i = self.seen.get(contender, 0)
        self.seen[contender] = i + 1
        return {"drop": NS[contender][i], "rate": MPPS[contender][i]}


@pytest.fixture(scope="module")
def result():
    return run_scenario(Table, env=ENV)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_reports(result, out), out


def test_files_are_named_after_scenario_and_metrics(written):
    files, out = written
    assert sorted(p.name for p in out.iterdir()) == [
        "table-drop.png", "table-rate.png", "table.json", "table.md"
    ]  # fmt: skip
    assert files["json"] == out / "table.json" and files["plot:rate"] == out / "table-rate.png"


def test_json_holds_every_raw_sample_environment_and_summary(written):
    _, out = written
    doc = json.loads((out / "table.json").read_text())
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "scenario", "config", "environment", "duration_s", "samples",
                        "summary", "comparisons", "targets", "files"}  # fmt: skip
    assert doc["scenario"]["baseline"] == "kernel"
    assert doc["scenario"]["contenders"] == ["fastpath", "kernel", "epoll"]
    assert doc["scenario"]["metrics"][0] == {"name": "drop", "unit": "ns/packet", "better": "lower"}
    assert doc["config"] == {"repeat": 5, "warmup": 0, "quick": False}
    assert doc["environment"] == ENV
    assert len(doc["samples"]) == 15
    for c in NS:
        got = [s["values"]["drop"] for s in doc["samples"] if s["contender"] == c]
        assert got == NS[c]
    s0 = doc["samples"][0]
    assert set(s0) == {"seq", "repeat", "warmup", "contender", "values", "elapsed_s"}
    assert [s["contender"] for s in doc["samples"][:6]] == [
        "fastpath", "kernel", "epoll", "kernel", "epoll", "fastpath"
    ]  # fmt: skip
    fp = doc["summary"]["drop"]["fastpath"]
    assert (fp["median"], fp["p25"], fp["p75"], fp["min"], fp["max"], fp["n"]) == (20, 19, 21, 18, 22, 5)
    cmp = doc["comparisons"]["drop"]["fastpath"]
    assert cmp["ratio"] == pytest.approx(20 / 60) and cmp["advantage"] == pytest.approx(3.0)
    assert cmp["verdict"] == "3.00× better"
    assert "kernel" not in doc["comparisons"]["drop"]
    assert [t["met"] for t in doc["targets"]] == [True, False, True]
    assert doc["targets"][1]["measured"] == pytest.approx(3.0)
    assert doc["files"]["markdown"].endswith("table.md")


def test_markdown_states_ratios_and_target_verdicts(written):
    _, out = written
    md = (out / "table.md").read_text()
    assert "# fastpath bench: table" in md
    assert "scripted \\| values" in md  # a pipe in text must not break the tables
    assert "| kernel | 6.8.0-test |" in md
    assert "| CPU | Test CPU 3000 (4 usable CPUs) |" in md
    assert "| git commit | 0123abcd (uncommitted changes) |" in md
    assert "## drop — ns/packet (lower is better)" in md
    assert "## rate — Mpps (higher is better)" in md
    header = "| contender | median | p25 | p75 | min | max | mean | stdev | n | ÷ kernel | vs kernel |"
    assert md.count(header) == 2
    row = "| fastpath | 20.00 | 19.00 | 21.00 | 18.00 | 22.00 | 20.00 | 1.58 | 5 | 0.333 | 3.00× better |"
    assert row in md
    assert "| kernel (baseline) | 60.00 |" in md
    assert "- fastpath / kernel = 0.333× → 3.00× better" in md
    assert "- epoll / kernel = 1.5× → 1.50× better" in md  # rate: 15 vs 10 Mpps
    assert "![drop](table-drop.png)" in md
    assert "## Targets: 2 of 3 met" in md
    assert "| fastpath drop ≤ 50 ns/packet | 20.00 ns/packet | met |" in md
    assert "| fastpath rate ≥ 3.5× better than kernel | 3.00× better | **NOT MET** |" in md
    assert "| fastpath drop ≥ 1.5× better than epoll | 2.00× better | met |" in md


def test_markdown_without_targets_or_plots(result):
    result_copy = type(result)(**{**result.__dict__, "targets": [], "skipped": {"dpdk": "no NIC"}})
    md = render_markdown(result_copy)
    assert "Targets" not in md and "![" not in md
    assert "## Skipped contenders" in md and "- dpdk: no NIC" in md


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24]), len(data)


def test_plots_are_real_pngs(written):
    _, out = written
    for metric in ("drop", "rate"):
        (width, height), size = _png_size(out / f"table-{metric}.png")
        assert width >= 300 and height >= 200
        assert size > 5000  # bars, labels and text, not an empty canvas


def test_run_dir_is_fresh_and_latest_points_at_it(tmp_path):
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    first = make_run_dir(tmp_path / "results", now)
    second = make_run_dir(tmp_path / "results", now)
    assert first.name == "20240501-120000" and second.name == "20240501-120000-2"
    assert (tmp_path / "results" / "latest").resolve() == second.resolve()
