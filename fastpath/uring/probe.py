"""`fastpath uring probe`: what this kernel and liburing offer fastpath, found by using it.

The binding, its layout check, the setup flags and the opcode table come through the
bindings (a Ring); the multishot checks are rawring.py's round trip, the same one doctor runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastpath.uring.abi import ECHO_OPCODES, FEATURE_NAMES, SETUP_FLAG_NAMES, flag_names
from fastpath.uring.liburing import load
from fastpath.uring.rawring import RawRing, multishot_round_trip, why_not
from fastpath.uring.ring import Probe, Ring

# `fastpath uring probe` row -> the round trip's result key
MULTISHOT_CHECKS = {"multishot_accept": "accept", "multishot_recv_buffer_ring": "recv"}


def probe_opcodes() -> Probe:
    with Ring(8) as ring:
        return ring.probe()


def multishot_checks() -> dict[str, dict[str, Any]]:
    """{"ok", "detail"} for multishot accept and multishot recv into a buffer ring."""
    try:
        with RawRing(16) as ring:
            result = multishot_round_trip(ring)
    except OSError as exc:
        return {name: {"ok": False, "detail": f"multishot probe: {exc}"} for name in MULTISHOT_CHECKS}
    return {
        name: {"ok": True, "detail": "ok"} if result[key] else {"ok": False, "detail": why_not(result, key)}
        for name, key in MULTISHOT_CHECKS.items()
    }


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
    report["functional"] = multishot_checks()
    return report
