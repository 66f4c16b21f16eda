"""Network-namespace labs: declarative veth/bridge topologies, built with pyroute2,
torn down without leftovers, plus a pytest plugin (`fastpath.netns.pytest_plugin`).

Names are imported on first use: every `fastpath` command imports this package to register
`topo`, and pyroute2 alone costs more start-up time than the rest of the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastpath.core.namespaces import netns_context, netns_unavailable_reason, pids_in_netns
    from fastpath.netns.fileformat import (
        bundled_topology,
        load_topology,
        loads_topology,
        parse_topology,
        topology_to_dict,
    )
    from fastpath.netns.lab import Lab, LabSummary, down, list_labs
    from fastpath.netns.model import Iface, Topology, TopologyBuilder, TopologyError
    from fastpath.netns.procs import (
        CommandFailed,
        CommandTimeout,
        NodeProcess,
        kill_netns_processes,
        run_in_netns,
    )

_EXPORTS = {
    "bundled_topology": "fileformat",
    "load_topology": "fileformat",
    "loads_topology": "fileformat",
    "parse_topology": "fileformat",
    "topology_to_dict": "fileformat",
    "Lab": "lab",
    "LabSummary": "lab",
    "down": "lab",
    "list_labs": "lab",
    "Iface": "model",
    "Topology": "model",
    "TopologyBuilder": "model",
    "TopologyError": "model",
    "netns_context": "fastpath.core.namespaces",
    "netns_unavailable_reason": "fastpath.core.namespaces",
    "pids_in_netns": "fastpath.core.namespaces",
    "CommandFailed": "procs",
    "CommandTimeout": "procs",
    "NodeProcess": "procs",
    "kill_netns_processes": "procs",
    "run_in_netns": "procs",
}

__all__ = [
    "CommandFailed",
    "CommandTimeout",
    "Iface",
    "Lab",
    "LabSummary",
    "NodeProcess",
    "Topology",
    "TopologyBuilder",
    "TopologyError",
    "bundled_topology",
    "down",
    "kill_netns_processes",
    "list_labs",
    "load_topology",
    "loads_topology",
    "netns_context",
    "netns_unavailable_reason",
    "parse_topology",
    "pids_in_netns",
    "run_in_netns",
    "topology_to_dict",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastpath.netns' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = getattr(importlib.import_module(module if "." in module else f"fastpath.netns.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
