"""`Lab`: a built topology you can run things in, look into, and take down.

    from fastpath.netns import Lab

    with Lab.up("lab.yaml") as lab:                # or a dict, or a Topology
        lab.run("client", ["ping", "-c1", "-W2", "10.10.0.2"])
        server = lab.spawn("server", ["iperf3", "-s"])
        with lab.enter("server"):                  # this thread is in lab1-server
            sock = socket.socket()
    # leaving the block stops `server` and removes every namespace

A Lab made by another process (e.g. `fastpath topo up`) is reachable with `Lab.load(name)`.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from fastpath.core.namespaces import netns_context, netns_exists
from fastpath.errors import FastpathError
from fastpath.netns import builder, state
from fastpath.netns.fileformat import coerce_topology, parse_topology
from fastpath.netns.model import Topology, check_lab_name
from fastpath.netns.procs import NodeProcess, run_in_netns


class Lab:
    def __init__(self, topology: Topology, record: dict[str, Any]) -> None:
        self.topology = topology
        self.record = record
        self._procs: list[NodeProcess] = []
        self._down = False

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    def up(cls, source: Topology | Mapping[str, Any] | str | Path, *, name: str | None = None) -> Lab:
        """Build a lab from a Topology, its dict form or a file; `name` overrides the lab name."""
        topo = coerce_topology(source)
        if name is not None:
            topo = topo.renamed(check_lab_name(name)).validate()
        return cls(topo, builder.build(topo))

    @classmethod
    def load(cls, name: str) -> Lab:
        """The lab `name` as recorded by whoever built it."""
        check_lab_name(name)
        record = state.load(name)
        if record is None:
            raise FastpathError(f"no lab named {name!r} is up; see `fastpath topo ls`")
        if record.get("status") != "up":
            raise FastpathError(
                f"lab {name!r} is {record.get('status')!r}, not up (a build died half-way?); "
                f"remove it with `fastpath topo down {name}`"
            )
        return cls(parse_topology(record["topology"]), record)

    def down(self) -> None:
        """Stop spawned processes, then remove every namespace, link and pin of the lab."""
        if self._down:
            return
        errors = []
        for proc in self._procs:
            try:
                proc.stop()
            except OSError as exc:
                errors.append(f"stop pid {proc.pid}: {exc}")
        self._procs.clear()
        builder.destroy(self.name, state.load(self.name) or self.record)
        self._down = True
        if errors:
            raise FastpathError(f"lab {self.name!r} removed, but {'; '.join(errors)}")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<Lab {self.name} nodes={','.join(self.topology.nodes)}>"

    # -- facts ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def nodes(self) -> list[str]:
        return list(self.topology.nodes)

    def netns(self, node: str) -> str:
        """The namespace of `node` (e.g. `lab1-client`); `sw` gives the bridges' namespace."""
        if node == "sw" and self.topology.switch_netns:
            return self.topology.switch_netns
        if node not in self.topology.nodes:
            raise FastpathError(f"lab {self.name!r} has no node {node!r} (nodes: {', '.join(self.nodes)})")
        return self.topology.netns(node)

    def interface(self, node: str, ifname: str) -> dict[str, Any]:
        """Recorded facts of one interface: ifindex, mac, mtu, addresses, peer, bridge_port."""
        for iface in self.record.get("interfaces", []):
            if iface["node"] == node and iface["ifname"] == ifname:
                return dict(iface)
        raise FastpathError(f"lab {self.name!r}: node {node!r} has no interface {ifname!r}")

    def mac(self, node: str, ifname: str) -> str:
        return str(self.interface(node, ifname)["mac"])

    def ifindex(self, node: str, ifname: str) -> int:
        return int(self.interface(node, ifname)["ifindex"])

    def info(self) -> dict[str, Any]:
        """Everything `fastpath topo show --json` prints."""
        rec = self.record
        return {
            "name": self.name,
            "status": rec.get("status"),
            "created": rec.get("created"),
            "statefile": str(state.state_path(self.name)),
            "namespaces": {n: self.topology.netns(n) for n in self.topology.nodes}
            | ({"sw": self.topology.switch_netns} if self.topology.switch_netns else {}),
            "interfaces": rec.get("interfaces", []),
            "bridges": rec.get("bridges", {}),
            "routes": {
                node: [{k: v for k, v in vars(r).items() if v is not None} for r in routes]
                for node, routes in self.topology.routes.items()
            },
            "topology": rec.get("topology"),
        }

    # -- doing things inside ----------------------------------------------------------------

    def run(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `node` and wait (CommandTimeout / CommandFailed on trouble)."""
        return run_in_netns(self.netns(node), argv, timeout=timeout, check=check, input=input, env=env)

    def spawn(
        self,
        node: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> NodeProcess:
        """Start `argv` in the background in `node`; it is killed at the latest by down()."""
        proc = NodeProcess(self.netns(node), argv, env=env, cwd=cwd)
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def enter(self, node: str) -> Iterator[None]:
        """Move the calling thread into `node`'s namespace for the block (sockets made here
        stay there)."""
        with netns_context(self.netns(node)):
            yield

    @contextlib.contextmanager
    def iproute(self, node: str) -> Iterator[IPRoute]:
        """A pyroute2 IPRoute working in `node`'s namespace, closed on exit."""
        with builder.iproute_in(self.netns(node)) as ipr:
            yield ipr


@dataclass
class LabSummary:
    name: str
    status: str
    created: str
    nodes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded namespaces that are gone

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def list_labs() -> list[LabSummary]:
    """Every lab with a statefile; `missing` flags labs whose namespaces vanished."""
    out = []
    for name in state.names():
        try:
            rec = state.load(name)
        except FastpathError:
            rec = None
        if rec is None:
            out.append(LabSummary(name, "unreadable", ""))
            continue
        namespaces = list(rec.get("namespaces", []))
        missing = [n for n in namespaces if not netns_exists(n)]
        status = str(rec.get("status", "?"))
        if status == "up" and missing:
            status = "broken"
        out.append(
            LabSummary(
                name,
                status,
                str(rec.get("created", "")),
                nodes=list(rec.get("nodes", {})),
                namespaces=namespaces,
                missing=missing,
            )
        )
    return out


def down(name: str) -> list[str]:
    """Tear down lab `name` (from its statefile, or by its namespaces if that is lost)."""
    check_lab_name(name)
    return builder.destroy(name)
