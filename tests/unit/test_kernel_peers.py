"""The pure parts of fastpath.bench.kernel_peers: the peers' map layouts and values, how a
peer's entry is turned into the harness's, and the checks of what a peer answers."""

from __future__ import annotations

import ctypes

import pytest

from fastpath.bench import kernel_peers as kp
from fastpath.errors import CapabilityError, FastpathError

scapy = pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402


def test_tunnel_structs_match_the_samples_header():
    # struct vip: 16-byte address union, dport, family, protocol, padded to 4
    assert ctypes.sizeof(kp.TunnelVip) == 24 and kp.TunnelVip.dport.offset == 16
    assert kp.TunnelVip.family.offset == 18 and kp.TunnelVip.protocol.offset == 20
    # struct iptnl_info: two address unions, family, dmac
    assert ctypes.sizeof(kp.TunnelInfo) == 40 and kp.TunnelInfo.dmac.offset == 34


def test_synproxy_values_pack_like_its_user_space_part():
    # xdp_synproxy.c: mss6 << 32 | ttl << 24 | wscale << 16 | mss4
    assert kp.synproxy_tcpipopts(1460, 1440, 7, 64) == (1440 << 32) | (64 << 24) | (7 << 16) | 1460


def test_the_live_proxys_netfilter_half_matches_its_xdp_half():
    """SYNPROXY completes the handshakes of the XDP program's cookies: the rules must give
    it the MSS and window scale the program's values map encodes, for the proxied port only,
    with SYNs notracked (as the selftest's iptables rules do)."""
    from fastpath.bench import synproxy_live

    text = synproxy_live.rules("eth0", 8080)
    opts = kp.synproxy_tcpipopts()
    mss4, wscale = opts & 0xFFFF, (opts >> 16) & 0xFF
    assert f"synproxy mss {mss4} wscale {wscale} timestamp sack-perm" in text
    assert 'iifname "eth0" tcp dport 8080 tcp flags & (fin | syn | rst | ack) == syn notrack' in text
    assert "ct state invalid,untracked" in text and f"table inet {synproxy_live.TABLE}" in text


def test_the_harness_build_turns_the_entry_into_an_inline_function(tmp_path):
    args, cfile = kp._compile_args(kp.SYNPROXY, "harness", tmp_path, 94)
    assert cfile.name == "peer_harness.c"
    entry = "-Dsyncookie_xdp=fp_peer_entry(struct xdp_md *); static __always_inline int fp_peer_process"
    assert entry in args
    assert "-DBENCH_PROCESS=fp_peer_process" in args and "-DBENCH_MOVES_TAIL" in args
    assert args[-2:] == ["-include", str(tmp_path / kp.SYNPROXY.source)]
    assert any(a.startswith("-Dsyncookie_tc=") for a in args), "the tc entry is not built"
    noop, _ = kp._compile_args(kp.TUNNEL, "noop", tmp_path, 74)
    assert "-DBENCH_NOOP" in noop and "-DBENCH_MOVES_TAIL" not in noop
    plain, cfile = kp._compile_args(kp.SYNPROXY, "plain", tmp_path, 94)
    assert cfile == tmp_path / kp.SYNPROXY.source and not any("BENCH" in a for a in plain)


def _syn():
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return (eth / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / TCP(sport=40000, dport=80, flags="S",
                                                                       seq=1000)).build()


def _synack(**tcp):
    fields = {"sport": 80, "dport": 40000, "flags": "SA", "seq": 777, "ack": 1001, **tcp}
    return (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.0.0.2", dst="10.0.0.1")
            / TCP(**fields)).build()


def test_check_synack_accepts_a_correct_answer_and_returns_the_cookie():
    assert kp.check_synack(_syn(), _synack()) == 777


@pytest.mark.parametrize("bad, why", [({"ack": 1000}, "ack"), ({"flags": "S"}, "flags"),
                                      ({"sport": 81}, "ports"), ({"chksum": 1}, "TCP checksum")])
def test_check_synack_rejects_a_wrong_answer(bad, why):
    with pytest.raises(FastpathError, match=why):
        kp.check_synack(_syn(), _synack(**bad))


def test_cookie_ack_returns_the_cookie_plus_one():
    ack = Ether(kp.cookie_ack(_syn(), 2**32 - 1, 94))
    assert ack[TCP].flags == "A" and ack[TCP].ack == 0 and ack[TCP].seq == 1001 and len(bytes(ack)) == 94


def _ipip(inner: bytes, **outer):
    fields = {"src": "10.0.0.1", "dst": "10.0.0.11", "proto": 4, "len": 20 + len(inner) - 14, **outer}
    return (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:aa") / IP(**fields)).build() + inner[14:]


def test_check_tunnel_accepts_the_encapsulation_and_rejects_flaws():
    inner = _syn()
    mac = bytes.fromhex("0200000000aa")
    kp.check_tunnel(inner, _ipip(inner), "10.0.0.1", "10.0.0.11", mac)
    with pytest.raises(FastpathError, match="outer"):
        kp.check_tunnel(inner, _ipip(inner, dst="10.0.0.12"), "10.0.0.1", "10.0.0.11", mac)
    with pytest.raises(FastpathError, match="inner"):
        kp.check_tunnel(inner, _ipip(inner)[:-1] + b"\x01", "10.0.0.1", "10.0.0.11", mac)


def test_a_missing_source_package_is_one_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(kp, "TARBALL", tmp_path / "linux-source-6.12.tar.xz")
    want = f"{tmp_path}/linux-source-6.12.tar.xz is missing (apt-get install {kp.PACKAGE})"
    assert kp.unavailable_reason() == want
    with pytest.raises(CapabilityError, match="cannot be built"):
        kp.build({"tunnel": 74})


def test_a_missing_peer_skips_its_contenders_or_fails_under_require_all(monkeypatch):
    skipped: dict[str, str] = {}
    exc = CapabilityError("no source")
    monkeypatch.delenv(kp.REQUIRE_ALL_ENV, raising=False)
    kp.skip_or_fail(skipped.__setitem__, ["a", "b"], exc)
    assert skipped == {"a": "no source", "b": "no source"}
    monkeypatch.setenv(kp.REQUIRE_ALL_ENV, "1")
    with pytest.raises(FastpathError, match="no source"):
        kp.skip_or_fail(skipped.__setitem__, ["c"], exc)
