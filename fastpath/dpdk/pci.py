"""PCI network devices as sysfs and netlink describe them: address, ids, class, driver,
IOMMU group, NUMA node, and the kernel interfaces on top with their state (up, bond or
bridge member) and, over netlink, their addresses and routes.

An interface in another network namespace (`--netns NS`) is invisible in our /sys/class/net;
it is found over netlink in NS (its parent device, state, master), its addresses and routes
are read there too, and the PCI device behind it through /sys/bus, which every namespace
shares. All file access goes through one `Host` root, so tests drive a fake sysfs tree.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

PCI_DEVICES = "/sys/bus/pci/devices"
PCI_DRIVERS = "/sys/bus/pci/drivers"
CLASS_NET = "/sys/class/net"
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


def sysfs_bdf(host: Host, name: str) -> str | None:
    dev = host.path(f"{CLASS_NET}/{name}/device")
    return _bdf_of_path(os.path.realpath(dev)) if dev.exists() else None


def interfaces_by_bdf(host: Host, links: Links | None = None) -> dict[str, list[str]]:
    """PCI address -> interface names, from our sysfs and from `links` (another netns)."""
    found: dict[str, list[str]] = {}
    for name in host.listdir(CLASS_NET):
        bdf = sysfs_bdf(host, name)
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
        if links is not None and name in in_links and sysfs_bdf(host, name) != bdf:
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


def driver_loaded(host: Host, driver: str) -> bool:
    return host.exists(f"{PCI_DRIVERS}/{driver}")
