"""A balancer fleet behind ECMP (fastpath.labs.fleetlab): three XDP balancers, each with its
own BIRD announcing the VIP to a router namespace whose BIRD merges the three paths into a
multipath kernel route; real long-lived and new TCP connections from a client namespace.

- With equal seeds, lb1 losing its link and coming back costs no connection: the router
  withdraws it within the BFD time, its flows and part of lb2's move, and every moved flow
  keeps its backend because the Maglev pick is the same on every node.
- With lb3 on another seed, `lb fleet check` names lb3 and the seed, and the very same
  failover breaks connections: the scenario's counts can fail.
- The route never outlives the data plane: a killed `lb health` (and its BIRD), a detached
  balancer and a VIP with every backend drained each make the router drop that balancer.
Every lab, speaker process, pin and state file is gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpath.apps.lb import store
from fastpath.bpf import xdp
from fastpath.core.paths import RUN_ROOT
from fastpath.labs import fleetlab
from fastpath.netns import list_labs
from fastpath.netns.pytest_plugin import session_lab_name

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastpath.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _speakers(*marks: str) -> list[str]:
    """Command lines of live BIRD processes that mention one of `marks` (a path of ours)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if "bird" in cmd and any(m in cmd for m in marks) and "State:\tZ" not in status:
            out.append(f"{pid}: {cmd}")
    return out


def _gone(lab: fleetlab.FleetLab, marks: tuple[str, ...]) -> None:
    """Nothing of the lab is left: namespaces, speakers, pins, state files."""
    assert not any(s.name == lab.name for s in list_labs())
    assert not _speakers(*marks), _speakers(*marks)
    for node in fleetlab.BALANCERS:
        ns = f"{lab.name}-{node}"
        assert not xdp.pin_dir("eth0", ns).exists()
        assert not store.state_path("eth0", ns).parent.exists()


@pytest.fixture(scope="module")
def fleet() -> Iterator[fleetlab.FleetLab]:
    from fastpath.netns import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = fleetlab.FleetLab(session_lab_name())
    lab.up()
    marks = (str(RUN_ROOT / "lb" / lab.name), str(lab.tmp.name if lab.tmp else "?"))
    try:
        yield lab
    finally:
        lab.down()
    _gone(lab, marks)


def test_failover_and_return_lose_no_connection(fleet: fleetlab.FleetLab) -> None:
    assert fleet.check()["consistent"]
    res = fleetlab.run_scenario(fleet, long_lived=60, phase_s=4.0, victim="lb1")
    n = res.long_lived
    detail = res.to_json()
    assert n == 60, detail
    # Flows spread over the three balancers (each >= 10 %; about a third expected).
    assert all(res.flows_before[b] >= n // 10 for b in fleetlab.BALANCERS), detail
    # The router withdrew lb1 within the hold time at the latest (BFD: 0.5 s configured).
    assert res.withdraw_s is not None and res.withdraw_s <= fleetlab.HOLD_S, detail
    assert res.flows_failed_over["lb1"] == 0, detail
    # The rehash moved flows of a surviving balancer too: Maglev carried those as well.
    assert res.moved_from_survivors > 0, detail
    assert res.flows_returned["lb1"] > 0, detail
    assert res.survived_failover >= 0.99 * n, detail
    assert res.survived_return >= 0.99 * n, detail
    total = res.new_ok + res.new_failed
    assert total >= 20 and res.new_failed <= 0.01 * total, detail
    assert set(res.flows_per_backend) == set(fleetlab.BACKENDS), detail


def test_route_does_not_outlive_the_data_plane(fleet: fleetlab.FleetLab) -> None:
    lb3_ns = fleet.lab.netns("lb3")
    # A killed health checker takes its BIRD along: the session closes, the route goes.
    agent = fleet.agents["lb3"]
    os.kill(agent.pid, signal.SIGKILL)
    agent.proc.wait(10)
    fleet.wait_nexthops({"lb1", "lb2"}, timeout=fleetlab.HOLD_S * 3)
    deadline = time.monotonic() + 10
    while _speakers(str(store.state_path("eth0", lb3_ns).parent)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _speakers(str(store.state_path("eth0", lb3_ns).parent))

    # Every backend drained: nothing to serve, the VIP is withdrawn (the session stays up).
    lb2_ns = fleet.lab.netns("lb2")
    status = _cli("lb", "bgp", "status", "--iface", "eth0", "--netns", lb2_ns, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["announced"] == [f"{fleetlab.VIP}/32"], status.stdout
    for addr in fleetlab.BACKENDS.values():
        res = _cli("lb", "backend", "drain", f"{fleetlab.VIP}:{fleetlab.PORT}/tcp", addr,
                   "--iface", "eth0", "--netns", lb2_ns)
        assert res.returncode == 0, res.stderr
    fleet.wait_nexthops({"lb1"}, timeout=10)
    status = _cli("lb", "bgp", "status", "--iface", "eth0", "--netns", lb2_ns, "--json")
    assert status.returncode == 0, status.stderr
    got = json.loads(status.stdout)
    assert got["announced"] == [] and got["sessions"][0]["info"] == "Established", got

    # Detached under a running health checker: it withdraws everything and says so.
    lb1_ns = fleet.lab.netns("lb1")
    res = _cli("lb", "detach", "eth0", "--netns", lb1_ns)
    assert res.returncode == 0, res.stderr
    fleet.attached.remove("lb1")
    fleet.wait_nexthops(set(), timeout=10)
    agent = fleet.agents["lb1"]
    assert agent.proc.wait(10) != 0
    assert any("every VIP withdrawn" in line for line in agent.log), list(agent.log)


def test_a_different_seed_is_found_and_breaks_connections() -> None:
    from fastpath.netns import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = fleetlab.FleetLab(session_lab_name(), seeds={"lb3": 7})
    lab.up()
    marks = (str(RUN_ROOT / "lb" / lab.name), str(lab.tmp.name if lab.tmp else "?"))
    try:
        check = lab.check()
        assert not check["consistent"]
        assert {d["node"] for d in check["differences"]} == {f"eth0@{lab.lab.netns('lb3')}"}
        assert check["differences"][0]["reasons"][0] == "seed 7 (others 0)", check
        nodes = [f"eth0@{lab.lab.netns(n)}" for n in fleetlab.BALANCERS]
        res = _cli("lb", "fleet", "check", *nodes)
        assert res.returncode == 1
        said = res.stdout + res.stderr
        vip = f"{fleetlab.VIP}:{fleetlab.PORT}/tcp"
        assert f"eth0@{lab.lab.netns('lb3')} differs on {vip}: seed 7 (others 0)" in said, said
        assert "Traceback" not in said
        same = _cli("lb", "fleet", "check", nodes[0], nodes[1], "--json")
        assert same.returncode == 0 and '"consistent": true' in same.stdout, same.stdout + same.stderr

        # The same failover as above, now with lb3 picking other backends: flows break.
        out = fleetlab.run_scenario(lab, long_lived=30, phase_s=3.0, victim="lb1")
        assert out.survived_failover < out.long_lived, out.to_json()
        assert fleetlab.problems(out), out.to_json()
    finally:
        lab.down()
    _gone(lab, marks)
