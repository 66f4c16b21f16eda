"""NIC binding (fastpath.dpdk.devbind) against fake sysfs trees.

Every test here builds a fake /sys (and /proc, /dev) under tmp_path and a `FakeKernel` Host
that answers writes to bind/unbind/drivers_probe the way the kernel's PCI core does. No test
touches the real sysfs or needs privileges.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastpath.cli import main
from fastpath.dpdk import cli as dpdk_cli
from fastpath.dpdk import devbind, pci
from fastpath.dpdk.pci import StaticNetState
from fastpath.dpdk.sysfs import Host
from fastpath.errors import FastpathError

PCI_NET = "0x020000"


@dataclass(frozen=True)
class FakeKernel(Host):
    """A fake sysfs whose bind/unbind/drivers_probe files move the driver link like the
    kernel does. `native` maps a device to the driver the kernel would pick by itself;
    `broken` drivers accept a bind write but never attach; `failing` paths raise EIO."""

    native: dict[str, str] = field(default_factory=dict, compare=False)
    broken: set[str] = field(default_factory=set, compare=False)
    failing: set[str] = field(default_factory=set, compare=False)
    writes: list[tuple[str, str]] = field(default_factory=list, compare=False)

    def write(self, absolute: str | os.PathLike[str], value: str) -> None:
        path = str(absolute)
        if path in self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.writes.append((path, value))
        super().write(path, value)
        m = re.fullmatch(r"/sys/bus/pci/drivers/([^/]+)/(bind|unbind)", path)
        if m:
            drv, op = m.groups()
            if op == "unbind":
                self._set_driver(value.strip(), None)
            elif drv not in self.broken:
                self._set_driver(value.strip(), drv)
        elif path == "/sys/bus/pci/drivers_probe":
            bdf = value.strip()
            override = self.read(f"/sys/bus/pci/devices/{bdf}/driver_override")
            drv = override if override not in ("", "(null)") else self.native.get(bdf)
            if drv and self.exists(f"/sys/bus/pci/drivers/{drv}") and drv not in self.broken:
                self._set_driver(bdf, drv)
        elif path.endswith("/driver_override") and value.strip() == "":
            super().write(path, "(null)")

    def _set_driver(self, bdf: str, drv: str | None) -> None:
        link = self.path(f"/sys/bus/pci/devices/{bdf}/driver")
        if link.is_symlink():
            link.unlink()
        if drv is not None:
            link.symlink_to(self.path(f"/sys/bus/pci/drivers/{drv}"))
        # The network driver owns the interfaces: they vanish when it lets go.
        dev = self.path(f"/sys/bus/pci/devices/{bdf}")
        for nd in dev.glob("net/*"):
            cls = self.path(f"/sys/class/net/{nd.name}")
            if drv != self.native.get(bdf) and cls.is_symlink():
                cls.unlink()
            elif drv == self.native.get(bdf) and not cls.is_symlink():
                cls.symlink_to(nd)


def fake_host(tmp_path: Path, **kw: object) -> FakeKernel:
    root = tmp_path / "root"
    for d in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/class/net",
              "sys/kernel/iommu_groups", "sys/devices/virtual/net", "proc/net", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "sys/bus/pci/drivers_probe").write_text("")
    (root / "proc/net/tcp").write_text("  sl  local_address rem_address   st\n")
    (root / "proc/net/tcp6").write_text("  sl  local_address rem_address   st\n")
    return FakeKernel(root, **kw)  # type: ignore[arg-type]


def add_driver(host: Host, name: str) -> None:
    d = host.path(f"/sys/bus/pci/drivers/{name}")
    d.mkdir(parents=True, exist_ok=True)
    for f in ("bind", "unbind"):
        (d / f).write_text("")
    if name == "vfio-pci":
        host.path("/dev/vfio").mkdir(exist_ok=True)
        host.path("/dev/vfio/vfio").write_text("")


def add_device(
    host: Host,
    bdf: str,
    *,
    driver: str | None,
    group: str | None = None,
    cls: str = PCI_NET,
    ifaces: tuple[str, ...] = (),
    via_virtio: bool = False,
) -> Path:
    dev = host.path(f"/sys/devices/pci0000:00/{bdf}")
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x8086\n")
    (dev / "device").write_text("0x10fb\n")
    (dev / "class").write_text(cls + "\n")
    (dev / "numa_node").write_text("0\n")
    (dev / "driver_override").write_text("(null)\n")
    host.path(f"/sys/bus/pci/devices/{bdf}").symlink_to(dev)
    if driver is not None:
        add_driver(host, driver)
        (dev / "driver").symlink_to(host.path(f"/sys/bus/pci/drivers/{driver}"))
    if group is not None:
        g = host.path(f"/sys/kernel/iommu_groups/{group}/devices")
        g.mkdir(parents=True, exist_ok=True)
        (g / bdf).symlink_to(dev)
        (dev / "iommu_group").symlink_to(host.path(f"/sys/kernel/iommu_groups/{group}"))
    parent = dev
    if via_virtio:
        parent = dev / "virtio3"
        parent.mkdir()
    for name in ifaces:
        nd = parent / "net" / name
        nd.mkdir(parents=True)
        (nd / "flags").write_text("0x1002\n")  # down
        (nd / "device").symlink_to(parent)
        host.path(f"/sys/class/net/{name}").symlink_to(nd)
    return dev


def set_up(host: Host, ifname: str, up: bool = True) -> None:
    host.path(f"/sys/class/net/{ifname}/flags").write_text("0x1003\n" if up else "0x1002\n")


def add_master(host: Host, ifname: str, master: str, kind: str) -> None:
    m = host.path(f"/sys/devices/virtual/net/{master}")
    m.mkdir(parents=True, exist_ok=True)
    if kind == "bond":
        (m / "bonding").mkdir(exist_ok=True)
    if not host.path(f"/sys/class/net/{master}").exists():
        host.path(f"/sys/class/net/{master}").symlink_to(m)
    nd = host.path(f"/sys/class/net/{ifname}")
    (nd / "master").symlink_to(m)
    (nd / ("brport" if kind == "bridge" else "bonding_slave")).mkdir()


def add_virtual_iface(host: Host, name: str) -> None:
    nd = host.path(f"/sys/devices/virtual/net/{name}")
    nd.mkdir(parents=True)
    (nd / "flags").write_text("0x1003\n")
    host.path(f"/sys/class/net/{name}").symlink_to(nd)


NIC = "0000:03:00.0"
NIC2 = "0000:03:00.1"
QUIET = StaticNetState()
NO_SSH: dict[str, str] = {}


@pytest.fixture
def host(tmp_path: Path) -> FakeKernel:
    """Fake tree: one idle Intel NIC (eth1, ixgbe) alone in IOMMU group 7; vfio-pci and
    uio_pci_generic loaded."""
    h = fake_host(tmp_path, native={NIC: "ixgbe"})
    add_driver(h, "vfio-pci")
    add_driver(h, "uio_pci_generic")
    add_device(h, NIC, driver="ixgbe", group="7", ifaces=("eth1",))
    return h


def bind(host: Host, dev: str = NIC, driver: str = "vfio-pci", *, net: StaticNetState = QUIET,
         env: dict[str, str] | None = None, force: bool = False,
         noiommu: bool = False) -> devbind.Plan:
    return devbind.plan_bind(dev, driver, host=host, net=net, env=NO_SSH if env is None else env,
                             force=force, noiommu=noiommu)


# ---------------------------------------------------------------- addresses and lookup


@pytest.mark.parametrize(
    ("text", "want"),
    [("03:00.0", NIC), ("0000:03:00.0", NIC), ("0000:AF:1f.7", "0000:af:1f.7"),
     ("eth0", None), ("03:00.8", None), ("3:00.0", None), ("0000:03:20.0", None)],
)
def test_normalize_bdf(text: str, want: str | None) -> None:
    assert pci.normalize_bdf(text) == want


def test_resolve_by_interface_and_by_address(host: FakeKernel) -> None:
    """Fake sysfs: an interface name and a short PCI address find the same device."""
    assert devbind.resolve(host, "eth1").address == NIC
    dev = devbind.resolve(host, "03:00.0")
    assert dev.address == NIC and dev.driver == "ixgbe" and dev.iommu_group == "7"
    assert dev.interface_names == ["eth1"] and dev.is_network


def test_resolve_walks_through_virtio(tmp_path: Path) -> None:
    """Fake sysfs: a virtio-net interface hangs off virtioN below its PCI function."""
    h = fake_host(tmp_path)
    add_device(h, "0000:00:03.0", driver="virtio-pci", ifaces=("eth0",), via_virtio=True)
    assert devbind.resolve(h, "eth0").address == "0000:00:03.0"
    assert pci.list_devices(h)[0].interface_names == ["eth0"]


def test_resolve_unknown_and_virtual(host: FakeKernel) -> None:
    """Fake sysfs: unknown names and PCI-less interfaces fail with one clear line."""
    add_virtual_iface(host, "veth0")
    with pytest.raises(FastpathError, match="no PCI device or interface named 'nope0'"):
        devbind.resolve(host, "nope0")
    with pytest.raises(FastpathError, match="no PCI device 0000:09:00.0"):
        devbind.resolve(host, "09:00.0")
    with pytest.raises(FastpathError, match="virtual interface.*--vdev af_packet:veth0"):
        devbind.resolve(host, "veth0")


def test_list_devices_network_only(host: FakeKernel) -> None:
    """Fake sysfs: a host bridge is listed only with network_only=False."""
    add_device(host, "0000:00:00.0", driver=None, cls="0x060000")
    assert [d.address for d in pci.list_devices(host)] == [NIC]
    assert len(pci.list_devices(host, network_only=False)) == 2


# ---------------------------------------------------------------- bind, unbind, restore


def test_bind_unbind_restore_round_trip(host: FakeKernel) -> None:
    """Fake sysfs: bind to vfio-pci, unbind, restore back to ixgbe; the ledger follows."""
    plan = bind(host)
    assert plan.refusals == [] and not plan.nothing_to_do
    after = devbind.apply(plan, host)
    assert after.driver == "vfio-pci"
    assert [w[0].rsplit("/", 2)[-2:] for w in host.writes] == [
        ["0000:03:00.0", "driver_override"], ["ixgbe", "unbind"], ["pci", "drivers_probe"]]
    ledger = json.loads(host.path(devbind.BINDINGS).read_text())
    assert ledger[NIC]["original_driver"] == "ixgbe" and ledger[NIC]["driver"] == "vfio-pci"

    after = devbind.apply(devbind.plan_unbind(NIC, host=host, net=QUIET, env=NO_SSH), host)
    assert after.driver is None
    # Unbinding after a bind keeps the first original driver.
    assert json.loads(host.path(devbind.BINDINGS).read_text())[NIC]["original_driver"] == "ixgbe"

    plan = devbind.plan_restore(NIC, host=host)
    assert plan.target_driver == "ixgbe"
    after = devbind.apply(plan, host)
    assert after.driver == "ixgbe"
    assert host.read(f"/sys/bus/pci/devices/{NIC}/driver_override") == "(null)"
    assert NIC not in json.loads(host.path(devbind.BINDINGS).read_text())


def test_bind_uio_pci_generic_warns_about_dma(host: FakeKernel) -> None:
    """Fake sysfs: uio needs no IOMMU group but the plan says DMA goes unchecked."""
    plan = bind(host, driver="uio_pci_generic")
    assert plan.refusals == []
    assert any("unchecked DMA" in w for w in plan.warnings)
    assert devbind.apply(plan, host).driver == "uio_pci_generic"


def test_bind_already_bound_is_a_no_op(host: FakeKernel) -> None:
    """Fake sysfs: binding to the driver it already has writes nothing."""
    devbind.apply(bind(host), host)
    host.writes.clear()
    plan = bind(host)
    assert plan.nothing_to_do
    devbind.apply(plan, host)
    assert host.writes == []


def test_bind_unknown_driver(host: FakeKernel) -> None:
    with pytest.raises(FastpathError, match="unknown driver 'igb'"):
        bind(host, driver="igb")


def test_restore_without_record(host: FakeKernel) -> None:
    """Fake sysfs: restore refuses when fastpath never changed the device."""
    with pytest.raises(FastpathError, match="no record of changing 0000:03:00.0"):
        devbind.plan_restore(NIC, host=host)


def test_failed_attach_rolls_back(host: FakeKernel) -> None:
    """Fake sysfs: vfio-pci accepts the probe but never attaches; the device goes back."""
    host.broken.add("vfio-pci")
    with pytest.raises(FastpathError, match="ended on no driver instead of vfio-pci"):
        devbind.apply(bind(host), host)
    assert devbind.resolve(host, NIC).driver == "ixgbe"
    assert host.read(f"/sys/bus/pci/devices/{NIC}/driver_override") == "(null)"
    assert not host.path(devbind.BINDINGS).exists()


def test_failed_write_rolls_back(host: FakeKernel) -> None:
    """Fake sysfs: an EIO on drivers_probe leaves the device on its old driver."""
    host.failing.add("/sys/bus/pci/drivers_probe")
    with pytest.raises(FastpathError, match="drivers_probe failed"):
        devbind.apply(bind(host), host)
    assert devbind.resolve(host, NIC).driver == "ixgbe"


# ---------------------------------------------------------------- refusals


def blocking(plan: devbind.Plan) -> str:
    return " | ".join(r.reason for r in plan.blocking)


def test_refuse_interface_up_unless_forced(host: FakeKernel) -> None:
    """Fake sysfs: an up interface is refused; --force overrides it."""
    set_up(host, "eth1")
    assert "eth1 is up" in blocking(bind(host))
    with pytest.raises(FastpathError, match="refusing to bind 0000:03:00.0: eth1 is up"):
        devbind.apply(bind(host), host)
    assert host.writes == []
    assert devbind.apply(bind(host, force=True), host).driver == "vfio-pci"


def test_refuse_addresses_and_routes(host: FakeKernel) -> None:
    """Fake sysfs + static netlink state: addresses and routes are each a refusal."""
    net = StaticNetState(addrs={"eth1": ["10.0.0.5/24"]},
                         route_table={"eth1": ["10.0.0.0/24", "0.0.0.0/0"]})
    reasons = blocking(bind(host, net=net))
    assert "eth1 has addresses (10.0.0.5/24)" in reasons
    assert "eth1 has routes (10.0.0.0/24, 0.0.0.0/0)" in reasons
    assert bind(host, net=net, force=True).blocking == []


def test_refuse_ssh_session_even_with_force(host: FakeKernel) -> None:
    """Fake sysfs: SSH_CONNECTION's local address is on eth1 -> refused, --force or not."""
    net = StaticNetState(addrs={"eth1": ["10.0.0.5/24"]})
    env = {"SSH_CONNECTION": "10.0.0.9 51000 10.0.0.5 22"}
    plan = bind(host, net=net, env=env, force=True)
    assert blocking(plan) == "eth1 carries the current SSH session; binding it would cut " \
                             "this machine off"


def test_refuse_ssh_seen_in_proc_net_tcp(host: FakeKernel) -> None:
    """Fake /proc/net/tcp: an established connection to port 22 whose peer routes via eth1."""
    host.path("/proc/net/tcp").write_text(
        "  sl  local_address rem_address   st\n"
        # 10.0.0.5:22 <- 10.0.0.9:51000, ESTABLISHED; addresses little-endian per word.
        "   0: 0500000A:0016 0900000A:C738 01 00000000:00000000 00:00000000 00000000 0\n"
        # A listening socket on port 22 is not a session.
        "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n")
    assert devbind.ssh_endpoints(host, {}) == [("10.0.0.5", "10.0.0.9")]
    net = StaticNetState(egress={"10.0.0.9": "eth1"})
    assert "carries the current SSH session" in blocking(bind(host, net=net, force=True))


def test_refuse_ssh_over_ipv6_in_proc_net_tcp6(host: FakeKernel) -> None:
    """Fake /proc/net/tcp6: an IPv6 SSH session whose local address lives on eth1."""
    # fd00::5 as /proc prints it: four 32-bit words, each little-endian.
    host.path("/proc/net/tcp6").write_text(
        "  sl  local_address                         remote_address                        st\n"
        "   0: 000000FD000000000000000005000000:0016 000000FD000000000000000009000000:D431 01 x\n")
    net = StaticNetState(addrs={"eth1": ["fd00::5/64"]})
    assert devbind.ssh_endpoints(host, {}) == [("fd00::5", "fd00::9")]
    assert "carries the current SSH session" in blocking(bind(host, net=net))


@pytest.mark.parametrize("kind", ["bond", "bridge"])
def test_refuse_bond_or_bridge_member_even_with_force(host: FakeKernel, kind: str) -> None:
    """Fake sysfs: an interface enslaved to a bond or bridge is refused, --force or not."""
    add_master(host, "eth1", "agg0", kind)
    reasons = blocking(bind(host, force=True))
    assert f"eth1 is a {kind} member of agg0" in reasons


def test_refuse_iommu_group_with_two_devices(host: FakeKernel) -> None:
    """Fake sysfs: NIC2 (ixgbe, eth2) shares IOMMU group 7, so NIC cannot go to vfio alone;
    once NIC2 is on vfio-pci too, NIC may follow."""
    add_device(host, NIC2, driver="ixgbe", group="7", ifaces=("eth2",))
    host.native[NIC2] = "ixgbe"
    reasons = blocking(bind(host, force=True))
    assert ("IOMMU group 7 also holds 0000:03:00.1 (driver ixgbe, interface eth2)" in reasons
            and "first 'fastpath dpdk unbind 0000:03:00.1'" in reasons)
    # uio does not care about IOMMU groups.
    assert bind(host, driver="uio_pci_generic").blocking == []
    # The way out: unbind the peer, bind this one, then the peer may join it on vfio-pci.
    devbind.apply(devbind.plan_unbind(NIC2, host=host, net=QUIET, env=NO_SSH), host)
    assert devbind.apply(bind(host), host).driver == "vfio-pci"
    assert devbind.apply(bind(host, NIC2), host).driver == "vfio-pci"


def test_iommu_group_bridge_is_fine(host: FakeKernel) -> None:
    """Fake sysfs: a PCIe root port (pcieport) in the group does not block vfio."""
    add_device(host, "0000:00:1c.0", driver="pcieport", group="7", cls="0x060400")
    assert bind(host).blocking == []


def test_refuse_vfio_absent(tmp_path: Path) -> None:
    """Fake sysfs: vfio-pci not loaded -> refusal naming modprobe; nothing written."""
    h = fake_host(tmp_path, native={NIC: "ixgbe"})
    add_device(h, NIC, driver="ixgbe", group="7", ifaces=("eth1",))
    plan = bind(h)
    assert "vfio-pci is not loaded: run 'modprobe vfio_pci'" in blocking(plan)
    with pytest.raises(FastpathError, match="vfio-pci is not loaded"):
        devbind.apply(plan, h)
    assert h.writes == []


def test_no_iommu_group_needs_opt_in(tmp_path: Path) -> None:
    """Fake sysfs: a device without IOMMU group is refused unless --noiommu, which then
    switches vfio's no-IOMMU parameter on before binding."""
    h = fake_host(tmp_path, native={NIC: "ixgbe"})
    add_driver(h, "vfio-pci")
    add_device(h, NIC, driver="ixgbe", group=None, ifaces=("eth1",))
    assert "has no IOMMU group" in blocking(bind(h))
    assert "no no-IOMMU mode" in blocking(bind(h, noiommu=True))
    param = h.path(devbind.NOIOMMU_PARAM)
    param.parent.mkdir(parents=True)
    param.write_text("N\n")
    plan = bind(h, noiommu=True)
    assert plan.blocking == [] and plan.writes[0].path == devbind.NOIOMMU_PARAM
    assert devbind.apply(plan, h).driver == "vfio-pci"
    assert param.read_text() == "1"


def test_dry_run_cli_writes_nothing(host: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """Fake sysfs through the CLI (--root): --dry-run prints the writes and changes nothing."""
    rc = main(["dpdk", "--root", str(host.root), "bind", "eth1", "--driver", "vfio-pci",
               "--dry-run", "--json"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["blocking"] == [] and len(plan["writes"]) == 3
    assert devbind.resolve(host, NIC).driver == "ixgbe"


def test_cli_refusal_exit_code(host: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """Fake sysfs through the CLI: an up interface -> exit 1 and one error line naming it."""
    set_up(host, "eth1")
    rc = main(["dpdk", "--root", str(host.root), "bind", "eth1", "--driver", "vfio-pci"])
    err = capsys.readouterr().err
    assert rc == 1
    assert [ln for ln in err.splitlines() if ln.startswith("fastpath: error:")] == [
        "fastpath: error: refusing to bind 0000:03:00.0: eth1 is up; 'ip link set eth1 down' "
        "or use --force"]
    assert devbind.resolve(host, NIC).driver == "ixgbe"


def test_cli_bind_then_restore(host: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake sysfs through the CLI (its Host replaced by the FakeKernel so writes act):
    bind by interface name, then restore by the same name after the interface vanished."""
    monkeypatch.setattr(dpdk_cli, "_host", lambda _args: host)
    root = str(host.root)
    assert main(["dpdk", "--root", root, "bind", "eth1", "--driver", "vfio-pci"]) == 0
    assert devbind.resolve(host, NIC).driver == "vfio-pci"
    assert not host.exists("/sys/class/net/eth1")  # ixgbe let go of it
    # The interface is gone, but restore still knows it by the name it had.
    assert main(["dpdk", "--root", root, "restore", "eth1"]) == 0
    assert devbind.resolve(host, NIC).driver == "ixgbe"
    assert host.exists("/sys/class/net/eth1")
    assert main(["dpdk", "--root", root, "restore", NIC]) == 1  # no record any more


def test_cli_unknown_device(host: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["dpdk", "--root", str(host.root), "bind", "nope0", "--driver", "vfio-pci"])
    assert rc == 1
    assert "no PCI device or interface named 'nope0'" in capsys.readouterr().err


def test_cli_devices_says_when_there_is_no_nic(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Fake sysfs with no PCI NIC: `devices` says so plainly and exits 0."""
    h = fake_host(tmp_path)
    assert main(["dpdk", "--root", str(h.root), "devices"]) == 0
    err = capsys.readouterr().err
    assert "no PCI network device on this machine" in err
    assert "vfio-pci not loaded" in err
    assert main(["dpdk", "--root", str(h.root), "devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["devices"] == []


# ---------------------------------------------------------------- --netns


def in_fwd(name: str, *, up: bool = False, master: str | None = None,
           kind: str | None = None) -> pci.Interface:
    return pci.Interface(name, up, master, kind, netns="fwd")


@pytest.fixture
def netns_host(tmp_path: Path) -> tuple[FakeKernel, pci.StaticLinks]:
    """Fake tree: eth1 on NIC here; NIC2's interface lives in namespace fwd, also named eth1
    (invisible in our /sys/class/net), NIC3's (virtio) is eth9 in fwd, veth0 in fwd has no
    device."""
    h = fake_host(tmp_path, native={NIC: "ixgbe", NIC2: "ixgbe", "0000:05:00.0": "virtio-pci"})
    add_driver(h, "vfio-pci")
    add_device(h, NIC, driver="ixgbe", group="7", ifaces=("eth1",))
    add_device(h, NIC2, driver="ixgbe", group="8")
    dev3 = add_device(h, "0000:05:00.0", driver="virtio-pci", group="9")
    (dev3 / "virtio3").mkdir()
    h.path("/sys/bus/virtio/devices").mkdir(parents=True)
    h.path("/sys/bus/virtio/devices/virtio3").symlink_to(dev3 / "virtio3")
    links = pci.StaticLinks(
        "fwd",
        interfaces={"eth1": in_fwd("eth1", up=True), "eth9": in_fwd("eth9"),
                    "veth0": in_fwd("veth0", up=True)},
        parents={"eth1": ("pci", NIC2), "eth9": ("virtio", "virtio3")},
    )
    return h, links


def test_netns_interface_resolves_through_its_parent_device(
        netns_host: tuple[FakeKernel, pci.StaticLinks]) -> None:
    host, links = netns_host
    dev = devbind.resolve(host, "eth1", links)
    assert dev.address == NIC2 and dev.interfaces == [in_fwd("eth1", up=True)]
    assert devbind.resolve(host, "eth1").address == NIC  # without --netns: ours
    assert devbind.resolve(host, "eth9", links).address == "0000:05:00.0"
    with pytest.raises(FastpathError, match="veth0 in namespace fwd is a virtual interface"):
        devbind.resolve(host, "veth0", links)
    with pytest.raises(FastpathError, match="no interface 'eth7' in network namespace fwd"):
        devbind.resolve(host, "eth7", links)
    with pytest.raises(FastpathError, match="no PCI device or interface named 'eth9'"):
        devbind.resolve(host, "eth9")


def test_list_devices_shows_both_namespaces_apart(
        netns_host: tuple[FakeKernel, pci.StaticLinks]) -> None:
    host, links = netns_host
    by_bdf = {d.address: d.interfaces for d in pci.list_devices(host, links=links)}
    assert by_bdf[NIC] == [pci.Interface("eth1", False, None, None)]
    assert by_bdf[NIC2] == [in_fwd("eth1", up=True)]
    assert by_bdf["0000:05:00.0"] == [in_fwd("eth9")]
    assert {d.address: d.interfaces for d in pci.list_devices(host)}[NIC2] == []


def test_bind_in_netns_checks_that_namespace(
        netns_host: tuple[FakeKernel, pci.StaticLinks]) -> None:
    """Addresses and routes come from the other namespace's state, `up` from its links; the
    SSH check ignores it (our session's routes say eth1, but that is our eth1)."""
    host, links = netns_host
    ours = StaticNetState(addrs={"eth1": ["10.0.0.5/24"]}, egress={"10.0.0.9": "eth1"})
    theirs = StaticNetState(addrs={"eth1": ["192.0.2.1/24"]}, route_table={"eth1": ["default"]})
    env = {"SSH_CONNECTION": "10.0.0.9 50000 10.0.0.5 22"}
    plan = devbind.plan_bind("eth1", "vfio-pci", host=host, net=ours, env=env,
                             links=links, other=theirs)
    reasons = [r.reason for r in plan.refusals]
    assert plan.device.address == NIC2
    assert any("192.0.2.1/24" in r for r in reasons) and any("default" in r for r in reasons)
    assert any("eth1 is up" in r for r in reasons)
    assert not any("SSH" in r or "10.0.0.5" in r for r in reasons)
    assert all(r.overridable for r in plan.refusals)
    assert any("leaves namespace fwd" in w for w in plan.warnings)
    # The same device through our own eth1 (NIC): our state, and the SSH session blocks it.
    mine = devbind.plan_bind("eth1", "vfio-pci", host=host, net=ours, env=env, other=theirs)
    assert mine.device.address == NIC
    assert any("carries the current SSH session" in r.reason for r in mine.blocking)


def test_unbind_in_netns_refuses_a_bridge_member(
        netns_host: tuple[FakeKernel, pci.StaticLinks]) -> None:
    host, links = netns_host
    links.interfaces["eth9"] = in_fwd("eth9", master="br0", kind="bridge")
    plan = devbind.plan_unbind("eth9", host=host, net=QUIET, env=NO_SSH, links=links,
                               other=QUIET, force=True)
    assert [r.reason for r in plan.blocking] == [
        "eth9 is a bridge member of br0; remove it first (ip link set eth9 nomaster)"]


def test_cli_netns_needs_the_live_system(host: FakeKernel,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["dpdk", "--root", str(host.root), "bind", "eth1", "--driver", "vfio-pci",
               "--netns", "fwd", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot be combined with a fake --root" in err[0]
