"""`fastpath lb` from the command line on a real attachment: declarative apply, and bad
input of every kind giving one clear line, a non-zero exit and nothing applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.apps.count import xdp_count
from fastpath.apps.lb import program, store
from fastpath.apps.lb.maps import LbMaps
from fastpath.bpf import xdp

pytestmark = pytest.mark.integration

TOPO = {
    "name": "lbcli",
    "nodes": {"lb": {}, "web": {}},
    "links": [{"endpoints": ["lb:eth0", "web:eth0"]}, {"endpoints": ["lb:eth1", "web:eth1"]}],
    "addresses": {"lb:eth0": ["10.30.0.1/24"], "web:eth0": ["10.30.0.2/24"],
                  "lb:eth1": ["10.31.0.1/24"], "web:eth1": ["10.31.0.2/24"]},
}
VIP = "10.30.100.1:80/tcp"


def fastpath(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastpath.cli", *args], capture_output=True, text=True,
                          timeout=120)


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    res = fastpath(*args)
    assert res.returncode == 0, f"fastpath {' '.join(args)}: {res.stderr}"
    return res


@pytest.fixture
def attached(make_lab, tmp_path):
    lab = make_lab(TOPO)
    ns = lab.netns("lb")
    ok("lb", "attach", "eth0", "--netns", ns, "--table-size", "4099")
    try:
        yield lab, ns
    finally:
        if xdp.read_state("eth0", ns) is not None:
            fastpath("lb", "detach", "eth0", "--netns", ns)


def snapshot(ns: str) -> tuple:
    """The configuration as saved and as the data plane holds it (VIPs, addresses, backends)."""
    import ctypes

    with LbMaps.from_attachment(program.attachment("eth0", ns)) as maps:
        vips = sorted((bytes(k), bytes(v)) for k, v in maps["vips"].items())
        addrs = sorted((bytes(k), v.value) for k, v in maps["vip_addrs"].items())
        backends = [bytes(maps["backends"].get(ctypes.c_uint32(i))) for i in range(16)]
    return store.state_path("eth0", ns).read_text(), vips, addrs, backends


def test_apply_is_declarative_and_idempotent(attached, tmp_path):
    lab, ns = attached
    t = ["--iface", "eth0", "--netns", ns]
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(f"""
vips:
  {VIP}:
    mode: nat
    backends:
      10.30.0.2:8080: {{weight: 3}}
  10.30.100.2:53/udp:
    backends:
      10.30.0.2:
""")
    res = ok("lb", "apply", str(cfg), *t, "--json")
    assert len(json.loads(res.stdout)["changes"]) == 4
    res = ok("lb", "apply", str(cfg), *t)
    assert "nothing to do" in res.stderr
    rows = json.loads(ok("lb", "backend", "list", *t, "--json").stdout)
    mac = lab.mac("web", "eth0")
    assert {(r["vip"], r["backend"], r["weight"], r["mac"]) for r in rows} == {
        (VIP, "10.30.0.2:8080", 3, mac), ("10.30.100.2:53/udp", "10.30.0.2:53", 1, mac)}
    cfg.write_text(f"""
vips:
  {VIP}:
    mode: nat
    backends:
      10.30.0.2:8080: {{weight: 3, drain: true}}
""")
    res = ok("lb", "apply", str(cfg), *t, "--json")
    assert sorted(json.loads(res.stdout)["changes"]) == [
        f"drained 10.30.0.2:8080 in {VIP}", "removed VIP 10.30.100.2:53/udp"]
    ex = json.loads(ok("lb", "explain", "198.51.100.1:4000", VIP, *t, "--json").stdout)
    assert ex["backend"] is None and "no usable backend" in ex["reason"]
    # The only balancer attached is found without --iface.
    assert json.loads(ok("lb", "vip", "list", "--netns", ns, "--json").stdout)[0]["vip"] == VIP


BAD = [
    # (arguments after "lb", text the one error line must contain)
    (["vip", "add", "10.30.100.9:80"], "bad VIP '10.30.100.9:80'"),
    (["vip", "add", "10.30.100.9:80/sctp"], "protocol 'sctp' is not tcp or udp"),
    (["vip", "add", "10.30.100.999:80/tcp"], "is not an IPv4 or IPv6 address"),
    (["vip", "add", VIP], f"VIP {VIP} already exists"),
    (["vip", "add", "10.30.100.9:80/tcp", "--mode", "tunnel"], "unknown mode 'tunnel'"),
    (["vip", "del", "10.30.100.9:80/tcp"], "unknown VIP 10.30.100.9:80/tcp"),
    (["backend", "add", "10.30.100.9:80/tcp", "10.30.0.2"], "unknown VIP 10.30.100.9:80/tcp"),
    (["backend", "add", VIP, "10.30.0.2:99999"], "port 99999 out of range"),
    (["backend", "add", VIP, "10.30.0.2", "--weight", "0"], "weight 0 out of range 1-1000"),
    (["backend", "add", VIP, "10.30.0.2", "--weight", "1001"], "weight 1001 out of range 1-1000"),
    (["backend", "add", VIP, "10.30.0.2", "--weight", "lots"], "weight 'lots' is not a number"),
    (["backend", "add", VIP, "10.30.0.2:8080"], "dsr cannot change the port"),
    (["backend", "add", VIP, "fd00::2"], "address family differs"),
    (["backend", "add", VIP, "10.30.0.2"], "already has backend 10.30.0.2:80"),
    (["backend", "add", VIP, "10.30.0.77"], "cannot resolve its MAC address on eth0"),
    (["backend", "add", VIP, "192.0.2.1"], "no route to it"),
    (["backend", "add", VIP, "10.31.0.2"], "is not reachable through eth0"),
    (["backend", "add", VIP, "10.30.0.1"], "is an address of the balancer itself"),
    (["backend", "add", VIP, "10.30.0.3", "--mac", "02:00"], "bad MAC address"),
    (["backend", "del", VIP, "10.30.0.9"], "has no backend 10.30.0.9:80"),
    (["backend", "weight", VIP, "10.30.0.2", "5000"], "out of range"),
    (["explain", "198.51.100.1", VIP], "the source port is missing"),
    (["explain", "198.51.100.1:80", "10.30.100.9:80/tcp"], "unknown VIP"),
]


def test_bad_input_one_line_nothing_applied(attached, tmp_path):
    lab, ns = attached
    t = ["--iface", "eth0", "--netns", ns]
    ok("lb", "vip", "add", VIP, *t)
    ok("lb", "backend", "add", VIP, "10.30.0.2", *t)
    before = snapshot(ns)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("vips: {10.30.100.1:80/tcp: [\n")
    unknown_mode = tmp_path / "mode.yaml"
    unknown_mode.write_text("vips: {10.30.100.1:80/tcp: {mode: tunnel}}\n")
    unresolvable = tmp_path / "unres.yaml"
    unresolvable.write_text("vips:\n  10.30.100.1:80/tcp:\n    backends: {10.30.0.2: 2, 10.30.0.77: 1}\n"
                            "  10.30.100.5:80/tcp: {}\n")
    cases = [*BAD,
             (["apply", str(bad_yaml)], "not valid YAML at line"),
             (["apply", str(unknown_mode)], "unknown mode 'tunnel'"),
             (["apply", str(unresolvable)], "cannot resolve its MAC address"),
             (["apply", str(tmp_path / "missing.yaml")], "does not exist")]
    for args, needle in cases:
        res = fastpath("lb", *args, *t)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode != 0, args
        assert len(lines) == 1 and lines[0].startswith("fastpath: error: "), (args, res.stderr)
        assert needle in lines[0], (args, lines[0])
        assert snapshot(ns) == before, f"{args} changed the configuration"


def test_attach_errors(attached):
    lab, ns = attached
    cases = [
        (["lb", "attach", "nosuch0", "--netns", ns], "unknown interface 'nosuch0'"),
        (["lb", "attach", "eth0", "--netns", ns, "--seed", "7"], "cannot change size or seed in place"),
        (["lb", "attach", "eth1", "--netns", ns, "--table-size", "65536"], "must be a prime"),
        (["lb", "attach", "eth1", "--netns", ns, "--half-open", "10"], "--half-open 10 out of range"),
        (["lb", "attach", "eth1", "--netns", ns, "--rx-cpus", "100000"], "--rx-cpus 100000 out of range"),
        (["lb", "attach", "eth0", "--netns", ns, "--half-open", "4096"], "cannot change size or seed"),
        (["lb", "stats", "--iface", "eth1", "--netns", ns], "not attached to eth1"),
        (["lb", "detach", "eth1", "--netns", ns], "nothing attached to eth1"),
    ]
    for args, needle in cases:
        res = fastpath(*args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode != 0 and len(lines) == 1 and needle in lines[0], (args, res.stderr)
    assert not xdp.pin_dir("eth1", ns).exists()
    for ifname in ("nosuch0", "eth1"):
        assert not store.state_path(ifname, ns).with_suffix(".lock").exists()
    # Another fastpath program on the interface: the balancer refuses to replace it.
    xdp.attach(xdp_count.SPEC, "eth1", ns, "native")
    try:
        res = fastpath("lb", "attach", "eth1", "--netns", ns)
        assert res.returncode != 0 and "runs fastpath program xdp_count" in res.stderr
        assert xdp.read_state("eth1", ns).program == "xdp_count"
        assert not store.state_path("eth1", ns).exists()
    finally:
        xdp.detach("eth1", ns)
    # Two balancers: commands without --iface ask which one.
    ok("lb", "attach", "eth1", "--netns", ns, "--table-size", "4099")
    try:
        res = fastpath("lb", "vip", "list", "--netns", ns)
        assert res.returncode != 0 and "several interfaces" in res.stderr
    finally:
        ok("lb", "detach", "eth1", "--netns", ns)
    assert not Path(xdp.pin_dir("eth1", ns)).exists() and not store.state_path("eth1", ns).exists()
