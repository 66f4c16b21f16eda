"""io_uring probes: whether io_uring_setup works (and the sysctl that can turn it off),
which feature flags and opcodes this kernel has, whether multishot accept and multishot recv
with provided buffers post CQEs with IORING_CQE_F_MORE on loopback, and the liburing version
and libraries.

The ring here is fastpath.uring.rawring's, on raw syscalls, so the probes depend on the
kernel alone, not on liburing or fastpath/uring's bindings (doctor runs before set-up too);
the multishot round trip is the one `fastpath uring probe` runs as well.
"""

from __future__ import annotations

import errno
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
from fastpath.uring.abi import ECHO_OPCODES, FEATURES, OP, OPCODES
from fastpath.uring.rawring import RawRing, multishot_round_trip


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
        ring = RawRing(4)
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
        ring = RawRing(4)
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


def probe_io_uring_multishot(root: Path = ROOT) -> Check:
    name = "io-uring-multishot"
    version = parse_kernel_version(_kernel_release(root))
    try:
        ring = RawRing(16)
    except OSError as exc:
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", "see the io-uring row")
    try:
        result = multishot_round_trip(ring)
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
