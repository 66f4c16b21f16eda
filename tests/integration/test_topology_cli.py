"""`fastpath topo` as a user runs it: a separate process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fastpath.core.namespaces import list_netns
from fastpath.netns import builder as builder_mod
from fastpath.netns import bundled_topology, state
from fastpath.netns.pytest_plugin import require_netns, session_lab_name

pytestmark = pytest.mark.integration

TOPO = yaml.safe_load(bundled_topology("lab1").read_text())


def fastpath(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastpath.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leftovers(name: str) -> list[str]:
    found = [n for n in list_netns() if n.startswith(f"{name}-")]
    found += [ifname for _, ifname, _ in builder_mod.root_links_of(name)]
    if state.state_path(name).exists():
        found.append(str(state.state_path(name)))
    return found


@pytest.fixture
def name() -> Iterator[str]:
    """A session-owned lab name, removed at the end whatever the CLI left."""
    require_netns()
    lab = session_lab_name()
    yield lab
    if leftovers(lab):
        builder_mod.destroy(lab)


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_up_ls_show_exec_down(tmp_path, name):
    up = fastpath("topo", "up", write(tmp_path, TOPO), "--name", name, "--json")
    assert up.returncode == 0, up.stderr
    facts = json.loads(up.stdout)
    assert facts["name"] == name and facts["status"] == "up"
    assert facts["namespaces"] == {"client": f"{name}-client", "server": f"{name}-server", "sw": f"{name}-sw"}

    ls = fastpath("topo", "ls", "--json")
    assert ls.returncode == 0, ls.stderr
    (mine,) = [lab for lab in json.loads(ls.stdout) if lab["name"] == name]
    assert mine["status"] == "up" and mine["missing"] == []
    assert mine["namespaces"] == [f"{name}-client", f"{name}-server", f"{name}-sw"]

    show = fastpath("topo", "show", name, "--json")
    assert show.returncode == 0, show.stderr
    ifaces = {(i["node"], i["ifname"]): i for i in json.loads(show.stdout)["interfaces"]}
    assert ifaces[("server", "eth0")]["addresses"] == ["10.10.0.2/24", "fd00:10::2/64"]
    assert ifaces[("client", "eth0")]["bridge_port"] == "client-eth0"

    human = fastpath("topo", "show", name)
    assert human.returncode == 0 and "10.10.0.2/24" in human.stdout

    ping = fastpath("topo", "exec", name, "client", "--", "ping", "-c", "1", "-W", "2", "10.10.0.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "1 received" in ping.stdout
    code = fastpath("topo", "exec", name, "server", "--", "sh", "-c", "exit 7")
    assert code.returncode == 7

    down = fastpath("topo", "down", name)
    assert down.returncode == 0, down.stderr
    assert leftovers(name) == []

    again = fastpath("topo", "down", name)
    assert again.returncode != 0
    assert again.stderr == f"fastpath: error: no lab named '{name}' is up; see `fastpath topo ls`\n"


def test_up_of_a_lab_that_is_already_up_is_one_line(tmp_path, name):
    path = write(tmp_path, TOPO)
    assert fastpath("topo", "up", path, "--name", name).returncode == 0
    second = fastpath("topo", "up", path, "--name", name)
    assert second.returncode != 0
    assert second.stderr.count("\n") == 1
    assert f"lab '{name}' is already up" in second.stderr
    assert f"fastpath topo down {name}" in second.stderr
    # The first lab is untouched.
    ping = fastpath("topo", "exec", name, "client", "--", "ping", "-c", "1", "-W", "2", "10.10.0.2")
    assert ping.returncode == 0


def _bad(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(TOPO))
    data.update(changes)
    return data


BAD = [
    ("unknown node", _bad(links=[{"endpoints": ["nobody:eth0", "sw0"]}]), "unknown node 'nobody'"),
    ("bad CIDR", _bad(addresses={"client:eth0": ["10.10.0.1/33"]}), "not a valid CIDR"),
    (
        "long ifname",
        _bad(links=[{"endpoints": ["client:eth0123456789abc", "sw0"]}]),
        "Linux allows at most 15",
    ),
    ("unknown key", _bad(nodez={}), "unknown key 'nodez'"),
    (
        "bad route",
        _bad(routes={"client": [{"dst": "default", "via": "192.0.2.1"}]}),
        "gateway 192.0.2.1 is not in a subnet of client",
    ),
    # Valid on paper, refused by the kernel half-way through the build.
    (
        "kernel refuses sysctl",
        _bad(nodes={"client": {}, "server": {"sysctls": {"net.ipv4.no_such_knob": 1}}}),
        "sysctl net.ipv4.no_such_knob does not exist in this kernel",
    ),
]


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(tmp_path, name, data, message):
    result = fastpath("topo", "up", write(tmp_path, data), "--name", name)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastpath: error: ")
    assert message in lines[0]
    assert leftovers(name) == []


def test_bad_lab_name_on_the_command_line(tmp_path, name):
    result = fastpath("topo", "up", write(tmp_path, TOPO), "--name", "bad-name")
    assert result.returncode != 0
    assert result.stderr.startswith("fastpath: error: lab name 'bad-name' is invalid")
    assert result.stderr.count("\n") == 1
    assert [n for n in list_netns() if n.startswith("bad-name")] == []


def test_missing_file_and_exec_without_command(tmp_path, name):
    missing = fastpath("topo", "up", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0
    assert missing.stderr == f"fastpath: error: topology file {tmp_path / 'nope.yaml'} does not exist\n"
    noexec = fastpath("topo", "exec", name, "client", "--")
    assert noexec.returncode != 0 and noexec.stderr.count("\n") == 1


def test_validate_needs_no_lab(tmp_path):
    result = fastpath("topo", "validate", write(tmp_path, TOPO), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "lab1"
