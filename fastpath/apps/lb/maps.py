"""The l4lb program's maps as typed maps, opened from their bpffs pins or from a loaded
program, and the batched writer and reader of Maglev rings (one system call each way)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from array import array
from collections.abc import Mapping
from typing import Any

from fastpath.apps.lb.abi import MAP_TYPES, MAPS
from fastpath.bpf import syscall, xdp
from fastpath.bpf.loader import LoadedProgram
from fastpath.bpf.maps import TypedMap
from fastpath.errors import FastpathError


def write_u32_array(fd: int, first: int, values: array[int]) -> None:
    """Write values[i] at key first + i of a u32 -> u32 array map: one BPF_MAP_UPDATE_BATCH
    (kernel 5.6+) where possible, element by element otherwise."""
    keys = array("I", range(first, first + len(values)))
    kaddr, _ = keys.buffer_info()
    vaddr, _ = values.buffer_info()
    done = 0
    while done < len(values):
        written, err = syscall.map_update_batch(fd, kaddr + 4 * done, vaddr + 4 * done, len(values) - done)
        if not err:
            return
        done += written
        if written == 0:
            if err not in _NO_BATCH:
                raise syscall.BpfError(err, "map update batch")
            break
    k = ctypes.c_uint32()
    v = ctypes.c_uint32()
    for i in range(done, len(values)):
        k.value = first + i
        v.value = values[i]
        syscall.map_update(fd, k, v)  # type: ignore[arg-type]  # any ctypes object is a buffer to bpf(2)


def read_u32_array(fd: int, first: int, count: int) -> array[int]:
    """The values at keys first .. first + count - 1 of a u32 -> u32 array map: batched
    lookups (BPF_MAP_LOOKUP_BATCH) where possible, element by element otherwise."""
    out = array("I", bytes(4 * count))
    keys = array("I", bytes(4 * count))
    cursor = array("I", [max(first - 1, 0), 0])  # the key a batch continues after, and the next one
    caddr, _ = cursor.buffer_info()
    kaddr, _ = keys.buffer_info()
    vaddr, _ = out.buffer_info()
    done = 0
    while done < count:
        start = 0 if (first == 0 and done == 0) else caddr
        got, err = syscall.map_lookup_batch(fd, start, caddr + 4, kaddr + 4 * done, vaddr + 4 * done,
                                            count - done)
        if got == 0 and err:
            if err in _NO_BATCH:
                break
            raise syscall.BpfError(err, "map lookup batch")
        done += got
        cursor[0] = cursor[1]
        if err:
            break
    k = ctypes.c_uint32()
    v = ctypes.c_uint32()
    for i in range(done, count):
        k.value = first + i
        syscall.map_lookup(fd, k, v)  # type: ignore[arg-type]  # any ctypes object is a buffer to bpf(2)
        out[i] = v.value
    return out


# errnos of a kernel without batch operations for the map type (524: ENOTSUPP, kernel-only)
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)


class LbMaps:
    """The program's maps as typed maps, from bpffs pins or from a loaded program."""

    def __init__(self, fds: Mapping[str, int]) -> None:
        self.maps: dict[str, TypedMap[Any, Any]] = {}
        try:
            for name in MAPS:
                key, value = MAP_TYPES[name]
                self.maps[name] = TypedMap(fds[name], key, value, name=name)
        except Exception:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        self.ring_size = self.maps["rings"].info.max_entries // (2 * self.maps["vip_stats"].info.max_entries)

    @classmethod
    def from_attachment(cls, att: xdp.Attachment) -> LbMaps:
        fds: dict[str, int] = {}
        for name in MAPS:
            try:
                fds[name] = syscall.obj_get(att.map_path(name))
            except syscall.BpfError as exc:
                for fd in fds.values():
                    os.close(fd)
                raise FastpathError(f"cannot open pinned map {att.map_path(name)}: {exc.reason}",
                                    fix="re-attach: fastpath lb attach " + att.ifname) from exc
        return cls(fds)

    @classmethod
    def from_program(cls, prog: LoadedProgram) -> LbMaps:
        return cls({name: os.dup(prog.map_fd(name)) for name in MAPS})

    def __getitem__(self, name: str) -> TypedMap[Any, Any]:
        return self.maps[name]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> LbMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

