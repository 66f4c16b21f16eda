"""Typed access to BPF maps through their fds: ctypes keys and values in, ctypes out.

Opened from bpffs pins, so any process can read or change a running program's maps.
Per-CPU maps return one value per possible CPU.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import Any, Generic, TypeVar, cast

from fastpath.bpf import syscall
from fastpath.errors import FastpathError

K = TypeVar("K", bound=Any)
V = TypeVar("V", bound=Any)


def _raw(obj: Any) -> ctypes.Array[ctypes.c_char]:
    """A ctypes object copied into a char buffer the syscall layer accepts."""
    buf = ctypes.create_string_buffer(ctypes.sizeof(obj))
    ctypes.memmove(buf, ctypes.addressof(obj), ctypes.sizeof(obj))
    return buf


class TypedMap(Generic[K, V]):
    """A BPF map whose key and value layouts are the ctypes mirrors of a program's header."""

    def __init__(self, fd: int, key_type: type[K], value_type: type[V], *, name: str = "") -> None:
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.info = syscall.map_info(fd)
        self.name = name or self.info.name
        if self.info.key_size != ctypes.sizeof(key_type):
            raise FastpathError(
                f"map {self.name}: kernel key size {self.info.key_size} != "
                f"{key_type.__name__} size {ctypes.sizeof(key_type)}",
                fix="the pinned map is from another fastpath version; detach and attach again",
            )
        if self.info.value_size != ctypes.sizeof(value_type):
            raise FastpathError(
                f"map {self.name}: kernel value size {self.info.value_size} != "
                f"{value_type.__name__} size {ctypes.sizeof(value_type)}",
                fix="the pinned map is from another fastpath version; detach and attach again",
            )
        self.percpu = self.info.percpu
        self.ncpus = syscall.possible_cpus() if self.percpu else 1
        # The kernel lays out per-CPU values at an 8-byte stride.
        self._stride = (ctypes.sizeof(value_type) + 7) & ~7 if self.percpu else ctypes.sizeof(value_type)

    @classmethod
    def open_pinned(cls, path: str, key_type: type[K], value_type: type[V]) -> TypedMap[K, V]:
        try:
            fd = syscall.obj_get(path)
        except syscall.BpfError as exc:
            raise FastpathError(f"cannot open pinned map {path}: {exc.reason}") from exc
        try:
            return cls(fd, key_type, value_type, name=os.path.basename(path))
        except Exception:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TypedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- elements --------------------------------------------------------------------------

    def _value_buf(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._stride * self.ncpus)

    def _decode(self, buf: ctypes.Array[ctypes.c_char], cpu: int = 0) -> V:
        return self.value_type.from_buffer_copy(buf.raw, cpu * self._stride)

    def get(self, key: K) -> V | None:
        """The value at `key` (CPU 0's for a per-CPU map; see get_percpu)."""
        buf = self._value_buf()
        if not syscall.map_lookup(self.fd, _raw(key), buf):
            return None
        return self._decode(buf)

    def get_percpu(self, key: K) -> list[V] | None:
        buf = self._value_buf()
        if not syscall.map_lookup(self.fd, _raw(key), buf):
            return None
        return [self._decode(buf, cpu) for cpu in range(self.ncpus)]

    def sum_percpu(self, key: K) -> dict[str, int]:
        """Every field of the value at `key` summed over CPUs (all zero when the key is
        absent): how per-CPU counters are read, whatever the struct."""
        struct = cast("type[ctypes.Structure]", self.value_type)
        names = [f[0] for f in struct._fields_]
        out = dict.fromkeys(names, 0)
        for v in self.get_percpu(key) or []:
            for n in names:
                out[n] += getattr(v, n)
        return out

    def set(self, key: K, value: V, flags: int = syscall.BPF_ANY) -> None:
        if self.percpu:
            self.set_percpu(key, [value] * self.ncpus, flags)
            return
        syscall.map_update(self.fd, _raw(key), _raw(value), flags)

    def set_percpu(self, key: K, values: list[V], flags: int = syscall.BPF_ANY) -> None:
        if len(values) != self.ncpus:
            raise ValueError(f"need {self.ncpus} per-CPU values, got {len(values)}")
        buf = self._value_buf()
        for cpu, value in enumerate(values):
            ctypes.memmove(ctypes.addressof(buf) + cpu * self._stride, ctypes.addressof(value),
                           ctypes.sizeof(value))
        syscall.map_update(self.fd, _raw(key), buf, flags)

    def delete(self, key: K) -> bool:
        return syscall.map_delete(self.fd, _raw(key))

    def keys(self) -> Iterator[K]:
        """Every key; a map that changes while it is walked may repeat or skip some."""
        size = ctypes.sizeof(self.key_type)
        cur: ctypes.Array[ctypes.c_char] | None = None
        while True:
            nxt = ctypes.create_string_buffer(size)
            if not syscall.map_next_key(self.fd, cur, nxt):
                return
            yield self.key_type.from_buffer_copy(nxt.raw)
            cur = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    def clear(self) -> int:
        """Delete every element of a hash-like map; returns how many were deleted."""
        n = 0
        for key in list(self.keys()):
            n += self.delete(key)
        return n


def layout(ctype: type[Any]) -> list[tuple[str, int, int]]:
    """(field, offset, size) of a ctypes Structure, for comparing the two sides of a header."""
    out = []
    for field in ctype._fields_:
        name = field[0]
        desc = getattr(ctype, name)
        out.append((name, desc.offset, desc.size))
    return out
