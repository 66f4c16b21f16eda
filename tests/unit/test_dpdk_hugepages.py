"""Hugepages (fastpath.dpdk.hugepools, fastpath.dpdk.hugepages): size syntax, total vs
per-node reservations, the ledger that makes release give back only fastpath's pages, mounts
and stale files.

Most tests run against a fake two-node sysfs tree (`FakeHugeKernel`, which spreads and caps
pages like the kernel does). The `real_sysfs` tests change the real 2 MiB pool by a few pages
and always put the original counts back.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.cli import main
from fastpath.dpdk import hugepages as hp
from fastpath.dpdk import hugepools as pools
from fastpath.dpdk.sysfs import REAL_HOST, Host
from fastpath.errors import FastpathError

KB_2M = 2048
KB_1G = 1024 * 1024


@dataclass(frozen=True)
class FakeHugeKernel(Host):
    """A fake sysfs with NUMA nodes 0 and 1. Writing a global nr_hugepages spreads pages
    over the nodes round-robin, a node's nr_hugepages changes that node only; `capacity`
    caps what each (size, node) pool can get, like memory running out."""

    capacity: dict[tuple[int, int], int] = field(default_factory=dict, compare=False)

    def write(self, absolute: str | os.PathLike[str], value: str) -> None:
        path = str(absolute)
        m = re.fullmatch(r"/sys/kernel/mm/hugepages/hugepages-(\d+)kB/nr_hugepages", path)
        n = re.fullmatch(r"/sys/devices/system/node/node(\d+)/hugepages/hugepages-(\d+)kB/"
                         r"nr_hugepages", path)
        if m:
            self._set_total(int(m.group(1)), int(value))
        elif n:
            self._set_node(int(n.group(2)), int(n.group(1)), int(value))
        else:
            super().write(path, value)

    def _node_count(self, size_kb: int, node: int) -> int:
        return self.read_int(f"{pools.pool_dir(size_kb, node)}/nr_hugepages")

    def _set_node(self, size_kb: int, node: int, want: int) -> None:
        got = min(want, self.capacity.get((size_kb, node), 1 << 30))
        in_use = got_in_use(self, size_kb, node)
        got = max(got, in_use)
        base = pools.pool_dir(size_kb, node)
        Host.write(self, f"{base}/nr_hugepages", str(got))
        Host.write(self, f"{base}/free_hugepages", str(got - in_use))
        self._sum(size_kb)

    def _set_total(self, size_kb: int, want: int) -> None:
        counts = {n: self._node_count(size_kb, n) for n in (0, 1)}
        total = sum(counts.values())
        node = 0
        stuck = 0
        while total != want and stuck < 2:
            step = 1 if want > total else -1
            before = counts[node]
            self._set_node(size_kb, node, counts[node] + step)
            counts[node] = self._node_count(size_kb, node)
            stuck = stuck + 1 if counts[node] == before else 0
            total = sum(counts.values())
            node = 1 - node

    def _sum(self, size_kb: int) -> None:
        base = pools.pool_dir(size_kb, None)
        for f in ("nr_hugepages", "free_hugepages"):
            total = sum(self.read_int(f"{pools.pool_dir(size_kb, n)}/{f}") for n in (0, 1))
            Host.write(self, f"{base}/{f}", str(total))


def got_in_use(host: Host, size_kb: int, node: int) -> int:
    base = pools.pool_dir(size_kb, node)
    return host.read_int(f"{base}/nr_hugepages") - host.read_int(f"{base}/free_hugepages")


def make_tree(tmp_path: Path, **kw: object) -> FakeHugeKernel:
    root = tmp_path / "root"
    for size in (KB_2M, KB_1G):
        g = root / f"sys/kernel/mm/hugepages/hugepages-{size}kB"
        g.mkdir(parents=True)
        for f in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                  "nr_overcommit_hugepages"):
            (g / f).write_text("0\n")
        for node in (0, 1):
            d = root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB"
            d.mkdir(parents=True)
            for f in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
                (d / f).write_text("0\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal: 24000000 kB\nHugepagesize:       2048 kB\n")
    (root / "dev/hugepages").mkdir(parents=True)
    (root / "proc/mounts").write_text(
        "proc /proc proc rw 0 0\n"
        "nodev /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n")
    return FakeHugeKernel(root, **kw)  # type: ignore[arg-type]


@pytest.fixture
def host(tmp_path: Path) -> FakeHugeKernel:
    return make_tree(tmp_path)


@pytest.fixture
def ledger(tmp_path: Path) -> pools.Ledger:
    return pools.Ledger(tmp_path / "ledger.json")


def pages(n: int) -> pools.SizeRequest:
    return pools.SizeRequest(f"{n}pages", pages=n)


# ---------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("text", "nbytes", "npages"),
    [("512M", 512 << 20, None), ("2G", 2 << 30, None), ("1.5GiB", 3 << 29, None),
     ("64mb", 64 << 20, None), ("256pages", None, 256), ("8p", None, 8), ("1 page", None, 1)],
)
def test_parse_size(text: str, nbytes: int | None, npages: int | None) -> None:
    req = pools.parse_size(text)
    assert (req.nbytes, req.pages) == (nbytes, npages)


@pytest.mark.parametrize(
    ("text", "why"),
    [("12", "bare number is ambiguous"), ("12X", "give an amount with a unit"),
     ("", "give an amount"), ("0M", "must be above 0"), ("0pages", "above 0"),
     ("-5M", "give an amount"), ("1e3M", "give an amount")],
)
def test_parse_size_errors(text: str, why: str) -> None:
    with pytest.raises(FastpathError, match=why):
        pools.parse_size(text)


@given(st.integers(min_value=1, max_value=1 << 20), st.sampled_from(["K", "M", "G"]))
def test_size_rounds_up_to_whole_pages(n: int, unit: str) -> None:
    req = pools.parse_size(f"{n}{unit}")
    got = req.pages_of(KB_2M)
    assert got * 2 * (1 << 20) >= req.nbytes > (got - 1) * 2 * (1 << 20)


@pytest.mark.parametrize(("text", "kb"), [("2M", 2048), ("1G", KB_1G), ("2048kB", 2048)])
def test_parse_pagesize(text: str, kb: int) -> None:
    assert pools.parse_pagesize(text) == kb
    assert pools.format_kb(kb) in ("2M", "1G")


@pytest.mark.parametrize("text", ["2", "big", "2X", "-2M"])
def test_parse_pagesize_errors(text: str) -> None:
    with pytest.raises(FastpathError, match="bad page size"):
        pools.parse_pagesize(text)


def test_unsupported_pagesize_and_node(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake sysfs: 4M is not a size here; node 5 does not exist."""
    with pytest.raises(FastpathError, match="4M is not a hugepage size here; available: 2M, 1G"):
        pools.reserve(pages(1), 4096, host=host, ledger=ledger)
    with pytest.raises(FastpathError, match="no NUMA node 5; nodes: 0, 1"):
        pools.reserve(pages(1), KB_2M, node=5, host=host, ledger=ledger)


# ---------------------------------------------------------------- total vs node


def test_reserve_total_spreads_over_nodes(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake two-node sysfs: a system-wide 512M reservation is 256 pages in total, which the
    (fake) kernel spreads 128/128; release takes them all back."""
    change = pools.reserve(pools.parse_size("512M"), KB_2M, host=host, ledger=ledger)
    assert (change.before, change.wanted, change.granted, change.changed) == (0, 256, 256, True)
    assert [pools.read_pool(host, KB_2M, n).total for n in (0, 1)] == [128, 128]
    assert ledger.load()["reservations"] == {"2048kB/all": {"baseline": 0, "reserved": 256}}
    back = pools.release(KB_2M, host=host, ledger=ledger)
    assert (back.before, back.granted) == (256, 0)
    assert pools.read_pool(host, KB_2M).total == 0
    assert ledger.load()["reservations"] == {}


def test_reserve_one_node_only(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake two-node sysfs: --node 1 sets node 1's own count; node 0 is untouched."""
    pools.reserve(pages(10), KB_2M, host=host, ledger=ledger)  # 5 + 5
    change = pools.reserve(pages(100), KB_2M, node=1, host=host, ledger=ledger)
    assert (change.scope, change.before, change.granted) == ("node 1", 5, 100)
    assert pools.read_pool(host, KB_2M, 0).total == 5
    assert pools.read_pool(host, KB_2M).total == 105
    pools.release(KB_2M, node=1, host=host, ledger=ledger)
    assert [pools.read_pool(host, KB_2M, n).total for n in (0, 1)] == [5, 5]


def test_reserve_never_lowers(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake sysfs: asking for less than present changes nothing and records nothing."""
    host._set_total(KB_2M, 300)
    change = pools.reserve(pools.parse_size("64M"), KB_2M, host=host, ledger=ledger)
    assert not change.changed and "already 300 pages" in change.note
    assert pools.read_pool(host, KB_2M).total == 300
    assert ledger.load()["reservations"] == {}


def test_release_never_clears_pages_it_did_not_reserve(host: FakeHugeKernel,
                                                       ledger: pools.Ledger) -> None:
    """Fake sysfs: 300 pages reserved by someone else stay after release."""
    host._set_total(KB_2M, 300)
    change = pools.release(KB_2M, host=host, ledger=ledger)
    assert not change.changed and "belong to someone else" in change.note
    assert pools.read_pool(host, KB_2M).total == 300


def test_release_keeps_pages_added_by_others_meanwhile(host: FakeHugeKernel,
                                                       ledger: pools.Ledger) -> None:
    """Fake sysfs: baseline 10, fastpath raises to 50, someone raises to 70: release gives
    back fastpath's 40 and leaves 30."""
    host._set_total(KB_2M, 10)
    pools.reserve(pages(50), KB_2M, host=host, ledger=ledger)
    host._set_total(KB_2M, 70)
    change = pools.release(KB_2M, host=host, ledger=ledger)
    assert (change.before, change.granted) == (70, 30)


def test_release_never_below_baseline(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake sysfs: someone lowered the pool after fastpath's reservation; release does not
    take it below the count fastpath found."""
    host._set_total(KB_2M, 10)
    pools.reserve(pages(50), KB_2M, host=host, ledger=ledger)
    host._set_total(KB_2M, 20)
    change = pools.release(KB_2M, host=host, ledger=ledger)
    assert change.granted == 10


def test_release_with_pages_in_use(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake sysfs: pages still mapped cannot be freed; release reports what it got."""
    pools.reserve(pages(8), KB_2M, host=host, ledger=ledger)
    for node in (0, 1):  # 3 pages in use on each node
        Host.write(host, f"{pools.pool_dir(KB_2M, node)}/free_hugepages", "1")
    change = pools.release(KB_2M, host=host, ledger=ledger)
    assert change.granted == 6 and "released 2 of the 8" in change.note


def test_1g_shortfall_rolls_back_and_suggests_boot_parameters(tmp_path: Path,
                                                              ledger: pools.Ledger) -> None:
    """Fake sysfs where each node has room for only 2 1G pages: asking for 8 gets 4, which
    is rolled back, and the error names the boot parameters."""
    host = make_tree(tmp_path, capacity={(KB_1G, 0): 2, (KB_1G, 1): 2})
    with pytest.raises(FastpathError) as err:
        pools.reserve(pools.parse_size("8G"), KB_1G, host=host, ledger=ledger)
    msg = str(err.value)
    assert "granted only 4 of 8 1G pages (system-wide total); rolled back to 0" in msg
    assert "'hugepagesz=1G hugepages=8'" in msg and "default_hugepagesz=1G" in msg
    assert pools.read_pool(host, KB_1G).total == 0
    assert ledger.load()["reservations"] == {}


def test_2m_shortfall_on_a_node_hints_compaction(tmp_path: Path, ledger: pools.Ledger) -> None:
    host = make_tree(tmp_path, capacity={(KB_2M, 1): 10})
    with pytest.raises(FastpathError, match="memory on node 1 is short.*compact_memory"):
        pools.reserve(pages(20), KB_2M, node=1, host=host, ledger=ledger)
    assert pools.read_pool(host, KB_2M, 1).total == 0


# ---------------------------------------------------------------- mounts and stale files


@pytest.fixture
def locked_file(host: FakeHugeKernel) -> Iterator[Path]:
    """A hugepage file held with a shared flock, as a live DPDK process holds its pages."""
    live = host.path("/dev/hugepages/rtemap_0")
    live.write_bytes(b"x" * 4096)
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    yield live
    os.close(fd)


def test_show_reports_nodes_mounts_and_stale_files(host: FakeHugeKernel, ledger: pools.Ledger,
                                                   locked_file: Path) -> None:
    """Fake sysfs: one locked (live) and one unlocked (stale) hugepage file in the mount."""
    host.path("/dev/hugepages/deadmap_3").write_bytes(b"y" * 8192)
    pools.reserve(pages(4), KB_2M, host=host, ledger=ledger)
    data = hp.show(host, ledger)
    assert data["default_pagesize"] == "2M"
    two_m = data["sizes"][0]
    assert (two_m["pagesize"], two_m["total"], two_m["free"]) == ("2M", 4, 4)
    assert [n["total"] for n in two_m["nodes"]] == [2, 2]
    assert two_m["mounts"] == ["/dev/hugepages"]
    assert two_m["fastpath_reserved"] == {"2048kB/all": {"baseline": 0, "reserved": 4}}
    assert data["sizes"][1]["mounts"] == []
    (mount,) = data["mounts"]
    assert mount["files"] == 2 and mount["files_in_use"] == 1
    assert mount["stale_files"] == ["deadmap_3"] and mount["stale_bytes"] == 8192


def fake_mounter(host: Host) -> tuple[list[list[str]], hp.Mounter]:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> None:
        calls.append(argv)
        mounts = host.path("/proc/mounts")
        rel = "/" + str(Path(argv[-1]).relative_to(host.root))
        if argv[0] == "mount":
            opts = argv[4]
            mounts.write_text(mounts.read_text() + f"nodev {rel} hugetlbfs rw,{opts} 0 0\n")
        else:
            mounts.write_text("".join(ln + "\n" for ln in mounts.read_text().splitlines()
                                      if f" {rel} " not in ln))

    return calls, run


def test_mount_and_unmount_only_what_fastpath_mounted(host: FakeHugeKernel,
                                                      ledger: pools.Ledger) -> None:
    """Fake sysfs + fake mount command: 2M is already mounted (not by fastpath), 1G gets
    mounted at /dev/hugepages-1G; unmount removes only that one."""
    calls, run = fake_mounter(host)
    assert hp.mount(KB_2M, host=host, ledger=ledger, mounter=run) == ("/dev/hugepages", False)
    path, new = hp.mount(KB_1G, host=host, ledger=ledger, mounter=run)
    assert (path, new) == ("/dev/hugepages-1G", True)
    assert calls[0][:5] == ["mount", "-t", "hugetlbfs", "-o", "pagesize=1G"]
    assert [m.path for m in hp.mounts(host)] == ["/dev/hugepages", "/dev/hugepages-1G"]
    with pytest.raises(FastpathError, match="/dev/hugepages was not mounted by fastpath"):
        hp.unmount(path="/dev/hugepages", host=host, ledger=ledger, mounter=run)
    assert hp.unmount(host=host, ledger=ledger, mounter=run) == ["/dev/hugepages-1G"]
    assert [m.path for m in hp.mounts(host)] == ["/dev/hugepages"]
    assert ledger.load()["mounts"] == []


def test_unmount_refuses_files_in_use(host: FakeHugeKernel, ledger: pools.Ledger) -> None:
    """Fake sysfs: a mount with a locked hugepage file stays mounted."""
    calls, run = fake_mounter(host)
    path, _ = hp.mount(KB_1G, "/mnt/huge1g", host=host, ledger=ledger, mounter=run)
    live = host.path(path) / "appmap_0"
    live.write_bytes(b"z")
    with open(live) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        with pytest.raises(FastpathError, match="1 hugepage files in use"):
            hp.unmount(KB_1G, host=host, ledger=ledger, mounter=run)
    assert len(calls) == 1


# ---------------------------------------------------------------- CLI bad input


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["reserve", "12"], "bare number is ambiguous"),
     (["reserve", "5X"], "give an amount with a unit"),
     (["reserve", "1G", "--pagesize", "3M"], "3M is not a hugepage size here"),
     (["reserve", "1G", "--pagesize", "huge"], "bad page size 'huge'"),
     (["reserve", "1G", "--node", "x"], "bad node 'x'"),
     (["release", "--node", "7"], "no NUMA node 7")],
)
def test_cli_bad_input_one_line(host: FakeHugeKernel, capsys: pytest.CaptureFixture[str],
                                argv: list[str], message: str) -> None:
    """Fake sysfs through the CLI: each bad input is one error line and exit 1."""
    rc = main(["dpdk", "--root", str(host.root), "hugepages", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("fastpath: error: ") and message in err[0]


def test_cli_show_json(host: FakeHugeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dpdk", "--root", str(host.root), "hugepages", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["pagesize"] for s in data["sizes"]] == ["2M", "1G"]


# ---------------------------------------------------------------- real sysfs

REAL_2M = f"{pools.GLOBAL_DIR}/hugepages-{KB_2M}kB/nr_hugepages"


@pytest.fixture
def real_pool() -> Iterator[dict[str | int, int]]:
    """The real 2 MiB pool's counts (total and per node), put back after the test."""
    if os.geteuid() != 0:
        pytest.skip("changing hugepage pools needs root")
    if not REAL_HOST.exists(REAL_2M):
        pytest.skip("this kernel has no 2 MiB hugepage pool")
    before: dict[str | int, int] = {"all": pools.read_pool(REAL_HOST, KB_2M).total}
    for n in pools.nodes(REAL_HOST):
        before[n] = pools.read_pool(REAL_HOST, KB_2M, n).total
    yield before
    for key, count in before.items():
        node = None if key == "all" else int(key)
        if pools.read_pool(REAL_HOST, KB_2M, node).total != count:
            REAL_HOST.write(f"{pools.pool_dir(KB_2M, node)}/nr_hugepages", str(count))
    assert pools.read_pool(REAL_HOST, KB_2M).total == before["all"]


def test_real_sysfs_reserve_and_release_total(real_pool: dict[str | int, int],
                                              ledger: pools.Ledger) -> None:
    """Real sysfs: raise the 2 MiB total by 2 pages, read back the grant, release exactly
    those 2 (the pages present before stay)."""
    start = real_pool["all"]
    change = pools.reserve(pages(start + 2), KB_2M, host=REAL_HOST, ledger=ledger)
    assert (change.before, change.granted) == (start, start + 2)
    assert pools.read_pool(REAL_HOST, KB_2M).total == start + 2
    back = pools.release(KB_2M, host=REAL_HOST, ledger=ledger)
    assert back.granted == start
    # A second release finds nothing of fastpath's and leaves the pool alone.
    again = pools.release(KB_2M, host=REAL_HOST, ledger=ledger)
    assert not again.changed and pools.read_pool(REAL_HOST, KB_2M).total == start


def test_real_sysfs_reserve_on_node0(real_pool: dict[str | int, int],
                                     ledger: pools.Ledger) -> None:
    """Real sysfs: node 0's own count goes up by 2 and comes back."""
    if 0 not in real_pool:
        pytest.skip("no NUMA node 0 with hugepages in sysfs")
    start = real_pool[0]
    change = pools.reserve(pages(start + 2), KB_2M, node=0, host=REAL_HOST, ledger=ledger)
    assert change.granted == start + 2 and change.scope == "node 0"
    assert pools.read_pool(REAL_HOST, KB_2M).total == real_pool["all"] + 2
    pools.release(KB_2M, node=0, host=REAL_HOST, ledger=ledger)
    assert pools.read_pool(REAL_HOST, KB_2M, 0).total == start


def test_real_sysfs_1g_page_granted_or_explained(ledger: pools.Ledger) -> None:
    """Real sysfs: one 1 GiB page is either granted and given back, or refused at run time
    with the boot parameters that would reserve it, leaving the pool as it was."""
    if os.geteuid() != 0:
        pytest.skip("changing hugepage pools needs root")
    if KB_1G not in pools.page_sizes(REAL_HOST):
        pytest.skip("this kernel has no 1 GiB hugepages")
    start = pools.read_pool(REAL_HOST, KB_1G).total
    try:
        change = pools.reserve(pages(start + 1), KB_1G, host=REAL_HOST, ledger=ledger)
    except FastpathError as exc:
        assert "hugepagesz=1G" in str(exc)
        assert pools.read_pool(REAL_HOST, KB_1G).total == start
        return
    try:
        assert change.granted == start + 1
        assert pools.release(KB_1G, host=REAL_HOST, ledger=ledger).granted == start
    finally:
        if pools.read_pool(REAL_HOST, KB_1G).total != start:
            REAL_HOST.write(f"{pools.pool_dir(KB_1G, None)}/nr_hugepages", str(start))


# ---------------------------------------------------------------- clean


def maps_line(path: str, st: os.stat_result | None = None) -> str:
    """A /proc/<pid>/maps line as the kernel writes it for a shared file mapping."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}" if st else "00:00"
    ino = st.st_ino if st else 1
    return f"7f1c00000000-7f1c00200000 rw-s 00000000 {dev} {ino}                   {path}\n"


def fake_process(host: Host, pid: int, lines: list[str]) -> None:
    d = host.path(f"/proc/{pid}")
    d.mkdir(parents=True)
    anon = "7ffd0000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n"
    (d / "maps").write_text(anon + "".join(lines))


@pytest.fixture
def huge_files(host: FakeHugeKernel, locked_file: Path) -> dict[str, Path]:
    """/dev/hugepages with: two stale files of prefix "dead", one of "old"; rtemap_0 locked
    (locked_file); livemap_0 mapped by pid 4242 under another path (another mount
    namespace: found by device and inode); bypath_map_0 mapped by path by pid 77; and
    qemu-ram, unused but not named like DPDK's."""
    base = host.path("/dev/hugepages")
    files = {name: base / name for name in ("deadmap_0", "deadmap_1", "oldmap_5", "livemap_0",
                                            "bypath_map_0", "qemu-ram")}
    for i, p in enumerate(files.values()):
        p.write_bytes(b"h" * (4096 * (i + 1)))
    files["rtemap_0"] = locked_file
    fake_process(host, 4242, [maps_line("/mnt/elsewhere/livemap_0", files["livemap_0"].stat())])
    fake_process(host, 77, [maps_line("/dev/hugepages/bypath_map_0")])
    (host.path("/proc/self")).mkdir()  # not a pid: ignored
    return files


def test_parse_maps_line() -> None:
    st = os.stat("/")
    assert hp.parse_maps_line(maps_line("/dev/hugepages/a", st)) == (
        st.st_dev, st.st_ino, "/dev/hugepages/a")
    assert hp.parse_maps_line(
        "7f00-7f01 rw-s 00000000 00:2f 99 /dev/hugepages/x (deleted)\n"
    ) == (os.makedev(0, 0x2F), 99, "/dev/hugepages/x")
    assert hp.parse_maps_line("7ffd0000-7ffd2000 rw-p 00000000 00:00 0   [stack]") is None
    assert hp.parse_maps_line("garbage") is None
    assert hp.parse_maps_line("7f00-7f01 rw-s 00000000 zz:2f 99 /x") is None


def test_clean_dry_run_lists_only_unused_dpdk_files(host: FakeHugeKernel,
                                                    huge_files: dict[str, Path]) -> None:
    """Fake tree: the dry run names exactly the three stale DPDK files and removes none."""
    result = hp.clean(host, dry_run=True)
    assert [(f.path, f.prefix, f.removed) for f in result.stale] == [
        ("/dev/hugepages/deadmap_0", "dead", False),
        ("/dev/hugepages/deadmap_1", "dead", False),
        ("/dev/hugepages/oldmap_5", "old", False),
    ]
    assert result.stale_bytes == 4096 * (1 + 2 + 3)
    assert result.in_use == 3  # rtemap_0 locked, livemap_0 and bypath_map_0 mapped
    assert result.foreign == ["/dev/hugepages/qemu-ram"]
    assert all(p.exists() for p in huge_files.values())


def test_clean_removes_stale_files_and_keeps_the_rest(host: FakeHugeKernel,
                                                      huge_files: dict[str, Path]) -> None:
    result = hp.clean(host)
    assert [f.path.rsplit("/", 1)[1] for f in result.stale if f.removed] == [
        "deadmap_0", "deadmap_1", "oldmap_5"]
    left = sorted(p.name for p in host.path("/dev/hugepages").iterdir())
    assert left == ["bypath_map_0", "livemap_0", "qemu-ram", "rtemap_0"]
    assert hp.clean(host).stale == []  # nothing left to do the second time


def test_clean_one_prefix_and_one_mount(host: FakeHugeKernel,
                                        huge_files: dict[str, Path]) -> None:
    result = hp.clean(host, prefix="old", mount_path="/dev/hugepages/")
    assert [f.path for f in result.stale] == ["/dev/hugepages/oldmap_5"]
    assert not huge_files["oldmap_5"].exists() and huge_files["deadmap_0"].exists()
    with pytest.raises(FastpathError, match="/mnt/nothing is not a hugetlbfs mount"):
        hp.clean(host, mount_path="/mnt/nothing")


def test_clean_keeps_a_file_locked_after_the_scan(host: FakeHugeKernel,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A DPDK process that takes a file between the scan and the unlink keeps it: the
    unlink happens under an exclusive lock, which fails while the file is locked."""
    late = host.path("/dev/hugepages/latemap_0")
    late.write_bytes(b"l")
    holder: list[int] = []

    def scan_then_lock(h: Host, mount_path: str, mapped: hp.MappedFiles | None = None
                       ) -> list[hp.HugeFile]:
        files = [hp.HugeFile("latemap_0", 1, False)]
        fd = os.open(late, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        holder.append(fd)
        return files

    monkeypatch.setattr(hp, "list_files", scan_then_lock)
    try:
        result = hp.clean(host)
    finally:
        for fd in holder:
            os.close(fd)
    assert result.stale == [] and result.in_use == 1 and late.exists()


def test_unreadable_maps_of_a_hugepage_user_stop_clean(host: FakeHugeKernel,
                                                       huge_files: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Maps even root may not read: harmless for a process that maps no hugepages (its
    status says HugetlbPages: 0 kB), but clean removes nothing while one that does hides."""
    for pid, kb in ((9, 0), (10, 4096)):
        fake_process(host, pid, [])
        host.path(f"/proc/{pid}/status").write_text(f"Name:\tproc{pid}\nHugetlbPages:\t{kb} kB\n")
    real_read = Path.read_text

    def deny(self: Path, *a: object, **kw: object) -> str:
        if self.name == "maps" and self.parent.name in ("9", "10"):
            raise PermissionError(13, "Permission denied")
        return real_read(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", deny)
    assert hp.mapped_files(host).hidden == {10: "proc10, 4096 kB"}
    assert hp.show(host)["mounts"][0]["files_in_use"] == 3  # show still works
    with pytest.raises(FastpathError, match=r"cannot read /proc/10/maps \(proc10, 4096 kB"):
        hp.clean(host)
    assert huge_files["deadmap_0"].exists()
    host.path("/proc/10/status").write_text("Name:\tproc10\n")  # unknown use: also refused
    with pytest.raises(FastpathError, match="hugepage use unknown"):
        hp.clean(host, dry_run=True)
    host.path("/proc/10/status").write_text("Name:\tproc10\nHugetlbPages:\t0 kB\n")
    assert len(hp.clean(host).stale) == 3


def test_show_counts_mapped_files_as_in_use(host: FakeHugeKernel, ledger: pools.Ledger,
                                            huge_files: dict[str, Path]) -> None:
    (mount,) = hp.show(host, ledger)["mounts"]
    assert mount["files_in_use"] == 3
    assert mount["stale_files"] == ["deadmap_0", "deadmap_1", "oldmap_5", "qemu-ram"]


def test_cli_clean(host: FakeHugeKernel, huge_files: dict[str, Path],
                   capsys: pytest.CaptureFixture[str]) -> None:
    root = ["dpdk", "--root", str(host.root), "hugepages", "clean"]
    assert main([*root, "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] is True and len(data["stale"]) == 3 and data["in_use"] == 3
    assert data["left_alone"] == ["/dev/hugepages/qemu-ram"]
    assert main([*root, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "would remove 3 stale files (24 KiB)" in out.err and "would remove" in out.out
    assert huge_files["deadmap_0"].exists()
    assert main(root) == 0
    err = capsys.readouterr().err
    assert "removed 3 stale files, 24 KiB of hugepages freed" in err
    assert "3 DPDK hugepage files are in use" in err and "qemu-ram" in err
    assert not huge_files["deadmap_0"].exists()
    assert main(root) == 0
    assert "no stale DPDK hugepage files in /dev/hugepages" in capsys.readouterr().err
