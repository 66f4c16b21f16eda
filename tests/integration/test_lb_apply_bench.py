"""`fastpath bench lb-apply --quick` through the runner API: real `lb apply` runs against a
real attachment, every point's changes checked by the scenario, the curve judged and
explained, and the lab and attachment gone afterwards."""

from __future__ import annotations

import os

import pytest

from fastpath.bench.registry import load_scenario
from fastpath.bench.runner import run_scenario
from fastpath.core.namespaces import list_netns

pytestmark = pytest.mark.integration


def test_lb_apply_quick_run():
    lab = f"fpla{os.getpid() % 100000}"  # the scenario's lab name in this process
    result = run_scenario(load_scenario("lb-apply"), quick=True, log=lambda _msg: None)
    assert result.contenders == ["10", "100", "1000"] and not result.skipped
    for point in result.contenders:
        apply_s, reapply_s, dry_s = (result.values(m, point)[0] for m in ("apply_s", "reapply_s", "dry_s"))
        assert 0 < dry_s and 0 < reapply_s and 0 < apply_s, point
    # writing 1000 VIPs' tables and entries costs more than parsing their file
    assert result.values("apply_s", "1000")[0] > result.values("dry_s", "1000")[0]
    assert len(result.explanation) == 3
    assert not [ns for ns in list_netns() if ns.startswith(lab)]
