"""ipip mode end to end without a kernel tunnel module: the balancer (native XDP on its leg of
a bridge) wraps the client's packets in IPv4-in-IPv4 / IPv6-in-IPv6 to three backends, each
running `fastpath lb decap` (bpf/decap.c) on its interface and holding the VIPs on loopback.
Real TCP connections to an IPv4 and an IPv6 VIP succeed with the replies going straight to
the client (the balancer does not forward at all), every connection lands where the Maglev
ring puts it, all backends get their share, tunnels from anyone but the balancer or to
anything but a VIP are dropped, and decap's counters, pins and state behave.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.decap import decap
from fastpath.apps.lb import store
from fastpath.bpf import xdp

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_ipip_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


V6 = _sibling("test_lb_v6")  # SERVER and BURST speak both families; check_predicted
fastpath = V6.L.fastpath

VIPS = {4: "10.20.100.1", 6: "fd00:20:100::1"}
CLIENTS = {4: "10.20.1.10", 6: "fd00:21::10"}
BACKENDS = {4: {"b1": "10.20.2.11", "b2": "10.20.2.12", "b3": "10.20.2.13"},
            6: {"b1": "fd00:22::11", "b2": "fd00:22::12", "b3": "fd00:22::13"}}
PORT = 80
# Where the balancer's ipip packets come from (l4lb's default outer source prefixes).
FROM = ["--from", "172.16.0.0/16", "--from", "100::/96", "--vip", VIPS[4], "--vip", VIPS[6]]

SEND_IPIP = """
import sys
from scapy.all import IP, UDP, send
outer_src, outer_dst, inner_dst = sys.argv[1:4]
send(IP(src=outer_src, dst=outer_dst) / IP(src="10.20.1.10", dst=inner_dst) / UDP(dport=9) / b"x",
     verbose=0)
"""


def vip_text(family: int) -> str:
    addr = VIPS[family]
    return f"{addr}:{PORT}/tcp" if family == 4 else f"[{addr}]:{PORT}/tcp"


def topology() -> dict:
    nodes: dict = {
        "client": {"sysctls": {"net.ipv4.ip_local_port_range": "40000 60999"}},
        # No forwarding on the balancer: replies can only reach the client directly.
        "lb": {"sysctls": {"net.ipv4.ip_forward": 0, "net.ipv6.conf.all.forwarding": 0}},
    }
    routes: dict = {"client": [{"dst": "10.20.100.0/24", "via": "10.20.1.1"},
                               {"dst": "fd00:20:100::/64", "via": "fd00:21::1"}]}
    for name in BACKENDS[4]:
        # The VIPs sit on loopback; never answer ARP for them; the decapsulated packet comes
        # from the client, so no reverse-path filter; reply to the client directly.
        nodes[name] = {"sysctls": {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                                   "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}}
        routes[name] = [{"dst": "10.20.1.0/24", "dev": "eth0"}, {"dst": "fd00:21::/64", "dev": "eth0"}]
    links = [{"endpoints": [f"{n}:eth0", "sw0"], "tx_checksum": False} for n in ("client", *BACKENDS[4])]
    links.append({"endpoints": ["lb:eth0", "sw0"], "tx_checksum": False})
    addresses = {"client:eth0": ["10.20.1.10/24", "fd00:21::10/64"],
                 "lb:eth0": ["10.20.1.1/24", "10.20.2.1/24", "fd00:21::1/64", "fd00:22::1/64"]}
    addresses.update({f"{n}:eth0": [f"{BACKENDS[4][n]}/24", f"{BACKENDS[6][n]}/64"] for n in BACKENDS[4]})
    return {"name": "lbipip", "nodes": nodes, "bridges": {"sw0": {}}, "links": links,
            "addresses": addresses, "routes": routes}


def decap_stats(lab, node: str) -> dict:
    return json.loads(fastpath("lb", "decap", "stats", "eth0", "--netns", lab.netns(node), "--json").stdout)


@pytest.fixture
def ipip_lab(make_lab):
    lab = make_lab(topology())
    ns = lab.netns("lb")
    sw = lab.netns("sw")
    lab.run("lb", ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])
    for node in BACKENDS[4]:
        lab.run(node, ["ip", "addr", "add", f"{VIPS[4]}/32", "dev", "lo"])
        lab.run(node, ["ip", "-6", "addr", "add", f"{VIPS[6]}/128", "dev", "lo"])
        lab.spawn(node, [sys.executable, "-c", V6.SERVER, node, str(PORT)]).wait_output("ready")
    try:
        yield lab
    finally:
        for node in BACKENDS[4]:
            if xdp.read_state("eth0", lab.netns(node)) is not None:
                fastpath("lb", "decap", "detach", "eth0", "--netns", lab.netns(node), check=False)
        if store.state_path("eth0", ns).exists() or xdp.read_state("eth0", ns):
            fastpath("lb", "detach", "eth0", "--netns", ns, check=False)
        assert xdp.read_state("lb-eth0", sw) is None, "detach removes the peer's pass program"


def test_ipip_without_kernel_tunnels(ipip_lab):
    lab = ipip_lab
    ns = lab.netns("lb")
    target = ["--iface", "eth0", "--netns", ns]
    fastpath("lb", "attach", "eth0", "--netns", ns, "--mode", "native")
    for family in (4, 6):
        fastpath("lb", "vip", "add", vip_text(family), "--mode", "ipip", *target)
        for addr in BACKENDS[family].values():
            fastpath("lb", "backend", "add", vip_text(family), addr, *target)

    # Without decap the backends' kernels cannot unwrap the packets: nothing connects.
    got = V6.burst(lab, VIPS[4], 30000, 3)
    assert all(v.startswith("error") for v in got.values()), got

    atts = {}
    for node, addr in BACKENDS[4].items():
        out = json.loads(fastpath("lb", "decap", "attach", "eth0", "--netns", lab.netns(node),
                                  "--mode", "native", *FROM, "--json").stdout)
        assert out["mode"] == "native" and out["program"] == decap.SPEC.name
        assert {addr, BACKENDS[6][node]} <= set(out["addresses"])
        assert out["sources"] == ["172.16.0.0/16", "100::/96"] and out["vips"] == [VIPS[4], VIPS[6]]
        atts[node] = out
    before = {n: decap_stats(lab, n)["counters"] for n in BACKENDS[4]}

    n = 300
    for family, first in ((4, 31000), (6, 32000)):
        got = V6.burst(lab, VIPS[family], first, n)
        counts = V6.check_predicted(ns, vip_text(family), CLIENTS[family], BACKENDS[family], got)
        assert set(counts) == {"b1", "b2", "b3"}, (family, counts)
        assert all(85 <= counts[b] <= 115 for b in BACKENDS[family]), (family, counts)

    # Every packet the client sent reached a backend through decap (a connection is at least
    # SYN, ACK, data, FIN), and nothing went through the balancer's kernel.
    after = {b: decap_stats(lab, b)["counters"] for b in BACKENDS[4]}
    for family in (4, 6):
        key = f"decap_v{family}"
        done = sum(after[b][key]["packets"] - before[b][key]["packets"] for b in BACKENDS[4])
        assert done >= 4 * n, (family, done)
        assert all(after[b][key]["packets"] > before[b][key]["packets"] for b in BACKENDS[4])
    for b in BACKENDS[4]:
        assert after[b]["drop_malformed"]["packets"] == 0 and after[b]["drop_error"]["packets"] == 0
        assert after[b]["pass_not_tunnel"]["packets"] > 0     # ARP, neighbour discovery, ...
        assert after[b]["drop_not_balancer"]["packets"] == 0 and after[b]["drop_not_vip"]["packets"] == 0

    # The trust boundary, with real packets from the client: a tunnel from its own address,
    # and one that forges a balancer source but carries a packet to the backend itself.
    lab.run("client", ["ip", "route", "add", "10.20.2.0/24", "dev", "eth0"])
    b1 = BACKENDS[4]["b1"]
    for outer_src, inner_dst in ((CLIENTS[4], VIPS[4]), ("172.16.9.9", b1)):
        lab.run("client", [sys.executable, "-c", SEND_IPIP, outer_src, b1, inner_dst])
    refused = decap_stats(lab, "b1")["counters"]
    assert refused["drop_not_balancer"]["packets"] == 1, refused
    assert refused["drop_not_vip"]["packets"] == 1, refused
    stats = json.loads(fastpath("lb", "stats", "--json", *target).stdout)
    assert {v["vip"]: v["mode"] for v in stats["vips"]} == {vip_text(4): "ipip", vip_text(6): "ipip"}
    assert all(v["new_flows"] >= n and v["no_backend"] == 0 for v in stats["vips"])
    assert stats["counters"]["drop_too_big"]["packets"] == 0

    # Re-attach replaces the program and keeps the counters; detach leaves nothing behind.
    node = "b1"
    bns = lab.netns(node)
    again = json.loads(fastpath("lb", "decap", "attach", "eth0", "--netns", bns, "--addr", "10.20.2.99",
                                *FROM, "--json").stdout)
    assert again["replaced"] is True and again["link_id"] == atts[node]["link_id"]
    assert "10.20.2.99" in decap_stats(lab, node)["addresses"]
    assert decap_stats(lab, node)["counters"]["decap_v4"]["packets"] >= after[node]["decap_v4"]["packets"]
    res = fastpath("lb", "decap", "attach", "eth0", "--netns", ns, *FROM, check=False)
    assert res.returncode != 0 and "l4lb" in res.stderr
    res = fastpath("lb", "decap", "attach", "eth0", "--netns", lab.netns("b2"), "--vip", VIPS[4], check=False)
    assert res.returncode != 0 and "--from" in res.stderr and "Traceback" not in res.stderr
    for node in BACKENDS[4]:
        bns = lab.netns(node)
        fastpath("lb", "decap", "detach", "eth0", "--netns", bns)
        assert not Path(atts[node]["pin_dir"]).exists()
        assert not xdp.state_path("eth0", bns).exists()
        assert "xdp" not in lab.run(node, ["ip", "link", "show", "eth0"]).stdout
    res = fastpath("lb", "decap", "stats", "eth0", "--netns", lab.netns("b1"), check=False)
    assert res.returncode != 0 and "not attached" in res.stderr
    fastpath("lb", "detach", "eth0", "--netns", ns)
