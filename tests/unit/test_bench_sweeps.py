"""The scaling-curve scenarios (topo-scale, echo-conns): declared as sweeps over their x
axis, and their explain() names where the cost stops being flat and what grew."""

from __future__ import annotations

import pytest

from fastpath.bench.registry import load_scenario


def _topo_point(up: float, down: float, ns: float, links: float, config: float,
                journal: float, facts: float = 0.0) -> dict[str, float]:  # fmt: skip
    return {"up_s": up, "down_s": down, "up_ms_per_node": up, "down_ms_per_node": down,
            "namespaces_ms_per_node": ns, "links_ms_per_node": links,
            "config_ms_per_node": config, "journal_ms_per_node": journal,
            "facts_ms_per_node": facts}  # fmt: skip


def _echo_point(cpu_n: float, cpu_e: float, batch_n: float = 1.0, batch_e: float = 1.0) -> dict[str, float]:
    return {"cpu_native": cpu_n, "cpu_epoll": cpu_e, "rps_native": 1.0, "rps_epoll": 1.0,
            "batch_native": batch_n, "batch_epoll": batch_e}  # fmt: skip


@pytest.mark.parametrize(("name", "axis", "points"), [
    ("topo-scale", "nodes", ["10", "25", "50", "100", "200"]),
    ("echo-conns", "connections", ["1", "10", "100", "1000", "10000"]),
])  # fmt: skip
def test_declared_as_a_sweep_whose_points_are_x_values(name, axis, points):
    cls = load_scenario(name)
    assert cls.sweep == axis
    assert cls().contenders() == points
    assert cls.baseline == points[0]
    assert {m.name for m in cls.metrics} >= ({"up_s", "down_s"} if name == "topo-scale" else {"cpu_native"})


def test_topo_scale_names_the_knee_and_the_phase_that_grew():
    cls = load_scenario("topo-scale")
    medians = {
        "10": _topo_point(10, 1, 4, 5, 0.5, 0.5),
        "50": _topo_point(10.5, 1, 4, 5, 0.5, 1.0),
        "200": _topo_point(20, 1.1, 4.5, 5.5, 0.5, 9.5),
    }
    text = " ".join(cls().explain(medians))
    assert "stops being flat at 200 nodes" in text
    assert "growth is in journal" in text
    assert "journal take 48 %" in text


def test_topo_scale_says_linear_when_per_node_cost_is_flat():
    cls = load_scenario("topo-scale")
    medians = {n: _topo_point(10, 1, 3, 6, 0.5, 0.5) for n in ("10", "100", "200")}
    text = " ".join(cls().explain(medians))
    assert "per-node cost stays within 30 % of its lowest: up grows linearly" in text
    assert "links take 60 %" in text and "Small labs" not in text
    assert "the rest 0.0 ms/node" in text


def test_topo_scale_says_small_labs_pay_fixed_costs():
    cls = load_scenario("topo-scale")
    medians = {"10": _topo_point(30, 1, 10, 15, 3, 2), "100": _topo_point(15, 1, 5, 8, 1, 1),
               "200": _topo_point(15.5, 1, 5, 8.5, 1, 1)}  # fmt: skip
    text = " ".join(cls().explain(medians))
    assert "lowest 15.0 at 100" in text and "Small labs pay more per node" in text
    assert "stops being flat" not in text


def test_echo_conns_names_the_wakeup_cost_and_the_rise():
    cls = load_scenario("echo-conns")
    medians = {
        "1": _echo_point(20, 25, 1, 1),
        "100": _echo_point(3, 3, 30, 15),
        "1000": _echo_point(3.2, 3.1, 60, 40),
        "10000": _echo_point(6, 3.3, 80, 256),
    }
    native, epoll = cls().explain(medians)
    assert native.startswith("native: 20.00 µs/request at 1 connection(s), lowest 3.00 at 100")
    assert "full sleep/wake-up" in native and "From 10000 connections it rises again" in native
    assert "finds as much work (30.0 -> 80.0)" in native and "CPU caches" in native
    assert "1.0 to 80.0" in native
    assert "rises again" not in epoll and "within 30 % of its lowest up to 10000" in epoll


def test_explain_needs_two_points():
    assert load_scenario("echo-conns")().explain({"1": _echo_point(1, 1)}) == []
    assert load_scenario("topo-scale")().explain({"10": _topo_point(1, 1, 1, 1, 1, 1)}) == []
