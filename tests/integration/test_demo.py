"""`make demo`'s job: the bundled lab, XDP counting real traffic, full clean-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastpath.bpf import xdp

pytestmark = pytest.mark.integration


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_demo_counts_every_datagram_and_cleans_up(netns_required):
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "counter", "--seconds", "2",
                          "--json"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["mode"] == "native"
    assert out["udp_sent"] > 1000
    assert out["counters"]["watched"]["packets"] == out["udp_sent"]
    assert not [n for n in _netns() if n.startswith("fpdemo")]
    assert not (xdp.PIN_ROOT / "fpdemo-server").exists()


def test_demo_rejects_bad_duration():
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "--seconds", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == ["fastpath: error: --seconds 0 out of range; use 1 to 60"]
