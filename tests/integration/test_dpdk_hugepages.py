"""Hugepage mounts on the real machine: mount hugetlbfs for a page size at a temporary
path with the real mount command, see it in `show`, unmount it; `clean` in such a mount
keeps a file a live process maps (without any lock: found in /proc/<pid>/maps) and removes
it once that process is gone. No pages are reserved (a hugetlbfs mount needs none; the
clean test uses one free page for a moment), and the ledger lives in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.dpdk import hugepages as hp
from fastpath.dpdk import hugepools as pools
from fastpath.dpdk.sysfs import REAL_HOST
from fastpath.errors import FastpathError

pytestmark = pytest.mark.integration


def test_mount_show_unmount_real(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting hugetlbfs needs root")
    sizes = pools.page_sizes(REAL_HOST)
    if not sizes:
        pytest.skip("this kernel has no hugepage support")
    # A size not mounted yet if there is one; else a second mount of one at our own path
    # (the kernel allows several mounts of a size).
    mounted = {m.size_kb for m in hp.mounts(REAL_HOST, with_files=False)}
    size_kb = next((s for s in reversed(sizes) if s not in mounted), sizes[-1])
    ledger = pools.Ledger(tmp_path / "ledger.json")
    target = str(tmp_path / f"huge-{pools.format_kb(size_kb)}")
    try:
        with pytest.raises(FastpathError, match="was not mounted by fastpath"):
            hp.unmount(path=target, host=REAL_HOST, ledger=ledger)
        path, new = hp.mount(size_kb, target, host=REAL_HOST, ledger=ledger)
        assert (path, new) == (target, True)
        shown = hp.show(REAL_HOST, ledger)
        assert any(m["path"] == target and m["pagesize"] == pools.format_kb(size_kb)
                   for m in shown["mounts"])
        assert hp.mount(size_kb, target, host=REAL_HOST, ledger=ledger) == (target, False)
        assert hp.unmount(size_kb, host=REAL_HOST, ledger=ledger) == [target]
        assert all(m.path != target for m in hp.mounts(REAL_HOST, with_files=False))
    finally:
        if any(m.path == target for m in hp.mounts(REAL_HOST, with_files=False)):
            subprocess.run(["umount", target], check=False)


MAPPER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
os.ftruncate(fd, int(sys.argv[2]))
m = mmap.mmap(fd, int(sys.argv[2]))
m[0] = 1
print("mapped", flush=True)
sys.stdin.read()
"""


def test_clean_keeps_a_mapped_file_until_its_process_ends(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting hugetlbfs needs root")
    size_kb = pools.default_page_kb(REAL_HOST)
    if size_kb is None or pools.read_pool(REAL_HOST, size_kb).free < 2:
        pytest.skip("needs 2 free hugepages of the default size")
    ledger = pools.Ledger(tmp_path / "ledger.json")
    target = str(tmp_path / "huge")
    prefix = f"fastpath-cleantest-{os.getpid()}"
    live, stale = Path(target, f"{prefix}map_0"), Path(target, f"{prefix}map_1")
    child = None
    try:
        hp.mount(size_kb, target, host=REAL_HOST, ledger=ledger)
        stale.touch()
        child = subprocess.Popen([sys.executable, "-c", MAPPER, str(live), str(size_kb * 1024)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "mapped"
        assert not hp.file_in_use(live), "the mapper holds no lock: only its maps tell"

        dry = hp.clean(REAL_HOST, dry_run=True, mount_path=target)
        assert [f.path for f in dry.stale] == [str(stale)] and dry.in_use == 1
        assert stale.exists()
        done = hp.clean(REAL_HOST, mount_path=target, prefix=prefix)
        assert [(f.path, f.removed) for f in done.stale] == [(str(stale), True)]
        assert live.exists() and not stale.exists()

        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=10) == 0
        gone = hp.clean(REAL_HOST, mount_path=target)
        assert [(f.path, f.removed) for f in gone.stale] == [(str(live), True)]
        assert not live.exists()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        for p in (live, stale):
            p.unlink(missing_ok=True)
        if any(m.path == target for m in hp.mounts(REAL_HOST, with_files=False)):
            hp.unmount(path=target, host=REAL_HOST, ledger=ledger)
