"""The SYN guard and the load balancer on the same interface, guard first, in either attach
order: the guard counts and drops SYNs to its protected port, the balancer forwards the VIP's
connections to the backends Maglev names, detaching either leaves the other working, and
detaching both leaves nothing in bpffs or the run state. With the guard on the VIP's own
port, VIP connections still reach the backends (the guard protects only the host's own
addresses) while the guard answers the host's own service on that port with cookies, and an
overlap (a VIP on a protected address and port) is refused with one line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.lb import store
from fastpath.bpf import xdp

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_chain_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


L = _sibling("test_lb")  # its lab: client -> balancer -> three backends, DSR
GUARDED = 23  # the guard drops SYNs to this port of the balancer node's own address
HOST = "10.20.1.1"  # the balancer node's own address on the client's subnet

# Connect to the node's guarded port once; prints "refused", "timeout" or "open".
KNOCK = """
import socket, sys
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""


@pytest.fixture
def chain_lab(make_lab):
    lab = make_lab(L.topology("dsr"))
    t = L.Bench(lab, "dsr")
    sw = lab.netns("sw")
    lab.run("lb", ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])
    for node in L.BACKENDS:
        lab.run(node, ["ip", "addr", "add", f"{L.VIP}/32", "dev", "lo"])
        t.start_server(node)
    try:
        yield t
    finally:
        if xdp.read_state("eth0", t.ns, "syn_guard"):
            L.fastpath("xdp", "detach", "eth0", "--netns", t.ns, check=False)
        if xdp.read_state("eth0", t.ns, "l4lb") or store.state_path("eth0", t.ns).exists():
            L.fastpath("lb", "detach", "eth0", "--netns", t.ns, check=False)
        assert xdp.read_state("lb-eth0", sw) is None, "detach removes the peer's pass program"


def attach_guard(t) -> None:
    L.fastpath("xdp", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--ports", "",
               "--drop-ports", str(GUARDED), "--no-cookies")


def attach_lb(t) -> None:
    L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--table-size", "4099")
    t.lb("vip", "add", t.vip, "--mode", "dsr")
    for node in L.BACKENDS:
        t.lb("backend", "add", t.vip, t.backend(node))


def guard_counters(t) -> dict[str, int]:
    out = json.loads(L.fastpath("xdp", "stats", "eth0", "--netns", t.ns, "--json", "--interval", "0").stdout)
    return {k: v["packets"] for k, v in out["counters"].items()}


def knock(t) -> str:
    return t.lab.run("client", [sys.executable, "-c", KNOCK, HOST, str(GUARDED)], timeout=30).stdout.strip()


def lb_new_flows(t) -> int:
    return int(json.loads(t.lb("stats", "--json").stdout)["vips"][0]["new_flows"])


def check_balancing(t, first_port: int) -> None:
    before = lb_new_flows(t)
    got = t.burst(first_port, 30)
    assert all(not v.startswith("error") for v in got.values()), got
    t.check_predicted(got)
    assert lb_new_flows(t) >= before + 30


def check_guarding(t) -> None:
    before = guard_counters(t)
    assert knock(t) == "timeout"
    after = guard_counters(t)
    assert after["drop_port"] >= before["drop_port"] + 1, (before, after)


@pytest.mark.parametrize("order", ["guard_first", "lb_first"])
def test_guard_and_balancer_share_an_interface(chain_lab, order):
    t = chain_lab
    if order == "guard_first":
        attach_guard(t)
        attach_lb(t)
    else:
        attach_lb(t)
        attach_guard(t)
    guard, balancer = (xdp.read_state("eth0", t.ns, p) for p in ("syn_guard", "l4lb"))
    assert guard is not None and balancer is not None
    assert guard.link_id == balancer.link_id, "one link drives both programs"
    links = t.lab.run("lb", ["ip", "link", "show", "eth0"]).stdout
    assert "xdp" in links

    # Both work: VIP connections are balanced (after passing the guard), guarded SYNs dropped.
    passed = sum(v for k, v in guard_counters(t).items() if k.startswith("pass"))
    check_balancing(t, 31000)
    assert sum(v for k, v in guard_counters(t).items() if k.startswith("pass")) >= passed + 30
    check_guarding(t)
    status = [s for s in json.loads(L.fastpath("xdp", "status", "--json").stdout) if s["netns"] == t.ns]
    assert len(status) == 1 and status[0]["alive"] is True

    # Re-attaching one keeps the chain (and the other program) working.
    again = json.loads(L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--json").stdout)
    assert again["replaced"] is True and again["link_id"] == guard.link_id
    check_balancing(t, 32000)
    check_guarding(t)

    pdir = xdp.pin_dir("eth0", t.ns)
    if order == "guard_first":
        L.fastpath("xdp", "detach", "eth0", "--netns", t.ns)
        assert xdp.read_state("eth0", t.ns, "syn_guard") is None
        check_balancing(t, 33000)
        assert not (pdir / "chain").exists()
        L.fastpath("lb", "attach", "eth0", "--netns", t.ns)  # alone now: a plain replace
        check_balancing(t, 34000)
        L.fastpath("lb", "detach", "eth0", "--netns", t.ns)
    else:
        L.fastpath("lb", "detach", "eth0", "--netns", t.ns)
        assert xdp.read_state("eth0", t.ns, "l4lb") is None
        check_guarding(t)
        assert not (pdir / "chain").exists()
        attach_guard(t)  # alone now: a plain replace
        check_guarding(t)
        L.fastpath("xdp", "detach", "eth0", "--netns", t.ns)

    assert "xdp" not in t.lab.run("lb", ["ip", "link", "show", "eth0"]).stdout
    assert not pdir.exists()
    assert not xdp.state_path("eth0", t.ns).exists()
    assert not xdp.member_state_path("eth0", t.ns, "l4lb").parent.exists()
    assert not store.state_path("eth0", t.ns).exists()


@pytest.mark.parametrize("order", ["guard_first", "lb_first"])
def test_a_guard_on_the_vips_port_leaves_the_vip_to_the_balancer(chain_lab, order):
    """Guard with SYN cookies on :80 (a default port) and a VIP on :80 on one interface: real
    connections to the VIP succeed and spread over the backends exactly as Maglev says, none
    answered by the guard; the node's own service on :80 is still guarded (a cookie SYN-ACK,
    SYNPROXY opens it); a VIP on the node's own address, or a guard that would protect every
    address, is refused with one line and changes nothing."""
    t = chain_lab
    t.lab.spawn("lb", [sys.executable, "-c", L.SERVER, "lb", "80"]).wait_output("ready")
    # its default ports (80, 443), with a cookie for every SYN to the node itself
    guard_cmd = ["xdp", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--cookies", "always"]
    if order == "guard_first":
        L.fastpath(*guard_cmd)
        attach_lb(t)
    else:
        attach_lb(t)
        L.fastpath(*guard_cmd)
    protected = json.loads(L.fastpath("xdp", "protect", "eth0", "--netns", t.ns, "--json").stdout)
    assert HOST in {a["address"] for a in protected["addresses"]}
    assert L.VIP not in {a["address"] for a in protected["addresses"]}

    before = guard_counters(t)
    got = t.burst(31000, 30)
    assert all(not v.startswith("error") for v in got.values()), got
    spread = t.check_predicted(got)
    assert set(spread) == set(L.BACKENDS), f"connections spread over every backend: {spread}"
    after = guard_counters(t)
    assert after["tx_cookie"] == before["tx_cookie"], "the guard answered no VIP SYN"
    assert after["pass_dest"] >= before["pass_dest"] + 30 * 3, "SYN, ACK and data of each pass on"

    # The node's own service on :80: answered from XDP with a cookie, opened by SYNPROXY.
    res = t.lab.run("client", [sys.executable, "-c", L.BURST, HOST, "80", "35000", "3"], timeout=90)
    own = {int(k): v for k, v in json.loads(res.stdout).items()}
    assert list(own.values()) == ["lb"] * 3, own
    guarded = guard_counters(t)
    assert guarded["tx_cookie"] >= after["tx_cookie"] + 3
    assert guarded["pass_cookie"] >= after["pass_cookie"] + 3

    # Overlaps are refused, each with one line and nothing changed.
    res = t.lb("vip", "add", f"{HOST}:80/tcp", "--mode", "dsr", check=False)
    err = res.stderr.strip()
    assert res.returncode != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"VIP {HOST}:80/tcp" in err and "SYN guard protects" in err, err
    assert [v["vip"] for v in json.loads(t.lb("vip", "list", "--json").stdout)] == [t.vip]
    res = L.fastpath("xdp", "protect", "eth0", "--netns", t.ns, "--set", "any", check=False)
    err = res.stderr.strip()
    assert res.returncode != 0 and len(err.splitlines()) == 1 and f"VIP {t.vip}" in err, err
    now = json.loads(L.fastpath("xdp", "protect", "eth0", "--netns", t.ns, "--json").stdout)
    assert now["protect"] == ["local"]
    check_balancing(t, 32000)


def test_a_program_joining_the_chain_runs_in_the_links_mode(chain_lab):
    """The chain has one link, created in the first program's mode: a second program asking
    for another mode is refused with one line naming both (nothing left behind), one asking
    for the link's mode or auto joins and works; a hot reload asking another mode is refused
    the same way."""
    t = chain_lab
    L.fastpath("xdp", "attach", "eth0", "--netns", t.ns, "--mode", "generic", "--ports", "",
               "--drop-ports", str(GUARDED), "--no-cookies")
    pdir = xdp.pin_dir("eth0", t.ns)
    guard = xdp.read_state("eth0", t.ns, "syn_guard")
    assert guard is not None and guard.mode == "generic"

    res = L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--mode", "native", "--table-size", "4099",
                     check=False)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "runs syn_guard in generic mode" in err and "not native" in err, err
    assert "--mode generic or auto" in err, err
    assert xdp.read_state("eth0", t.ns, "l4lb") is None and not store.state_path("eth0", t.ns).exists()
    assert not (pdir / "l4lb").exists() and not (pdir / "chain").exists()
    assert xdp.read_state("eth0", t.ns, "syn_guard").prog_id == guard.prog_id, "the guard is untouched"
    check_guarding(t)

    L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--mode", "generic", "--table-size", "4099")
    t.lb("vip", "add", t.vip, "--mode", "dsr")
    for node in L.BACKENDS:
        t.lb("backend", "add", t.vip, t.backend(node))
    balancer = xdp.read_state("eth0", t.ns, "l4lb")
    assert balancer is not None and balancer.mode == "generic" and balancer.link_id == guard.link_id
    check_balancing(t, 35000)
    check_guarding(t)

    # Hot reloads keep the link: native is refused for either program, auto is fine.
    for cmd in (["lb", "attach", "eth0"], ["xdp", "attach", "eth0", "--ports", "", "--drop-ports",
                                            str(GUARDED), "--no-cookies"]):
        res = L.fastpath(*cmd, "--netns", t.ns, "--mode", "native", check=False)
        assert res.returncode != 0 and "generic mode" in res.stderr and "not native" in res.stderr, res.stderr
    again = json.loads(L.fastpath("lb", "attach", "eth0", "--netns", t.ns, "--json").stdout)
    assert again["replaced"] is True and again["mode"] == "generic"
    check_balancing(t, 36000)
    check_guarding(t)
    L.fastpath("lb", "detach", "eth0", "--netns", t.ns)
    L.fastpath("xdp", "detach", "eth0", "--netns", t.ns)
    assert not pdir.exists()
