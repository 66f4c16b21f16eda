"""DPDK-side probes: hugepage pools (per size and per NUMA node) and hugetlbfs mounts,
VFIO/UIO drivers and IOMMU groups, PCI NICs and which of them carry the default route, the
DPDK library version and its network poll-mode drivers.

The hugepage, VFIO and NIC probes only read /proc and /sys under `root`, so tests run them
on fake trees.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from fastpath.doctor.checks import (
    ROOT,
    SETUP_HOST,
    Check,
    _fail,
    _has_module_support,
    _kernel_feature_fix,
    _ok,
    _pkg_config,
    _version_tuple,
    _warn,
)
from fastpath.dpdk import devbind, hugepools, pci
from fastpath.dpdk.sysfs import Host


def read_hugepages(root: Path = ROOT) -> dict[str, Any]:
    """Hugepage pools per size, system-wide and per NUMA node, plus hugetlbfs mounts."""
    host = Host(root)

    def pools(node: int | None) -> dict[str, dict[str, int | None]]:
        out = {}
        for kb in hugepools.page_sizes(host, node):
            base = hugepools.pool_dir(kb, node)
            out[f"{kb}kB"] = {
                "total": host.read_int_or(f"{base}/nr_hugepages", None),
                "free": host.read_int_or(f"{base}/free_hugepages", None),
            }
        return out

    nodes = {f"node{n}": pools(n) for n in hugepools.nodes(host)}
    mounts = [{"path": m.path, "options": m.options} for m in host.mounts() if m.fstype == "hugetlbfs"]
    return {"sizes": pools(None), "nodes": nodes, "hugetlbfs": mounts}


def probe_hugepages(root: Path = ROOT) -> Check:
    name = "hugepages"
    data = read_hugepages(root)
    sizes = data["sizes"]
    summary = ", ".join(f"{size}: {p['free']}/{p['total']} free" for size, p in sizes.items())
    per_node = "; ".join(
        f"{node} " + ", ".join(f"{s} {p['free']}/{p['total']}" for s, p in pools.items())
        for node, pools in data["nodes"].items()
    )
    reserve = f"echo 256 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or run {SETUP_HOST})"
    if not sizes:
        return _warn(
            name,
            "no /sys/kernel/mm/hugepages: kernel without CONFIG_HUGETLBFS",
            "boot a kernel with CONFIG_HUGETLBFS=y, or run DPDK with --no-huge",
            **data,
        )
    if not any((p["total"] or 0) > 0 for p in sizes.values()):
        return _warn(name, f"none reserved ({summary})", reserve, **data)
    if not any((p["free"] or 0) > 0 for p in sizes.values()):
        return _warn(
            name,
            f"all reserved pages in use ({summary})",
            "stop the process holding them or reserve more: " + reserve,
            **data,
        )
    if not data["hugetlbfs"]:
        return _warn(
            name,
            f"{summary}, but no hugetlbfs mounted",
            f"mount -t hugetlbfs nodev /dev/hugepages (or run {SETUP_HOST})",
            **data,
        )
    where = ", ".join(m["path"] for m in data["hugetlbfs"])
    node_note = f"; per node: {per_node}" if per_node else ""
    return _ok(name, f"{summary}{node_note}; hugetlbfs at {where}", **data)


def read_vfio(root: Path = ROOT) -> dict[str, Any]:
    host = Host(root)
    drivers = "/sys/bus/pci/drivers"
    noiommu = host.read_or(devbind.NOIOMMU_PARAM, None)
    return {
        "iommu_groups": len(host.listdir("/sys/kernel/iommu_groups")),
        "dev_vfio": host.listdir("/dev/vfio") if host.path("/dev/vfio").is_dir() else None,
        "vfio_pci": host.path(f"{drivers}/vfio-pci").is_dir(),
        "uio_pci_generic": host.path(f"{drivers}/uio_pci_generic").is_dir(),
        "igb_uio": host.path(f"{drivers}/igb_uio").is_dir(),
        "noiommu_mode": noiommu in ("Y", "1"),
        "module_support": _has_module_support(root),
    }


def probe_vfio(root: Path = ROOT) -> Check:
    name = "vfio"
    d = read_vfio(root)
    uio = [drv for drv in ("uio_pci_generic", "igb_uio") if d[drv]]
    iommu_fix = "boot with intel_iommu=on (or amd_iommu=on) iommu=pt"
    if d["vfio_pci"] and d["iommu_groups"] > 0:
        return _ok(name, f"vfio-pci with {d['iommu_groups']} IOMMU groups", **d)
    if d["vfio_pci"] and d["noiommu_mode"]:
        return _warn(name, "vfio-pci in unsafe no-IOMMU mode: DMA is not isolated", iommu_fix, **d)
    if d["vfio_pci"]:
        return _warn(
            name,
            "vfio-pci loaded but no IOMMU groups: it cannot bind devices",
            f"{iommu_fix}, or echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
            **d,
        )
    if uio:
        return _warn(
            name,
            f"no vfio-pci, only {', '.join(uio)}: works, without DMA isolation",
            _kernel_feature_fix(root, ("CONFIG_VFIO_PCI", "vfio-pci")),
            **d,
        )
    return _warn(
        name,
        "this kernel has no VFIO/UIO: DPDK can use only virtual devices "
        "(net_af_packet, net_af_xdp, net_tap, net_memif, ...)",
        _kernel_feature_fix(root, ("CONFIG_VFIO_PCI", "vfio-pci")) + " with an IOMMU, to give "
        "DPDK a physical NIC",
        **d,
    )


def _default_route_ifaces(host: Host) -> set[str]:
    ifaces = set()
    for line in host.read_or("/proc/net/route", "").splitlines()[1:]:
        parts = line.split()
        if len(parts) > 7 and parts[1] == "00000000" and parts[7] == "00000000":
            ifaces.add(parts[0])
    for line in host.read_or("/proc/net/ipv6_route", "").splitlines():
        parts = line.split()
        if len(parts) == 10 and parts[0] == "0" * 32 and parts[1] == "00" and parts[9] != "lo":
            ifaces.add(parts[9])
    return ifaces


def read_pci_nics(root: Path = ROOT) -> list[dict[str, Any]]:
    """PCI functions of class 0x02 (network controller) with driver and kernel interfaces."""
    host = Host(root)
    defaults = _default_route_ifaces(host)
    return [
        {
            "address": dev.address,
            "class": f"0x{dev.class_code}",
            "vendor": f"0x{dev.vendor}",
            "device": f"0x{dev.device}",
            "driver": dev.driver,
            "netdevs": sorted(dev.interface_names),
            "default_route": any(n in defaults for n in dev.interface_names),
        }
        for dev in pci.list_devices(host)
    ]


def probe_pci_nics(root: Path = ROOT) -> Check:
    name = "pci-nics"
    nics = read_pci_nics(root)
    if not nics:
        return _warn(
            name,
            "no PCI network controllers: DPDK has only virtual devices here",
            "add a NIC (or an SR-IOV VF) for DPDK; net_af_packet/net_af_xdp on veth cover development",
            nics=nics,
        )
    desc = ", ".join(
        f"{n['address']} {n['driver'] or 'no driver'}"
        + (
            f" ({', '.join(n['netdevs'])}{', default route' if n['default_route'] else ''})"
            if n["netdevs"]
            else ""
        )
        for n in nics
    )
    spare = [n for n in nics if not n["default_route"]]
    if not spare:
        return _warn(
            name,
            f"{desc}: every NIC carries the default route",
            "binding it to DPDK would cut this machine off the network; add a second "
            "NIC or use net_af_packet/net_af_xdp on veth",
            nics=nics,
        )
    return _ok(name, f"{len(nics)} NIC(s): {desc}", nics=nics)


MIN_DPDK = (22, 11)
WANTED_PMDS = ("af_packet", "af_xdp", "null", "tap", "memif", "ring", "virtio", "vhost")


def probe_dpdk() -> Check:
    name = "dpdk"
    version = _pkg_config("--modversion", "libdpdk")
    if version is None:
        return _fail(name, "pkg-config finds no libdpdk", "apt install dpdk libdpdk-dev")
    data: dict[str, Any] = {"version": version}
    if _version_tuple(version)[:2] < MIN_DPDK:
        return _warn(
            name,
            f"DPDK {version} is older than 22.11 (fastpath's l2fwd targets the 22.11 LTS API)",
            "install DPDK 22.11 or newer",
            **data,
        )
    testpmd = shutil.which("dpdk-testpmd")
    data["testpmd"] = testpmd
    return _ok(name, f"DPDK {version}" + (f", {testpmd}" if testpmd else ""), **data)


def find_pmd_dirs(libdir: Path | None = None) -> list[Path]:
    if libdir is None:
        found = _pkg_config("--variable=libdir", "libdpdk")
        if found is None:
            return []
        libdir = Path(found)
    return sorted((libdir / "dpdk").glob("pmds-*"))


def probe_dpdk_pmds(libdir: Path | None = None) -> Check:
    name = "dpdk-pmds"
    dirs = find_pmd_dirs(libdir)
    if not dirs:
        return _fail(
            name,
            "no DPDK PMD directory (<libdir>/dpdk/pmds-*)",
            "apt install dpdk (the PMDs ship as librte-net-* packages)",
        )
    pmd_dir = dirs[-1]
    net = sorted(
        {m[1] for p in pmd_dir.iterdir() if (m := re.fullmatch(r"librte_net_(\w+?)\.so(\..*)?", p.name))}
    )
    data = {"dir": str(pmd_dir), "net": net}
    virtual = [p for p in WANTED_PMDS if p in net]
    if not {"af_packet", "af_xdp"} & set(net):
        return _warn(
            name,
            f"{pmd_dir}: {len(net)} net PMDs, neither af_packet nor af_xdp",
            "apt install librte-net-af-packet23 librte-net-af-xdp23",
            **data,
        )
    return _ok(name, f"{len(net)} net PMDs in {pmd_dir}; virtual: {', '.join(virtual)}", **data)
