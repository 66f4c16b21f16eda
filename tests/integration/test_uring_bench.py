"""fastpath-echo-bench: measures both engines with every reply verified, and catches an
echo server that corrupts, drops or closes; and the `echo` benchmark scenario built on it,
run through the runner API."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from fastpath.uring.native import ServerProcess, find_binary

pytestmark = pytest.mark.integration


@pytest.fixture(params=("native", "python"))
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def server(engine: str) -> Iterator[ServerProcess]:
    argv = [sys.executable, "-m", "fastpath.cli", "uring", "serve", "--engine", engine, "--port", "0"]
    with ServerProcess(argv) as srv:
        yield srv


@pytest.fixture
def bench() -> str:
    try:
        return str(find_binary("fastpath-echo-bench"))
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        pytest.skip(f"fastpath-echo-bench unavailable: {exc}")


def run_bench(bench: str, port: int, *args: str, timeout: float = 60) -> tuple[int, dict, str]:
    r = subprocess.run([bench, "--port", str(port), *args], capture_output=True, text=True,
                       timeout=timeout)
    report = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, report, r.stderr


def test_bench_measures_both_engines(bench, engine):
    with server(engine) as srv:
        rc, rep, err = run_bench(bench, srv.port, "--connections", "20", "--size", "100",
                                 "--depth", "4", "--duration", "1", "--warmup", "0.3")
        assert rc == 0, err
        assert rep["ok"] is True and rep["verify_failures"] == 0 and rep["connection_errors"] == 0
        assert rep["requests"] > 100 and rep["req_per_s"] > 0 and rep["mb_per_s"] > 0
        assert rep["bytes"] == rep["requests"] * 100
        lat = rep["latency_us"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"]
        assert lat["p999"] <= lat["max"] * 1.02 + 1  # bucket upper edges may round up
        st = srv.stats()
        assert st["bytes_in"] >= rep["bytes"]


def test_bench_large_messages_byte_exact(bench):
    with server("native") as srv:
        rc, rep, err = run_bench(bench, srv.port, "--connections", "3", "--size", str(1 << 20),
                                 "--depth", "2", "--duration", "1", "--warmup", "0")
        assert rc == 0, err
        assert rep["requests"] >= 3 and rep["verify_failures"] == 0


@pytest.mark.parametrize("close", ["reset", "fin"])
def test_bench_churn_new_connection_per_request(bench, close):
    """--new-conn-per-request: connect, one request, the full echo, close; conn/s and the
    connect+exchange latency are reported, every echo still verified."""
    with server("native") as srv:
        rc, rep, err = run_bench(bench, srv.port, "--connections", "8", "--new-conn-per-request",
                                 "--close", close, "--duration", "1", "--warmup", "0.2")
        st = srv.stats()
    assert rc == 0, err
    assert rep["ok"] is True and rep["requests_per_conn"] == 1 and rep["close"] == close
    assert rep["conns"] > 100
    assert rep["conn_per_s"] == pytest.approx(rep["conns"] / rep["duration_s"], rel=0.01)
    # each counted connection carried exactly one request (+/- those cut by the window edges)
    assert abs(rep["requests"] - rep["conns"]) <= 8
    lat, conn_lat = rep["latency_us"], rep["conn_latency_us"]
    assert 0 < conn_lat["p50"] <= conn_lat["p99"] <= conn_lat["max"] * 1.02 + 1
    assert conn_lat["p50"] >= lat["p50"] * 0.98, "connect + exchange takes at least the exchange"
    assert st["connections_accepted"] >= rep["conns"]


def test_bench_churn_several_requests_per_connection(bench):
    with server("native") as srv:
        rc, rep, err = run_bench(bench, srv.port, "--connections", "4", "--requests-per-conn", "5",
                                 "--depth", "2", "--size", "3000", "--duration", "1", "--warmup", "0")
    assert rc == 0, err
    assert rep["conns"] > 10 and rep["verify_failures"] == 0
    assert rep["requests"] >= 5 * rep["conns"] - 5 * 4


def test_bench_churn_detects_a_flipped_bit(bench):
    with fake_server(_corrupting_echo) as port:
        rc, rep, err = run_bench(bench, port, "--connections", "1", "--size", "6000",
                                 "--new-conn-per-request", "--duration", "0.5", "--warmup", "0")
    assert rc == 1
    assert rep["verify_failures"] == 1 and rep["ok"] is False
    assert "differ" in err


def test_bench_churn_counts_and_replaces_failed_connections(bench):
    with fake_server(_closing_echo) as port:
        rc, rep, err = run_bench(bench, port, "--connections", "2", "--new-conn-per-request",
                                 "--duration", "0.5", "--warmup", "0")
    assert rc == 1 and rep["ok"] is False
    assert rep["connection_errors"] > 2, "a failed churned connection is replaced, not given up"
    assert rep["conns"] == 0


@contextlib.contextmanager
def fake_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server running `handle` per connection; torn down on exit."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            conns.append(c)
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        lsock.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


def _corrupting_echo(c: socket.socket) -> None:
    seen = 0
    with contextlib.suppress(OSError):
        while True:
            data = bytearray(c.recv(65536))
            if not data:
                return
            if seen <= 5000 < seen + len(data):
                data[5000 - seen] ^= 0x01  # one flipped bit, once
            seen += len(data)
            c.sendall(data)


def _closing_echo(c: socket.socket) -> None:
    with contextlib.suppress(OSError):
        c.recv(10)
        c.close()


def test_bench_detects_a_flipped_bit(bench):
    with fake_server(_corrupting_echo) as port:
        rc, rep, err = run_bench(bench, port, "--connections", "1", "--size", "1000",
                                 "--duration", "0.5", "--warmup", "0")
    assert rc == 1
    assert rep["verify_failures"] == 1 and rep["ok"] is False
    assert "differ" in err and len(err.strip().splitlines()) == 1


def test_bench_detects_a_closing_server(bench):
    with fake_server(_closing_echo) as port:
        rc, rep, err = run_bench(bench, port, "--connections", "2", "--duration", "0.5",
                                 "--warmup", "0")
    assert rc == 1
    assert rep["connection_errors"] == 2 and rep["ok"] is False
    assert "closed" in err or "reset" in err.lower()


@pytest.mark.parametrize("churn", [(), ("--new-conn-per-request",)])
def test_bench_connection_refused(bench, churn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connect is refused
        rc, rep, err = run_bench(bench, port, "--duration", "0.5", *churn)
    assert rc == 1 and rep == {}
    assert "connect to 127.0.0.1 port" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--port is required"),
        (("--port", "0"), "--port 0"),
        (("--port", "1", "--size", "0"), "--size 0"),
        (("--port", "1", "--depth", "2000"), "--depth 2000"),
        (("--port", "1", "--connections", "0"), "--connections 0"),
        (("--port", "1", "--duration", "0"), "--duration 0"),
        (("--port", "1", "--addr", "::g"), "--addr ::g"),
        (("--port", "1", "--what"), "unknown option --what"),
        (("--port", "1", "--requests-per-conn", "-1"), "--requests-per-conn -1"),
        (("--port", "1", "--close", "never"), "--close never"),
        (("--port", "1", "--duration"), "--duration needs a value"),
    ],
)
def test_bench_bad_options(bench, args, needle):
    r = subprocess.run([bench, *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


# --- `fastpath bench echo` through the runner ------------------------------------------------------


def _children_of(pid: int) -> set[int]:
    """Every live process (zombies included) whose parent is `pid`."""
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue  # exited meanwhile
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            out.add(int(entry))
    return out


def _session_members(sid: int) -> set[int]:
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[3]) == sid:
            out.add(int(entry))
    return out


def test_echo_scenario_quick_run_measures_every_contender(tmp_path, monkeypatch):
    """`fastpath bench echo --quick` through the runner API: every contender yields real
    numbers at every grid point, the reports are written, and no server or load
    generator outlives the run."""
    for name in ("fastpath-echo-bench", "fastpath-epoll-echo", "fastpath-uring-echo"):
        try:
            find_binary(name)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            pytest.skip(f"{name} unavailable: {exc}")
    pytest.importorskip("uvloop", reason="uvloop is a bench extra: pip install -e '.[bench]'")
    from fastpath.bench.registry import load_scenario
    from fastpath.bench.report import write_reports
    from fastpath.bench.runner import run_scenario
    from fastpath.bench.scenarios import echo as echo_scenario

    started: list[int] = []

    class RecordingServer(ServerProcess):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self.pid)

    monkeypatch.setattr(echo_scenario, "ServerProcess", RecordingServer)
    children_before = _children_of(os.getpid())
    logs: list[str] = []
    result = run_scenario(load_scenario("echo"), quick=True, repeat=1, log=logs.append)
    files = write_reports(result, tmp_path)

    assert result.skipped == {}, result.skipped
    assert result.contenders == ["native", "python", "epoll", "asyncio", "uvloop"]
    points = [echo_scenario.point_name(c, s) for c, s in echo_scenario.POINTS]
    assert "c100_s128" in points and len(points) == 13
    for contender in result.contenders:
        for p in points:
            rps = result.values(f"rps_{p}", contender)
            p99 = result.values(f"p99_{p}", contender)
            cpu = result.values(f"cpu_{p}", contender)
            assert len(rps) == 1 and rps[0] > 0, (contender, p, rps)
            assert p99[0] > 0, (contender, p, p99)
            assert cpu[0] >= 0, (contender, p, cpu)
        assert result.values("cpu_c100_s128", contender)[0] > 0, contender
    assert {t.target.contender for t in result.targets} == {"native", "python"}
    assert files["markdown"].exists() and files["json"].exists()
    assert (tmp_path / "echo-rps_c100_s128.png").stat().st_size > 0
    assert any("pinned" in line or "share" in line for line in logs)

    # 5 smoke-test starts + 5 measured starts, every one gone with its whole session.
    assert len(started) == 10, started
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}"), f"server {pid} outlived the run"
        assert not _session_members(pid), f"processes of server {pid}'s session remain"
    assert _children_of(os.getpid()) <= children_before, "a child process outlived the run"
