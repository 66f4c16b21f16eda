"""Bind PCI NICs to DPDK drivers (vfio-pci, uio_pci_generic) without cutting the machine off.

Before any sysfs write, every refusal is checked and reported together:
- an interface of the device is up, has addresses or routes (overridable with --force);
- an interface is a bond or bridge member (never overridden: leave the bond/bridge first);
- an interface carries the current SSH session (never overridden);
- vfio-pci: the whole IOMMU group must be driverless or on vfio-pci; a device with no IOMMU
  group needs the explicit, unsafe no-IOMMU opt-in;
- the target driver must be loaded.

Binding uses driver_override + drivers_probe, then reads the driver link back. The driver a
device had is kept in /run/fastpath/dpdk/bindings.json so `restore` can return to it. All
file access goes through one `Host` root, so tests drive a fake sysfs tree.

An interface in another network namespace (`--netns NS`) is invisible in our /sys/class/net;
it is found over netlink in NS (its parent device, state, master), its addresses and routes
are read there too, and the PCI device behind it through /sys/bus, which every namespace
shares. The SSH check looks at this namespace's interfaces only: our session's sockets and routes
live here, so an interface of NS carries it only when this namespace routes through NS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastpath.core.jsonstate import locked, write_json
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

PCI_DEVICES = "/sys/bus/pci/devices"
PCI_DRIVERS = "/sys/bus/pci/drivers"
CLASS_NET = "/sys/class/net"
NOIOMMU_PARAM = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
BINDINGS = "/run/fastpath/dpdk/bindings.json"
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic")
# Drivers vfio accepts on other devices of the same IOMMU group.
VFIO_GROUP_OK = {"vfio-pci", "pci-stub", "pcieport"}
SSH_PORT = 22
IFF_UP = 0x1

_BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")

CLASS_NAMES = {
    "0200": "Ethernet",
    "0207": "InfiniBand",
    "0280": "Network",
    "0100": "SCSI",
    "0108": "NVMe",
    "0180": "Storage",
    "0600": "Host bridge",
    "0604": "PCI bridge",
    "ff00": "Unclassified",
}


def normalize_bdf(text: str) -> str | None:
    """"03:00.0" or "0000:03:00.0" -> "0000:03:00.0"; None when not a PCI address."""
    m = _BDF_RE.match(text.strip())
    if not m:
        return None
    domain = (m.group(1) or "0000").lower()
    return f"{domain}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


# ---------------------------------------------------------------- network state


class NetState(Protocol):
    """What only netlink knows: addresses and routes of an interface."""

    def addresses(self, ifname: str) -> list[str]: ...

    def routes(self, ifname: str) -> list[str]: ...

    def egress_interface(self, dst: str) -> str | None: ...


def _iproute(netns: str | None) -> Any:
    """A pyroute2 IPRoute bound to `netns` (None: the current namespace)."""
    from pyroute2 import IPRoute

    if netns is None:
        return IPRoute()
    from fastpath.core.namespaces import netns_context, netns_exists

    if not netns_exists(netns):
        raise FastpathError(f"no network namespace {netns!r} (see 'ip netns list')")
    with netns_context(netns):
        return IPRoute()  # the socket stays in the namespace it was made in


class NetlinkState:
    """NetState of one network namespace (None: the current one), read with pyroute2."""

    def __init__(self, netns: str | None = None) -> None:
        self._ipr = _iproute(netns)

    def close(self) -> None:
        self._ipr.close()

    def _index(self, ifname: str) -> int | None:
        found = self._ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def addresses(self, ifname: str) -> list[str]:
        idx = self._index(ifname)
        if idx is None:
            return []
        out = []
        for msg in self._ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and not ipaddress.ip_address(addr).is_link_local:
                out.append(f"{addr}/{msg['prefixlen']}")
        return out

    def routes(self, ifname: str) -> list[str]:
        idx = self._index(ifname)
        if idx is None:
            return []
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_routes(family=family, oif=idx):
                table = msg.get_attr("RTA_TABLE") or msg["table"]
                dst = msg.get_attr("RTA_DST")
                if table == 255:  # the local table mirrors addresses, already reported
                    continue
                if dst is None:
                    out.append("default")
                    continue
                net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
                if net.is_link_local or net.is_multicast:
                    continue
                out.append(str(net))
        return out

    def egress_interface(self, dst: str) -> str | None:
        try:
            msgs = self._ipr.route("get", dst=dst)
        except Exception:  # noqa: BLE001 - unroutable destination: no interface
            return None
        for msg in msgs:
            oif = msg.get_attr("RTA_OIF")
            if oif is not None:
                links = self._ipr.get_links(oif)
                if links:
                    return str(links[0].get_attr("IFLA_IFNAME"))
        return None


@dataclass
class StaticNetState:
    """NetState from dicts: for unit tests and dry runs against a fake sysfs tree."""

    addrs: dict[str, list[str]] = field(default_factory=dict)
    route_table: dict[str, list[str]] = field(default_factory=dict)
    egress: dict[str, str] = field(default_factory=dict)

    def addresses(self, ifname: str) -> list[str]:
        return list(self.addrs.get(ifname, []))

    def routes(self, ifname: str) -> list[str]:
        return list(self.route_table.get(ifname, []))

    def egress_interface(self, dst: str) -> str | None:
        return self.egress.get(dst)


# ---------------------------------------------------------------- devices


@dataclass
class Interface:
    name: str
    up: bool
    master: str | None
    master_kind: str | None  # "bond" or "bridge"
    netns: str | None = None  # None: this namespace; else the one --netns named


@dataclass
class PciDevice:
    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None
    iommu_group: str | None
    numa_node: int | None
    interfaces: list[Interface] = field(default_factory=list)

    @property
    def is_network(self) -> bool:
        return self.class_code.startswith("02")

    @property
    def class_name(self) -> str:
        return CLASS_NAMES.get(self.class_code[:4], f"class {self.class_code}")

    @property
    def interface_names(self) -> list[str]:
        return [i.name for i in self.interfaces]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_name"] = self.class_name
        return d


class Links(Protocol):
    """The interfaces of one network namespace other than the one whose sysfs we read."""

    netns: str

    def names(self) -> list[str]: ...

    def interface(self, name: str) -> Interface: ...

    def parent(self, name: str) -> tuple[str, str] | None:
        """(bus, device name) of the device behind `name`, e.g. ("pci", "0000:03:00.0")."""
        ...


class NetlinkLinks:
    """Links of a network namespace, read over netlink."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        ipr = _iproute(netns)
        try:
            self._links = {str(m.get_attr("IFLA_IFNAME")): m for m in ipr.get_links()}
        finally:
            ipr.close()
        self._by_index = {m["index"]: m for m in self._links.values()}

    def names(self) -> list[str]:
        return sorted(self._links)

    def _kind(self, msg: Any) -> str | None:
        info = msg.get_attr("IFLA_LINKINFO")
        return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else None

    def interface(self, name: str) -> Interface:
        msg = self._links[name]
        master = self._by_index.get(msg.get_attr("IFLA_MASTER") or -1)
        kind = None
        if master is not None:
            kind = self._kind(master)
            kind = kind if kind in ("bond", "bridge") else "master"
        return Interface(name=name, up=bool(msg["flags"] & IFF_UP),
                         master=str(master.get_attr("IFLA_IFNAME")) if master is not None else None,
                         master_kind=kind, netns=self.netns)

    def parent(self, name: str) -> tuple[str, str] | None:
        msg = self._links[name]
        bus, dev = msg.get_attr("IFLA_PARENT_DEV_BUS_NAME"), msg.get_attr("IFLA_PARENT_DEV_NAME")
        return (str(bus), str(dev)) if bus and dev else None


@dataclass
class StaticLinks:
    """Links from dicts, for unit tests against a fake sysfs tree."""

    netns: str
    interfaces: dict[str, Interface] = field(default_factory=dict)
    parents: dict[str, tuple[str, str]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.interfaces)

    def interface(self, name: str) -> Interface:
        return self.interfaces[name]

    def parent(self, name: str) -> tuple[str, str] | None:
        return self.parents.get(name)


def bdf_of_parent(host: Host, parent: tuple[str, str] | None) -> str | None:
    """The PCI address behind a netlink parent device ("pci", BDF) or ("virtio", "virtio2")."""
    if parent is None:
        return None
    bus, dev = parent
    if bus == "pci":
        return normalize_bdf(dev)
    path = host.path(f"/sys/bus/{bus}/devices/{dev}")
    return _bdf_of_path(os.path.realpath(path)) if path.exists() else None


def _bdf_of_path(real: str) -> str | None:
    """The nearest PCI address in a resolved sysfs device path (walks up through virtioN)."""
    for part in reversed(Path(real).parts):
        if _BDF_RE.match(part) and len(part) == 12:
            return part
    return None


def _sysfs_bdf(host: Host, name: str) -> str | None:
    dev = host.path(f"{CLASS_NET}/{name}/device")
    return _bdf_of_path(os.path.realpath(dev)) if dev.exists() else None


def interfaces_by_bdf(host: Host, links: Links | None = None) -> dict[str, list[str]]:
    """PCI address -> interface names, from our sysfs and from `links` (another netns)."""
    found: dict[str, list[str]] = {}
    for name in host.listdir(CLASS_NET):
        bdf = _sysfs_bdf(host, name)
        if bdf is not None:
            found.setdefault(bdf, []).append(name)
    if links is not None:
        for name in links.names():
            bdf = bdf_of_parent(host, links.parent(name))
            if bdf is not None and name not in found.get(bdf, []):
                found.setdefault(bdf, []).append(name)
    return found


def read_interface(host: Host, name: str) -> Interface:
    base = f"{CLASS_NET}/{name}"
    try:
        up = bool(int(host.read(f"{base}/flags"), 16) & IFF_UP)
    except (OSError, ValueError):
        up = False
    master = host.link_name(f"{base}/master")
    kind = None
    if master is not None:
        if host.exists(f"{base}/brport"):
            kind = "bridge"
        elif host.exists(f"{base}/bonding_slave") or host.exists(f"{CLASS_NET}/{master}/bonding"):
            kind = "bond"
        else:
            kind = "master"
    return Interface(name=name, up=up, master=master, master_kind=kind)


def read_device(host: Host, bdf: str, ifmap: dict[str, list[str]] | None = None,
                links: Links | None = None) -> PciDevice:
    base = f"{PCI_DEVICES}/{bdf}"
    if not host.exists(base):
        raise FastpathError(f"no PCI device {bdf}; list them with 'fastpath dpdk devices'")
    ifmap = interfaces_by_bdf(host, links) if ifmap is None else ifmap
    in_links = set(links.names()) if links is not None else set()

    def interface(name: str) -> Interface:
        # A name can exist here and in the other namespace: ours only if it is this device.
        if links is not None and name in in_links and _sysfs_bdf(host, name) != bdf:
            return links.interface(name)
        return read_interface(host, name)

    numa = host.read_or(f"{base}/numa_node", "-1")
    return PciDevice(
        address=bdf,
        vendor=host.read_or(f"{base}/vendor", "0x0000").removeprefix("0x"),
        device=host.read_or(f"{base}/device", "0x0000").removeprefix("0x"),
        class_code=host.read_or(f"{base}/class", "0x000000").removeprefix("0x"),
        driver=host.link_name(f"{base}/driver"),
        iommu_group=host.link_name(f"{base}/iommu_group"),
        numa_node=int(numa) if numa.lstrip("-").isdigit() and int(numa) >= 0 else None,
        interfaces=[interface(n) for n in ifmap.get(bdf, [])],
    )


def list_devices(host: Host = REAL_HOST, network_only: bool = True,
                 links: Links | None = None) -> list[PciDevice]:
    ifmap = interfaces_by_bdf(host, links)
    devices = [read_device(host, bdf, ifmap, links) for bdf in host.listdir(PCI_DEVICES)]
    return [d for d in devices if d.is_network or not network_only]


def resolve(host: Host, dev: str, links: Links | None = None) -> PciDevice:
    """DEV is a PCI address or an interface name (of namespace `links.netns` if given)."""
    bdf = normalize_bdf(dev)
    if bdf is not None:
        return read_device(host, bdf, links=links)
    if not re.fullmatch(r"[^/\s]{1,15}", dev):
        raise FastpathError(f"{dev!r} is neither a PCI address (0000:03:00.0) nor an interface name")
    if links is not None:
        if dev not in links.names():
            raise FastpathError(f"no interface {dev!r} in network namespace {links.netns} "
                                f"(see 'ip -n {links.netns} link')")
        bdf = bdf_of_parent(host, links.parent(dev))
        if bdf is None:
            raise FastpathError(
                f"{dev} in namespace {links.netns} is a virtual interface with no PCI device "
                f"behind it; DPDK reaches it with 'fastpath dpdk l2fwd run --netns "
                f"{links.netns} --vdev af_packet:{dev}' instead of binding"
            )
        return read_device(host, bdf, links=links)
    link = host.path(f"{CLASS_NET}/{dev}")
    if not link.exists():
        # A NIC on vfio-pci has no interface any more: find it by the name it had.
        for bdf, record in load_bindings(host).items():
            if dev in record.get("interfaces", []):
                return read_device(host, bdf)
        raise FastpathError(
            f"no PCI device or interface named {dev!r}; list them with 'fastpath dpdk devices'"
        )
    devlink = host.path(f"{CLASS_NET}/{dev}/device")
    bdf = _bdf_of_path(os.path.realpath(devlink)) if devlink.exists() else None
    if bdf is None:
        raise FastpathError(
            f"{dev} is a virtual interface with no PCI device behind it; DPDK reaches it "
            f"with 'fastpath dpdk l2fwd run --vdev af_packet:{dev}' instead of binding"
        )
    return read_device(host, bdf)


# ---------------------------------------------------------------- SSH session


def _decode_proc_addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def ssh_endpoints(host: Host, env: dict[str, str]) -> list[tuple[str, str]]:
    """(local address, peer address) of the current SSH session and of established
    connections to the SSH port."""
    found: list[tuple[str, str]] = []
    conn = env.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        found.append((conn[2], conn[0]))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in host.read_or(table, "").splitlines()[1:]:
            cols = line.split()
            if len(cols) < 4 or cols[3] != "01":  # 01 = ESTABLISHED
                continue
            local, lport = cols[1].split(":")
            remote, _ = cols[2].split(":")
            if int(lport, 16) != SSH_PORT:
                continue
            try:
                pair = (_decode_proc_addr(local), _decode_proc_addr(remote))
            except ValueError:
                continue
            if pair not in found:
                found.append(pair)
    return found


def _strip_mapped(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def ssh_interfaces(host: Host, net: NetState, env: dict[str, str], names: list[str]) -> set[str]:
    """Which of `names` carry an SSH session (hold its local address or route to the peer)."""
    carrying = set()
    for local, peer in ssh_endpoints(host, env):
        local, peer = _strip_mapped(local), _strip_mapped(peer)
        for name in names:
            held = {a.split("/")[0] for a in net.addresses(name)}
            if local in held:
                carrying.add(name)
        egress = net.egress_interface(peer)
        if egress in names:
            carrying.add(egress)
    return carrying


# ---------------------------------------------------------------- plans


@dataclass
class Refusal:
    reason: str
    overridable: bool = False


@dataclass
class Write:
    path: str
    value: str


@dataclass
class Plan:
    action: str  # "bind", "unbind" or "restore"
    device: PciDevice
    target_driver: str | None
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    nothing_to_do: bool = False
    forced: bool = False

    @property
    def blocking(self) -> list[Refusal]:
        return [r for r in self.refusals if not (self.forced and r.overridable)]

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "device": self.device.address,
            "interfaces": self.device.interface_names,
            "from_driver": self.device.driver,
            "to_driver": self.target_driver,
            "refusals": [asdict(r) for r in self.refusals],
            "blocking": [r.reason for r in self.blocking],
            "warnings": self.warnings,
            "writes": [asdict(w) for w in self.writes],
            "nothing_to_do": self.nothing_to_do,
        }


def interface_refusals(
    host: Host, net: NetState, env: dict[str, str], device: PciDevice,
    other: NetState | None = None,
) -> list[Refusal]:
    """Why taking this device away from the kernel would break something. `net` reads this
    namespace, `other` the namespace of interfaces found with --netns."""
    refusals = []
    names = [i.name for i in device.interfaces if i.netns is None]
    for name in sorted(ssh_interfaces(host, net, env, names)):
        refusals.append(Refusal(f"{name} carries the current SSH session; binding it would "
                                f"cut this machine off"))
    for iface in device.interfaces:
        state = other if iface.netns is not None and other is not None else net
        if iface.master is not None:
            refusals.append(Refusal(
                f"{iface.name} is a {iface.master_kind} member of {iface.master}; remove it "
                f"first (ip link set {iface.name} nomaster)"))
        addrs = state.addresses(iface.name)
        if addrs:
            refusals.append(Refusal(
                f"{iface.name} has addresses ({', '.join(addrs)}); remove them or use --force",
                overridable=True))
        routes = state.routes(iface.name)
        if routes:
            refusals.append(Refusal(
                f"{iface.name} has routes ({', '.join(routes)}); remove them or use --force",
                overridable=True))
        if iface.up:
            refusals.append(Refusal(
                f"{iface.name} is up; 'ip link set {iface.name} down' or use --force",
                overridable=True))
    return refusals


def driver_loaded(host: Host, driver: str) -> bool:
    return host.exists(f"{PCI_DRIVERS}/{driver}")


def iommu_refusals(host: Host, device: PciDevice, noiommu: bool) -> tuple[list[Refusal], list[Write]]:
    refusals: list[Refusal] = []
    writes: list[Write] = []
    if device.iommu_group is None:
        if not noiommu:
            refusals.append(Refusal(
                f"{device.address} has no IOMMU group (IOMMU off or absent): enable it with "
                f"intel_iommu=on or amd_iommu=on, or opt in to unsafe no-IOMMU mode with "
                f"--noiommu (DMA then goes unchecked)"))
        elif not host.exists(NOIOMMU_PARAM):
            refusals.append(Refusal(
                "--noiommu asked, but this kernel's vfio has no no-IOMMU mode "
                "(needs CONFIG_VFIO_NOIOMMU)"))
        elif host.read_or(NOIOMMU_PARAM, "N") not in ("Y", "1"):
            writes.append(Write(NOIOMMU_PARAM, "1"))
        return refusals, writes
    members = host.listdir(f"/sys/kernel/iommu_groups/{device.iommu_group}/devices")
    for other in members:
        if other == device.address:
            continue
        peer = read_device(host, other)
        if peer.driver is not None and peer.driver not in VFIO_GROUP_OK:
            ifs = f", interface {', '.join(peer.interface_names)}" if peer.interfaces else ""
            refusals.append(Refusal(
                f"IOMMU group {device.iommu_group} also holds {other} (driver {peer.driver}"
                f"{ifs}); vfio needs every device of a group unbound or on vfio-pci: "
                f"first 'fastpath dpdk unbind {other}'"))
    return refusals, writes


def load_bindings(host: Host) -> dict[str, Any]:
    try:
        return dict(json.loads(host.path(BINDINGS).read_text()))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FastpathError(f"cannot read {BINDINGS}: {exc}; fix or delete it") from exc


def _save_binding(host: Host, bdf: str, record: dict[str, Any] | None) -> None:
    path = host.path(BINDINGS)
    with locked(path):
        data = load_bindings(host)
        if record is None:
            data.pop(bdf, None)
        else:
            data[bdf] = record
        write_json(path, data, sort_keys=True)


def _other_net(links: Links | None, other: NetState | None) -> NetState | None:
    if other is not None or links is None:
        return other
    return NetlinkState(links.netns)


def _warn_if_leaving(plan: Plan) -> None:
    for iface in plan.device.interfaces:
        if iface.netns is not None:
            plan.warnings.append(
                f"{iface.name} leaves namespace {iface.netns} for good: after 'fastpath dpdk "
                f"restore' the kernel makes the interface anew in the root namespace")


def plan_bind(
    dev: str,
    driver: str,
    *,
    host: Host = REAL_HOST,
    net: NetState | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
    noiommu: bool = False,
    links: Links | None = None,
    other: NetState | None = None,
) -> Plan:
    """`links`: also look DEV up in that namespace; `other` reads its addresses and routes."""
    if driver not in DPDK_DRIVERS:
        raise FastpathError(f"unknown driver {driver!r}: choose {' or '.join(DPDK_DRIVERS)}")
    device = resolve(host, dev, links)
    plan = Plan("bind", device, driver, forced=force)
    if device.driver == driver:
        plan.nothing_to_do = True
        return plan
    net = net if net is not None else NetlinkState()
    other = _other_net(links, other)
    _warn_if_leaving(plan)
    env = dict(os.environ) if env is None else env
    if not device.is_network:
        plan.warnings.append(f"{device.address} is a {device.class_name} device, not a NIC")
    if not driver_loaded(host, driver):
        module = driver.replace("-", "_")
        need = "CONFIG_VFIO_PCI" if driver == "vfio-pci" else "CONFIG_UIO_PCI_GENERIC"
        plan.refusals.append(Refusal(
            f"{driver} is not loaded: run 'modprobe {module}' (the kernel needs {need})"))
    if driver == "vfio-pci":
        if not host.exists("/dev/vfio/vfio") and driver_loaded(host, driver):
            plan.refusals.append(Refusal("/dev/vfio/vfio is missing: vfio is not usable here"))
        refusals, writes = iommu_refusals(host, device, noiommu)
        plan.refusals += refusals
        plan.writes += writes
    else:
        plan.warnings.append("uio_pci_generic gives the device unchecked DMA (no IOMMU)")
    plan.refusals += interface_refusals(host, net, env, device, other)
    base = f"{PCI_DEVICES}/{device.address}"
    plan.writes.append(Write(f"{base}/driver_override", driver))
    if device.driver is not None:
        plan.writes.append(Write(f"{PCI_DRIVERS}/{device.driver}/unbind", device.address))
    plan.writes.append(Write("/sys/bus/pci/drivers_probe", device.address))
    return plan


def plan_unbind(
    dev: str,
    *,
    host: Host = REAL_HOST,
    net: NetState | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
    links: Links | None = None,
    other: NetState | None = None,
) -> Plan:
    device = resolve(host, dev, links)
    plan = Plan("unbind", device, None, forced=force)
    if device.driver is None:
        plan.nothing_to_do = True
        return plan
    net = net if net is not None else NetlinkState()
    other = _other_net(links, other)
    _warn_if_leaving(plan)
    env = dict(os.environ) if env is None else env
    plan.refusals += interface_refusals(host, net, env, device, other)
    plan.writes.append(Write(f"{PCI_DRIVERS}/{device.driver}/unbind", device.address))
    return plan


def plan_restore(dev: str, *, host: Host = REAL_HOST) -> Plan:
    device = resolve(host, dev)
    record = load_bindings(host).get(device.address)
    original = record.get("original_driver") if record else None
    plan = Plan("restore", device, original)
    if record is None:
        raise FastpathError(
            f"fastpath has no record of changing {device.address}'s driver, so there is "
            f"nothing to restore; to let the kernel choose: "
            f"echo {device.address} > /sys/bus/pci/drivers_probe"
        )
    if device.driver == original and original is not None:
        plan.nothing_to_do = True
        return plan
    base = f"{PCI_DEVICES}/{device.address}"
    if original is not None and not driver_loaded(host, original):
        plan.refusals.append(Refusal(
            f"{device.address}'s original driver {original} is not loaded: "
            f"modprobe {original.replace('-', '_')}"))
    # An empty override ("\n") hands the choice back to the kernel's normal matching.
    plan.writes.append(Write(f"{base}/driver_override", "\n"))
    if device.driver is not None:
        plan.writes.append(Write(f"{PCI_DRIVERS}/{device.driver}/unbind", device.address))
    if original is not None:
        plan.writes.append(Write(f"{PCI_DRIVERS}/{original}/bind", device.address))
    return plan


def apply(plan: Plan, host: Host = REAL_HOST) -> PciDevice:
    """Carry out a checked plan; verify the driver link; record what to restore."""
    if plan.nothing_to_do:
        return plan.device
    if plan.blocking:
        raise FastpathError(
            f"refusing to {plan.action} {plan.device.address}: "
            + "; ".join(r.reason for r in plan.blocking)
        )
    bdf = plan.device.address
    previous = load_bindings(host).get(bdf)
    for w in plan.writes:
        try:
            host.write(w.path, w.value)
        except OSError as exc:
            _rollback(host, plan)
            raise FastpathError(
                f"writing {w.value.strip()!r} to {w.path} failed ({exc.strerror}); "
                f"put {bdf} back on {plan.device.driver or 'no driver'}; see dmesg for why"
            ) from exc
    after = read_device(host, bdf)
    if after.driver != plan.target_driver:
        _rollback(host, plan)
        raise FastpathError(
            f"{bdf} ended on {after.driver or 'no driver'} instead of "
            f"{plan.target_driver or 'no driver'}; put it back on "
            f"{plan.device.driver or 'no driver'}; see dmesg for why"
        )
    if plan.action == "restore":
        _save_binding(host, bdf, None)
    else:
        original = previous["original_driver"] if previous else plan.device.driver
        _save_binding(host, bdf, {
            "original_driver": original,
            "interfaces": previous["interfaces"] if previous else plan.device.interface_names,
            "driver": plan.target_driver,
        })
    return after


def _rollback(host: Host, plan: Plan) -> None:
    """Best effort: return the device to the driver it had before `plan` started."""
    bdf = plan.device.address
    base = f"{PCI_DEVICES}/{bdf}"
    current = host.link_name(f"{base}/driver")
    steps = [Write(f"{base}/driver_override", "\n")]
    if current is not None and current != plan.device.driver:
        steps.append(Write(f"{PCI_DRIVERS}/{current}/unbind", bdf))
    if plan.device.driver is not None and current != plan.device.driver:
        steps.append(Write(f"{PCI_DRIVERS}/{plan.device.driver}/bind", bdf))
    for w in steps:
        try:
            host.write(w.path, w.value)
        except OSError:
            continue
