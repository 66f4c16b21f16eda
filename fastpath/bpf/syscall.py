"""The bpf(2) system call through ctypes.

Pinned objects are opened, read and updated here without bcc, so a second CLI process
reads a running program's maps without compiling anything. Layouts follow
include/uapi/linux/bpf.h (`union bpf_attr` and the `bpf_*_info` structs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
LINK_CREATE = 28
LINK_UPDATE = 29
LINK_GET_FD_BY_ID = 30
LINK_DETACH = 34

# enum bpf_attach_type
BPF_XDP = 37

# update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# XDP attach flags (include/uapi/linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4

# enum bpf_map_type, the ones fastpath uses
MAP_TYPES = {
    1: "hash",
    2: "array",
    3: "prog_array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
}
PERCPU_MAP_TYPES = {5, 6, 10}

_ATTR_SIZE = 144


class BpfError(OSError):
    """A failed bpf(2) command; `errno` and the command name are kept."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE)
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return int(ret)


def _attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(obj: ctypes.Array[ctypes.c_char] | ctypes.Structure | ctypes.Array[ctypes.c_ubyte] | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


# -- objects in bpffs ----------------------------------------------------------------------

def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _call(OBJ_PIN, _attr("=QI", ctypes.addressof(name), fd), f"pin {path}")


def obj_get(path: str) -> int:
    """Open a pinned program, map or link; the caller owns the returned fd."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _call(OBJ_GET, _attr("=QI", ctypes.addressof(name), 0), f"open pinned {path}")


# -- map elements --------------------------------------------------------------------------

def map_lookup(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char]) -> bool:
    """Fill `value` with the element at `key`; False when there is none."""
    attr = _attr("=I4xQQQ", fd, _addr(key), _addr(value), 0)
    try:
        _call(MAP_LOOKUP_ELEM, attr, "map lookup")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(
    fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char], flags: int = BPF_ANY
) -> None:
    _call(MAP_UPDATE_ELEM, _attr("=I4xQQQ", fd, _addr(key), _addr(value), flags), "map update")


def map_delete(fd: int, key: ctypes.Array[ctypes.c_char]) -> bool:
    """Delete `key`; False when it was not there."""
    try:
        _call(MAP_DELETE_ELEM, _attr("=I4xQQ", fd, _addr(key), 0), "map delete")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(
    fd: int, key: ctypes.Array[ctypes.c_char] | None, next_key: ctypes.Array[ctypes.c_char]
) -> bool:
    """Fill `next_key` with the key after `key` (the first key when `key` is None)."""
    try:
        _call(MAP_GET_NEXT_KEY, _attr("=I4xQQ", fd, _addr(key), _addr(next_key)), "map next key")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


# -- object info ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPES.get(self.type, f"type{self.type}")

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: str
    name: str


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int


def _info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    _call(OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, size, ctypes.addressof(info)), "object info")
    return info.raw


def map_info(fd: int) -> MapInfo:
    raw = _info(fd, 80)
    mtype, mid, ksize, vsize, maxe, flags = struct.unpack_from("=6I", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(mtype, mid, ksize, vsize, maxe, flags, name)


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd, 80)
    ptype, pid = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    name = raw[64:80].split(b"\0", 1)[0].decode()
    return ProgInfo(ptype, pid, tag, name)


def link_info(fd: int) -> LinkInfo:
    raw = _info(fd, 64)
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    (ifindex,) = struct.unpack_from("=I", raw, 16)
    return LinkInfo(ltype, lid, prog_id, ifindex)


def prog_fd_by_id(prog_id: int) -> int:
    return _call(PROG_GET_FD_BY_ID, _attr("=I", prog_id), f"open program id {prog_id}")


# -- links ---------------------------------------------------------------------------------

def xdp_link_create(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach an XDP program to `ifindex` (resolved in the calling thread's netns)."""
    return _call(LINK_CREATE, _attr("=IIII", prog_fd, ifindex, BPF_XDP, flags), "attach XDP link")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program behind a link in one step: no packet sees no program."""
    _call(LINK_UPDATE, _attr("=III", link_fd, new_prog_fd, 0), "replace program on link")


def link_detach(link_fd: int) -> None:
    _call(LINK_DETACH, _attr("=I", link_fd), "detach link")


# -- BPF_PROG_TEST_RUN ---------------------------------------------------------------------

@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data_out: bytes
    duration_ns: int


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int | None = None) -> TestRunResult:
    """Run `prog_fd` on `data` `repeat` times in the kernel; duration is the mean per run."""
    size_out = out_size if out_size is not None else len(data) + 256
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    data_out = ctypes.create_string_buffer(size_out)
    attr = _attr(
        "=IIIIQQII",
        prog_fd, 0, len(data), size_out, ctypes.addressof(data_in), ctypes.addressof(data_out),
        max(repeat, 1), 0,
    )
    _call(PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    _, retval, _, got_out, _, _, _, duration = struct.unpack_from("=IIIIQQII", attr, 0)
    return TestRunResult(retval, data_out.raw[: min(got_out, size_out)], duration)


def possible_cpus() -> int:
    """Number of possible CPUs: the width of every per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as fh:
        text = fh.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count
