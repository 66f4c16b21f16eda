"""The topology file format: what it accepts, and one clear line for everything it refuses."""

from __future__ import annotations

import copy
import ipaddress
import textwrap

import pytest

from fastpath.netns import (
    Iface,
    TopologyBuilder,
    TopologyError,
    bundled_topology,
    load_topology,
    loads_topology,
    parse_topology,
    topology_to_dict,
)
from fastpath.netns.model import Endpoint

ISSUE_EXAMPLE = textwrap.dedent(
    """\
    name: lab1
    nodes:
      client: {}
      server:
        sysctls: {net.ipv4.tcp_syncookies: 0}
    bridges:
      sw0: {}                    # a bridge in the lab's own switch namespace
    links:
      - endpoints: [client:eth0, sw0]
      - endpoints: [server:eth0, sw0]
      - endpoints: [client:eth1, server:eth1]   # direct veth pair
    addresses:
      client:eth0: [10.10.0.1/24, fd00:10::1/64]
      server:eth0: [10.10.0.2/24, fd00:10::2/64]
    routes:
      client: [{dst: default, via: 10.10.0.2}]
    """
)

BASE: dict = {
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
    },
    "routes": {"client": [{"dst": "default", "via": "10.10.0.2"}]},
}


def test_issue_example_parses_to_the_expected_model():
    topo = loads_topology(ISSUE_EXAMPLE)
    assert topo.name == "lab1"
    assert list(topo.nodes) == ["client", "server"]
    assert topo.nodes["server"].sysctls == {"net.ipv4.tcp_syncookies": "0"}
    assert list(topo.bridges) == ["sw0"]
    assert [link.endpoints for link in topo.links] == [
        (Endpoint("client", "eth0"), Endpoint("sw0")),
        (Endpoint("server", "eth0"), Endpoint("sw0")),
        (Endpoint("client", "eth1"), Endpoint("server", "eth1")),
    ]
    assert topo.addresses[Iface("server", "eth0")] == [
        ipaddress.ip_interface("10.10.0.2/24"),
        ipaddress.ip_interface("fd00:10::2/64"),
    ]
    (route,) = topo.routes["client"]
    assert (route.dst, route.via, str(route.network())) == ("default", "10.10.0.2", "0.0.0.0/0")
    assert topo.all_netns() == ["lab1-client", "lab1-server", "lab1-sw"]


def test_python_builder_makes_the_same_topology_as_the_file():
    built = (
        TopologyBuilder("lab1")
        .node("client")
        .node("server", sysctls={"net.ipv4.tcp_syncookies": 0})
        .bridge("sw0")
        .link("client:eth0", "sw0")
        .link("server:eth0", "sw0")
        .link("client:eth1", "server:eth1")
        .address("client:eth0", "10.10.0.1/24", "fd00:10::1/64")
        .address("server:eth0", "10.10.0.2/24", "fd00:10::2/64")
        .route("client", "default", via="10.10.0.2")
        .build()
    )
    assert built == loads_topology(ISSUE_EXAMPLE)


def test_builder_validates_on_build():
    b = TopologyBuilder("lab1").node("a").link("a:eth0", "b:eth0")
    with pytest.raises(TopologyError, match="unknown node 'b'"):
        b.build()


def test_extras_parse_and_round_trip():
    data = copy.deepcopy(BASE)
    data["links"][2].update({"mtu": 9000, "gro": True, "tx_checksum": False})
    data["bridges"]["sw0"] = {"mtu": 1400, "mcast_snooping": True}
    data["macs"] = {"client:eth0": "02:00:0A:0A:00:01"}
    data["neighbors"] = {"client:eth0": [{"dst": "10.10.0.9", "lladdr": "02:00:00:00:00:09"}]}
    data["addresses"]["client:lo"] = ["192.0.2.1/32"]
    data["routes"]["server"] = [{"dst": "192.0.2.0/24", "via": "10.10.0.1", "metric": 10}]
    data["static_neighbors"] = True
    topo = parse_topology(data)
    link = topo.links[2]
    assert (link.mtu, link.offloads) == (9000, {"gro": True, "tx_checksum": False})
    assert topo.bridges["sw0"].mtu == 1400 and topo.bridges["sw0"].mcast_snooping
    assert topo.static_neighbors
    again = parse_topology(topology_to_dict(topo))
    assert again == topo


def test_bundled_lab1_is_valid_and_has_the_issue_shape():
    topo = load_topology(bundled_topology("lab1"))
    assert topo.name == "lab1"
    assert set(topo.nodes) == {"client", "server"}
    assert topo.nodes["server"].sysctls["net.ipv4.tcp_syncookies"] == "0"


def _with(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        data[key] = value
    return data


def _links(*extra):
    return [*BASE["links"], *extra]


BAD = [
    (
        "unknown node in link",
        _with(links=_links({"endpoints": ["clinet:eth2", "sw0"]})),
        "links[3]: unknown node 'clinet' in endpoint 'clinet:eth2' (nodes: client, server)",
    ),
    (
        "duplicate interface",
        _with(links=_links({"endpoints": ["client:eth0", "server:eth2"]})),
        "links[3]: duplicate interface client:eth0 (already used by links[0])",
    ),
    (
        "bad CIDR",
        _with(addresses={"client:eth0": ["10.10.0.300/24"]}),
        "addresses[client:eth0]: '10.10.0.300/24' is not a valid CIDR address",
    ),
    (
        "address without prefix",
        _with(addresses={"client:eth0": ["10.10.0.1"]}),
        "needs a prefix length, e.g. 10.10.0.1/24",
    ),
    (
        "address listed twice",
        _with(addresses={"client:eth0": ["10.10.0.1/24", "10.10.0.1/24"]}),
        "address 10.10.0.1/24 is listed twice",
    ),
    (
        "address on an interface no link makes",
        _with(addresses={"client:eth7": ["10.0.0.1/24"]}),
        "node 'client' has no interface 'eth7' (its interfaces: eth0, eth1",
    ),
    (
        "interface name too long",
        _with(links=_links({"endpoints": ["client:averyveryverylong", "sw0"]})),
        "interface name 'averyveryverylong' is 17 characters; Linux allows at most 15",
    ),
    (
        "interface name with a slash",
        _with(links=_links({"endpoints": ["client:a/b", "sw0"]})),
        "interface name 'a/b' is invalid",
    ),
    (
        "loopback as a link end",
        _with(links=_links({"endpoints": ["client:lo", "sw0"]})),
        "client:lo is the loopback interface",
    ),
    (
        "route gateway outside every subnet",
        _with(routes={"client": [{"dst": "default", "via": "10.99.0.1"}]}),
        "gateway 10.99.0.1 is not in a subnet of client (its subnets: 10.10.0.0/24)",
    ),
    (
        "route gateway is the node itself",
        _with(routes={"client": [{"dst": "default", "via": "10.10.0.1"}]}),
        "gateway 10.10.0.1 is client's own address",
    ),
    (
        "route dst with host bits",
        _with(routes={"client": [{"dst": "10.20.0.1/24", "via": "10.10.0.2"}]}),
        "dst 10.20.0.1/24 has host bits set; did you mean 10.20.0.0/24?",
    ),
    (
        "route dst garbage",
        _with(routes={"client": [{"dst": "anywhere", "via": "10.10.0.2"}]}),
        "dst 'anywhere' must be 'default' or a CIDR network",
    ),
    (
        "route family mismatch",
        _with(routes={"client": [{"dst": "fd00:99::/64", "via": "10.10.0.2"}]}),
        "gateway 10.10.0.2 is IPv4 but dst fd00:99::/64 is IPv6",
    ),
    (
        "route without via or dev",
        _with(routes={"client": [{"dst": "10.20.0.0/24"}]}),
        "a route needs 'via' (a gateway) or 'dev' (an interface)",
    ),
    (
        "route via unknown dev",
        _with(routes={"client": [{"dst": "10.20.0.0/24", "dev": "eth9"}]}),
        "node 'client' has no interface 'eth9'",
    ),
    (
        "route for unknown node",
        _with(routes={"nobody": [{"dst": "default", "via": "10.10.0.2"}]}),
        "routes: unknown node 'nobody'",
    ),
    (
        "route listed twice",
        _with(routes={"client": [{"dst": "default", "via": "10.10.0.2"}] * 2}),
        "a route to default is listed twice",
    ),
    (
        "route gateway unquoted number",
        _with(routes={"client": [{"dst": "default", "via": 10.1}]}),
        "was read as a number; quote it in YAML",
    ),
    (
        "link-local gateway without dev",
        _with(routes={"client": [{"dst": "::/0", "via": "fe80::1"}]}),
        "link-local gateway fe80::1 needs 'dev'",
    ),
    (
        "unknown top-level key",
        _with(nodez={}),
        "unknown key 'nodez' at top level (allowed: name, description, nodes,",
    ),
    (
        "unknown node key",
        _with(nodes={"client": {"image": "alpine"}, "server": {}}),
        "unknown key 'image' at nodes[client] (allowed: sysctls)",
    ),
    (
        "unknown link key",
        _with(links=[{"endpoints": ["client:eth0", "sw0"], "speed": 10}]),
        "unknown key 'speed' at links[0]",
    ),
    (
        "unknown route key",
        _with(routes={"client": [{"dst": "default", "gw": "10.10.0.2"}]}),
        "unknown key 'gw' at routes[client][0]",
    ),
    ("unknown bridge key", _with(bridges={"sw0": {"stp": True}}), "unknown key 'stp' at bridges[sw0]"),
    ("lab name with a dash", _with(name="my-lab"), "lab name 'my-lab' is invalid"),
    ("lab name too long", _with(name="averylonglabname"), "lab name 'averylonglabname' is invalid: use 1-12"),
    ("lab name starting with a digit", _with(name="1lab"), "lab name '1lab' is invalid"),
    ("lab name not a string", _with(name=12), "lab name 12 must be a string"),
    (
        "node named like the switch namespace",
        _with(nodes={"client": {}, "server": {}, "sw": {}}),
        "node name 'sw' is reserved",
    ),
    (
        "node name with a space",
        _with(nodes={"client": {}, "server": {}, "bad node": {}}),
        "node name 'bad node' is invalid",
    ),
    (
        "global sysctl on a node",
        _with(nodes={"client": {"sysctls": {"kernel.pid_max": 4096}}, "server": {}}),
        "sysctl 'kernel.pid_max' is not per-namespace; only net.* sysctls",
    ),
    (
        "sysctl path escape",
        _with(nodes={"client": {"sysctls": {"net/../kernel/pid_max": 1}}, "server": {}}),
        "is not per-namespace",
    ),
    (
        "bridge endpoint written with an interface",
        _with(links=_links({"endpoints": ["client:eth2", "sw0:p1"]})),
        "sw0:p1 names a bridge; bridge endpoints are written without ':IFNAME'",
    ),
    (
        "unknown bridge",
        _with(links=_links({"endpoints": ["client:eth2", "sw9"]})),
        "unknown bridge 'sw9' (bridges: sw0)",
    ),
    (
        "node written as a bridge",
        _with(links=_links({"endpoints": ["client:eth2", "server"]})),
        "unknown bridge 'server'; node endpoints are written server:IFNAME",
    ),
    (
        "bridge to bridge",
        _with(bridges={"sw0": {}, "sw1": {}}, links=_links({"endpoints": ["sw0", "sw1"]})),
        "links a bridge to a bridge",
    ),
    (
        "three endpoints",
        _with(links=_links({"endpoints": ["client:eth2", "server:eth2", "sw0"]})),
        "endpoints must list exactly 2 ends, got 3",
    ),
    ("link without endpoints", _with(links=[{"mtu": 1500}]), "links[0]: missing 'endpoints'"),
    (
        "mtu out of range",
        _with(links=[{"endpoints": ["client:eth0", "sw0"], "mtu": 70000}]),
        "mtu 70000 must be an integer from 68 to 65535",
    ),
    (
        "offload not a boolean",
        _with(links=[{"endpoints": ["client:eth0", "sw0"], "gro": 1}]),
        "links[0].gro must be true or false, not 1",
    ),
    (
        "multicast MAC",
        _with(macs={"client:eth0": "01:00:5e:00:00:01"}),
        "01:00:5e:00:00:01 is a multicast MAC",
    ),
    (
        "malformed MAC",
        _with(macs={"client:eth0": "02:00:00:00:00"}),
        "is not a MAC address like 02:00:00:00:00:01",
    ),
    (
        "duplicate MAC",
        _with(macs={"client:eth0": "02:00:00:00:00:01", "server:eth0": "02:00:00:00:00:01"}),
        "MAC 02:00:00:00:00:01 is already used by client:eth0",
    ),
    (
        "neighbour with a bad lladdr",
        _with(neighbors={"client:eth0": [{"dst": "10.10.0.9", "lladdr": "zz"}]}),
        "neighbors[client:eth0][0].lladdr: 'zz' is not a MAC address",
    ),
    (
        "neighbour with a bad dst",
        _with(neighbors={"client:eth0": [{"dst": "10.10.0.999", "lladdr": "02:00:00:00:00:09"}]}),
        "'10.10.0.999' is not a valid IP address",
    ),
    (
        "address key without interface",
        _with(addresses={"client": ["10.10.0.1/24"]}),
        "'client' is not an interface; write it as NODE:IFNAME",
    ),
    ("no nodes", {"name": "lab1", "nodes": {}}, "the topology has no nodes"),
    ("no name", {"nodes": {"a": {}}}, "missing 'name'"),
    ("nodes not a mapping", {"name": "lab1", "nodes": ["a", "b"]}, "nodes must be a mapping, not list"),
    ("topology not a mapping", ["a"], "the topology must be a mapping, not list"),
]


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_topology_is_one_clear_line(data, message):
    with pytest.raises(TopologyError) as info:
        parse_topology(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


YAML_BAD = [
    (
        "unquoted MAC read as a number",
        "macs:\n  client:eth0: 12:34:56:00:00:01\n",
        "macs[client:eth0]: 9783936001 is not a string; quote MAC addresses in YAML",
    ),
    ("duplicate key", "nodes:\n  client: {}\n  client: {}\n", "line 4: key 'client' appears twice"),
]


@pytest.mark.parametrize(("tail", "message"), [b[1:] for b in YAML_BAD], ids=[b[0] for b in YAML_BAD])
def test_yaml_pitfalls_are_caught(tail, message):
    text = "name: lab1\nnodes:\n  client: {}\nlinks:\n  - endpoints: [client:eth0, client:eth1]\n"
    if tail.startswith("nodes:"):
        text = "name: lab1\n" + tail
    else:
        text += tail
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        loads_topology(text, source="t.yaml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: lab1\nnodes: {client: {}\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert str(info.value).startswith(f"{path}: not valid YAML at line")
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(ISSUE_EXAMPLE.replace("client:eth1, server:eth1", "client:eth1, srv:eth1"))
    with pytest.raises(TopologyError, match=rf"^{path}: links\[2\]: unknown node 'srv'"):
        load_topology(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TopologyError, match="does not exist"):
        load_topology(tmp_path / "nope.yaml")


def test_default_route_takes_family_from_gateway():
    data = _with(routes={"client": [{"dst": "default", "via": "fd00:10::2"}]})
    (route,) = parse_topology(data).routes["client"]
    assert str(route.network()) == "::/0"
