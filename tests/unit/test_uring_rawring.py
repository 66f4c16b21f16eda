"""fastpath.uring.rawring: the raw-syscall ring doctor probes with, and the one multishot
probe that doctor and `fastpath uring probe` share, on the running kernel."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.uring import abi
from fastpath.uring.rawring import RawBufferRing, RawRing, multishot_round_trip, why_not

REPO = Path(__file__).resolve().parents[2]


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_round_trip_sees_multishot_accept_and_recv() -> None:
    before = _open_fds()
    with RawRing(16) as ring:
        result = multishot_round_trip(ring)
    assert result["accept"] and result["recv"], result
    for key in ("accept_cqe", "recv_cqe"):
        assert result[key][1] & abi.IORING_CQE_F_MORE
    assert result["recv_cqe"][0] == len(b"fastpath doctor")
    assert result["cancel_cqe"] == (0, 0)
    assert _open_fds() == before, "the probe left file descriptors open"


def test_nop_and_opcode_table() -> None:
    with RawRing(4) as ring:
        ring.submit(abi.OP["NOP"], user_data=42)
        assert ring.reap(42) == (0, 0)
        last_op, ops = ring.probe_ops()
    assert last_op >= abi.OP["SEND_ZC"]
    assert {abi.OP[name] for name in abi.ECHO_OPCODES} <= ops


def test_reap_times_out_without_a_completion() -> None:
    with RawRing(4) as ring:
        assert ring.reap(7, timeout=0.05) is None


def test_setup_refusal_is_an_oserror_with_its_errno() -> None:
    with pytest.raises(OSError) as exc:
        RawRing(0)
    assert exc.value.errno == errno.EINVAL


def test_buffer_group_registered_twice_is_refused() -> None:
    with RawRing(4) as ring:
        first = RawBufferRing(ring, group=3, entries=2, size=32)
        try:
            with pytest.raises(OSError) as exc:
                RawBufferRing(ring, group=3, entries=2, size=32)
            assert exc.value.errno == errno.EEXIST
        finally:
            first.close()


@pytest.mark.parametrize(
    ("result", "which", "detail"),
    [
        ({"accept_cqe": None}, "accept", "no completion within 1 s"),
        ({"accept_cqe": (-errno.EINVAL, 0)}, "accept", "EINVAL (Invalid argument)"),
        ({"accept_cqe": (5, 0)}, "accept", "accept completed without F_MORE"),
        ({"buffer_ring_error": errno.EINVAL}, "recv",
         "registering a provided-buffer ring failed: EINVAL"),
        ({"recv_cqe": (3, abi.IORING_CQE_F_MORE)}, "recv",
         "the data read back differs from what was sent"),
    ],
)  # fmt: skip
def test_why_not_names_the_cause(result: dict[str, object], which: str, detail: str) -> None:
    assert why_not(result, which) == detail


def test_doctor_rows_need_no_liburing() -> None:
    """doctor runs before set-up: its io_uring rows load neither liburing nor the shim."""
    script = (
        "import json, sys\n"
        "from fastpath.doctor import uring as d\n"
        "rows = [d.probe_io_uring(), d.probe_io_uring_opcodes(), d.probe_io_uring_multishot()]\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(json.dumps({'status': [r.status.name for r in rows],\n"
        "                  'mapped': 'liburing' in maps or 'fastpath_uring' in maps,\n"
        "                  'bindings': 'fastpath.uring.liburing' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "FASTPATH_LIBURING": "/nonexistent/liburing.so",
           "FASTPATH_URING_SHIM": "/nonexistent/shim.so"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got == {"status": ["OK", "OK", "OK"], "mapped": False, "bindings": False}, out.stderr
