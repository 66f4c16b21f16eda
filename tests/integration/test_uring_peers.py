"""The asyncio and uvloop echo servers `fastpath bench echo` measures fastpath against
(fastpath/uring/peers.py): byte-exact echo, flow control under a reader that stops, the
ready/stats line protocol, and SIGTERM. Each server is killed by its context manager
whatever happens."""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fastpath.uring.native import ServerProcess

pytestmark = pytest.mark.integration

STOP_BOUND_S = 8.0


@pytest.fixture(params=("asyncio", "uvloop"))
def loop_name(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is a bench extra: pip install -e '.[bench]'")
    return request.param


@contextlib.contextmanager
def peer(loop_name: str, *extra: str) -> Iterator[ServerProcess]:
    argv = [sys.executable, "-m", "fastpath.uring.peers", "--loop", loop_name, "--port", "0", *extra]
    srv = ServerProcess(argv)
    try:
        yield srv
    finally:
        srv.kill()


def exchange(sock: socket.socket, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send `payload` while reading the echo; return what came back."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    got = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while len(got) < len(payload):
            assert time.monotonic() < deadline, f"stalled: sent {sent}, got {len(got)}"
            if sent == len(payload):
                sel.modify(sock, selectors.EVENT_READ)
            for _key, ev in sel.select(timeout=0.5):
                if ev & selectors.EVENT_WRITE and sent < len(payload):
                    with contextlib.suppress(BlockingIOError):
                        sent += sock.send(payload[sent:sent + (1 << 16)])
                if ev & selectors.EVENT_READ:
                    data = sock.recv(1 << 20)
                    assert data, f"server closed early: got {len(got)}/{len(payload)}"
                    got += data
    finally:
        sel.close()
        sock.setblocking(True)
    return bytes(got)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ready_line_echo_and_sigterm(loop_name):
    with peer(loop_name) as srv:
        assert srv.ready["engine"] == loop_name and srv.port > 0 and srv.ready["pid"] == srv.pid
        rng = random.Random(9)
        with socket.create_connection(srv.address, timeout=5) as s:
            for n in (1, 64, 4096, 65537, 1 << 20):
                payload = rng.randbytes(n)
                assert exchange(s, payload) == payload, f"mismatch at size {n}"
        st = srv.stats()
        assert st["connections_accepted"] == 1
        assert srv.stop(signal.SIGTERM, timeout=STOP_BOUND_S) == 0
        assert srv.final_stats is not None and srv.final_stats["connections_open"] == 0
        assert not os.path.exists(f"/proc/{srv.pid}")


def test_many_connections_half_close(loop_name):
    with peer(loop_name) as srv:
        socks = [socket.create_connection(srv.address, timeout=10) for _ in range(200)]
        try:
            for i, s in enumerate(socks):
                s.sendall(b"peer%04d" % i)
                s.shutdown(socket.SHUT_WR)
            for i, s in enumerate(socks):
                got = bytearray()
                while data := s.recv(64):
                    got += data
                assert bytes(got) == b"peer%04d" % i
        finally:
            for s in socks:
                s.close()


def test_reader_that_stops_pauses_reading(loop_name):
    """A client pushes 64 MiB and reads nothing: the server stops reading once its write
    buffer is full, so its memory stays bounded; then every byte still comes back."""
    payload = random.Random(2).randbytes(64 << 20)
    with peer(loop_name) as srv, socket.create_connection(srv.address, timeout=5) as s:
        base = rss_kib(srv.pid)
        s.setblocking(False)
        sent, stalled_since = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                sent += s.send(payload[sent:sent + (1 << 16)])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
                time.sleep(0.01)
        assert 0 < sent < len(payload), "the client never stalled"
        grown = rss_kib(srv.pid) - base
        assert grown < 16 * 1024, f"RSS grew {grown} KiB"
        out: list[bytes] = []
        s.setblocking(True)

        def read_all() -> None:
            s.settimeout(30)
            got = bytearray()
            while len(got) < len(payload):
                data = s.recv(1 << 20)
                if not data:
                    break
                got += data
            out.append(bytes(got))

        t = threading.Thread(target=read_all)
        t.start()
        s.sendall(payload[sent:])
        t.join(60)
        assert out and out[0] == payload


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--port", "70000"), "--port 70000"),
        (("--drain-ms", "-1"), "--drain-ms -1"),
        (("--loop", "trio"), "invalid choice"),
    ],
)
def test_bad_options(args, needle):
    r = subprocess.run([sys.executable, "-m", "fastpath.uring.peers", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert needle in r.stderr


def test_port_in_use_is_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "fastpath.uring.peers", "--port", str(port)],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0]
