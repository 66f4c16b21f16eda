"""The Pythonic layer over the bindings: one io_uring instance as :class:`Ring`.

A Ring is a context manager with setup-flag fallback (newest features first), checked
against the kernel's own answer once set up; prep_* methods prepare the SQEs fastpath uses;
reap() retires a batch of completions in one step (the shim's fastpath_uring_reap when
loaded); probe() reads the kernel's opcode table. Provided-buffer rings are bufring.py's.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring.abi import (
    IO_URING_OP_SUPPORTED,
    IORING_CQE_BUFFER_SHIFT,
    IORING_CQE_F_BUFFER,
    IORING_CQE_F_MORE,
    IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_CQSIZE,
    IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SINGLE_ISSUER,
    IORING_SETUP_SQPOLL,
    IORING_SETUP_TASKRUN_FLAG,
    IOSQE_BUFFER_SELECT,
    OP,
    OPCODES,
)
from fastpath.uring.bufring import BufferRing
from fastpath.uring.liburing import Liburing, load, strerror
from fastpath.uring.structs import (
    FastpathCqe,
    IoUring,
    IoUringCqe,
    IoUringParams,
    IoUringProbe,
    IoUringProbeOp,
    IoUringSqe,
    KernelTimespec,
    c_void_p,
)

U64_MASK = 0xFFFFFFFFFFFFFFFF


class Completion(NamedTuple):
    user_data: int
    res: int
    flags: int

    @property
    def more(self) -> bool:
        """True while a multishot request stays armed after this completion."""
        return bool(self.flags & IORING_CQE_F_MORE)

    @property
    def buffer_id(self) -> int | None:
        """The provided buffer this completion filled, if any."""
        return self.flags >> IORING_CQE_BUFFER_SHIFT if self.flags & IORING_CQE_F_BUFFER else None


def _timespec(seconds: float) -> KernelTimespec:
    sec = int(seconds)
    return KernelTimespec(sec, int(round((seconds - sec) * 1e9)))


BufferLike = Any  # bytes, bytearray, memoryview, ctypes array, mmap, or a raw int address


def buffer_address(buf: BufferLike) -> tuple[int, int]:
    """(address, length) of a buffer; a read-only `bytes` is addressed without a copy."""
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0, len(buf)
    if isinstance(buf, ctypes.Array):
        return ctypes.addressof(buf), ctypes.sizeof(buf)
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("read-only buffers other than bytes cannot be addressed")
    arr = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(arr), view.nbytes


#: Setup flag sets tried in order; the first one the kernel accepts wins.
DEFAULT_SETUP_CHAIN: tuple[int, ...] = (
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_COOP_TASKRUN,
    0,
)
SQPOLL_SETUP_CHAIN: tuple[int, ...] = (
    IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER,
    IORING_SETUP_SQPOLL,
)


class Ring:
    """One io_uring instance. Use from one thread (it may be SINGLE_ISSUER).

    Setup flags: SINGLE_ISSUER|DEFER_TASKRUN, else COOP_TASKRUN(|TASKRUN_FLAG), else none
    (SQPOLL|SINGLE_ISSUER, else SQPOLL with `sqpoll=True`); `setup_flags` tells which won.
    Prep methods take the `user_data` a completion will carry. Buffers passed as Python
    objects are kept alive by the ring until their request's final completion is reaped;
    raw int addresses are the caller's to keep valid.
    """

    def __init__(
        self,
        entries: int = 256,
        *,
        cq_entries: int | None = None,
        sqpoll: bool = False,
        sq_thread_idle_ms: int = 1000,
        flags: int | None = None,
        setup_chain: Sequence[int] | None = None,
        reap_batch: int = 256,
        lib: Liburing | None = None,
    ) -> None:
        if not 1 <= entries <= 32768:
            raise FastpathError(f"ring entries {entries} out of range 1..32768")
        self.binding = lib or load()
        self._lib = self.binding.lib
        self._ring = IoUring()
        self._addr = ctypes.addressof(self._ring)
        self._closed = True
        self._keep: dict[int, Any] = {}
        self._buffer_rings: dict[int, BufferRing] = {}
        # `flags` demands exactly one set; otherwise walk the chain, newest features first.
        if flags is not None:
            chain: Sequence[int] = (flags,)
        elif setup_chain is not None:
            chain = setup_chain
        else:
            chain = SQPOLL_SETUP_CHAIN if sqpoll else DEFAULT_SETUP_CHAIN
        last = 0
        for candidate in chain:
            params = IoUringParams()
            params.flags = candidate
            if cq_entries:
                params.flags |= IORING_SETUP_CQSIZE
                params.cq_entries = cq_entries
            if candidate & IORING_SETUP_SQPOLL:
                params.sq_thread_idle = sq_thread_idle_ms
            last = self._lib.io_uring_queue_init_params(entries, self._addr, ctypes.byref(params))
            if last == 0:
                break
            if last not in (-errno.EINVAL, -errno.EOPNOTSUPP) or flags is not None:
                break
        if last != 0:
            if last == -errno.EPERM:
                raise CapabilityError(
                    "io_uring_setup refused (EPERM): io_uring is disabled for this process",
                    fix="set sysctl kernel.io_uring_disabled=0 or run with CAP_SYS_ADMIN",
                )
            if last == -errno.ENOSYS:
                raise CapabilityError("this kernel has no io_uring", fix="use Linux >= 6.0")
            raise FastpathError(f"io_uring_queue_init_params failed: {strerror(last)}")
        self._closed = False
        self.params = params
        self._check_ring(entries)
        # What the kernel granted, fixed for the ring's life.
        self.fd = int(self._ring.ring_fd)
        self.setup_flags = int(self._ring.flags)
        self.features = int(self._ring.features)
        self.sq_entries = int(params.sq_entries)
        self.cq_entries = int(params.cq_entries)
        self._reap_max = reap_batch
        self._reap_buf = (FastpathCqe * reap_batch)()
        self._reap_ptrs = (c_void_p * reap_batch)()
        self._reap_fn = self.binding.shim.fastpath_uring_reap if self.binding.shim else None
        self._cqe_ptr = c_void_p()

    def _check_ring(self, entries: int) -> None:
        """The kernel's answer read back through the mirror: catches an offset drift even
        without the shim's table (liburing-ffi on its own)."""
        r, p = self._ring, self.params
        problems = []
        if r.ring_fd < 0:
            problems.append(f"ring_fd {r.ring_fd}")
        if r.sq.ring_entries != p.sq_entries or r.sq.ring_mask != p.sq_entries - 1:
            problems.append(f"sq entries/mask {r.sq.ring_entries}/{r.sq.ring_mask}")
        if r.cq.ring_entries != p.cq_entries or r.cq.ring_mask != p.cq_entries - 1:
            problems.append(f"cq entries/mask {r.cq.ring_entries}/{r.cq.ring_mask}")
        if r.flags != p.flags or r.features != p.features:
            problems.append(f"flags/features {r.flags:#x}/{r.features:#x}")
        if not (r.sq.khead and r.sq.sqes and r.cq.khead and r.cq.cqes):
            problems.append("null ring pointers")
        if p.sq_entries < entries:
            problems.append(f"sq_entries {p.sq_entries} < {entries}")
        if problems:
            self.close()
            raise FastpathError(
                "struct io_uring read back wrong through the ctypes mirror ("
                + ", ".join(problems)
                + ")",
                fix="fastpath/uring/structs.py does not match this liburing; update the mirrors",
            )

    # -- lifecycle
    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        for br in list(self._buffer_rings.values()):
            br.close()
        self._lib.io_uring_queue_exit(self._addr)
        self._closed = True
        self._keep.clear()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> int:
        """Address of the struct io_uring, for calls into the library."""
        return self._addr

    @property
    def reap_batch(self) -> int:
        """The most completions one reap() returns."""
        return self._reap_max

    # -- submission
    def get_sqe(self) -> int:
        """A free SQE's address; flushes the SQ to the kernel once if it is full."""
        sqe = self._lib.io_uring_get_sqe(self._addr)
        if sqe is None:
            self.submit()
            sqe = self._lib.io_uring_get_sqe(self._addr)
            if sqe is None:
                raise FastpathError("submission queue full even after submitting")
        return int(sqe)

    def _prep(
        self, helper: Any, user_data: int, *args: Any, sqe_flags: int = 0, keep: Any = None
    ) -> int:
        """One SQE: `helper(sqe, *args)` (a liburing io_uring_prep_* function), then its
        user_data and flags; `keep` stays alive until the request's final completion.
        Every prep_* method below is this call with its own typed arguments."""
        sqe = self.get_sqe()
        helper(sqe, *args)
        lib = self._lib
        lib.io_uring_sqe_set_data64(sqe, user_data)
        if sqe_flags:
            lib.io_uring_sqe_set_flags(sqe, sqe_flags)
        if keep is not None:
            self._keep[user_data] = keep
        return sqe

    def _prep_buf(
        self, helper: Any, fd: int, buf: BufferLike, length: int | None, user_data: int,
        last: int, *, sqe_flags: int = 0,
    ) -> None:  # fmt: skip
        """A data transfer: `helper(sqe, fd, address, length, last)` on `buf`, kept alive."""
        if isinstance(buf, int):
            if length is None:
                raise TypeError("a raw address needs an explicit length")
            addr, n, keep = buf, length, None
        else:
            addr, n = buffer_address(buf)
            if length is not None:
                if length > n:
                    raise ValueError(f"length {length} exceeds the buffer's {n} bytes")
                n = length
            keep = buf
        self._prep(helper, user_data, fd, addr, n, last, sqe_flags=sqe_flags, keep=keep)

    def _prep_select(self, helper: Any, fd: int, group: int, user_data: int, flags: int) -> None:
        """A recv into a buffer the kernel picks from provided-buffer group `group`."""
        sqe = self._prep(helper, user_data, fd, None, 0, flags, sqe_flags=IOSQE_BUFFER_SELECT)
        IoUringSqe.from_address(sqe).buf_group = group

    def prep_nop(self, user_data: int, *, sqe_flags: int = 0) -> None:
        self._prep(self._lib.io_uring_prep_nop, user_data, sqe_flags=sqe_flags)

    def prep_read(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        offset: int = -1, sqe_flags: int = 0,
    ) -> None:  # fmt: skip
        """Read into `buf`; offset -1 means the file's current position (pipes, sockets)."""
        self._prep_buf(self._lib.io_uring_prep_read, fd, buf, length, user_data,
                       offset & U64_MASK, sqe_flags=sqe_flags)  # fmt: skip

    def prep_write(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        offset: int = -1, sqe_flags: int = 0,
    ) -> None:  # fmt: skip
        self._prep_buf(self._lib.io_uring_prep_write, fd, buf, length, user_data,
                       offset & U64_MASK, sqe_flags=sqe_flags)  # fmt: skip

    def prep_accept(self, fd: int, user_data: int, *, flags: int = socket.SOCK_CLOEXEC) -> None:
        self._prep(self._lib.io_uring_prep_accept, user_data, fd, None, None, flags)

    def prep_multishot_accept(
        self, fd: int, user_data: int, *, flags: int = socket.SOCK_CLOEXEC
    ) -> None:
        """One SQE, one CQE per accepted connection while the CQE carries F_MORE."""
        self._prep(self._lib.io_uring_prep_multishot_accept, user_data, fd, None, None, flags)

    def prep_recv(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        flags: int = 0,
    ) -> None:  # fmt: skip
        self._prep_buf(self._lib.io_uring_prep_recv, fd, buf, length, user_data, flags)

    def prep_recv_select(self, fd: int, group: int, user_data: int, *, flags: int = 0) -> None:
        """One-shot recv into a buffer the kernel picks from provided-buffer group `group`."""
        self._prep_select(self._lib.io_uring_prep_recv, fd, group, user_data, flags)

    def prep_recv_multishot(self, fd: int, group: int, user_data: int, *, flags: int = 0) -> None:
        """Multishot recv: every CQE carries one buffer from group `group`."""
        self._prep_select(self._lib.io_uring_prep_recv_multishot, fd, group, user_data, flags)

    def prep_send(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        flags: int = socket.MSG_NOSIGNAL,
    ) -> None:  # fmt: skip
        self._prep_buf(self._lib.io_uring_prep_send, fd, buf, length, user_data, flags)

    def prep_close(self, fd: int, user_data: int) -> None:
        self._prep(self._lib.io_uring_prep_close, user_data, fd)

    def prep_shutdown(self, fd: int, how: int, user_data: int) -> None:
        self._prep(self._lib.io_uring_prep_shutdown, user_data, fd, how)

    def prep_cancel(self, target: int, user_data: int, *, flags: int = 0) -> None:
        """Cancel the request(s) whose user_data is `target`."""
        self._prep(self._lib.io_uring_prep_cancel64, user_data, target, flags)

    def prep_cancel_fd(self, fd: int, user_data: int, *, flags: int = 0) -> None:
        """Cancel requests on `fd` (all of them with IORING_ASYNC_CANCEL_ALL)."""
        self._prep(self._lib.io_uring_prep_cancel_fd, user_data, fd, flags)

    def prep_timeout(
        self, seconds: float, user_data: int, *, count: int = 0, flags: int = 0
    ) -> None:
        """Complete with -ETIME after `seconds`, or with 0 once `count` other CQEs posted."""
        ts = _timespec(seconds)
        self._prep(self._lib.io_uring_prep_timeout, user_data, ctypes.addressof(ts), count, flags,
                   keep=ts)  # fmt: skip

    def prep_timeout_remove(self, target: int, user_data: int) -> None:
        self._prep(self._lib.io_uring_prep_timeout_remove, user_data, target, 0)

    def submit(self) -> int:
        ret = self._lib.io_uring_submit(self._addr)
        if ret < 0:
            raise FastpathError(f"io_uring_submit failed: {strerror(ret)}")
        return int(ret)

    def submit_and_wait(self, wait_nr: int = 1) -> int:
        """Submit and block until `wait_nr` completions are ready (EINTR returns 0)."""
        ret = self._lib.io_uring_submit_and_wait(self._addr, wait_nr)
        if ret < 0:
            if ret in (-errno.EINTR, -errno.EAGAIN, -errno.EBUSY, -errno.ETIME):
                return 0
            raise FastpathError(f"io_uring_submit_and_wait failed: {strerror(ret)}")
        return int(ret)

    def wait(self, wait_nr: int = 1, timeout: float | None = None) -> bool:
        """Submit pending SQEs and wait for `wait_nr` completions or `timeout` seconds.
        Returns False on timeout."""
        ts = _timespec(timeout) if timeout is not None else None
        ret = self._lib.io_uring_submit_and_wait_timeout(
            self._addr,
            ctypes.byref(self._cqe_ptr),
            wait_nr,
            ctypes.byref(ts) if ts is not None else None,
            None,
        )
        if ret in (-errno.ETIME, -errno.EINTR):
            return False
        if ret < 0:
            raise FastpathError(f"io_uring_submit_and_wait_timeout failed: {strerror(ret)}")
        return True

    def sq_ready(self) -> int:
        return int(self._lib.io_uring_sq_ready(self._addr))

    def sq_space_left(self) -> int:
        return int(self._lib.io_uring_sq_space_left(self._addr))

    def cq_ready(self) -> int:
        return int(self._lib.io_uring_cq_ready(self._addr))

    # -- completion
    def reap(self, max_count: int | None = None) -> list[Completion]:
        """Every ready completion (up to `max_count`), retired from the CQ in one step.
        Does not enter the kernel: call wait()/submit_and_wait() first."""
        limit = self._reap_max if max_count is None else min(max_count, self._reap_max)
        if self._reap_fn is not None:
            n = self._reap_fn(self._addr, self._reap_buf, limit)
            buf = self._reap_buf
            out = [Completion(c.user_data, c.res, c.flags) for c in buf[:n]]
        else:
            out = self._reap_portable(limit)
        if self._keep:
            self.retire(out)
        return out

    def retire(self, completions: Iterable[tuple[int, int, int]]) -> None:
        """Let go of the Python objects kept alive for requests whose final completion
        is among `completions` (for callers that reap by other means than reap())."""
        keep = self._keep
        if not keep:
            return
        for user_data, _res, flags in completions:
            if not flags & IORING_CQE_F_MORE:
                keep.pop(user_data, None)

    def _reap_portable(self, limit: int) -> list[Completion]:
        """The same as reap() with only liburing's own API (peek_batch + cq_advance)."""
        n = self._lib.io_uring_peek_batch_cqe(self._addr, self._reap_ptrs, limit)
        out = []
        for i in range(n):
            cqe = IoUringCqe.from_address(self._reap_ptrs[i])  # type: ignore[arg-type]  # never NULL below n
            out.append(Completion(cqe.user_data, cqe.res, cqe.flags))
        if n:
            self._lib.io_uring_cq_advance(self._addr, n)
        return out

    def peek(self) -> Completion | None:
        """One completion if ready (io_uring_peek_cqe + io_uring_cqe_seen)."""
        ret = self._lib.io_uring_peek_cqe(self._addr, ctypes.byref(self._cqe_ptr))
        if ret != 0 or not self._cqe_ptr.value:
            return None
        cqe = IoUringCqe.from_address(self._cqe_ptr.value)
        c = Completion(cqe.user_data, cqe.res, cqe.flags)
        self._lib.io_uring_cqe_seen(self._addr, self._cqe_ptr)
        if not c.flags & IORING_CQE_F_MORE:
            self._keep.pop(c.user_data, None)
        return c

    def completions(self, count: int, timeout: float = 5.0) -> list[Completion]:
        """Submit, then collect exactly `count` completions or raise after `timeout` s."""
        out: list[Completion] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FastpathError(f"timed out: {len(out)} of {count} completions arrived")
            self.wait(1, min(left, 0.5))
            out.extend(self.reap(count - len(out)))
        return out

    def run_nop_roundtrip(self) -> Completion:
        """Submit a NOP and return its completion: the cheapest proof the ring works."""
        self.prep_nop(0x4E4F50)
        return self.completions(1)[0]

    # -- probes and buffer rings
    def probe(self) -> Probe:
        ptr = self._lib.io_uring_get_probe_ring(self._addr)
        if not ptr:
            raise CapabilityError("io_uring opcode probe failed", fix="use Linux >= 5.6")
        try:
            head = IoUringProbe.from_address(ptr)
            ops = (IoUringProbeOp * head.ops_len).from_address(ptr + ctypes.sizeof(IoUringProbe))
            supported = frozenset(
                op.op for op in ops if op.flags & IO_URING_OP_SUPPORTED and op.op <= head.last_op
            )
            via_helper = frozenset(
                n for n in range(head.ops_len) if self._lib.io_uring_opcode_supported(ptr, n)
            )
            if via_helper != supported:
                raise FastpathError(
                    "io_uring_probe read back differently through the mirror and through "
                    "io_uring_opcode_supported; the probe layout does not match"
                )
            return Probe(last_op=int(head.last_op), supported=supported)
        finally:
            self._lib.io_uring_free_probe(ptr)

    def buffer_ring(self, group: int, entries: int, size: int, *, publish: bool = True) -> BufferRing:
        """Register a provided-buffer ring of `entries` buffers of `size` bytes as `group`
        (with `publish=False` the ring starts empty: the caller hands buffers over)."""
        if group in self._buffer_rings:
            raise FastpathError(f"buffer group {group} is already registered on this ring")
        br = BufferRing(self, group, entries, size, publish=publish)
        self._buffer_rings[group] = br
        return br

    def _forget_buffer_ring(self, group: int) -> None:
        self._buffer_rings.pop(group, None)


@dataclass(frozen=True)
class Probe:
    last_op: int
    supported: frozenset[int] = field(default_factory=frozenset)

    def __contains__(self, op: object) -> bool:
        if isinstance(op, str):
            op = OP[op]
        return op in self.supported

    def names(self) -> list[str]:
        return [OPCODES[n] if n < len(OPCODES) else f"OP_{n}" for n in sorted(self.supported)]

    def missing(self, wanted: Sequence[str]) -> list[str]:
        return [name for name in wanted if name not in self]

