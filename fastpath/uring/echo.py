"""The Python echo server's worker: one ring, one listener, the design of uring/echo_server.c
on fastpath's bindings.

Multishot accept; multishot recv into a provided-buffer ring; a buffer is queued on its
connection and handed back to the ring only once its send completed; short sends are
finished in order with one send in flight per connection; per-connection backpressure
(recv cancelled at ``conn_max_bytes`` queued, re-armed below half of it); ENOBUFS parks
the connection until a buffer comes back; EMFILE/ENFILE on accept is counted and accept
retried after a back-off. SIGINT/SIGTERM stop accepting, drain, close every connection
and exit 0; SIGUSR1 prints counters.

Python is the server: it accepts, decides when a connection pauses, resumes, finishes or
is aborted, and owns timers, signals, drain and stats. The per-completion bookkeeping of
an echo (queue the received buffer, prepare its send, retire it when the send completed,
hand buffers back to the ring) runs in an *echo core* (echo_core.py): the shim's C helpers
(``fastpath_echo_*`` in uring/ffi_shim.c, one call per batch of completions), which hand
Python only the completions that need a decision. Doing that bookkeeping in Python cost
a few microseconds per completion (two per echo), 1.3-1.9x the CPU per request of an
asyncio server. Without the shim (liburing-ffi alone), or with
``FASTPATH_ECHO_CORE=python``, echo_core.PythonCore does the same bookkeeping in Python.

echo_serve.py runs one worker in this process or, with ``--threads N``, N forked worker
processes with a ring and an SO_REUSEPORT listener each (Python threads would share one
GIL). Both speak the same stdout line protocol as the native binary (see native.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from fastpath.errors import FastpathError
from fastpath.uring.abi import IORING_CQE_F_MORE, SETUP_FLAG_NAMES, flag_names
from fastpath.uring.echo_core import (
    GEN_MASK,
    OP_ACCEPT,
    OP_CANCEL,
    OP_RECV,
    OP_SEND,
    OP_TIMER,
    OP_WAKE,
    REAP_BATCH,
    SLOT_MASK,
    Conn,
    make_core,
    pack_ud,
)
from fastpath.uring.native import EchoOptions
from fastpath.uring.ring import Ring

# Tunables, the same values as the native server's.
SQ_ENTRIES = 1024  # SQEs per ring
CQ_ENTRIES = 16384  # multishot requests post many CQEs per SQE
BUF_GROUP = 0
ACCEPT_RETRY_S = 0.05  # back-off after EMFILE/ENFILE/ENOMEM on accept
LISTEN_BACKLOG = 4096

TIMER_ACCEPT_RETRY, TIMER_DRAIN, TIMER_STATS = 1, 2, 3

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
            self.core = make_core(self.ring, self.bufs, self.conn_max)
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
        self.emit: Callable[[dict[str, Any]], None] = print_json

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
        self.ring.prep_multishot_accept(self.listener.fileno(), pack_ud(OP_ACCEPT, 0, 0))
        self.accept_armed = True

    def _arm_wake(self) -> None:
        self.ring.prep_read(self._wake_r, self._wake_buf, pack_ud(OP_WAKE, 0, 0))

    def _arm_recv(self, conn: Conn) -> None:
        self.ring.prep_recv_multishot(conn.fd, BUF_GROUP, pack_ud(OP_RECV, conn.gen, conn.fd))
        conn.recv_armed = True

    def _cancel_op(self, op: int, conn: Conn) -> None:
        sqe = self._get_sqe()
        self._cancel(sqe, pack_ud(op, conn.gen, conn.fd), 0)
        self._set_data(sqe, pack_ud(OP_CANCEL, conn.gen, conn.fd))

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
                self.ring.prep_timeout(ACCEPT_RETRY_S, pack_ud(OP_TIMER, 0, TIMER_ACCEPT_RETRY))
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
            self._cancel(sqe, pack_ud(OP_ACCEPT, 0, 0), 0)
            self._set_data(sqe, pack_ud(OP_CANCEL, 0, 0))
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            conn.eof = True
            conn.starved = False
            if conn.recv_armed:
                self._cancel_op(OP_RECV, conn)
            self._maybe_finish(conn)
        self.ring.prep_timeout(self.opts.drain_ms / 1000, pack_ud(OP_TIMER, 0, TIMER_DRAIN))

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
            self.ring.prep_timeout(self.opts.stats_interval, pack_ud(OP_TIMER, 0, TIMER_STATS))

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
            ring.prep_timeout(self.opts.stats_interval, pack_ud(OP_TIMER, 0, TIMER_STATS))
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


def write_json(out: IO[str], obj: dict[str, Any]) -> None:
    """One line of the stdout protocol: compact JSON, flushed at once."""
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")
    out.flush()


def print_json(obj: dict[str, Any]) -> None:
    write_json(sys.stdout, obj)  # sys.stdout as it is now (a test may have replaced it)
