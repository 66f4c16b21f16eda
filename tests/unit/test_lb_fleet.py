"""The fleet's control plane without a kernel: the `bgp` section, what is announced, the BIRD
configuration (parsed by BIRD itself), BIRD's control protocol, and the fleet check."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastpath.apps.lb import bgp, fleet, maglev, speaker
from fastpath.apps.lb.store import BackendState, LbState, VipState
from fastpath.cli import main
from fastpath.errors import FastpathError

SECTION = {"asn": 65001, "hold": 3, "keepalive": 1, "bfd": {"interval_ms": 100, "multiplier": 5},
           "peers": {"10.30.2.1": {"asn": 65000}}}


def state(*vips: VipState) -> LbState:
    return LbState(vips={str(v.id): v for v in vips})


def vip(addr: str, port: int, proto: str = "tcp", **health: str) -> VipState:
    """A VIP whose backends (10.0.1.1, .2, ...) have the given health ("drained": up but drained)."""
    backends = {}
    for i, h in enumerate(health.values()):
        b = BackendState(f"10.0.1.{i + 1}", port, 1, i, "02:00:00:00:00:01", drained=h == "drained",
                         health="up" if h == "drained" else h)
        backends[b.name] = b
    return VipState(addr, port, proto, "dsr", 0, backends=backends)


# -- the bgp section ----------------------------------------------------------------------

def test_bgp_section_parses_with_defaults() -> None:
    spec = bgp.parse_bgp({"asn": 65001, "peers": {"10.30.2.1": {"asn": 65000}}})
    assert spec == bgp.BgpSpec(65001, (bgp.Peer("10.30.2.1", 65000),))
    assert spec.detection_s == 0.5
    assert bgp.BgpSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert bgp.parse_bgp({**SECTION, "bfd": False}).detection_s == 3.0


@pytest.mark.parametrize("change, words", [
    ({"asn": None}, "asn: None is not an integer"),
    ({"asn": 0}, "asn: 0 is not an integer in 1-4294967295"),
    ({"hold": 2}, "hold: 2 is not an integer in 3-65535"),
    ({"hold": 3, "keepalive": 2}, "keepalive 2 s is more than a third of hold 3 s"),
    ({"peers": {}}, "'peers' must map each router's address"),
    ({"peers": {"10.30.2.300": {"asn": 1}}}, "peer 10.30.2.300: not an IPv4 or IPv6 address"),
    ({"peers": {"127.0.0.1": {"asn": 1}}}, "not a unicast address of a router"),
    ({"peers": {"10.30.2.1": {}}}, "'asn' (the router's AS number) is missing"),
    ({"peers": {"10.30.2.1": {"asn": 1, "pass": "x"}}}, "unknown key 'pass'"),
    ({"bfd": {"interval_ms": 1}}, "interval_ms: 1 is not an integer in 10-10000 ms"),
    ({"router_id": "fd00::1"}, "router_id 'fd00::1' is not an IPv4 address"),
    ({"timers": 1}, "unknown key 'timers'"),
])
def test_bad_bgp_sections_name_what_is_wrong(change: dict[str, object], words: str) -> None:
    with pytest.raises(FastpathError) as err:
        bgp.parse_bgp({**SECTION, **change}, "lb.yaml")
    assert words in err.value.message and err.value.message.startswith("lb.yaml: bgp")


def test_a_vip_needs_a_peer_of_its_family() -> None:
    spec = bgp.parse_bgp(SECTION)
    bgp.check_families(spec, ["10.0.0.10:80/tcp"])
    with pytest.raises(FastpathError, match=r"VIP \[fd00::10\]:80/tcp is IPv6 but no BGP peer is"):
        bgp.check_families(spec, ["[fd00::10]:80/tcp"])


# -- what is announced --------------------------------------------------------------------

def test_an_address_is_announced_while_one_of_its_vips_has_a_backend_up() -> None:
    st = state(vip("10.0.0.10", 80, a="up", b="down"),
               vip("10.0.0.11", 80, a="down", b="drained"),
               vip("10.0.0.12", 80, a="unknown"),              # not checked yet: not announced
               vip("10.0.0.13", 53, "udp", a="unknown"),       # UDP is not checked: announced
               vip("10.0.0.14", 80, a="down"), vip("10.0.0.14", 443, a="up"))
    ann = bgp.announcements(st)
    assert {p: on for p, (on, _) in ann.items()} == {
        "10.0.0.10/32": True, "10.0.0.11/32": False, "10.0.0.12/32": False, "10.0.0.13/32": True,
        "10.0.0.14/32": True}
    assert ann["10.0.0.11/32"][1] == "no backend of 10.0.0.11:80/tcp is up"
    assert ann["10.0.0.14/32"][1] == "10.0.0.14:443/tcp served"


def test_the_generated_bird_configuration() -> None:
    st = state(vip("10.30.100.1", 80, a="up"), vip("10.30.100.2", 80, a="down"))
    text = bgp.render(bgp.parse_bgp({**SECTION, "router_id": "10.30.2.11"}), st, "eth0 in lab-lb1")
    assert "  route 10.30.100.1/32 blackhole;   # 10.30.100.1:80/tcp served" in text
    assert "  # 10.30.100.2/32 withheld: no backend of 10.30.100.2:80/tcp is up" in text
    assert "router id 10.30.2.11;" in text and "graceful restart off;" in text
    assert "  neighbor 10.30.2.1 as 65000;" in text and "  local as 65001;" in text
    assert "min rx interval 100 ms; min tx interval 100 ms; multiplier 5;" in text and "bfd on;" in text
    assert "hold time 3; keepalive time 1;" in text
    assert 'ipv4 { import none; export where proto = "vips4"; };' in text
    nobfd = bgp.render(bgp.parse_bgp({**SECTION, "bfd": False}), st, "eth0")
    assert "bfd" not in nobfd.replace("# BFD", "")


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 is not installed (scripts/setup-host.sh)")
def test_bird_accepts_the_generated_configuration(tmp_path: Path) -> None:
    section = {**SECTION, "peers": {"10.30.2.1": {"asn": 65000}, "fd00:30::1": {"asn": 65000}}}
    st = state(vip("10.30.100.1", 80, a="up"), vip("fd00:100::1", 80, a="up"))
    for spec in (bgp.parse_bgp(section), bgp.parse_bgp({**section, "bfd": False})):
        speaker.check_config(bgp.render(spec, st, "eth0"), tmp_path / "n.conf")
    with pytest.raises(FastpathError, match="BIRD rejects the generated configuration"):
        speaker.check_config("protocol nonsense {", tmp_path / "bad.conf")


# -- BIRD's control socket ----------------------------------------------------------------

def _fake_bird(path: Path, replies: dict[str, bytes]) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)

    def serve() -> None:
        for _ in range(len(replies)):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"0001 BIRD 2.0.12 ready.\n")
                cmd = conn.makefile("rb").readline().decode().strip()
                conn.sendall(replies[cmd])
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_control_protocol(tmp_path: Path) -> None:
    ctl = tmp_path / "bird.ctl"
    t = _fake_bird(ctl, {
        "show protocols": (b"2002-Name       Proto      Table      State  Since         Info\n"
                           b"1002-device1    Device     ---        up     04:36:40.428  \n"
                           b" peer1      BGP        ---        up     04:36:44.614  Established   \n"
                           b"0000 \n"),
        # BIRD 2.0.12's own words, routes as continuation lines
        "show route protocol vips4": (b"1007-Table master4:\n"
                                      b" 10.30.100.2/32       blackhole [vips4 04:57:39.205] * (200)\n"
                                      b" 10.30.100.1/32       blackhole [vips4 04:57:39.205] * (200)\n"
                                      b"0000 \n"),
        "configure": b"8002 /x.conf:3:1 syntax error\n",
    })
    rows = speaker.protocols(ctl)
    assert [(r["name"], r["state"], r["info"]) for r in rows] == [("device1", "up", ""),
                                                                  ("peer1", "up", "Established")]
    assert speaker.routes(ctl, "vips4") == ["10.30.100.2/32", "10.30.100.1/32"]
    with pytest.raises(speaker.ControlError, match="BIRD refused 'configure': /x.conf:3:1 syntax error"):
        speaker.command(ctl, "configure")
    t.join(5)
    with pytest.raises(speaker.ControlError, match="cannot reach the BGP speaker"):
        speaker.command(tmp_path / "none.ctl", "show protocols")


# -- the fleet check ----------------------------------------------------------------------

def node(label: str, seed: int = 0, size: int = 7, weights: dict[str, int] | None = None,
         status: str = "active") -> dict[str, object]:
    weights = weights or {"10.0.1.1:80": 1, "10.0.1.2:80": 1}
    names = sorted(weights)
    table = maglev.build_table(weights, size, seed)
    d = fleet.digest(size, seed, "5tuple", names, table)
    return {"node": label, "seed": seed, "table_size": size, "vips": {"10.0.0.10:80/tcp": {
        "mode": "dsr", "hash": "5tuple", "digest": d, "config_digest": d,
        "backends": {n: {"weight": w, "status": status} for n, w in weights.items()}}}}


def test_equal_nodes_agree() -> None:
    out = fleet.compare([node("a"), node("b"), node("c")])
    assert out["consistent"] and not out["differences"]


@pytest.mark.parametrize("odd, reasons", [
    (node("c", seed=7), ["seed 7 (others 0)"]),
    (node("c", size=11), ["table size 11 (others 7)"]),
    (node("c", weights={"10.0.1.1:80": 2, "10.0.1.2:80": 1}), ["backend 10.0.1.1:80 weight 2 (others 1)"]),
    (node("c", weights={"10.0.1.1:80": 1}), ["backend 10.0.1.2:80 missing"]),
    (node("c", weights={"10.0.1.1:80": 1, "10.0.1.2:80": 1, "10.0.1.3:80": 1}),
     ["extra backend 10.0.1.3:80"]),
])
def test_the_odd_node_out_and_why(odd: dict[str, object], reasons: list[str]) -> None:
    out = fleet.compare([node("a"), node("b"), odd])
    assert not out["consistent"]
    assert out["differences"] == [{"node": "c", "vip": "10.0.0.10:80/tcp", "reasons": reasons}]


def test_a_drained_backend_is_a_difference() -> None:
    drained = node("c", weights={"10.0.1.1:80": 0, "10.0.1.2:80": 1})
    drained["vips"]["10.0.0.10:80/tcp"]["backends"]["10.0.1.1:80"] = {"weight": 1, "status": "down"}  # type: ignore[index]
    out = fleet.compare([node("a"), node("b"), drained])
    assert out["differences"][0]["reasons"] == ["backend 10.0.1.1:80 down (others active)"]


def test_a_ring_that_differs_from_its_own_config() -> None:
    odd = node("c")
    odd["vips"]["10.0.0.10:80/tcp"]["digest"] = "0" * 32  # type: ignore[index]
    out = fleet.compare([node("a"), node("b"), odd])
    assert out["differences"][0]["reasons"] == [
        "its data plane's ring differs from its own config (re-apply, or re-attach)"]


def test_a_missing_vip_and_bad_node_arguments() -> None:
    empty = {**node("c"), "vips": {}}
    out = fleet.compare([node("a"), node("b"), empty])
    assert out["differences"] == [{"node": "c", "vip": "10.0.0.10:80/tcp", "reasons": ["VIP missing"]}]
    with pytest.raises(FastpathError, match="at least two nodes"):
        fleet.compare([node("a")])
    with pytest.raises(FastpathError, match="node a is named twice"):
        fleet.compare([node("a"), node("a")])
    with pytest.raises(FastpathError, match="bad node 'eth0@'"):
        fleet.load_node("eth0@")


def test_fleet_check_of_saved_digests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for n in (node("a"), node("b"), node("c", seed=3)):
        path = tmp_path / f"{n['node']}.json"
        path.write_text(json.dumps(n))
        files.append(str(path))
    assert main(["lb", "fleet", "check", files[0], files[1]]) == 0
    assert main(["lb", "fleet", "check", *files]) == 1
    err = capsys.readouterr()
    assert "c differs on 10.0.0.10:80/tcp: seed 3 (others 0)" in err.out + err.err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["lb", "fleet", "check", files[0], str(tmp_path / "bad.json")]) == 1
    assert "not a digest file" in capsys.readouterr().err


def test_a_bad_bgp_section_is_one_line_and_applies_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "lb.yaml"
    cfg.write_text("vips:\n  10.0.0.10:80/tcp: {}\nbgp:\n  asn: 65001\n  peers: {10.0.0.1: {asn: x}}\n")
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "lb", "apply", str(cfg), "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "bgp: peer 10.0.0.1: asn: 'x' is not an integer" in res.stderr
