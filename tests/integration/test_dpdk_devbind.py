"""`--netns` for `fastpath dpdk bind/unbind/devices` on the live system: interfaces of a lab
namespace are found over netlink (a veth there has no device to bind, and says so), and
the netlink route to a NIC (its parent bus and device) lands on the same PCI address as our
sysfs does for every interface of this namespace that has one. Only dry runs: nothing is
bound."""

from __future__ import annotations

import os

import pytest
from pyroute2 import IPRoute

from fastpath.cli import main
from fastpath.dpdk import pci
from fastpath.dpdk.sysfs import REAL_HOST
from fastpath.netns.lab import Lab

pytestmark = pytest.mark.integration

TOPOLOGY = {"name": "bind", "nodes": {"a": {}, "b": {}},
            "links": [{"endpoints": ["a:fpbind0", "b:eth0"]}]}


@pytest.fixture
def lab(make_lab: object) -> Lab:
    if os.geteuid() != 0:
        pytest.skip("reading another namespace needs root")
    return make_lab(TOPOLOGY)  # type: ignore[operator]


def test_netns_interface_is_found_there(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    ns = lab.netns("a")
    links = pci.NetlinkLinks(ns)
    assert "fpbind0" in links.names() and links.parent("fpbind0") is None
    iface = links.interface("fpbind0")
    assert iface.netns == ns and iface.up and iface.master is None

    rc = main(["dpdk", "bind", "fpbind0", "--netns", ns, "--driver", "vfio-pci", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 1 and f"fpbind0 in namespace {ns} is a virtual interface" in err
    assert f"--netns {ns} --vdev af_packet:fpbind0" in err
    rc = main(["dpdk", "unbind", "fpbind0", "--dry-run"])  # not visible from here
    assert rc == 1 and "no PCI device or interface named 'fpbind0'" in capsys.readouterr().err
    rc = main(["dpdk", "unbind", "nothere0", "--netns", ns, "--dry-run"])
    assert rc == 1 and f"no interface 'nothere0' in network namespace {ns}" in \
        capsys.readouterr().err
    assert main(["dpdk", "devices", "--netns", ns, "--json"]) == 0
    capsys.readouterr()
    rc = main(["dpdk", "devices", "--netns", f"{lab.name}-none"])
    assert rc == 1 and "no network namespace" in capsys.readouterr().err


def test_netlink_parent_matches_sysfs_for_our_nics() -> None:
    with IPRoute() as ipr:
        parents = {
            str(m.get_attr("IFLA_IFNAME")): (m.get_attr("IFLA_PARENT_DEV_BUS_NAME"),
                                             m.get_attr("IFLA_PARENT_DEV_NAME"))
            for m in ipr.get_links()
        }
    checked = 0
    for name, (bus, dev) in parents.items():
        sysfs = pci.sysfs_bdf(REAL_HOST, name)
        if sysfs is None:
            continue
        assert bus and dev, f"{name} has a PCI device in sysfs but no netlink parent"
        assert pci.bdf_of_parent(REAL_HOST, (str(bus), str(dev))) == sysfs, name
        checked += 1
    if checked == 0:
        pytest.skip("no interface here sits on a PCI device")
