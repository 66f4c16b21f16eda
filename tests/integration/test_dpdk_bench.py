"""`fastpath bench l2fwd --quick` through the runner API: every contender forwarded real
frames (more than 0 Mpps, counted at the sink's interface) or was skipped with a reason,
the four fastpath-vs-testpmd targets were evaluated, the reports were written into
tmp_path, and nothing is left behind: no namespace, process, DPDK runtime dir, hugepage
file or XDP program of the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fastpath.bench.registry import ScenarioUnavailable, load_scenario
from fastpath.bench.report import write_reports
from fastpath.bench.runner import run_scenario
from fastpath.core.namespaces import list_netns
from fastpath.dpdk import eal, hugepages
from fastpath.netns.pytest_plugin import session_lab_name

pytestmark = pytest.mark.integration


def our_runtime_leftovers() -> list[str]:
    """DPDK runtime dirs and hugepage files with this process's fastpath prefixes."""
    mine = [f"{eal.PREFIX_BASE}-{app}-{os.getpid()}-" for app in ("l2fwd", "testpmd")]
    found = []
    runtime = Path(eal.RUNTIME_ROOT)
    if runtime.is_dir():
        found += [str(p) for p in runtime.iterdir() if p.name.startswith(tuple(mine))]
    for mount in hugepages.mounts(with_files=False):
        found += [str(p) for p in Path(mount.path).iterdir() if p.name.startswith(tuple(mine))]
    return found


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline.strip()}")
    return found


def test_l2fwd_bench_quick_measures_every_contender(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the l2fwd benchmark needs root (namespaces, DPDK, XDP)")
    lab = session_lab_name()  # the plugin's session-end leak check knows this name
    scenario = type("L2fwdBenchUnderTest", (load_scenario("l2fwd"),), {"lab_name": lab})
    logs: list[str] = []
    try:
        result = run_scenario(scenario, quick=True, log=logs.append)
    except ScenarioUnavailable as exc:
        pytest.skip(str(exc))
    finally:
        assert [ns for ns in list_netns() if ns.startswith(f"{lab}-")] == []
        assert processes_mentioning(f"{lab}-") == []
        assert our_runtime_leftovers() == []

    declared = scenario().contenders()
    assert sorted(result.contenders + list(result.skipped)) == sorted(declared)
    assert all(why.strip() for why in result.skipped.values()), result.skipped
    assert "bridge" in result.contenders  # the baseline always runs
    for contender in result.contenders:
        fwd = result.values("fwd_mpps", contender)
        offered = result.values("offered_mpps", contender)
        loss = result.values("loss_pct", contender)
        assert len(fwd) == result.repeat == 2, contender
        assert all(v > 0 for v in fwd), (contender, fwd)
        assert all(o > 0 for o in offered), (contender, offered)
        # In-flight frames at the window edges may make loss a hair below 0, never more.
        assert all(-0.5 < x < 100 for x in loss), (contender, loss)
        assert all(f <= o * 1.005 for f, o in zip(fwd, offered, strict=True)), contender
    assert any("generator dpdk-testpmd txonly" in line for line in logs), logs

    assert len(result.targets) == 4
    for target in result.targets:
        pair = (target.target.contender, target.target.versus)
        if all(c in result.contenders for c in pair):
            assert target.measured is not None and target.measured > 0, pair
        else:
            assert "skipped" in target.reason, (pair, target.reason)

    files = write_reports(result, tmp_path)
    data = json.loads(files["json"].read_text())
    assert data["scenario"]["name"] == "l2fwd" and data["config"]["quick"] is True
    assert {s["contender"] for s in data["samples"]} == set(result.contenders)
    assert (tmp_path / "l2fwd.md").read_text().startswith("# fastpath bench: l2fwd")
