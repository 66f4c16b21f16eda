"""Every command that acts on an interface, driven through the states a real host gets into:
a namespace that does not exist, an interface that does not exist, an attachment whose
interface went away (dead link), bpffs not mounted (a private mount namespace with it
unmounted), and no root (uid 65534, no capabilities). Each run ends either in success or in
exactly one `fastpath: error:` line that names a fix, with a non-zero exit; never a Python
traceback. A stale entry (namespace deleted and re-created under the same name) is removed
by the next attach with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.bpf import xdp
from fastpath.netns.pytest_plugin import session_netns_name

pytestmark = pytest.mark.integration

VIP = "10.93.0.1:80/tcp"
# {if} and {ns}: the interface and namespace of the state under test.
COMMANDS = [
    "xdp attach {if} --netns {ns} --ports 80",
    "xdp stats {if} --netns {ns} --interval 0",
    "xdp ports {if} --netns {ns} --add 81",
    "xdp rate {if} --netns {ns} --syn-rate 100",
    "xdp allow add 10.1.0.0/16 --iface {if} --netns {ns}",
    "xdp detach {if} --netns {ns}",
    "lb attach {if} --netns {ns}",
    "lb vip add " + VIP + " --iface {if} --netns {ns}",
    "lb vip list --iface {if} --netns {ns}",
    "lb backend add " + VIP + " 10.93.1.1 --mac 02:00:00:00:00:01 --iface {if} --netns {ns}",
    "lb stats --iface {if} --netns {ns}",
    "lb explain 10.1.1.1:1234 " + VIP + " --iface {if} --netns {ns}",
    "lb health --once --iface {if} --netns {ns}",
    "lb detach {if} --netns {ns}",
    "lb decap attach {if} --netns {ns} --from 172.16.0.0/16 --vip 10.0.0.10",
    "lb decap stats {if} --netns {ns}",
    "lb decap detach {if} --netns {ns}",
    "count attach {if} --netns {ns}",
    "count stats {if} --netns {ns}",
    "count detach {if} --netns {ns}",
]
GLOBAL = ["bpf ls", "bpf ls --prune", "xdp status"]
FASTPATH = [sys.executable, "-m", "fastpath.cli"]


def run(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTPATH_DEBUG"}
    return subprocess.run([*(prefix or []), *FASTPATH, *args], capture_output=True, text=True,
                          timeout=120, env=env)


def check(res: subprocess.CompletedProcess[str], cmd: str, may_succeed: bool) -> None:
    where = f"`fastpath {cmd}` -> {res.returncode}\n{res.stderr[-1500:]}"
    assert "Traceback" not in res.stderr, where
    if res.returncode == 0:
        assert may_succeed, where
        return
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("fastpath: error:")]
    assert len(errors) == 1, where
    assert res.stderr.rstrip().endswith(errors[0]), f"the error is the last line: {where}"
    assert "; " in errors[0], f"the error names a fix: {where}"


def commands(ifname: str, netns: str) -> list[str]:
    return [c.format(**{"if": ifname, "ns": netns}) for c in COMMANDS]


@pytest.fixture
def pair(netns_required):
    """Two fresh namespaces joined by one veth pair (nothing on either end)."""
    a, b = session_netns_name("bad-a"), session_netns_name("bad-b")
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", "fpb0", "netns", a, "type", "veth", "peer", "name", "fpb1",
                    "netns", b], check=True)
    for ns, dev in ((a, "fpb0"), (b, "fpb1")):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    try:
        yield a, b
    finally:
        run(["bpf", "ls", "--prune"])
        for ns in (a, b):
            for att in xdp.attachments():
                if att.netns == ns and xdp.read_state(att.ifname, ns, att.program) is not None:
                    tool = "xdp" if att.program == "syn_guard" else "count"
                    run([tool, "detach", att.ifname, "--netns", ns])
            subprocess.run(["ip", "netns", "del", ns], check=False)
        run(["bpf", "ls", "--prune"])


def test_missing_namespace_and_interface(pair):
    a, _ = pair
    for cmd in commands("eth0", "fp-no-such-namespace") + commands("nope0", a):
        check(run(cmd.split()), cmd, may_succeed=False)


def test_dead_link_every_command(pair):
    """Guard attached, then its interface deleted: the link is severed but its pins and
    state remain until a command meets them."""
    a, b = pair
    res = run(["xdp", "attach", "fpb1", "--netns", b, "--ports", "80", "--json"])
    assert res.returncode == 0, res.stderr
    subprocess.run(["ip", "-n", b, "link", "del", "fpb1"], check=True)
    ls = json.loads(run(["bpf", "ls", "--json"]).stdout)
    mine = [r for r in ls if r["netns"] in (a, b)]
    assert mine and not any(r["alive"] for r in mine), mine
    for cmd in GLOBAL + commands("fpb1", b):
        check(run(cmd.split()), cmd, may_succeed=True)
    assert not [att for att in xdp.attachments() if att.netns in (a, b)]
    assert "fastpath" not in subprocess.run(["ip", "netns", "exec", b, "nft", "list", "ruleset"],
                                            capture_output=True, text=True).stdout


def test_namespace_recreated_then_attach_again(pair):
    """The case that used to end in 'Link has been severed': attach, delete the namespace,
    make it again with the same names, attach again."""
    a, b = pair
    assert run(["xdp", "attach", "fpb1", "--netns", b, "--ports", "80"]).returncode == 0
    subprocess.run(["ip", "netns", "del", b], check=True)
    subprocess.run(["ip", "netns", "add", b], check=True)
    subprocess.run(["ip", "link", "add", "fpb0", "netns", a, "type", "veth", "peer", "name", "fpb1",
                    "netns", b], check=False)  # the old fpb0 went with the old namespace's peer
    for ns, dev in ((a, "fpb0"), (b, "fpb1")):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    res = run(["xdp", "attach", "fpb1", "--netns", b, "--ports", "80", "--json"])
    assert res.returncode == 0, res.stderr
    assert "removed stale fastpath state on fpb1" in res.stderr
    assert json.loads(res.stdout)["replaced"] is False
    live = {(r["ifname"], r["netns"]): r for r in json.loads(run(["bpf", "ls", "--json"]).stdout)}
    assert live[("fpb1", b)]["alive"] and live[("fpb0", a)]["program"] == xdp.PEER_PROGRAM
    assert run(["xdp", "detach", "fpb1", "--netns", b]).returncode == 0
    assert not [att for att in xdp.attachments() if att.netns in (a, b)]


def test_prune_removes_dead_entries(pair):
    a, b = pair
    assert run(["count", "attach", "fpb1", "--netns", b]).returncode == 0
    subprocess.run(["ip", "-n", b, "link", "del", "fpb1"], check=True)
    res = run(["bpf", "ls", "--prune", "--json"])
    assert res.returncode == 0, res.stderr
    removed = {(r["program"], r["ifname"], r["netns"]) for r in json.loads(res.stdout)}
    assert {("xdp_count", "fpb1", b), (xdp.PEER_PROGRAM, "fpb0", a)} <= removed
    assert not xdp.pin_dir("fpb1", b).exists() and not xdp.state_path("fpb1", b).exists()
    assert not xdp.pin_dir("fpb0", a).exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_bpffs_not_mounted(pair):
    a, _ = pair
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'umount /sys/fs/bpf && exec "$@"',
              "sh"]
    for cmd in commands("fpb0", a):
        check(run(cmd.split(), prefix), cmd, may_succeed=cmd.startswith(("lb vip list",)))
    res = run(["xdp", "attach", "fpb0", "--netns", a], prefix)
    assert "bpffs is not mounted" in res.stderr
    assert not xdp.pin_dir("fpb0", a).exists()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_not_root(pair):
    a, _ = pair
    if not os.access(Path(sys.executable).resolve(), os.X_OK):
        pytest.skip("the interpreter is not executable by others")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
              "--bounding-set=-all"]
    for cmd in GLOBAL + commands("fpb0", a):
        check(run(cmd.split(), prefix), cmd, may_succeed=cmd in GLOBAL)


def test_tables_keep_every_fact_at_80_columns_and_in_a_pipe(pair):
    """Read commands print whole addresses, ports, namespaces and interface names whether
    piped (records) or on an 80-column terminal (rich decides; records when the table is
    wider): the values people read a table for are never cut."""
    a, b = pair
    vip, backend = "[fd93:aaaa:bbbb:cccc::1]:8443/tcp", "fd93:aaaa:bbbb:cccc::1234"
    assert run(["lb", "attach", "fpb1", "--netns", b]).returncode == 0
    assert run(["xdp", "attach", "fpb1", "--netns", b, "--ports", "8443"]).returncode == 0
    try:
        assert run(["lb", "vip", "add", vip, "--iface", "fpb1", "--netns", b]).returncode == 0
        res = run(["lb", "backend", "add", vip, backend, "--mac", "02:00:00:00:00:01", "--iface", "fpb1",
                   "--netns", b])
        assert res.returncode == 0, res.stderr
        reads = [["lb", "stats", "--iface", "fpb1", "--netns", b], ["lb", "vip", "list", "--iface", "fpb1",
                 "--netns", b], ["lb", "backend", "list", "--iface", "fpb1", "--netns", b],
                 ["xdp", "status"], ["bpf", "ls"]]
        for env in ({"COLUMNS": "80"}, {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1"}):
            for args in reads:
                res = subprocess.run([*FASTPATH, *args], capture_output=True, text=True, timeout=60,
                                     env={**os.environ, **env})
                assert res.returncode == 0, res.stderr
                out = res.stdout
                assert "…" not in out, out
                assert b in out and "fpb1" in out, out
                if args[0] == "lb":
                    assert "fd93:aaaa:bbbb:cccc::1" in out and "8443" in out, out
                if args[:2] == ["lb", "backend"] or args[:2] == ["lb", "stats"]:
                    assert backend in out, out
    finally:
        run(["xdp", "detach", "fpb1", "--netns", b])
        run(["lb", "detach", "fpb1", "--netns", b])
