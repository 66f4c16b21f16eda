"""`fastpath bench topo-scale --quick` and `fastpath bench echo-conns --quick` through the
runner API: every point of each curve yields real numbers, the reports are written, and
nothing (namespace, statefile, server, load generator, raised limit) outlives the run."""

from __future__ import annotations

import os
import resource

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.report import write_reports
from fastpath.bench.runner import run_scenario
from fastpath.core.namespaces import list_netns
from fastpath.netns import builder
from fastpath.netns.pytest_plugin import require_netns
from fastpath.uring.native import find_binary

pytestmark = pytest.mark.integration


def _children() -> set[int]:
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == me:
                out.add(int(entry))
    return out


def test_topo_scale_quick_builds_and_removes_every_size(tmp_path):
    require_netns()
    from fastpath.bench.scenarios import topo_scale

    result = run_scenario(load_scenario("topo-scale"), quick=True, log=lambda _m: None)
    files = write_reports(result, tmp_path)

    assert result.contenders == ["10", "25", "50", "100", "200"] and result.skipped == {}
    for point in result.contenders:
        nodes = int(point)
        (up,) = result.values("up_s", point)
        (down,) = result.values("down_s", point)
        assert up > 0 and down > 0, point
        assert result.values("up_ms_per_node", point)[0] == pytest.approx(up / nodes * 1e3)
        phases = [result.values(f"{p}_ms_per_node", point)[0] for p in topo_scale.PHASES]
        assert all(v > 0 for v in phases), (point, phases)
        # The phases are parts of up: together no more than the whole.
        assert sum(phases) * nodes / 1e3 <= up, (point, phases, up)
    lab = f"tscale{os.getpid() % 100000}"
    assert topo_scale.leftovers(lab) == []
    assert not [n for n in list_netns() if n.startswith(f"{lab}-")]
    assert builder.root_links_of(lab) == []
    assert files["markdown"].exists() and files["json"].exists()
    assert len(load_scenario("topo-scale")().explain(
        {c: {m.name: result.summaries[m.name][c].median for m in result.metrics} for c in result.contenders}
    )) == 2  # fmt: skip


def test_echo_conns_quick_measures_every_connection_count(tmp_path):
    for name in ("fastpath-echo-bench", "fastpath-epoll-echo", "fastpath-uring-echo"):
        try:
            find_binary(name)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            pytest.skip(f"{name} unavailable: {exc}")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    children = _children()
    result = run_scenario(load_scenario("echo-conns"), quick=True, log=lambda _m: None)
    files = write_reports(result, tmp_path)

    assert result.contenders == ["1", "10", "100", "1000", "10000"] and result.skipped == {}
    for point in result.contenders:
        for server in ("native", "epoll"):
            assert result.values(f"cpu_{server}", point)[0] > 0, (server, point)
            assert result.values(f"rps_{server}", point)[0] > 0, (server, point)
    for server in ("native", "epoll"):
        # Many ready connections: each wake-up of the server finds several of them.
        one = result.values(f"batch_{server}", "1")[0]
        many = result.values(f"batch_{server}", "10000")[0]
        assert 0 < one < many and many >= 2, (server, one, many)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limit
    assert _children() <= children, "a server or load generator outlived the run"
    assert files["markdown"].exists() and files["json"].exists()
