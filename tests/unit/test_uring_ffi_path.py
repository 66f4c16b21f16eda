"""The liburing-ffi binding path, on a real liburing-ffi.so.

Debian 12's liburing (2.3) has no liburing-ffi.so, so on this host the bindings normally run
through fastpath's shim. Set-up unpacks Debian's next liburing beside it (see
scripts/fetch-liburing.sh) and builds the shim against that release's headers; these tests
run the binding and echo-core suites again with that liburing-ffi.so as the binding and the
layout check done against that release's structs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NEXT = Path(sys.prefix) / "lib" / "fastpath" / "liburing-next"
FFI = NEXT / "root" / "usr" / "lib" / "x86_64-linux-gnu" / "liburing-ffi.so.2"
SHIM = NEXT / "libfastpath_uring_ffi.so"


@pytest.fixture(scope="module")
def ffi_env() -> dict[str, str]:
    if not (FFI.is_file() and SHIM.is_file()):
        pytest.skip(f"no newer liburing under {NEXT}: run scripts/setup-host.sh")
    return {**os.environ, "FASTPATH_LIBURING": str(FFI), "FASTPATH_URING_SHIM": str(SHIM)}


def test_probe_reports_the_ffi_binding(ffi_env):
    out = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "fastpath"), "uring", "probe", "--json"],
        env=ffi_env, capture_output=True, text=True, timeout=60, check=True,
    )
    report = json.loads(out.stdout)
    assert report["binding"] == "ffi"
    assert report["binding_path"] == str(FFI)
    assert report["liburing_version"] == (NEXT / "VERSION").read_text().strip()
    assert report["layout_checked"] is True
    assert report["shim_path"] == str(SHIM)


def test_binding_suites_pass_through_liburing_ffi(ffi_env):
    """Every prep helper, ring, buffer ring and the batched echo core, through liburing-ffi."""
    suites = ["tests/unit/test_uring_liburing.py", "tests/unit/test_uring_echo_core.py"]
    env = {k: v for k, v in ffi_env.items() if not k.startswith("PYTEST_")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail and "skipped" not in tail, tail

