"""Bind PCI NICs to DPDK drivers (vfio-pci, uio_pci_generic) without cutting the machine off.

Before any sysfs write, every refusal is checked and reported together:
- an interface of the device is up, has addresses or routes (overridable with --force);
- an interface is a bond or bridge member (never overridden: leave the bond/bridge first);
- an interface carries the current SSH session (never overridden);
- vfio-pci: the whole IOMMU group must be driverless or on vfio-pci; a device with no IOMMU
  group needs the explicit, unsafe no-IOMMU opt-in;
- the target driver must be loaded.

Binding uses driver_override + drivers_probe, then reads the driver link back. The driver a
device had is kept in /run/fastpath/dpdk/bindings.json so `restore` can return to it. The
devices, their interfaces (here or in the namespace `--netns` names) and their state come
from fastpath.dpdk.pci; all file access goes through one `Host` root, so tests drive a fake
sysfs tree.

The SSH check looks at this namespace's interfaces only: our session's sockets and routes
live here, so an interface of NS carries it only when this namespace routes through NS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fastpath.core.jsonstate import locked, write_json
from fastpath.dpdk.pci import (
    CLASS_NET,
    PCI_DEVICES,
    PCI_DRIVERS,
    Links,
    NetlinkState,
    NetState,
    PciDevice,
    bdf_of_parent,
    driver_loaded,
    normalize_bdf,
    read_device,
    sysfs_bdf,
)
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

NOIOMMU_PARAM = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
BINDINGS = "/run/fastpath/dpdk/bindings.json"
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic")
# Drivers vfio accepts on other devices of the same IOMMU group.
VFIO_GROUP_OK = {"vfio-pci", "pci-stub", "pcieport"}
SSH_PORT = 22


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
    bdf = sysfs_bdf(host, dev)
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


def _check_interfaces(plan: Plan, host: Host, net: NetState | None, env: dict[str, str] | None,
                      links: Links | None, other: NetState | None) -> None:
    """What taking the device from the kernel does to its interfaces: the refusals of
    `interface_refusals`, and a warning for each interface that leaves its namespace. `net`
    reads this namespace (None: over netlink), `other` the one `links` names."""
    for iface in plan.device.interfaces:
        if iface.netns is not None:
            plan.warnings.append(
                f"{iface.name} leaves namespace {iface.netns} for good: after 'fastpath dpdk "
                f"restore' the kernel makes the interface anew in the root namespace")
    plan.refusals += interface_refusals(host, net if net is not None else NetlinkState(),
                                        dict(os.environ) if env is None else env, plan.device,
                                        _other_net(links, other))


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
    _check_interfaces(plan, host, net, env, links, other)
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
    _check_interfaces(plan, host, net, env, links, other)
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
