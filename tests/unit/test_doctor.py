"""fastpath doctor without privileges: the /proc and /sys probes run against fake trees, the
runner and the report against injected rows, and the io_uring ABI constants against the
system headers (the bpf(2) ones are tests/unit/test_bpf_abi.py's)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from fastpath import doctor
from fastpath.doctor import Check, Status
from fastpath.doctor import cli as doctor_cli
from fastpath.doctor import dpdk as doctor_dpdk
from fastpath.doctor import session as doctor_session
from fastpath.doctor import uring as doctor_uring
from fastpath.errors import FastpathError
from fastpath.uring import abi, structs

RELEASE = "6.18.44-fc-v669"


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def mkdir(root: Path, path: str) -> Path:
    target = root / path.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    return target


def symlink(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    write(tmp_path, "/proc/sys/kernel/osrelease", RELEASE + "\n")
    write(tmp_path, "/proc/mounts", "proc /proc proc rw 0 0\n")
    return tmp_path


# --- pure parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.18.44-fc-v669", (6, 18, 44)), ("5.15.0-91-generic", (5, 15, 0)), ("6.1", (6, 1, 0))],
)
def test_parse_kernel_version(release: str, version: tuple[int, int, int]) -> None:
    assert doctor.parse_kernel_version(release) == version


def test_parse_kernel_version_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        doctor.parse_kernel_version("custom")


def test_parse_capabilities_reads_capeff_bits() -> None:
    # This VM's mask: everything but CAP_SYS_RESOURCE (bit 24).
    mask, caps = doctor.parse_capabilities("CapPrm:\t0\nCapEff:\t000001fffeffffff\n")
    assert mask == 0x1FFFEFFFFFF
    assert caps["CAP_SYS_ADMIN"] and caps["CAP_NET_ADMIN"] and caps["CAP_BPF"]
    assert not caps["CAP_SYS_RESOURCE"]


# --- privileges and kernel ---------------------------------------------------------------


def test_privileges_ok_for_root(fake_root: Path) -> None:
    write(fake_root, "/proc/self/status", "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n")
    row = doctor.probe_privileges(fake_root)
    assert row.status is Status.OK
    assert row.data["euid"] == 0
    assert "CAP_BPF" in row.detail


def test_privileges_fail_without_net_admin(fake_root: Path) -> None:
    mask = (1 << 21) | (1 << 39)  # SYS_ADMIN and BPF only
    write(fake_root, "/proc/self/status", f"Uid:\t1000\t1000\t1000\t1000\nCapEff:\t{mask:016x}\n")
    row = doctor.probe_privileges(fake_root)
    assert row.status is Status.FAIL
    assert "CAP_NET_ADMIN" in row.detail and "uid 1000" in row.detail
    assert row.fix is not None and "root" in row.fix


def test_privileges_accept_sys_admin_in_place_of_cap_bpf(fake_root: Path) -> None:
    mask = (1 << 21) | (1 << 12)
    write(fake_root, "/proc/self/status", f"Uid:\t0\t0\t0\t0\nCapEff:\t{mask:016x}\n")
    row = doctor.probe_privileges(fake_root)
    assert row.status is Status.OK
    assert "no CAP_BPF" in row.detail


@pytest.mark.parametrize(
    ("release", "status", "words"),
    [
        ("6.18.44-fc-v669", Status.OK, "6.0"),
        ("5.15.0-91-generic", Status.WARN, "SYN-cookie"),
        ("5.10.0-26-amd64", Status.FAIL, "older than 5.15"),
    ],
)
def test_kernel_version_thresholds(fake_root: Path, release: str, status: Status, words: str) -> None:
    write(fake_root, "/proc/sys/kernel/osrelease", release)
    row = doctor.probe_kernel(fake_root)
    assert row.status is status
    assert words in row.detail
    assert row.data["release"] == release


# --- BPF memory limits -------------------------------------------------------------------

MIB = 1 << 20
NO_SYS_RESOURCE = "Uid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n"  # this VM: all but bit 24
ALL_CAPS = "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n"


@pytest.mark.parametrize(
    ("release", "status_text", "rlimit", "status", "words"),
    [
        ("5.10.0-26-amd64", NO_SYS_RESOURCE, (8 * MIB, 8 * MIB), Status.WARN, "counts BPF maps against it"),
        ("5.10.0-26-amd64", ALL_CAPS, (8 * MIB, 8 * MIB), Status.OK, "raises it with CAP_SYS_RESOURCE"),
        ("5.10.0-26-amd64", NO_SYS_RESOURCE, (8 * MIB, -1), Status.OK, "up to the unlimited hard limit"),
        ("5.10.0-26-amd64", NO_SYS_RESOURCE, (-1, -1), Status.OK, "enough for fastpath's maps"),
        ("5.10.0-26-amd64", NO_SYS_RESOURCE, (64 * MIB, 64 * MIB), Status.OK, "enough for fastpath's maps"),
        (
            "5.11.0",
            NO_SYS_RESOURCE,
            (64 << 10, 64 << 10),
            Status.OK,
            "kernel 5.11 charges BPF memory to memcg",
        ),
        (RELEASE, NO_SYS_RESOURCE, (8 * MIB, 8 * MIB), Status.OK, "kernel 6.18 charges BPF memory to memcg"),
    ],
)
def test_bpf_memlock_depends_on_kernel_limit_and_capability(
    fake_root: Path, release: str, status_text: str, rlimit: tuple[int, int], status: Status, words: str
) -> None:
    write(fake_root, "/proc/self/status", status_text)
    row = doctor.probe_bpf_memlock(fake_root, release, rlimit)
    assert row.status is status, row.detail
    assert words in row.detail
    assert row.data["memlock_soft"] == rlimit[0] and row.data["memlock_hard"] == rlimit[1]
    assert row.data["cap_sys_resource"] is ("ffffffffff" in status_text)
    if status is Status.WARN:
        assert row.fix is not None and "ulimit -l unlimited" in row.fix and "CAP_SYS_RESOURCE" in row.fix


def test_bpf_memlock_message_states_the_numbers(fake_root: Path) -> None:
    write(fake_root, "/proc/self/status", NO_SYS_RESOURCE)
    row = doctor.probe_bpf_memlock(fake_root, RELEASE, (8 * MIB, 8 * MIB))
    assert row.detail == (
        "RLIMIT_MEMLOCK 8 MiB (hard 8 MiB), CAP_SYS_RESOURCE absent; "
        "kernel 6.18 charges BPF memory to memcg, so the limit does not apply"
    )
    row = doctor.probe_bpf_memlock(fake_root, "5.4.0", (64 << 10, -1))
    assert row.detail.startswith("RLIMIT_MEMLOCK 64 KiB (hard unlimited), CAP_SYS_RESOURCE absent; ")


def test_bpf_memlock_reads_release_and_status_from_root(fake_root: Path) -> None:
    # No status file: the capability is unknown, and an old kernel then warns.
    write(fake_root, "/proc/sys/kernel/osrelease", "5.4.0-150-generic\n")
    row = doctor.probe_bpf_memlock(fake_root, rlimit=(8 * MIB, 8 * MIB))
    assert row.status is Status.WARN
    assert "CAP_SYS_RESOURCE unknown" in row.detail and "kernel 5.4 (< 5.11)" in row.detail
    assert row.data["release"] == "5.4.0-150-generic" and row.data["cap_sys_resource"] is None
    write(fake_root, "/proc/self/status", ALL_CAPS)
    assert doctor.probe_bpf_memlock(fake_root, rlimit=(8 * MIB, 8 * MIB)).status is Status.OK


def test_bpf_memlock_defaults_to_this_process(fake_root: Path) -> None:
    import resource

    write(fake_root, "/proc/self/status", NO_SYS_RESOURCE)
    row = doctor.probe_bpf_memlock(fake_root)
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert (row.data["memlock_soft"], row.data["memlock_hard"]) == (soft, hard)
    assert row.status is Status.OK  # the fake root's kernel is 6.18


# --- bpffs, BTF, headers -----------------------------------------------------------------


def test_bpffs_mounted_and_writable(fake_root: Path) -> None:
    write(fake_root, "/proc/mounts", "bpf /sys/fs/bpf bpf rw,relatime 0 0\n")
    mkdir(fake_root, "/sys/fs/bpf")
    row = doctor.probe_bpffs(fake_root)
    assert row.status is Status.OK
    assert list((fake_root / "sys/fs/bpf").iterdir()) == []  # the probe directory is gone


def test_bpffs_missing_fails_with_mount_fix(fake_root: Path) -> None:
    write(fake_root, "/proc/mounts", "sysfs /sys sysfs rw 0 0\n")
    row = doctor.probe_bpffs(fake_root)
    assert row.status is Status.FAIL
    assert row.fix is not None and "mount -t bpf bpf /sys/fs/bpf" in row.fix


def test_bpffs_wrong_fstype_is_named(fake_root: Path) -> None:
    write(fake_root, "/proc/mounts", "tmpfs /sys/fs/bpf tmpfs rw 0 0\n")
    row = doctor.probe_bpffs(fake_root)
    assert row.status is Status.FAIL
    assert "tmpfs" in row.detail


def test_btf_present(fake_root: Path) -> None:
    (mkdir(fake_root, "/sys/kernel/btf") / "vmlinux").write_bytes(b"\x9f\xeb\x01\x00" + bytes(60))
    assert doctor.probe_btf(fake_root).status is Status.OK


def test_btf_missing_or_garbage_warns(fake_root: Path) -> None:
    assert doctor.probe_btf(fake_root).status is Status.WARN
    (mkdir(fake_root, "/sys/kernel/btf") / "vmlinux").write_bytes(b"ELF")
    row = doctor.probe_btf(fake_root)
    assert row.status is Status.WARN and "magic" in row.detail
    assert row.fix is not None and "CONFIG_DEBUG_INFO_BTF" in row.fix


def _headers(root: Path, name: str, uts: str) -> None:
    write(root, f"/usr/src/{name}/include/generated/utsrelease.h", f'#define UTS_RELEASE "{uts}"\n')
    write(root, f"/usr/src/{name}/Makefile", "")


def test_headers_stand_in_symlink_warns_and_explains(fake_root: Path) -> None:
    _headers(fake_root, "linux-headers-6.1.0-56-amd64", "6.1.0-56-amd64")
    symlink(fake_root, f"/lib/modules/{RELEASE}/build", "/usr/src/linux-headers-6.1.0-56-amd64")
    row = doctor.probe_kernel_headers(fake_root)
    assert row.status is Status.WARN
    assert row.data["stand_in"] is True
    assert row.data["headers_release"] == "6.1.0-56-amd64"
    assert row.data["links_to"] == "/usr/src/linux-headers-6.1.0-56-amd64"
    assert "stand-in" in row.detail and "bcc compiles" in row.detail
    assert row.fix is not None and RELEASE in row.fix


def test_headers_matching_release_ok(fake_root: Path) -> None:
    _headers(fake_root, f"linux-headers-{RELEASE}", RELEASE)
    symlink(fake_root, f"/lib/modules/{RELEASE}/build", f"../../../usr/src/linux-headers-{RELEASE}")
    row = doctor.probe_kernel_headers(fake_root)
    assert row.status is Status.OK
    assert row.data["stand_in"] is False


def test_headers_missing_fails_and_dangling_link_is_named(fake_root: Path) -> None:
    row = doctor.probe_kernel_headers(fake_root)
    assert row.status is Status.FAIL
    assert row.fix is not None and "setup-host.sh" in row.fix
    symlink(fake_root, f"/lib/modules/{RELEASE}/build", "/usr/src/gone")
    row = doctor.probe_kernel_headers(fake_root)
    assert row.status is Status.FAIL and "dangling" in row.detail


def test_headers_missing_but_kheaders_ok(fake_root: Path) -> None:
    write(fake_root, "/sys/kernel/kheaders.tar.xz", "")
    assert doctor.probe_kernel_headers(fake_root).status is Status.OK


# --- hugepages ---------------------------------------------------------------------------


def _hugepages(root: Path, base: str, pools: dict[str, tuple[int, int]]) -> None:
    for size, (total, free) in pools.items():
        write(root, f"{base}/hugepages-{size}/nr_hugepages", f"{total}\n")
        write(root, f"{base}/hugepages-{size}/free_hugepages", f"{free}\n")


def test_hugepages_per_size_and_node(fake_root: Path) -> None:
    _hugepages(fake_root, "/sys/kernel/mm/hugepages", {"2048kB": (512, 500), "1048576kB": (0, 0)})
    _hugepages(fake_root, "/sys/devices/system/node/node0/hugepages", {"2048kB": (256, 250)})
    _hugepages(fake_root, "/sys/devices/system/node/node1/hugepages", {"2048kB": (256, 250)})
    write(fake_root, "/proc/mounts", "nodev /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n")
    row = doctor.probe_hugepages(fake_root)
    assert row.status is Status.OK
    assert row.data["sizes"]["2048kB"] == {"total": 512, "free": 500}
    assert row.data["nodes"]["node1"]["2048kB"] == {"total": 256, "free": 250}
    assert row.data["hugetlbfs"] == [{"path": "/dev/hugepages", "options": "rw,pagesize=2M"}]
    assert "node1" in row.detail


def test_hugepages_none_reserved_warns_with_reservation_fix(fake_root: Path) -> None:
    _hugepages(fake_root, "/sys/kernel/mm/hugepages", {"2048kB": (0, 0)})
    write(fake_root, "/proc/mounts", "nodev /dev/hugepages hugetlbfs rw 0 0\n")
    row = doctor.probe_hugepages(fake_root)
    assert row.status is Status.WARN
    assert row.fix is not None and "nr_hugepages" in row.fix


def test_hugepages_all_in_use_or_unmounted_warn(fake_root: Path) -> None:
    _hugepages(fake_root, "/sys/kernel/mm/hugepages", {"2048kB": (64, 0)})
    write(fake_root, "/proc/mounts", "nodev /dev/hugepages hugetlbfs rw 0 0\n")
    assert "in use" in doctor.probe_hugepages(fake_root).detail
    _hugepages(fake_root, "/sys/kernel/mm/hugepages", {"1048576kB": (2, 2)})
    write(fake_root, "/proc/mounts", "")
    row = doctor.probe_hugepages(fake_root)
    assert row.status is Status.WARN
    assert row.fix is not None and "hugetlbfs" in row.fix


# --- VFIO, NICs ----------------------------------------------------------------------------


def test_vfio_absent_on_a_kernel_without_modules(fake_root: Path) -> None:
    mkdir(fake_root, "/sys/kernel/iommu_groups")
    mkdir(fake_root, "/sys/bus/pci/drivers/virtio-pci")
    row = doctor.probe_vfio(fake_root)
    assert row.status is Status.WARN
    assert "this kernel has no VFIO/UIO: DPDK can use only virtual devices" in row.detail
    assert "net_af_packet" in row.detail and "net_af_xdp" in row.detail
    assert row.fix is not None and "CONFIG_VFIO_PCI=y" in row.fix and "cannot load" in row.fix
    assert row.data["iommu_groups"] == 0 and row.data["dev_vfio"] is None


def test_vfio_absent_with_modules_suggests_modprobe(fake_root: Path) -> None:
    write(fake_root, "/proc/modules", "")
    row = doctor.probe_vfio(fake_root)
    assert row.fix is not None and row.fix.startswith("modprobe vfio-pci")


def test_vfio_present_with_iommu_ok(fake_root: Path) -> None:
    for group in ("0", "1", "2"):
        mkdir(fake_root, f"/sys/kernel/iommu_groups/{group}")
    mkdir(fake_root, "/sys/bus/pci/drivers/vfio-pci")
    write(fake_root, "/dev/vfio/vfio", "")
    row = doctor.probe_vfio(fake_root)
    assert row.status is Status.OK
    assert row.data["iommu_groups"] == 3 and row.data["dev_vfio"] == ["vfio"]


def test_vfio_without_iommu_or_with_only_uio_warns(fake_root: Path) -> None:
    mkdir(fake_root, "/sys/bus/pci/drivers/vfio-pci")
    assert "no IOMMU groups" in doctor.probe_vfio(fake_root).detail
    write(fake_root, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n")
    assert "no-IOMMU" in doctor.probe_vfio(fake_root).detail
    (fake_root / "sys/bus/pci/drivers/vfio-pci").rmdir()
    mkdir(fake_root, "/sys/bus/pci/drivers/uio_pci_generic")
    row = doctor.probe_vfio(fake_root)
    assert row.status is Status.WARN and "uio_pci_generic" in row.detail


def _pci(
    root: Path, addr: str, cls: str, driver: str | None, netdev: str | None, *, nested: bool = False
) -> None:
    dev = mkdir(root, f"/sys/bus/pci/devices/{addr}")
    write(root, f"/sys/bus/pci/devices/{addr}/class", cls + "\n")
    write(root, f"/sys/bus/pci/devices/{addr}/vendor", "0x1af4\n")
    write(root, f"/sys/bus/pci/devices/{addr}/device", "0x1000\n")
    if driver:
        mkdir(root, f"/sys/bus/pci/drivers/{driver}")
        (dev / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
    if netdev:
        # As in sysfs: the interface's directory sits below the PCI function (a virtio NIC
        # puts a virtioN device between them), /sys/class/net links to it, and its
        # `device` link points back at its parent.
        parent = f"/sys/bus/pci/devices/{addr}{'/virtio0' if nested else ''}"
        iface = mkdir(root, f"{parent}/net/{netdev}")
        (iface / "device").symlink_to(root / parent.lstrip("/"))
        mkdir(root, "/sys/class/net")
        (root / "sys/class/net" / netdev).symlink_to(iface)


ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def test_pci_nics_none_warns(fake_root: Path) -> None:
    _pci(fake_root, "0000:00:00.0", "0x060000", None, None)
    row = doctor.probe_pci_nics(fake_root)
    assert row.status is Status.WARN and row.data["nics"] == []


def test_pci_nic_that_carries_the_default_route_warns(fake_root: Path) -> None:
    _pci(fake_root, "0000:00:03.0", "0x020000", "virtio-pci", "eth0", nested=True)
    write(
        fake_root,
        "/proc/net/route",
        ROUTE_HEADER + "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
    )
    row = doctor.probe_pci_nics(fake_root)
    assert row.status is Status.WARN
    assert row.data["nics"][0]["netdevs"] == ["eth0"]
    assert row.data["nics"][0]["driver"] == "virtio-pci"
    assert row.fix is not None and "cut this machine off" in row.fix


def test_pci_spare_nic_ok(fake_root: Path) -> None:
    _pci(fake_root, "0000:00:03.0", "0x020000", "virtio-pci", "eth0", nested=True)
    _pci(fake_root, "0000:00:04.0", "0x020000", "ixgbe", "eth1")
    write(
        fake_root,
        "/proc/net/ipv6_route",
        "0" * 32 + " 00 " + "0" * 32 + " 00 fe800000000000000000000000000001 00000400 "
        "00000001 00000000 00000003 eth0\n",
    )
    row = doctor.probe_pci_nics(fake_root)
    assert row.status is Status.OK
    assert [n["default_route"] for n in row.data["nics"]] == [True, False]


# --- DPDK, liburing, IPVS, io_uring sysctl -------------------------------------------------


def test_dpdk_pmds_listed(tmp_path: Path) -> None:
    pmds = mkdir(tmp_path, "/dpdk/pmds-23.0")
    for name in (
        "librte_net_af_packet.so",
        "librte_net_af_packet.so.23",
        "librte_net_null.so.23.0",
        "librte_net_af_xdp.so",
        "librte_bus_pci.so",
        "librte_crypto_null.so",
    ):
        (pmds / name).write_text("")
    row = doctor.probe_dpdk_pmds(tmp_path)
    assert row.status is Status.OK
    assert row.data["net"] == ["af_packet", "af_xdp", "null"]


def test_dpdk_pmds_without_socket_pmds_warns_and_missing_dir_fails(tmp_path: Path) -> None:
    (mkdir(tmp_path, "/dpdk/pmds-23.0") / "librte_net_ixgbe.so").write_text("")
    assert doctor.probe_dpdk_pmds(tmp_path).status is Status.WARN
    assert doctor.probe_dpdk_pmds(tmp_path / "nowhere").status is Status.FAIL


@pytest.mark.parametrize(
    ("version", "status"), [("22.11.11", Status.OK), ("21.11.3", Status.WARN), (None, Status.FAIL)]
)
def test_dpdk_version(monkeypatch: pytest.MonkeyPatch, version: str | None, status: Status) -> None:
    monkeypatch.setattr(doctor_dpdk, "_pkg_config", lambda *args: version)
    row = doctor.probe_dpdk()
    assert row.status is status
    if status is not Status.FAIL:
        assert row.data["version"] == version


def test_liburing_missing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_uring, "_pkg_config", lambda *args: None)
    row = doctor.probe_liburing()
    assert row.status is Status.FAIL and row.fix is not None and "liburing-dev" in row.fix


def test_liburing_reports_ffi_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("liburing.so.2.5", "liburing-ffi.so.2.5"):
        (tmp_path / name).write_text("")
    answers = {"--modversion": "2.5", "--variable=libdir": str(tmp_path)}
    monkeypatch.setattr(doctor_uring, "_pkg_config", lambda flag, pkg: answers[flag])
    row = doctor.probe_liburing()
    assert row.status is Status.OK
    assert row.data["ffi"] == ["liburing-ffi.so.2.5"]


def test_ipvs_presence(fake_root: Path) -> None:
    row = doctor.probe_ipvs(fake_root)
    assert row.status is Status.WARN and "IPVS" in row.detail
    write(fake_root, "/proc/net/ip_vs", "IP Virtual Server version 1.2.1\n")
    assert doctor.probe_ipvs(fake_root).status is Status.OK


def test_io_uring_disabled_sysctl_fails_before_any_syscall(fake_root: Path) -> None:
    write(fake_root, "/proc/sys/kernel/io_uring_disabled", "2\n")
    row = doctor.probe_io_uring(fake_root)
    assert row.status is Status.FAIL
    assert row.fix == "sysctl -w kernel.io_uring_disabled=0"


# --- flood engine and veth peer programs ---------------------------------------------------


@pytest.fixture
def flood_host(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """What the kernel and the PATH answer, chosen by the test.

    Only `live_frames_refused` (the kernel's answer) and `packet_engine_missing` (whether a packet
    socket opens) are replaced: one machine can show only one answer, and this checks how the row
    reads for each. `choose_engine` and its $FASTPATH_FLOOD_ENGINE handling run for real.
    """
    from fastpath.bpf import testrun

    host: dict[str, str | None] = {"refused": None, "missing": None}
    monkeypatch.setattr(testrun, "live_frames_refused", lambda ifindex=1: host["refused"])
    monkeypatch.setattr(testrun, "packet_engine_missing", lambda: host["missing"])
    monkeypatch.delenv(testrun.ENGINE_ENV, raising=False)
    return host


EPERM_REASON = "BPF_PROG_TEST_RUN with live frames failed: Operation not permitted"


def test_live_frames_working_picks_the_live_engine(flood_host: dict[str, str | None]) -> None:
    row = doctor.probe_live_frames()
    assert row.status is Status.OK
    assert row.detail == "live frames work; flood engine: live"
    assert row.data["engine"] == "live" and row.data["live_frames_refused"] is None


def test_live_frames_refused_warns_and_falls_back_to_packet(flood_host: dict[str, str | None]) -> None:
    flood_host["refused"] = EPERM_REASON
    row = doctor.probe_live_frames()
    assert row.status is Status.WARN
    assert row.detail == f"live frames refused ({EPERM_REASON}); flood engine: packet (AF_PACKET, sendmmsg)"
    assert row.data["engine"] == "packet" and row.fix


def test_engine_env_packet_is_honoured_where_live_frames_work(
    flood_host: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTPATH_FLOOD_ENGINE", "packet")
    row = doctor.probe_live_frames()
    assert row.status is Status.OK
    assert row.detail == (
        "live frames work; flood engine: packet (AF_PACKET, sendmmsg) (FASTPATH_FLOOD_ENGINE=packet)"
    )
    assert row.data["engine"] == "packet"


def test_no_flood_engine_at_all_fails(flood_host: dict[str, str | None]) -> None:
    flood_host["refused"] = EPERM_REASON
    flood_host["missing"] = "no AF_PACKET socket: Operation not permitted"
    row = doctor.probe_live_frames()
    assert row.status is Status.FAIL
    assert "no AF_PACKET socket" in row.detail and EPERM_REASON in row.detail
    assert row.fix == "run as root (CAP_NET_RAW and CAP_BPF)"
    assert row.data["engine"] is None


@pytest.mark.parametrize("engine", ["live", "warp"])
def test_an_engine_env_that_cannot_run_warns_when_auto_would(
    flood_host: dict[str, str | None], monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    flood_host["refused"] = EPERM_REASON
    monkeypatch.setenv("FASTPATH_FLOOD_ENGINE", engine)
    row = doctor.probe_live_frames()
    assert row.status is Status.WARN
    assert f"FASTPATH_FLOOD_ENGINE={engine}: " in row.detail
    assert row.fix is not None and "unset FASTPATH_FLOOD_ENGINE" in row.fix


def _record(run_root: Path, program: str, ifname: str, netns: str | None, member: bool = False) -> None:
    from dataclasses import asdict

    from fastpath.bpf.xdp import Attachment

    att = Attachment(program, ifname, netns, ifindex=7, mode="native", prog_id=42, link_id=43)
    nsdir = run_root / "xdp" / (netns or "root")
    path = nsdir / f"{ifname}.d" / f"{program}.json" if member else nsdir / f"{ifname}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(att)))


def test_veth_peer_programs_are_listed_from_the_state_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fastpath.bpf import state, xdp

    monkeypatch.setattr(state, "RUN_ROOT", tmp_path)
    row = doctor.probe_veth_peers()
    assert row.status is Status.OK and row.detail.startswith("none installed")
    assert row.data["peers"] == []

    _record(tmp_path, "syn_guard", "veth-srv", "lab1-server")
    _record(tmp_path, xdp.PEER_PROGRAM, "veth-cli", "lab1-client")
    _record(tmp_path, xdp.PEER_PROGRAM, "veth0", None)
    _record(tmp_path, "counter", "veth0", None, member=True)
    row = doctor.probe_veth_peers()
    assert row.status is Status.OK
    assert row.detail == (
        "2 pass program(s) on veth peers installed by fastpath: "
        "veth-cli in lab1-client, veth0 in the root namespace"
    )
    assert [p["ifname"] for p in row.data["peers"]] == ["veth-cli", "veth0"]


def test_new_rows_are_registered_in_order() -> None:
    names = list(doctor.PROBES)
    assert names.index("bpffs") < names.index("bpf-memlock") < names.index("btf")
    assert names.index("xdp-test-run") + 1 == names.index("xdp-live-frames")
    assert names.index("xdp-live-frames") + 1 == names.index("veth-peer-programs")


# --- Check, runner, report, CLI ------------------------------------------------------------


def test_non_ok_check_must_name_a_fix() -> None:
    with pytest.raises(ValueError):
        Check("x", Status.WARN, "something", None)
    assert Check("x", Status.OK, "fine").ok


def test_a_probe_that_raises_becomes_a_fail_row() -> None:
    def boom(session: doctor.DoctorSession) -> Check:
        raise RuntimeError("kaboom")

    with doctor.DoctorSession() as session:
        row = doctor.run_probe("boom", boom, session)
    assert row.status is Status.FAIL
    assert "RuntimeError: kaboom" in row.detail
    assert row.fix is not None and "--only boom" in row.fix
    assert row.elapsed_s >= 0


FAKE_ROWS = {
    "alpha": Check("alpha", Status.OK, "fine", data={"n": 1}),
    "beta": Check("beta", Status.WARN, "meh", "do this", {"list": [1, 2]}),
    "gamma": Check("gamma", Status.FAIL, "broken", "do that"),
}


@pytest.fixture
def fake_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    probes = {name: (lambda s, row=row: row) for name, row in FAKE_ROWS.items()}
    monkeypatch.setattr(doctor_cli, "PROBES", probes)
    monkeypatch.setattr(doctor_session, "NETNS_DIR", tmp_path / "netns")


def test_json_report_schema_and_exit_code(fake_probes: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"ok", "summary", "checks", "elapsed_s"}
    assert doc["ok"] is False
    assert doc["summary"] == {"OK": 1, "WARN": 1, "FAIL": 1}
    assert [c["name"] for c in doc["checks"]] == ["alpha", "beta", "gamma"]
    for row in doc["checks"]:
        assert set(row) == {"name", "status", "detail", "fix", "data", "elapsed_s"}
        assert row["status"] in ("OK", "WARN", "FAIL")
        assert isinstance(row["data"], dict)
        assert (row["fix"] is None) == (row["status"] == "OK")
    assert doc["checks"][1]["data"] == {"list": [1, 2]}


def test_exit_zero_without_fail_rows(fake_probes: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--json", "--only", "alpha", "--only", "beta"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and [c["name"] for c in doc["checks"]] == ["alpha", "beta"]


def test_table_output_shows_status_detail_and_fix(
    fake_probes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert doctor.main(["--only", "beta", "--only", "gamma"]) == 1
    captured = capsys.readouterr()
    for word in ("capability", "beta", "WARN", "meh", "do this", "gamma", "FAIL", "do that"):
        assert word in captured.out
    assert "alpha" not in captured.out
    assert "1 WARN, 1 FAIL" in captured.err


def test_unknown_check_is_a_user_error(fake_probes: None) -> None:
    with pytest.raises(FastpathError, match="unknown check nope"):
        doctor.run_checks(["nope"])
    with pytest.raises(SystemExit):
        doctor.main(["--only", "nope"])


def test_register_adds_the_doctor_subcommand() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="fastpath")
    doctor.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", "--json", "--only", "kernel"])
    assert args.func is doctor.handler and args.json and args.only == ["kernel"]


def test_every_registered_probe_has_a_unique_kebab_name() -> None:
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", name) for name in doctor.PROBES)
    assert len(doctor.PROBES) >= 20


# --- constants checked against the system headers ------------------------------------------


def test_syn_packets_parse_as_tcp_syns() -> None:
    scapy = pytest.importorskip("scapy.all")
    for family, ip_layer in ((socket.AF_INET, scapy.IP), (socket.AF_INET6, scapy.IPv6)):
        pkt = scapy.Ether(doctor.syn_packet(family))
        assert pkt.haslayer(ip_layer)
        assert pkt[scapy.TCP].flags == "S" and pkt[scapy.TCP].dport == 80
        assert pkt[scapy.TCP].dataofs == 5 and len(pkt[scapy.TCP].payload) == 0


# The bpf(2) side (union bpf_attr, helper ids) is fastpath/bpf/syscall.py's, checked in
# tests/unit/test_bpf_abi.py. doctor's io_uring probes run on fastpath.uring.rawring, which
# speaks to the kernel directly: the structs and constants it uses are checked here against
# the kernel's own header (the bindings' check is against liburing's, through the shim).
RAW_STRUCTS = {
    "io_uring_params": (structs.IoUringParams, ("sq_off", "cq_off", "features")),
    "io_uring_sqe": (structs.IoUringSqe, ("ioprio", "addr", "user_data", "buf_group")),
    "io_uring_cqe": (structs.IoUringCqe, ("res", "flags")),
    "io_uring_probe": (structs.IoUringProbe, ("ops_len",)),
    "io_uring_probe_op": (structs.IoUringProbeOp, ("flags",)),
    "io_uring_buf": (structs.IoUringBuf, ("len", "bid")),
    "io_uring_buf_reg": (structs.IoUringBufReg, ("ring_entries", "bgid")),
}
RAW_CONSTANTS = (
    "IORING_OFF_SQ_RING", "IORING_OFF_CQ_RING", "IORING_OFF_SQES", "IORING_FEAT_SINGLE_MMAP",
    "IORING_ENTER_GETEVENTS", "IORING_REGISTER_PROBE", "IORING_REGISTER_PBUF_RING",
    "IORING_UNREGISTER_PBUF_RING", "IORING_ACCEPT_MULTISHOT", "IORING_RECV_MULTISHOT",
)  # fmt: skip


def _layout_program(checked_ops: tuple[str, ...]) -> str:
    lines = []
    for c_name, (_, fields) in RAW_STRUCTS.items():
        lines.append(f'printf("{c_name} %zu\\n", sizeof(struct {c_name}));')
        lines += [f'printf("{c_name}.{f} %zu\\n", offsetof(struct {c_name}, {f}));' for f in fields]
    # A buffer ring's tail shares its place with the first buffer's `resv`.
    lines.append('printf("io_uring_buf_ring.tail %zu\\n", offsetof(struct io_uring_buf_ring, tail));')
    lines += [f'printf("{name} %llu\\n", (unsigned long long){name});' for name in RAW_CONSTANTS]
    lines.append('printf("ops");')
    lines += [f'printf(" %d", IORING_OP_{name});' for name in checked_ops]
    body = "\n    ".join(lines)
    return ("#include <stdio.h>\n#include <stddef.h>\n#include <linux/io_uring.h>\n"
            f"int main(void)\n{{\n    {body}\n    printf(\"\\n\");\n    return 0;\n}}\n")


def test_io_uring_abi_matches_the_system_headers(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not Path("/usr/include/linux/io_uring.h").exists():
        pytest.skip("needs a C compiler and linux-libc-dev")
    # PROVIDE_BUFFERS: the legacy way to provide buffers, in doctor's opcode list
    checked = (*abi.ECHO_OPCODES, "PROVIDE_BUFFERS")
    (tmp_path / "layout.c").write_text(_layout_program(checked))
    subprocess.run([cc, "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")], check=True)
    out = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True)
    got = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if not line.startswith("ops"))
    ctypes_layout: dict[str, int] = {}
    for c_name, (mirror, fields) in RAW_STRUCTS.items():
        ctypes_layout[c_name] = ctypes.sizeof(mirror)
        ctypes_layout.update({f"{c_name}.{f}": getattr(mirror, f).offset for f in fields})
    ctypes_layout["io_uring_buf_ring.tail"] = structs.IoUringBuf.resv.offset
    ctypes_layout.update({name: getattr(abi, name) for name in RAW_CONSTANTS})
    assert {k: int(v) for k, v in got.items()} == ctypes_layout
    ops = next(line for line in out.stdout.splitlines() if line.startswith("ops")).split()[1:]
    assert [int(o) for o in ops] == [abi.OP[name] for name in checked]


def test_opcode_names_follow_the_header_enum() -> None:
    header = Path("/usr/include/linux/io_uring.h")
    if not header.exists():
        pytest.skip("needs linux-libc-dev")
    enum = re.search(r"enum io_uring_op \{(.*?)\};", header.read_text(), re.S)
    assert enum is not None
    names = re.findall(r"IORING_OP_(\w+)", enum[1])
    names = [n for n in names if n != "LAST"]
    assert list(abi.OPCODES[: len(names)]) == names


def test_reap_only_touches_dead_doctor_namespaces(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netns_dir = mkdir(tmp_path, "/netns")
    for name in (f"fpdoc-{os.getpid()}-abc123", "fpdoc-999999999-abc123", "fpdev-t1"):
        (netns_dir / name).write_text("")
    removed: list[str] = []
    monkeypatch.setattr(doctor_session, "NETNS_DIR", netns_dir)
    monkeypatch.setattr("fastpath.netns.builder.remove_netns", removed.append)
    assert doctor.reap_stale_netns() == ["fpdoc-999999999-abc123"]
    assert removed == ["fpdoc-999999999-abc123"]


def test_a_privilege_refusal_points_at_root() -> None:
    def refused(session: doctor.DoctorSession) -> Check:
        raise PermissionError(1, "Operation not permitted")

    with doctor.DoctorSession() as session:
        row = doctor.run_probe("refused", refused, session)
    assert row.status is Status.FAIL and row.fix == doctor.ROOT_FIX


def test_feature_names_follow_the_header_bits() -> None:
    header = Path("/usr/include/linux/io_uring.h")
    if not header.exists():
        pytest.skip("needs linux-libc-dev")
    bits = re.findall(r"#define IORING_FEAT_(\w+)\s+\(1U << (\d+)\)", header.read_text())
    assert bits
    for name, bit in bits:
        assert abi.FEATURES[int(bit)] == name
