"""`fastpath demo lb`: the embedded topology, real connections, weights and drain applied
half-way, and nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastpath.apps.lb import store
from fastpath.bpf import xdp
from fastpath.labs import lb_demo
from fastpath.netns import list_labs

pytestmark = pytest.mark.integration


def test_demo_lb(netns_required):
    if any(s.name == lb_demo.LAB for s in list_labs()):
        pytest.skip(f"a lab {lb_demo.LAB} from another run is up")
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", "demo", "lb", "--seconds", "4", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    answers = out["answers"]
    assert {"b1", "b2", "b3"} <= set(answers), answers
    assert answers.get("error", 0) <= 2, answers
    status = {b["backend"]: (b["weight"], b["status"]) for b in out["backends"]}
    assert status == {"10.20.2.11:80": (2, "active"), "10.20.2.12:80": (1, "active"),
                      "10.20.2.13:80": (1, "drained")}
    # Every distinct client tuple that got an answer began as a new flow (a reused port meets
    # the flow of its earlier connection).
    assert 0.5 * sum(answers.values()) <= out["client_ports"] <= sum(answers.values())
    assert sum(b["new_flows"] for b in out["backends"]) >= out["client_ports"]
    assert not any(s.name == lb_demo.LAB for s in list_labs())
    ns = f"{lb_demo.LAB}-lb"
    assert not xdp.pin_dir("eth0", ns).exists() and not store.state_path("eth0", ns).exists()
    assert not xdp.pin_dir("lb-eth0", f"{lb_demo.LAB}-sw").exists()
