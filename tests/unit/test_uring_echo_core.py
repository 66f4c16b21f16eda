"""The Python echo server's echo cores against real rings and socketpairs: the shim's C
helpers (fastpath_echo_*) and the pure-Python fallback must do the same bookkeeping -
echo in order, short sends resumed, buffers back to the pool, a published window that
grows on ENOBUFS - and hand Python exactly the completions that need a decision."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from fastpath.uring import abi, echo, echo_core
from fastpath.uring import liburing as lu
from fastpath.uring import ring as rg

CORES = ("shim", "python")


@pytest.fixture(params=CORES)
def core_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "shim" and lu.load().shim is None:
        pytest.skip("the fastpath liburing shim is not loaded")
    return request.param


class Harness:
    """A ring, an empty buffer ring of `entries` x `size` and one echo core on them."""

    def __init__(self, kind: str, entries: int = 256, size: int = 64, conn_max: int = 1 << 20):
        self.ring = rg.Ring(64, cq_entries=1024)
        self.bufs = self.ring.buffer_ring(echo.BUF_GROUP, entries, size, publish=False)
        cls = echo_core.ShimCore if kind == "shim" else echo_core.PythonCore
        self.core = cls(self.ring, self.bufs, conn_max)
        self.entries = entries

    def open(self, fd: int) -> echo_core.Conn:
        conn = self.core.open(fd)
        assert conn is not None and conn.fd == fd
        self.ring.prep_recv_multishot(fd, echo.BUF_GROUP, echo_core.pack_ud(echo_core.OP_RECV, conn.gen, fd))
        conn.recv_armed = True
        return conn

    def pump(self, until, timeout: float = 5.0) -> list[echo_core.Event]:
        """enter() until `until(events so far)` holds; every event handed up."""
        events: list[echo_core.Event] = []
        deadline = time.monotonic() + timeout
        while not until(events):
            assert time.monotonic() < deadline, f"stalled; events so far {events}"
            self.ring.prep_timeout(0.02, 0xDEAD)  # enter() must never block the test
            events += [e for e in self.core.enter(1) if e[0] != 0xDEAD]
        return events

    def counters(self) -> dict[str, int]:
        return self.core.counters()

    def pool_accounted(self) -> int:
        """Buffers the core knows of: free + published (queued ones are not counted)."""
        if isinstance(self.core, echo_core.ShimCore):
            return int(self.core.stats.free_buffers + self.core.stats.published)
        return len(self.core.free_bufs) + self.core.published

    def close(self) -> None:
        self.core.free()
        self.ring.close()


@pytest.fixture
def harness(core_kind: str) -> Iterator[Harness]:
    h = Harness(core_kind)
    try:
        yield h
    finally:
        h.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (server side, client side)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.create_connection(lsock.getsockname())
        server, _ = lsock.accept()
    return server, client


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def test_a_batch_echoes_without_handing_anything_up(harness):
    a, b = socket.socketpair()
    with a, b:
        conn = harness.open(a.fileno())
        harness.ring.submit()
        msgs = [bytes([i]) * 50 for i in range(20)]
        got = bytearray()
        events: list[echo_core.Event] = []
        for i, m in enumerate(msgs):  # one message at a time: each its own recv and send
            b.sendall(m)
            events += harness.pump(lambda _e, n=i + 1: harness.counters()["sends"] >= n)
            got += recv_exactly(b, len(m))
        assert bytes(got) == b"".join(msgs)
        assert events == []  # plain echoes need no decision from Python
        c = harness.counters()
        assert c["messages"] == c["sends"] == 20 and c["bytes_in"] == c["bytes_out"] == 1000
        assert c["bytes_queued"] == 0 and c["cqes"] >= 40 and c["enters"] >= 20
        assert conn.recv_armed and not conn.send_inflight and conn.q_bytes == 0


def test_window_is_published_not_the_pool(harness):
    # 64 buffers at least, and 64 more than one per connection.
    assert harness.pool_accounted() == harness.entries
    published = (harness.core.stats.published if isinstance(harness.core, echo_core.ShimCore)
                 else harness.core.published)  # fmt: skip
    assert published == echo_core.RING_WINDOW_MIN


def test_eof_is_handed_up_and_close_recycles_the_queue(harness):
    a, b = socket.socketpair()
    with a, b:
        conn = harness.open(a.fileno())
        b.sendall(b"last words")
        b.shutdown(socket.SHUT_WR)
        events = harness.pump(lambda e: any(res == 0 for _ud, res, _f in e))
        ud, res, flags = events[-1]
        assert ud >> 56 == echo_core.OP_RECV and res == 0 and not flags & abi.IORING_CQE_F_MORE
        assert not conn.recv_armed  # the core saw the multishot end
        harness.pump(lambda _e: harness.counters()["sends"] == 1)  # submits the echo
        assert recv_exactly(b, 10) == b"last words"
        assert not conn.send_inflight
        harness.core.close(conn)
        harness.core.flush()
        assert harness.pool_accounted() == harness.entries
        assert harness.counters()["bytes_queued"] == 0


def test_backpressure_mark_is_handed_up_once_crossed(core_kind):
    h = Harness(core_kind, entries=256, size=64, conn_max=256)
    try:
        a, b = socket.socketpair()
        with a, b:
            conn = h.open(a.fileno())
            b.setblocking(False)
            b.send(os.urandom(2048))  # nobody reads the echo: the queue grows
            events = h.pump(lambda e: any(f & abi.IORING_CQE_F_MORE for _u, _r, f in e))
            assert conn.q_bytes >= 256 and not conn.paused  # Python decides the pause
            ud, res, flags = next(e for e in events if e[2] & abi.IORING_CQE_F_MORE)
            assert ud >> 56 == echo_core.OP_RECV and res > 0
    finally:
        h.close()


def test_enobufs_grows_the_window_while_buffers_are_free(core_kind):
    h = Harness(core_kind, entries=512, size=64)
    try:
        a, b = socket.socketpair()
        with a, b:
            conn = h.open(a.fileno())
            b.setblocking(False)
            b.send(os.urandom(65 * 64 * 3))  # more than the 65 published buffers
            events = h.pump(lambda e: any(r == -errno.ENOBUFS for _u, r, _f in e))
            assert not conn.recv_armed
            window = h.core.stats.window if core_kind == "shim" else h.core.window
            assert window == 2 * echo_core.RING_WINDOW_MIN
            assert events[-1][1] == -errno.ENOBUFS
    finally:
        h.close()


def test_tiny_socket_buffers_echo_a_megabyte_in_order(core_kind):
    """Tiny socket buffers: sends wait for room (and may come back short, to be resumed
    where they stopped), the pool runs dry and recv is re-armed (here by the test, as the
    server would), and every byte comes back in order."""
    h = Harness(core_kind, entries=64, size=4096)
    try:
        a, b = tcp_pair()
        with a, b:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn = h.open(a.fileno())
            payload = os.urandom(1 << 20)
            b.setblocking(False)
            sent, got = 0, bytearray()
            deadline = time.monotonic() + 20
            while len(got) < len(payload):
                assert time.monotonic() < deadline, f"stalled at {len(got)}/{len(payload)}"
                if sent < len(payload):
                    try:
                        sent += b.send(payload[sent:sent + 8192])
                    except BlockingIOError:
                        pass
                h.ring.prep_timeout(0.002, 0xDEAD)
                h.core.enter(1)
                if not conn.recv_armed:  # ENOBUFS: the pool is queued up; re-arm later
                    h.core.flush()
                    h.ring.prep_recv_multishot(a.fileno(), echo.BUF_GROUP,
                                               echo_core.pack_ud(echo_core.OP_RECV, conn.gen, a.fileno()))
                    conn.recv_armed = True
                try:
                    got += b.recv(65536)
                except BlockingIOError:
                    pass
            assert bytes(got) == payload
            c = h.counters()
            assert c["bytes_out"] == c["bytes_in"] == len(payload) and c["bytes_queued"] == 0
    finally:
        h.close()


def test_a_dead_connection_completion_is_handed_up(harness):
    a, b = socket.socketpair()
    with a, b:
        conn = harness.open(a.fileno())
        stale = echo_core.pack_ud(echo_core.OP_SEND, conn.gen + 1, a.fileno())  # a generation never opened
        harness.ring.prep_nop(stale)
        events = harness.pump(lambda e: bool(e))
        assert events == [(stale, 0, 0)]


def test_open_refuses_a_busy_slot(harness):
    a, b = socket.socketpair()
    with a, b:
        assert harness.core.open(a.fileno()) is not None
        assert harness.core.open(a.fileno()) is None


def test_unknown_core_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(echo_core.CORE_ENV, "turbo")
    with rg.Ring(8) as ring:
        bufs = ring.buffer_ring(echo.BUF_GROUP, 16, 64, publish=False)
        with pytest.raises(Exception, match="FASTPATH_ECHO_CORE=turbo"):
            echo_core.make_core(ring, bufs, 1024)
