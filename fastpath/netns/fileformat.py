"""The topology file: YAML in a containerlab-like shape, read into a validated `Topology`.

    name: lab1
    nodes:
      client: {}
      server:
        sysctls: {net.ipv4.tcp_syncookies: 0}
    bridges:
      sw0: {}                      # lives in the lab's switch namespace, <lab>-sw
    links:
      - endpoints: [client:eth0, sw0]
      - endpoints: [server:eth0, sw0]
      - endpoints: [client:eth1, server:eth1]
        mtu: 9000
        gro: true                  # also gso, tso, tx_checksum, rx_checksum (ethtool)
        tx_checksum: false
    addresses:
      client:eth0: [10.10.0.1/24, fd00:10::1/64]
      server:eth0: [10.10.0.2/24, fd00:10::2/64]
    macs:
      client:eth0: "02:00:0a:0a:00:01"   # quote MACs: YAML reads some as numbers
    routes:
      client: [{dst: default, via: 10.10.0.2}]
    neighbors:
      client:eth0: [{dst: 10.10.0.9, lladdr: "02:00:00:00:00:09"}]
    static_neighbors: true         # permanent entries for every peer on each segment

Every section but `name` and `nodes` is optional. Unknown keys are errors, not ignored, so
a typo never silently builds a different network.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fastpath.netns.model import (
    OFFLOAD_FEATURES,
    Bridge,
    Endpoint,
    Iface,
    Link,
    Neighbor,
    Node,
    Route,
    Topology,
    TopologyError,
    parse_interface_address,
    sysctl_value,
    validate,
)

_T = TypeVar("_T")

TOP_KEYS = (
    "name",
    "description",
    "nodes",
    "bridges",
    "links",
    "addresses",
    "macs",
    "routes",
    "neighbors",
    "static_neighbors",
)
NODE_KEYS = ("sysctls",)
BRIDGE_KEYS = ("mtu", "mcast_snooping")
LINK_KEYS = ("endpoints", "mtu", *OFFLOAD_FEATURES)
ROUTE_KEYS = ("dst", "via", "dev", "metric")
NEIGHBOR_KEYS = ("dst", "lladdr")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently,
    which would quietly drop a node or an interface's addresses)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            line = key_node.start_mark.line + 1
            raise TopologyError(f"line {line}: key {key!r} appears twice")
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def bundled_topology(name: str = "lab1") -> Path:
    """Path of a topology file shipped in the package (`fastpath/data/<name>.yaml`)."""
    path = Path(str(resources.files("fastpath") / "data" / f"{name}.yaml"))
    if not path.is_file():
        raise TopologyError(f"no bundled topology named {name!r}")
    return path


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; errors name the file and the offending part."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TopologyError(f"topology file {path} does not exist") from None
    except OSError as exc:
        raise TopologyError(f"cannot read topology file {path}: {exc.strerror}") from None
    return loads_topology(text, source=str(path))


def loads_topology(text: str, source: str = "<string>") -> Topology:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(f"{source}: not valid YAML{where}: {problem}") from None
    try:
        return parse_topology(data)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def parse_topology(data: object) -> Topology:
    """Turn the plain-data form (parsed YAML, JSON, a dict in a test) into a valid Topology."""
    top = _mapping(data, "the topology", TOP_KEYS, "top level")
    if "name" not in top:
        raise TopologyError("missing 'name' (the lab name, e.g. name: lab1)")
    if not isinstance(top["name"], str):
        raise TopologyError(f"lab name {top['name']!r} must be a string")
    topo = Topology(name=top["name"])
    if "nodes" not in top:
        raise TopologyError("missing 'nodes' (e.g. nodes: {client: {}, server: {}})")
    for section in (_read_nodes, _read_bridges, _read_links, _read_addresses, _read_macs, _read_routes,
                    _read_neighbors):
        section(top, topo)
    topo.static_neighbors = _bool(top.get("static_neighbors", False), "static_neighbors")
    validate(topo)
    return topo


def _read_nodes(top: dict[str, Any], topo: Topology) -> None:
    for name, spec in _mapping(top["nodes"], "nodes", None, "nodes").items():
        where = f"nodes[{name}]"
        _key(name, "nodes")
        conf = _mapping(spec, where, NODE_KEYS, where)
        sysctls = _mapping(conf.get("sysctls"), f"{where}.sysctls", None, where)
        topo.nodes[name] = Node(
            name, {str(k): sysctl_value(v, f"{where}.sysctls[{k}]") for k, v in sysctls.items()}
        )


def _read_bridges(top: dict[str, Any], topo: Topology) -> None:
    for name, spec in _mapping(top.get("bridges"), "bridges", None, "bridges").items():
        where = f"bridges[{name}]"
        _key(name, "bridges")
        conf = _mapping(spec, where, BRIDGE_KEYS, where)
        topo.bridges[name] = Bridge(
            name,
            mtu=conf.get("mtu"),
            mcast_snooping=_bool(conf.get("mcast_snooping", False), f"{where}.mcast_snooping"),
        )


def _read_links(top: dict[str, Any], topo: Topology) -> None:
    for idx, spec in enumerate(_list(top.get("links"), "links")):
        where = f"links[{idx}]"
        conf = _mapping(spec, where, LINK_KEYS, where)
        if "endpoints" not in conf:
            raise TopologyError(f"{where}: missing 'endpoints' (e.g. [client:eth0, sw0])")
        ends = _list(conf["endpoints"], f"{where}.endpoints")
        if len(ends) != 2:
            raise TopologyError(f"{where}: endpoints must list exactly 2 ends, got {len(ends)}")
        for end in ends:
            if not isinstance(end, str) or not end:
                raise TopologyError(f"{where}: endpoint {end!r} must be NODE:IFNAME or a bridge")
        offloads = {f: _bool(conf[f], f"{where}.{f}") for f in OFFLOAD_FEATURES if f in conf}
        topo.links.append(
            Link(
                (Endpoint.parse(ends[0]), Endpoint.parse(ends[1])),
                mtu=conf.get("mtu"),
                offloads=offloads,
            )
        )


def _read_addresses(top: dict[str, Any], topo: Topology) -> None:
    for key, addrs in _mapping(top.get("addresses"), "addresses", None, "addresses").items():
        iface = _iface(key, "addresses")
        where = f"addresses[{iface}]"
        values = addrs if isinstance(addrs, list) else [addrs]
        topo.addresses[iface] = [parse_interface_address(a, where) for a in values]


def _read_macs(top: dict[str, Any], topo: Topology) -> None:
    for key, mac in _mapping(top.get("macs"), "macs", None, "macs").items():
        iface = _iface(key, "macs")
        if not isinstance(mac, str):
            raise TopologyError(
                f"macs[{iface}]: {mac!r} is not a string; quote MAC addresses in YAML "
                "(unquoted, some read as numbers)"
            )
        topo.macs[iface] = mac


def _read_routes(top: dict[str, Any], topo: Topology) -> None:
    for node, routes in _mapping(top.get("routes"), "routes", None, "routes").items():
        _key(node, "routes")
        parsed = []
        for idx, spec in enumerate(_list(routes, f"routes[{node}]")):
            where = f"routes[{node}][{idx}]"
            conf = _mapping(spec, where, ROUTE_KEYS, where)
            if "dst" not in conf:
                raise TopologyError(f"{where}: missing 'dst' (a CIDR network or 'default')")
            parsed.append(
                Route(
                    dst=_text(conf["dst"], f"{where}.dst"),
                    via=_text(conf["via"], f"{where}.via") if "via" in conf else None,
                    dev=_text(conf["dev"], f"{where}.dev") if "dev" in conf else None,
                    metric=conf.get("metric"),
                )
            )
        topo.routes[node] = parsed


def _read_neighbors(top: dict[str, Any], topo: Topology) -> None:
    for key, neighs in _mapping(top.get("neighbors"), "neighbors", None, "neighbors").items():
        iface = _iface(key, "neighbors")
        parsed = []
        for idx, spec in enumerate(_list(neighs, f"neighbors[{iface}]")):
            where = f"neighbors[{iface}][{idx}]"
            conf = _mapping(spec, where, NEIGHBOR_KEYS, where)
            for k in NEIGHBOR_KEYS:
                if k not in conf:
                    raise TopologyError(f"{where}: missing {k!r}")
            parsed.append(
                Neighbor(
                    dst=_text(conf["dst"], f"{where}.dst"),
                    lladdr=_text(conf["lladdr"], f"{where}.lladdr (quote MACs in YAML)"),
                )
            )
        topo.neighbors[iface] = parsed


def topology_to_dict(topo: Topology) -> dict[str, Any]:
    """The plain-data form of a topology; `parse_topology` reads it back unchanged."""
    out: dict[str, Any] = {"name": topo.name, "nodes": {}}
    for name, node in topo.nodes.items():
        out["nodes"][name] = {"sysctls": dict(node.sysctls)} if node.sysctls else {}
    if topo.bridges:
        out["bridges"] = {}
        for name, br in topo.bridges.items():
            spec: dict[str, Any] = {}
            if br.mtu is not None:
                spec["mtu"] = br.mtu
            if br.mcast_snooping:
                spec["mcast_snooping"] = True
            out["bridges"][name] = spec
    if topo.links:
        out["links"] = []
        for link in topo.links:
            lspec: dict[str, Any] = {"endpoints": [str(e) for e in link.endpoints]}
            if link.mtu is not None:
                lspec["mtu"] = link.mtu
            lspec.update(link.offloads)
            out["links"].append(lspec)
    if topo.addresses:
        out["addresses"] = {str(i): [str(a) for a in v] for i, v in topo.addresses.items()}
    if topo.macs:
        out["macs"] = {str(i): m for i, m in topo.macs.items()}
    if topo.routes:
        out["routes"] = {
            node: [{k: v for k, v in vars(r).items() if v is not None} for r in routes]
            for node, routes in topo.routes.items()
        }
    if topo.neighbors:
        out["neighbors"] = {
            str(i): [{"dst": n.dst, "lladdr": n.lladdr} for n in v] for i, v in topo.neighbors.items()
        }
    if topo.static_neighbors:
        out["static_neighbors"] = True
    return out


def coerce_topology(source: Topology | Mapping[str, Any] | str | Path) -> Topology:
    """Accept what a caller has at hand: a Topology, its dict form, or a file path."""
    if isinstance(source, Topology):
        return source.validate()
    if isinstance(source, Mapping):
        return parse_topology(dict(source))
    return load_topology(source)


# ---------------------------------------------------------------------------------------
# structural helpers: each raises one line naming the place in the file


def _typed(value: object, kind: type[_T], message: str) -> _T:
    """`value` when YAML gave it as a `kind`; else a TopologyError saying `message`."""
    if not isinstance(value, kind):
        raise TopologyError(message)
    return value


def _mapping(value: object, what: str, allowed: tuple[str, ...] | None, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    mapping = _typed(value, dict, f"{what} must be a mapping, not {type(value).__name__}")
    if allowed is not None:
        for key in mapping:
            if key not in allowed:
                raise TopologyError(f"unknown key {key!r} at {where} (allowed: {', '.join(allowed)})")
    return mapping


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    return _typed(value, list, f"{what} must be a list, not {type(value).__name__}")


def _key(value: object, what: str) -> str:
    return _typed(value, str, f"{what}: name {value!r} must be a string")


def _text(value: object, what: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise TopologyError(f"{what}: {value!r} was read as a number; quote it in YAML")
    return _typed(value, str, f"{what}: {value!r} must be a string")


def _bool(value: object, what: str) -> bool:
    return _typed(value, bool, f"{what} must be true or false, not {value!r}")


def _iface(key: object, section: str) -> Iface:
    return Iface.parse(_typed(key, str, f"{section}: key {key!r} must be NODE:IFNAME"), f"{section}: ")
