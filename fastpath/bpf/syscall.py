"""The bpf(2) system call through ctypes.

Pinned objects are opened, read and updated here without bcc, so a second CLI process
reads a running program's maps without compiling anything. Each variant of `union bpf_attr`
and each `bpf_*_info` struct used here is a ctypes Structure named after its member in
include/uapi/linux/bpf.h; tests/unit/test_bpf_abi.py compiles that header and checks every
field's offset and size, and every constant below, so the two cannot drift.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}.get(
    platform.machine(), 321
)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
LINK_CREATE = 28
LINK_UPDATE = 29
LINK_GET_FD_BY_ID = 30
LINK_DETACH = 34

# enum bpf_attach_type
BPF_XDP = 37

# enum bpf_prog_type
PROG_TYPE_XDP = 6

# BPF_PROG_LOAD prog_flags (Linux 5.18): the program handles multi-buffer frames.
BPF_F_XDP_HAS_FRAGS = 1 << 5

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

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64  # __aligned_u64: ctypes aligns it to 8 on every 64-bit ABI

# -- union bpf_attr: one Structure per variant used --------------------------------------
# Variants that are anonymous in the header (map elements, pin/get, get fd by id) are
# named here after their commands; their fields keep the header's names.


class _ValueOrNextKey(ctypes.Union):
    _fields_ = [("value", _u64), ("next_key", _u64)]


class _MapElemAttr(ctypes.Structure):
    """BPF_MAP_{LOOKUP,UPDATE,DELETE}_ELEM, BPF_MAP_GET_NEXT_KEY."""

    _anonymous_ = ("_value",)
    _fields_ = [("map_fd", _u32), ("key", _u64), ("_value", _ValueOrNextKey), ("flags", _u64)]


class _ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD, up to `expected_attach_type` (what a program without maps needs)."""

    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    ]


class _BatchAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_*_BATCH variant."""

    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64), ("count", ctypes.c_uint32),
                ("map_fd", ctypes.c_uint32), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    """BPF_OBJ_PIN, BPF_OBJ_GET."""

    _fields_ = [("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32)]


class _TestRunAttr(ctypes.Structure):
    """BPF_PROG_TEST_RUN: `test`."""

    _fields_ = [
        ("prog_fd", _u32),
        ("retval", _u32),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("data_in", _u64),
        ("data_out", _u64),
        ("repeat", _u32),
        ("duration", _u32),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("ctx_in", _u64),
        ("ctx_out", _u64),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


class _ObjectId(ctypes.Union):
    _fields_ = [("prog_id", _u32), ("map_id", _u32), ("link_id", _u32)]


class _GetFdByIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,LINK}_GET_FD_BY_ID."""

    _anonymous_ = ("_id",)
    _fields_ = [("_id", _ObjectId), ("next_id", _u32), ("open_flags", _u32)]


class _InfoByFdAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD: `info`."""

    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class _LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE: `link_create`, up to the per-attach-type tail XDP does not use."""

    _fields_ = [("prog_fd", _u32), ("target_ifindex", _u32), ("attach_type", _u32), ("flags", _u32)]


class _LinkUpdateAttr(ctypes.Structure):
    """BPF_LINK_UPDATE: `link_update`."""

    _fields_ = [("link_fd", _u32), ("new_prog_fd", _u32), ("flags", _u32), ("old_prog_fd", _u32)]


class _LinkDetachAttr(ctypes.Structure):
    """BPF_LINK_DETACH: `link_detach`."""

    _fields_ = [("link_fd", _u32)]


# -- struct bpf_{map,prog,link}_info: the leading fields, which every kernel since 5.x has --


class _BpfMapInfo(ctypes.Structure):
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * 16),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
    ]


class _BpfProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_ubyte * 8),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * 16),
    ]


class _XdpLinkInfo(ctypes.Structure):
    _fields_ = [("ifindex", _u32)]


class _LinkInfoDetails(ctypes.Union):
    # The header's union is 8-byte aligned and 48 bytes on current kernels (perf_event).
    _fields_ = [("xdp", _XdpLinkInfo), ("_raw", _u64 * 6)]


class _BpfLinkInfo(ctypes.Structure):
    _anonymous_ = ("_details",)
    _fields_ = [("type", _u32), ("id", _u32), ("prog_id", _u32), ("_details", _LinkInfoDetails)]


class BpfError(OSError):
    """A failed bpf(2) command; `errno` and the command name are kept."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what
        self.reason = os.strerror(err)  # the errno's text alone, for one-line messages


def _call(cmd: int, attr: ctypes.Structure, what: str) -> int:
    ret = _libc.syscall(
        ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return int(ret)


def _addr(obj: ctypes.Array[ctypes.c_char] | ctypes.Structure | ctypes.Array[ctypes.c_ubyte] | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


# -- objects in bpffs ----------------------------------------------------------------------

def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _call(OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd), f"pin {path}")


def obj_get(path: str) -> int:
    """Open a pinned program, map or link; the caller owns the returned fd."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _call(OBJ_GET, _ObjAttr(pathname=ctypes.addressof(name)), f"open pinned {path}")


# -- map elements --------------------------------------------------------------------------

def _found(cmd: int, attr: ctypes.Structure, what: str) -> bool:
    """`_call`, answering False where the kernel says there is no such element (ENOENT)."""
    try:
        _call(cmd, attr, what)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char]) -> bool:
    """Fill `value` with the element at `key`; False when there is none."""
    return _found(MAP_LOOKUP_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)), "map lookup")


def map_update(
    fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char], flags: int = BPF_ANY
) -> None:
    attr = _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags)
    _call(MAP_UPDATE_ELEM, attr, "map update")


def map_update_batch(fd: int, keys: int, values: int, count: int) -> tuple[int, int]:
    """BPF_MAP_UPDATE_BATCH (Linux 5.6+) of `count` packed keys and values at the addresses
    `keys` and `values`: (elements written, 0 or the errno that stopped it). A kernel or map
    type without batch support answers (0, EINVAL/EOPNOTSUPP/ENOTSUPP)."""
    attr = _BatchAttr(keys=keys, values=values, count=count, map_fd=fd)
    ret = _libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(MAP_UPDATE_BATCH), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    return int(attr.count), (0 if ret == 0 else ctypes.get_errno())


def map_lookup_batch(fd: int, in_batch: int, out_batch: int, keys: int, values: int,
                     count: int) -> tuple[int, int]:
    """BPF_MAP_LOOKUP_BATCH (Linux 5.6+): up to `count` elements after the key at address
    `in_batch` (0: from the first), written as packed keys and values at `keys` and
    `values`; the key to continue from lands at `out_batch`. Returns (elements read, 0 or
    the errno that stopped it; ENOENT means the map's end was reached)."""
    attr = _BatchAttr(in_batch=in_batch, out_batch=out_batch, keys=keys, values=values, count=count,
                      map_fd=fd)
    ret = _libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(MAP_LOOKUP_BATCH), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    return int(attr.count), (0 if ret == 0 else ctypes.get_errno())


def map_delete(fd: int, key: ctypes.Array[ctypes.c_char]) -> bool:
    """Delete `key`; False when it was not there."""
    return _found(MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key)), "map delete")


def map_next_key(
    fd: int, key: ctypes.Array[ctypes.c_char] | None, next_key: ctypes.Array[ctypes.c_char]
) -> bool:
    """Fill `next_key` with the key after `key` (the first key when `key` is None)."""
    return _found(MAP_GET_NEXT_KEY, _MapElemAttr(map_fd=fd, key=_addr(key), next_key=_addr(next_key)),
                  "map next key")


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


def _info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _call(OBJ_GET_INFO_BY_FD, attr, "object info")


def map_info(fd: int) -> MapInfo:
    i = _BpfMapInfo()
    _info(fd, i)
    return MapInfo(i.type, i.id, i.key_size, i.value_size, i.max_entries, i.map_flags, i.name.decode())


def prog_info(fd: int) -> ProgInfo:
    i = _BpfProgInfo()
    _info(fd, i)
    return ProgInfo(i.type, i.id, bytes(i.tag).hex(), i.name.decode())


def link_info(fd: int) -> LinkInfo:
    i = _BpfLinkInfo()
    _info(fd, i)
    return LinkInfo(i.type, i.id, i.prog_id, i.xdp.ifindex)


def prog_load_xdp(insns: bytes, name: str, frags: bool = False) -> int:
    """Load an XDP program given as raw instructions (8 bytes each), with no compiler and no
    maps; for the tiny programs the runtime itself needs. The caller owns the fd."""
    buf = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=PROG_TYPE_XDP, insn_cnt=len(insns) // 8, insns=ctypes.addressof(buf),
                         license=ctypes.addressof(lic), prog_flags=BPF_F_XDP_HAS_FRAGS if frags else 0,
                         prog_name=name.encode()[:15], expected_attach_type=BPF_XDP)
    return _call(PROG_LOAD, attr, f"load program {name}")


def prog_fd_by_id(prog_id: int) -> int:
    return _call(PROG_GET_FD_BY_ID, _GetFdByIdAttr(prog_id=prog_id), f"open program id {prog_id}")


# -- links ---------------------------------------------------------------------------------

def xdp_link_create(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach an XDP program to `ifindex` (resolved in the calling thread's netns)."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=BPF_XDP, flags=flags)
    return _call(LINK_CREATE, attr, "attach XDP link")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program behind a link in one step: no packet sees no program."""
    _call(LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd), "replace program on link")


def link_detach(link_fd: int) -> None:
    _call(LINK_DETACH, _LinkDetachAttr(link_fd=link_fd), "detach link")


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
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=size_out,
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=max(repeat, 1),
    )
    _call(PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    return TestRunResult(attr.retval, data_out.raw[: min(attr.data_size_out, size_out)], attr.duration)


# BPF_PROG_TEST_RUN flag (Linux 5.18): XDP_TX/XDP_REDIRECT really transmit.
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class XdpMd(ctypes.Structure):
    """struct xdp_md: the context of a live-frames run (its ingress device)."""

    _fields_ = [(name, _u32) for name in
                ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


def prog_test_run_live(prog_fd: int, data: bytes, repeat: int, ifindex: int) -> int:
    """Run an XDP program `repeat` times on fresh copies of `data` in live-frames mode:
    XDP_TX really transmits, out of `ifindex` (resolved in the calling thread's namespace).
    A line-rate frame generator for floods and benchmarks. Returns the mean ns per run."""
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    ctx = XdpMd(data=0, data_end=len(data), ingress_ifindex=ifindex)
    attr = _TestRunAttr(
        prog_fd=prog_fd, data_size_in=len(data), data_in=ctypes.addressof(data_in), repeat=max(repeat, 1),
        ctx_size_in=ctypes.sizeof(ctx), ctx_in=ctypes.addressof(ctx), flags=BPF_F_TEST_XDP_LIVE_FRAMES)
    _call(PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN (live frames)")
    return int(attr.duration)


def _cpu_count(which: str) -> int:
    with open(f"/sys/devices/system/cpu/{which}") as fh:
        text = fh.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


def possible_cpus() -> int:
    """Number of possible CPUs: the width of every per-CPU map value, and the number of
    shares a per-CPU LRU map (BPF_F_NO_COMMON_LRU) splits its entries into."""
    return _cpu_count("possible")


def online_cpus() -> int:
    """Number of CPUs online now."""
    return _cpu_count("online")
