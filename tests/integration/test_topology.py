"""Labs for real: namespaces, veths, a bridge, traffic, teardown and transactional failure."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from fastpath.core.namespaces import create_netns, list_netns, netns_context, netns_inode
from fastpath.errors import FastpathError
from fastpath.netns import (
    CommandFailed,
    CommandTimeout,
    Lab,
    TopologyBuilder,
    down,
    list_labs,
    pids_in_netns,
    state,
)
from fastpath.netns import builder as builder_mod
from fastpath.netns.pytest_plugin import require_netns, session_lab_name, session_netns_name

pytestmark = pytest.mark.integration

# The issue's topology, with addresses on the direct pair so it can carry traffic too.
ISSUE = {
    "name": "lab1",
    "nodes": {"client": {}, "server": {"sysctls": {"net.ipv4.tcp_syncookies": 0}}},
    "bridges": {"sw0": {}},
    "links": [
        {"endpoints": ["client:eth0", "sw0"]},
        {"endpoints": ["server:eth0", "sw0"]},
        {"endpoints": ["client:eth1", "server:eth1"]},
    ],
    "addresses": {
        "client:eth0": ["10.10.0.1/24", "fd00:10::1/64"],
        "server:eth0": ["10.10.0.2/24", "fd00:10::2/64"],
        "client:eth1": ["10.10.1.1/24", "fd00:11::1/64"],
        "server:eth1": ["10.10.1.2/24", "fd00:11::2/64"],
    },
    "routes": {"client": [{"dst": "default", "via": "10.10.0.2"}]},
}


def ping(lab: Lab, node: str, dst: str) -> subprocess.CompletedProcess[str]:
    return lab.run(node, ["ping", "-c", "1", "-W", "2", dst], timeout=10, check=False)


def assert_nothing_left(name: str) -> None:
    assert [n for n in list_netns() if n.startswith(f"{name}-")] == []
    assert builder_mod.root_links_of(name) == []
    assert not state.state_path(name).exists()
    with open("/proc/self/mountinfo") as f:
        assert f"/{name}-" not in f.read()


@pytest.fixture(autouse=True)
def _needs_netns():
    require_netns()


@pytest.fixture
def issue_lab(make_lab):
    return make_lab(ISSUE)


@pytest.mark.parametrize("dst", ["10.10.0.2", "fd00:10::2", "10.10.1.2", "fd00:11::2"])
def test_client_pings_server_across_bridge_and_direct_pair(issue_lab, dst):
    result = ping(issue_lab, "client", dst)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 received" in result.stdout


def test_namespaces_are_visible_to_ip_netns_and_ports_are_on_the_bridge(issue_lab):
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    for ns in ("client", "server", "sw"):
        assert f"{issue_lab.name}-{ns}" in listed.stdout
    links = issue_lab.run("sw", ["ip", "-o", "link", "show", "master", "sw0"]).stdout
    assert "client-eth0@" in links and "server-eth0@" in links
    client = issue_lab.run("client", ["ip", "-o", "link"]).stdout
    assert "lo:" in client and "eth0@" in client and "eth1@" in client
    assert "UP" in issue_lab.run("client", ["ip", "-o", "link", "show", "lo"]).stdout


def test_sysctl_applied_in_server_only(issue_lab):
    read = ["cat", "/proc/sys/net/ipv4/tcp_syncookies"]
    assert issue_lab.run("server", read).stdout.strip() == "0"
    assert issue_lab.run("client", read).stdout.strip() == "1"


def test_ipv6_addresses_are_usable_at_once(issue_lab):
    # DAD off before the interfaces arrive: no address may sit "tentative".
    out = issue_lab.run("client", ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
    assert "fd00:10::1/64" in out
    assert "tentative" not in out
    dad = issue_lab.run("client", ["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]).stdout
    assert dad.strip() == "0"


def test_route_installed(issue_lab):
    out = issue_lab.run("client", ["ip", "route", "show", "default"]).stdout
    assert "via 10.10.0.2 dev eth0" in out


def test_lab_is_listed_and_loadable(issue_lab):
    summary = {s.name: s for s in list_labs()}[issue_lab.name]
    assert summary.status == "up"
    assert summary.namespaces == [f"{issue_lab.name}-{n}" for n in ("client", "server", "sw")]
    again = Lab.load(issue_lab.name)
    assert again.topology == issue_lab.topology
    assert again.mac("server", "eth0") == issue_lab.mac("server", "eth0")


def test_bundled_lab_offloads_and_static_neighbours(lab1):
    feats = lab1.run("client", ["ethtool", "-k", "eth1"]).stdout
    assert "generic-receive-offload: on" in feats
    assert "tx-checksumming: off" in feats
    neigh = lab1.run("client", ["ip", "neigh", "show", "10.10.0.2", "dev", "eth0"]).stdout
    assert "PERMANENT" in neigh
    assert lab1.mac("server", "eth0") in neigh


def test_mtu_mac_and_explicit_neighbour(make_lab):
    topo = (
        TopologyBuilder("x")
        .node("a")
        .node("b")
        .link("a:big", "b:big", mtu=9000)
        .mac("a:big", "02:00:00:00:0a:01")
        .address("a:big", "192.168.77.1/24")
        .address("b:big", "192.168.77.2/24")
        .neighbor("a:big", "192.168.77.9", "02:00:00:00:0a:09")
        .build()
    )
    lab = make_lab(topo)
    link = lab.run("a", ["ip", "-o", "link", "show", "big"]).stdout
    assert "mtu 9000" in link and "02:00:00:00:0a:01" in link
    assert lab.interface("b", "big")["mtu"] == 9000
    neigh = lab.run("a", ["ip", "neigh", "show", "192.168.77.9"]).stdout
    assert "02:00:00:00:0a:09" in neigh and "PERMANENT" in neigh
    assert ping(lab, "a", "192.168.77.2").returncode == 0


def test_two_labs_with_the_same_addresses_coexist(make_lab):
    first, second = make_lab(ISSUE), make_lab(ISSUE)
    assert first.name != second.name
    assert not set(first.topology.all_netns()) & set(second.topology.all_netns())
    for lab in (first, second):
        assert ping(lab, "client", "10.10.0.2").returncode == 0
    # Traffic stays inside each lab: a server process in the first is not reachable by the
    # same address from the second.
    with first.spawn("server", ["python3", "-m", "http.server", "-b", "10.10.0.2", "8080"]):
        probe = ["python3", "-c", "import socket;socket.create_connection(('10.10.0.2',8080),2)"]
        deadline = time.monotonic() + 10
        while first.run("client", probe, check=False).returncode != 0:
            assert time.monotonic() < deadline, "http.server never came up"
            time.sleep(0.1)
        assert second.run("client", probe, check=False).returncode != 0


def test_down_leaves_nothing_and_kills_processes():
    lab = Lab.up(ISSUE, name=session_lab_name())
    try:
        spawned = lab.spawn("server", ["sleep", "300"])
        # A process the lab knows nothing about must die too (found by namespace inode).
        stray = subprocess.Popen(["ip", "netns", "exec", lab.netns("client"), "sleep", "300"])
        deadline = time.monotonic() + 5
        while not pids_in_netns(lab.netns("client")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        lab.down()
    assert spawned.returncode is not None and not spawned.running
    assert stray.wait(timeout=5) != 0
    assert_nothing_left(lab.name)
    lab.down()  # idempotent


def test_same_name_twice_is_a_clear_error(issue_lab):
    with pytest.raises(FastpathError, match=f"lab '{issue_lab.name}' is already up"):
        Lab.up(ISSUE, name=issue_lab.name)
    assert ping(issue_lab, "client", "10.10.0.2").returncode == 0


def test_leftover_namespace_blocks_up_and_down_removes_it():
    name = session_lab_name()
    pr_netns.create(f"{name}-client")
    try:
        with pytest.raises(FastpathError, match=rf"namespaces of an earlier lab .*{name}-client"):
            Lab.up(ISSUE, name=name)
        assert not state.state_path(name).exists()
        assert down(name) == [f"{name}-client"]
    finally:
        if f"{name}-client" in list_netns():
            pr_netns.remove(f"{name}-client")
    assert_nothing_left(name)


def test_kernel_rejected_address_rolls_everything_back():
    data = copy.deepcopy(ISSUE)
    data["addresses"]["server:eth1"].append("ff02::5/64")  # multicast: the kernel says no
    name = session_lab_name()
    with pytest.raises(FastpathError) as info:
        Lab.up(data, name=name)
    msg = str(info.value)
    assert "add address ff02::5/64 to server:eth1 failed" in msg
    assert "everything it had made was removed" in msg
    assert "\n" not in msg
    assert_nothing_left(name)


def test_missing_sysctl_rolls_everything_back():
    data = copy.deepcopy(ISSUE)
    data["nodes"]["server"]["sysctls"]["net.ipv4.no_such_knob"] = 1
    name = session_lab_name()
    with pytest.raises(FastpathError, match="sysctl net.ipv4.no_such_knob does not exist"):
        Lab.up(data, name=name)
    assert_nothing_left(name)


@pytest.mark.parametrize("fail_at", ["CreateNetns", "CreateBridge", "CreateVeth", "AddRoute"])
def test_injected_failure_at_any_step_leaves_nothing(monkeypatch, fail_at):
    real = builder_mod._Builder.run_step
    seen = []

    def run_step(self, step):
        seen.append(type(step).__name__)
        # Fail on the second step of the kind when there is one: resources exist by then.
        if type(step).__name__ == fail_at and seen.count(fail_at) == min(
            2, sum(type(s).__name__ == fail_at for s in builder_mod.plan(self.topo))
        ):
            raise OSError(5, "injected failure")
        return real(self, step)

    monkeypatch.setattr(builder_mod._Builder, "run_step", run_step)
    name = session_lab_name()
    with pytest.raises(FastpathError, match="failed: injected failure"):
        Lab.up(ISSUE, name=name)
    assert fail_at in seen
    assert_nothing_left(name)


def test_failure_after_a_veth_pair_exists_removes_it(monkeypatch):
    # Break the step after its pair was made (bringing the ends up): the pair lives in the
    # lab's namespaces from the start, so rollback must leave no trace of it anywhere.
    real_ifindex = builder_mod._Builder.ifindex
    made: list[tuple[str, str]] = []

    def ifindex(self, netns, ifname):
        if ifname.startswith("eth") and not made:
            made.append((netns, ifname))
            assert real_ifindex(self, netns, ifname) > 0  # the end exists, in its namespace
            raise FastpathError("injected: cannot bring the end up")
        return real_ifindex(self, netns, ifname)

    monkeypatch.setattr(builder_mod._Builder, "ifindex", ifindex)
    name = session_lab_name()
    with pytest.raises(FastpathError, match="create link .* failed: injected: cannot bring the end up"):
        Lab.up(ISSUE, name=name)
    assert made and made[0][0].startswith(f"{name}-")
    assert_nothing_left(name)


def test_run_timeout_kills_the_whole_group(issue_lab):
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 0.5s"):
        issue_lab.run("client", ["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while pids_in_netns(issue_lab.netns("client")):
        assert time.monotonic() < deadline, "children of a timed-out command survived"
        time.sleep(0.02)


def test_run_check_raises_with_the_result(issue_lab):
    with pytest.raises(CommandFailed) as info:
        issue_lab.run("client", ["sh", "-c", "echo oops >&2; exit 3"])
    assert info.value.result.returncode == 3
    assert "oops" in str(info.value)
    assert issue_lab.run("client", ["sh", "-c", "exit 3"], check=False).returncode == 3


def test_spawned_output_and_stop(issue_lab):
    proc = issue_lab.spawn("server", ["sh", "-c", "echo ready; exec sleep 300"])
    deadline = time.monotonic() + 5
    while "ready" not in proc.output():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.running
    assert proc.stop() == -15
    assert not proc.running and "ready" in proc.output()


def test_netns_context_binds_sockets_to_the_node(issue_lab):
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with issue_lab.enter("server"):
        listener = socket.create_server(("10.10.0.2", 0))
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with listener:
        port = listener.getsockname()[1]
        listener.settimeout(5)
        proc = issue_lab.spawn(
            "client",
            [
                "python3",
                "-c",
                f"import socket;socket.create_connection(('10.10.0.2',{port}),2).sendall(b'hi')",
            ],
        )
        conn, peer = listener.accept()
        with conn:
            assert conn.recv(2) == b"hi"
        assert peer[0] == "10.10.0.1"
        proc.wait(5)


def test_netns_context_for_unknown_namespace_is_a_clear_error():
    with pytest.raises(FastpathError, match="network namespace 'nope-nope' does not exist"):
        with netns_context("nope-nope"):
            pass


def test_iproute_inside_a_node(issue_lab):
    with issue_lab.iproute("server") as ipr:
        names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    assert names == {"lo", "eth0", "eth1"}


def test_create_netns_makes_a_fresh_namespace_and_refuses_a_taken_name():
    require_netns()
    name = session_netns_name("mk")
    here = os.stat("/proc/thread-self/ns/net")
    create_netns(name)
    try:
        assert name in list_netns()
        assert netns_inode(name) != (here.st_dev, here.st_ino)
        with netns_context(name), IPRoute() as ipr:
            assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
        with pytest.raises(FileExistsError):
            create_netns(name)
        assert name in list_netns()  # the failed second create left the first alone
        now = os.stat("/proc/thread-self/ns/net")
        assert (now.st_dev, now.st_ino) == (here.st_dev, here.st_ino), "the caller moved"
    finally:
        pr_netns.remove(name)
    assert name not in list_netns()
