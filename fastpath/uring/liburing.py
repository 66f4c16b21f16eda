"""ctypes bindings to the system liburing: finding, loading and checking the library.

Two libraries can supply liburing's `static inline` helpers (io_uring_prep_*,
io_uring_cq_advance, buffer-ring and set-data helpers) as real symbols:

* ``liburing-ffi.so`` (liburing >= 2.4), used when present, and
* fastpath's shim ``libfastpath_uring_ffi.so`` built from ``uring/ffi_shim.c`` (the only
  choice with Debian 12's liburing 2.3). It exports the same names plus batched helpers
  (``fastpath_uring_reap``, ``fastpath_buf_ring_recycle``, and the echo core
  ``fastpath_echo_*`` that does the Python echo server's per-completion bookkeeping a
  batch at a time, see echo_core.py) and a layout table.

Before any ring is built, the ctypes mirrors (structs.py) are checked against the C
compiler's layout of the same structs (the shim's table), and every ring is checked against
the kernel's own answer (entries, masks, fd); on a mismatch nothing runs.

The layers on top: ring.py (:class:`~fastpath.uring.ring.Ring`, SQE preparation, batched
reaping), bufring.py (provided-buffer rings) and probe.py (`fastpath uring probe`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring.structs import (
    MIRRORS,
    LayoutEntry,
    Mirror,
    c_size_t,
    c_u32,
    c_u64,
    c_void_p,
    compare_layouts,
    python_layout,
)

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


def check_layout(shim: ctypes.CDLL, mirrors: Iterable[type[Mirror]] = MIRRORS) -> None:
    """Refuse to run when a ctypes mirror disagrees with the C layout."""
    problems = compare_layouts(shim_layout(shim), python_layout(mirrors))
    if problems:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise FastpathError(
            f"liburing struct layout mismatch between C and fastpath's ctypes mirrors: {shown}",
            fix="update fastpath/uring/structs.py to this liburing version",
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



def strerror(res: int) -> str:
    """A negative liburing return or CQE result as 'ENAME (message)'."""
    code = -res
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
