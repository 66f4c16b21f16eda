"""`fastpath xdp ...` end to end in a namespace lab: attach, status, stats, live changes to
allow/deny lists, ports and rate (seen by the program and by real traffic), atomic re-attach
keeping the maps, detach; and bad input: one line, non-zero exit, nothing applied."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import time

import pytest

from fastpath.apps.guard import abi, existing, nft, synguard
from fastpath.bpf import xdp
from fastpath.labs import floodlab
from fastpath.netns.pytest_plugin import run_fastpath as fastpath

pytestmark = pytest.mark.integration

PORT = floodlab.SERVICE_PORT




@pytest.fixture
def lab(make_lab):
    lab = make_lab(floodlab.TOPOLOGY)
    server = lab.spawn("server", floodlab.serve_argv())
    server.wait_output("ready")
    yield lab
    floodlab.cleanup(lab)  # a failed test may have left the guard attached


# Connects that must succeed wait 2.5 s, as a real client does: on 6.18 the server counts one
# TSEcrRejected per proxied handshake and now and then a connect completes only on the server's
# SYN-ACK retransmit after 1 s (an open guard defect, issue 11, not what this test checks).
def probe(lab, count: int = 3, timeout: float = 2.5, target: str = floodlab.SERVER4) -> dict:
    return floodlab.probe_result(lab.run("client", floodlab.probe_argv(
        target=target, count=count, timeout=timeout, interval=0.0), timeout=60).stdout)


def counters(ns: str) -> dict[str, int]:
    out = json.loads(fastpath("xdp", "stats", "eth0", "--netns", ns, "--json", "--interval", "0").stdout)
    return {k: v["packets"] for k, v in out["counters"].items()}


def test_attach_live_changes_reattach_detach(lab):
    ns = lab.netns("server")
    loose = lab.run("server", ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"]).stdout.strip()
    # Generic mode here (the flood test runs native): XDP_TX then leaves through the stack's
    # transmit path, so the bridge-side veth needs no program of its own.
    res = fastpath("xdp", "attach", "eth0", "--netns", ns, "--mode", "generic", "--ports", f"{PORT},443",
                   "--drop-ports", "23", "--syn-rate", "500/s", "--syn-burst", "50", "--cookies", "always")
    notes, line = res.stderr.strip().splitlines()
    # the lab's server has the kernel's own cookies off (so a flood hurts it unguarded)
    assert "net.ipv4.tcp_syncookies 0 -> 1" in notes and sysctl(lab, "net.ipv4.tcp_syncookies") == "1"
    for word in ("syn_guard attached to eth0", "generic mode", f"SYN cookies on 443,{PORT}",
                 "SYNs dropped on 23", "500 SYN/s per source", "nft table",
                 f"fastpath xdp detach eth0 --netns {ns}"):
        assert word in line, word
    att = synguard.attachment("eth0", ns)
    table = att.options["nft_table"]
    assert nft.ports(ns, table) == [443, PORT]
    assert synguard.read_ports(att) == {23: abi.PORT_DROP, 443: abi.PORT_COOKIE,
                                        PORT: abi.PORT_COOKIE}
    raw = synguard.read_raw_config(att)
    assert (raw.syn_interval_ns, raw.syn_burst_ns) == (2_000_000, 49 * 2_000_000)
    assert raw.flags == abi.CFG_COOKIES | abi.CFG_DESTS

    # status: every guarded interface, in every namespace
    status = [s for s in json.loads(fastpath("xdp", "status", "--json").stdout) if s["netns"] == ns]
    assert len(status) == 1 and status[0]["alive"] is True and status[0]["nft_table"] == table
    assert status[0]["config"]["cookie_ports"] == [443, PORT]
    human = fastpath("xdp", "status").stdout
    assert ns in human and "eth0" in human

    # real clients get through the cookie path, v4 and v6
    assert probe(lab)["ok"] == 3
    assert probe(lab, target=floodlab.SERVER6)["ok"] == 3
    c = counters(ns)
    assert c["tx_cookie"] >= 6 and c["pass_cookie"] >= 6

    # deny the client: its connects die in XDP; allow a longer prefix inside it: back again
    fastpath("xdp", "deny", "add", "10.66.0.0/24", "fd66::/64", "--netns", ns)
    assert probe(lab, count=2, timeout=0.5)["ok"] == 0
    assert counters(ns)["drop_deny"] > c["drop_deny"]
    res = fastpath("xdp", "allow", "add", "10.66.0.1/32", "--netns", ns)
    assert "add 10.66.0.1/32 to allow list of eth0" in res.stderr
    before = counters(ns)["pass_allow"]
    assert probe(lab, count=2)["ok"] == 2
    assert counters(ns)["pass_allow"] > before
    lists = json.loads(fastpath("xdp", "deny", "list", "--json").stdout)
    assert {(e["cidr"], e["netns"]) for e in lists} >= {("10.66.0.0/24", ns), ("fd66::/64", ns)}
    assert json.loads(fastpath("xdp", "allow", "list", "--json", "--netns", ns).stdout) == [
        {"ifname": "eth0", "netns": ns, "cidr": "10.66.0.1/32", "action": "allow"}]
    fastpath("xdp", "allow", "del", "10.66.0.1/32", "--netns", ns)
    fastpath("xdp", "deny", "del", "10.66.0.0/24", "fd66::/64", "--netns", ns)
    assert synguard.acl_entries(att) == []
    assert synguard.read_raw_config(att).flags == abi.CFG_COOKIES | abi.CFG_DESTS, "empty lists: no lookups"

    # ports: add a cookie port and remove one, live, in XDP and in the SYNPROXY set
    out = json.loads(fastpath("xdp", "ports", "eth0", "--netns", ns, "--add", "8443", "--remove", "443",
                              "--json").stdout)
    assert out["cookie_ports"] == [PORT, 8443] and out["drop_ports"] == [23]
    assert out["synproxy_ports"] == [PORT, 8443]
    assert synguard.read_ports(att) == {23: abi.PORT_DROP, PORT: abi.PORT_COOKIE,
                                        8443: abi.PORT_COOKIE}

    # rate: a tight limit makes the client's own SYNs limited, live; off again restores it
    fastpath("xdp", "rate", "eth0", "--netns", ns, "--syn-rate", "1/s", "--syn-burst", "1",
             "--ban-seconds", "0")
    before = counters(ns)["drop_limited"]
    result = probe(lab, count=3, timeout=0.5)
    assert result["ok"] <= 1
    assert counters(ns)["drop_limited"] > before
    fastpath("xdp", "rate", "eth0", "--netns", ns, "--syn-rate", "off")
    assert synguard.read_raw_config(synguard.attachment("eth0", ns)).syn_interval_ns == 0
    time.sleep(1.1)
    assert probe(lab, count=3)["ok"] == 3

    # re-attach with new options: same link, new program, maps (lists, flows, counters) kept
    fastpath("xdp", "deny", "add", "203.0.113.0/24", "--iface", "eth0", "--netns", ns)
    # the probes' flows ended with their connections (FIN/RST); an open one, as the guard
    # carries over at attach, stands for what a re-attach must keep
    synguard.add_flows(att, [existing.Connection(ipaddress.ip_address(floodlab.CLIENT4), 40000,
                                                 ipaddress.ip_address(floodlab.SERVER4), PORT, 1)])
    flows_before = _flows(att)
    cookies_before = counters(ns)["tx_cookie"]
    new = json.loads(fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", str(PORT),
                              "--fragments", "pass", "--cookies", "always", "--json").stdout)
    assert new["replaced"] is True and new["generation"] == 2
    assert new["prog_id"] != status[0]["prog_id"]
    assert xdp.read_state("eth0", ns).link_id == att.link_id  # type: ignore[union-attr]
    att2 = synguard.attachment("eth0", ns)
    assert [str(n) for n, _ in synguard.acl_entries(att2)] == ["203.0.113.0/24"]
    assert _flows(att2) >= flows_before > 0
    assert counters(ns)["tx_cookie"] >= cookies_before
    assert synguard.read_ports(att2) == {PORT: abi.PORT_COOKIE}
    assert nft.ports(ns, table) == [PORT]
    assert synguard.read_raw_config(att2).flags & abi.CFG_FRAG_PASS
    assert probe(lab, count=3)["ok"] == 3

    # --no-cookies drops the SYNPROXY rules; SYNs reach the server directly
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", str(PORT), "--no-cookies")
    assert not nft.exists(ns, table)
    assert sysctl(lab, "net.ipv4.tcp_syncookies") == "0", "given back with the cookies"
    before = counters(ns)["pass_syn"]
    assert probe(lab, count=2)["ok"] == 2
    assert counters(ns)["pass_syn"] >= before + 2

    fastpath("xdp", "detach", "eth0", "--netns", ns)
    assert "xdp" not in lab.run("server", ["ip", "link", "show", "eth0"]).stdout
    assert not xdp.pin_dir("eth0", ns).exists() and not xdp.state_path("eth0", ns).exists()
    assert "fastpath" not in lab.run("server", ["nft", "list", "ruleset"]).stdout
    assert lab.run("server", ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"]).stdout.strip() == loose
    assert probe(lab, count=2)["ok"] == 2


def test_guards_in_one_namespace_share_the_sysctls_they_set(lab):
    """Two guards with cookies in one namespace: the first sets tcp_syncookies (to 1) and
    nf_conntrack_tcp_loose (to 0); when it goes first the second keeps them set, and the
    last one to go restores the values from before either came."""
    ns = lab.netns("server")
    lab.run("server", ["ip", "link", "add", "fpveth0", "type", "veth", "peer", "name", "fpveth1"])
    lab.run("server", ["ip", "link", "set", "fpveth0", "up"])
    keys = ("net.ipv4.tcp_syncookies", "net.netfilter.nf_conntrack_tcp_loose")
    before = [sysctl(lab, k) for k in keys]
    assert before[0] == "0"
    lab.run("server", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=1"])
    before[1] = "1"
    for ifname in ("eth0", "fpveth0"):
        fastpath("xdp", "attach", ifname, "--netns", ns, "--mode", "generic", "--ports", str(PORT),
                 "--cookies", "always")
    assert [sysctl(lab, k) for k in keys] == ["1", "0"]
    fastpath("xdp", "detach", "eth0", "--netns", ns)
    assert [sysctl(lab, k) for k in keys] == ["1", "0"], "the second guard still needs them"
    assert probe(lab, count=2)["ok"] == 2
    fastpath("xdp", "detach", "fpveth0", "--netns", ns)
    assert [sysctl(lab, k) for k in keys] == before


def sysctl(lab, key: str) -> str:
    return lab.run("server", ["sysctl", "-n", key]).stdout.strip()


def _flows(att: xdp.Attachment) -> int:
    with synguard.open_map(att, "flows") as m:
        return sum(1 for _ in m.keys())


def test_dump_bpf_prints_source_and_interface_defines(lab):
    ns = lab.netns("server")
    out = fastpath("xdp", "attach", "eth0", "--netns", ns, "--dump-bpf").stdout
    assert out.startswith("// cflags:")
    mtu = int(lab.run("server", ["cat", "/sys/class/net/eth0/mtu"]).stdout)
    assert f"-DSG_MSS4={mtu - 40}" in out and f"-DSG_MSS6={mtu - 60}" in out
    assert "-DSG_WSCALE=" in out and "int syn_guard(struct xdp_md *ctx)" in out
    assert not xdp.pin_dir("eth0", ns).exists(), "--dump-bpf attaches nothing"


def test_acl_conflict_changes_nothing(lab):
    ns = lab.netns("server")
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", str(PORT))
    try:
        fastpath("xdp", "deny", "add", "10.9.0.0/16", "--netns", ns)
        res = fastpath("xdp", "allow", "add", "10.8.0.0/16", "10.9.0.0/16", "--netns", ns, check=False)
        assert res.returncode != 0
        assert len(res.stderr.strip().splitlines()) == 1
        assert "10.9.0.0/16 is in the deny list" in res.stderr
        att = synguard.attachment("eth0", ns)
        assert [(str(n), a) for n, a in synguard.acl_entries(att)] == [("10.9.0.0/16", "deny")]
        res = fastpath("xdp", "deny", "del", "10.7.0.0/16", "--netns", ns, check=False)
        assert res.returncode != 0 and "not in the deny list" in res.stderr
        with synguard.open_map(att, "config") as m:
            flags = m.get(ctypes.c_uint32(0)).flags  # type: ignore[union-attr]
        assert flags & abi.CFG_ACL4 and not flags & abi.CFG_ACL6
    finally:
        fastpath("xdp", "detach", "eth0", "--netns", ns)


BAD = [
    (["attach", "nosuch0", "--netns", "{ns}", "--ports", "80"], "unknown interface 'nosuch0'"),
    (["attach", "eth0", "--netns", "fastpath-no-such-ns"], "does not exist"),
    (["attach", "eth0", "--netns", "{ns}", "--ports", "80,70000"], "port 70000 out of range"),
    (["attach", "eth0", "--netns", "{ns}", "--ports", "0"], "port 0 out of range"),
    (["attach", "eth0", "--netns", "{ns}", "--ports", "http"], "port 'http' is not a number"),
    (["attach", "eth0", "--netns", "{ns}", "--ports", "80", "--drop-ports", "80"],
     "port 80 is both a cookie port and a drop port"),
    (["attach", "eth0", "--netns", "{ns}", "--syn-burst", "10"], "--syn-burst needs --syn-rate"),
    (["attach", "eth0", "--netns", "{ns}", "--syn-rate", "fast"], "bad SYN rate 'fast'"),
    (["attach", "eth0", "--netns", "{ns}", "--ports", "", "--drop-ports", ""], "no port to protect"),
    (["attach", "eth0", "--netns", "{ns}", "--mode", "turbo"], "invalid choice"),
    (["stats", "eth0", "--netns", "{ns}"], "not attached"),
    (["detach", "eth0", "--netns", "{ns}"], "nothing attached"),
    (["ports", "eth0", "--netns", "{ns}", "--add", "81"], "not attached"),
    (["rate", "eth0", "--netns", "{ns}", "--syn-rate", "5/s"], "not attached"),
    (["deny", "add", "10.0.0.0/8", "--netns", "{ns}"], "not attached"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[:1] + a[1:2]) + f" {n[:24]}" for a, n in BAD])
def test_bad_input_one_line_nothing_applied(lab, args, needle):
    ns = lab.netns("server")
    res = fastpath("xdp", *[a.format(ns=ns) for a in args], check=False)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and needle in errors[0], res.stderr
    assert len(lines) == 1 or lines[0].startswith("usage:"), "one line, or argparse's usage + error"
    assert not xdp.pin_dir("eth0", ns).exists()
    assert not xdp.state_path("eth0", ns).exists()
    assert "fastpath" not in lab.run("server", ["nft", "list", "ruleset"]).stdout


BAD_ATTACHED = [
    (["deny", "add", "10.0.0.300/8"], "bad CIDR '10.0.0.300/8'"),
    (["deny", "add", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
    (["allow", "add"], "needs at least one CIDR"),
    (["allow", "add", "10.1.0.0/16", "10.1.0.0/16"], "listed twice"),
    (["ports", "eth0", "--add", "70000"], "port 70000 out of range"),
    (["ports", "eth0", "--add", "81", "--remove", "81"], "port 81 is given twice"),
    (["ports", "eth0", "--add", "81", "--add-drop", f"{PORT}"], None),
    (["rate", "eth0"], "nothing to change"),
    (["rate", "eth0", "--syn-rate=-5/s"], "bad SYN rate"),
    (["rate", "eth0", "--syn-burst", "x"], "is not a whole number"),
    (["rate", "eth0", "--ban-seconds", "-1"], "--ban-seconds -1 out of range"),
    (["rate", "eth0", "--ban-after", "4294967296"], "--ban-after 4294967296 out of range"),
]


def test_bad_input_on_attached_guard_changes_nothing(lab):
    ns = lab.netns("server")
    fastpath("xdp", "attach", "eth0", "--netns", ns, "--ports", str(PORT), "--drop-ports", "23")
    try:
        att = synguard.attachment("eth0", ns)
        before = (synguard.read_ports(att), synguard.acl_entries(att), bytes(synguard.read_raw_config(att)),
                  att.options)
        for args, needle in BAD_ATTACHED:
            argv = [*args, "--netns", ns]
            res = fastpath("xdp", *argv, check=False)
            if needle is None:  # a valid change (a cookie port turned drop port): undo it
                assert res.returncode == 0, res.stderr
                fastpath("xdp", "ports", "eth0", "--netns", ns, "--add", str(PORT), "--remove", "81")
                continue
            assert res.returncode != 0, args
            assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1, res.stderr
            assert needle in res.stderr, (args, res.stderr)
        att = synguard.attachment("eth0", ns)
        after = (synguard.read_ports(att), synguard.acl_entries(att), bytes(synguard.read_raw_config(att)),
                 att.options)
        assert after == before
    finally:
        fastpath("xdp", "detach", "eth0", "--netns", ns)
