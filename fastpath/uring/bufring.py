"""Provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19): buffers the kernel picks
from for a recv, handed back once the data is used; see :class:`BufferRing`."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring.liburing import strerror
from fastpath.uring.structs import IoUringBuf, IoUringBufReg, c_size_t, c_u16, c_void_p

if TYPE_CHECKING:
    from fastpath.uring.ring import Ring

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

