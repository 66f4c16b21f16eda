"""The shipped unit (fastpath/data/fastpath.service) run by systemd as PID 1.

The host need not boot with systemd: the test boots one in a throwaway systemd-nspawn
container made of this host's own /usr (`--volatile=yes`: / and /etc are a fresh tmpfs, /usr
the host's, read-only), with a private network, all capabilities but loading modules and
setting the clock, and the bpf(2) and perf_event_open(2) calls allowed. The virtualenv is
bound in at its own path (the unit's ExecStart names it) and the source tree at
/opt/fastpath-src (PrivateTmp would hide a tree under /tmp). Inside, the test mounts a bpffs
of the container's own at /sys/fs/bpf (systemd mounts none in a container), makes a veth
pair, writes a node config, installs the unit with `fastpath agent --install-unit` and
drives it with systemctl: Type=notify start, reload, kill -9 and Restart=on-failure, stop
leaving the data plane attached.

Everything lives in the container's namespaces; when it powers off, its bpffs, veth and
programs go with it, and the test checks that the program it loaded is gone from the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fastpath
from fastpath.bpf import syscall
from fastpath.netns.pytest_plugin import session_token

pytestmark = pytest.mark.integration

SRC = "/opt/fastpath-src"
CONFIG = "/etc/fastpath/node.yaml"
UNIT = "fastpath.service"
PINS = "/sys/fs/bpf/fastpath/root/fp0"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# systemd's command line: no first-boot questions; the basic system only (not the host's
# enabled services, which an empty /etc enables by preset); and no wait for a network to come
# online, which a private network with only lo never does (the unit wants network-online).
BOOT_ARGS = ["systemd.firstboot=off", "systemd.unit=basic.target",
             "systemd.mask=systemd-networkd-wait-online.service"]
# What nspawn makes under the host's /run and cannot remove itself when /run is no tmpfs.
NSPAWN_RUN = [Path("/run/systemd/nspawn/propagate"), Path("/run/systemd/nspawn"),
              Path("/run/systemd/nspawn-root")]


def node_config(drop_ports: list[int]) -> str:
    return yaml.safe_dump({
        "metrics": {"listen": "127.0.0.1:9433"},
        "interfaces": [{"interface": "fp0", "mode": "generic",
                        "guard": {"ports": [8080], "drop_ports": drop_ports}}],
    }, sort_keys=False)


class Container:
    """A systemd-nspawn container booted with systemd as PID 1; commands run in it by nsenter."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.created = [d for d in NSPAWN_RUN if not d.exists()]
        venv = sys.prefix
        tree = Path(fastpath.__file__).resolve().parents[1]
        argv = ["systemd-nspawn", "--quiet", "--directory=/", "--volatile=yes", f"--machine={name}",
                "--register=no", "--keep-unit", "--private-network", "--capability=all",
                # no module loads (systemd's modprobe@ units) or clock changes reach the host
                "--drop-capability=CAP_SYS_MODULE,CAP_SYS_TIME",
                "--system-call-filter=bpf perf_event_open", "--console=read-only",
                f"--bind-ro={venv}", f"--bind-ro={tree}:{SRC}",
                "--boot", *BOOT_ARGS]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.leader = self._leader(30.0)

    def _leader(self, timeout: float) -> int:
        """The container's PID 1: nspawn's child whose PID in its own namespace is 1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._alive()
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                with contextlib.suppress(OSError):
                    status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines()
                                  if ":\t" in line)
                    nspid = status.get("NSpid", "").split()
                    if status.get("PPid") == str(self.proc.pid) and len(nspid) > 1 and nspid[-1] == "1":
                        return int(entry.name)
            time.sleep(0.1)
        raise AssertionError(f"no PID 1 in the container within {timeout}s: {self.boot_log()}")

    def wait_booted(self, timeout: float) -> None:
        """Until systemd says the boot is over: "running", or "degraded" (units of the host's
        that fail in here, such as nftables with no /etc/nftables.conf in the empty /etc)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._alive()
            res = self.run("systemctl", "is-system-running", check=False, timeout=30)
            state = (res.stdout.strip() or res.stderr.strip())
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the container did not boot within {timeout}s ({state}): {self.boot_log()}")

    def _alive(self) -> None:
        assert self.proc.poll() is None, f"systemd-nspawn exited {self.proc.returncode}: {self.boot_log()}"

    def boot_log(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def run(self, *argv: str, check: bool = True, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` in all the container's namespaces, with a clean environment (plus `env`)."""
        cmd = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid",
               "--cgroup", "--", "env", "-i", f"PATH={PATH}",
               *[f"{k}={v}" for k, v in (env or {}).items()], *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            why = f"{' '.join(argv)} in the container: exit {res.returncode}: {res.stdout}{res.stderr}"
            if argv[0] == "systemctl":
                why += "\n" + "\n".join(self.journal()[-15:])
            raise AssertionError(why)
        return res

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> list[str]:
        return self.run("journalctl", "--unit", UNIT, "--output=cat", "--no-pager").stdout.splitlines()

    def events(self) -> list[dict]:
        """The agent's events as journald stored them: the lines that are JSON objects."""
        return [json.loads(line) for line in self.journal() if line.startswith("{")]

    def wait_event(self, name: str, after: int = 0, timeout: float = 60.0, **match: object) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events()[after:]:
                if ev["event"] == name and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            time.sleep(0.2)
        raise AssertionError(f"no {name} event {match} in the journal within {timeout}s: "
                             f"{self.journal()[-12:]}")

    def xdp_prog_id(self) -> int | None:
        [link] = json.loads(self.run("ip", "-json", "-details", "link", "show", "fp0").stdout)
        return link.get("xdp", {}).get("prog", {}).get("id")

    def close(self) -> None:
        """Power off (nspawn turns SIGTERM into a clean shutdown), else kill; then remove what
        nspawn left under /run."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(NSPAWN_RUN[0] / self.name, ignore_errors=True)
        for d in self.created:
            with contextlib.suppress(OSError):
                d.rmdir()


@pytest.fixture
def container(tmp_path) -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.skip("systemd-nspawn needs root")
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages systemd-container, util-linux)")
    if not Path("/usr/lib/systemd/systemd").exists():
        pytest.skip("systemd is not installed (Debian package systemd)")
    c = Container(f"fp-{session_token()}-agent", tmp_path / "boot.log")
    try:
        c.wait_booted(120.0)
        yield c
    finally:
        c.close()


def test_the_unit_under_systemd(container):
    c = container
    # What a host booted by systemd has and the container lacks: bpffs at /sys/fs/bpf.
    c.run("sh", "-ec", "mount -o remount,rw /sys; mkdir -p /sys/fs/bpf; mount -t bpf bpf /sys/fs/bpf; "
                       "mount -o remount,ro /sys")
    c.run("ip", "link", "add", "fp0", "type", "veth", "peer", "name", "fp1")
    c.run("ip", "link", "set", "fp0", "up")
    c.run("ip", "link", "set", "fp1", "up")
    c.run("mkdir", "-p", "/etc/fastpath")
    c.run("python3", "-c", f"open({CONFIG!r}, 'w').write({node_config([23])!r})")

    # --install-unit sees systemd running and reloads it; the drop-in points the interpreter
    # at the tree under test (ExecStart runs the virtualenv's `fastpath`).
    res = c.run(sys.executable, "-m", "fastpath.cli", "agent", "--config", CONFIG, "--install-unit",
                env={"PYTHONPATH": SRC})
    assert "wrote /etc/systemd/system/fastpath.service; systemd reloaded" in res.stderr, res.stderr
    c.run("mkdir", "-p", "/etc/systemd/system/fastpath.service.d")
    c.run("python3", "-c", "open('/etc/systemd/system/fastpath.service.d/src.conf', 'w')"
                           f".write('[Service]\\nEnvironment=PYTHONPATH={SRC}\\n')")
    c.run("systemctl", "daemon-reload")
    exec_start = c.show("ExecStart")["ExecStart"]
    assert f"agent --config {CONFIG}" in exec_start and sys.prefix in exec_start, exec_start

    # Type=notify: `systemctl start` returns once the agent sent READY=1, after its first apply.
    started = time.monotonic()
    c.run("systemctl", "start", UNIT)
    print(f"\nsystemctl start: {time.monotonic() - started:.1f} s (compiles and attaches the guard)")
    assert c.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    props = c.show("Type", "StatusText", "MainPID", "NRestarts")
    assert props["Type"] == "notify" and props["NRestarts"] == "0", props
    assert props["StatusText"] == f"1 interface(s) from {CONFIG}; last apply ok", props
    attached = c.wait_event("attached", program="syn_guard", interface="fp0", netns=None)
    applied = c.wait_event("config_applied")
    assert "SYNs dropped on 23" in applied["changes"][0], applied
    c.wait_event("metrics_listening", url="http://127.0.0.1:9433/metrics")
    prog_id = c.xdp_prog_id()
    assert prog_id == attached["prog_id"], (prog_id, attached)
    scrape = c.run("python3", "-c", "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
                                    "'http://127.0.0.1:9433/metrics', timeout=20).read().decode())").stdout
    assert 'fastpath_agent_applies_total{result="ok"} 1.0' in scrape, scrape[-2000:]

    # systemctl reload: SIGHUP, the edited file applied in place (same program).
    mark = len(c.events())
    c.run("python3", "-c", f"open({CONFIG!r}, 'w').write({node_config([23, 24])!r})")
    c.run("systemctl", "reload", UNIT)
    ev = c.wait_event("config_applied", after=mark)
    assert [s["action"] for s in ev["steps"]] == ["configure"], ev
    assert "SYNs dropped on 23,24" in ev["changes"][0], ev
    assert c.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert c.xdp_prog_id() == prog_id

    # kill -9: Restart=on-failure brings a new agent, which adopts what runs.
    mark = len(c.events())
    c.run("kill", "-9", props["MainPID"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = c.show("ActiveState", "SubState", "MainPID", "NRestarts")
        if now["NRestarts"] == "1" and now["ActiveState"] == "active" and now["SubState"] == "running":
            break
        time.sleep(0.2)
    assert now["NRestarts"] == "1" and now["ActiveState"] == "active", now
    assert now["MainPID"] != props["MainPID"], now
    c.wait_event("config_unchanged", after=mark)
    assert not [e for e in c.events()[mark:] if e["event"] in ("attached", "replaced", "detached")]
    assert c.xdp_prog_id() == prog_id
    assert any("status=9/KILL" in line for line in c.journal()), c.journal()[-10:]

    # systemctl stop: SIGTERM, a clean exit, and the data plane stays: program and pins.
    mark = len(c.events())
    c.run("systemctl", "stop", UNIT)
    assert c.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert c.show("Result")["Result"] == "success"
    assert c.wait_event("agent_stopping", after=mark)["detach"] is False
    assert c.xdp_prog_id() == prog_id
    pins = c.run("ls", PINS).stdout.split()
    assert {"prog", "link", "stats", "config", "ports"} <= set(pins), pins

    # Powered off, the container takes its bpffs, veth and the program with it.
    c.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.close(syscall.prog_fd_by_id(prog_id))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"program {prog_id} still loaded after the container stopped")
