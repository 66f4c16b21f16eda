"""The Python echo server: the same design as uring/echo_server.c, on fastpath's bindings.

Multishot accept; multishot recv into a provided-buffer ring; a buffer is queued on its
connection and handed back to the ring only once its send completed; short sends are
finished in order with one send in flight per connection; per-connection backpressure
(recv cancelled at ``conn_max_bytes`` queued, re-armed below half of it); ENOBUFS parks
the connection until a buffer comes back; EMFILE/ENFILE on accept is counted and accept
retried after a back-off. SIGINT/SIGTERM stop accepting, drain, close every connection
and exit 0; SIGUSR1 prints counters. ``--threads N`` forks N worker processes, one ring
and one SO_REUSEPORT listener each (Python threads would share one GIL).

Python is the server: it accepts, decides when a connection pauses, resumes, finishes or
is aborted, and owns timers, signals, drain and stats. The per-completion bookkeeping of
an echo (queue the received buffer, prepare its send, retire it when the send completed,
hand buffers back to the ring) runs in an *echo core*: the shim's C helpers
(``fastpath_echo_*`` in uring/ffi_shim.c, one call per batch of completions), which hand
Python only the completions that need a decision. Doing that bookkeeping in Python cost
a few microseconds per completion (two per echo), 1.3-1.9x the CPU per request of an
asyncio server. Without the shim (liburing-ffi alone), or with
``FASTPATH_ECHO_CORE=python``, :class:`_PythonCore` does the same bookkeeping in Python.

It speaks the same stdout line protocol as the native binary (see native.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from fastpath.errors import FastpathError
from fastpath.uring.abi import IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, SETUP_FLAG_NAMES, flag_names
from fastpath.uring.bufring import BufferRing
from fastpath.uring.liburing import strerror
from fastpath.uring.native import EchoOptions, _die_with_parent
from fastpath.uring.ring import Ring
from fastpath.uring.structs import EchoConn, EchoStats, FastpathCqe

# Tunables, the same values as the native server's.
SQ_ENTRIES = 1024  # SQEs per ring
CQ_ENTRIES = 16384  # multishot requests post many CQEs per SQE
BUF_GROUP = 0
ACCEPT_RETRY_S = 0.05  # back-off after EMFILE/ENFILE/ENOMEM on accept
LISTEN_BACKLOG = 4096
JOIN_SLACK_S = 3.0  # beyond the drain, how long the parent waits for worker processes
REAP_BATCH = 256  # completions handed to Python per echo-core call, at most
RING_WINDOW_MIN = 64  # buffers published to the kernel at least ... (as echo_server.c)
RING_WINDOW_SLACK = 64  # ... and this many beyond one per connection
CORE_ENV = "FASTPATH_ECHO_CORE"  # "python" forces the pure-Python echo core

OP_ACCEPT, OP_RECV, OP_SEND, OP_CANCEL, OP_TIMER, OP_WAKE = range(1, 7)
TIMER_ACCEPT_RETRY, TIMER_DRAIN, TIMER_STATS = 1, 2, 3
GEN_MASK = 0xFFFFFF
SLOT_MASK = 0xFFFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shutdown.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.shutdown.restype = ctypes.c_int
_libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
_libc.setsockopt.restype = ctypes.c_int
_ONE = ctypes.c_int(1)

COUNTERS = (
    "connections_accepted", "connections_closed", "messages", "bytes_in", "sends",
    "bytes_out", "cqes", "enters", "enobufs", "short_sends", "accept_emfile",
    "accept_errors", "recv_errors", "send_errors", "backpressure_pauses", "bytes_queued",
)  # fmt: skip
# Kept by the echo core; the rest of COUNTERS by the worker.
CORE_COUNTERS = (
    "enters", "cqes", "messages", "bytes_in", "sends", "bytes_out", "short_sends", "bytes_queued",
)  # fmt: skip


def _ud(op: int, gen: int, slot: int) -> int:
    return (op << 56) | ((gen & GEN_MASK) << 32) | slot


class _Conn:
    """A connection of the pure-Python core: the same fields as the shim's EchoConn."""

    __slots__ = (
        "fd", "gen", "queue", "q_bytes", "sent_off", "live", "closing", "recv_armed",
        "send_inflight", "paused", "eof", "starved",
    )  # fmt: skip

    def __init__(self, fd: int, gen: int) -> None:
        self.fd = fd
        self.gen = gen
        self.queue: deque[list[int]] = deque()  # [buffer id, length], oldest first
        self.q_bytes = 0
        self.sent_off = 0
        self.live = True
        self.closing = False
        self.recv_armed = False
        self.send_inflight = False
        self.paused = False
        self.eof = False
        self.starved = False


Conn = EchoConn | _Conn
Event = tuple[int, int, int]  # (user_data, res, flags) of a completion Python must see


class _ShimCore:
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


class _PythonCore:
    """The same bookkeeping as _ShimCore, one completion at a time in Python."""

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
        self._set_data(sqe, _ud(OP_SEND, conn.gen, conn.fd))
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


def _make_core(ring: Ring, bufs: BufferRing, conn_max: int) -> _ShimCore | _PythonCore:
    want = os.environ.get(CORE_ENV, "")
    if want not in ("", "shim", "python"):
        raise FastpathError(f"{CORE_ENV}={want}: expected 'shim' or 'python'")
    if want != "python" and ring.binding.shim is not None:
        return _ShimCore(ring, bufs, conn_max)
    if want == "shim":
        raise FastpathError(f"{CORE_ENV}=shim, but the fastpath liburing shim is not loaded")
    return _PythonCore(ring, bufs, conn_max)


def bind_error(opts: EchoOptions, exc: OSError) -> FastpathError:
    if exc.errno == errno.EADDRINUSE:
        return FastpathError(
            f"port {opts.port} on {opts.addr} is already in use; stop the other server "
            "or choose another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return FastpathError(
            f"address {opts.addr} is not configured on this host; choose a local --addr"
        )
    if exc.errno == errno.EACCES:
        return FastpathError(
            f"port {opts.port} needs CAP_NET_BIND_SERVICE; choose a --port above 1023"
        )
    return FastpathError(f"bind {opts.addr} port {opts.port}: {exc.strerror}")


def open_listeners(opts: EchoOptions) -> tuple[list[socket.socket], int]:
    """`opts.threads` SO_REUSEPORT listeners on one port (a free one when port is 0).
    A plain bind first reports a port anyone holds instead of silently sharing it."""
    addr = opts.addr.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    port = opts.port
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((addr, port))
            except OSError as exc:
                raise bind_error(opts, exc) from None
    out: list[socket.socket] = []
    try:
        for _ in range(opts.threads):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((addr, port))
            except OSError as exc:
                raise bind_error(opts, exc) from None
            port = s.getsockname()[1]
            s.listen(LISTEN_BACKLOG)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out, port


class EchoWorker:
    """One ring, one listener, every connection accepted on it. Single-threaded."""

    def __init__(self, opts: EchoOptions, listener: socket.socket) -> None:
        self.opts = opts
        self.listener = listener
        self.conn_max = opts.effective_conn_max_bytes
        self.low_water = self.conn_max // 2
        self.ring = Ring(SQ_ENTRIES, cq_entries=CQ_ENTRIES, sqpoll=opts.sqpoll)
        try:
            # Empty at first: the echo core publishes a window of buffers, not the pool.
            self.bufs = self.ring.buffer_ring(BUF_GROUP, opts.buffers, opts.buffer_size,
                                              publish=False)  # fmt: skip
            self.core = _make_core(self.ring, self.bufs, self.conn_max)
        except BaseException:
            self.ring.close()
            raise
        self.conns: dict[int, Conn] = {}
        self.starved: deque[Conn] = deque()
        self.released = False  # buffers went back to the pool outside the core's reap
        self.retired: dict[int, int] = {}  # slot -> generation freed in this batch
        self.accept_armed = False
        self.accept_timer_armed = False
        self.stopping = False
        self.drain_expired = False
        self.stop_requested = False
        self.stats_requested = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.started = time.monotonic()
        # The read end stays blocking: io_uring honours O_NONBLOCK with -EAGAIN.
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._wake_w, False)
        self._wake_buf = bytearray(64)
        lib = self.ring.binding.lib
        self._get_sqe = self.ring.get_sqe
        self._set_data = lib.io_uring_sqe_set_data64
        self._cancel = lib.io_uring_prep_cancel64
        self.emit: Callable[[dict[str, Any]], None] = _print_json

    # -- life cycle
    @property
    def setup_text(self) -> str:
        return "|".join(n for n in flag_names(self.ring.setup_flags, SETUP_FLAG_NAMES)
                        if n != "CQSIZE") or "none"  # fmt: skip

    def close(self) -> None:
        for conn in list(self.conns.values()):
            with contextlib.suppress(OSError):
                os.close(conn.fd)
        self.conns.clear()
        self.core.free()
        self.bufs.close()
        self.ring.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def install_signals(self) -> None:
        """SIGINT/SIGTERM request a drain, SIGUSR1 a stats line; the wake-up pipe makes
        the blocked io_uring_enter return so the request is seen at once."""

        def on_stop(_s: int, _f: FrameType | None) -> None:
            self.stop_requested = True

        def on_stats(_s: int, _f: FrameType | None) -> None:
            self.stats_requested = True

        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGUSR1, on_stats)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        c = {**self.counters, **self.core.counters()}
        out: dict[str, Any] = {
            "event": "stats",
            "final": final,
            "engine": "python",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "threads": 1,
            **c,
        }
        out["connections_open"] = c["connections_accepted"] - c["connections_closed"]
        out["cqes_per_enter"] = round(c["cqes"] / c["enters"], 2) if c["enters"] else 0.0
        return out

    # -- submissions
    def _arm_accept(self) -> None:
        self.ring.prep_multishot_accept(self.listener.fileno(), _ud(OP_ACCEPT, 0, 0))
        self.accept_armed = True

    def _arm_wake(self) -> None:
        self.ring.prep_read(self._wake_r, self._wake_buf, _ud(OP_WAKE, 0, 0))

    def _arm_recv(self, conn: Conn) -> None:
        self.ring.prep_recv_multishot(conn.fd, BUF_GROUP, _ud(OP_RECV, conn.gen, conn.fd))
        conn.recv_armed = True

    def _cancel_op(self, op: int, conn: Conn) -> None:
        sqe = self._get_sqe()
        self._cancel(sqe, _ud(op, conn.gen, conn.fd), 0)
        self._set_data(sqe, _ud(OP_CANCEL, conn.gen, conn.fd))

    # -- connections
    def _new_conn(self, fd: int) -> None:
        # Echo replies are latency-bound: never hold a short segment back. (libc directly:
        # a socket object wrapped around `fd` would close it if anything raised.)
        _libc.setsockopt(fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, ctypes.byref(_ONE), 4)
        conn = self.core.open(fd)
        if conn is None:  # no slot for this fd (out of memory, or fd beyond the table)
            os.close(fd)
            self.counters["accept_errors"] += 1
            return
        self.conns[fd] = conn
        self.counters["connections_accepted"] += 1
        self._arm_recv(conn)

    def _maybe_free(self, conn: Conn) -> None:
        if not conn.closing or conn.recv_armed or conn.send_inflight:
            return
        self.core.close(conn)  # its queued buffers go back to the pool
        self.released = True
        self.retired[conn.fd] = conn.gen
        conn.starved = False
        os.close(conn.fd)
        del self.conns[conn.fd]
        self.counters["connections_closed"] += 1

    def _abort(self, conn: Conn) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.starved = False
        _libc.shutdown(conn.fd, socket.SHUT_RDWR)
        if conn.recv_armed:
            self._cancel_op(OP_RECV, conn)
        if conn.send_inflight:
            self._cancel_op(OP_SEND, conn)
        self._maybe_free(conn)

    def _maybe_finish(self, conn: Conn) -> None:
        # q_bytes is 0 exactly when nothing is queued (a queued buffer has unsent bytes).
        if conn.closing or not conn.eof or conn.q_bytes or conn.send_inflight or conn.recv_armed:
            return
        conn.closing = True
        self._maybe_free(conn)

    def _maybe_resume(self, conn: Conn) -> None:
        if conn.closing or conn.eof or conn.recv_armed or conn.starved or self.stopping:
            return
        if conn.paused:
            if conn.q_bytes > self.low_water:
                return
            conn.paused = False
        self._arm_recv(conn)

    # -- completions
    def _on_accept(self, res: int, flags: int) -> None:
        if not flags & IORING_CQE_F_MORE:
            self.accept_armed = False
        if res >= 0:
            if self.stopping:
                os.close(res)
            else:
                self._new_conn(res)
        elif res in (-errno.EMFILE, -errno.ENFILE, -errno.ENOMEM, -errno.ENOBUFS):
            self.counters["accept_emfile"] += 1
        elif res != -errno.ECANCELED:
            self.counters["accept_errors"] += 1
        if self.accept_armed or self.stopping:
            return
        if res < 0 and res not in (-errno.ECANCELED, -errno.ECONNABORTED, -errno.EINTR):
            if not self.accept_timer_armed:
                self.ring.prep_timeout(ACCEPT_RETRY_S, _ud(OP_TIMER, 0, TIMER_ACCEPT_RETRY))
                self.accept_timer_armed = True
            return
        self._arm_accept()

    def _on_recv(self, conn: Conn, res: int, flags: int) -> None:
        """A recv completion the core handed up; its buffer is queued or recycled already."""
        if flags & IORING_CQE_F_MORE:
            # Still armed: the queue crossed the backpressure mark (or res <= 0).
            if res > 0 and not conn.closing and not conn.paused and conn.q_bytes >= self.conn_max:
                conn.paused = True
                self.counters["backpressure_pauses"] += 1
                self._cancel_op(OP_RECV, conn)
            return
        # The multishot recv has ended (the core cleared recv_armed); re-arm it or not.
        if conn.closing:
            self._maybe_free(conn)
            return
        if res == 0:
            conn.eof = True
        elif res == -errno.ENOBUFS:
            self.counters["enobufs"] += 1
            if not conn.eof and not self.stopping and not conn.starved:
                conn.starved = True
                self.starved.append(conn)
        elif res < 0 and res != -errno.ECANCELED:
            self.counters["recv_errors"] += 1
            self._abort(conn)
            return
        if conn.eof:
            self._maybe_finish(conn)
        else:
            self._maybe_resume(conn)

    def _on_send(self, conn: Conn, res: int) -> None:
        """A send completion the core handed up: it failed, its connection is closing, or
        (accounted and the next send prepared already) the connection may finish/resume."""
        if conn.closing:
            self._maybe_free(conn)
            return
        if res <= 0:
            self.counters["send_errors"] += 1
            self._abort(conn)
            return
        if conn.eof:
            self._maybe_finish(conn)
        elif conn.paused or not conn.recv_armed:
            self._maybe_resume(conn)

    def _begin_stop(self) -> None:
        self.stopping = True
        if self.accept_armed:
            sqe = self._get_sqe()
            self._cancel(sqe, _ud(OP_ACCEPT, 0, 0), 0)
            self._set_data(sqe, _ud(OP_CANCEL, 0, 0))
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            conn.eof = True
            conn.starved = False
            if conn.recv_armed:
                self._cancel_op(OP_RECV, conn)
            self._maybe_finish(conn)
        self.ring.prep_timeout(self.opts.drain_ms / 1000, _ud(OP_TIMER, 0, TIMER_DRAIN))

    def _on_timer(self, which: int) -> None:
        if which == TIMER_ACCEPT_RETRY:
            self.accept_timer_armed = False
            if not self.stopping and not self.accept_armed:
                self._arm_accept()
        elif which == TIMER_DRAIN and not self.drain_expired:
            self.drain_expired = True
            for conn in list(self.conns.values()):
                self._abort(conn)
        elif which == TIMER_STATS and not self.stopping:
            self.emit(self.snapshot())
            self.ring.prep_timeout(self.opts.stats_interval, _ud(OP_TIMER, 0, TIMER_STATS))

    def _flush_buffers(self) -> None:
        """Publish what Python released, then re-arm starved connections, oldest first,
        one per buffer the kernel may pick."""
        self.released = False
        n = self.core.flush()
        while n and self.starved:
            conn = self.starved.popleft()
            if conn.starved:
                conn.starved = False
                n -= 1
                self._maybe_resume(conn)

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until a stop request has drained and closed every connection."""
        ring = self.ring
        self._arm_accept()
        self._arm_wake()
        if self.opts.stats_interval:
            ring.prep_timeout(self.opts.stats_interval, _ud(OP_TIMER, 0, TIMER_STATS))
        ring.submit()
        if on_ready:
            on_ready()
        conns = self.conns
        core = self.core
        enter = core.enter
        retired = self.retired
        while not (self.stopping and not conns and not self.accept_armed):
            # One call submits, waits and does the echo bookkeeping of the whole batch;
            # what it hands back needs a decision.
            batch = enter(1)
            while True:
                retired.clear()
                for ud, res, flags in batch:
                    op = ud >> 56
                    if op == OP_RECV or op == OP_SEND:
                        conn = conns.get(ud & SLOT_MASK)
                        if conn is None or conn.gen != (ud >> 32) & GEN_MASK:
                            # The core saw the whole batch first: a connection freed by
                            # an earlier completion of it has nothing left to decide.
                            if retired.get(ud & SLOT_MASK) == (ud >> 32) & GEN_MASK:
                                continue
                            raise FastpathError(f"completion for a dead connection: {ud:#x}")
                        if op == OP_RECV:
                            self._on_recv(conn, res, flags)
                        else:
                            self._on_send(conn, res)
                    elif op == OP_ACCEPT:
                        self._on_accept(res, flags)
                    elif op == OP_TIMER:
                        self._on_timer(ud & SLOT_MASK)
                    elif op == OP_WAKE:
                        if not self.stopping:
                            self._arm_wake()
                if len(batch) < REAP_BATCH:
                    break
                batch = core.reap()
            if self.released or self.starved:
                self._flush_buffers()
            if self.stats_requested:
                self.stats_requested = False
                self.emit(self.snapshot())
            if self.stop_requested and not self.stopping:
                self._begin_stop()


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _ready_line(
    opts: EchoOptions, port: int, setup: str, threads: int, core: str
) -> dict[str, Any]:
    return {
        "event": "ready",
        "engine": "python",
        "addr": opts.addr.strip("[]"),
        "port": port,
        "threads": threads,
        "pid": os.getpid(),
        "setup": setup,
        "echo_core": core,
        "buffers": opts.buffers,
        "buffer_size": opts.buffer_size,
        "conn_max_bytes": opts.effective_conn_max_bytes,
        "drain_ms": opts.drain_ms,
    }


def sum_stats(parts: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    """Add up per-worker stats lines into one, as the native server reports them."""
    out: dict[str, Any] = {"event": "stats", "final": final, "engine": "python"}
    out["uptime_s"] = max((p.get("uptime_s", 0.0) for p in parts), default=0.0)
    out["threads"] = len(parts)
    for key in COUNTERS:
        out[key] = sum(int(p.get(key, 0)) for p in parts)
    out["connections_open"] = out["connections_accepted"] - out["connections_closed"]
    out["cqes_per_enter"] = round(out["cqes"] / out["enters"], 2) if out["enters"] else 0.0
    return out


def serve_python(opts: EchoOptions, *, out: IO[str] | None = None) -> int:
    """`fastpath uring serve --engine python`: serve until SIGINT/SIGTERM, return 0."""
    from fastpath.output import info

    opts.validate()
    listeners, port = open_listeners(opts)
    emit = _print_json if out is None else _writer(out)
    try:
        if opts.threads == 1:
            worker = EchoWorker(opts, listeners[0])
            worker.emit = emit
            try:
                worker.install_signals()

                def ready() -> None:
                    emit(_ready_line(opts, port, worker.setup_text, 1, worker.core.name))
                    info(
                        f"echo server (python, pid {os.getpid()}) on {opts.addr} port {port}, "
                        f"io_uring setup {worker.setup_text}; SIGUSR1 prints stats, Ctrl-C stops"
                    )

                worker.serve(ready)
                emit(worker.snapshot(final=True))
            finally:
                worker.close()
            return 0
        return _serve_forked(opts, listeners, port, emit)
    finally:
        for s in listeners:
            s.close()


def _writer(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    return emit


def _child(opts: EchoOptions, listener: socket.socket, wfd: int) -> int:
    """Body of one worker process: report on `wfd` instead of stdout."""
    pipe = os.fdopen(wfd, "w", buffering=1)
    try:
        worker = EchoWorker(opts, listener)
    except FastpathError as exc:
        pipe.write(json.dumps({"event": "error", "message": str(exc)}) + "\n")
        return 1
    worker.emit = _writer(pipe)
    worker.opts = EchoOptions(**{**opts.__dict__, "stats_interval": 0.0})
    try:
        worker.install_signals()
        worker.serve(lambda: worker.emit(
            {"event": "ready", "setup": worker.setup_text, "echo_core": worker.core.name}
        ))  # fmt: skip
        worker.emit(worker.snapshot(final=True))
    finally:
        worker.close()
    return 0


def _serve_forked(
    opts: EchoOptions, listeners: list[socket.socket], port: int,
    emit: Callable[[dict[str, Any]], None],
) -> int:  # fmt: skip
    from fastpath.output import info

    children: dict[int, int] = {}  # pid -> read fd
    sys.stdout.flush()
    for i, lsock in enumerate(listeners):
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child: one ring, one listener, signals of its own
            code = 1
            try:
                _die_with_parent()
                os.close(r)
                for fd in children.values():
                    os.close(fd)
                for j, other in enumerate(listeners):
                    if j != i:
                        other.close()
                with contextlib.suppress(OSError):
                    ncpu = os.cpu_count() or 1
                    os.sched_setaffinity(0, {i % ncpu})
                code = _child(opts, lsock, w)
            finally:
                os._exit(code)
        os.close(w)
        children[pid] = r

    readers = {fd: os.fdopen(fd, "r") for fd in children.values()}
    latest: dict[int, dict[str, Any]] = {}
    stop = {"requested": False, "stats": False}

    def on_stop(_s: int, _f: FrameType | None) -> None:
        stop["requested"] = True

    def on_stats(_s: int, _f: FrameType | None) -> None:
        stop["stats"] = True

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, on_stats)
    # A signal makes select() return at once (it would otherwise resume its timeout).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def collect(event: str, want: set[int], timeout: float) -> dict[int, dict[str, Any]]:
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while want - set(got) and time.monotonic() < deadline:
            fds = [fd for fd in want - set(got)]
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            except InterruptedError:
                continue
            for fd in ready:
                line = readers[fd].readline()
                if not line:
                    got[fd] = {"event": "eof"}
                    continue
                obj = json.loads(line)
                if obj.get("event") == "error":
                    raise FastpathError(obj["message"])
                if obj.get("event") == event:
                    got[fd] = obj
        return got

    def signal_children(sig: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    exited: dict[int, int] = {}
    rc = 0
    try:
        ready = collect("ready", set(children.values()), 15.0)
        if len(ready) != len(children) or any(v["event"] != "ready" for v in ready.values()):
            raise FastpathError("python echo workers did not start within 15 s")
        first = next(iter(ready.values()))
        setup = first["setup"]
        emit(_ready_line(opts, port, setup, len(children), first["echo_core"]))
        info(
            f"echo server (python, {len(children)} worker processes, pid {os.getpid()}) on "
            f"{opts.addr} port {port}, io_uring setup {setup}; SIGUSR1 prints stats, Ctrl-C stops"
        )
        next_stats = time.monotonic() + opts.stats_interval if opts.stats_interval else None
        while not stop["requested"]:
            timeout = 1.0 if next_stats is None else max(0.0, next_stats - time.monotonic())
            ready_fds, _, _ = select.select([wake_r], [], [], min(timeout, 1.0))
            if ready_fds:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            for pid in children:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    exited[pid] = status
            if exited:
                raise FastpathError("a python echo worker process died")
            due = next_stats is not None and time.monotonic() >= next_stats
            if stop["stats"] or due:
                stop["stats"] = False
                if next_stats is not None and due:
                    next_stats += opts.stats_interval
                signal_children(signal.SIGUSR1)
                latest.update(collect("stats", set(children.values()), 5.0))
                emit(sum_stats(list(latest.values()), final=False))
        signal_children(signal.SIGTERM)
        finals = collect("stats", set(children.values()), opts.drain_ms / 1000 + JOIN_SLACK_S)
        emit(sum_stats([v for v in finals.values() if v.get("final")], final=True))
    except FastpathError:
        rc = 1
        raise
    finally:
        signal_children(signal.SIGTERM)
        deadline = time.monotonic() + opts.drain_ms / 1000 + JOIN_SLACK_S
        for pid in children:
            while True:
                if pid in exited:
                    done, status = pid, exited[pid]
                else:
                    done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if os.waitstatus_to_exitcode(status) != 0:
                        rc = rc or 1
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    rc = 1
                    break
                time.sleep(0.01)
        for f in readers.values():
            f.close()
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)
    return rc
