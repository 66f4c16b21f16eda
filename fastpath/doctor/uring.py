"""io_uring probes: whether io_uring_setup works (and the sysctl that can turn it off),
which feature flags and opcodes this kernel has, whether multishot accept and multishot recv
with provided buffers post CQEs with IORING_CQE_F_MORE on loopback, and the liburing version
and libraries.

The ring here goes through raw syscalls and is the least that can submit one SQE, so the
probes depend on the kernel alone, not on liburing or fastpath/uring's bindings.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from fastpath.doctor.checks import (
    ROOT,
    Check,
    _fail,
    _kernel_release,
    _ok,
    _pkg_config,
    _version_tuple,
    _warn,
    parse_kernel_version,
)
from fastpath.dpdk.sysfs import Host
from fastpath.uring.abi import (
    ECHO_OPCODES,
    FEATURES,
    IO_URING_OP_SUPPORTED,
    IORING_ACCEPT_MULTISHOT,
    IORING_CQE_F_BUFFER,
    IORING_CQE_F_MORE,
    IORING_ENTER_GETEVENTS,
    IORING_OFF_SQES,
    IORING_RECV_MULTISHOT,
    IORING_REGISTER_PROBE,
    IOSQE_BUFFER_SELECT,
    NR_IO_URING_ENTER,
    NR_IO_URING_REGISTER,
    NR_IO_URING_SETUP,
    OP,
    OPCODES,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, *args: Any) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


class _SqOffsets(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint32)
        for n in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")
    ] + [("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint32)
        for n in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")
    ] + [("user_addr", ctypes.c_uint64)]


_PARAMS_FIELDS: list[tuple[str, Any]] = [
    (n, ctypes.c_uint32)
    for n in ("sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle", "features", "wq_fd")
]


class _UringParams(ctypes.Structure):
    _fields_ = [*_PARAMS_FIELDS, ("resv", ctypes.c_uint32 * 3), ("sq_off", _SqOffsets),
                ("cq_off", _CqOffsets)]


_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
_CQE = struct.Struct("<QiI")


class _Ring:
    """The least io_uring that can submit one SQE and reap CQEs: enough to probe behaviour."""

    def __init__(self, entries: int = 8) -> None:
        self.params = _UringParams()
        self.fd = _syscall(NR_IO_URING_SETUP, ctypes.c_uint(entries), ctypes.byref(self.params))
        try:
            p = self.params
            sq_size = p.sq_off.array + p.sq_entries * 4
            cq_size = p.cq_off.cqes + p.cq_entries * _CQE.size
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
            if p.features & 1:  # IORING_FEAT_SINGLE_MMAP
                self.sq = self.cq = mmap.mmap(self.fd, max(sq_size, cq_size), flags, prot)
            else:
                self.sq = mmap.mmap(self.fd, sq_size, flags, prot, offset=0)
                self.cq = mmap.mmap(self.fd, cq_size, flags, prot, offset=0x8000000)
            self.sqes = mmap.mmap(self.fd, p.sq_entries * _SQE.size, flags, prot, offset=IORING_OFF_SQES)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        for m in {id(self.sq): self.sq, id(self.cq): self.cq, id(self.sqes): self.sqes}.values():
            m.close()
        os.close(self.fd)

    def _u32(self, m: mmap.mmap, off: int) -> int:
        return int(struct.unpack_from("<I", m, off)[0])

    def submit(
        self,
        opcode: int,
        *,
        fd: int = -1,
        flags: int = 0,
        ioprio: int = 0,
        off: int = 0,
        addr: int = 0,
        length: int = 0,
        op_flags: int = 0,
        user_data: int = 0,
        buf_group: int = 0,
    ) -> None:
        o = self.params.sq_off
        tail = self._u32(self.sq, o.tail)
        index = tail & self._u32(self.sq, o.ring_mask)
        _SQE.pack_into(
            self.sqes,
            index * _SQE.size,
            opcode,
            flags,
            ioprio,
            fd,
            off,
            addr,
            length,
            op_flags,
            user_data,
            buf_group,
            0,
            0,
            0,
            0,
        )
        struct.pack_into("<I", self.sq, o.array + index * 4, index)
        struct.pack_into("<I", self.sq, o.tail, (tail + 1) & 0xFFFFFFFF)
        _syscall(
            NR_IO_URING_ENTER,
            ctypes.c_uint(self.fd),
            ctypes.c_uint(1),
            ctypes.c_uint(0),
            ctypes.c_uint(0),
            None,
            ctypes.c_size_t(0),
        )

    def reap(self, user_data: int, timeout: float = 1.0) -> tuple[int, int] | None:
        """(res, flags) of the next CQE for `user_data`; others are dropped; None on timeout."""
        o = self.params.cq_off
        deadline = time.monotonic() + timeout
        while True:
            head, tail = self._u32(self.cq, o.head), self._u32(self.cq, o.tail)
            while head != tail:
                slot = head & self._u32(self.cq, o.ring_mask)
                ud, res, flags = _CQE.unpack_from(self.cq, o.cqes + slot * _CQE.size)
                head = (head + 1) & 0xFFFFFFFF
                struct.pack_into("<I", self.cq, o.head, head)
                if ud == user_data:
                    return res, flags
            if time.monotonic() > deadline:
                return None
            _syscall(
                NR_IO_URING_ENTER,
                ctypes.c_uint(self.fd),
                ctypes.c_uint(0),
                ctypes.c_uint(0),
                ctypes.c_uint(IORING_ENTER_GETEVENTS),
                None,
                ctypes.c_size_t(0),
            )
            time.sleep(0.001)

    def probe_ops(self) -> tuple[int, set[int]]:
        """IORING_REGISTER_PROBE: (last_op, supported opcodes)."""
        nops = 256
        buf = ctypes.create_string_buffer(16 + nops * 8)
        _syscall(
            NR_IO_URING_REGISTER,
            ctypes.c_uint(self.fd),
            ctypes.c_uint(IORING_REGISTER_PROBE),
            buf,
            ctypes.c_uint(nops),
        )
        last_op, ops_len = buf.raw[0], buf.raw[1]
        supported = set()
        for i in range(ops_len):
            op, _, op_flags = struct.unpack_from("<BBH", buf.raw, 16 + i * 8)
            if op_flags & IO_URING_OP_SUPPORTED:
                supported.add(op)
        return last_op, supported


def _op_name(op: int) -> str:
    return OPCODES[op] if op < len(OPCODES) else f"OP_{op}"


def probe_io_uring(root: Path = ROOT) -> Check:
    name = "io-uring"
    disabled = Host(root).read_int_or("/proc/sys/kernel/io_uring_disabled", None)
    data: dict[str, Any] = {"io_uring_disabled": disabled}
    if disabled == 2:
        return _fail(
            name,
            "kernel.io_uring_disabled = 2: io_uring is off for everyone",
            "sysctl -w kernel.io_uring_disabled=0",
            **data,
        )
    try:
        ring = _Ring(4)
    except OSError as exc:
        fix = (
            "boot a kernel with CONFIG_IO_URING=y"
            if exc.errno == errno.ENOSYS
            else "sysctl -w kernel.io_uring_disabled=0, or run as a member of kernel.io_uring_group"
        )
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", fix, errno=exc.errno, **data)
    try:
        feats = [f for i, f in enumerate(FEATURES) if ring.params.features >> i & 1]
    finally:
        ring.close()
    data["features"] = feats
    sysctl = "" if disabled is None else f"io_uring_disabled={disabled}, "
    return _ok(
        name,
        f"{sysctl}io_uring_setup works; {len(feats)} feature flags "
        f"(FAST_POLL {'yes' if 'FAST_POLL' in feats else 'no'})",
        **data,
    )


def probe_io_uring_opcodes() -> Check:
    name = "io-uring-opcodes"
    try:
        ring = _Ring(4)
    except OSError as exc:
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", "see the io-uring row")
    try:
        last_op, ops = ring.probe_ops()
    except OSError as exc:
        return _fail(
            name, f"IORING_REGISTER_PROBE failed: {exc.strerror}", "needs Linux 5.6+", errno=exc.errno
        )
    finally:
        ring.close()
    names = sorted((_op_name(op) for op in ops), key=lambda n: OP.get(n, 999))
    required = {op: OP[op] in ops for op in ECHO_OPCODES}
    data = {"last_op": last_op, "supported": names, "required": required}
    missing = [op for op, ok in required.items() if not ok]
    if missing:
        return _fail(
            name,
            f"{len(ops)} opcodes, missing {', '.join(missing)}",
            f"boot Linux 5.19+ (fastpath's echo servers need all of {', '.join(ECHO_OPCODES)})",
            **data,
        )
    return _ok(name, f"{len(ops)} opcodes (last {last_op}); has {', '.join(ECHO_OPCODES)}", **data)


def _multishot_round_trip(ring: _Ring) -> dict[str, Any]:
    """Multishot accept on a loopback listener, then multishot recv into provided buffers."""
    result: dict[str, Any] = {"accept": False, "recv": False}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client: socket.socket | None = None
    conn: socket.socket | None = None
    nbufs, buf_size, group = 4, 64, 7
    buffers = ctypes.create_string_buffer(nbufs * buf_size)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        client = socket.create_connection(listener.getsockname(), timeout=1)
        ring.submit(OP["ACCEPT"], fd=listener.fileno(), ioprio=IORING_ACCEPT_MULTISHOT, user_data=1)
        cqe = ring.reap(1)
        result["accept_cqe"] = cqe
        if cqe is not None and cqe[0] >= 0:
            conn = socket.socket(fileno=cqe[0])
            result["accept"] = bool(cqe[1] & IORING_CQE_F_MORE)
        else:
            conn, _ = listener.accept()
        ring.submit(
            OP["PROVIDE_BUFFERS"],
            fd=nbufs,
            addr=ctypes.addressof(buffers),
            length=buf_size,
            off=0,
            buf_group=group,
            user_data=2,
        )
        result["provide_cqe"] = ring.reap(2)
        ring.submit(
            OP["RECV"],
            fd=conn.fileno(),
            flags=IOSQE_BUFFER_SELECT,
            ioprio=IORING_RECV_MULTISHOT,
            buf_group=group,
            user_data=3,
        )
        payload = b"fastpath doctor"
        client.sendall(payload)
        cqe = ring.reap(3)
        result["recv_cqe"] = cqe
        if cqe is not None and cqe[0] == len(payload) and cqe[1] & IORING_CQE_F_BUFFER:
            bid = cqe[1] >> 16
            got = buffers.raw[bid * buf_size : bid * buf_size + cqe[0]]
            result["recv"] = bool(cqe[1] & IORING_CQE_F_MORE) and got == payload
        # End both multishot requests before the buffers go away: EOF ends the recv, a
        # cancel ends the accept.
        client.close()
        client = None
        if result["recv"]:
            ring.reap(3)
        if result["accept"]:
            ring.submit(OP["ASYNC_CANCEL"], addr=1, user_data=4)
            result["cancel_cqe"] = ring.reap(4)
            ring.reap(1)
    finally:
        for sock in (client, conn, listener):
            if sock is not None:
                sock.close()
    return result


def probe_io_uring_multishot(root: Path = ROOT) -> Check:
    name = "io-uring-multishot"
    version = parse_kernel_version(_kernel_release(root))
    try:
        ring = _Ring(16)
    except OSError as exc:
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", "see the io-uring row")
    try:
        result = _multishot_round_trip(ring)
    finally:
        ring.close()
    # What the version alone would predict (accept 5.19, recv 6.0), next to what was measured.
    result["expected_by_version"] = {"accept": version >= (5, 19), "recv": version >= (6, 0)}
    got = [k for k in ("accept", "recv") if result[k]]
    if len(got) == 2:
        return _ok(
            name,
            "multishot accept and multishot recv with provided buffers both "
            "post CQEs with IORING_CQE_F_MORE on loopback",
            **result,
        )
    missing = [k for k in ("accept", "recv") if not result[k]]
    return _warn(
        name,
        f"multishot {' and '.join(missing)} not available "
        f"(accept CQE {result.get('accept_cqe')}, recv CQE {result.get('recv_cqe')})",
        "multishot accept needs Linux 5.19+, multishot recv 6.0+; without them a server "
        "must re-arm a single-shot accept/recv after every completion",
        **result,
    )


def probe_liburing() -> Check:
    name = "liburing"
    version = _pkg_config("--modversion", "liburing")
    if version is None:
        return _fail(name, "pkg-config finds no liburing", "apt install liburing-dev pkg-config")
    libdir = Path(_pkg_config("--variable=libdir", "liburing") or "/usr/lib")
    shared = sorted(p.name for p in libdir.glob("liburing.so*"))
    ffi = sorted(p.name for p in libdir.glob("liburing-ffi.so*"))
    data = {"version": version, "libdir": str(libdir), "shared": shared, "ffi": ffi}
    if not shared:
        return _fail(
            name, f"liburing {version} has no shared library in {libdir}", "apt install liburing2", **data
        )
    ffi_note = (
        f"{ffi[0]} present"
        if ffi
        else "no liburing-ffi.so (arrives with 2.4): the "
        "inline prep helpers are not callable from ctypes, hence uring/'s C shim"
    )
    if _version_tuple(version) < (2, 2):
        return _warn(
            name,
            f"liburing {version}: older than 2.2, no multishot prep helpers",
            "install liburing 2.2 or newer",
            **data,
        )
    return _ok(name, f"liburing {version} ({shared[-1]}); {ffi_note}", **data)
