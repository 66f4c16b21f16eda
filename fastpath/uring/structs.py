"""ctypes mirrors of the C structs the bindings share with liburing, the kernel and the shim.

Each mirror names its C struct (`_c_name_`); the shim compiles a table of the same structs'
sizes and offsets against the system liburing's headers, and liburing.check_layout()
compares the two before any ring is built. The mirrors are plain data: importing this module
loads no library, so the raw-syscall ring (rawring.py) uses them too. Members are listed in
the C headers' order, a run of one type in one members() call, so a reader can hold the two
side by side.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any

c_u8, c_u16, c_u32, c_u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
c_s32, c_size_t, c_void_p = ctypes.c_int32, ctypes.c_size_t, ctypes.c_void_p
c_uint = ctypes.c_uint

Fields = list[tuple[str, Any]]


def members(ctype: Any, *names: str) -> Fields:
    """Consecutive members of one C type, as C declares them in one line (`__u32 a, b;`)."""
    return [(name, ctype) for name in names]


class Mirror(ctypes.Structure):
    """A ctypes struct whose layout is checked against the C side; `_c_name_` names it."""

    _c_name_ = ""


# liburing's views of the two rings share their head (pointers into the kernel's mapping)
# and their tail (the mapping itself and a copy of mask and size).
_KRING_HEAD = members(c_void_p, "khead", "ktail", "kring_mask", "kring_entries", "kflags")
_KRING_TAIL: Fields = [("ring_sz", c_size_t), ("ring_ptr", c_void_p),
                       *members(c_uint, "ring_mask", "ring_entries"), ("pad", c_uint * 2)]  # fmt: skip


class IoUringSq(Mirror):
    _c_name_ = "io_uring_sq"
    _fields_ = [*_KRING_HEAD, *members(c_void_p, "kdropped", "array", "sqes"),
                *members(c_uint, "sqe_head", "sqe_tail"), *_KRING_TAIL]  # fmt: skip


class IoUringCq(Mirror):
    _c_name_ = "io_uring_cq"
    _fields_ = [*_KRING_HEAD, *members(c_void_p, "koverflow", "cqes"), *_KRING_TAIL]


class IoUring(Mirror):
    _c_name_ = "io_uring"
    _fields_ = [
        ("sq", IoUringSq),
        ("cq", IoUringCq),
        ("flags", c_uint),
        ("ring_fd", ctypes.c_int),
        ("features", c_uint),
        ("enter_ring_fd", ctypes.c_int),
        ("int_flags", c_u8),
        ("pad", c_u8 * 3),
        ("pad2", c_uint),
    ]


class IoUringSqe(Mirror):
    """The 64-byte SQE; each C union appears under the member fastpath uses."""

    _c_name_ = "io_uring_sqe"
    _fields_ = [
        *members(c_u8, "opcode", "flags"),
        ("ioprio", c_u16),
        ("fd", c_s32),
        *members(c_u64, "off", "addr"),
        ("len", c_u32),
        ("op_flags", c_u32),  # rw_flags / msg_flags / accept_flags / timeout_flags ...
        ("user_data", c_u64),
        ("buf_group", c_u16),  # also buf_index
        ("personality", c_u16),
        ("file_index", c_u32),  # also splice_fd_in
        *members(c_u64, "addr3", "pad2"),
    ]


class IoUringCqe(Mirror):
    _c_name_ = "io_uring_cqe"
    _fields_ = [("user_data", c_u64), ("res", c_s32), ("flags", c_u32)]


class IoSqringOffsets(Mirror):
    _c_name_ = "io_sqring_offsets"
    _fields_ = [
        *members(c_u32, "head", "tail", "ring_mask", "ring_entries", "flags", "dropped",
                 "array", "resv1"),
        ("resv2", c_u64),
    ]  # fmt: skip


class IoCqringOffsets(Mirror):
    _c_name_ = "io_cqring_offsets"
    _fields_ = [
        *members(c_u32, "head", "tail", "ring_mask", "ring_entries", "overflow", "cqes",
                 "flags", "resv1"),
        ("resv2", c_u64),
    ]  # fmt: skip


class IoUringParams(Mirror):
    _c_name_ = "io_uring_params"
    _fields_ = [
        *members(c_u32, "sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle",
                 "features", "wq_fd"),
        ("resv", c_u32 * 3),
        ("sq_off", IoSqringOffsets),
        ("cq_off", IoCqringOffsets),
    ]  # fmt: skip


class IoUringProbeOp(Mirror):
    _c_name_ = "io_uring_probe_op"
    _fields_ = [("op", c_u8), ("resv", c_u8), ("flags", c_u16), ("resv2", c_u32)]


class IoUringProbe(Mirror):
    """The probe header; `ops_len` IoUringProbeOp entries follow it in memory."""

    _c_name_ = "io_uring_probe"
    _fields_ = [("last_op", c_u8), ("ops_len", c_u8), ("resv", c_u16), ("resv2", c_u32 * 3)]


class IoUringBuf(Mirror):
    _c_name_ = "io_uring_buf"
    _fields_ = [("addr", c_u64), ("len", c_u32), ("bid", c_u16), ("resv", c_u16)]


class IoUringBufReg(Mirror):
    _c_name_ = "io_uring_buf_reg"
    _fields_ = [("ring_addr", c_u64), ("ring_entries", c_u32), ("bgid", c_u16), ("pad", c_u16),
                ("resv", c_u64 * 3)]  # fmt: skip


class KernelTimespec(Mirror):
    _c_name_ = "kernel_timespec"
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_longlong)]


class FastpathCqe(Mirror):
    """One completion as the shim's fastpath_uring_reap copies it out."""

    _c_name_ = "fastpath_cqe"
    _fields_ = [("user_data", c_u64), ("res", c_s32), ("flags", c_u32)]


class EchoConn(Mirror):
    """One connection of the shim's echo core. The C side keeps the queue (buffer ids,
    bytes, send offset) and `recv_armed`/`send_inflight` current as completions arrive;
    the Python server sets `closing`, `paused`, `eof`, `starved` as it decides."""

    _c_name_ = "fastpath_echo_conn"
    _fields_ = [
        ("fd", c_s32),
        ("gen", c_u32),
        *members(c_s32, "q_head", "q_tail"),
        *members(c_u32, "q_bytes", "sent_off"),
        *members(c_u8, "live", "closing", "recv_armed", "send_inflight", "paused", "eof",
                 "starved", "pad"),
    ]  # fmt: skip


class EchoStats(Mirror):
    """The echo core's counters and buffer-pool state (the head of its C struct)."""

    _c_name_ = "fastpath_echo_stats"
    _fields_ = [
        *members(c_u64, "enters", "cqes", "messages", "bytes_in", "sends", "bytes_out",
                 "short_sends", "bytes_queued"),
        *members(c_u32, "open_conns", "free_buffers", "published", "window"),
        ("error", c_s32),
        ("pad", c_u32),
    ]  # fmt: skip


MIRRORS: tuple[type[Mirror], ...] = (
    IoUringSq,
    IoUringCq,
    IoUring,
    IoUringSqe,
    IoUringCqe,
    IoSqringOffsets,
    IoCqringOffsets,
    IoUringParams,
    IoUringProbeOp,
    IoUringProbe,
    IoUringBuf,
    IoUringBufReg,
    KernelTimespec,
    FastpathCqe,
    EchoConn,
    EchoStats,
)


class LayoutEntry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", c_u64)]


def python_layout(mirrors: Iterable[type[Mirror]] = MIRRORS) -> dict[str, int]:
    """The layout the ctypes mirrors declare, named the way the shim's table names it."""
    out: dict[str, int] = {}
    for cls in mirrors:
        out[cls._c_name_] = ctypes.sizeof(cls)
        for fname, *_ in cls._fields_:
            out[f"{cls._c_name_}.{fname}"] = getattr(cls, fname).offset
    return out


def compare_layouts(c_side: dict[str, int], py_side: dict[str, int]) -> list[str]:
    """Every disagreement between the two layouts, one readable line each."""
    problems = []
    for name in sorted(set(c_side) | set(py_side)):
        if name not in py_side:
            problems.append(f"{name}: in C, not mirrored in Python")
        elif name not in c_side:
            problems.append(f"{name}: mirrored in Python, unknown to C")
        elif c_side[name] != py_side[name]:
            what = "size" if "." not in name else "offset"
            problems.append(f"{name}: C {what} {c_side[name]}, Python {py_side[name]}")
    return problems


