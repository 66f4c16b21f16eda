"""Hugepage mounts on the real machine: mount hugetlbfs for a page size at a temporary
path with the real mount command, see it in `show`, unmount it. No pages are reserved
(a hugetlbfs mount needs none), and the ledger lives in tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fastpath.dpdk import hugepages as hp
from fastpath.dpdk.sysfs import REAL_HOST
from fastpath.errors import FastpathError

pytestmark = pytest.mark.integration


def test_mount_show_unmount_real(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting hugetlbfs needs root")
    sizes = hp.page_sizes(REAL_HOST)
    if not sizes:
        pytest.skip("this kernel has no hugepage support")
    # A size not mounted yet if there is one; else a second mount of one at our own path
    # (the kernel allows several mounts of a size).
    mounted = {m.size_kb for m in hp.mounts(REAL_HOST, with_files=False)}
    size_kb = next((s for s in reversed(sizes) if s not in mounted), sizes[-1])
    ledger = hp.Ledger(tmp_path / "ledger.json")
    target = str(tmp_path / f"huge-{hp.format_kb(size_kb)}")
    try:
        with pytest.raises(FastpathError, match="was not mounted by fastpath"):
            hp.unmount(path=target, host=REAL_HOST, ledger=ledger)
        path, new = hp.mount(size_kb, target, host=REAL_HOST, ledger=ledger)
        assert (path, new) == (target, True)
        shown = hp.show(REAL_HOST, ledger)
        assert any(m["path"] == target and m["pagesize"] == hp.format_kb(size_kb)
                   for m in shown["mounts"])
        assert hp.mount(size_kb, target, host=REAL_HOST, ledger=ledger) == (target, False)
        assert hp.unmount(size_kb, host=REAL_HOST, ledger=ledger) == [target]
        assert all(m.path != target for m in hp.mounts(REAL_HOST, with_files=False))
    finally:
        if any(m.path == target for m in hp.mounts(REAL_HOST, with_files=False)):
            subprocess.run(["umount", target], check=False)
