"""Names and build order: pure functions of the topology, checked without privileges."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.netns import Iface, TopologyBuilder, bundled_topology, load_topology
from fastpath.netns.builder import (
    AddAddress,
    AddNeighbor,
    AddRoute,
    CreateBridge,
    CreateNetns,
    CreateVeth,
    PrepareNetns,
    SetOffloads,
    SetSysctls,
    plan,
)
from fastpath.netns.model import IFNAMSIZ, lab_of_netns
from fastpath.netns.pytest_plugin import is_session_name, session_lab_name, session_token


def lab1():
    return load_topology(bundled_topology("lab1"))


def test_namespaces_are_prefixed_by_lab_name():
    topo = lab1().renamed("abc")
    assert topo.all_netns() == ["abc-client", "abc-server", "abc-sw"]
    assert {lab_of_netns(n) for n in topo.all_netns()} == {"abc"}


def test_no_switch_namespace_without_bridges():
    topo = TopologyBuilder("p2p").node("a").node("b").link("a:e0", "b:e0").build()
    assert topo.switch_netns is None
    assert topo.all_netns() == ["p2p-a", "p2p-b"]
    assert not any(isinstance(s, CreateBridge) for s in plan(topo))


def test_bridge_ports_prefer_node_and_interface():
    assert lab1().bridge_ports() == {0: "client-eth0", 1: "server-eth0"}


def test_bridge_ports_fall_back_when_too_long_or_taken():
    topo = (
        TopologyBuilder("lab")
        .node("averylongnode1")
        .node("a")
        .bridge("a-e0")  # the bridge takes the name the second port would want
        .bridge("sw1")
        .link("averylongnode1:eth0", "sw1")  # 19 characters: too long
        .link("a:e0", "sw1")
        .link("a:e1", "a-e0")
        .build()
    )
    assert topo.bridge_ports() == {0: "p0", 1: "p1", 2: "a-e1"}


identifier = st.text(string.ascii_lowercase + string.digits + "_-", min_size=0, max_size=14)


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(
        st.text(string.ascii_lowercase, min_size=1, max_size=1).flatmap(
            lambda first: identifier.map(lambda rest: first + rest)
        ),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    ifnames=st.lists(
        st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=15),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    bridges=st.lists(
        st.text(string.ascii_lowercase, min_size=1, max_size=1).flatmap(
            lambda first: identifier.map(lambda rest: first + rest)
        ),
        min_size=1,
        max_size=3,
        unique=True,
    ),
)
def test_generated_port_names_are_short_unique_and_distinct_from_bridges(nodes, ifnames, bridges):
    nodes = [n for n in nodes if n != "sw"] or ["n"]
    ifnames = [i for i in ifnames if i != "lo"] or ["e0"]
    bridges = [b for b in bridges if b not in nodes and b != "lo"] or [
        next(f"br{i}" for i in range(len(nodes) + 1) if f"br{i}" not in nodes)]
    b = TopologyBuilder("lab")
    for n in nodes:
        b.node(n)
    for br in bridges:
        b.bridge(br)
    k = 0
    for n in nodes:
        for ifname in ifnames:
            b.link(f"{n}:{ifname}", bridges[k % len(bridges)])
            k += 1
    topo = b.build()
    ports = topo.bridge_ports()
    names = list(ports.values())
    assert len(names) == k
    assert all(1 <= len(p) <= IFNAMSIZ for p in names)
    assert len(set(names)) == len(names)
    assert not set(names) & set(bridges)


def _index(steps, kind, **match):
    for i, s in enumerate(steps):
        if isinstance(s, kind) and all(getattr(s, k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {kind.__name__} {match}")


def _indices(steps, kind):
    return [i for i, s in enumerate(steps) if isinstance(s, kind)]


def test_plan_order_makes_the_lab_usable_on_return():
    topo = lab1()
    steps = plan(topo)
    creates = _indices(steps, CreateNetns)
    assert [steps[i].netns for i in creates] == topo.all_netns()
    # Namespaces first; DAD off in a namespace before any interface moves in.
    assert max(creates) < min(_indices(steps, PrepareNetns))
    assert max(_indices(steps, PrepareNetns)) < min(_indices(steps, CreateVeth))
    assert _index(steps, CreateBridge) < min(_indices(steps, CreateVeth))
    # Interfaces exist before offloads, sysctls and addresses; gateways before routes;
    # neighbours last (their MACs come from interfaces that must exist).
    veths = _indices(steps, CreateVeth)
    for later in (SetOffloads, SetSysctls, AddAddress):
        assert max(veths) < min(_indices(steps, later))
    assert max(_indices(steps, AddAddress)) < min(_indices(steps, AddRoute))
    assert max(_indices(steps, AddRoute)) < min(_indices(steps, AddNeighbor))
    assert steps[_index(steps, PrepareNetns, netns="lab1-sw")].switch
    assert not steps[_index(steps, PrepareNetns, netns="lab1-client")].switch


def test_plan_veth_ends_and_offloads():
    steps = plan(lab1())
    veths = [steps[i] for i in _indices(steps, CreateVeth)]
    a, b = veths[0].ends
    assert (a.netns, a.ifname, a.master) == ("lab1-client", "eth0", None)
    assert (b.netns, b.ifname, b.master) == ("lab1-sw", "client-eth0", "sw0")
    offloads = [steps[i] for i in _indices(steps, SetOffloads)]
    assert [(o.netns, o.ifname) for o in offloads] == [
        ("lab1-client", "eth1"),
        ("lab1-server", "eth1"),
    ]
    assert offloads[0].features == (("gro", True), ("tx_checksum", False))


def test_static_neighbours_cover_each_segment_peer_in_a_shared_subnet():
    steps = plan(lab1())
    neighs = {(s.iface, s.dst, s.peer) for i in _indices(steps, AddNeighbor) if (s := steps[i])}
    c0, s0, c1, s1 = (
        Iface("client", "eth0"),
        Iface("server", "eth0"),
        Iface("client", "eth1"),
        Iface("server", "eth1"),
    )
    assert neighs == {
        (c0, "10.10.0.2", s0),
        (c0, "fd00:10::2", s0),
        (s0, "10.10.0.1", c0),
        (s0, "fd00:10::1", c0),
        (c1, "10.10.1.2", s1),
        (c1, "fd00:11::2", s1),
        (s1, "10.10.1.1", c1),
        (s1, "fd00:11::1", c1),
    }


def test_explicit_neighbours_and_macs_are_planned():
    topo = (
        TopologyBuilder("lab")
        .node("a")
        .node("b")
        .link("a:e0", "b:e0")
        .mac("a:e0", "02:00:00:00:00:0A")
        .address("a:e0", "10.0.0.1/24")
        .neighbor("a:e0", "10.0.0.9", "02:00:00:00:00:09")
        .build()
    )
    steps = plan(topo)
    veth = steps[_index(steps, CreateVeth)]
    assert veth.ends[0].mac == "02:00:00:00:00:0A"
    n = steps[_index(steps, AddNeighbor)]
    assert (n.iface, n.dst, n.lladdr, n.peer) == (
        Iface("a", "e0"),
        "10.0.0.9",
        "02:00:00:00:00:09".lower(),
        None,
    )


def test_session_names_carry_the_token_and_stay_short():
    name = session_lab_name()
    assert len(name) <= 12
    assert is_session_name(name) and is_session_name(f"{name}-client")
    assert session_token() in name
    assert not is_session_name("lab1-client")
    assert not is_session_name(f"x{name}")
    other = "000000" if session_token() != "000000" else "111111"
    assert not is_session_name(f"t{other}1-client")
    # Token followed by digits only: another token that merely starts like ours is not ours.
    assert not is_session_name(f"t{session_token()}a1-client")
    TopologyBuilder(name).node("client").build()  # accepted as a lab name
