"""`make demo`'s job: the bundled lab, XDP counting real traffic, full clean-up."""

from __future__ import annotations

import json
import os
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


def test_demo_synflood_guard_keeps_legit_clients_in(netns_required):
    """`make demo`'s default: unguarded, the spoofed flood shuts the client out; guarded,
    >= 95 % of its connects succeed and the SYN-ACKs come from XDP."""
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "synflood", "--seconds", "8",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    print(f"\n{out}")
    off, on = out["phases"]
    assert (off["guard"], on["guard"]) == ("off", "on")
    assert off["legit_failed"] >= 3 and off["legit_failed"] >= 0.8 * (off["legit_ok"] + off["legit_failed"])
    total = on["legit_ok"] + on["legit_failed"]
    assert total >= 50, "a connect every 50 ms for 8 s"
    assert on["legit_ok"] >= 0.95 * total, on
    assert out["cookies_sent"] > 0 and on["flood_pps"] > 0
    assert out["ok"] is True and out["problems"] == []
    assert out["engine"] in ("live", "packet")
    assert not [n for n in _netns() if n.startswith("fpsynflood")]
    assert not (xdp.PIN_ROOT / "fpsynflood-server").exists()


def test_demo_synflood_fails_loudly_when_the_flood_dies(netns_required):
    """A flood generator that cannot start (here: an engine name it does not know) ends the
    demo with its error and a non-zero exit, not a success-shaped summary, and the lab goes."""
    env = {**os.environ, "FASTPATH_FLOOD_ENGINE": "warp"}
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "synflood", "--seconds", "2",
                          "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    assert res.stdout == ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("fastpath: error:")]
    assert len(errors) == 1 and "unknown flood engine 'warp'" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not [n for n in _netns() if n.startswith("fpsynflood")]


def test_demo_rejects_bad_duration():
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "--seconds", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == ["fastpath: error: --seconds 0 out of range; use 1 to 60"]
