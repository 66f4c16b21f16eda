"""EAL and application command lines (fastpath.dpdk.eal, fastpath.dpdk.l2fwd), memory
choice against fake hugepage trees, and the supervisor's stop ladder and clean-up.

No DPDK process runs here: memory choice and clean-up use fake sysfs/hugetlbfs trees under
tmp_path; the stop-ladder tests supervise a small stand-in process (a Python script that
speaks l2fwd's JSON protocol and ignores signals) to exercise SIGINT -> SIGTERM -> SIGKILL.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

import pytest

from fastpath.cli import main
from fastpath.dpdk import eal, l2fwd
from fastpath.dpdk.eal import EalConfig, MemoryChoice, parse_vdev
from fastpath.dpdk.l2fwd import L2fwdOptions, L2fwdProcess
from fastpath.dpdk.sysfs import Host
from fastpath.errors import FastpathError

HUGE = MemoryChoice("hugetlbfs", "/dev/hugepages", 2048, 512 << 20, "512 MiB free")
NO_HUGE = MemoryChoice("no-huge", None, None, 0, "only 0 B of hugepages free: --no-huge")
IN_MEM = MemoryChoice("in-memory", None, 2048, 512 << 20, "no mount: --in-memory")


# ---------------------------------------------------------------- vdevs and cores


@pytest.mark.parametrize(
    ("spec", "arg"),
    [("af_packet:veth0", "net_af_packet1,iface=veth0"),
     ("af_xdp:p0", "net_af_xdp1,iface=p0"),
     ("af_xdp:p0,queue_count=1", "net_af_xdp1,iface=p0,queue_count=1"),
     ("null", "net_null1"),
     ("net_null", "net_null1"),
     ("tap", "net_tap1"),
     ("tap:dtap0", "net_tap1,iface=dtap0"),
     ("memif:/run/m.sock", "net_memif1,socket=/run/m.sock")],
)
def test_vdev_eal_arg(spec: str, arg: str) -> None:
    assert parse_vdev(spec).eal_arg(1) == arg


@pytest.mark.parametrize(
    ("spec", "why"),
    [("pcap:eth0", "unknown virtual device 'pcap:eth0'"),
     ("af_packet", "af_packet needs an interface"),
     ("af_packet:", "af_packet needs an interface"),
     ("af_xdp:a/b", "bad interface name"),
     ("af_packet:waytoolonginterfacename", "bad interface name"),
     ("null:x", "null takes no interface"),
     ("af_packet:v0,qpairs", "bad option 'qpairs'"),
     ("memif", "memif needs a socket path")],
)
def test_vdev_errors(spec: str, why: str) -> None:
    with pytest.raises(FastpathError, match=why):
        parse_vdev(spec)


@pytest.mark.parametrize(("spec", "cores"), [("0", [0]), ("0-1", [0, 1]), ("3,1-2", [1, 2, 3]),
                                             (" 0 , 2 ", [0, 2])])
def test_parse_cores(spec: str, cores: list[int]) -> None:
    assert eal.parse_cores(spec) == cores


@pytest.mark.parametrize("spec", ["", "a", "1-0", "0-", "1;2"])
def test_parse_cores_errors(spec: str) -> None:
    with pytest.raises(FastpathError, match="bad core"):
        eal.parse_cores(spec)


# ---------------------------------------------------------------- EAL arguments


def test_virtual_devices_only_get_no_pci_and_a_unique_prefix() -> None:
    cfg = EalConfig(cores=[0, 1], vdevs=[parse_vdev("af_packet:a"), parse_vdev("af_packet:b")],
                    memory=HUGE)
    args = eal.build_eal_args(cfg)
    assert args == ["-l", "0,1", "--file-prefix", cfg.file_prefix, "--log-level", "notice",
                    "--huge-dir", "/dev/hugepages", "--no-pci",
                    "--vdev=net_af_packet0,iface=a", "--vdev=net_af_packet1,iface=b"]
    prefixes = {EalConfig(cores=[0], memory=HUGE).file_prefix for _ in range(50)}
    assert len(prefixes) == 50
    assert all(p.startswith(f"fastpath-l2fwd-{os.getpid()}-") for p in prefixes)


def test_pci_devices_get_an_allow_list() -> None:
    cfg = EalConfig(cores=[0], pci=["03:00.0", "0000:03:00.1"], memory=HUGE)
    args = eal.build_eal_args(cfg)
    assert "--no-pci" not in args
    assert args[-4:] == ["-a", "0000:03:00.0", "-a", "0000:03:00.1"]


def test_memory_modes() -> None:
    vdevs = [parse_vdev("null")]
    no_huge = eal.build_eal_args(EalConfig(cores=[0], vdevs=vdevs, memory=NO_HUGE))
    assert "--no-huge" in no_huge and "--no-shconf" in no_huge and "--in-memory" not in no_huge
    assert no_huge[no_huge.index("-m") + 1] == str(eal.NO_HUGE_MEMORY_MB)
    in_mem = eal.build_eal_args(EalConfig(cores=[0], vdevs=vdevs, memory=IN_MEM))
    assert "--in-memory" in in_mem and "--huge-dir" not in in_mem and "--no-huge" not in in_mem


@pytest.mark.parametrize(
    ("cfg", "why"),
    [(EalConfig(cores=[], vdevs=[parse_vdev("null")], memory=HUGE), "no cores"),
     (EalConfig(cores=[0], memory=HUGE), "no ports"),
     (EalConfig(cores=[0], pci=["0000:03:00.0"], memory=NO_HUGE), "PCI devices need hugepages"),
     (EalConfig(cores=[0], pci=["eth0"], memory=HUGE), "bad PCI address 'eth0'"),
     (EalConfig(cores=[0], vdevs=[parse_vdev("null")], memory=HUGE, file_prefix="a b"),
      "bad file prefix")],
)
def test_eal_errors(cfg: EalConfig, why: str) -> None:
    with pytest.raises(FastpathError, match=why):
        eal.build_eal_args(cfg)


def hugetree(tmp_path: Path, free_2m: int, mounted: bool = True) -> Host:
    root = tmp_path / "root"
    for size, free in ((2048, free_2m), (1048576, 0)):
        d = root / f"sys/kernel/mm/hugepages/hugepages-{size}kB"
        d.mkdir(parents=True)
        for f, v in (("nr_hugepages", free), ("free_hugepages", free), ("surplus_hugepages", 0),
                     ("resv_hugepages", 0)):
            (d / f).write_text(f"{v}\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("Hugepagesize: 2048 kB\n")
    mounts = "nodev /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n" if mounted else ""
    (root / "proc/mounts").write_text(mounts)
    (root / "dev/hugepages").mkdir(parents=True)
    return Host(root)


def test_choose_memory(tmp_path: Path) -> None:
    """Fake hugepage trees: enough free + mounted -> files; no mount -> --in-memory; too
    few free -> --no-huge; asking for in-memory wins over the mount."""
    m = eal.choose_memory(hugetree(tmp_path / "a", 256))
    assert (m.mode, m.huge_dir, m.free_bytes) == ("hugetlbfs", "/dev/hugepages", 512 << 20)
    m = eal.choose_memory(hugetree(tmp_path / "b", 256, mounted=False))
    assert m.mode == "in-memory" and "no hugetlbfs mount" in m.reason
    m = eal.choose_memory(hugetree(tmp_path / "c", 4))
    assert m.mode == "no-huge" and "only 8 MiB of hugepages free" in m.reason
    assert eal.choose_memory(hugetree(tmp_path / "d", 256), in_memory=True).mode == "in-memory"


# ---------------------------------------------------------------- application arguments


def opts(n: int = 2, **kw: object) -> L2fwdOptions:
    return L2fwdOptions(vdevs=[parse_vdev("null")] * n, **kw)  # type: ignore[arg-type]


def test_app_args_defaults_spread_ports_over_cores() -> None:
    assert l2fwd.app_args(opts(2)) == ["-p", "0x3", "-q", "2", "-T", "1"]
    assert l2fwd.app_args(opts(3, cores=[0, 1])) == ["-p", "0x7", "-q", "2", "-T", "1"]
    args = l2fwd.app_args(opts(2, mac_updating=False, promiscuous=True, idle_sleep_us=50,
                               period_s=0.5))
    assert args == ["-p", "0x3", "-q", "2", "-T", "0.5", "--no-mac-updating", "-P",
                    "--idle-sleep-us", "50"]


def test_app_args_portmask_and_portmap() -> None:
    assert l2fwd.app_args(opts(4, portmask="0x5"))[:4] == ["-p", "0x5", "-q", "2"]
    assert l2fwd.app_args(opts(4, portmap="(0,3), (1,2)"))[:4] == \
        ["--portmap", "(0,3),(1,2)", "-q", "4"]


@pytest.mark.parametrize(
    ("kw", "why"),
    [({"portmask": "0x4"}, "selects port 2, but only 2 port"),
     ({"portmask": "zz"}, "bad portmask 'zz'"),
     ({"portmask": "0"}, "selects no port"),
     ({"portmap": "(0,1"}, "bad portmap"),
     ({"portmap": "(0,5)"}, "port 5 does not exist"),
     ({"portmap": "(0,1),(1,0)"}, "appears twice"),
     ({"ports_per_lcore": 1}, "do not fit"),
     ({"period_s": 0.001}, "bad stats period"),
     ({"idle_sleep_us": -1}, "bad idle sleep")],
)
def test_app_args_errors(kw: dict[str, object], why: str) -> None:
    with pytest.raises(FastpathError, match=why):
        l2fwd.app_args(opts(2, **kw))


def test_command_inside_a_namespace() -> None:
    argv = l2fwd.command("/b/l2", ["-l", "0"], ["-p", "0x3"], "fwd")
    assert argv == ["ip", "netns", "exec", "fwd", "/b/l2", "-l", "0", "--", "-p", "0x3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--vdev", "null", "--vdev", "null", "--portmask", "0x7"], "bad portmask '0x7'"),
     (["--vdev", "af_packet:nosuchif0", "--vdev", "null"],
      "unknown device: no interface 'nosuchif0'"),
     (["--vdev", "pcap:x"], "unknown virtual device"),
     (["--vdev", "null", "--cores", "0-"], "bad core list"),
     (["--vdev", "null", "--cores", "4096"], "not online"),
     (["--vdev", "null", "--netns", "fastpath-no-such-ns"], "no network namespace"),
     (["--pci", "0000:7f:1f.7"], "no PCI device 0000:7f:1f.7"),
     (["--vdev", "null", "--duration", "0"], "bad duration")],
)
def test_cli_l2fwd_bad_input_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                      message: str) -> None:
    """Bad input is refused before any process starts: one error line, exit 1."""
    rc = main(["dpdk", "l2fwd", "run", *argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("fastpath: error: ") and message in err[0]


# ---------------------------------------------------------------- clean-up and stop ladder


def test_clean_leftovers_skips_locked_files(tmp_path: Path) -> None:
    """Fake tree: the run's runtime dir and unlocked hugepage files go; a locked file of the
    same prefix (still mapped by someone) and other prefixes' files stay."""
    host = Host(tmp_path)
    run = L2fwdProcess(opts(2), host=host, memory=HUGE, binary="/bin/false",
                       file_prefix="fastpath-l2fwd-test")
    runtime = host.path(run.eal.runtime_dir())
    runtime.mkdir(parents=True)
    (runtime / "config").write_text("")
    huge = host.path("/dev/hugepages")
    huge.mkdir(parents=True)
    for name in ("fastpath-l2fwd-testmap_0", "fastpath-l2fwd-testmap_1", "othermap_0"):
        (huge / name).write_text("x")
    with open(huge / "fastpath-l2fwd-testmap_1") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        cleaned = run.stop().cleaned
    assert sorted(Path(p).name for p in cleaned) == ["fastpath-l2fwd-test",
                                                     "fastpath-l2fwd-testmap_0"]
    assert sorted(p.name for p in huge.iterdir()) == ["fastpath-l2fwd-testmap_1", "othermap_0"]


# The stand-in sets its own SIGINT disposition, as the real l2fwd does: a job started in the
# background by a shell without job control (`cmd &` in a script) inherits SIGINT ignored.
STAND_IN = """\
import json, signal, sys, time
mode = sys.argv[1]
if mode != "obey":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if mode == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "fail":
    print(json.dumps({"event": "error", "message": "invalid portmask 'zz'"}), flush=True)
    sys.exit(1)
print("EAL: a log line", flush=True)
print(json.dumps({"event": "ready", "pid": 1, "ports": []}), flush=True)
n = 0
try:
    while True:
        n += 1
        print(json.dumps({"event": "stats", "seq": n, "ports": [],
                          "total": {"rx": n, "tx": n, "dropped": 0}}), flush=True)
        time.sleep(0.05)
except KeyboardInterrupt:
    print(json.dumps({"event": "exit", "ports": [], "total": {"rx": n, "tx": n, "dropped": 0}}),
          flush=True)
"""


def stand_in(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> L2fwdProcess:
    script = tmp_path / "standin.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(l2fwd, "SIGINT_GRACE_S", 0.5)
    monkeypatch.setattr(l2fwd, "SIGTERM_GRACE_S", 0.5)
    run = L2fwdProcess(opts(2), host=Host(tmp_path), memory=HUGE, binary=sys.executable)
    monkeypatch.setattr(run, "eal_args", [str(script), mode])
    monkeypatch.setattr(run, "app_args", [])
    monkeypatch.setattr(l2fwd, "command", lambda b, e, a, n: [b, *e])
    return run


@pytest.mark.parametrize(
    ("mode", "signals", "code"),
    [("obey", ["SIGINT"], 0), ("stubborn", ["SIGINT", "SIGTERM"], -15),
     ("deaf", ["SIGINT", "SIGTERM", "SIGKILL"], -9)],
)
def test_stop_ladder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                     signals: list[str], code: int) -> None:
    """Stand-in process: SIGINT first; SIGTERM when it ignores SIGINT; SIGKILL when it
    ignores both. Non-JSON lines are kept as log, stats are streamed."""
    with stand_in(tmp_path, mode, monkeypatch) as run:
        assert run.start(timeout=10)["event"] == "ready"
        first = run.wait_stats(lambda ev: ev["seq"] >= 3, timeout=10)
        assert first is not None and first["total"]["rx"] >= 3
    result = run.stop()
    assert result.signals == signals and result.returncode == code
    assert "EAL: a log line" in result.log_tail
    assert (result.exit_event is not None) == (mode == "obey")
    assert result.final is not None and result.final["total"]["rx"] >= 3


def test_error_event_before_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in process that reports an error and exits: start() raises with its message."""
    run = stand_in(tmp_path, "fail", monkeypatch)
    with pytest.raises(FastpathError, match="fastpath-l2fwd: invalid portmask 'zz'"):
        run.start(timeout=10)
    assert run.stop().returncode == 1


def test_json_events_are_single_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's --json output is JSON Lines: ready, stats..., result."""
    from fastpath.dpdk import cli as dpdk_cli

    made: list[L2fwdProcess] = []

    def fake_process(o: L2fwdOptions, **kw: object) -> L2fwdProcess:
        run = stand_in(tmp_path, "obey", monkeypatch)
        made.append(run)
        return run

    monkeypatch.setattr(dpdk_cli.l2fwd, "L2fwdProcess", fake_process)
    rc = main(["dpdk", "l2fwd", "run", "--vdev", "null", "--duration", "0.5", "--json"])
    assert rc == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "ready" and events[-1]["event"] == "result"
    assert {e["event"] for e in events[1:-1]} == {"stats"}
    assert events[-1]["signals"] == ["SIGINT"] and events[-1]["crashed"] is False
