"""The `echo` benchmark scenario's declaration: grid, metric names, targets, contenders'
command lines and the /proc CPU reader. Nothing is started here."""

from __future__ import annotations

import os
import sys
import time

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.scenario import check_scenario_class
from fastpath.bench.scenarios import SCENARIOS
from fastpath.bench.scenarios import echo as echo_scenario
from fastpath.errors import FastpathError


def test_registered_and_well_formed():
    assert SCENARIOS["echo"] == "fastpath.bench.scenarios.echo"
    cls = load_scenario("echo")
    check_scenario_class(cls)
    assert cls.baseline == "epoll"
    assert cls().contenders() == ["native", "python", "epoll", "asyncio", "uvloop"]


def test_grid_is_the_full_issue_grid_plus_the_target_point():
    points = set(echo_scenario.POINTS)
    assert {(c, s) for c in (1, 50, 100, 500) for s in (64, 512, 4096)} <= points
    assert (100, 128) in points and len(points) == len(echo_scenario.POINTS) == 13


def test_metric_names_encode_the_grid_point():
    names = [m.name for m in echo_scenario.Echo.metrics]
    assert len(names) == 3 * 13 and len(set(names)) == len(names)
    by = {m.name: m for m in echo_scenario.Echo.metrics}
    assert by["rps_c100_s128"].better == "higher" and by["rps_c100_s128"].unit == "req/s"
    assert by["p99_c500_s4096"].better == "lower"
    assert by["cpu_c1_s64"].better == "lower" and "1M requests" in by["cpu_c1_s64"].unit
    assert echo_scenario.point_name(50, 512) == "c50_s512"


def test_targets_are_ratios_at_the_headline_point():
    got = {(t.contender, t.versus, t.op, t.value) for t in echo_scenario.Echo.targets}
    assert got == {
        ("native", "epoll", ">=", 1.3),
        ("python", "asyncio", ">=", 1.5),
        ("python", "uvloop", ">=", 0.9),
    }
    assert all(t.metric == "rps_c100_s128" for t in echo_scenario.Echo.targets)


@pytest.mark.parametrize("contender", ["python", "asyncio", "uvloop"])
def test_python_servers_run_single_threaded_on_loopback(contender):
    argv = echo_scenario.server_argv(contender)
    assert argv[0] == sys.executable
    assert argv[argv.index("--addr") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "0"


def test_unknown_contender_is_rejected():
    with pytest.raises(ValueError, match="unknown echo contender"):
        echo_scenario.server_argv("nginx")


def test_cpu_seconds_reads_this_process():
    before = echo_scenario.cpu_seconds(os.getpid())
    end = time.process_time() + 0.1
    while time.process_time() < end:  # bounded busy loop: 0.1 s of CPU
        pass
    after = echo_scenario.cpu_seconds(os.getpid())
    assert after - before >= 0.05


def test_grid_env_restricts_points_and_keeps_the_headline():
    assert echo_scenario.grid_from_env(None) == echo_scenario.FULL_GRID
    assert echo_scenario.grid_from_env(" ") == echo_scenario.FULL_GRID
    assert echo_scenario.grid_from_env("c100_s128") == ((100, 128),)
    # The headline point stays (the targets need it), in the full grid's order.
    assert echo_scenario.grid_from_env("c500_s64, c1_s4096") == ((100, 128), (1, 4096), (500, 64))


def test_grid_env_names_an_unknown_point():
    with pytest.raises(FastpathError, match="FASTPATH_ECHO_GRID: unknown grid point.*c7_s9"):
        echo_scenario.grid_from_env("c100_s128,c7_s9")


@pytest.mark.parametrize(("value", "ok"), [("", 1), ("8", 8), ("0", None), ("x", None), ("2000", None)])
def test_load_generator_env_knobs(monkeypatch, value, ok):
    monkeypatch.setenv(echo_scenario.DEPTH_ENV, value)
    if ok is None:
        with pytest.raises(FastpathError, match=echo_scenario.DEPTH_ENV):
            echo_scenario._positive_env(echo_scenario.DEPTH_ENV, 1024)
    else:
        assert echo_scenario._positive_env(echo_scenario.DEPTH_ENV, 1024) == ok
