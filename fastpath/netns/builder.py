"""Bring a topology up with pyroute2, transactionally, and tear a lab down without leftovers.

`plan(topo)` turns a topology into an ordered list of steps; the order is what makes the
lab usable the moment `build` returns:

  1. namespaces (`<lab>-<node>`, `<lab>-sw` for bridges)
  2. per namespace: `lo` up, IPv6 DAD off (before any interface arrives, so addresses
     are usable at once instead of "tentative" for a second); the switch namespace gets no
     IPv6 at all, it only forwards frames
  3. bridges, then one veth pair per link, both ends made by one netlink message straight
     in their namespaces under their final names (never in the root namespace, never moved)
  4. offloads (ethtool), node sysctls (after interfaces exist, so per-interface keys work)
  5. addresses, then routes (gateways must be reachable), then permanent neighbours

Every resource is written to the lab's statefile before it is made (all namespaces in one
write, before the first is created; links live inside them); on any failure the build
removes everything recorded so far and raises one line naming the failed step.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from fastpath.core.namespaces import (
    create_netns,
    list_netns,
    netns_context,
    netns_exists,
    netns_fd_inode,
    netns_unavailable_reason,
    open_netns,
    pids_in_netns_inode,
)
from fastpath.core.paths import PIN_ROOT
from fastpath.errors import CapabilityError, FastpathError
from fastpath.netns import state
from fastpath.netns.fileformat import topology_to_dict
from fastpath.netns.model import (
    OFFLOAD_FEATURES,
    Bridge,
    Iface,
    IPInterface,
    Route,
    Topology,
    lab_of_netns,
    sysctl_path,
)
from fastpath.netns.procs import kill_processes_in

# Builds before veths were made in place passed them through the root namespace under
# temporary names carrying this alias: a leak check and `topo down` still find such strays
# (and the temporary names a statefile of that time recorded, "temp_links").
ALIAS_PREFIX = "fastpath-topo:"
BPF_PIN_ROOT = str(PIN_ROOT)
NUD_PERMANENT = 0x80
GONE_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class CreateNetns:
    netns: str

    def describe(self) -> str:
        return f"create namespace {self.netns}"


@dataclass(frozen=True)
class PrepareNetns:
    netns: str
    switch: bool = False

    def describe(self) -> str:
        return f"bring up lo and configure IPv6 in {self.netns}"


@dataclass(frozen=True)
class CreateBridge:
    netns: str
    bridge: Bridge

    def describe(self) -> str:
        return f"create bridge {self.bridge.name} in {self.netns}"


@dataclass(frozen=True)
class VethEnd:
    netns: str
    ifname: str
    label: str  # what the user wrote: `client:eth0`, or `sw0` for a bridge port
    mac: str | None = None
    master: str | None = None  # bridge to enslave this end to


@dataclass(frozen=True)
class CreateVeth:
    index: int
    ends: tuple[VethEnd, VethEnd]
    mtu: int | None = None

    def describe(self) -> str:
        a, b = self.ends
        return f"create link {a.label} <-> {b.label}"


@dataclass(frozen=True)
class SetOffloads:
    netns: str
    ifname: str
    label: str
    features: tuple[tuple[str, bool], ...]  # (OFFLOAD_FEATURES key, on)

    def describe(self) -> str:
        feats = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in self.features)
        return f"set {feats} on {self.label}"


@dataclass(frozen=True)
class SetSysctls:
    netns: str
    node: str
    sysctls: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return f"set sysctls on {self.node}"


@dataclass(frozen=True)
class AddAddress:
    netns: str
    iface: Iface
    address: IPInterface

    def describe(self) -> str:
        return f"add address {self.address} to {self.iface}"


@dataclass(frozen=True)
class AddRoute:
    netns: str
    node: str
    route: Route

    def describe(self) -> str:
        r = self.route
        via = f" via {r.via}" if r.via else ""
        dev = f" dev {r.dev}" if r.dev else ""
        return f"add route {r.dst}{via}{dev} on {self.node}"


@dataclass(frozen=True)
class AddNeighbor:
    netns: str
    iface: Iface
    dst: str
    lladdr: str | None = None  # None: the MAC of `peer`, known only once it exists
    peer: Iface | None = None

    def describe(self) -> str:
        to = self.lladdr or f"{self.peer}'s MAC"
        return f"add permanent neighbour {self.dst} -> {to} on {self.iface}"


Step = (
    CreateNetns
    | PrepareNetns
    | CreateBridge
    | CreateVeth
    | SetOffloads
    | SetSysctls
    | AddAddress
    | AddRoute
    | AddNeighbor
)


def plan(topo: Topology) -> list[Step]:
    """The ordered steps that build `topo` (see the module docstring for why this order)."""
    steps: list[Step] = []
    sw = topo.switch_netns
    for node in topo.nodes:
        steps.append(CreateNetns(topo.netns(node)))
    if sw:
        steps.append(CreateNetns(sw))
    for node in topo.nodes:
        steps.append(PrepareNetns(topo.netns(node)))
    if sw:
        steps.append(PrepareNetns(sw, switch=True))
        for bridge in topo.bridges.values():
            steps.append(CreateBridge(sw, bridge))

    ports = topo.bridge_ports()
    offload_steps: list[Step] = []
    for idx, link in enumerate(topo.links):
        ends: list[VethEnd] = []
        for ep in link.endpoints:
            if ep.is_bridge:
                assert sw is not None
                ends.append(VethEnd(sw, ports[idx], ep.node, master=ep.node))
            else:
                ends.append(VethEnd(topo.netns(ep.node), ep.iface.ifname, str(ep), topo.macs.get(ep.iface)))
        steps.append(CreateVeth(idx, (ends[0], ends[1]), link.mtu))
        if link.offloads:
            feats = tuple((k, link.offloads[k]) for k in OFFLOAD_FEATURES if k in link.offloads)
            for end in ends:
                label = end.label if end.master is None else f"{end.ifname} on {end.label}"
                offload_steps.append(SetOffloads(end.netns, end.ifname, label, feats))
    steps.extend(offload_steps)

    for spec in topo.nodes.values():
        if spec.sysctls:
            steps.append(SetSysctls(topo.netns(spec.name), spec.name, tuple(spec.sysctls.items())))
    for iface, addrs in topo.addresses.items():
        for addr in addrs:
            steps.append(AddAddress(topo.netns(iface.node), iface, addr))
    for node, routes in topo.routes.items():
        for route in routes:
            steps.append(AddRoute(topo.netns(node), node, route))
    if topo.static_neighbors:
        steps.extend(_static_neighbors(topo))
    for iface, neighs in topo.neighbors.items():
        for n in neighs:
            steps.append(AddNeighbor(topo.netns(iface.node), iface, n.dst, lladdr=n.lladdr.lower()))
    return steps


def _static_neighbors(topo: Topology) -> list[AddNeighbor]:
    """A permanent entry on each interface for every address of every other interface on
    its L2 segment that falls inside one of its own subnets (what ARP/ND would resolve)."""
    out: list[AddNeighbor] = []
    for segment in topo.segments():
        for here in segment:
            mine = topo.addresses.get(here, [])
            for there in segment:
                if there == here:
                    continue
                for addr in topo.addresses.get(there, []):
                    if any(addr.ip in a.network and addr.ip != a.ip for a in mine):
                        out.append(AddNeighbor(topo.netns(here.node), here, str(addr.ip), peer=there))
    return out


# ---------------------------------------------------------------------------------------
# executing the plan


def new_record(topo: Topology) -> dict[str, Any]:
    return {
        "name": topo.name,
        "status": "building",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "builder_pid": os.getpid(),
        "namespaces": [],
        "temp_links": [],
        "topology": topology_to_dict(topo),
        "nodes": {n: topo.netns(n) for n in topo.nodes},
        "switch_netns": topo.switch_netns,
        "interfaces": [],
        "bridges": {},
    }


# What each step type counts towards in `build(..., timings=...)`.
PHASES: dict[str, str] = {
    "CreateNetns": "namespaces",
    "PrepareNetns": "namespaces",
    "CreateBridge": "links",
    "CreateVeth": "links",
    "SetOffloads": "links",
    "SetSysctls": "config",
    "AddAddress": "config",
    "AddRoute": "config",
    "AddNeighbor": "config",
}


class _Builder:
    """Executes steps, keeping the statefile a faithful journal of what exists."""

    def __init__(self, topo: Topology, record: dict[str, Any],
                 timings: dict[str, float] | None = None) -> None:  # fmt: skip
        self.topo = topo
        self.record = record
        self.timings = timings
        self._root: IPRoute | None = None
        self._ns: dict[str, IPRoute] = {}

    def _spent(self, phase: str, seconds: float) -> None:
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def save(self) -> None:
        t0 = time.perf_counter()
        state.save(self.topo.name, self.record)
        self._spent("journal", time.perf_counter() - t0)

    def root(self) -> IPRoute:
        if self._root is None:
            self._root = IPRoute(ext_ack=True)
        return self._root

    def ipr(self, netns: str) -> IPRoute:
        """A netlink socket bound to `netns` (made inside it, so it stays there)."""
        if netns not in self._ns:
            with netns_context(netns):
                self._ns[netns] = IPRoute(ext_ack=True)
        return self._ns[netns]

    def close(self) -> None:
        # Open netlink sockets pin their namespace: close them before any teardown.
        for ipr in self._ns.values():
            ipr.close()
        self._ns.clear()
        if self._root is not None:
            self._root.close()
            self._root = None

    def ifindex(self, netns: str, ifname: str) -> int:
        found = self.ipr(netns).link_lookup(ifname=ifname)
        if not found:
            raise FastpathError(f"interface {ifname} not found in {netns}")
        return int(found[0])

    def run_step(self, step: Step) -> None:
        kind = type(step).__name__
        handler = getattr(self, "_" + kind)
        if self.timings is None:
            handler(step)
            return
        journal0 = self.timings.get("journal", 0.0)
        t0 = time.perf_counter()
        try:
            handler(step)
        finally:
            # The step's own statefile writes are already counted under "journal".
            own = time.perf_counter() - t0 - (self.timings.get("journal", 0.0) - journal0)
            self._spent(PHASES[kind], own)

    def journal_namespaces(self, steps: list[Step]) -> None:
        """Record every namespace the plan creates in one statefile write. Rewriting the
        whole file per namespace made a lab's build quadratic in its size; recording one
        that does not exist yet is harmless: tear-down skips what is not there."""
        names = [s.netns for s in steps if isinstance(s, CreateNetns)]
        self.record["namespaces"].extend(n for n in names if n not in self.record["namespaces"])
        self.save()

    # One method per step type.

    def _CreateNetns(self, step: CreateNetns) -> None:  # noqa: N802 - named after the step
        if step.netns not in self.record["namespaces"]:
            self.record["namespaces"].append(step.netns)
            self.save()
        create_netns(step.netns)

    def _PrepareNetns(self, step: PrepareNetns) -> None:  # noqa: N802
        if step.switch:
            # Frames only pass through the switch namespace; IPv6 there would just add its
            # own router solicitations and MLD reports to every capture in the lab.
            knobs = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        else:
            knobs = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        _write_sysctls(step.netns, knobs.items())
        ipr = self.ipr(step.netns)
        ipr.link("set", index=self.ifindex(step.netns, "lo"), state="up")

    def _CreateBridge(self, step: CreateBridge) -> None:  # noqa: N802
        ipr = self.ipr(step.netns)
        kwargs: dict[str, Any] = {
            "ifname": step.bridge.name,
            "kind": "bridge",
            "br_mcast_snooping": 1 if step.bridge.mcast_snooping else 0,
            "br_forward_delay": 0,
        }
        if step.bridge.mtu is not None:
            kwargs["mtu"] = step.bridge.mtu
        ipr.link("add", **kwargs)
        ipr.link("set", index=self.ifindex(step.netns, step.bridge.name), state="up")

    def _CreateVeth(self, step: CreateVeth) -> None:  # noqa: N802
        # One message makes both ends, each straight in its own namespace under its final
        # name (with its MTU and MAC): nothing of the lab ever appears in the root
        # namespace, and no end is moved between namespaces, which costs an RCU grace
        # period per move (tens of milliseconds, the bulk of a large lab's build time).
        fds = [open_netns(end.netns) for end in step.ends]
        try:
            ends = []
            for end, fd in zip(step.ends, fds, strict=True):
                attrs: dict[str, Any] = {"ifname": end.ifname, "net_ns_fd": fd}
                if step.mtu is not None:
                    attrs["mtu"] = step.mtu
                if end.mac is not None:
                    attrs["address"] = end.mac
                ends.append(attrs)
            self.root().link("add", kind="veth", **ends[0], peer=ends[1])
        finally:
            for fd in fds:
                os.close(fd)
        for end in step.ends:
            kwargs: dict[str, Any] = {"state": "up"}
            if end.master is not None:
                kwargs["master"] = self.ifindex(end.netns, end.master)
            self.ipr(end.netns).link("set", index=self.ifindex(end.netns, end.ifname), **kwargs)

    def _SetOffloads(self, step: SetOffloads) -> None:  # noqa: N802
        ethtool = shutil.which("ethtool")
        if ethtool is None:
            raise CapabilityError("link offload options need ethtool; install it (apt install ethtool)")
        argv = [ethtool, "-K", step.ifname]
        for feature, on in step.features:
            argv += [OFFLOAD_FEATURES[feature], "on" if on else "off"]
        # A child forked from this thread inherits its namespace: no `ip netns exec` needed.
        with netns_context(step.netns):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise FastpathError(f"ethtool said: {msg[-1] if msg else f'exit {proc.returncode}'}")

    def _SetSysctls(self, step: SetSysctls) -> None:  # noqa: N802
        _write_sysctls(step.netns, step.sysctls)

    def _AddAddress(self, step: AddAddress) -> None:  # noqa: N802
        ipr = self.ipr(step.netns)
        addr = step.address
        kwargs: dict[str, Any] = {}
        if addr.version == 4 and addr.network.prefixlen < 31:
            kwargs["broadcast"] = str(addr.network.broadcast_address)
        ipr.addr(
            "add",
            index=self.ifindex(step.netns, step.iface.ifname),
            address=str(addr.ip),
            prefixlen=addr.network.prefixlen,
            family=socket.AF_INET if addr.version == 4 else socket.AF_INET6,
            **kwargs,
        )

    def _AddRoute(self, step: AddRoute) -> None:  # noqa: N802
        route = step.route
        net = route.network()
        kwargs: dict[str, Any] = {
            "dst": str(net.network_address),
            "dst_len": net.prefixlen,
            "family": socket.AF_INET if net.version == 4 else socket.AF_INET6,
        }
        if route.via is not None:
            kwargs["gateway"] = route.via
        if route.dev is not None:
            kwargs["oif"] = self.ifindex(step.netns, route.dev)
        if route.metric is not None:
            kwargs["priority"] = route.metric
        self.ipr(step.netns).route("add", **kwargs)

    def _AddNeighbor(self, step: AddNeighbor) -> None:  # noqa: N802
        lladdr = step.lladdr
        if lladdr is None:
            assert step.peer is not None
            peer_ns = self.topo.netns(step.peer.node)
            lladdr = _mac(self.ipr(peer_ns), self.ifindex(peer_ns, step.peer.ifname))
        dst = ipaddress.ip_address(step.dst)
        self.ipr(step.netns).neigh(
            "replace",
            dst=str(dst),
            lladdr=lladdr,
            ifindex=self.ifindex(step.netns, step.iface.ifname),
            family=socket.AF_INET if dst.version == 4 else socket.AF_INET6,
            state=NUD_PERMANENT,
        )

    def collect_facts(self) -> None:
        """Record what the kernel assigned (ifindex, MAC, MTU) for `show` and for tests."""
        ports = self.topo.bridge_ports()
        interfaces = []
        for idx, link in enumerate(self.topo.links):
            for i, ep in enumerate(link.endpoints):
                if ep.is_bridge:
                    continue
                other = link.endpoints[1 - i]
                netns = self.topo.netns(ep.node)
                msg = self.ipr(netns).get_links(self.ifindex(netns, ep.iface.ifname))[0]
                interfaces.append(
                    {
                        "node": ep.node,
                        "netns": netns,
                        "ifname": ep.iface.ifname,
                        "ifindex": msg["index"],
                        "mac": msg.get_attr("IFLA_ADDRESS"),
                        "mtu": msg.get_attr("IFLA_MTU"),
                        "addresses": [str(a) for a in self.topo.addresses.get(ep.iface, [])],
                        "peer": str(other),
                        "bridge_port": ports.get(idx) if other.is_bridge else None,
                    }
                )
        self.record["interfaces"] = interfaces
        self.record["bridges"] = {
            name: {
                "netns": self.topo.switch_netns,
                "ports": [
                    ports[i]
                    for i, link in enumerate(self.topo.links)
                    if any(e.is_bridge and e.node == name for e in link.endpoints)
                ],
            }
            for name in self.topo.bridges
        }


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def _write_sysctls(netns: str, items: Iterable[tuple[str, str]]) -> None:
    # /proc/sys/net resolves against the namespace of the thread that opens the file.
    with netns_context(netns):
        for key, value in items:
            path = sysctl_path(key)
            try:
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                raise FastpathError(f"sysctl {key} does not exist in this kernel (no {path})") from None
            except OSError as exc:
                raise FastpathError(f"sysctl {key}={value} rejected: {exc.strerror}") from None


def _explain(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        text = os.strerror(exc.code) if exc.code > 0 else str(exc)
        extra = exc.args[1] if len(exc.args) > 1 and exc.args[1] else ""
        return f"{text} ({extra})" if extra and extra not in text else text
    if isinstance(exc, FastpathError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def build(topo: Topology, *, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Make every namespace, link and address of `topo`; return the lab's record.

    All or nothing: if any step fails, everything made so far is removed before the error
    (one line, naming the step and the kernel's reason) is raised. `timings`, when given,
    is filled with the seconds spent per phase: "namespaces", "links", "config" (see
    PHASES), "journal" (statefile writes) and "facts" (reading back what the kernel
    assigned), for benchmarks and for finding what a large lab waits on.
    """
    topo.validate()
    reason = netns_unavailable_reason()
    if reason:
        raise CapabilityError(f"cannot build lab {topo.name!r}: {reason}")
    if any(link.offloads for link in topo.links) and shutil.which("ethtool") is None:
        raise CapabilityError("link offload options (gro, tx_checksum, ...) need ethtool; install it")

    record = new_record(topo)
    state.claim(topo.name, record)
    stale = owned_netns(topo.name)
    if stale:
        state.remove(topo.name)
        raise FastpathError(
            f"namespaces of an earlier lab {topo.name!r} still exist ({', '.join(stale)}); "
            f"remove them with `fastpath topo down {topo.name}`"
        )

    builder = _Builder(topo, record, timings)
    current: Step | None = None
    try:
        steps = plan(topo)
        builder.journal_namespaces(steps)
        for current in steps:
            builder.run_step(current)
        current = None
        t0 = time.perf_counter()
        builder.collect_facts()
        builder._spent("facts", time.perf_counter() - t0)
        record["status"] = "up"
        builder.save()
    except BaseException as exc:
        builder.close()
        what = current.describe() if current is not None else "recording the lab"
        try:
            destroy(topo.name, record)
        except FastpathError as cleanup:
            raise FastpathError(
                f"lab {topo.name!r} not built: {what} failed: {_explain(exc)}; clean-up also "
                f"failed ({cleanup}); retry with `fastpath topo down {topo.name}`"
            ) from exc
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt and friends: cleaned up, now let them through
        raise FastpathError(
            f"lab {topo.name!r} not built: {what} failed: {_explain(exc)}; everything it had made was removed"
        ) from exc
    finally:
        builder.close()
    return record


# ---------------------------------------------------------------------------------------
# tear-down


def owned_netns(lab: str) -> list[str]:
    """Namespaces named `<lab>-*`: lab names hold no '-', so the prefix is the lab's alone."""
    return [n for n in list_netns() if lab_of_netns(n) == lab and n != lab]


DUMP_TRIES = 5


def root_links_of(lab: str | None = None) -> list[tuple[int, str, str]]:
    """(index, name, lab) of root-namespace veths still carrying a fastpath alias."""
    with IPRoute(ext_ack=True) as ipr:
        # The kernel interrupts a dump when links change meanwhile (anyone's, anywhere in
        # the root namespace); what it returned is then incomplete, so dump again.
        for attempt in range(DUMP_TRIES):
            try:
                links = ipr.get_links()
                break
            except NetlinkDumpInterrupted:
                if attempt == DUMP_TRIES - 1:
                    raise FastpathError(
                        f"the root namespace's links kept changing during {DUMP_TRIES} dumps in a row"
                    ) from None
                time.sleep(0.05)
    out = []
    for msg in links:
        alias = msg.get_attr("IFLA_IFALIAS") or ""
        if alias.startswith(ALIAS_PREFIX):
            owner = alias[len(ALIAS_PREFIX) :]
            if lab is None or owner == lab:
                out.append((msg["index"], msg.get_attr("IFLA_IFNAME"), owner))
    return out


def remove_netns(netns: str) -> None:
    """Kill what runs in `netns`, unmount and delete it, and wait until no process is in it."""
    try:
        # Held until the end, so the inode that identifies the namespace's processes cannot
        # be recycled for someone else's new namespace while we are still killing by it.
        fd = open_netns(netns)
    except FileNotFoundError:
        return
    try:
        ident = netns_fd_inode(fd)
        kill_processes_in(ident, netns)
        try:
            pr_netns.remove(netns)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FastpathError(f"cannot remove namespace {netns}: {exc.strerror}") from None
        # A process racing into the namespace (an `ip netns exec` that opened it just before
        # the unmount) would keep it alive invisibly; kill it too.
        deadline = time.monotonic() + GONE_TIMEOUT
        while netns_exists(netns) or pids_in_netns_inode(ident):
            if time.monotonic() > deadline:
                raise FastpathError(f"namespace {netns} is still in use {GONE_TIMEOUT:g}s after removal")
            kill_processes_in(ident, netns, grace=0)
            time.sleep(0.02)
    finally:
        os.close(fd)


def remove_pins(netns: str) -> bool:
    """Remove bpffs pins kept for interfaces of `netns`: they die with its interfaces."""
    path = os.path.join(BPF_PIN_ROOT, netns)
    if not os.path.isdir(path):
        return False
    shutil.rmtree(path)
    return True


def destroy(name: str, record: dict[str, Any] | None = None) -> list[str]:
    """Tear down lab `name`; returns the namespaces removed. Raises if nothing was up."""
    if record is None:
        record = state.load(name)
    if record is not None:
        namespaces = list(dict.fromkeys(record.get("namespaces", []) + owned_netns(name)))
    else:
        namespaces = owned_netns(name)
    root_links = root_links_of(name)
    if record is not None:
        # Temporary veths not yet aliased (the build died in between) are known by name.
        with IPRoute(ext_ack=True) as ipr:
            for tmp in record.get("temp_links", []):
                for index in ipr.link_lookup(ifname=tmp):
                    if all(index != known for known, _, _ in root_links):
                        root_links.append((int(index), tmp, name))
    if record is None and not namespaces and not root_links:
        raise FastpathError(f"no lab named {name!r} is up; see `fastpath topo ls`")

    errors: list[str] = []
    if root_links:
        with IPRoute(ext_ack=True) as ipr:
            for index, ifname, _lab in root_links:
                try:
                    ipr.link("del", index=index)
                except NetlinkError as exc:
                    if exc.code != 19:  # ENODEV: deleting its peer already took it
                        errors.append(f"delete {ifname}: {os.strerror(exc.code)}")
    removed = []
    for netns in namespaces:
        try:
            if netns_exists(netns):
                remove_netns(netns)
                removed.append(netns)
            remove_pins(netns)
        except (FastpathError, OSError) as exc:
            errors.append(str(exc))
    if errors:
        raise FastpathError(f"tear-down of lab {name!r} incomplete: {'; '.join(errors)}")
    state.remove(name)
    return removed


@contextlib.contextmanager
def iproute_in(netns: str) -> Iterator[IPRoute]:
    """An IPRoute bound to `netns`, closed (releasing the namespace) on exit."""
    with netns_context(netns):
        ipr = IPRoute(ext_ack=True)
    try:
        yield ipr
    finally:
        ipr.close()
