"""The least io_uring over raw syscalls, and the multishot probe that runs on it.

doctor checks a host before set-up, when liburing may be missing or fastpath's shim not yet
built, so its io_uring rows must depend on the kernel alone: :class:`RawRing` makes the
io_uring_setup / io_uring_enter / io_uring_register calls itself and submits one SQE at a
time. It shares the struct layouts with the bindings (structs.py: plain ctypes data that
loads no library), not their code. :func:`multishot_round_trip` is fastpath's one probe of
multishot accept and multishot recv into a provided-buffer ring: doctor's
io-uring-multishot row and `fastpath uring probe` both run it.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import time
from typing import Any

from fastpath.uring.abi import (
    IO_URING_OP_SUPPORTED,
    IORING_ACCEPT_MULTISHOT,
    IORING_CQE_BUFFER_SHIFT,
    IORING_CQE_F_BUFFER,
    IORING_CQE_F_MORE,
    IORING_ENTER_GETEVENTS,
    IORING_FEAT_SINGLE_MMAP,
    IORING_OFF_CQ_RING,
    IORING_OFF_SQ_RING,
    IORING_OFF_SQES,
    IORING_RECV_MULTISHOT,
    IORING_REGISTER_PBUF_RING,
    IORING_REGISTER_PROBE,
    IORING_UNREGISTER_PBUF_RING,
    IOSQE_BUFFER_SELECT,
    NR_IO_URING_ENTER,
    NR_IO_URING_REGISTER,
    NR_IO_URING_SETUP,
    OP,
)
from fastpath.uring.structs import (
    IoUringBuf,
    IoUringBufReg,
    IoUringCqe,
    IoUringParams,
    IoUringProbe,
    IoUringProbeOp,
    IoUringSqe,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_SQE_SIZE = ctypes.sizeof(IoUringSqe)
_CQE_SIZE = ctypes.sizeof(IoUringCqe)
_BUF_SIZE = ctypes.sizeof(IoUringBuf)
# The kernel reads a buffer ring's tail from the first entry's `resv` field.
_BUF_RING_TAIL = IoUringBuf.resv.offset


def _syscall(nr: int, *args: Any) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _address(m: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # an exported buffer would keep the mapping from closing


class RawRing:
    """The least io_uring that can submit one SQE and reap CQEs: enough to probe behaviour.
    Raises OSError (with the syscall's errno) when the kernel refuses."""

    def __init__(self, entries: int = 8) -> None:
        self.params = IoUringParams()
        self.fd = _syscall(NR_IO_URING_SETUP, ctypes.c_uint(entries), ctypes.byref(self.params))
        try:
            p = self.params
            sq_size = p.sq_off.array + p.sq_entries * 4
            cq_size = p.cq_off.cqes + p.cq_entries * _CQE_SIZE
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
            if p.features & IORING_FEAT_SINGLE_MMAP:
                self.sq = self.cq = mmap.mmap(self.fd, max(sq_size, cq_size), flags, prot)
            else:
                self.sq = mmap.mmap(self.fd, sq_size, flags, prot, offset=IORING_OFF_SQ_RING)
                self.cq = mmap.mmap(self.fd, cq_size, flags, prot, offset=IORING_OFF_CQ_RING)
            self.sqes = mmap.mmap(self.fd, p.sq_entries * _SQE_SIZE, flags, prot,
                                  offset=IORING_OFF_SQES)  # fmt: skip
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        for m in {id(self.sq): self.sq, id(self.cq): self.cq, id(self.sqes): self.sqes}.values():
            m.close()
        os.close(self.fd)

    def __enter__(self) -> RawRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _u32(self, m: mmap.mmap, off: int) -> int:
        return int(_U32.unpack_from(m, off)[0])

    def _enter(self, to_submit: int, flags: int) -> None:
        _syscall(NR_IO_URING_ENTER, ctypes.c_uint(self.fd), ctypes.c_uint(to_submit),
                 ctypes.c_uint(0), ctypes.c_uint(flags), None, ctypes.c_size_t(0))  # fmt: skip

    def submit(
        self, opcode: int, *, fd: int = -1, flags: int = 0, ioprio: int = 0, off: int = 0,
        addr: int = 0, length: int = 0, op_flags: int = 0, user_data: int = 0,
        buf_group: int = 0,
    ) -> None:  # fmt: skip
        """Write one SQE and hand it to the kernel."""
        sqe = IoUringSqe(opcode=opcode, flags=flags, ioprio=ioprio, fd=fd, off=off, addr=addr,
                         len=length, op_flags=op_flags, user_data=user_data,
                         buf_group=buf_group)  # fmt: skip
        o = self.params.sq_off
        tail = self._u32(self.sq, o.tail)
        index = tail & self._u32(self.sq, o.ring_mask)
        self.sqes[index * _SQE_SIZE : (index + 1) * _SQE_SIZE] = bytes(sqe)
        _U32.pack_into(self.sq, o.array + index * 4, index)
        _U32.pack_into(self.sq, o.tail, (tail + 1) & 0xFFFFFFFF)
        self._enter(1, 0)

    def reap(self, user_data: int, timeout: float = 1.0) -> tuple[int, int] | None:
        """(res, flags) of the next CQE for `user_data`; others are dropped; None on timeout."""
        o = self.params.cq_off
        deadline = time.monotonic() + timeout
        while True:
            head, tail = self._u32(self.cq, o.head), self._u32(self.cq, o.tail)
            while head != tail:
                slot = head & self._u32(self.cq, o.ring_mask)
                cqe = IoUringCqe.from_buffer_copy(self.cq, o.cqes + slot * _CQE_SIZE)
                head = (head + 1) & 0xFFFFFFFF
                _U32.pack_into(self.cq, o.head, head)
                if cqe.user_data == user_data:
                    return int(cqe.res), int(cqe.flags)
            if time.monotonic() > deadline:
                return None
            self._enter(0, IORING_ENTER_GETEVENTS)
            time.sleep(0.001)

    def probe_ops(self) -> tuple[int, set[int]]:
        """IORING_REGISTER_PROBE: (last_op, supported opcodes)."""
        nops = 256
        buf = ctypes.create_string_buffer(
            ctypes.sizeof(IoUringProbe) + nops * ctypes.sizeof(IoUringProbeOp)
        )
        _syscall(NR_IO_URING_REGISTER, ctypes.c_uint(self.fd),
                 ctypes.c_uint(IORING_REGISTER_PROBE), buf, ctypes.c_uint(nops))  # fmt: skip
        head = IoUringProbe.from_buffer(buf)
        ops = (IoUringProbeOp * head.ops_len).from_buffer(buf, ctypes.sizeof(IoUringProbe))
        return int(head.last_op), {op.op for op in ops if op.flags & IO_URING_OP_SUPPORTED}


class RawBufferRing:
    """A provided-buffer ring registered on a RawRing: `entries` buffers of `size` bytes,
    every one published to the kernel."""

    def __init__(self, ring: RawRing, group: int, entries: int, size: int) -> None:
        self.ring, self.group, self.size = ring, group, size
        self.entries = mmap.mmap(-1, max(entries * _BUF_SIZE, mmap.PAGESIZE))  # page aligned
        self.buffers = mmap.mmap(-1, entries * size)
        try:
            base = _address(self.buffers)
            for bid in range(entries):
                entry = IoUringBuf(addr=base + bid * size, len=size, bid=bid)
                self.entries[bid * _BUF_SIZE : (bid + 1) * _BUF_SIZE] = bytes(entry)
            _U16.pack_into(self.entries, _BUF_RING_TAIL, entries)
            self._register(IORING_REGISTER_PBUF_RING,
                           IoUringBufReg(ring_addr=_address(self.entries), ring_entries=entries,
                                         bgid=group))  # fmt: skip
        except BaseException:
            self.buffers.close()
            self.entries.close()
            raise

    def _register(self, opcode: int, reg: IoUringBufReg) -> None:
        _syscall(NR_IO_URING_REGISTER, ctypes.c_uint(self.ring.fd), ctypes.c_uint(opcode),
                 ctypes.byref(reg), ctypes.c_uint(1))  # fmt: skip

    def read(self, bid: int, length: int) -> bytes:
        return self.buffers[bid * self.size : bid * self.size + length]

    def close(self) -> None:
        try:
            self._register(IORING_UNREGISTER_PBUF_RING, IoUringBufReg(bgid=self.group))
        finally:
            self.buffers.close()
            self.entries.close()


# user_data of the probe's requests
_ACCEPT, _RECV, _CANCEL = 1, 3, 4
PROBE_PAYLOAD = b"fastpath doctor"


def multishot_round_trip(ring: RawRing) -> dict[str, Any]:
    """Multishot accept on a loopback listener, then multishot recv into a provided-buffer
    ring. `accept`/`recv` say whether each posted a CQE with IORING_CQE_F_MORE (and the
    recv the bytes sent); the CQEs seen are kept as (res, flags) for the report."""
    result: dict[str, Any] = {"accept": False, "recv": False}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client: socket.socket | None = None
    conn: socket.socket | None = None
    bufs: RawBufferRing | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        client = socket.create_connection(listener.getsockname(), timeout=1)
        ring.submit(OP["ACCEPT"], fd=listener.fileno(), ioprio=IORING_ACCEPT_MULTISHOT,
                    user_data=_ACCEPT)  # fmt: skip
        cqe = ring.reap(_ACCEPT)
        result["accept_cqe"] = cqe
        if cqe is not None and cqe[0] >= 0:
            conn = socket.socket(fileno=cqe[0])
            result["accept"] = bool(cqe[1] & IORING_CQE_F_MORE)
        else:
            conn, _ = listener.accept()
        try:
            bufs = RawBufferRing(ring, group=7, entries=4, size=64)
        except OSError as exc:
            result["buffer_ring_error"] = exc.errno
        if bufs is not None:
            ring.submit(OP["RECV"], fd=conn.fileno(), flags=IOSQE_BUFFER_SELECT,
                        ioprio=IORING_RECV_MULTISHOT, buf_group=bufs.group,
                        user_data=_RECV)  # fmt: skip
            client.sendall(PROBE_PAYLOAD)
            cqe = ring.reap(_RECV)
            result["recv_cqe"] = cqe
            if cqe is not None and cqe[0] == len(PROBE_PAYLOAD) and cqe[1] & IORING_CQE_F_BUFFER:
                got = bufs.read(cqe[1] >> IORING_CQE_BUFFER_SHIFT, cqe[0])
                result["recv"] = bool(cqe[1] & IORING_CQE_F_MORE) and got == PROBE_PAYLOAD
        # End both multishot requests before the buffers go away: EOF ends the recv, a
        # cancel ends the accept.
        client.close()
        client = None
        if result.get("recv_cqe") and result["recv_cqe"][1] & IORING_CQE_F_MORE:
            ring.reap(_RECV)
        if result["accept"]:
            ring.submit(OP["ASYNC_CANCEL"], addr=_ACCEPT, user_data=_CANCEL)
            result["cancel_cqe"] = ring.reap(_CANCEL)
            ring.reap(_ACCEPT)
    finally:
        for sock in (client, conn, listener):
            if sock is not None:
                sock.close()
        if bufs is not None:
            bufs.close()
    return result


def why_not(result: dict[str, Any], which: str) -> str:
    """Why multishot `which` ("accept" or "recv") failed in a multishot_round_trip result."""
    if which == "recv" and "buffer_ring_error" in result:
        code = result["buffer_ring_error"]
        return f"registering a provided-buffer ring failed: {errno.errorcode.get(code, code)}"
    cqe = result.get(f"{which}_cqe")
    if cqe is None:
        return "no completion within 1 s"
    if cqe[0] < 0:
        return f"{errno.errorcode.get(-cqe[0], -cqe[0])} ({os.strerror(-cqe[0])})"
    if not cqe[1] & IORING_CQE_F_MORE:
        return f"{which} completed without F_MORE"
    return "the data read back differs from what was sent"
