"""The node config, the plan's words, events, sd_notify, the systemd unit and an agent process
that needs no privileges (no interfaces): its readiness, reload and stop reach a real
notify socket, its events are JSON lines and its metrics are scraped over HTTP."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fastpath.agent import events, nodeconfig, notify, options, plan, unit
from fastpath.apps.decap import cli as decap_cli
from fastpath.apps.guard import cli as guard_cli
from fastpath.apps.lb import cli as lb_cli
from fastpath.apps.lb import config as lb_config
from fastpath.errors import FastpathError

ROOT = Path(__file__).resolve().parents[2]

FULL = """
metrics: {listen: "[::1]:9500", netns: lab-lb}
interfaces:
  - interface: eth0
    netns: lab-lb
    mode: native
    guard:
      ports: [80, 443]
      drop_ports: 23
      syn_rate: 6000/min
      syn_burst: 400
      ban_seconds: 30
      fragments: pass
      allow: [192.0.2.0/24, "2001:db8:a::/48"]
      deny: 203.0.113.0/24
    balancer:
      table_size: 4099
      seed: 7
      tcp_timeout: 600
      health: {interval: 1, fall: 3}
      vips:
        10.0.0.10:80/tcp:
          mode: nat
          backends:
            10.0.1.21:8080: {weight: 3}
            10.0.1.22:8080: {drain: true}
  - interface: eth1
    decap: {from: [172.16.0.0/16, "100::/96"], vip: [10.0.0.10], addr: 10.0.1.30}
"""


def parse(text: str) -> nodeconfig.NodeConfig:
    return nodeconfig.parse_node(yaml.safe_load(text), "node.yaml")


def cli_args(register, path, argv):
    return options.command_parser(register, path).parse_args(argv)


def test_sections_equal_what_the_commands_make_of_the_same_options():
    node = parse(FULL)
    lb, dc = node.interfaces
    assert (lb.ifname, lb.netns, lb.mode, dc.netns) == ("eth0", "lab-lb", "native", None)
    want_guard = guard_cli.attach_config(cli_args(guard_cli.register, ("xdp", "attach"), [
        "eth0", "--ports", "80,443", "--drop-ports", "23", "--syn-rate", "6000/min", "--syn-burst", "400",
        "--ban-seconds", "30", "--fragments", "pass"]))
    assert lb.guard is not None and lb.guard.config == want_guard
    assert {str(n) for n in lb.guard.allow} == {"192.0.2.0/24", "2001:db8:a::/48"}
    assert {str(n) for n in lb.guard.deny} == {"203.0.113.0/24"}
    assert lb.balancer is not None
    assert dict(lb.balancer.tunables) == lb_cli.attach_tunables(cli_args(lb_cli.register, ("lb", "attach"), [
        "eth0", "--table-size", "4099", "--seed", "7", "--tcp-timeout", "600"]))
    raw_vips = yaml.safe_load(FULL)["interfaces"][0]["balancer"]["vips"]
    assert list(lb.balancer.vips) == lb_config.parse_config({"vips": raw_vips})  # the `lb apply` format
    assert lb.balancer.health == nodeconfig.HealthSettings(interval=1.0, timeout=0.5, fall=3, rise=2)
    assert dc.decap is not None
    want = decap_cli.attach_sets(cli_args(lb_cli.register, ("lb", "decap", "attach"), [
        "eth1", "--from", "172.16.0.0/16", "--from", "100::/96", "--vip", "10.0.0.10",
        "--addr", "10.0.1.30"]))
    assert (list(dc.decap.sources), list(dc.decap.vips), list(dc.decap.extra)) == want
    assert node.metrics == nodeconfig.MetricsConfig("::1", 9500, "lab-lb")
    assert node.metrics.url == "http://[::1]:9500/metrics"


def test_an_option_added_to_a_command_is_accepted_without_a_change_here():
    """The node config reads a section through the command's own parser: a new option (any
    kind) is a new key at once, and its value reaches the command's conversion."""

    def register(sub: argparse._SubParsersAction) -> None:
        att = sub.add_parser("thing").add_subparsers().add_parser("attach")
        att.add_argument("iface")
        att.add_argument("--ban-table-size", type=int, default=64)
        att.add_argument("--cookie-mode", choices=("always", "adaptive"), default="always")
        att.add_argument("--no-bans", action="store_true")
        att.add_argument("--protect", action="append", default=[])

    parser = options.command_parser(register, ("thing", "attach"))
    section = {"ban_table_size": 128, "cookie_mode": "adaptive", "bans": False,
               "protect": ["10.0.0.1", "::1"]}
    args = options.parse(parser, section, "x: guard", lambda a: a, positional=["eth0"])
    assert (args.ban_table_size, args.cookie_mode, args.no_bans, args.protect) == \
        (128, "adaptive", True, ["10.0.0.1", "::1"])
    with pytest.raises(FastpathError, match=r"^x: guard.cookie_mode: invalid choice: 'sometimes'"):
        options.parse(parser, {"cookie_mode": "sometimes"}, "x: guard", lambda a: a, positional=["eth0"])
    # Every option of the real attach commands has a key (none is silently unreachable).
    for parser in (nodeconfig.guard_parser(), nodeconfig.balancer_parser(), nodeconfig.health_parser(),
                   nodeconfig.decap_parser()):
        longs = {o for a in parser._actions for o in a.option_strings if o.startswith("--")
                 and a.dest not in options.NOT_SETTINGS and a.help != argparse.SUPPRESS}
        reached = {o.flag for o in options.settings(parser).values()}
        reached |= {o.negated for o in options.settings(parser).values() if o.negated}
        assert longs and longs == reached
    # A value option with a --no- twin (the guard's --cookies MODE and --no-cookies): a mode
    # is the value, false the negation, true the default.
    guard = nodeconfig.guard_parser()
    assert options.to_argv(guard, {"cookies": "always"}, "x: guard") == ["--cookies=always"]
    assert options.to_argv(guard, {"cookies": False}, "x: guard") == ["--no-cookies"]
    assert options.to_argv(guard, {"cookies": True}, "x: guard") == []


BAD = [
    ("interfaces: [{interface: eth0, guard: {syn_rate: fast}}]",
     "node.yaml: interfaces[0] (eth0): guard.syn_rate: bad SYN rate 'fast'"),
    ("interfaces: [{interface: eth0, guard: {syn_burst: 4}}]",
     "node.yaml: interfaces[0] (eth0): guard.syn_burst: syn_burst needs syn_rate"),
    ("interfaces: [{interface: eth0, guard: {prots: [80]}}]",
     "node.yaml: interfaces[0] (eth0): guard.prots: unknown key"),
    ("interfaces: [{interface: eth0, guard: {ports: [99999]}}]",
     "node.yaml: interfaces[0] (eth0): guard.ports: port 99999 out of range"),
    ("interfaces: [{interface: eth0, guard: {cookies: 3}}]",
     "node.yaml: interfaces[0] (eth0): guard.cookies: invalid choice: '3'"),
    ("interfaces: [{interface: eth0, guard: {allow: [10.0.0.0/8], deny: [10.0.0.0/8]}}]",
     "node.yaml: interfaces[0] (eth0): guard.deny: 10.0.0.0/8 is also in the allow list"),
    ("interfaces: [{interface: eth0, balancer: {seed: x}}]",
     "node.yaml: interfaces[0] (eth0): balancer.seed: invalid int value: 'x'"),
    ("interfaces: [{interface: eth0, balancer: {table_size: 100}}]",
     "node.yaml: interfaces[0] (eth0): balancer.table_size: Maglev table size 100 must be a prime"),
    ("interfaces: [{interface: eth0, balancer: {health: {fall: 0}}}]",
     "node.yaml: interfaces[0] (eth0): balancer.health.fall: fall and rise must be at least 1"),
    ("interfaces: [{interface: eth0, balancer: {vips: {'10.0.0.1:80/tcp': {mode: foo}}}}]",
     "node.yaml: interfaces[0] (eth0): balancer: VIP 10.0.0.1:80/tcp: unknown mode 'foo'"),
    ("interfaces: [{interface: eth0, balancer: {vipz: {}}}]",
     "node.yaml: interfaces[0] (eth0): balancer: unknown key 'vipz'"),
    ("interfaces: [{interface: eth0, decap: {from: [10.0.0.1/8], vip: [10.0.0.1]}}]",
     "node.yaml: interfaces[0] (eth0): decap.from: bad balancer network '10.0.0.1/8'"),
    ("interfaces: [{interface: eth0, decap: {vip: [10.0.0.1]}}]",
     "node.yaml: interfaces[0] (eth0): decap: decap needs the balancers' source networks"),
    ("interfaces: [{interface: eth0, guard: {}, decap: {from: [10.0.0.0/8], vip: [10.0.0.1]}}]",
     "node.yaml: interfaces[0] (eth0).decap: decap runs alone on its interface"),
    ("interfaces: [{interface: eth0, mode: fast, guard: {}}]",
     "node.yaml: interfaces[0] (eth0).mode: unknown mode 'fast'"),
    ("interfaces: [{interface: eth0}]", "node.yaml: interfaces[0] (eth0): nothing to run"),
    ("interfaces: [{netns: a, guard: {}}]", "node.yaml: interfaces[0].interface: missing"),
    ("interfaces: [{interface: eth0, guard: {}}, {interface: eth0, guard: {}}]",
     "node.yaml: interfaces[1] (eth0): the same interface as interfaces[0] (eth0)"),
    ("interfaces: [{interface: a-very-long-interface-name, guard: {}}]",
     "node.yaml: interfaces[0].interface: 'a-very-long-interface-name' is not an interface name"),
    ("metrics: {listen: 'localhost:80'}", "node.yaml: metrics.listen: 'localhost' is not an IP address"),
    ("metrics: {listen: '127.0.0.1:0'}", "node.yaml: metrics.listen: port 0 out of range"),
    ("metrics: {port: 80}", "node.yaml: metrics.port: unknown key"),
    ("interface: [eth0]", "node.yaml.interface: unknown key"),
    ("interfaces: {eth0: {}}", "node.yaml: interfaces: must be a list of interfaces"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ", 1)[1][:40] for _, m in BAD])
def test_a_bad_config_is_one_line_naming_the_key(text, message):
    with pytest.raises(FastpathError) as err:
        parse(text)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_metrics_defaults_and_off():
    assert parse("interfaces: []").metrics == nodeconfig.MetricsConfig("127.0.0.1", 9433, None, True)
    assert parse("metrics: off").metrics.enabled is False
    assert parse("metrics: {listen: 'off'}").metrics.enabled is False


def test_the_vip_plan_says_what_lb_apply_will_change():
    have = plan.canon_specs(lb_config.parse_config({"vips": {
        "10.0.0.10:80/tcp": {"backends": {"10.0.1.21": 1, "10.0.1.22": {"weight": 2}}},
        "10.0.0.11:80/tcp": {"mode": "nat", "backends": {"10.0.1.21:8080": 1}},
        "10.0.0.12:80/tcp": {}}}))
    want = plan.canon_specs(lb_config.parse_config({"vips": {
        "10.0.0.10:80/tcp": {"backends": {"10.0.1.21": 3, "10.0.1.23": {"drain": True}}},
        "10.0.0.11:80/tcp": {"mode": "dsr", "backends": {"10.0.1.21": 1}},
        "10.0.0.13:53/udp": {}}}))
    assert plan.vip_diff(have, want) == [
        "remove VIP 10.0.0.12:80/tcp",
        "remove backend 10.0.1.22:80 from 10.0.0.10:80/tcp",
        "weight of 10.0.1.21:80 in 10.0.0.10:80/tcp: 1 -> 3",
        "add backend 10.0.1.23:80 to 10.0.0.10:80/tcp (weight 1, drained)",
        "re-create VIP 10.0.0.11:80/tcp (nat/5tuple -> dsr/5tuple)",
        "add backend 10.0.1.21:80 to 10.0.0.11:80/tcp (weight 1)",
        "add VIP 10.0.0.13:53/udp (dsr, hash 5tuple)",
    ]
    assert plan.vip_diff(want, want) == []


def test_events_are_one_json_object_a_line():
    out = io.StringIO()
    ev = events.Events(out)
    ev.emit("backend_down", netns="lab", vip="10.0.0.10:80/tcp", reason="ECONNREFUSED")
    ev.emit("config_refused", error="bad")
    lines = out.getvalue().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "backend_down" and first["level"] == "info" and first["reason"] == "ECONNREFUSED"
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-02T03:04:05.678Z")
    assert second["level"] == "error"


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_reaches_the_socket(tmp_path, monkeypatch, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        name = f"@fastpath-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
        srv.bind("\0" + name[1:] if abstract else name)
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert notify.notify("READY=1", "STATUS=ok") is True
        assert srv.recv(4096) == b"READY=1\nSTATUS=ok"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify.notify("READY=1") is False


def _verify(path: Path) -> str:
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                         timeout=120)
    return (res.stdout + res.stderr).strip() + ("" if res.returncode == 0 else f" (exit {res.returncode})")


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    config = tmp_path / "node.yaml"
    config.write_text("interfaces: []\n")
    path, reloaded = unit.install(config, tmp_path / "units")
    assert path == tmp_path / "units" / "fastpath.service" and reloaded is False
    text = path.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(f"agent --config {config}") and "Type=notify" in text
    assert "Restart=on-failure" in text and "CapabilityBoundingSet=" in text
    assert _verify(path) == ""
    # The check can fail: a misspelt setting and a missing program are reported.
    broken = tmp_path / "units" / "broken.service"
    broken.write_text(text.replace("Type=notify", "Type=notfy")
                      .replace(exec_start, "ExecStart=/nonexistent/x"))
    found = _verify(broken)
    assert "notfy" in found and "/nonexistent/x" in found


def test_the_unit_keeps_the_hosts_tmp_when_fastpath_lives_there():
    """PrivateTmp= would hide a virtualenv or config under /tmp from the service (systemd
    then fails with 203/EXEC); elsewhere the unit keeps its private /tmp."""
    def private_tmp(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("PrivateTmp="))

    etc, opt = Path("/etc/fastpath/node.yaml"), ["/opt/fp/bin/fastpath"]
    assert private_tmp(unit.render(etc, opt)) == "PrivateTmp=yes"
    text = unit.render(etc, ["/tmp/clone/.venv/bin/fastpath"])
    assert private_tmp(text) == "PrivateTmp=no" and "# /tmp/clone/.venv/bin/fastpath is under /tmp" in text
    assert private_tmp(unit.render(Path("/var/tmp/node.yaml"), opt)) == "PrivateTmp=no"
    assert private_tmp(unit.render(Path("/tmpfoo/node.yaml"), opt)) == "PrivateTmp=yes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FASTPATH_RUN_ROOT": str(tmp_path / "run"),
            "FASTPATH_PIN_ROOT": str(tmp_path / "pins"), **extra}


def test_a_bad_file_fails_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "node.yaml"
    bad.write_text("interfaces:\n  - interface: eth0\n    guard: {syn_rate: fast}\n")
    for argv in (["apply", str(bad)], ["apply", str(bad), "--dry-run"],
                 ["apply", str(tmp_path / "none.yaml")]):
        res = subprocess.run([sys.executable, "-m", "fastpath.cli", *argv], capture_output=True, text=True,
                             env=_env(tmp_path), timeout=60)
        assert res.returncode == 1 and res.stdout == "" and "Traceback" not in res.stderr, res
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("fastpath: error: "), res.stderr
    bad.write_text("interfaces: [\n")
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "agent", "--config", str(bad)],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    assert res.returncode == 1
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in got] == ["agent_started", "config_refused"]
    assert "not valid YAML at line" in got[1]["error"]


def test_agent_notifies_systemd_reloads_and_stops(tmp_path):
    """A real agent process (with nothing to attach): READY, RELOADING/READY on SIGHUP, a
    refused reload, metrics over HTTP, STOPPING and exit 0 on SIGTERM."""
    port = _free_port()
    config = tmp_path / "node.yaml"
    config.write_text(f"metrics: {{listen: '127.0.0.1:{port}'}}\ninterfaces: []\n")
    sock_path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(60)
    out = tmp_path / "events.jsonl"
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "fastpath.cli", "agent", "--config", str(config)],
                                stdout=stdout, stderr=subprocess.PIPE, text=True,
                                env=_env(tmp_path, NOTIFY_SOCKET=sock_path))
    try:
        assert srv.recv(4096).decode().splitlines()[0] == "READY=1"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        info = families["fastpath_agent_info"].samples[0]
        assert info.labels["config"] == str(config) and info.value == 1
        applies = {s.labels["result"]: s.value for s in families["fastpath_agent_applies"].samples}
        assert applies["unchanged"] == 1

        proc.send_signal(signal.SIGHUP)
        assert srv.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert srv.recv(4096).decode().startswith("READY=1")
        config.write_text("interfaces: {}\n")
        proc.send_signal(signal.SIGHUP)
        assert srv.recv(4096).decode().startswith("RELOADING=1")
        assert srv.recv(4096).decode().startswith("READY=1\nSTATUS=0 interface(s)")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert 'fastpath_agent_applies_total{result="refused"} 1.0' in text

        proc.send_signal(signal.SIGTERM)
        assert srv.recv(4096) == b"STOPPING=1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.close()
    got = [json.loads(line) for line in out.read_text().splitlines()]
    names = [e["event"] for e in got]
    assert names == ["agent_started", "config_unchanged", "metrics_listening", "config_unchanged",
                     "config_refused", "agent_stopping"], names
    assert "interfaces: must be a list" in got[4]["error"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the listener is closed with the agent
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        except OSError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the metrics listener outlived the agent")
