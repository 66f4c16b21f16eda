"""The SYN guard's control plane without privileges: input parsing, configuration to map
values, window-scale rule, nft script, address words, the CLI parser, the flood frame."""

from __future__ import annotations

import argparse
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from fastpath.apps.guard import abi, cli, nft
from fastpath.apps.guard.config import GuardConfig, parse_ports, parse_protect, parse_rate, server_wscale
from fastpath.cli import build_parser
from fastpath.core.args import parse_cidr
from fastpath.errors import FastpathError
from fastpath.labs import flood


@pytest.mark.parametrize("text,want", [("80", (80,)), ("443,80,80", (80, 443)), ("", ()),
                                       (" 1 , 65535 ", (1, 65535))])
def test_parse_ports(text, want):
    assert parse_ports(text) == want


@pytest.mark.parametrize("text,msg", [("0", "port 0 out of range"), ("65536", "out of range"),
                                      ("http", "not a number"), ("80,,443", "not a number"),
                                      ("-1", "not a number")])
def test_parse_ports_rejects(text, msg):
    with pytest.raises(FastpathError, match=msg):
        parse_ports(text)


@pytest.mark.parametrize("text,want", [("200/s", 200.0), ("200", 200.0), ("6000/min", 100.0), ("0.5/s", 0.5),
                                       ("off", 0.0), ("0", 0.0)])
def test_parse_rate(text, want):
    assert parse_rate(text) == want


@pytest.mark.parametrize("text", ["fast", "-5/s", "10/h", "1e12/s", ""])
def test_parse_rate_rejects(text):
    with pytest.raises(FastpathError):
        parse_rate(text)


def test_parse_cidr():
    assert parse_cidr("203.0.113.0/24") == ipaddress.ip_network("203.0.113.0/24")
    assert parse_cidr("2001:db8::/32").version == 6
    assert parse_cidr("10.0.0.1") == ipaddress.ip_network("10.0.0.1/32")
    with pytest.raises(FastpathError, match="did you mean 10.0.0.0/8"):
        parse_cidr("10.0.0.1/8")
    with pytest.raises(FastpathError, match="bad CIDR"):
        parse_cidr("10.0.0.0/33")
    with pytest.raises(FastpathError, match="bad CIDR"):
        parse_cidr("example.com")


def test_config_validation():
    GuardConfig().validate()
    with pytest.raises(FastpathError, match="both a cookie port and a drop port"):
        GuardConfig(cookie_ports=(80,), drop_ports=(80, 23)).validate()
    with pytest.raises(FastpathError, match="no port to protect"):
        GuardConfig(cookie_ports=()).validate()
    with pytest.raises(FastpathError, match="--syn-burst needs --syn-rate"):
        GuardConfig(syn_burst=5).validate()
    with pytest.raises(FastpathError, match="out of range"):
        GuardConfig(cookie_ports=(70000,)).validate()
    with pytest.raises(FastpathError, match="fragment verdict"):
        GuardConfig(fragments="maybe").validate()
    with pytest.raises(FastpathError, match="bad cookie mode 'sometimes'"):
        GuardConfig(cookies="sometimes").validate()
    with pytest.raises(FastpathError, match="SYN threshold 0/s out of range"):
        GuardConfig(syn_threshold=0).validate()
    with pytest.raises(FastpathError, match="quiet period -1 s out of range"):
        GuardConfig(quiet_seconds=-1).validate()


def test_config_to_map_value():
    off = GuardConfig().to_ctype(False, False)
    assert (off.syn_interval_ns, off.syn_burst_ns, off.ban_ns, off.ban_after) == (0, 0, 0, 0)
    assert off.flags == abi.CFG_COOKIES | abi.CFG_ADAPTIVE | abi.CFG_DESTS, \
        "adaptive cookies, only the protected addresses by default"
    assert GuardConfig(cookies="always", protect=("any",)).to_ctype(False, False).flags == abi.CFG_COOKIES
    cfg = GuardConfig(syn_rate=200, syn_burst=400, ban_seconds=30, cookies="off", fragments="pass")
    v = cfg.to_ctype(True, True)
    assert v.syn_interval_ns == 5_000_000
    assert v.syn_burst_ns == 399 * 5_000_000
    assert (v.ban_ns, v.ban_after) == (30_000_000_000, 400)
    assert v.flags == abi.CFG_FRAG_PASS | abi.CFG_ACL4 | abi.CFG_ACL6 | abi.CFG_DESTS
    # defaults: burst = the rate, ban after one burst of excess; ban_seconds 0: never ban
    assert GuardConfig(syn_rate=10).to_ctype(False, False).syn_burst_ns == 9 * 100_000_000
    assert GuardConfig(syn_rate=10, ban_seconds=0).to_ctype(False, False).ban_after == 0
    assert GuardConfig(syn_rate=0.5).burst == 1


@pytest.mark.parametrize("text,want", [
    ("local", ("local",)), ("LOCAL, 192.0.2.10", ("local", "192.0.2.10")),
    ("192.0.2.10/32,2001:db8::8/126,local", ("192.0.2.10", "2001:db8::8/126", "local")),
    ("any", ("any",)), ("local,local", ("local",)),
])
def test_parse_protect(text, want):
    assert parse_protect(text) == want
    assert GuardConfig(protect=want).validate().protect == want


@pytest.mark.parametrize("text,msg", [
    ("", "--protect is empty"), ("any,local", "covers every address"),
    ("10.0.0.0/16", "65,536 addresses, more than 256"), ("10.0.0.1/24", "did you mean 10.0.0.0/24"),
    ("eth0", "bad --protect address 'eth0'"),
])
def test_parse_protect_rejects(text, msg):
    with pytest.raises(FastpathError) as exc:
        parse_protect(text)
    assert msg in str(exc.value)


def test_protect_lists_addresses_and_old_state_defaults_to_local():
    cfg = GuardConfig(protect=("local", "192.0.2.10", "2001:db8::4/127"))
    assert [str(a) for a in cfg.listed()] == ["192.0.2.10", "2001:db8::4", "2001:db8::5"]
    assert GuardConfig.from_json(cfg.to_json()) == cfg
    old = cfg.to_json()
    del old["protect"]  # a state file written before --protect existed
    assert GuardConfig.from_json(old).protect == ("local",)
    assert "the namespace's own addresses + 192.0.2.10" in cfg.describe()


def test_chain_refuses_a_vip_the_guard_would_answer():
    """The chain's overlap check: a TCP VIP on an address and port the guard protects is one
    clear error; another port, another address or a UDP VIP is fine; --protect any meets
    every VIP on a guarded port."""
    from fastpath.apps.guard import synguard
    from fastpath.apps.lb import config as lbconfig
    from fastpath.apps.lb import program as lbprogram
    from fastpath.bpf import chain

    host = ipaddress.ip_address("10.20.1.1")
    guard = synguard.guard_claims(GuardConfig(cookie_ports=(80, 443), drop_ports=(23,)), [host])

    def check(cfg_claims: list[chain.Claim], *vips: str) -> None:
        lb = lbprogram.vip_claims(lbconfig.parse_vip(v) for v in vips)
        chain.check_claims("nosuch0", "no-such-ns", {"syn_guard": cfg_claims, "l4lb": lb})

    check(guard, "10.20.100.1:80/tcp", "10.20.1.1:8080/tcp", "10.20.1.1:80/udp")
    for vip in ("10.20.1.1:80/tcp", "10.20.1.1:23/tcp"):
        with pytest.raises(FastpathError) as exc:
            check(guard, "10.20.100.1:80/tcp", vip)
        text = str(exc.value)
        assert f"VIP {vip} on nosuch0 in no-such-ns is also an address the SYN guard protects" in text
        assert "would answer its SYNs itself" in text and "--protect" in text and "\n" not in text
    anyguard = synguard.guard_claims(GuardConfig(protect=("any",)), [])
    with pytest.raises(FastpathError, match="VIP 10.20.100.1:443/tcp"):
        check(anyguard, "10.20.100.1:443/tcp")
    check(anyguard, "10.20.100.1:8080/tcp")


def test_config_json_round_trip_and_description():
    cfg = GuardConfig(cookie_ports=(80, 443), drop_ports=(23,), syn_rate=200, syn_burst=400)
    assert GuardConfig.from_json(cfg.to_json()) == cfg
    text = cfg.describe()
    assert "SYN cookies on 80,443" in text and "SYNs dropped on 23" in text
    assert "200 SYN/s per source (burst 400, ban 60s after 400 excess)" in text
    assert "cookies off" in GuardConfig(cookies="off").describe()
    assert ("adaptive SYN cookies on 80,443 (over 5000 unanswered SYN/s per CPU, back after 30s quiet, "
            "SYNPROXY rules on-demand)") in (
        GuardConfig().describe())
    # a state written before adaptive mode existed: True was cookies for every SYN
    assert GuardConfig.from_json({"cookie_ports": [80], "cookies": True}).cookies == "always"
    assert GuardConfig.from_json({"cookie_ports": [80], "cookies": False}).cookies == "off"


def test_adaptive_threshold_per_window():
    """The threshold (SYN/s per CPU) becomes SYNs per CPU per SG_RATE_WINDOW_NS window."""
    window = abi.TUNABLES["SG_RATE_WINDOW_NS"]
    a = GuardConfig().adaptive_ctype(window)
    assert (a.window_syns, a.quiet_ns) == (500, 30_000_000_000)
    assert GuardConfig(syn_threshold=5, quiet_seconds=0.5).adaptive_ctype(window).window_syns == 1
    assert GuardConfig(syn_threshold=12345).adaptive_ctype(window).window_syns == 1235
    assert GuardConfig(quiet_seconds=0).adaptive_ctype(window).quiet_ns == 2 * window, "two windows at least"


def test_synproxy_rules_on_demand_only_for_adaptive_cookies() -> None:
    assert GuardConfig().on_demand, "the default: rules armed only while a port needs cookies"
    assert not GuardConfig(synproxy="always").on_demand
    assert not GuardConfig(cookies="always").on_demand
    assert not GuardConfig(cookies="off").on_demand
    assert not GuardConfig(cookie_ports=(), drop_ports=(23,)).on_demand
    assert not GuardConfig(fragments="pass").on_demand, "reassembled SYNs need the rules' fragment chains"
    with pytest.raises(FastpathError, match="bad SYNPROXY setting 'sometimes'"):
        GuardConfig(synproxy="sometimes").validate()
    args = build_parser().parse_args(["xdp", "attach", "eth0", "--synproxy", "always"])
    assert cli.attach_config(args).synproxy == "always"


ADAPTIVE_ONLY = "--syn-threshold, --quiet-period and --synproxy apply to --cookies adaptive"


@pytest.mark.parametrize(("argv", "msg"), [
    (["--cookies", "always", "--no-cookies"], "--no-cookies contradicts --cookies always"),
    (["--cookies", "always", "--syn-threshold", "100/s"], f"{ADAPTIVE_ONLY}, not always"),
    (["--no-cookies", "--quiet-period", "3"], f"{ADAPTIVE_ONLY}, not off"),
    (["--cookies", "always", "--synproxy", "always"], f"{ADAPTIVE_ONLY}, not always"),
    (["--syn-threshold", "off"], "--syn-threshold cannot be off"),
    (["--syn-threshold", "lots"], "bad SYN rate 'lots'"),
    (["--quiet-period", "-2"], "--quiet-period -2 out of range"),
    (["--quiet-period", "soon"], "--quiet-period 'soon' is not a number"),
])
def test_cookie_options_bad_input_is_one_clear_error(argv: list[str], msg: str) -> None:
    args = build_parser().parse_args(["xdp", "attach", "eth0", *argv])
    with pytest.raises(FastpathError) as exc:
        cli._cookie_settings(args)
    assert exc.value.message == msg


def test_cookie_options_are_taken() -> None:
    parse = build_parser().parse_args
    assert cli._cookie_settings(parse(["xdp", "attach", "eth0"])) == {
        "cookies": "adaptive", "quiet_seconds": 30.0}
    assert cli._cookie_settings(parse(["xdp", "attach", "eth0", "--no-cookies"]))["cookies"] == "off"
    got = cli._cookie_settings(parse(["xdp", "attach", "eth0", "--syn-threshold", "600/min",
                                      "--quiet-period", "2.5"]))
    assert got == {"cookies": "adaptive", "syn_threshold": 10.0, "quiet_seconds": 2.5}


@pytest.mark.parametrize("rmem,core,want", [(6291456, 212992, 7), (33554432, 4194304, 10), (4096, 0, 0),
                                            (1 << 40, 0, 14), (131072, 8388608, 8)])
def test_server_wscale_follows_tcp_select_initial_window(rmem, core, want):
    assert server_wscale(rmem, core) == want


def test_address_words_round_trip():
    for text in ("10.1.2.3", "2001:db8::1", "::ffff:1.2.3.4"):
        addr = ipaddress.ip_address(text)
        back = abi.address_of(abi.mapped_words(addr))
        assert str(back) == (text if "ffff" not in text else "1.2.3.4")
    for net in ("198.51.100.0/24", "0.0.0.0/0", "2001:db8:a::/48", "fd00::1/128"):
        n = ipaddress.ip_network(net)
        assert abi.lpm_network(abi.lpm_key(n)) == n


def test_nft_script():
    defines = {**abi.TUNABLES, "SG_MSS4": 1460, "SG_WSCALE": 7}
    text = nft.render("fastpath_synguard_eth0_2", "eth0", [443, 80], defines)
    assert "table inet fastpath_synguard_eth0_2 {" in text
    assert "elements = { 80, 443 }" in text
    assert ('iifname "eth0" tcp dport @cookie_ports ct state invalid,untracked '
            "synproxy mss 1460 wscale 7 timestamp sack-perm") in text
    assert 'iifname "eth0" tcp dport @cookie_ports ct state invalid drop' in text
    bare = nft.render("t", "eth0", [], {**defines, "SG_WSCALE": 15, "SG_TIMESTAMPS": 0, "SG_SACK": 0})
    assert "elements" not in bare and "wscale" not in bare and "timestamp" not in bare
    assert "prerouting" not in text and "mark" not in text, "fragments dropped by XDP: no extra chains"
    assert nft.table_name("eth0.100", 7) == "fastpath_synguard_eth0_100_7"
    assert nft.table_name("veth-a", 12) == "fastpath_synguard_veth_a_12"


def test_nft_script_with_fragments_passed():
    """Reassembled SYNs: marked before defrag (-450), handled after it (-350), the mark cleared."""
    text = nft.render("t", "eth0", [80], {**abi.TUNABLES, "SG_MSS4": 1460, "SG_WSCALE": 7}, fragments=True)
    early = text[text.index("chain fragments {"):text.index("chain reassembled {")]
    late = text[text.index("chain reassembled {"):text.index("chain input {")]
    assert "type filter hook prerouting priority -450;" in early
    assert ('iifname "eth0" ip frag-off & 0x3fff == 0x2000 meta l4proto tcp '
            "meta mark set meta mark | 0x00400000") in early
    assert ('iifname "eth0" frag frag-off 0 frag more-fragments 1 meta l4proto tcp '
            "meta mark set meta mark | 0x00400000") in early
    assert "type filter hook prerouting priority -350;" in late
    lines = [ln.strip() for ln in late.splitlines() if ln.strip()]
    marked = 'iifname "eth0" meta mark & 0x00400000 != 0 '
    syn = "tcp dport @cookie_ports tcp flags & (syn|ack) == syn"
    assert lines.index(f"{marked}meta nfproto ipv6 {syn} drop") < lines.index(f"{marked}{syn} notrack")
    assert lines[-2] == "meta mark & 0x00400000 != 0 meta mark set meta mark & 0xffbfffff"
    assert "synproxy mss 1460 wscale 7" in text[text.index("chain input {"):]


def test_cli_parser_and_help():
    parser = build_parser()
    args = parser.parse_args(["xdp", "attach", "eth0", "--netns", "ns1", "--ports", "80,443",
                              "--drop-ports", "23", "--syn-rate", "200/s", "--syn-burst", "400",
                              "--no-cookies"])
    assert args.func is cli.cmd_attach
    assert (args.iface, args.netns, args.ports, args.drop_ports, args.no_cookies) == (
        "eth0", "ns1", "80,443", "23", True)
    for argv, func in ((["xdp", "detach", "eth0"], cli.cmd_detach), (["xdp", "status"], cli.cmd_status),
                       (["xdp", "stats", "eth0", "--watch"], cli.cmd_stats),
                       (["xdp", "deny", "add", "10.0.0.0/8"], cli.cmd_acl),
                       (["xdp", "ports", "eth0", "--add", "8443"], cli.cmd_ports),
                       (["xdp", "rate", "eth0", "--syn-rate", "off"], cli.cmd_rate)):
        assert parser.parse_args(argv).func is func
    assert set(cli.STAT_HELP) == set(abi.STAT_NAMES)
    assert "fastpath xdp attach eth0 --ports 80,443" in cli.EPILOG


@pytest.mark.parametrize(("option", "text", "msg"), [
    ("syn_burst", "x", "--syn-burst 'x' is not a whole number"),
    ("syn_burst", "-3", "--syn-burst -3 out of range"),
    ("ban_after", "4294967296", "--ban-after 4294967296 out of range"),  # a u32 in the config
    ("ban_seconds", "1e9", "--ban-seconds 1e9 out of range"),
    ("ban_seconds", "soon", "--ban-seconds 'soon' is not a number"),
])
def test_rate_options_out_of_range_are_one_clear_error(option: str, text: str, msg: str) -> None:
    given = {"syn_rate": "200/s", "syn_burst": None, "ban_after": None, "ban_seconds": None, option: text}
    with pytest.raises(FastpathError) as exc:
        cli._rate_changes(argparse.Namespace(**given), GuardConfig())
    assert exc.value.message == msg


def test_rate_options_within_range_are_taken() -> None:
    args = argparse.Namespace(syn_rate="200/s", syn_burst="400", ban_after="4294967295", ban_seconds="0.5")
    cfg = cli._rate_changes(args, GuardConfig())
    assert (cfg.syn_rate, cfg.syn_burst, cfg.ban_after, cfg.ban_seconds) == (200.0, 400, 4294967295, 0.5)


def test_flood_frame_is_a_valid_syn():
    raw = flood.syn_frame(b"\x02" * 6, b"\x04" * 6, "10.99.0.0", "10.66.0.2", 8080)
    pkt = Ether(raw)
    assert pkt[TCP].flags == "S" and pkt[TCP].dport == 8080 and pkt[TCP].options == [("MSS", 1460)]
    fresh = IP(bytes(pkt[IP]))
    fresh.chksum = None
    assert IP(fresh.build()).chksum == pkt[IP].chksum
    assert len(raw) == 14 + 20 + 24


def _demo_result(off_ok: int, off_failed: int, on_ok: int, on_failed: int, pps: int = 300_000) -> dict:
    phase = {"flood_pps": pps, "synacks_from_xdp_pps": 0, "seconds": 6.0}
    return {"engine": "packet",
            "phases": [{**phase, "guard": "off", "legit_ok": off_ok, "legit_failed": off_failed},
                       {**phase, "guard": "on", "legit_ok": on_ok, "legit_failed": on_failed}]}


def test_synflood_demo_verdict_checks_its_premise() -> None:
    from fastpath.labs import flooddemo

    assert flooddemo.verdict(_demo_result(0, 7, 120, 1)) == []
    unhurt = flooddemo.verdict(_demo_result(117, 0, 120, 0, pps=98))
    assert any("did not hurt the unguarded server: 117/117" in p for p in unhurt)
    assert any("barely reached" in p and "98 frames/s" in p for p in unhurt)
    assert any("served only 90/120" in p for p in flooddemo.verdict(_demo_result(0, 7, 90, 30)))


def test_lb_demo_verdict_checks_its_clients() -> None:
    from fastpath.labs import lb_demo

    assert lb_demo.verdict({"b1": 300, "b2": 200, "b3": 100}) == []
    failing = {"b1": 300, "b2": 200, "b3": 100, "error": 50}
    assert lb_demo.verdict(failing) == ["50 of 650 client connections failed"]
    assert lb_demo.verdict({"error": 600}) == ["600 of 600 client connections failed",
                                               "no connection reached b1, b2, b3"]


@pytest.mark.parametrize(("src", "dst", "net"), [("10.99.0.0", "10.66.0.2", "10.99.0.0/16"),
                                                 ("fd99::", "fd66::2", "fd99::/64"),
                                                 ("10.96.0.0", "10.66.0.2", "10.96.0.0/12")])
def test_packet_engine_pool_frames_are_valid_distinct_syns(src: str, dst: str, net: str) -> None:
    """The packet engine's frames: each a SYN to the target with a random source inside
    --src-net (whole random bytes: a /12 narrows to its first /16), and checksums a kernel
    accepts (recomputed by scapy here)."""
    import random

    frame = flood.syn_frame(b"\x02" * 6, b"\x04" * 6, src, dst, 8080)
    network = ipaddress.ip_network(net)
    pool = flood.frame_pool(frame, network, count=200, rng=random.Random(7))
    n = len(frame)
    assert len(pool) == 200 * n
    sources = set()
    for i in range(200):
        raw = pool[i * n:(i + 1) * n]
        pkt = Ether(raw)
        redo = Ether(raw)
        del redo[TCP].chksum
        if IP in redo:
            del redo[IP].chksum
        redo = Ether(bytes(redo))
        assert pkt[TCP].chksum == redo[TCP].chksum
        if IP in pkt:
            assert pkt[IP].chksum == redo[IP].chksum
        assert pkt[TCP].flags == "S" and pkt[TCP].dport == 8080 and pkt.payload.dst == dst
        assert ipaddress.ip_address(pkt.payload.src) in network
        sources.add((pkt.payload.src, pkt[TCP].sport))
    assert len(sources) >= 195


def test_status_says_where_the_synproxy_rules_stand() -> None:
    cell = cli._synproxy_cell
    assert cell({"setting": "on-demand", "armed": False, "table": None, "watcher_pid": 42}) == \
        "out (on demand)"
    assert cell({"setting": "on-demand", "armed": True, "table": "t", "watcher_pid": None}) == \
        "in (on demand, NO watcher)"
    assert cell({"setting": "always", "armed": True, "table": "t", "watcher_pid": None}) == "in (always)"
    assert cell({"setting": "off", "armed": False, "table": None, "watcher_pid": None}) == "-"
    assert cell(None) == "-"
