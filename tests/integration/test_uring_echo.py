"""Both echo engines (native binary, Python on fastpath's bindings) under real traffic on
loopback: byte-exact echo, pipelining, split writes, 1000 connections, half-close, resets,
slow readers with bounded memory, ENOBUFS, a low `ulimit -n`, SIGTERM under load, and bad
input. Every engine runs through `fastpath uring serve` (so the native engine's supervision
is exercised too) and is killed by its context manager whatever happens.

The `server_kind` tests also run the epoll baseline, fastpath-epoll-echo (the binary
itself: it is no engine of `fastpath uring serve`), since it speaks the same ready/stats
protocol; the io_uring-only behaviour (provided buffers, ENOBUFS, SQPOLL,
--conn-max-bytes) stays on `engine`, and the baseline's own bounds are tested at the end."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fastpath.uring.native import ServerProcess, find_binary

pytestmark = pytest.mark.integration

ENGINES = ("native", "python")
SERVER_KINDS = (*ENGINES, "epoll")  # the io_uring engines and the epoll baseline
# The python engine with its pure-Python echo core (what runs without the shim's C
# helpers); server() starts it, a few tests below run with it.
PYTHON_CORE = "python-core"
EPOLL_BINARY = "fastpath-epoll-echo"
PYTHON = sys.executable
STOP_BOUND_S = 8.0  # drain (2 s default) + join slack + interpreter exit


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        try:
            find_binary()
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            pytest.skip(f"native engine unavailable: {exc}")
    return request.param


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """An io_uring engine or the epoll baseline."""
    if request.param != "python":
        name = EPOLL_BINARY if request.param == "epoll" else "fastpath-uring-echo"
        try:
            find_binary(name)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            pytest.skip(f"{name} unavailable: {exc}")
    return request.param


def serve_argv(engine: str, *extra: str) -> list[str]:
    if engine == "epoll":
        return [str(find_binary(EPOLL_BINARY)), "--port", "0", *extra]
    return [PYTHON, "-m", "fastpath.cli", "uring", "serve", "--engine", engine, "--port", "0", *extra]


@contextlib.contextmanager
def server(engine: str, *extra: str, **kwargs: object) -> Iterator[ServerProcess]:
    if engine == PYTHON_CORE:
        kwargs.setdefault("env", {**os.environ, "FASTPATH_ECHO_CORE": "python"})
        engine = "python"
    srv = ServerProcess(serve_argv(engine, *extra), **kwargs)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.kill()


def connect(srv: ServerProcess, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(srv.address, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(sock: socket.socket, payload: bytes, expect: int | None = None,
             timeout: float = 20.0, chunk: int = 1 << 16) -> bytes:
    """Send `payload` while reading replies; return the first `expect` bytes received."""
    want = len(payload) if expect is None else expect
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    got = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"echo stalled: sent {sent}/{len(payload)}, got {len(got)}/{want}")
            if sent == len(payload):
                sel.modify(sock, selectors.EVENT_READ)
            for _key, ev in sel.select(timeout=0.5):
                if ev & selectors.EVENT_WRITE and sent < len(payload):
                    with contextlib.suppress(BlockingIOError):
                        sent += sock.send(payload[sent:sent + chunk])
                if ev & selectors.EVENT_READ:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise AssertionError(f"server closed early: got {len(got)}/{want}")
                    got += data
    finally:
        sel.close()
        sock.setblocking(True)
    return bytes(got)


def read_until_eof(sock: socket.socket, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return bytes(out)
        out += data


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def server_pid(srv: ServerProcess) -> int:
    """The process doing the serving (the binary for native, the CLI itself for python)."""
    return int(srv.ready["pid"])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_idle(srv: ServerProcess, accepted: int, timeout: float = 10.0) -> dict:
    """Stats once the server accepted `accepted` connections and closed all of them (a
    client that connects and resets at once may still sit in the accept backlog)."""
    last: dict = {}

    def idle() -> bool:
        nonlocal last
        last = srv.stats()
        return last["connections_accepted"] >= accepted and last["connections_open"] == 0

    assert wait_for(idle, timeout, 0.1), f"connections never closed: {last}"
    return last


# --- echo correctness ---------------------------------------------------------------------------


def test_ready_line_and_stats(engine):
    with server(engine) as srv:
        assert srv.ready["engine"] == engine and srv.port > 0
        assert "SINGLE_ISSUER" in srv.ready["setup"]
        if engine == "python":  # the shim is built here: its C echo core is in use
            assert srv.ready["echo_core"] == "shim"
        with connect(srv) as s:
            assert exchange(s, b"hello") == b"hello"
        st = wait_idle(srv, 1)
        assert st["connections_accepted"] == 1 and st["connections_closed"] == 1
        assert st["bytes_in"] == st["bytes_out"] == 5
        assert st["cqes"] >= 4 and st["cqes_per_enter"] > 0
        assert srv.stop() == 0
        assert srv.final_stats is not None and srv.final_stats["final"] is True


def test_random_payloads_1b_to_1mib_byte_exact(server_kind):
    rng = random.Random(5)
    sizes = [1, 2, 63, 64, 4095, 4096, 4097, 65535, 65536, 300_000, 1 << 20]
    sizes += [rng.randint(1, 1 << 20) for _ in range(6)]
    with server(server_kind) as srv, connect(srv) as s:
        for n in sizes:
            payload = rng.randbytes(n)
            assert exchange(s, payload) == payload, f"mismatch at size {n}"


def test_pipelined_requests_come_back_in_order(server_kind):
    msgs = [struct.pack("!I", i) + bytes([i % 251]) * 96 for i in range(2000)]
    stream = b"".join(msgs)
    with server(server_kind) as srv, connect(srv) as s:
        s.sendall(stream)  # every request before reading any reply
        got = exchange(s, b"", expect=len(stream))
        assert got == stream


def test_payload_split_across_many_writes(server_kind):
    payload = random.Random(7).randbytes(48_000)
    with server(server_kind) as srv, connect(srv) as s:
        reader_out: list[bytes] = []
        t = threading.Thread(target=lambda: reader_out.append(_recv_exact(s, len(payload))))
        t.start()
        for i in range(0, len(payload), 37):
            s.send(payload[i:i + 37])
        t.join(20)
        assert reader_out and reader_out[0] == payload


def _recv_exact(sock: socket.socket, n: int, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def test_1000_concurrent_connections(server_kind):
    n = 1000
    with server(server_kind) as srv:
        socks = []
        try:
            for _ in range(n):
                socks.append(socket.create_connection(srv.address, timeout=10))
            payloads = {s.fileno(): os.urandom(16) + struct.pack("!I", i) for i, s in enumerate(socks)}
            for s in socks:
                s.sendall(payloads[s.fileno()])
            sel = selectors.DefaultSelector()
            got: dict[int, bytes] = {}
            for s in socks:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    fd = key.fileobj.fileno()
                    got[fd] = got.get(fd, b"") + key.fileobj.recv(64)
                    if len(got[fd]) >= 20:
                        sel.unregister(key.fileobj)
            sel.close()
            assert got == payloads
            st = srv.stats()
            assert st["connections_accepted"] == n and st["connections_open"] == n
        finally:
            for s in socks:
                s.close()
        wait_idle(srv, n, 20)


def test_half_close_gets_everything_then_eof(server_kind):
    payload = random.Random(11).randbytes(700_000)  # more than the per-connection bound
    with server(server_kind) as srv, connect(srv) as s:
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(read_until_eof(s)))
        t.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join(30)
        assert not t.is_alive(), "server never closed after the half-close"
        assert out[0] == payload
        st = wait_idle(srv, 1)
        assert st["recv_errors"] == 0 and st["send_errors"] == 0


def test_client_reset_mid_transfer(server_kind):
    with server(server_kind) as srv:
        for _ in range(20):
            s = connect(srv)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(64):
                    s.send(os.urandom(1 << 16))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST with data in flight both ways
        st = wait_idle(srv, 20)
        assert st["connections_closed"] == 20
        with connect(srv) as s:  # still serving
            assert exchange(s, b"after resets") == b"after resets"


MULTISHOT_BURST = 32  # buffers the kernel may fill in one multishot pass before a cancel lands


def _push_until_stalled(socks: list[socket.socket], limit_s: float = 20.0) -> int:
    """Write to every socket without reading until no send makes progress for 0.5 s."""
    block = os.urandom(1 << 16)
    pushed = 0
    for s in socks:
        s.setblocking(False)
    stalled_since = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        progress = 0
        for s in socks:
            with contextlib.suppress(BlockingIOError):
                progress += s.send(block)
        pushed += progress
        if progress:
            stalled_since = None
        elif stalled_since is None:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since > 0.5:
            break
        time.sleep(0.001 if progress else 0.02)
    return pushed


def test_slow_readers_bounded_memory(engine):
    """Clients that push and never read. Stated bounds: one connection holds about
    --conn-max-bytes, plus what the kernel already received into buffers when its recv
    cancel landed (one multishot pass is 32 buffers; allow two) - far below the 4 MiB pool
    a server without backpressure would fill; 21 of them never hold more than the pool (a
    hard bound); server RSS grows by less than 24 MiB (pool + 20 MiB for Python objects
    and page-table slack)."""
    conn_max, bufsize, buffers = 64 * 1024, 4096, 1024
    per_conn = conn_max + 2 * MULTISHOT_BURST * bufsize
    extra = ("--buffers", str(buffers), "--buffer-size", str(bufsize),
             "--conn-max-bytes", str(conn_max))
    with server(engine, *extra) as srv:
        pid = server_pid(srv)
        base = rss_kib(pid)
        socks = [connect(srv)]
        try:
            pushed = _push_until_stalled(socks)
            st = srv.stats()
            assert st["backpressure_pauses"] >= 1, st
            assert 0 < st["bytes_queued"] <= per_conn, st
            assert pushed > 4 * conn_max  # the client really was stuck behind the bound
            socks += [connect(srv) for _ in range(20)]
            _push_until_stalled(socks)
            st = srv.stats()
            assert st["backpressure_pauses"] >= 21, st
            assert st["bytes_queued"] <= buffers * bufsize, st
            grown = rss_kib(pid) - base
            assert grown < 24 * 1024, f"RSS grew {grown} KiB"
        finally:
            for s in socks:
                s.close()
        st = wait_idle(srv, 21, 20)
        assert st["bytes_queued"] == 0


def test_slow_reader_gets_everything_after_pause(server_kind):
    payload = random.Random(3).randbytes(6 << 20)
    # epoll pauses at its one pending buffer; the io_uring engines at --conn-max-bytes.
    extra = () if server_kind == "epoll" else ("--conn-max-bytes", str(64 * 1024))
    with server(server_kind, *extra) as srv, connect(srv) as s:
        out: list[bytes] = []

        def slow_read() -> None:
            time.sleep(1.0)  # let the server pause on this connection first
            out.append(_recv_exact(s, len(payload), timeout=60))

        t = threading.Thread(target=slow_read)
        t.start()
        s.sendall(payload)
        t.join(60)
        assert out and out[0] == payload
        st = srv.stats()
        assert st["backpressure_pauses"] >= 1
        if server_kind == "epoll":  # the pause came from a partial write, kept and finished
            assert st["short_sends"] >= 1
        else:
            assert st["short_sends"] >= 0


def test_buffer_pool_exhaustion_rearms_after_enobufs(engine):
    """A 16 x 256 B pool for 40 busy connections: recv runs dry (ENOBUFS) again and again,
    every connection is re-armed and every byte still comes back."""
    extra = ("--buffers", "16", "--buffer-size", "256", "--conn-max-bytes", "1024")
    rng = random.Random(13)
    with server(engine, *extra) as srv:
        socks = [connect(srv) for _ in range(40)]
        try:
            payloads = [rng.randbytes(20_000) for _ in socks]
            results: list[bytes | None] = [None] * len(socks)

            def run(i: int) -> None:
                results[i] = exchange(socks[i], payloads[i], timeout=60, chunk=4096)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(socks))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert results == payloads
            st = srv.stats()
            assert st["enobufs"] > 0, "the test never exhausted the pool"
        finally:
            for s in socks:
                s.close()
        wait_idle(srv, 40)


def test_busy_server_touches_a_window_of_its_buffer_pool(engine):
    """5000 small echoes over 100 connections with the default 16 MiB pool (4096 x 4 KiB).
    Publishing the whole pool would cycle every recv through all 4096 buffers - a cold
    page per message, and all 16 MiB resident; a window of recently used buffers keeps
    the touched set near one buffer per connection."""
    with server(engine) as srv:
        pid = server_pid(srv)
        socks = [connect(srv) for _ in range(100)]
        try:
            for s in socks:
                assert exchange(s, b"warm") == b"warm"
            base = rss_kib(pid)
            for i in range(50):
                msg = bytes([i]) * 128
                for s in socks:
                    s.sendall(msg)
                for s in socks:
                    assert _recv_exact(s, 128) == msg
            st = srv.stats()
            assert st["messages"] >= 5000
            grown = rss_kib(pid) - base
            assert grown < 6 * 1024, f"RSS grew {grown} KiB: the pool is cycled, not a window"
        finally:
            for s in socks:
                s.close()
        wait_idle(srv, 100)


@pytest.mark.parametrize(
    "test",
    [
        test_random_payloads_1b_to_1mib_byte_exact,
        test_pipelined_requests_come_back_in_order,
        test_1000_concurrent_connections,
        test_half_close_gets_everything_then_eof,
        test_client_reset_mid_transfer,
        test_slow_readers_bounded_memory,
        test_buffer_pool_exhaustion_rearms_after_enobufs,
    ],
    ids=lambda t: t.__name__.removeprefix("test_"),
)
def test_python_engine_without_the_c_echo_core(test):
    """The python engine's pure-Python echo core (no shim helpers) passes the same tests."""
    with server(PYTHON_CORE) as srv:
        assert srv.ready["echo_core"] == "python"
    test(PYTHON_CORE)


def test_ipv6_loopback(server_kind):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server(server_kind, "--addr", "::1") as srv:
        assert srv.ready["addr"] == "::1"
        with socket.create_connection(("::1", srv.port), timeout=5) as s:
            assert exchange(s, b"v6 echo") == b"v6 echo"


def test_two_threads_share_the_port(server_kind):
    with server(server_kind, "--threads", "2") as srv:
        assert srv.ready["threads"] == 2
        socks = [connect(srv) for _ in range(64)]
        try:
            for i, s in enumerate(socks):
                assert exchange(s, b"t%d" % i) == b"t%d" % i
            st = srv.stats()
            assert st["threads"] == 2 and st["connections_accepted"] == 64
        finally:
            for s in socks:
                s.close()
        wait_idle(srv, 64)
        assert srv.stop() == 0


def test_sqpoll(engine):
    with server(engine, "--sqpoll") as srv:
        assert "SQPOLL" in srv.ready["setup"]
        with connect(srv) as s:
            payload = os.urandom(200_000)
            assert exchange(s, payload) == payload


def test_stats_interval(server_kind):
    with server(server_kind, "--stats-interval", "0.2") as srv:
        first = srv._expect("stats", 5)
        second = srv._expect("stats", 5)
        assert second["uptime_s"] > first["uptime_s"]


# --- descriptors, signals ------------------------------------------------------------------------


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_accept_under_low_ulimit(server_kind):
    """RLIMIT_NOFILE 64: accept hits EMFILE; accepted connections keep echoing, the rest
    are accepted once descriptors free up."""
    n = 120
    with server(server_kind, preexec_fn=_low_nofile) as srv:
        socks = [socket.create_connection(srv.address, timeout=10) for _ in range(n)]
        try:
            msgs = {s: b"m%03d" % i for i, s in enumerate(socks)}
            for s, m in msgs.items():
                s.sendall(m)
            assert wait_for(lambda: srv.stats()["accept_emfile"] > 0, 10)
            served = _collect_echoes(list(socks), msgs, 2.0)
            assert 0 < len(served) < n, f"{len(served)} served under a 64-fd limit"
            s0 = served[0]
            assert exchange(s0, b"again") == b"again"  # existing connections carry on
            pending = [s for s in socks if s not in served]
            for s in served:
                s.close()
            # Free descriptors let the parked connections in, a batch at a time.
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                done = _collect_echoes(pending, msgs, 1.0)
                for s in done:
                    s.close()
                pending = [s for s in pending if s not in done]
            assert not pending, f"{len(pending)} connections never served"
        finally:
            for s in socks:
                s.close()
        st = wait_idle(srv, n, 20)
        assert st["connections_accepted"] == n


def _collect_echoes(socks: list[socket.socket], msgs: dict, timeout: float) -> list[socket.socket]:
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    got: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < len(socks):
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            got[s] = got.get(s, b"") + s.recv(16)
            if len(got[s]) >= len(msgs[s]):
                sel.unregister(s)
    sel.close()
    for s, data in got.items():
        assert data == msgs[s]
    return [s for s, data in got.items() if len(data) == len(msgs[s])]


def test_no_fd_leak_after_churn(server_kind):
    with server(server_kind) as srv:
        pid = server_pid(srv)
        base = fd_count(pid)
        for i in range(150):
            s = connect(srv)
            if i % 3 == 0:
                assert exchange(s, b"x" * 100) == b"x" * 100
                s.close()
            elif i % 3 == 1:
                s.sendall(b"half")
                s.shutdown(socket.SHUT_WR)
                assert read_until_eof(s) == b"half"
                s.close()
            else:
                s.send(b"reset")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        wait_idle(srv, 150)
        # No leak: never more fds than before (one the engine held transiently at the
        # first count may be gone by now).
        assert fd_count(pid) <= base


def test_sigterm_under_load_drains_and_exits_zero(server_kind):
    with server(server_kind) as srv:
        pid = server_pid(srv)
        stop = threading.Event()
        errors: list[str] = []

        socks = [connect(srv) for _ in range(32)]  # all accepted before the stop

        def client(s: socket.socket) -> None:
            try:
                while not stop.is_set():
                    data = os.urandom(8192)
                    s.sendall(data)
                    got = _recv_exact(s, len(data), timeout=10)
                    if got != data:
                        if len(got) < len(data) and data.startswith(got):
                            return  # server closed us during the drain: fine
                        errors.append(f"corrupted echo: {len(got)} of {len(data)} bytes")
                        return
            except OSError:
                return  # reset/closed by the stopping server
            finally:
                s.close()

        threads = [threading.Thread(target=client, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        assert wait_for(lambda: srv.stats()["messages"] > 500, 10)
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=STOP_BOUND_S)
        took = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(15)
        assert rc == 0 and took < STOP_BOUND_S
        assert not errors, errors
        final = srv.final_stats
        assert final is not None and final["final"] is True
        assert final["connections_open"] == 0
        assert final["connections_closed"] == final["connections_accepted"] >= 32
        assert not os.path.exists(f"/proc/{pid}"), "server process still exists"


def test_sigint_stops_an_idle_server(server_kind):
    with server(server_kind) as srv:
        assert srv.stop(signal.SIGINT, timeout=STOP_BOUND_S) == 0


# --- bad input -------------------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "fastpath.cli", "uring", "serve", *args],
                          capture_output=True, text=True, timeout=30)


def _run_server(kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An engine through `fastpath uring serve`, the epoll baseline as its binary."""
    if kind == "epoll":
        return subprocess.run([str(find_binary(EPOLL_BINARY)), *args],
                              capture_output=True, text=True, timeout=30)
    return _run_cli("--engine", kind, *args)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    assert "error" in lines[0]
    return lines[0]


def test_port_in_use(server_kind):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = _run_server(server_kind, "--port", str(port))
        assert r.returncode != 0
        line = _one_error_line(r.stderr)
        assert f"port {port}" in line and "in use" in line


def test_port_held_by_a_reuseport_server_is_reported(server_kind):
    """A second server must not silently join another's SO_REUSEPORT group."""
    with server(server_kind) as first:
        r = _run_server(server_kind, "--port", str(first.port))
        assert r.returncode != 0
        assert "in use" in _one_error_line(r.stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--addr", "300.1.2.3"), "--addr 300.1.2.3"),
        (("--addr", "localhost"), "not an IPv4 or IPv6 address"),
        (("--port", "70000"), "--port 70000"),
        (("--port", "http"), "--port http"),
        (("--threads", "0"), "--threads 0"),
        (("--buffers", "100"), "power of two"),
        (("--buffers", "65536"), "--buffers 65536"),
        (("--buffer-size", "1"), "--buffer-size 1"),
        (("--conn-max-bytes", "10"), "--conn-max-bytes 10"),
        (("--drain-ms", "-1"), "--drain-ms -1"),
        (("--stats-interval", "-3"), "--stats-interval"),
        (("--addr", "192.0.2.1"), "not configured on this host"),
    ],
)
def test_bad_options_one_clear_line(engine, args, needle):
    r = _run_cli("--engine", engine, "--port", "0", *args)
    assert r.returncode != 0
    assert needle in _one_error_line(r.stderr)
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--addr", "nope"), "--addr nope"),
        (("--port", "-1"), "--port -1"),
        (("--threads", "999"), "--threads 999"),
        (("--buffers", "24"), "power of two"),
        (("--buffer-size", "2000000"), "--buffer-size 2000000"),
        (("--buffers", "32768", "--buffer-size", "65536"), "exceeds"),
        (("--conn-max-bytes", "100"), "--conn-max-bytes 100"),
        (("--stats-interval", "x"), "--stats-interval x"),
        (("--bogus",), "unknown option --bogus"),
        (("--port",), "needs a value"),
        (("extra",), "unexpected argument extra"),
    ],
)
def test_native_binary_validates_its_options(args, needle):
    try:
        binary = find_binary()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"native binary unavailable: {exc}")
    r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert needle in _one_error_line(r.stderr)


def test_native_binary_help():
    binary = find_binary()
    r = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "--conn-max-bytes" in r.stdout and "example:" in r.stdout


# --- the epoll baseline's own behaviour ---------------------------------------------------------


@pytest.fixture
def epoll_binary() -> str:
    try:
        return str(find_binary(EPOLL_BINARY))
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        pytest.skip(f"{EPOLL_BINARY} unavailable: {exc}")


def test_epoll_ready_line_stats_and_sigterm(epoll_binary):
    with server("epoll") as srv:
        assert srv.ready["engine"] == "epoll" and srv.port > 0
        assert srv.ready["pid"] == srv.pid and srv.ready["threads"] == 1
        with connect(srv) as s:
            assert exchange(s, b"hello") == b"hello"
        st = wait_idle(srv, 1)
        assert st["connections_closed"] == 1 and st["bytes_in"] == st["bytes_out"] == 5
        assert st["epoll_waits"] > 0 and st["recv_errors"] == st["send_errors"] == 0
        assert srv.stop(signal.SIGTERM, timeout=STOP_BOUND_S) == 0
        assert srv.final_stats is not None and srv.final_stats["final"] is True
        assert not os.path.exists(f"/proc/{srv.pid}")


def _small_rcvbuf_connection(srv: ServerProcess) -> socket.socket:
    """A client whose receive buffer is tiny, so the server's writes fall short at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    s.settimeout(5)
    s.connect(srv.address)
    return s


def test_epoll_partial_writes_come_back_byte_exact(epoll_binary):
    """A reader that starts late and takes 4 KiB at a time: once the server's socket
    send buffer is full (it grows to tcp_wmem's 4 MiB at most) its sends fall short,
    each remainder is kept and finished, and every byte comes back in order."""
    payload = random.Random(21).randbytes(12 << 20)
    with server("epoll", "--buffer-size", "65536") as srv, _small_rcvbuf_connection(srv) as s:
        out = bytearray()

        def slow_read() -> None:
            s.settimeout(60)
            time.sleep(0.5)  # let the server's send buffer fill first
            while len(out) < len(payload):
                data = s.recv(4096)
                if not data:
                    return
                out.extend(data)

        t = threading.Thread(target=slow_read)
        t.start()
        s.sendall(payload)
        t.join(90)
        assert not t.is_alive(), f"echo stalled at {len(out)} of {len(payload)} bytes"
        assert bytes(out) == payload
        st = srv.stats()
        assert st["short_sends"] >= 1 and st["backpressure_pauses"] >= 1
        assert st["sends"] > st["messages"]  # remainders went out in sends of their own
        assert st["bytes_in"] == st["bytes_out"] == len(payload)


def test_epoll_slow_readers_bounded_memory(epoll_binary):
    """Clients that push and never read: each costs the server at most one pending buffer
    (--buffer-size), however much they push; RSS grows by less than 8 MiB for 21 of them."""
    bufsize = 4096
    with server("epoll", "--buffer-size", str(bufsize)) as srv:
        pid = server_pid(srv)
        base = rss_kib(pid)
        socks = [connect(srv) for _ in range(21)]
        try:
            pushed = _push_until_stalled(socks)
            st = srv.stats()
            assert pushed > 21 * bufsize
            assert st["backpressure_pauses"] >= 21, st
            assert 0 < st["bytes_queued"] <= 21 * bufsize, st
            grown = rss_kib(pid) - base
            assert grown < 8 * 1024, f"RSS grew {grown} KiB"
        finally:
            for s in socks:
                s.close()
        st = wait_idle(srv, 21, 20)
        assert st["bytes_queued"] == 0


def test_epoll_sigterm_with_a_stalled_reader_exits_after_the_drain(epoll_binary):
    """A client that never reads keeps an echo pending: SIGTERM waits --drain-ms for it,
    then closes the connection anyway and exits 0; what the client then reads is an exact
    prefix of what it sent."""
    payload = random.Random(5).randbytes(8 << 20)
    with server("epoll", "--drain-ms", "300") as srv, socket.socket() as s:
        # A small receive buffer, set before connecting: with tcp_rmem's autotuning (up
        # to 32 MiB here) the socket buffers alone could swallow the whole payload and
        # the server would never hold a pending echo.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(5)
        s.connect(srv.address)
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sent < len(payload):
            try:
                sent += s.send(payload[sent:sent + (1 << 16)])
            except BlockingIOError:
                if srv.stats()["bytes_queued"] > 0:
                    break
                time.sleep(0.01)
        # Pending for good, not just between two writes while the socket buffers still
        # took bytes: three readings in a row.
        readings: list[int] = []

        def stalled() -> bool:
            readings.append(srv.stats()["bytes_queued"])
            return len(readings) >= 3 and min(readings[-3:]) > 0

        assert wait_for(stalled, 5, 0.05), f"the server never had an echo pending: {readings}"
        t0 = time.monotonic()
        assert srv.stop(signal.SIGTERM, timeout=STOP_BOUND_S) == 0
        assert 0.25 < time.monotonic() - t0 < STOP_BOUND_S
        assert srv.final_stats is not None and srv.final_stats["connections_open"] == 0
        s.setblocking(True)
        s.settimeout(10)
        got = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while data := s.recv(1 << 20):
                got += data
        assert got and payload.startswith(bytes(got))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--addr", "nope"), "--addr nope"),
        (("--port", "70000"), "--port 70000"),
        (("--threads", "0"), "--threads 0"),
        (("--buffer-size", "10"), "--buffer-size 10"),
        (("--drain-ms", "-1"), "--drain-ms -1"),
        (("--stats-interval", "x"), "--stats-interval x"),
        (("--bogus",), "unknown option --bogus"),
        (("--port",), "needs a value"),
        (("extra",), "unexpected argument extra"),
        (("--port", "0", "--addr", "192.0.2.1"), "not configured on this host"),
    ],
)
def test_epoll_binary_validates_its_options(epoll_binary, args, needle):
    r = subprocess.run([epoll_binary, *args], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and r.stdout == ""
    assert needle in _one_error_line(r.stderr)


def test_epoll_binary_help(epoll_binary):
    r = subprocess.run([epoll_binary, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "--buffer-size" in r.stdout and "example:" in r.stdout
