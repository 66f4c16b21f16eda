"""ctypes bindings to the system liburing, and a Pythonic layer on top.

Two libraries can supply liburing's `static inline` helpers (io_uring_prep_*,
io_uring_cq_advance, buffer-ring and set-data helpers) as real symbols:

* ``liburing-ffi.so`` (liburing >= 2.4), used when present, and
* fastpath's shim ``libfastpath_uring_ffi.so`` built from ``uring/ffi_shim.c`` (the only
  choice with Debian 12's liburing 2.3). It exports the same names plus batched helpers
  (``fastpath_uring_reap``, ``fastpath_buf_ring_recycle``, and the echo core
  ``fastpath_echo_*`` that does the Python echo server's per-completion bookkeeping a
  batch at a time, see :class:`EchoConn`) and a layout table.

Before any ring is built, the ctypes mirrors below are checked against the C compiler's
layout of the same structs (the shim's table) and every ring is checked against the
kernel's own answer (entries, masks, fd); on a mismatch nothing runs.

The layer on top: :class:`Ring` (a context manager with setup-flag fallback),
SQE preparation for the operations fastpath uses, :class:`BufferRing` (provided buffer
rings), batched completion reaping, and :func:`probe_opcodes` / :func:`probe_features`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring.abi import (
    ECHO_OPCODES as ECHO_OPCODES,
)
from fastpath.uring.abi import (
    FEATURE_NAMES as FEATURE_NAMES,
)
from fastpath.uring.abi import (
    IO_URING_OP_SUPPORTED as IO_URING_OP_SUPPORTED,
)
from fastpath.uring.abi import (
    IORING_ASYNC_CANCEL_ALL as IORING_ASYNC_CANCEL_ALL,
)
from fastpath.uring.abi import (
    IORING_ASYNC_CANCEL_ANY as IORING_ASYNC_CANCEL_ANY,
)
from fastpath.uring.abi import (
    IORING_ASYNC_CANCEL_FD as IORING_ASYNC_CANCEL_FD,
)
from fastpath.uring.abi import (
    IORING_CQE_BUFFER_SHIFT as IORING_CQE_BUFFER_SHIFT,
)
from fastpath.uring.abi import (
    IORING_CQE_F_BUFFER as IORING_CQE_F_BUFFER,
)
from fastpath.uring.abi import (
    IORING_CQE_F_MORE as IORING_CQE_F_MORE,
)
from fastpath.uring.abi import (
    IORING_CQE_F_NOTIF as IORING_CQE_F_NOTIF,
)
from fastpath.uring.abi import (
    IORING_CQE_F_SOCK_NONEMPTY as IORING_CQE_F_SOCK_NONEMPTY,
)
from fastpath.uring.abi import (
    IORING_FEAT_EXT_ARG as IORING_FEAT_EXT_ARG,
)
from fastpath.uring.abi import (
    IORING_FEAT_NODROP as IORING_FEAT_NODROP,
)
from fastpath.uring.abi import (
    IORING_SETUP_CLAMP as IORING_SETUP_CLAMP,
)
from fastpath.uring.abi import (
    IORING_SETUP_COOP_TASKRUN as IORING_SETUP_COOP_TASKRUN,
)
from fastpath.uring.abi import (
    IORING_SETUP_CQSIZE as IORING_SETUP_CQSIZE,
)
from fastpath.uring.abi import (
    IORING_SETUP_DEFER_TASKRUN as IORING_SETUP_DEFER_TASKRUN,
)

# Constants are the kernel ABI's (fastpath.uring.abi); the bindings' users find them here too.
from fastpath.uring.abi import (
    IORING_SETUP_IOPOLL as IORING_SETUP_IOPOLL,
)
from fastpath.uring.abi import (
    IORING_SETUP_SINGLE_ISSUER as IORING_SETUP_SINGLE_ISSUER,
)
from fastpath.uring.abi import (
    IORING_SETUP_SQ_AFF as IORING_SETUP_SQ_AFF,
)
from fastpath.uring.abi import (
    IORING_SETUP_SQPOLL as IORING_SETUP_SQPOLL,
)
from fastpath.uring.abi import (
    IORING_SETUP_SUBMIT_ALL as IORING_SETUP_SUBMIT_ALL,
)
from fastpath.uring.abi import (
    IORING_SETUP_TASKRUN_FLAG as IORING_SETUP_TASKRUN_FLAG,
)
from fastpath.uring.abi import (
    IORING_TIMEOUT_ABS as IORING_TIMEOUT_ABS,
)
from fastpath.uring.abi import (
    IORING_TIMEOUT_ETIME_SUCCESS as IORING_TIMEOUT_ETIME_SUCCESS,
)
from fastpath.uring.abi import (
    IOSQE_ASYNC as IOSQE_ASYNC,
)
from fastpath.uring.abi import (
    IOSQE_BUFFER_SELECT as IOSQE_BUFFER_SELECT,
)
from fastpath.uring.abi import (
    IOSQE_CQE_SKIP_SUCCESS as IOSQE_CQE_SKIP_SUCCESS,
)
from fastpath.uring.abi import (
    IOSQE_FIXED_FILE as IOSQE_FIXED_FILE,
)
from fastpath.uring.abi import (
    IOSQE_IO_DRAIN as IOSQE_IO_DRAIN,
)
from fastpath.uring.abi import (
    IOSQE_IO_HARDLINK as IOSQE_IO_HARDLINK,
)
from fastpath.uring.abi import (
    IOSQE_IO_LINK as IOSQE_IO_LINK,
)
from fastpath.uring.abi import (
    OP as OP,
)
from fastpath.uring.abi import (
    OPCODES as OPCODES,
)
from fastpath.uring.abi import (
    SETUP_FLAG_NAMES as SETUP_FLAG_NAMES,
)

# --- ctypes mirrors of the C structs ---------------------------------------------------------

c_u8, c_u16, c_u32, c_u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
c_s32, c_size_t, c_void_p = ctypes.c_int32, ctypes.c_size_t, ctypes.c_void_p


class _Mirror(ctypes.Structure):
    """A ctypes struct whose layout is checked against the C side; `_c_name_` names it."""

    _c_name_ = ""


class IoUringSq(_Mirror):
    _c_name_ = "io_uring_sq"
    _fields_ = [
        ("khead", c_void_p),
        ("ktail", c_void_p),
        ("kring_mask", c_void_p),
        ("kring_entries", c_void_p),
        ("kflags", c_void_p),
        ("kdropped", c_void_p),
        ("array", c_void_p),
        ("sqes", c_void_p),
        ("sqe_head", ctypes.c_uint),
        ("sqe_tail", ctypes.c_uint),
        ("ring_sz", c_size_t),
        ("ring_ptr", c_void_p),
        ("ring_mask", ctypes.c_uint),
        ("ring_entries", ctypes.c_uint),
        ("pad", ctypes.c_uint * 2),
    ]


class IoUringCq(_Mirror):
    _c_name_ = "io_uring_cq"
    _fields_ = [
        ("khead", c_void_p),
        ("ktail", c_void_p),
        ("kring_mask", c_void_p),
        ("kring_entries", c_void_p),
        ("kflags", c_void_p),
        ("koverflow", c_void_p),
        ("cqes", c_void_p),
        ("ring_sz", c_size_t),
        ("ring_ptr", c_void_p),
        ("ring_mask", ctypes.c_uint),
        ("ring_entries", ctypes.c_uint),
        ("pad", ctypes.c_uint * 2),
    ]


class IoUring(_Mirror):
    _c_name_ = "io_uring"
    _fields_ = [
        ("sq", IoUringSq),
        ("cq", IoUringCq),
        ("flags", ctypes.c_uint),
        ("ring_fd", ctypes.c_int),
        ("features", ctypes.c_uint),
        ("enter_ring_fd", ctypes.c_int),
        ("int_flags", c_u8),
        ("pad", c_u8 * 3),
        ("pad2", ctypes.c_uint),
    ]


class IoUringSqe(_Mirror):
    """The 64-byte SQE; each C union appears under the member fastpath uses."""

    _c_name_ = "io_uring_sqe"
    _fields_ = [
        ("opcode", c_u8),
        ("flags", c_u8),
        ("ioprio", c_u16),
        ("fd", c_s32),
        ("off", c_u64),
        ("addr", c_u64),
        ("len", c_u32),
        ("op_flags", c_u32),  # rw_flags / msg_flags / accept_flags / timeout_flags ...
        ("user_data", c_u64),
        ("buf_group", c_u16),  # also buf_index
        ("personality", c_u16),
        ("file_index", c_u32),  # also splice_fd_in
        ("addr3", c_u64),
        ("pad2", c_u64),
    ]


class IoUringCqe(_Mirror):
    _c_name_ = "io_uring_cqe"
    _fields_ = [("user_data", c_u64), ("res", c_s32), ("flags", c_u32)]


class IoSqringOffsets(_Mirror):
    _c_name_ = "io_sqring_offsets"
    _fields_ = [
        ("head", c_u32),
        ("tail", c_u32),
        ("ring_mask", c_u32),
        ("ring_entries", c_u32),
        ("flags", c_u32),
        ("dropped", c_u32),
        ("array", c_u32),
        ("resv1", c_u32),
        ("resv2", c_u64),
    ]


class IoCqringOffsets(_Mirror):
    _c_name_ = "io_cqring_offsets"
    _fields_ = [
        ("head", c_u32),
        ("tail", c_u32),
        ("ring_mask", c_u32),
        ("ring_entries", c_u32),
        ("overflow", c_u32),
        ("cqes", c_u32),
        ("flags", c_u32),
        ("resv1", c_u32),
        ("resv2", c_u64),
    ]


class IoUringParams(_Mirror):
    _c_name_ = "io_uring_params"
    _fields_ = [
        ("sq_entries", c_u32),
        ("cq_entries", c_u32),
        ("flags", c_u32),
        ("sq_thread_cpu", c_u32),
        ("sq_thread_idle", c_u32),
        ("features", c_u32),
        ("wq_fd", c_u32),
        ("resv", c_u32 * 3),
        ("sq_off", IoSqringOffsets),
        ("cq_off", IoCqringOffsets),
    ]


class IoUringProbeOp(_Mirror):
    _c_name_ = "io_uring_probe_op"
    _fields_ = [("op", c_u8), ("resv", c_u8), ("flags", c_u16), ("resv2", c_u32)]


class IoUringProbe(_Mirror):
    """The probe header; `ops_len` IoUringProbeOp entries follow it in memory."""

    _c_name_ = "io_uring_probe"
    _fields_ = [("last_op", c_u8), ("ops_len", c_u8), ("resv", c_u16), ("resv2", c_u32 * 3)]


class IoUringBuf(_Mirror):
    _c_name_ = "io_uring_buf"
    _fields_ = [("addr", c_u64), ("len", c_u32), ("bid", c_u16), ("resv", c_u16)]


class IoUringBufReg(_Mirror):
    _c_name_ = "io_uring_buf_reg"
    _fields_ = [
        ("ring_addr", c_u64),
        ("ring_entries", c_u32),
        ("bgid", c_u16),
        ("pad", c_u16),
        ("resv", c_u64 * 3),
    ]


class KernelTimespec(_Mirror):
    _c_name_ = "kernel_timespec"
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_longlong)]


class FastpathCqe(_Mirror):
    """One completion as the shim's fastpath_uring_reap copies it out."""

    _c_name_ = "fastpath_cqe"
    _fields_ = [("user_data", c_u64), ("res", c_s32), ("flags", c_u32)]


class EchoConn(_Mirror):
    """One connection of the shim's echo core. The C side keeps the queue (buffer ids,
    bytes, send offset) and `recv_armed`/`send_inflight` current as completions arrive;
    the Python server sets `closing`, `paused`, `eof`, `starved` as it decides."""

    _c_name_ = "fastpath_echo_conn"
    _fields_ = [
        ("fd", c_s32),
        ("gen", c_u32),
        ("q_head", c_s32),
        ("q_tail", c_s32),
        ("q_bytes", c_u32),
        ("sent_off", c_u32),
        ("live", c_u8),
        ("closing", c_u8),
        ("recv_armed", c_u8),
        ("send_inflight", c_u8),
        ("paused", c_u8),
        ("eof", c_u8),
        ("starved", c_u8),
        ("pad", c_u8),
    ]


class EchoStats(_Mirror):
    """The echo core's counters and buffer-pool state (the head of its C struct)."""

    _c_name_ = "fastpath_echo_stats"
    _fields_ = [
        ("enters", c_u64),
        ("cqes", c_u64),
        ("messages", c_u64),
        ("bytes_in", c_u64),
        ("sends", c_u64),
        ("bytes_out", c_u64),
        ("short_sends", c_u64),
        ("bytes_queued", c_u64),
        ("open_conns", c_u32),
        ("free_buffers", c_u32),
        ("published", c_u32),
        ("window", c_u32),
        ("error", c_s32),
        ("pad", c_u32),
    ]


MIRRORS: tuple[type[_Mirror], ...] = (
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


def python_layout(mirrors: Iterable[type[_Mirror]] = MIRRORS) -> dict[str, int]:
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


# --- library loading --------------------------------------------------------------------------

SHIM_NAME = "libfastpath_uring_ffi.so"
SHIM_ENV = "FASTPATH_URING_SHIM"  # forces the shim file (one built against another liburing)
SHIM_ABI = 2
REPO_URING_DIR = Path(__file__).resolve().parents[2] / "uring"

# name: (restype, argtypes). Rings and SQEs travel as plain addresses (c_void_p) because
# ctypes converts an int far faster than it builds a byref().
_V, _I, _U = None, ctypes.c_int, ctypes.c_uint
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    # exported by liburing.so itself
    "io_uring_queue_init_params": (_I, [_U, c_void_p, c_void_p]),
    "io_uring_queue_exit": (_V, [c_void_p]),
    "io_uring_get_sqe": (c_void_p, [c_void_p]),
    "io_uring_submit": (_I, [c_void_p]),
    "io_uring_submit_and_wait": (_I, [c_void_p, _U]),
    "io_uring_submit_and_wait_timeout": (_I, [c_void_p, c_void_p, _U, c_void_p, c_void_p]),
    "io_uring_wait_cqe_timeout": (_I, [c_void_p, c_void_p, c_void_p]),
    "io_uring_get_events": (_I, [c_void_p]),
    "io_uring_peek_batch_cqe": (_U, [c_void_p, c_void_p, _U]),
    "io_uring_get_probe_ring": (c_void_p, [c_void_p]),
    "io_uring_free_probe": (_V, [c_void_p]),
    "io_uring_register_buf_ring": (_I, [c_void_p, c_void_p, _U]),
    "io_uring_unregister_buf_ring": (_I, [c_void_p, _I]),
    "io_uring_register_ring_fd": (_I, [c_void_p]),
    # static inline in liburing 2.3: from liburing-ffi or the shim
    "io_uring_cq_advance": (_V, [c_void_p, _U]),
    "io_uring_cqe_seen": (_V, [c_void_p, c_void_p]),
    "io_uring_sqe_set_data64": (_V, [c_void_p, c_u64]),
    "io_uring_cqe_get_data64": (c_u64, [c_void_p]),
    "io_uring_sqe_set_flags": (_V, [c_void_p, _U]),
    "io_uring_prep_nop": (_V, [c_void_p]),
    "io_uring_prep_read": (_V, [c_void_p, _I, c_void_p, _U, c_u64]),
    "io_uring_prep_write": (_V, [c_void_p, _I, c_void_p, _U, c_u64]),
    "io_uring_prep_accept": (_V, [c_void_p, _I, c_void_p, c_void_p, _I]),
    "io_uring_prep_multishot_accept": (_V, [c_void_p, _I, c_void_p, c_void_p, _I]),
    "io_uring_prep_recv": (_V, [c_void_p, _I, c_void_p, c_size_t, _I]),
    "io_uring_prep_recv_multishot": (_V, [c_void_p, _I, c_void_p, c_size_t, _I]),
    "io_uring_prep_send": (_V, [c_void_p, _I, c_void_p, c_size_t, _I]),
    "io_uring_prep_close": (_V, [c_void_p, _I]),
    "io_uring_prep_shutdown": (_V, [c_void_p, _I, _I]),
    "io_uring_prep_cancel64": (_V, [c_void_p, c_u64, _I]),
    "io_uring_prep_cancel_fd": (_V, [c_void_p, _I, _U]),
    "io_uring_prep_timeout": (_V, [c_void_p, c_void_p, _U, _U]),
    "io_uring_prep_timeout_remove": (_V, [c_void_p, c_u64, _U]),
    "io_uring_sq_ready": (_U, [c_void_p]),
    "io_uring_sq_space_left": (_U, [c_void_p]),
    "io_uring_cq_ready": (_U, [c_void_p]),
    "io_uring_peek_cqe": (_I, [c_void_p, c_void_p]),
    "io_uring_wait_cqe": (_I, [c_void_p, c_void_p]),
    "io_uring_opcode_supported": (_I, [c_void_p, _I]),
    "io_uring_buf_ring_mask": (_I, [c_u32]),
    "io_uring_buf_ring_init": (_V, [c_void_p]),
    "io_uring_buf_ring_add": (_V, [c_void_p, c_void_p, _U, ctypes.c_ushort, _I, _I]),
    "io_uring_buf_ring_advance": (_V, [c_void_p, _I]),
    "io_uring_buf_ring_cq_advance": (_V, [c_void_p, c_void_p, _I]),
}
_SHIM_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "fastpath_shim_abi": (_I, []),
    "fastpath_liburing_version": (ctypes.c_char_p, []),
    "fastpath_uring_reap": (_U, [c_void_p, c_void_p, _U]),
    "fastpath_buf_ring_recycle": (_V, [c_void_p, c_void_p, _U, _U, c_void_p, _U]),
    "fastpath_uring_layout": (ctypes.POINTER(LayoutEntry), [ctypes.POINTER(_U)]),
    # the echo core: (ring, buffer ring, buffers base, size, entries, conn_max, ops)
    "fastpath_echo_new": (c_void_p, [c_void_p, c_void_p, c_void_p, _U, _U, _U, _U, _U]),
    "fastpath_echo_free": (_V, [c_void_p]),
    "fastpath_echo_open": (c_void_p, [c_void_p, _I]),
    "fastpath_echo_close": (_V, [c_void_p, _U]),
    "fastpath_echo_reap": (_U, [c_void_p, c_void_p, _U]),
    "fastpath_echo_enter": (_I, [c_void_p, c_void_p, _U, _U]),
    "fastpath_echo_flush": (_U, [c_void_p]),
}


@dataclass
class Liburing:
    """A loaded binding: the library with the liburing names, and the shim when present."""

    kind: str  # "ffi" (liburing-ffi.so) or "shim" (fastpath's ffi_shim.c)
    path: str
    lib: ctypes.CDLL
    shim: ctypes.CDLL | None
    shim_path: str | None
    version: str
    layout_checked: bool = False

    @property
    def batched(self) -> bool:
        """True when fastpath's batched helpers (reap, recycle) are available."""
        return self.shim is not None


def _shim_candidates() -> list[Path]:
    forced = os.environ.get(SHIM_ENV)
    if forced:
        return [Path(forced)]
    return [
        Path(sys.prefix) / "lib" / "fastpath" / SHIM_NAME,
        REPO_URING_DIR / "build" / SHIM_NAME,
    ]


def _ffi_candidates() -> list[str]:
    found = ctypes.util.find_library("uring-ffi")
    names = [found] if found else []
    return names + ["liburing-ffi.so.2"]


def _bind(lib: ctypes.CDLL, prototypes: dict[str, tuple[Any, list[Any]]], where: str) -> None:
    for name, (restype, argtypes) in prototypes.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise FastpathError(
                f"{where} lacks {name}",
                fix="rebuild the shim with `make -C uring install PREFIX=.venv`",
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes


def _mapped_liburing_version() -> str | None:
    """liburing's version from the real file name the dynamic loader mapped."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    m = re.search(r"liburing(?:-ffi)?\.so\.(\d+\.\d+(?:\.\d+)?)", maps)
    return m.group(1) if m else None


def _open_shim(path: Path) -> ctypes.CDLL:
    shim = ctypes.CDLL(str(path))
    try:
        shim.fastpath_shim_abi.restype = ctypes.c_int
        abi = shim.fastpath_shim_abi()
    except AttributeError:
        raise FastpathError(f"{path} is not the fastpath liburing shim") from None
    if abi != SHIM_ABI:
        raise FastpathError(
            f"{path} speaks shim ABI {abi}, this fastpath expects {SHIM_ABI}",
            fix="rebuild with `make -C uring install PREFIX=.venv`",
        )
    _bind(shim, _SHIM_PROTOTYPES, str(path))
    return shim


def shim_layout(shim: ctypes.CDLL) -> dict[str, int]:
    """The shim's layout table: what the C compiler made of the system liburing header."""
    count = ctypes.c_uint(0)
    table = shim.fastpath_uring_layout(ctypes.byref(count))
    return {table[i].name.decode(): int(table[i].value) for i in range(count.value)}


def check_layout(shim: ctypes.CDLL, mirrors: Iterable[type[_Mirror]] = MIRRORS) -> None:
    """Refuse to run when a ctypes mirror disagrees with the C layout."""
    problems = compare_layouts(shim_layout(shim), python_layout(mirrors))
    if problems:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise FastpathError(
            f"liburing struct layout mismatch between C and fastpath's ctypes mirrors: {shown}",
            fix="update fastpath/uring/liburing.py to this liburing version",
        )


def open_library(path: str | None = None) -> Liburing:
    """Load the binding. `path` (or $FASTPATH_LIBURING) forces one library file."""
    explicit = path or os.environ.get("FASTPATH_LIBURING")
    shim_path = next((p for p in _shim_candidates() if p.is_file()), None)
    lib: ctypes.CDLL | None = None
    lib_path = ""
    if explicit:
        try:
            lib = ctypes.CDLL(explicit)
        except OSError as exc:
            raise FastpathError(f"cannot load liburing binding {explicit}: {exc}") from None
        lib_path = explicit
    else:
        for cand in _ffi_candidates():
            try:
                lib = ctypes.CDLL(cand)
            except OSError:
                continue
            lib_path = cand
            break
    shim: ctypes.CDLL | None = None
    if lib is not None and hasattr(lib, "fastpath_shim_abi"):
        shim = _open_shim(Path(lib_path))
        kind = "shim"
    elif lib is not None:
        kind = "ffi"
        if shim_path is not None:
            shim = _open_shim(shim_path)
    else:
        if shim_path is None:
            raise CapabilityError(
                "no liburing binding: liburing-ffi.so is absent (liburing < 2.4) and the "
                "fastpath shim is not built",
                fix="run `make setup` (or `make -C uring install PREFIX=.venv`)",
            )
        shim = _open_shim(shim_path)
        lib, lib_path, kind = shim, str(shim_path), "shim"
    _bind(lib, _PROTOTYPES, lib_path)
    checked = False
    if shim is not None:
        check_layout(shim)
        checked = True
    version = None
    if kind == "ffi":
        major = getattr(lib, "io_uring_major_version", None)
        minor = getattr(lib, "io_uring_minor_version", None)
        if major is not None and minor is not None:
            version = f"{major()}.{minor()}"
    elif shim is not None:
        version = shim.fastpath_liburing_version().decode()
    version = version or _mapped_liburing_version() or "unknown"
    return Liburing(kind, lib_path, lib, shim, str(shim_path or "") or None, version, checked)


_LOADED: Liburing | None = None


def load() -> Liburing:
    """The process-wide binding, loaded and layout-checked on first use."""
    global _LOADED
    if _LOADED is None:
        _LOADED = open_library()
    return _LOADED


# --- the Pythonic layer ---------------------------------------------------------------------


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


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in sorted(names.items()) if value & bit]


def strerror(res: int) -> str:
    """A negative CQE result as 'ENAME (message)'."""
    code = -res
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


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
                fix="fastpath's liburing.py does not match this liburing; update the mirrors",
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
    def fd(self) -> int:
        return int(self._ring.ring_fd)

    @property
    def setup_flags(self) -> int:
        return int(self._ring.flags)

    @property
    def features(self) -> int:
        return int(self._ring.features)

    @property
    def sq_entries(self) -> int:
        return int(self.params.sq_entries)

    @property
    def cq_entries(self) -> int:
        return int(self.params.cq_entries)

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

    def _finish(self, sqe: int, user_data: int, flags: int = 0, keep: Any = None) -> None:
        lib = self._lib
        lib.io_uring_sqe_set_data64(sqe, user_data)
        if flags:
            lib.io_uring_sqe_set_flags(sqe, flags)
        if keep is not None:
            self._keep[user_data] = keep

    def _buf(self, buf: BufferLike, length: int | None) -> tuple[int, int, Any]:
        if isinstance(buf, int):
            if length is None:
                raise TypeError("a raw address needs an explicit length")
            return buf, length, None
        addr, size = buffer_address(buf)
        if length is not None:
            if length > size:
                raise ValueError(f"length {length} exceeds the buffer's {size} bytes")
            size = length
        return addr, size, buf

    def prep_nop(self, user_data: int, *, sqe_flags: int = 0) -> None:
        sqe = self.get_sqe()
        self._lib.io_uring_prep_nop(sqe)
        self._finish(sqe, user_data, sqe_flags)

    def prep_read(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        offset: int = -1, sqe_flags: int = 0,
    ) -> None:  # fmt: skip
        """Read into `buf`; offset -1 means the file's current position (pipes, sockets)."""
        addr, n, keep = self._buf(buf, length)
        sqe = self.get_sqe()
        self._lib.io_uring_prep_read(sqe, fd, addr, n, offset & 0xFFFFFFFFFFFFFFFF)
        self._finish(sqe, user_data, sqe_flags, keep)

    def prep_write(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        offset: int = -1, sqe_flags: int = 0,
    ) -> None:  # fmt: skip
        addr, n, keep = self._buf(buf, length)
        sqe = self.get_sqe()
        self._lib.io_uring_prep_write(sqe, fd, addr, n, offset & 0xFFFFFFFFFFFFFFFF)
        self._finish(sqe, user_data, sqe_flags, keep)

    def prep_accept(self, fd: int, user_data: int, *, flags: int = socket.SOCK_CLOEXEC) -> None:
        sqe = self.get_sqe()
        self._lib.io_uring_prep_accept(sqe, fd, None, None, flags)
        self._finish(sqe, user_data)

    def prep_multishot_accept(
        self, fd: int, user_data: int, *, flags: int = socket.SOCK_CLOEXEC
    ) -> None:
        """One SQE, one CQE per accepted connection while the CQE carries F_MORE."""
        sqe = self.get_sqe()
        self._lib.io_uring_prep_multishot_accept(sqe, fd, None, None, flags)
        self._finish(sqe, user_data)

    def prep_recv(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        flags: int = 0,
    ) -> None:  # fmt: skip
        addr, n, keep = self._buf(buf, length)
        sqe = self.get_sqe()
        self._lib.io_uring_prep_recv(sqe, fd, addr, n, flags)
        self._finish(sqe, user_data, 0, keep)

    def prep_recv_select(self, fd: int, group: int, user_data: int, *, flags: int = 0) -> None:
        """One-shot recv into a buffer the kernel picks from provided-buffer group `group`."""
        sqe = self.get_sqe()
        self._lib.io_uring_prep_recv(sqe, fd, None, 0, flags)
        IoUringSqe.from_address(sqe).buf_group = group
        self._finish(sqe, user_data, IOSQE_BUFFER_SELECT)

    def prep_recv_multishot(self, fd: int, group: int, user_data: int, *, flags: int = 0) -> None:
        """Multishot recv: every CQE carries one buffer from group `group`."""
        sqe = self.get_sqe()
        self._lib.io_uring_prep_recv_multishot(sqe, fd, None, 0, flags)
        IoUringSqe.from_address(sqe).buf_group = group
        self._finish(sqe, user_data, IOSQE_BUFFER_SELECT)

    def prep_send(
        self, fd: int, buf: BufferLike, user_data: int, *, length: int | None = None,
        flags: int = socket.MSG_NOSIGNAL,
    ) -> None:  # fmt: skip
        addr, n, keep = self._buf(buf, length)
        sqe = self.get_sqe()
        self._lib.io_uring_prep_send(sqe, fd, addr, n, flags)
        self._finish(sqe, user_data, 0, keep)

    def prep_close(self, fd: int, user_data: int) -> None:
        sqe = self.get_sqe()
        self._lib.io_uring_prep_close(sqe, fd)
        self._finish(sqe, user_data)

    def prep_shutdown(self, fd: int, how: int, user_data: int) -> None:
        sqe = self.get_sqe()
        self._lib.io_uring_prep_shutdown(sqe, fd, how)
        self._finish(sqe, user_data)

    def prep_cancel(self, target: int, user_data: int, *, flags: int = 0) -> None:
        """Cancel the request(s) whose user_data is `target`."""
        sqe = self.get_sqe()
        self._lib.io_uring_prep_cancel64(sqe, target, flags)
        self._finish(sqe, user_data)

    def prep_cancel_fd(self, fd: int, user_data: int, *, flags: int = 0) -> None:
        """Cancel requests on `fd` (all of them with IORING_ASYNC_CANCEL_ALL)."""
        sqe = self.get_sqe()
        self._lib.io_uring_prep_cancel_fd(sqe, fd, flags)
        self._finish(sqe, user_data)

    def prep_timeout(
        self, seconds: float, user_data: int, *, count: int = 0, flags: int = 0
    ) -> None:
        """Complete with -ETIME after `seconds`, or with 0 once `count` other CQEs posted."""
        ts = _timespec(seconds)
        sqe = self.get_sqe()
        self._lib.io_uring_prep_timeout(sqe, ctypes.addressof(ts), count, flags)
        self._finish(sqe, user_data, 0, ts)

    def prep_timeout_remove(self, target: int, user_data: int) -> None:
        sqe = self.get_sqe()
        self._lib.io_uring_prep_timeout_remove(sqe, target, 0)
        self._finish(sqe, user_data)

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


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = c_void_p
_libc.mmap.argtypes = [c_void_p, c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [c_void_p, c_size_t]
_PROT_RW = 0x1 | 0x2
_MAP_PRIVATE_ANON = 0x02 | 0x20
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mmap_anon(size: int) -> int:
    addr = _libc.mmap(None, size, _PROT_RW, _MAP_PRIVATE_ANON, -1, 0)
    if addr in (None, _MAP_FAILED):
        raise FastpathError(f"mmap of {size} bytes failed: {os.strerror(ctypes.get_errno())}")
    return int(addr)


class BufferRing:
    """A provided-buffer ring: `entries` buffers of `size` bytes the kernel picks from.

    Buffer `bid` lives at `base + bid * size`. A completion carrying F_BUFFER owns its
    buffer until it is handed back with recycle()/recycle_many(). Every buffer is
    published at registration unless `publish` is False.
    """

    MAX_ENTRIES = 32768

    def __init__(
        self, ring: Ring, group: int, entries: int, size: int, *, publish: bool = True
    ) -> None:
        if entries < 1 or entries > self.MAX_ENTRIES or entries & (entries - 1):
            raise FastpathError(f"buffer ring entries {entries}: need a power of two 1..32768")
        if not 1 <= size <= 1 << 24:
            raise FastpathError(f"buffer size {size} out of range 1..16777216")
        if not 0 <= group < 1 << 16:
            raise FastpathError(f"buffer group {group} out of range 0..65535")
        self.ring, self.group, self.entries, self.size = ring, group, entries, size
        self._lib = ring.binding.lib
        self._recycle_fn = ring.binding.shim.fastpath_buf_ring_recycle if ring.binding.shim else None
        self.mask = int(self._lib.io_uring_buf_ring_mask(entries))
        self._ring_bytes = entries * ctypes.sizeof(IoUringBuf)
        self._buf_bytes = entries * size
        self.ring_addr = _mmap_anon(self._ring_bytes)
        self.base = _mmap_anon(self._buf_bytes)
        self._registered = False
        reg = IoUringBufReg(ring_addr=self.ring_addr, ring_entries=entries, bgid=group)
        ret = self._lib.io_uring_register_buf_ring(ring.address, ctypes.byref(reg), 0)
        if ret < 0:
            self._unmap()
            if ret == -errno.EINVAL:
                raise CapabilityError(
                    f"provided buffer rings unsupported: {strerror(ret)}", fix="use Linux >= 5.19"
                )
            raise FastpathError(f"io_uring_register_buf_ring failed: {strerror(ret)}")
        self._registered = True
        self._lib.io_uring_buf_ring_init(self.ring_addr)
        self._bids = (c_u16 * entries)()
        if publish:
            for bid in range(entries):
                self._lib.io_uring_buf_ring_add(
                    self.ring_addr, self.addr(bid), size, bid, self.mask, bid
                )
            self._lib.io_uring_buf_ring_advance(self.ring_addr, entries)

    def addr(self, bid: int) -> int:
        return self.base + bid * self.size

    def read(self, bid: int, length: int) -> bytes:
        """A copy of the first `length` bytes of buffer `bid`."""
        if not 0 <= bid < self.entries or not 0 <= length <= self.size:
            raise ValueError(f"buffer {bid}/{length} outside the ring")
        return ctypes.string_at(self.addr(bid), length)

    def recycle(self, bid: int) -> None:
        self._lib.io_uring_buf_ring_add(self.ring_addr, self.addr(bid), self.size, bid, self.mask, 0)
        self._lib.io_uring_buf_ring_advance(self.ring_addr, 1)

    def recycle_many(self, bids: Sequence[int]) -> None:
        """Hand several buffers back with one tail update."""
        n = len(bids)
        if not n:
            return
        if self._recycle_fn is not None and n <= self.entries:
            arr = self._bids
            for i, b in enumerate(bids):
                arr[i] = b
            self._recycle_fn(self.ring_addr, self.base, self.size, self.entries, arr, n)
            return
        for i, b in enumerate(bids):
            self._lib.io_uring_buf_ring_add(self.ring_addr, self.addr(b), self.size, b, self.mask, i)
        self._lib.io_uring_buf_ring_advance(self.ring_addr, n)

    def _unmap(self) -> None:
        _libc.munmap(self.ring_addr, self._ring_bytes)
        _libc.munmap(self.base, self._buf_bytes)
        self.ring_addr = self.base = 0

    def close(self) -> None:
        if not self.base:
            return
        if self._registered and not self.ring.closed:
            self._lib.io_uring_unregister_buf_ring(self.ring.address, self.group)
        self._registered = False
        self._unmap()
        self.ring._forget_buffer_ring(self.group)

    def __enter__(self) -> BufferRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- probes for `fastpath uring probe` and the doctor ---------------------------------------


def probe_opcodes() -> Probe:
    with Ring(8) as ring:
        return ring.probe()


def _functional(name: str, fn: Any) -> tuple[bool, str]:
    try:
        return fn()
    except FastpathError as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"{name}: {exc}"


def _try_multishot_accept() -> tuple[bool, str]:
    with Ring(8) as ring, socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        ring.prep_multishot_accept(lsock.fileno(), 1)
        ring.submit()
        with socket.create_connection(lsock.getsockname(), timeout=2):
            (c,) = ring.completions(1, timeout=2)
        if c.res >= 0:
            os.close(c.res)
        ring.prep_cancel(1, 2)
        ring.completions(2, timeout=2)
        if c.res < 0:
            return False, strerror(c.res)
        return (c.more, "ok" if c.more else "accept completed without F_MORE")


def _try_multishot_recv() -> tuple[bool, str]:
    a, b = socket.socketpair()
    with Ring(8) as ring, a, b:
        ring.buffer_ring(7, 4, 64)
        ring.prep_recv_multishot(a.fileno(), 7, 1)
        ring.submit()
        b.send(b"x")
        (c,) = ring.completions(1, timeout=2)
        if c.more:
            ring.prep_cancel(1, 2)
            ring.completions(2, timeout=2)
        if c.res < 0:
            return False, strerror(c.res)
        return (c.more and c.buffer_id is not None, "ok")


def probe_features() -> dict[str, Any]:
    """What this kernel and liburing offer fastpath, determined by using each feature."""
    binding = load()
    report: dict[str, Any] = {
        "kernel": os.uname().release,
        "liburing_version": binding.version,
        "binding": binding.kind,
        "binding_path": binding.path,
        "shim_path": binding.shim_path,
        "layout_checked": binding.layout_checked,
    }
    try:
        disabled = Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
    except OSError:
        disabled = None
    report["io_uring_disabled_sysctl"] = disabled
    with Ring(8) as ring:
        report["setup_flags"] = flag_names(ring.setup_flags, SETUP_FLAG_NAMES)
        report["features"] = flag_names(ring.features, FEATURE_NAMES)
        probe = ring.probe()
    report["last_opcode"] = probe.last_op
    report["opcodes"] = probe.names()
    report["missing_for_echo"] = probe.missing(ECHO_OPCODES)
    checks = {
        "multishot_accept": _functional("multishot accept", _try_multishot_accept),
        "multishot_recv_buffer_ring": _functional("multishot recv", _try_multishot_recv),
    }
    report["functional"] = {k: {"ok": ok, "detail": d} for k, (ok, d) in checks.items()}
    return report
