"""The Python echo server's echo core: the per-completion bookkeeping of an echo.

For each connection the core queues a received buffer, prepares its send, retires it when
the send completed (finishing short sends in order, one send in flight), and hands buffers
back to the ring, publishing a window of them that grows on ENOBUFS; it hands the server
(echo.py) only the completions that need a decision. :class:`ShimCore` does it in C, one
call per batch (``fastpath_echo_*`` in uring/ffi_shim.c); :class:`PythonCore` does the same
in Python when the shim is absent or ``FASTPATH_ECHO_CORE=python`` asks for it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from dataclasses import dataclass, field

from fastpath.errors import FastpathError
from fastpath.uring.abi import IORING_CQE_F_BUFFER, IORING_CQE_F_MORE
from fastpath.uring.bufring import BufferRing
from fastpath.uring.liburing import strerror
from fastpath.uring.ring import Ring
from fastpath.uring.structs import EchoConn, EchoStats, FastpathCqe

REAP_BATCH = 256  # completions handed to Python per echo-core call, at most
RING_WINDOW_MIN = 64  # buffers published to the kernel at least ... (as echo_server.c)
RING_WINDOW_SLACK = 64  # ... and this many beyond one per connection
CORE_ENV = "FASTPATH_ECHO_CORE"  # "python" forces the pure-Python echo core

# user_data: operation (8 bits) | connection generation (24) | slot, the connection's fd (32)
OP_ACCEPT, OP_RECV, OP_SEND, OP_CANCEL, OP_TIMER, OP_WAKE = range(1, 7)
GEN_MASK = 0xFFFFFF
SLOT_MASK = 0xFFFFFFFF

# Kept by the echo core; the rest of echo.COUNTERS by the worker.
CORE_COUNTERS = (
    "enters", "cqes", "messages", "bytes_in", "sends", "bytes_out", "short_sends", "bytes_queued",
)  # fmt: skip


def pack_ud(op: int, gen: int, slot: int) -> int:
    return (op << 56) | ((gen & GEN_MASK) << 32) | slot


@dataclass(slots=True, eq=False)
class _Conn:
    """A connection of the pure-Python core: the same fields as the shim's EchoConn."""

    fd: int
    gen: int
    queue: deque[list[int]] = field(default_factory=deque)  # [buffer id, length], oldest first
    q_bytes: int = 0
    sent_off: int = 0
    live: bool = True
    closing: bool = False
    recv_armed: bool = False
    send_inflight: bool = False
    paused: bool = False
    eof: bool = False
    starved: bool = False


Conn = EchoConn | _Conn
Event = tuple[int, int, int]  # (user_data, res, flags) of a completion Python must see


class ShimCore:
    """The echo core in C (uring/ffi_shim.c): one call reaps a whole batch."""

    name = "shim"

    def __init__(self, ring: Ring, bufs: BufferRing, conn_max: int) -> None:
        shim = ring.binding.shim
        assert shim is not None
        ptr = shim.fastpath_echo_new(ring.address, bufs.ring_addr, bufs.base, bufs.size,
                                     bufs.entries, conn_max, OP_RECV, OP_SEND)  # fmt: skip
        if not ptr:
            raise FastpathError("out of memory setting up the echo core")
        self._ptr: int = ptr
        self._shim = shim
        self._ring = ring
        self.stats = EchoStats.from_address(ptr)
        self._out = (FastpathCqe * REAP_BATCH)()
        self._reap = shim.fastpath_echo_reap
        self._enter = shim.fastpath_echo_enter
        self._flush = shim.fastpath_echo_flush

    def open(self, fd: int) -> EchoConn | None:
        p = self._shim.fastpath_echo_open(self._ptr, fd)
        return EchoConn.from_address(p) if p else None

    def close(self, conn: Conn) -> None:
        self._shim.fastpath_echo_close(self._ptr, conn.fd)

    def enter(self, wait_nr: int) -> list[Event]:
        """Submit, wait for `wait_nr` completions, then reap() - in one call."""
        n = self._enter(self._ptr, self._out, REAP_BATCH, wait_nr)
        if n <= 0:
            if n < 0:
                self.check()
                raise FastpathError(f"io_uring_submit_and_wait failed: {strerror(n)}")
            return []
        out = [(c.user_data, c.res, c.flags) for c in self._out[:n]]
        self._ring.retire(out)
        return out

    def reap(self) -> list[Event]:
        """Do the bookkeeping of every ready completion; the ones Python must see."""
        n = self._reap(self._ptr, self._out, REAP_BATCH)
        if not n:
            return []
        out = [(c.user_data, c.res, c.flags) for c in self._out[:n]]
        self._ring.retire(out)
        return out

    def flush(self) -> int:
        """Publish buffers released since the last reap; how many the kernel may pick."""
        return int(self._flush(self._ptr))

    def check(self) -> None:
        if self.stats.error:
            raise FastpathError(f"echo core: no free SQE even after submitting: "
                                f"{strerror(self.stats.error)}")  # fmt: skip

    def counters(self) -> dict[str, int]:
        st = self.stats
        return {k: int(getattr(st, k)) for k in CORE_COUNTERS}

    def free(self) -> None:
        if self._ptr:
            self._shim.fastpath_echo_free(self._ptr)
            self._ptr = 0


class PythonCore:
    """The same bookkeeping as ShimCore, one completion at a time in Python."""

    name = "python"

    def __init__(self, ring: Ring, bufs: BufferRing, conn_max: int) -> None:
        self._ring = ring
        self._bufs = bufs
        self._conn_max = conn_max
        self._entries = bufs.entries
        self._get_sqe = ring.get_sqe
        lib = ring.binding.lib
        self._prep_send = lib.io_uring_prep_send
        self._set_data = lib.io_uring_sqe_set_data64
        self._base = bufs.base
        self._size = bufs.size
        self._slots: dict[int, _Conn] = {}
        self._gens: dict[int, int] = {}
        self.free_bufs = list(range(bufs.entries - 1, -1, -1))  # most recent on top
        self.published = 0
        self.window = min(RING_WINDOW_MIN, bufs.entries)
        self.c = dict.fromkeys(CORE_COUNTERS, 0)
        self.flush()

    def open(self, fd: int) -> _Conn | None:
        if fd in self._slots:
            return None
        gen = (self._gens.get(fd, 0) + 1) & GEN_MASK
        self._gens[fd] = gen
        conn = self._slots[fd] = _Conn(fd, gen)
        return conn

    def close(self, conn: Conn) -> None:
        assert isinstance(conn, _Conn)
        if not conn.live:
            return
        self.free_bufs.extend(bid for bid, _ in conn.queue)
        conn.queue.clear()
        self.c["bytes_queued"] -= conn.q_bytes
        conn.q_bytes = 0
        conn.sent_off = 0
        conn.live = False
        del self._slots[conn.fd]

    def send(self, conn: Conn) -> None:
        assert isinstance(conn, _Conn)
        if conn.send_inflight or not conn.queue:
            return
        bid, length = conn.queue[0]
        sqe = self._get_sqe()
        off = conn.sent_off
        self._prep_send(sqe, conn.fd, self._base + bid * self._size + off, length - off,
                        socket.MSG_NOSIGNAL)  # fmt: skip
        self._set_data(sqe, pack_ud(OP_SEND, conn.gen, conn.fd))
        conn.send_inflight = True

    def enter(self, wait_nr: int) -> list[Event]:
        self._ring.submit_and_wait(wait_nr)
        self.c["enters"] += 1
        return self.reap()

    def reap(self) -> list[Event]:
        out: list[Event] = []
        slots = self._slots
        ring = self._ring
        while True:
            batch = ring.reap()
            for ud, res, flags in batch:
                op = ud >> 56
                conn = slots.get(ud & SLOT_MASK) if op == OP_RECV or op == OP_SEND else None
                if conn is None or conn.gen != (ud >> 32) & GEN_MASK:
                    out.append((ud, res, flags))
                elif op == OP_RECV:
                    if self._on_recv(conn, res, flags):
                        out.append((ud, res, flags))
                elif self._on_send(conn, res):
                    out.append((ud, res, flags))
            self.c["cqes"] += len(batch)
            if len(batch) < ring.reap_batch:
                break
        self.flush()
        return out

    def _on_recv(self, conn: _Conn, res: int, flags: int) -> bool:
        if flags & IORING_CQE_F_BUFFER:
            bid = flags >> 16
            if self.published:
                self.published -= 1
            if res > 0 and not conn.closing:
                conn.queue.append([bid, res])
                conn.q_bytes += res
                c = self.c
                c["messages"] += 1
                c["bytes_in"] += res
                c["bytes_queued"] += res
                self.send(conn)
            else:
                self.free_bufs.append(bid)
        if not flags & IORING_CQE_F_MORE:
            conn.recv_armed = False
            if res == -errno.ENOBUFS:  # the kernel found the ring empty, whatever our count
                self.published = 0
                if self.free_bufs and self.window < self._entries:
                    self.window = min(self.window * 2, self._entries)
            return True
        return res <= 0 or (not conn.closing and not conn.paused and conn.q_bytes >= self._conn_max)

    def _on_send(self, conn: _Conn, res: int) -> bool:
        conn.send_inflight = False
        if conn.closing or res <= 0 or not conn.queue:
            return True
        c = self.c
        c["sends"] += 1
        c["bytes_out"] += res
        head = conn.queue[0]
        left = head[1] - conn.sent_off
        conn.q_bytes -= res
        c["bytes_queued"] -= res
        if res < left:
            c["short_sends"] += 1
            conn.sent_off += res
            self.send(conn)
            return False
        conn.queue.popleft()
        conn.sent_off = 0
        self.free_bufs.append(head[0])
        self.send(conn)
        return bool(conn.eof or conn.paused or not conn.recv_armed)

    def flush(self) -> int:
        want = max(self.window, len(self._slots) + RING_WINDOW_SLACK)
        n = min(want - self.published, len(self.free_bufs))
        if n > 0:
            bids = self.free_bufs[-n:]
            del self.free_bufs[-n:]
            bids.reverse()  # the most recently used first
            self._bufs.recycle_many(bids)
            self.published += n
        return self.published

    def check(self) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return dict(self.c)

    def free(self) -> None:
        self._slots.clear()


def make_core(ring: Ring, bufs: BufferRing, conn_max: int) -> ShimCore | PythonCore:
    want = os.environ.get(CORE_ENV, "")
    if want not in ("", "shim", "python"):
        raise FastpathError(f"{CORE_ENV}={want}: expected 'shim' or 'python'")
    if want != "python" and ring.binding.shim is not None:
        return ShimCore(ring, bufs, conn_max)
    if want == "shim":
        raise FastpathError(f"{CORE_ENV}=shim, but the fastpath liburing shim is not loaded")
    return PythonCore(ring, bufs, conn_max)

