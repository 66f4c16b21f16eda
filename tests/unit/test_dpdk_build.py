"""`fastpath dpdk build` (fastpath.dpdk.build): the DPDK checks, both compile paths with
-Wall -Wextra -Werror, the build record and its reuse, and the error when DPDK's dev files
are missing. Compiles the real dpdk/l2fwd/main.c into tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fastpath.cli import main
from fastpath.dpdk import build, eal
from fastpath.errors import CapabilityError


@pytest.fixture
def dpdk() -> build.DpdkInfo:
    if shutil.which("pkg-config") is None or shutil.which("cc") is None:
        pytest.skip("building l2fwd needs pkg-config and a C compiler")
    try:
        return build.probe_dpdk()
    except CapabilityError as exc:
        pytest.skip(f"DPDK development files unusable: {exc}")


def test_probe_reports_version_and_pmds(dpdk: build.DpdkInfo) -> None:
    assert build._version_tuple(dpdk.version) >= build.MIN_DPDK
    assert dpdk.pmd_dir is not None and Path(dpdk.pmd_dir).is_dir()
    assert all(dpdk.pmds[name] for name in build.REQUIRED_PMDS)
    assert any(flag.startswith("-I") for flag in dpdk.cflags)
    assert "-lrte_eal" in dpdk.libs and "-lrte_ethdev" in dpdk.libs


def test_missing_dev_files_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """pkg-config pointed at an empty directory finds no libdpdk."""
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(tmp_path))
    monkeypatch.setenv("PKG_CONFIG_PATH", str(tmp_path))
    with pytest.raises(CapabilityError, match="apt-get install libdpdk-dev dpdk-dev"):
        build.probe_dpdk()


def test_version_floor() -> None:
    assert build._version_tuple("22.11.11") >= build.MIN_DPDK
    assert build._version_tuple("21.11.6") < build.MIN_DPDK
    assert build._version_tuple("23.03.0") > build.MIN_DPDK


@pytest.mark.parametrize("use_meson", [False, True])
def test_build_records_and_reuses(dpdk: build.DpdkInfo, tmp_path: Path, use_meson: bool) -> None:
    if use_meson and (shutil.which("meson") is None or shutil.which("ninja") is None):
        pytest.skip("meson and ninja are not installed")
    out = tmp_path / "build"
    steps: list[str] = []
    first = build.build(build_dir=out, progress=steps.append, use_meson=use_meson)
    assert first.built and Path(first.binary).is_file()
    info = build.read_info(out)
    assert info is not None
    assert info["dpdk_version"] == dpdk.version
    assert info["source_sha256"] == build.source_hash()
    assert info["method"] == ("meson" if use_meson else "cc")
    assert steps, "the build reports its progress"
    # The binary links and speaks its usage (exit 0 with -h after the EAL's "--").
    prefix = eal.unique_file_prefix("buildtest")
    runtime = Path(eal.RUNTIME_ROOT if os.geteuid() == 0
                   else os.environ.get("XDG_RUNTIME_DIR", "/tmp") + "/dpdk") / prefix
    try:
        r = subprocess.run([first.binary, "--no-huge", "--no-pci", "--no-shconf", "-l", "0",
                            "--file-prefix", prefix, "--log-level", "error", "--", "-h"],
                           capture_output=True, text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert "--no-mac-updating" in r.stderr
    again = build.build(build_dir=out, use_meson=use_meson)
    assert not again.built and again.info["built_at"] == info["built_at"]


def test_cli_build_json(dpdk: build.DpdkInfo, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI builds (or reuses) the project's binary under dpdk/l2fwd/build/."""
    assert main(["dpdk", "build", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"dpdk_version"' in out and str(build.BUILD_DIR) in out
