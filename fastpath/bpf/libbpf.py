"""libbpf through ctypes: load a compiled BPF object (ELF), as libbpf programs expect.

fastpath's own programs are bcc programs (fastpath.bpf.loader). The peers the benchmarks
run next to them are the kernel's own libbpf programs, some calling kfuncs, which bcc
cannot build; this loads their objects in-process through libbpf.so.1 (Debian's libbpf1):
open, choose which programs load (and as what), load, then fds for programs and maps, and
a freplace link, which is how a peer runs inside a frame-restoring harness.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastpath.errors import CapabilityError, FastpathError

# enum bpf_prog_type
PROG_TYPE_XDP = 6
PROG_TYPE_EXT = 28

_LIB_NAMES = ("libbpf.so.1",)
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []


# A va_list is read once, so there is no asking for the length first: one buffer large
# enough for a verifier log (libbpf prints it in one message).
_print_buf = ctypes.create_string_buffer(8 << 20)


def _print(level: int, fmt: bytes, args: int) -> int:
    _libc.vsnprintf(_print_buf, ctypes.sizeof(_print_buf), fmt, ctypes.c_void_p(args))
    _log.append(_print_buf.value.decode(errors="replace"))
    return 0


_print_cb = _PRINT_FN(_print)


def missing() -> str | None:
    """Why libbpf cannot be used here (None: it can)."""
    try:
        lib()
    except CapabilityError as exc:
        return exc.message
    return None


def lib() -> ctypes.CDLL:
    """libbpf.so.1, its functions typed; CapabilityError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    for name in (*_LIB_NAMES, ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        break
    else:
        raise CapabilityError("libbpf (libbpf.so.1) is not installed", fix="apt-get install libbpf1")
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_object__next_program", vp, [vp, vp]),
        ("bpf_object__find_map_fd_by_name", i, [vp, cp]),
        ("bpf_program__name", cp, [vp]),
        ("bpf_program__fd", i, [vp]),
        ("bpf_program__set_autoload", i, [vp, ctypes.c_bool]),
        ("bpf_program__set_type", i, [vp, i]),
        ("bpf_program__set_attach_target", i, [vp, i, cp]),
        ("bpf_program__attach_freplace", vp, [vp, i, cp]),
        ("bpf_link__destroy", i, [vp]),
        ("libbpf_set_print", vp, [_PRINT_FN]),
    ):
        f = getattr(handle, fn)
        f.restype, f.argtypes = res, args
    handle.libbpf_set_print(_print_cb)
    _lib = handle
    return handle


@contextmanager
def _logged(what: str) -> Iterator[list[str]]:
    """Collect libbpf's messages (the verifier's log among them) during one call."""
    _log.clear()
    yield _log


def _tail(log: list[str], lines: int = 4) -> str:
    text = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()]
    return " | ".join(text[-lines:])


class BpfObject:
    """One opened (then loaded) BPF object file; close() releases every fd and link."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lib = lib()
        self._links: list[int] = []
        with _logged("open") as log:
            ctypes.set_errno(0)
            obj = self._lib.bpf_object__open_file(str(self.path).encode(), None)
        if not obj:
            err = ctypes.get_errno()
            why = os.strerror(err) if err else _tail(log)
            raise FastpathError(f"libbpf could not open {self.path}: {why}")
        self._obj: int | None = obj

    def _prog(self, name: str) -> int:
        prog = self._lib.bpf_object__find_program_by_name(self._handle, name.encode())
        if not prog:
            raise FastpathError(f"{self.path.name} has no BPF program {name!r}")
        return int(prog)

    @property
    def _handle(self) -> int:
        if self._obj is None:
            raise FastpathError(f"BPF object {self.path.name} is closed")
        return self._obj

    def programs(self) -> list[str]:
        names: list[str] = []
        prog = self._lib.bpf_object__next_program(self._handle, None)
        while prog:
            names.append(self._lib.bpf_program__name(prog).decode())
            prog = self._lib.bpf_object__next_program(self._handle, prog)
        return names

    def only(self, name: str) -> None:
        """Load just the program `name` (an object may hold several, e.g. an XDP and a tc one)."""
        self._prog(name)
        for other in self.programs():
            self._lib.bpf_program__set_autoload(self._prog(other), other == name)

    def replace(self, name: str, target_fd: int, function: str) -> None:
        """Load program `name` as a replacement (freplace) of global `function` of the
        loaded program `target_fd`; attach it with `attach_replacement` after load()."""
        prog = self._prog(name)
        if self._lib.bpf_program__set_type(prog, PROG_TYPE_EXT) or \
                self._lib.bpf_program__set_attach_target(prog, target_fd, function.encode()):
            raise FastpathError(f"libbpf refused {name} as a replacement of {function}")

    def load(self) -> None:
        with _logged("load") as log:
            err = self._lib.bpf_object__load(self._handle)
        if err:
            raise FastpathError(f"loading {self.path.name} failed ({os.strerror(-err)}): {_tail(log)}")

    def prog_fd(self, name: str) -> int:
        fd = int(self._lib.bpf_program__fd(self._prog(name)))
        if fd < 0:
            raise FastpathError(f"{self.path.name}: program {name} is not loaded")
        return fd

    def map_fd(self, name: str) -> int:
        fd = int(self._lib.bpf_object__find_map_fd_by_name(self._handle, name.encode()))
        if fd < 0:
            raise FastpathError(f"{self.path.name} has no map {name!r}")
        return fd

    def attach_replacement(self, name: str, target_fd: int, function: str) -> None:
        """Put loaded program `name` in place of `function` of `target_fd` (until close())."""
        with _logged("attach") as log:
            ctypes.set_errno(0)
            link = self._lib.bpf_program__attach_freplace(self._prog(name), target_fd, function.encode())
        if not link:
            err = ctypes.get_errno()
            raise FastpathError(f"replacing {function} with {name} failed"
                                f" ({os.strerror(err) if err else 'libbpf error'}): {_tail(log)}")
        self._links.append(int(link))

    def close(self) -> None:
        for link in self._links:
            self._lib.bpf_link__destroy(link)
        self._links.clear()
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
