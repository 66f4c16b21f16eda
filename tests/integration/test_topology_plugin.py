"""The pytest plugin's fixtures and session leak check, run in a child pytest as root."""

from __future__ import annotations

import json
import os

import pytest
from pyroute2 import IPRoute

from fastpath.core.namespaces import list_netns
from fastpath.netns.pytest_plugin import require_netns

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _needs_netns():
    require_netns()


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "fastpath.netns.pytest_plugin", "-p", "no:cacheprovider", "-rA"
    )


def test_make_lab_tears_down_even_when_the_test_fails(pytester, monkeypatch):
    monkeypatch.delenv("FASTPATH_REQUIRE_ALL", raising=False)
    record = pytester.path / "made.json"
    pytester.makepyfile(
        test_lab=f"""
import json

from fastpath.netns import bundled_topology

def test_uses_a_lab_then_fails(make_lab, fastpath_session_token):
    lab = make_lab(bundled_topology("lab1"))
    proc = lab.spawn("server", ["sleep", "300"])
    assert fastpath_session_token in lab.name
    with open({str(record)!r}, "w") as f:
        json.dump({{"namespaces": lab.topology.all_netns(), "pid": proc.pid}}, f)
    assert lab.run("client", ["ping", "-c", "1", "-W", "2", "10.10.0.2"]).returncode == 0
    assert False, "deliberate failure"
"""
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    made = json.loads(record.read_text())
    assert made["namespaces"] and not set(made["namespaces"]) & set(list_netns())
    assert not os.path.exists(f"/proc/{made['pid']}")
    # Teardown did its job, so the leak check has nothing to say.
    assert "fastpath leak check" not in result.stdout.str()


def test_leak_check_fails_the_session_and_cleans_up(pytester, monkeypatch):
    monkeypatch.delenv("FASTPATH_REQUIRE_ALL", raising=False)
    record = pytester.path / "leaked.json"
    pytester.makepyfile(
        test_leaky=f"""
import json
import os
import subprocess

from pyroute2 import IPRoute, netns

from fastpath.netns import Lab, bundled_topology
from fastpath.netns.pytest_plugin import session_lab_name, session_netns_name, session_token

def test_leaks_things():
    ns = session_netns_name("leak")
    netns.create(ns)                                   # a bare namespace, never removed
    pins = "/sys/fs/bpf/fastpath/" + session_netns_name("pins")
    os.makedirs(pins)                                  # a pin directory, never removed
    lab = Lab.up(bundled_topology("lab1"), name=session_lab_name())  # never taken down
    proc = lab.spawn("client", ["sleep", "300"])
    mnt = os.path.abspath(session_netns_name("mnt"))
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "none", mnt], check=True)  # never unmounted
    veth = "fl" + session_token()
    with IPRoute() as ipr:                             # a root veth as a crashed build leaves
        ipr.link("add", ifname=veth + "a", kind="veth", peer={{"ifname": veth + "b"}})
        ipr.link("set", index=ipr.link_lookup(ifname=veth + "a")[0],
                 ifalias="fastpath-topo:" + session_lab_name())
    with open({str(record)!r}, "w") as f:
        json.dump({{"ns": ns, "pins": pins, "lab": lab.topology.all_netns(),
                   "pid": proc.pid, "mnt": mnt, "veth": veth + "a"}}, f)
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    leaked = json.loads(record.read_text())
    result.stdout.fnmatch_lines(
        [
            "*fastpath leak check*",
            "FAILED: this session (token *) left * thing(s) behind*",
        ]
    )
    out = result.stdout.str()
    assert f"namespace {leaked['ns']}" in out
    assert f"BPF pin directory {leaked['pins']}" in out
    assert f"process {leaked['pid']} (sleep 300)" in out
    assert "statefile" in out
    assert f"mount {leaked['mnt']}" in out
    assert f"root-namespace link {leaked['veth']}" in out
    # And everything was removed afterwards.
    assert not {leaked["ns"], *leaked["lab"]} & set(list_netns())
    assert not os.path.exists(leaked["pins"])
    assert not os.path.exists(f"/proc/{leaked['pid']}")
    with open("/proc/self/mountinfo") as f:
        assert leaked["mnt"] not in f.read()
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=leaked["veth"]) == []


def test_leak_check_ignores_other_sessions(pytester, monkeypatch):
    # A namespace that only looks like a test lab (another session's token) is not ours.
    from pyroute2 import netns

    monkeypatch.delenv("FASTPATH_REQUIRE_ALL", raising=False)
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    from fastpath.netns.pytest_plugin import session_netns_name

    foreign = session_netns_name("foreign")  # our token, so the child's differs
    netns.create(foreign)
    try:
        result = run(pytester)
        assert result.ret == 0
        assert foreign in list_netns()
    finally:
        netns.remove(foreign)


def test_in_process_pytester_session_leaves_the_outer_labs_alone(pytester, make_lab, monkeypatch):
    # An in-process child session shares this session's token; its leak check must not
    # mistake the outer test's live lab for a leak and tear it down.
    from fastpath.netns import bundled_topology

    monkeypatch.delenv("FASTPATH_REQUIRE_ALL", raising=False)
    lab = make_lab(bundled_topology("lab1"))
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "fastpath.netns.pytest_plugin", "-p", "no:cacheprovider")
    assert result.ret == 0
    assert "fastpath leak check" not in result.stdout.str()
    assert lab.netns("client") in list_netns()
    assert lab.run("client", ["ping", "-c", "1", "-W", "2", "10.10.0.2"]).returncode == 0
