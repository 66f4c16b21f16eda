"""The load balancer's control plane without the kernel: VIP/backend syntax, the config
file, the flow hash mirror, tunables, state round trip, health-check hysteresis."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from fastpath.apps.lb import abi, balancer, config, hashing, health, maglev, store
from fastpath.errors import FastpathError

ip = ipaddress.ip_address


@pytest.mark.parametrize("text,want", [
    ("10.0.0.1:80/tcp", ("10.0.0.1", 80, "tcp")),
    (" 10.0.0.1:53/UDP ", ("10.0.0.1", 53, "udp")),
    ("[fd00::1]:443/tcp", ("fd00::1", 443, "tcp")),
    ("[2001:db8::a]:65535/udp", ("2001:db8::a", 65535, "udp")),
])
def test_parse_vip(text, want):
    vip = config.parse_vip(text)
    assert (str(vip.address), vip.port, vip.proto) == want
    assert config.parse_vip(str(vip)) == vip


@pytest.mark.parametrize("text,needle", [
    ("10.0.0.1:80", "bad VIP"),
    ("10.0.0.1/tcp", "bad VIP"),
    ("10.0.0.300:80/tcp", "not an IPv4 or IPv6 address"),
    ("10.0.0.1:0/tcp", "out of range"),
    ("10.0.0.1:70000/tcp", "out of range"),
    ("10.0.0.1:http/tcp", "not a number"),
    ("10.0.0.1:80/icmp", "is not tcp or udp"),
    ("fd00::1:80/tcp", "bad VIP"),
    ("224.0.0.1:80/tcp", "not a unicast address"),
    ("0.0.0.0:80/tcp", "not a unicast address"),
    ("[fd00::1]:x/tcp", "not a number"),
    ("[10.0.0.1]:80/tcp", None),
    ("", "bad VIP"),
])
def test_parse_vip_errors_are_one_line_with_a_fix(text, needle):
    if needle is None:   # IPv4 in brackets is accepted
        assert config.parse_vip(text).address == ip("10.0.0.1")
        return
    with pytest.raises(FastpathError) as err:
        config.parse_vip(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.fix and "ADDR:PORT/PROTO" in err.value.fix


@pytest.mark.parametrize("text,want", [
    ("10.0.0.2", ("10.0.0.2", None)),
    ("10.0.0.2:8080", ("10.0.0.2", 8080)),
    ("fd00::2", ("fd00::2", None)),
    ("[fd00::2]", ("fd00::2", None)),
    ("[fd00::2]:8080", ("fd00::2", 8080)),
])
def test_parse_backend(text, want):
    addr, port = config.parse_backend(text)
    assert (str(addr), port) == want


@pytest.mark.parametrize("text", ["10.0.0.2:", "10.0.0.2:99999", "nohost", "[fd00::2", "[fd00::2]:",
                                  "10.0.0.2:80:90", "255.255.255.255"])
def test_parse_backend_errors(text):
    with pytest.raises(FastpathError, match="backend"):
        config.parse_backend(text)


@pytest.mark.parametrize("weight", [0, -1, 1001, "3", 2.5, True, None])
def test_weight_out_of_range(weight):
    with pytest.raises(FastpathError, match="weight .* out of range 1-1000"):
        config.check_weight(weight, "backend x")


def test_check_backend_rules():
    vip = config.parse_vip("10.0.0.1:80/tcp")
    config.check_backend(vip, "dsr", ip("10.0.0.2"), None)
    config.check_backend(vip, "dsr", ip("10.0.0.2"), 80)
    config.check_backend(vip, "nat", ip("10.0.0.2"), 8080)
    with pytest.raises(FastpathError, match="cannot change the port"):
        config.check_backend(vip, "dsr", ip("10.0.0.2"), 8080)
    with pytest.raises(FastpathError, match="address family"):
        config.check_backend(vip, "nat", ip("fd00::2"), 8080)
    assert config.backend_name(vip, "dsr", ip("10.0.0.2"), None) == "10.0.0.2:80"
    assert config.backend_name(vip, "nat", ip("10.0.0.2"), None) == "10.0.0.2:80"
    assert config.backend_name(vip, "nat", ip("10.0.0.2"), 8080) == "10.0.0.2:8080"
    vip6 = config.parse_vip("[fd00::1]:80/tcp")
    assert config.backend_name(vip6, "dsr", ip("fd00::2"), None) == "[fd00::2]:80"


@pytest.mark.parametrize("text,needle", [("heavy", "is not a number"), ("", "is not a number"),
                                         ("0", "out of range"), ("1001", "out of range")])
def test_weight_typed_on_the_command_line(text, needle):
    assert config.parse_weight("7", "backend x") == 7
    with pytest.raises(FastpathError, match=needle) as err:
        config.parse_weight(text, "backend x")
    assert err.value.fix and "\n" not in str(err.value)


def test_parse_client_needs_a_source_port():
    assert config.parse_client("[2001:db8::7]:40000") == (ip("2001:db8::7"), 40000)
    with pytest.raises(FastpathError, match="the source port is missing") as err:
        config.parse_client("198.51.100.7")
    assert "SRC:SPORT" in err.value.fix


def test_attach_options_become_tunables():
    assert config.tunables({"--seed": 7, "--max-vips": None, "--udp-timeout": 5}) == {
        "LB_HASH_SEED": 7, "LB_UDP_TIMEOUT": 5}
    assert set(config.ATTACH_OPTIONS.values()) <= set(abi.TUNABLES)


def test_load_config_file(tmp_path):
    good = tmp_path / "lb.yaml"
    good.write_text("vips:\n  10.0.0.1:80/tcp: {backends: {10.0.0.2: 3}}\n")
    [spec] = config.load_config(good)
    assert (str(spec.vip), spec.backends[0].weight) == ("10.0.0.1:80/tcp", 3)
    with pytest.raises(FastpathError, match="does not exist"):
        config.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vips:\n  - [\n")
    with pytest.raises(FastpathError, match=r"bad.yaml: not valid YAML at line \d"):
        config.load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("vips:\n  10.0.0.1:80/tcp: {mode: tunnel}\n")
    with pytest.raises(FastpathError, match="wrong.yaml: VIP 10.0.0.1:80/tcp: unknown mode 'tunnel'"):
        config.load_config(wrong)


CONFIG = {
    "vips": {
        "10.0.0.10:80/tcp": {
            "mode": "nat", "hash": "src",
            "backends": {"10.0.1.21:8080": {"weight": 3}, "10.0.1.22:8080": 2, "10.0.1.23:8080": None,
                         "10.0.1.24:8080": {"drain": True, "mac": "02:00:00:00:01:24"}},
        },
        "[fd00::10]:53/udp": {"backends": {"fd00::21": {}}},
        "10.0.0.11:80/tcp": None,
    },
}


def test_parse_config():
    specs = {str(s.vip): s for s in config.parse_config(CONFIG)}
    nat = specs["10.0.0.10:80/tcp"]
    assert (nat.mode, nat.hash) == ("nat", "src")
    assert [(str(b.address), b.port, b.weight, b.drained, b.mac) for b in nat.backends] == [
        ("10.0.1.21", 8080, 3, False, None), ("10.0.1.22", 8080, 2, False, None),
        ("10.0.1.23", 8080, 1, False, None), ("10.0.1.24", 8080, 1, True, "02:00:00:00:01:24")]
    assert specs["[fd00::10]:53/udp"].mode == "dsr"
    assert specs["10.0.0.11:80/tcp"].backends == ()
    assert config.parse_config(None) == [] and config.parse_config({"vips": None}) == []


@pytest.mark.parametrize("data,needle", [
    ([], "top level must be a mapping"),
    ({"vip": {}}, "unknown key 'vip'"),
    ({"vips": []}, "'vips' must be a mapping"),
    ({"vips": {"10.0.0.1:80": {}}}, "bad VIP"),
    ({"vips": {"10.0.0.1:80/tcp": {"mode": "tunnel"}}}, "unknown mode 'tunnel'"),
    ({"vips": {"10.0.0.1:80/tcp": {"hash": "md5"}}}, "unknown hash"),
    ({"vips": {"10.0.0.1:80/tcp": {"backend": {}}}}, "unknown key 'backend'"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": ["10.0.0.2"]}}}, "must be a mapping"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"weight": 0}}}}}, "out of range"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"weight": "heavy"}}}}}, "out of range"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"drain": "yes"}}}}}, "true or false"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"mac": "zz"}}}}}, "bad MAC"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"port": 1}}}}}, "unknown key 'port'"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {}, "10.0.0.2:80": {}}}}}, "appears twice"),
    ({"vips": {"10.0.0.1:80/tcp": {}, "10.0.0.1:80/TCP": {}}}, "appears twice"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2:81": {}}}}}, "cannot change the port"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"fd00::2": {}}}}}, "address family"),
])
def test_config_errors(data, needle):
    with pytest.raises(FastpathError) as err:
        config.parse_config(data, "lb.yaml")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("data,fix", [
    ({"vip": {}}, "only 'vips' and 'bgp' are allowed"),
    ({"vips": {"10.0.0.1:80/tcp": {"backend": {}}}}, "use mode, hash, backends"),
    ({"vips": {"10.0.0.1:80/tcp": {"backends": {"10.0.0.2": {"port": 1}}}}}, "use weight, drain, mac"),
])
def test_config_unknown_keys_name_the_allowed_ones(data, fix):
    with pytest.raises(FastpathError) as err:
        config.parse_config(data, "lb.yaml")
    assert err.value.fix == fix


def test_flow_hash_is_pinned():
    """The C data plane computes the same numbers (tests/bpf/test_l4lb.py checks the two
    agree flow by flow); pinning them here catches an accidental change on either side."""
    assert hashing.flow_hash(ip("10.0.0.1"), 1234, 80) == 2749199164
    assert hashing.flow_hash(ip("10.0.0.1"), 1234, 80, seed=7) == 1849874269
    assert hashing.flow_hash(ip("10.0.0.1"), 1234, 80, src_only=True) == 3619529786
    assert hashing.flow_hash(ip("10.0.0.1"), 9999, 81, src_only=True) == 3619529786
    assert hashing.flow_hash(ip("2001:db8::1"), 1234, 80) == 2630783354


def test_jhash_matches_linux_reference_values():
    """Values of jhash_2words() and jhash2(k, 4, ...) as include/linux/jhash.h computes
    them (its text compiled with gcc for user space): the port is the kernel's function,
    not only the data plane's copy of it."""
    assert hashing.jhash_2words(0, 0, 0) == 1489077439
    assert hashing.jhash_2words(0x0100000A, 0x5000D204, 0) == 2749199164
    assert hashing.jhash_2words(0x0100000A, 0x5000D204, 7) == 1849874269
    assert hashing.jhash_4words((0x01000000, 0x0200000A, 3, 4), 9) == 9917614


def test_ipip_source_addresses():
    assert hashing.ipip_source(ip("198.51.100.7"), 0x1234) == ip("172.16.118.51")
    assert hashing.ipip_source(ip("2001:db8::7"), 0x1234) == ip("100::1233")
    tun = {**abi.TUNABLES, "LB_IPIP_V4_PREFIX": 0x0A0B}
    assert str(hashing.ipip_source(ip("198.51.100.7"), 0, tun)).startswith("10.11.")


@pytest.mark.parametrize("changes,needle", [
    ({"LB_RING_SIZE": 65536}, "must be a prime"),
    ({"LB_RING_SIZE": 5}, "must be a prime"),
    ({"LB_MAX_VIPS": 0}, "out of range"),
    ({"LB_MAX_VIPS": 1024, "LB_RING_SIZE": 1_000_003}, "1 GiB"),
    ({"LB_MAX_BACKENDS": 70000}, "out of range"),
    ({"LB_HASH_SEED": -1}, "out of range"),
    ({"LB_CONNTRACK_SIZE": 10}, "out of range"),
    ({"LB_UDP_TIMEOUT": 0}, "--udp-timeout 0 out of range"),
    ({"LB_TCP_TIMEOUT": 8 * 86400}, "--tcp-timeout 691200 out of range"),
    ({"LB_CLOSING_TIMEOUT": -1}, "--closing-timeout -1 out of range"),
    ({"LB_HALF_OPEN_SIZE": 100}, "--half-open 100 out of range"),
    ({"LB_POSSIBLE_CPUS": 4, "LB_RX_CPUS": 0}, "--rx-cpus 0 out of range 1-4"),
    ({"LB_POSSIBLE_CPUS": 4, "LB_RX_CPUS": 5}, "--rx-cpus 5 out of range 1-4"),
    ({"LB_HALF_OPEN_SIZE": 1 << 24, "LB_POSSIBLE_CPUS": 64, "LB_RX_CPUS": 8}, "more than 67108864 entries"),
])
def test_check_tunables(changes, needle):
    config.check_tunables(abi.TUNABLES)
    with pytest.raises(FastpathError, match=needle):
        config.check_tunables({**abi.TUNABLES, **changes})


def _state() -> store.LbState:
    st = store.LbState.for_defines({"LB_RING_SIZE": 4099, "LB_HASH_SEED": 3})
    vs = store.VipState("10.0.0.10", 80, "tcp", "nat", 0, "5tuple")
    for i, w in enumerate((3, 1, 1)):
        b = store.BackendState(f"10.0.1.{21 + i}", 8080, w, i, "02:00:00:00:00:01")
        vs.backends[b.name] = b
    st.vips["10.0.0.10:80/tcp"] = vs
    return st


def test_state_round_trip_and_predict():
    st = _state()
    back = store.LbState.from_json(st.to_json())
    assert back == st
    assert (back.table_size, back.seed) == (4099, 3)
    vip = config.parse_vip("10.0.0.10:80/tcp")
    got = {balancer.predict(st, vip, ip("198.51.100.1"), sp) for sp in range(1000, 1400)}
    assert got == {"10.0.1.21:8080", "10.0.1.22:8080", "10.0.1.23:8080"}
    for b in st.vips["10.0.0.10:80/tcp"].backends.values():
        b.drained = True
    assert balancer.predict(st, vip, ip("198.51.100.1"), 1000) is None
    assert balancer.predict(st, config.parse_vip("10.9.9.9:80/tcp"), ip("198.51.100.1"), 1000) is None


def test_backend_status():
    b = store.BackendState("10.0.0.2", 80, 5, 0, "02:00:00:00:00:02")
    assert (b.status, b.effective_weight) == ("active", 5)
    b.health = "down"
    assert (b.status, b.effective_weight) == ("down", 0)
    b.drained = True
    assert b.status == "drained"
    assert maglev.MAX_WEIGHT == abi.MAX_WEIGHT


def test_health_hysteresis():
    st = _state()
    t = health.targets(st)
    assert [x.port for x in t] == [8080, 8080, 8080]
    hc = health.HealthChecker(fall=2, rise=2)
    ok = dict.fromkeys(t)
    # unknown -> up on the first success
    moves = hc.update(st, ok)
    assert [(m.backend, m.up) for m in moves] == [(x.backend, True) for x in t]
    for m in moves:
        st.vips[m.vip].backends[m.backend].health = "up"
    bad = {**ok, t[0]: "ECONNREFUSED"}
    assert hc.update(st, bad) == []          # one failure: not yet
    moves = hc.update(st, bad)               # two in a row: down
    assert [(m.backend, m.up, m.reason) for m in moves] == [(t[0].backend, False, "ECONNREFUSED")]
    st.vips[t[0].vip].backends[t[0].backend].health = "down"
    assert hc.update(st, ok) == []           # one success: not yet back
    assert [(m.backend, m.up) for m in hc.update(st, ok)] == [(t[0].backend, True)]
    with pytest.raises(FastpathError):
        health.HealthChecker(fall=0)


def test_health_probe_against_local_sockets():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port_closed = closed.getsockname()[1]
    closed.close()
    try:
        up = health.Target("v", "up", "127.0.0.1", srv.getsockname()[1])
        down = health.Target("v", "down", "127.0.0.1", port_closed)
        res = health.probe([up, down], None, 1.0)
        assert res[up] is None
        assert res[down] == "ECONNREFUSED"
    finally:
        srv.close()


def test_udp_vips_are_not_health_checked():
    st = _state()
    st.vips["10.0.0.10:80/tcp"].proto = "udp"
    assert health.targets(st) == []
