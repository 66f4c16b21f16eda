"""The kernel matrix's pure parts: package selection, the VM command line, which programs a
load compiled, verdicts and the table. The matrix run itself (`make kernels`) is the
integration check."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastpath.errors import FastpathError
from fastpath.kernels import packages, programs, report, vm

DEPENDS_61 = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n"
MOD = "tests/bpf/test_xdp_count.py"
DEPENDS_612 = "linux-image-6.12-amd64\n  Depends: linux-image-6.12.118+deb12-amd64\n"


def _depends(table: dict[str, str]):
    return lambda meta: packages.parse_depends(table.get(meta, ""))


def test_parse_depends_reads_names_and_skips_virtual_packages():
    text = DEPENDS_61 + "  Depends: <linux-image-virtual>\n  Recommends: firmware-linux-free\n"
    assert packages.parse_depends(text) == ["linux-image-6.1.0-57-amd64"]


def test_stock_kernel_comes_from_the_generic_meta_package():
    pkgs = packages.select("6.1", _depends({"linux-image-amd64": DEPENDS_61}))
    assert (pkgs.abi, pkgs.release) == ("6.1.0-57", "6.1.0-57-amd64")
    assert pkgs.names == ("linux-image-6.1.0-57-amd64", "linux-headers-6.1.0-57-amd64",
                          "linux-headers-6.1.0-57-common")


def test_newer_series_comes_from_its_own_meta_package():
    pkgs = packages.select("6.12", _depends({"linux-image-6.12-amd64": DEPENDS_612,
                                              "linux-image-amd64": DEPENDS_61}))
    assert pkgs.names == ("linux-image-6.12.118+deb12-amd64", "linux-headers-6.12.118+deb12-amd64",
                          "linux-headers-6.12.118+deb12-common")


def test_a_series_is_not_confused_with_its_prefix():
    # 6.1 must not pick 6.12, nor 6.12 the stock 6.1
    assert packages.abi_of("linux-image-6.12.118+deb12-amd64", "6.1") is None
    assert packages.abi_of("linux-image-6.1.0-57-amd64", "6.12") is None
    assert packages.abi_of("linux-image-6.1.0-57-rt-amd64", "6.1") is None
    with pytest.raises(FastpathError, match="no Debian package of Linux 6.12"):
        packages.select("6.12", _depends({"linux-image-amd64": DEPENDS_61}))


def test_a_kernel_name_must_be_a_series():
    with pytest.raises(FastpathError, match="neither a series"):
        packages.select("latest", _depends({}))


def test_kvm_only_with_hardware_virtualisation():
    flags = "processor\t: 0\nflags\t\t: fpu sse2 svm lm\n"
    assert vm.kvm_usable(flags, True)
    assert not vm.kvm_usable(flags, False)
    assert not vm.kvm_usable("flags\t\t: fpu sse2 lm hypervisor\n", True)


def _boot(tmp_path: Path, kvm: bool) -> vm.Boot:
    pkgs = packages.KernelPackages("6.1", "6.1.0-57")
    tree = packages.KernelTree(pkgs, tmp_path / "6.1.0-57" / "root")
    return vm.Boot(tree, packages.Tools(tmp_path / "tools"), Path("/repo"), tmp_path / "out",
                   "/venv/bin/python", kvm=kvm)


def test_vng_command_line(tmp_path):
    cmd = _boot(tmp_path, kvm=False).command("/venv/bin/vng", ["--no-tests"])
    assert cmd[:4] == ["/venv/bin/vng", "--run", str(tmp_path / "6.1.0-57/root/boot/vmlinuz-6.1.0-57-amd64"),
                       "--disable-kvm"]
    for opt in ("--force-9p", "--user", "--rwdir", "--busybox"):
        assert opt in cmd
    opts = next(a for a in cmd if a.startswith("--qemu-opts="))
    assert "mount_tag=fastpath" in opts and opts.endswith("-cpu qemu64")
    guest = cmd[cmd.index("--exec") + 1]
    assert guest.startswith("env PYTHONPATH=/repo ")
    assert "-m fastpath.kernels.guest --outer --moddir " in guest and guest.endswith("--no-tests")
    kvm = _boot(tmp_path, kvm=True).command("vng", [])
    assert "--disable-kvm" not in kvm and not any("qemu64" in a for a in kvm)


def test_harness_loads_count_for_the_data_plane_and_the_harness():
    cflags = ["-DBENCH_PROCESS=lb_process", "-DBENCH_AFTER=lb_bench_forget", "-DFRAME_LEN=74"]
    assert programs.programs_of("lb_process_harness", cflags) == ["restoring_harness", "l4lb", "l4lb_bench"]
    assert programs.programs_of("syn_guard", []) == ["syn_guard"]


def test_every_program_states_its_minimum_kernel():
    from fastpath.bpf.loader import bpf_source_dir

    for path in bpf_source_dir().glob("*.c"):
        assert programs.minimum_kernel(path.stem), path.name
    assert programs.minimum_kernel("syn_guard") == (6, 0)


def test_sweep_extremes_are_accepted_by_the_control_plane():
    programs.check_variants()
    labels = {(v.program, v.label) for v in programs.variants()}
    assert {("syn_guard", "default"), ("syn_guard", "low"), ("syn_guard", "high"), ("l4lb", "high"),
            ("restoring_harness", "syn_guard"), ("l4lb_bench", "default")} <= labels
    from fastpath.bpf.loader import bpf_source_dir

    swept = {v.program for v in programs.variants()}
    assert swept | set(programs.NOT_BCC) == {p.stem for p in bpf_source_dir().glob("*.c")}
    assert not swept & set(programs.NOT_BCC)


def _load(program, ok=True, label="default", entry=None, error="", needs=None, module=""):
    return {"program": program, "label": label, "entry": entry or program, "cflags": [], "ok": ok,
            "error": error, "module": module, "needs": needs, "seconds": 1.0}


def _result(release, loads, tests=(), modules=None, **extra):
    return {"release": release, "loads": list(loads), "tests": list(tests), "modules": modules or {},
            "min_kernel": {"syn_guard": "6.0", "xdp_count": "5.9", "doctor_probe": "4.12"},
            "pytest_exit": 0, "sweep_s": 60.0, "tests_s": 600.0, "boot_s": 12.0, **extra}


def test_refused_by_an_older_kernel_than_stated_is_needs_not_failure():
    r = _result("5.15.0-1-amd64", [_load("syn_guard", ok=False, error="the verifier rejected syn_guard: x")])
    v = report.program_verdict("syn_guard", r)
    assert (v.text, v.failed) == ("needs 6.0", False)


def test_an_entry_may_need_more_than_its_program():
    loads = [_load("doctor_probe", entry="doctor_pass"),
             _load("doctor_probe", ok=False, entry="doctor_cookie_v4", needs="6.0", error="unknown func")]
    v = report.program_verdict("doctor_probe", _result("5.15.0-1-amd64", loads))
    assert (v.text, v.failed) == ("ok; doctor_cookie_v4 needs 6.0", False)


def test_verifier_rejection_and_failed_tests_are_failures_with_details():
    r = _result("6.1.0-57-amd64",
                [_load("syn_guard", ok=False, label="high", error="the verifier rejected it: R1 invalid mem"),
                 _load("xdp_count", label="test", module=MOD)],
                tests=[{"nodeid": f"{MOD}::test_a", "module": MOD, "outcome": "failed",
                        "message": "assert 1"},
                       {"nodeid": f"{MOD}::test_b", "module": MOD, "outcome": "passed", "message": ""}],
                modules={MOD: ["xdp_count"]}, pytest_exit=1)
    guard = report.program_verdict("syn_guard", r)
    assert guard.text == "FAIL load" and "R1 invalid mem" in guard.details[0]
    assert report.program_verdict("xdp_count", r).text == "FAIL 1/2 tests"
    assert report.failed(r)


def test_table_has_a_column_per_kernel_and_lists_failures():
    ok = _result("6.18.44", [_load("syn_guard"), _load("xdp_count")])
    old = _result("6.1.0-57-amd64", [_load("syn_guard"), _load("xdp_count", ok=False, error="too complex")])
    stopped = {"release": "6.12.118+deb12-amd64", "error": "stopped after 120 min: ..."}
    text = report.render([("6.18.44 (host)", ok), ("6.1.0-57-amd64", old), ("6.12.118+deb12-amd64", stopped)])
    lines = text.splitlines()
    assert lines[0].split() == ["program", "6.18.44", "(host)", "6.1.0-57-amd64", "6.12.118+deb12-amd64"]
    row = next(ln for ln in lines if ln.startswith("xdp_count"))
    assert row.split()[1:] == ["ok", "FAIL", "load", "not", "loaded"]
    assert "[6.1.0-57-amd64] xdp_count (default, xdp_count): too complex" in text
    assert "[6.12.118+deb12-amd64] stopped after 120 min" in text
    assert next(ln for ln in lines if ln.startswith("boot")).split()[1:3] == ["12", "s"]
    assert not report.failed(ok) and report.failed(old) and report.failed(stopped)


def test_a_known_failure_is_shown_but_does_not_fail_the_run(monkeypatch):
    monkeypatch.setitem(report.KNOWN, ("6.1", "decap"), "a reason stated in the README")
    r = _result("6.1.0-57-amd64", [_load("decap", ok=False, error="unbounded min value")])
    v = report.program_verdict("decap", r)
    assert (v.text, v.failed) == ("FAIL load (known)", False)
    assert "known:" in v.details[0] and "unbounded min value" in v.details[1]
    assert not report.failed(r)
    assert report.program_verdict("decap", {**r, "release": "6.18.4"}).failed


def test_options_may_follow_the_kernels():
    from fastpath.kernels.cli import build_parser

    args = build_parser().parse_args(["6.1", "6.12", "--load-only", "--only", "syn_guard"])
    assert (args.kernels, args.load_only, args.only) == (["6.1", "6.12"], True, ["syn_guard"])
    assert build_parser().parse_args([]).kernels == ["6.1", "6.12", "host"]


def test_stand_in_headers_are_the_newest_installed_amd64_pair(tmp_path):
    for name in ("linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-57-amd64",
                 "linux-headers-6.1.0-57-common"):
        (tmp_path / name).mkdir()
    build, source = packages.dist_headers(tmp_path)
    assert (build.name, source.name) == ("linux-headers-6.1.0-57-amd64", "linux-headers-6.1.0-57-common")
    with pytest.raises(FastpathError, match="no linux-headers"):
        packages.dist_headers(tmp_path / "none")


def test_guest_is_told_which_headers_to_compile_against(tmp_path):
    boot = _boot(tmp_path, kvm=False)
    assert "--headers" not in boot.guest_command([])
    pair = (Path("/usr/src/linux-headers-6.1.0-57-amd64"), Path("/usr/src/linux-headers-6.1.0-57-common"))
    with_dist = vm.Boot(**{**boot.__dict__, "headers": pair})
    assert with_dist.guest_command([]).endswith(
        "--headers=/usr/src/linux-headers-6.1.0-57-amd64:/usr/src/linux-headers-6.1.0-57-common")


def test_table_counts_the_tests_of_each_file_per_kernel():
    sg = "tests/bpf/test_syn_guard.py"
    tests = [{"nodeid": f"{MOD}::test_a", "module": MOD, "outcome": "passed", "message": "", "seconds": 2.5},
             {"nodeid": f"{MOD}::test_b", "module": MOD, "outcome": "failed", "message": "assert 1",
              "seconds": 2.25},
             {"nodeid": f"{sg}::test_c", "module": sg, "outcome": "skipped", "message": "needs 6.3"}]
    bench = "tests/bpf/test_bench_counter.py"
    gone = [{"nodeid": f"{bench}::test_d", "module": bench, "reason": "a speed range"}]
    vm_run = _result("6.1.0-57-amd64", [_load("xdp_count")], tests, deselected=gone, pytest_exit=1)
    host = _result("6.18.44", [_load("xdp_count")], tests[:1])
    assert report.test_files(vm_run)[MOD] == {"passed": 1, "failed": 1, "skipped": 0, "deselected": 0,
                                              "seconds": 5}
    assert report.test_files(vm_run)[bench]["deselected"] == 1
    lines = report.render([("6.1.0-57-amd64", vm_run), ("6.18.44 (host)", host)]).splitlines()
    row = next(ln for ln in lines if ln.strip().startswith("test_xdp_count.py"))
    assert row.split("  ")[-1].strip() == "1 passed" and "1 passed, 1 failed" in row
    assert next(ln for ln in lines if "test_bench_counter.py" in ln).split()[1:] == ["1", "deselected", "-"]
    assert next(ln for ln in lines if ln.startswith("tests/bpf")).split()[1:7] == \
        ["1", "passed,", "1", "failed,", "1", "skipped,"]
    assert f"  {bench}: a speed range" in lines


def test_guest_deselects_only_what_it_was_given_and_records_why():
    from types import SimpleNamespace

    from fastpath.kernels.guest import VM_DESELECT, Recorder

    dropped: list = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: dropped.extend(items)))
    peers = "tests/bpf/test_kernel_peers.py::t"
    items = [SimpleNamespace(nodeid=f"{MOD}::test_a"), SimpleNamespace(nodeid=peers)]
    rec = Recorder(None, print, VM_DESELECT)
    rec.pytest_collection_modifyitems(config, items)
    assert [i.nodeid for i in items] == [f"{MOD}::test_a"] and len(dropped) == 1
    assert rec.deselected[0]["module"] == "tests/bpf/test_kernel_peers.py" and rec.deselected[0]["reason"]
    host = [SimpleNamespace(nodeid="tests/bpf/test_kernel_peers.py::t")]
    Recorder(None, print, {}).pytest_collection_modifyitems(config, host)
    assert len(host) == 1


def test_a_run_stopped_during_the_tests_counts_those_it_finished():
    t = {"nodeid": f"{MOD}::test_a", "module": MOD, "outcome": "passed", "message": ""}
    stopped = _result("6.1.0-57-amd64", [_load("xdp_count")], [t], pytest_exit=None,
                      error="stopped after 60 min")
    row = next(ln for ln in report.render([("6.1", stopped)]).splitlines() if ln.startswith("tests/bpf"))
    assert row.split()[1:] == ["stopped", "after", "1", "passed"]
    assert report.failed(stopped)
