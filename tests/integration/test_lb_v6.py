"""The XDP load balancer end to end over IPv6: a client namespace, the balancer (native XDP
on its leg of a bridge) and three backend namespaces running a server that names itself;
real TCP connections to an IPv6 VIP in dsr and nat mode: every connection lands where the
Maglev ring (computed from the config) puts it, equal weights spread within ±15 %, and
long-lived connections survive adding a backend. The lab and the checks follow test_lb.py
(the IPv4 version); the scripts here speak both families, so test_lb_ipip.py uses them too.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.lb import balancer, config, store
from fastpath.bpf import xdp

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_lbv6_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


L = _sibling("test_lb")  # fastpath(), HOLD, SERVER and BURST: all speak both families
SERVER, BURST = L.SERVER, L.BURST

VIP6 = "fd00:20:100::1"
CLIENT6 = "fd00:21::10"
BACKENDS6 = {"b1": "fd00:22::11", "b2": "fd00:22::12", "b3": "fd00:22::13"}
VIP_PORT = 80
NAT_PORT = 8080


def burst(lab, vip: str, first_port: int, n: int) -> dict[int, str]:
    argv = [sys.executable, "-c", BURST, vip, str(VIP_PORT), str(first_port), str(n)]
    res = lab.run("client", argv, timeout=90)
    return {int(k): v for k, v in json.loads(res.stdout).items()}


def check_predicted(ns: str, vip_text: str, client: str, backends: dict[str, str],
                    got: dict[int, str]) -> Counter:
    """Every connection landed where the Maglev ring (computed from the config) says."""
    state = store.load_state("eth0", ns)
    vip = config.parse_vip(vip_text)
    by_addr = {ipaddress.ip_address(a): n for n, a in backends.items()}
    wrong = []
    for sport, name in got.items():
        want = balancer.predict(state, vip, ipaddress.ip_address(client), sport)
        want_node = by_addr[config.parse_backend(want)[0]] if want else None
        if name != want_node:
            wrong.append((sport, name, want_node))
    assert not wrong, f"{len(wrong)} connections not where Maglev puts them, e.g. {wrong[:5]}"
    return Counter(got.values())


def topology(mode: str) -> dict:
    nodes: dict = {
        "client": {"sysctls": {"net.ipv4.ip_local_port_range": "40000 60999"}},
        # Forwarding carries the nat replies (translated back in XDP) on to the client.
        "lb": {"sysctls": {"net.ipv6.conf.all.forwarding": 1}},
    }
    routes: dict = {"client": [{"dst": "fd00:20:100::/64", "via": "fd00:21::1"}]}
    for name in BACKENDS6:
        if mode == "dsr":
            # The VIP sits on loopback (IPv6 answers neighbour solicitations only for
            # addresses on the asking interface); replies go to the client directly.
            nodes[name] = {}
            routes[name] = [{"dst": "fd00:21::/64", "dev": "eth0"}]
        else:
            # Replies go back through the balancer; a redirect from it must not send them
            # around it.
            nodes[name] = {"sysctls": {"net.ipv6.conf.all.accept_redirects": 0,
                                       "net.ipv6.conf.eth0.accept_redirects": 0}}
            routes[name] = [{"dst": "default", "via": "fd00:22::1"}]
    links = [{"endpoints": [f"{n}:eth0", "sw0"], "tx_checksum": False} for n in ("client", *BACKENDS6)]
    links.append({"endpoints": ["lb:eth0", "sw0"], "tx_checksum": False})
    addresses = {"client:eth0": [f"{CLIENT6}/64"], "lb:eth0": ["fd00:21::1/64", "fd00:22::1/64"]}
    addresses.update({f"{n}:eth0": [f"{a}/64"] for n, a in BACKENDS6.items()})
    return {"name": "lbv6", "nodes": nodes, "bridges": {"sw0": {}}, "links": links,
            "addresses": addresses, "routes": routes}


@pytest.fixture
def v6_lab(make_lab, request):
    mode = request.param
    lab = make_lab(topology(mode))
    ns = lab.netns("lb")
    sw = lab.netns("sw")
    port = VIP_PORT if mode == "dsr" else NAT_PORT
    for node in BACKENDS6:
        if mode == "dsr":
            lab.run(node, ["ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "lo"])
        proc = lab.spawn(node, [sys.executable, "-c", SERVER, node, str(port)])
        proc.wait_output("ready")
    try:
        yield lab, mode
    finally:
        if store.state_path("eth0", ns).exists() or xdp.read_state("eth0", ns):
            L.fastpath("lb", "detach", "eth0", "--netns", ns, check=False)
        assert xdp.read_state("lb-eth0", sw) is None, "detach removes the peer's pass program"


@pytest.mark.parametrize("v6_lab", ["dsr", "nat"], indirect=True)
def test_ipv6_balancer_end_to_end(v6_lab):
    lab, mode = v6_lab
    ns = lab.netns("lb")
    target = ["--iface", "eth0", "--netns", ns]
    vip = f"[{VIP6}]:{VIP_PORT}/tcp"

    def backend(node: str) -> str:
        return BACKENDS6[node] if mode == "dsr" else f"[{BACKENDS6[node]}]:{NAT_PORT}"

    att = json.loads(L.fastpath("lb", "attach", "eth0", "--netns", ns, "--mode", "native", "--json").stdout)
    pins = Path(att["pin_dir"])
    L.fastpath("lb", "vip", "add", vip, "--mode", mode, *target)
    for node in ("b1", "b2"):
        L.fastpath("lb", "backend", "add", vip, backend(node), *target)  # MAC by neighbour discovery
    rows = json.loads(L.fastpath("lb", "backend", "list", "--json", *target).stdout)
    port = VIP_PORT if mode == "dsr" else NAT_PORT
    assert {r["backend"] for r in rows} == {f"[{BACKENDS6[n]}]:{port}" for n in ("b1", "b2")}
    assert all(r["mac"] == lab.mac(n, "eth0") for r, n in zip(sorted(rows, key=lambda r: r["backend"]),
                                                                ("b1", "b2"), strict=True))

    # Long-lived connections opened with two backends ...
    hold = lab.spawn("client", [sys.executable, "-c", L.HOLD, VIP6, str(VIP_PORT), "16"])
    first = json.loads(hold.wait_output("ready").split("ready ", 1)[1].splitlines()[0])
    assert set(first) == {"b1", "b2"}, first

    # ... survive adding a backend; 300 new connections spread evenly (±15 %).
    L.fastpath("lb", "backend", "add", vip, backend("b3"), *target)
    got = burst(lab, VIP6, 31000, 300)
    counts = check_predicted(ns, vip, CLIENT6, BACKENDS6, got)
    assert set(counts) == {"b1", "b2", "b3"}, counts
    assert all(85 <= counts[n] <= 115 for n in BACKENDS6), counts

    hold.signal(15)
    hold.wait(10)
    result = json.loads(hold.output().split("result ", 1)[1].splitlines()[0])
    assert result["events"] == [], f"long-lived connections changed backend or failed: {result['events']}"
    assert result["rounds"] > 5

    stats = json.loads(L.fastpath("lb", "stats", "--json", *target).stdout)
    v = stats["vips"][0]
    assert v["vip"] == vip and v["new_flows"] >= 316 and v["lru_hits"] > 0 and v["no_backend"] == 0
    assert stats["counters"]["drop_unsupported"]["packets"] == 0
    if mode == "nat":
        assert stats["counters"]["nat_reverse"]["packets"] >= 3 * 316
    L.fastpath("lb", "health", "--once", *target)   # TCP checks to IPv6 backends
    assert {r["health"] for r in json.loads(L.fastpath("lb", "backend", "list", "--json", *target).stdout)} \
        == {"up"}
    explain = json.loads(L.fastpath("lb", "explain", f"[{CLIENT6}]:31000", vip, "--json", *target).stdout)
    assert explain["backend"] == f"[{BACKENDS6[got[31000]]}]:{port}"

    L.fastpath("lb", "detach", "eth0", "--netns", ns)
    assert not pins.exists()
    assert not store.state_path("eth0", ns).exists()
