"""The topology model: nodes, bridges, links, addresses, routes and neighbours, and the rules
that make a topology buildable.

A `Topology` is plain data. It comes from a YAML file (`fileformat.py`) or from Python
through `TopologyBuilder`; either way `validate()` runs before anything touches the kernel,
so a bad topology fails with one line and leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from fastpath.errors import FastpathError

IFNAMSIZ = 15  # the kernel's IFNAMSIZ (16) minus the terminating NUL
LAB_NAME_MAX = 12
SWITCH_NODE = "sw"  # `<lab>-sw` is the namespace that holds the lab's bridges

# No '-' in lab names: `<lab>-` is then an unambiguous prefix of a lab's namespaces, so a lab
# named "lab1" can never own (or tear down) a namespace of a lab named "lab1-x".
LAB_NAME_RE = re.compile(rf"^[A-Za-z][A-Za-z0-9_]{{0,{LAB_NAME_MAX - 1}}}$")
NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
SYSCTL_RE = re.compile(r"^net[./][A-Za-z0-9_./-]+$")

# Link options that ethtool sets (pyroute2 has no offload API); user name -> `ethtool -K` name.
OFFLOAD_FEATURES: dict[str, str] = {
    "gro": "gro",
    "gso": "gso",
    "tso": "tso",
    "tx_checksum": "tx",
    "rx_checksum": "rx",
}

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


class TopologyError(FastpathError):
    """A topology that cannot be built as written; the message names the offending part."""


class Iface(NamedTuple):
    """One interface of one node, written `node:ifname` in files and messages."""

    node: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.node}:{self.ifname}"

    @classmethod
    def parse(cls, text: str, where: str = "") -> Iface:
        node, sep, ifname = text.partition(":")
        if not sep or not node or not ifname:
            raise TopologyError(f"{where}{text!r} is not an interface; write it as NODE:IFNAME")
        return cls(node, ifname)


@dataclass(frozen=True)
class Endpoint:
    """One end of a link: a node's interface, or a bridge (whose port name is generated)."""

    node: str
    ifname: str | None = None  # None: `node` names a bridge

    @property
    def is_bridge(self) -> bool:
        return self.ifname is None

    @property
    def iface(self) -> Iface:
        if self.ifname is None:
            raise ValueError(f"{self.node} is a bridge endpoint")
        return Iface(self.node, self.ifname)

    def __str__(self) -> str:
        return self.node if self.ifname is None else f"{self.node}:{self.ifname}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        node, sep, ifname = text.partition(":")
        return cls(node, ifname if sep else None)


@dataclass
class Node:
    name: str
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class Bridge:
    name: str
    mtu: int | None = None
    # Off by default: without a querier in the lab, snooping can stop IPv6 neighbour
    # discovery multicast from reaching ports, which makes pings flaky.
    mcast_snooping: bool = False


@dataclass
class Link:
    endpoints: tuple[Endpoint, Endpoint]
    mtu: int | None = None
    # Feature name (OFFLOAD_FEATURES key) -> on/off, applied to both ends with ethtool.
    offloads: dict[str, bool] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.endpoints[0]} <-> {self.endpoints[1]}"


@dataclass
class Route:
    dst: str  # "default" or a network in CIDR form
    via: str | None = None
    dev: str | None = None
    metric: int | None = None

    def network(self) -> IPNetwork:
        """The destination as a network; `default` takes its family from the gateway."""
        if self.dst == "default":
            if self.via is not None and ipaddress.ip_address(self.via).version == 6:
                return ipaddress.IPv6Network("::/0")
            return ipaddress.IPv4Network("0.0.0.0/0")
        return ipaddress.ip_network(self.dst, strict=True)


@dataclass
class Neighbor:
    dst: str
    lladdr: str


@dataclass
class Topology:
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    bridges: dict[str, Bridge] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    addresses: dict[Iface, list[IPInterface]] = field(default_factory=dict)
    macs: dict[Iface, str] = field(default_factory=dict)
    routes: dict[str, list[Route]] = field(default_factory=dict)
    neighbors: dict[Iface, list[Neighbor]] = field(default_factory=dict)
    # Add a permanent neighbour entry for every address on the same L2 segment, so traffic
    # tests never wait on (or race with) ARP and neighbour discovery.
    static_neighbors: bool = False

    def renamed(self, name: str) -> Topology:
        """A deep copy under another lab name (tests give each lab a unique name)."""
        clone = copy.deepcopy(self)
        clone.name = name
        return clone

    def validate(self) -> Topology:
        validate(self)
        return self

    # Derived facts the builder and the CLI share.

    def netns(self, node: str) -> str:
        return netns_name(self.name, node)

    @property
    def switch_netns(self) -> str | None:
        return netns_name(self.name, SWITCH_NODE) if self.bridges else None

    def all_netns(self) -> list[str]:
        names = [self.netns(n) for n in self.nodes]
        if self.switch_netns:
            names.append(self.switch_netns)
        return names

    def interfaces(self) -> list[Iface]:
        """Every node interface a link creates, in link order."""
        return [ep.iface for link in self.links for ep in link.endpoints if not ep.is_bridge]

    def node_interfaces(self, node: str) -> list[str]:
        return [i.ifname for i in self.interfaces() if i.node == node]

    def segments(self) -> list[list[Iface]]:
        """L2 segments: the node interfaces on each bridge, then each direct veth pair."""
        by_bridge: dict[str, list[Iface]] = {b: [] for b in self.bridges}
        pairs: list[list[Iface]] = []
        for link in self.links:
            a, b = link.endpoints
            if a.is_bridge:
                by_bridge[a.node].append(b.iface)
            elif b.is_bridge:
                by_bridge[b.node].append(a.iface)
            else:
                pairs.append([a.iface, b.iface])
        return [m for m in by_bridge.values() if m] + pairs

    def bridge_ports(self) -> dict[int, str]:
        """Link index -> name of the port its veth gets on the bridge (in the switch netns).

        The preferred name `node-ifname` says in `ip link` which node a port leads to. Ports
        live only in the switch namespace, so it need only be unique there: when it is too
        long or clashes with a bridge or an earlier port, fall back to `pN`.
        """
        taken = set(self.bridges)
        ports: dict[int, str] = {}
        fallback: list[int] = []
        for idx, link in enumerate(self.links):
            a, b = link.endpoints
            if not (a.is_bridge or b.is_bridge):
                continue
            node_end = b if a.is_bridge else a
            want = f"{node_end.node}-{node_end.ifname}"
            if len(want) <= IFNAMSIZ and want not in taken:
                ports[idx] = want
                taken.add(want)
            else:
                fallback.append(idx)
        n = 0
        for idx in fallback:
            while f"p{n}" in taken:
                n += 1
            ports[idx] = f"p{n}"
            taken.add(f"p{n}")
        return ports


def netns_name(lab: str, node: str) -> str:
    """The namespace a node lives in: `ip netns` shows it as `<lab>-<node>`."""
    return f"{lab}-{node}"


def lab_of_netns(netns: str) -> str:
    """The lab a fastpath namespace belongs to (the part before the first '-')."""
    return netns.partition("-")[0]


# ---------------------------------------------------------------------------------------
# validation


def check_lab_name(name: object) -> str:
    if not isinstance(name, str) or not LAB_NAME_RE.match(name):
        raise TopologyError(
            f"lab name {name!r} is invalid: use 1-{LAB_NAME_MAX} letters, digits or '_', "
            "starting with a letter (no '-': namespaces are named <lab>-<node>)"
        )
    return name


def check_ifname(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{what}: interface name must be a non-empty string")
    if len(name) > IFNAMSIZ:
        raise TopologyError(
            f"{what}: interface name {name!r} is {len(name)} characters; Linux allows at most {IFNAMSIZ}"
        )
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise TopologyError(
            f"{what}: interface name {name!r} is invalid; use letters, digits, '_', '.' "
            "or '-', starting with a letter, digit or '_'"
        )
    return name


def check_mac(value: object, what: str) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise TopologyError(f"{what}: {value!r} is not a MAC address like 02:00:00:00:00:01")
    first = int(value[:2], 16)
    if first & 1:
        raise TopologyError(f"{what}: {value} is a multicast MAC; use a unicast one (e.g. 02:...)")
    if value.replace(":", "") == "000000000000":
        raise TopologyError(f"{what}: the all-zero MAC cannot be assigned to an interface")
    return value.lower()


def _parse_text(value: object, what: str, parse: Callable[[str], _T], not_text: str, invalid: str) -> _T:
    """`parse(value)` for a string `value`; otherwise, or when it fails, a TopologyError
    saying `{what}: {value!r} {not_text}` or `... {invalid}`."""
    if not isinstance(value, str):
        raise TopologyError(f"{what}: {value!r} {not_text}")
    try:
        return parse(value)
    except ValueError:
        raise TopologyError(f"{what}: {value!r} {invalid}") from None


def parse_interface_address(value: object, what: str) -> IPInterface:
    if isinstance(value, str) and "/" not in value:
        raise TopologyError(f"{what}: address {value!r} needs a prefix length, e.g. {value}/24")
    return _parse_text(value, what, ipaddress.ip_interface, "is not an address; write it as 10.0.0.1/24",
                       "is not a valid CIDR address")


def parse_ip(value: object, what: str) -> IPAddress:
    return _parse_text(value, what, ipaddress.ip_address, "is not an IP address (quote it in YAML)",
                       "is not a valid IP address")


def check_mtu(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise TopologyError(f"{what}: mtu {value!r} must be an integer from 68 to 65535")
    return value


def sysctl_path(key: str) -> str:
    """/proc/sys path of a sysctl key; keys may use '/' so interface names can hold dots."""
    rel = key if "/" in key else key.replace(".", "/")
    return "/proc/sys/" + rel


def sysctl_value(value: object, what: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | str) and "\n" not in str(value):
        return str(value)
    raise TopologyError(f"{what}: value {value!r} must be a number, boolean or string")


def validate(topo: Topology) -> None:
    """Raise TopologyError (one line) for the first thing that would stop a build."""
    check_lab_name(topo.name)
    _check_nodes(topo)
    _check_bridges(topo)
    if not topo.nodes:
        raise TopologyError("the topology has no nodes; add at least one under 'nodes'")
    known = _check_links(topo)
    _check_addresses(topo, known)
    _check_macs(topo, known)
    _check_routes(topo, known)
    _check_neighbors(topo, known)


def _check_nodes(topo: Topology) -> None:
    for name, node in topo.nodes.items():
        if name != node.name:
            raise TopologyError(f"node {name!r}: key and name disagree ({node.name!r})")
        if not NODE_NAME_RE.match(name):
            raise TopologyError(
                f"node name {name!r} is invalid: use 1-15 letters, digits, '_' or '-', starting with a letter"
            )
        if name == SWITCH_NODE:
            raise TopologyError(
                f"node name {SWITCH_NODE!r} is reserved for the lab's switch namespace; rename it"
            )
        for key, value in node.sysctls.items():
            if not isinstance(key, str) or not SYSCTL_RE.match(key) or ".." in key:
                raise TopologyError(
                    f"node {name!r}: sysctl {key!r} is not per-namespace; only net.* sysctls "
                    "can be set on a node"
                )
            sysctl_value(value, f"node {name!r}: sysctl {key}")


def _check_bridges(topo: Topology) -> None:
    for name, bridge in topo.bridges.items():
        check_ifname(name, f"bridge {name!r}")
        if name in topo.nodes:
            raise TopologyError(f"bridge {name!r} has the same name as a node; rename one")
        if name == "lo":
            raise TopologyError("bridge name 'lo' is taken by the loopback interface")
        if bridge.mtu is not None:
            check_mtu(bridge.mtu, f"bridge {name!r}")


def _check_links(topo: Topology) -> set[Iface]:
    """Check every link; returns the node interfaces they create."""
    seen: dict[Iface, int] = {}
    for idx, link in enumerate(topo.links):
        where = f"links[{idx}]"
        if len(link.endpoints) != 2:
            raise TopologyError(f"{where}: a link needs exactly 2 endpoints")
        for ep in link.endpoints:
            if _check_endpoint(topo, ep, where):
                if ep.iface in seen:
                    raise TopologyError(
                        f"{where}: duplicate interface {ep} (already used by links[{seen[ep.iface]}])"
                    )
                seen[ep.iface] = idx
        a, b = link.endpoints
        if a.is_bridge and b.is_bridge:
            raise TopologyError(f"{where}: links a bridge to a bridge; one end must be a node")
        _check_link_options(link, where)
    return set(seen)


def _check_endpoint(topo: Topology, ep: Endpoint, where: str) -> bool:
    """Whether `ep` is a node interface (else a bridge), once it is known to be a sound one."""
    if ep.is_bridge:
        if ep.node not in topo.bridges:
            hint = (
                f"; node endpoints are written {ep.node}:IFNAME"
                if ep.node in topo.nodes
                else f" (bridges: {_names(topo.bridges)})"
            )
            raise TopologyError(f"{where}: unknown bridge {ep.node!r}{hint}")
        return False
    if ep.node in topo.bridges:
        raise TopologyError(
            f"{where}: {ep} names a bridge; bridge endpoints are written without "
            f"':IFNAME' (just {ep.node!r})"
        )
    if ep.node not in topo.nodes:
        raise TopologyError(
            f"{where}: unknown node {ep.node!r} in endpoint '{ep}' (nodes: {_names(topo.nodes)})"
        )
    check_ifname(ep.ifname, f"{where}: endpoint '{ep}'")
    if ep.ifname == "lo":
        raise TopologyError(f"{where}: {ep} is the loopback interface; pick another name")
    return True


def _check_link_options(link: Link, where: str) -> None:
    if link.mtu is not None:
        check_mtu(link.mtu, where)
    for feature, on in link.offloads.items():
        if feature not in OFFLOAD_FEATURES:
            raise TopologyError(
                f"{where}: unknown offload {feature!r} (known: {', '.join(OFFLOAD_FEATURES)})"
            )
        if not isinstance(on, bool):
            raise TopologyError(f"{where}: {feature} must be true or false, not {on!r}")


def _check_iface(topo: Topology, known: set[Iface], iface: Iface, what: str, allow_lo: bool) -> None:
    """`iface` must be one a link creates (or, with `allow_lo`, a node's loopback)."""
    if iface.node not in topo.nodes:
        raise TopologyError(f"{what}: unknown node {iface.node!r} (nodes: {_names(topo.nodes)})")
    if iface.ifname == "lo" and allow_lo:
        return
    if iface not in known:
        have = topo.node_interfaces(iface.node)
        raise TopologyError(
            f"{what}: node {iface.node!r} has no interface {iface.ifname!r} "
            f"(its interfaces: {', '.join(have) or 'none'}; interfaces come from links)"
        )


def _check_addresses(topo: Topology, known: set[Iface]) -> None:
    for iface, addrs in topo.addresses.items():
        what = f"addresses[{iface}]"
        _check_iface(topo, known, iface, what, allow_lo=True)
        uniq: set[IPInterface] = set()
        for addr in addrs:
            if not isinstance(addr, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
                raise TopologyError(f"{what}: {addr!r} is not a CIDR address")
            if addr in uniq:
                raise TopologyError(f"{what}: address {addr} is listed twice")
            uniq.add(addr)


def _check_macs(topo: Topology, known: set[Iface]) -> None:
    macs_seen: dict[str, Iface] = {}
    for iface, mac in topo.macs.items():
        what = f"macs[{iface}]"
        _check_iface(topo, known, iface, what, allow_lo=False)
        mac = check_mac(mac, what)
        if mac in macs_seen:
            raise TopologyError(f"{what}: MAC {mac} is already used by {macs_seen[mac]}")
        macs_seen[mac] = iface


def _check_routes(topo: Topology, known: set[Iface]) -> None:
    for node_name, routes in topo.routes.items():
        if node_name not in topo.nodes:
            raise TopologyError(f"routes: unknown node {node_name!r} (nodes: {_names(topo.nodes)})")
        seen_dst: set[tuple[IPNetwork, int | None]] = set()
        for idx, route in enumerate(routes):
            dst = _check_route(topo, node_name, route, f"routes[{node_name}][{idx}]", known)
            if (dst, route.metric) in seen_dst:
                raise TopologyError(
                    f"routes[{node_name}][{idx}]: a route to {route.dst} is listed twice "
                    "(give them different metrics)"
                )
            seen_dst.add((dst, route.metric))


def _check_neighbors(topo: Topology, known: set[Iface]) -> None:
    for iface, neighs in topo.neighbors.items():
        what = f"neighbors[{iface}]"
        _check_iface(topo, known, iface, what, allow_lo=False)
        for idx, neigh in enumerate(neighs):
            parse_ip(neigh.dst, f"{what}[{idx}].dst")
            check_mac(neigh.lladdr, f"{what}[{idx}].lladdr")


def _check_route(
    topo: Topology,
    node: str,
    route: Route,
    what: str,
    known: set[Iface],
) -> IPNetwork:
    if route.dst != "default":
        if not isinstance(route.dst, str):
            raise TopologyError(f"{what}: dst {route.dst!r} must be 'default' or a CIDR network")
        try:
            ipaddress.ip_network(route.dst, strict=True)
        except ValueError:
            try:
                net = ipaddress.ip_interface(route.dst).network
            except ValueError:
                raise TopologyError(
                    f"{what}: dst {route.dst!r} must be 'default' or a CIDR network"
                ) from None
            raise TopologyError(f"{what}: dst {route.dst} has host bits set; did you mean {net}?") from None
    if route.via is None and route.dev is None:
        raise TopologyError(f"{what}: a route needs 'via' (a gateway) or 'dev' (an interface)")
    if route.dev is not None:
        _check_iface(topo, known, Iface(node, route.dev), what, allow_lo=True)
    if route.metric is not None and (
        isinstance(route.metric, bool) or not isinstance(route.metric, int) or route.metric < 0
    ):
        raise TopologyError(f"{what}: metric {route.metric!r} must be a non-negative integer")
    dst = route.network()
    if route.via is None:
        return dst
    via = parse_ip(route.via, f"{what}.via")
    if via.version != dst.version:
        raise TopologyError(
            f"{what}: gateway {via} is IPv{via.version} but dst {route.dst} is IPv{dst.version}"
        )
    if via.version == 6 and via.is_link_local:
        if route.dev is None:
            raise TopologyError(f"{what}: link-local gateway {via} needs 'dev'")
        return dst
    # The kernel only accepts a gateway it can reach through a connected subnet; checking it
    # here turns the kernel's terse "Nexthop has invalid gateway" into a useful message.
    ifaces = [Iface(node, route.dev)] if route.dev else _node_ifaces(topo, node)
    local = [a for i in ifaces for a in topo.addresses.get(i, []) if a.version == via.version]
    if any(a.ip == via for a in local):
        raise TopologyError(f"{what}: gateway {via} is {node}'s own address")
    if not any(via in a.network for a in local):
        nets = ", ".join(str(a.network) for a in local) or "none"
        on = f" on {route.dev}" if route.dev else ""
        raise TopologyError(f"{what}: gateway {via} is not in a subnet of {node}{on} (its subnets: {nets})")
    return dst


def _node_ifaces(topo: Topology, node: str) -> list[Iface]:
    return [Iface(node, "lo")] + [Iface(node, i) for i in topo.node_interfaces(node)]


def _names(items: Iterable[str]) -> str:
    names = list(items)
    return ", ".join(names) if names else "none"


# ---------------------------------------------------------------------------------------
# the Python builder


class TopologyBuilder:
    """Build a `Topology` in Python; the same model a YAML file produces.

    topo = (TopologyBuilder("lab1")
            .node("client").node("server", sysctls={"net.ipv4.tcp_syncookies": 0})
            .bridge("sw0")
            .link("client:eth0", "sw0").link("server:eth0", "sw0")
            .link("client:eth1", "server:eth1", mtu=9000, gro=True, tx_checksum=False)
            .address("client:eth0", "10.10.0.1/24", "fd00:10::1/64")
            .address("server:eth0", "10.10.0.2/24", "fd00:10::2/64")
            .route("client", "default", via="10.10.0.2")
            .build())
    """

    def __init__(self, name: str) -> None:
        self._topo = Topology(name=name)

    def node(self, name: str, *, sysctls: Mapping[str, object] | None = None) -> TopologyBuilder:
        if name in self._topo.nodes:
            raise TopologyError(f"node {name!r} is defined twice")
        values = {k: sysctl_value(v, f"node {name!r}: sysctl {k}") for k, v in (sysctls or {}).items()}
        self._topo.nodes[name] = Node(name, values)
        return self

    def bridge(self, name: str, *, mtu: int | None = None, mcast_snooping: bool = False) -> TopologyBuilder:
        if name in self._topo.bridges:
            raise TopologyError(f"bridge {name!r} is defined twice")
        self._topo.bridges[name] = Bridge(name, mtu, mcast_snooping)
        return self

    def link(self, a: str, b: str, *, mtu: int | None = None, **offloads: bool) -> TopologyBuilder:
        """Connect `node:ifname` to `node:ifname` (a veth pair) or to a bridge name.

        Keyword offloads (gro, gso, tso, tx_checksum, rx_checksum) are set on both ends.
        """
        self._topo.links.append(
            Link((Endpoint.parse(a), Endpoint.parse(b)), mtu=mtu, offloads=dict(offloads))
        )
        return self

    def address(self, iface: str, *cidrs: str) -> TopologyBuilder:
        ref = Iface.parse(iface, "address: ")
        addrs = self._topo.addresses.setdefault(ref, [])
        addrs.extend(parse_interface_address(c, f"addresses[{ref}]") for c in cidrs)
        return self

    def mac(self, iface: str, mac: str) -> TopologyBuilder:
        self._topo.macs[Iface.parse(iface, "mac: ")] = mac
        return self

    def route(
        self,
        node: str,
        dst: str,
        *,
        via: str | None = None,
        dev: str | None = None,
        metric: int | None = None,
    ) -> TopologyBuilder:
        self._topo.routes.setdefault(node, []).append(Route(dst, via, dev, metric))
        return self

    def neighbor(self, iface: str, dst: str, lladdr: str) -> TopologyBuilder:
        ref = Iface.parse(iface, "neighbor: ")
        self._topo.neighbors.setdefault(ref, []).append(Neighbor(dst, lladdr))
        return self

    def static_neighbors(self, enabled: bool = True) -> TopologyBuilder:
        self._topo.static_neighbors = enabled
        return self

    def build(self) -> Topology:
        """Validate and return a copy, so the builder can keep going without aliasing."""
        return dataclasses.replace(copy.deepcopy(self._topo)).validate()
