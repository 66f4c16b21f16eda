"""`fastpath uring probe`: what this kernel and liburing offer fastpath, found by using it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from fastpath.errors import FastpathError
from fastpath.uring.abi import ECHO_OPCODES, FEATURE_NAMES, SETUP_FLAG_NAMES, flag_names
from fastpath.uring.liburing import load, strerror
from fastpath.uring.ring import Probe, Ring


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
