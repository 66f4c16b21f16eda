"""Scaling curves (sweep scenarios): the knee computation, and the curve in every report
(JSON, Markdown, console, PNG) from a real runner result."""

import json
import struct
from typing import ClassVar

import pytest
from rich.console import Console

from fastpath.bench.report import print_human, render_markdown, write_reports
from fastpath.bench.runner import run_scenario
from fastpath.bench.scenario import BenchContext, Metric, Scenario
from fastpath.bench.sweep import KNEE_FACTOR, find_knee, log_axis
from fastpath.errors import FastpathError

NS = Metric("ns", "ns/packet", "lower")
OK = Metric("ok", "%", "higher")

ENV = {"timestamp": "2024-05-01T12:00:00+00:00", "hostname": "h", "kernel": "6.8", "cpu_model": "c",
       "nproc": 2, "git_commit": "abc", "git_dirty": False, "fastpath_version": "1"}


@pytest.mark.parametrize(("medians", "knee", "worse"), [
    ({"1": 10, "10": 11, "100": 12, "1000": 12.4}, None, 1.24),  # within 1.25×: flat
    ({"1": 10, "10": 12, "100": 13, "1000": 40}, "100", 1.3),    # 13 > 12.5: the first past it
    ({"1": 10, "10": 30, "100": 11, "1000": 12}, "10", 3.0),     # the first, not the worst
    ({"1": 10, "10": 8, "100": 9, "1000": 7}, None, 0.9),        # cheaper never bends
])
def test_knee_is_the_first_point_worse_than_the_first_by_the_factor(medians, knee, worse):
    got = find_knee(NS, list(medians), medians)
    assert got.point == knee and got.worse == pytest.approx(worse)
    assert got.factor == KNEE_FACTOR == 1.25


def test_knee_follows_the_metric_direction():
    # success going down is worse: 100 -> 70 % is 1.43× worse
    got = find_knee(OK, ["0", "1000", "10000"], {"0": 100, "1000": 95, "10000": 70})
    assert got.point == "10000" and got.worse == pytest.approx(100 / 70)
    # and going up is better, never a knee
    assert find_knee(NS, ["1", "2"], {"1": 10, "2": 5}).point is None
    # a fall to 0 is the knee, stated and kept out of JSON as a number
    gone = find_knee(OK, ["512", "1024"], {"512": 100, "1024": 0})
    assert gone.point == "1024"
    assert gone.statement("new flows", "%") == (
        "ok stops being flat at 1024 new flows: down to 0 from its value at 512 new flows "
        "(the first point more than 1.25× worse)")
    assert gone.to_dict() == {"point": "1024", "worse": None, "factor": 1.25, "to_zero": True}


def test_knee_statements_name_the_point_and_the_range():
    bent = find_knee(NS, ["1", "10", "100"], {"1": 10, "10": 10, "100": 20})
    assert bent.statement("VIPs", "ns/packet") == (
        "ns stops being flat at 100 VIPs: 2.00× worse than at 1 VIPs (the first point more than 1.25× worse)")
    flat = find_knee(NS, ["1", "10", "100"], {"1": 10, "10": 10.5, "100": 11})
    assert flat.statement("VIPs", "ns/packet").startswith("ns is flat over the whole range (1 → 100 VIPs)")
    zero = find_knee(OK, ["0", "10"], {"0": 0, "10": 0})
    assert zero.point is None and zero.worse is None
    assert "not judged" in zero.statement("flows", "%")
    crossing = find_knee(NS, ["1", "2"], {"1": -5, "2": 10})  # a difference that changes sign
    assert crossing.point is None and "change sign" in crossing.statement("x", "ns")


def test_log_axis_only_when_x_spans_a_hundredfold():
    assert log_axis([1, 10, 100]) and not log_axis([3, 10, 100]) and not log_axis([0, 10, 1000])


# medians per point: 20, 21, 22 (flat), then 50 at 1000 VIPs
CURVE = {"1": [19, 20, 21], "10": [20, 21, 22], "100": [21, 22, 23], "1000": [48, 50, 52]}


class Vips(Scenario):
    name = "vips"
    description = "a scripted scaling curve"
    metrics: ClassVar = [NS]
    baseline = "1"
    sweep = "VIPs"
    repeat = 3
    warmup = 0

    def contenders(self) -> list[str]:
        return list(CURVE)

    def setup(self, ctx: BenchContext) -> None:
        self.seen: dict[str, int] = {}

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        i = self.seen.get(contender, 0)
        self.seen[contender] = i + 1
        return {"ns": CURVE[contender][i]}

    def explain(self, medians: dict[str, dict[str, float]]) -> list[str]:
        return [f"the table outgrows the cache at 1000 VIPs ({medians['1000']['ns']:g} ns)"]


@pytest.fixture(scope="module")
def result():
    return run_scenario(Vips, env=ENV)


def test_runner_computes_the_knee_and_asks_explain_with_the_medians(result):
    assert result.sweep == "VIPs" and result.contenders == ["1", "10", "100", "1000"]
    assert result.knees["ns"].point == "1000" and result.knees["ns"].worse == pytest.approx(2.5)
    assert result.explanation == ["the table outgrows the cache at 1000 VIPs (50 ns)"]


def test_json_carries_the_curve(result, tmp_path):
    write_reports(result, tmp_path)
    doc = json.loads((tmp_path / "vips.json").read_text())
    sweep = doc["sweep"]
    assert sweep["axis"] == "VIPs" and sweep["points"] == ["1", "10", "100", "1000"]
    assert sweep["x"] == [1, 10, 100, 1000] and sweep["knee_factor"] == 1.25
    curve = sweep["curves"]["ns"]
    assert curve["medians"] == {"1": 20, "10": 21, "100": 22, "1000": 50}
    assert curve["ratios"]["1000"] == pytest.approx(2.5)
    assert curve["knee"] == {"point": "1000", "worse": pytest.approx(2.5), "factor": 1.25, "to_zero": False}
    assert curve["statement"].startswith("ns stops being flat at 1000 VIPs: 2.50× worse")
    assert sweep["explanation"] == result.explanation


def test_markdown_lists_points_in_x_order_with_ratio_knee_and_why(result):
    md = render_markdown(result, {"ns": "vips-ns.png"})
    header = "| VIPs | median | p25 | p75 | min | max | mean | stdev | n | ÷ 1 | vs 1 |"
    assert header in md
    rows = [line for line in md.splitlines() if line.startswith("| 1")]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 10", "| 100", "| 1,000"]
    assert rows[-1].split(" | ")[-2:] == ["2.5", "2.50× worse |"]
    assert "**ns stops being flat at 1000 VIPs: 2.50× worse than at 1 VIPs" in md
    assert "## Why the curve bends" in md and "- the table outgrows the cache at 1000 VIPs (50 ns)" in md
    assert "![ns](vips-ns.png)" in md
    assert "Baseline" not in md and "Targets" not in md


def test_console_prints_the_curve_and_its_statement(result):
    console = Console(record=True, width=160)
    print_human(result, console)
    text = console.export_text()
    assert "1,000" in text and "2.5" in text
    assert "ns stops being flat at 1000 VIPs" in text
    assert "why: the table outgrows the cache" in text


def test_plot_is_a_real_png(result, tmp_path):
    files = write_reports(result, tmp_path)
    data = files["plot:ns"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200 and len(data) > 10000


class Unordered(Vips):
    name = "unordered"

    def contenders(self) -> list[str]:
        return ["1", "100", "10"]


class Unnamed(Vips):
    name = "unnamed"
    baseline = "small"

    def contenders(self) -> list[str]:
        return ["small", "large"]


@pytest.mark.parametrize("cls", [Unordered, Unnamed])
def test_sweep_points_must_be_increasing_numbers_from_the_baseline(cls):
    with pytest.raises(FastpathError, match="sweep"):
        run_scenario(cls, env=ENV)
