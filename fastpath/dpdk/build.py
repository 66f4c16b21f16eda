"""Build fastpath-l2fwd against the system DPDK and record what it was built against.

Checks before compiling: pkg-config finds libdpdk >= 22.11, and the PMD directory EAL loads
drivers from (RTE_EAL_PMD_PATH in rte_build_config.h) holds the drivers fastpath uses.
Compiles with meson + ninja when present, else one cc call with pkg-config's flags; both
with -Wall -Wextra -Werror. Output: dpdk/l2fwd/build/fastpath-l2fwd and build-info.json
(DPDK version, PMD dir, compiler, flags, source hash). A build is reused while the source
hash, DPDK version and compiler stay the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fastpath
from fastpath.errors import CapabilityError, FastpathError

SOURCE_DIR = Path(fastpath.__file__).resolve().parent.parent / "dpdk" / "l2fwd"
BUILD_DIR = SOURCE_DIR / "build"
BINARY_NAME = "fastpath-l2fwd"
INFO_NAME = "build-info.json"
MIN_DPDK = (22, 11)
# Drivers fastpath's runs load from the PMD directory (bus, mempool, virtual NICs).
REQUIRED_PMDS = ("bus_vdev", "mempool_ring", "net_af_packet", "net_null")
OPTIONAL_PMDS = ("net_af_xdp", "net_tap", "net_memif", "bus_pci")
BUILD_CONFIG_HEADERS = (
    "/usr/include/x86_64-linux-gnu/dpdk/rte_build_config.h",
    "/usr/include/dpdk/rte_build_config.h",
    "/usr/local/include/rte_build_config.h",
)
CFLAGS_STRICT = ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class DpdkInfo:
    version: str
    cflags: list[str]
    libs: list[str]
    pmd_dir: str | None
    pmds: dict[str, bool] = field(default_factory=dict)


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def pmd_dir() -> str | None:
    for header in BUILD_CONFIG_HEADERS:
        try:
            text = Path(header).read_text()
        except OSError:
            continue
        m = re.search(r'#define\s+RTE_EAL_PMD_PATH\s+"([^"]*)"', text)
        if m:
            return m.group(1)
    return None


def has_pmd(directory: str | None, name: str) -> bool:
    if directory is None:
        return False
    return any(Path(directory).glob(f"librte_{name}.so*"))


def probe_dpdk() -> DpdkInfo:
    """libdpdk's version and flags from pkg-config, and which PMDs are installed."""
    if shutil.which("pkg-config") is None:
        raise CapabilityError("pkg-config is missing: apt-get install pkg-config")
    mod = _run(["pkg-config", "--modversion", "libdpdk"])
    if mod.returncode != 0:
        raise CapabilityError(
            "DPDK development files not found (pkg-config has no libdpdk): "
            "apt-get install libdpdk-dev dpdk-dev, or set PKG_CONFIG_PATH to your DPDK build"
        )
    version = mod.stdout.strip()
    if _version_tuple(version) < MIN_DPDK:
        raise CapabilityError(
            f"DPDK {version} is too old: fastpath-l2fwd needs >= "
            f"{'.'.join(map(str, MIN_DPDK))} (RTE_ETH_* names)"
        )
    cflags = _run(["pkg-config", "--cflags", "libdpdk"]).stdout.split()
    libs = _run(["pkg-config", "--libs", "libdpdk"]).stdout.split()
    directory = pmd_dir()
    pmds = {name: has_pmd(directory, name) for name in (*REQUIRED_PMDS, *OPTIONAL_PMDS)}
    info = DpdkInfo(version, cflags, libs, directory, pmds)
    missing = [n for n in REQUIRED_PMDS if not pmds[n]]
    if directory is None:
        raise CapabilityError(
            "cannot find DPDK's PMD directory (RTE_EAL_PMD_PATH in rte_build_config.h): "
            "install dpdk-dev"
        )
    if missing:
        raise CapabilityError(
            f"DPDK drivers missing from {directory}: "
            f"{', '.join('librte_' + n for n in missing)}; install the dpdk package"
        )
    return info


def source_hash(source_dir: Path = SOURCE_DIR) -> str:
    h = hashlib.sha256()
    for name in ("main.c", "meson.build"):
        h.update(name.encode())
        h.update((source_dir / name).read_bytes())
    return h.hexdigest()


def compiler_version(cc: str = "cc") -> str:
    out = _run([cc, "--version"])
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"


@dataclass
class BuildResult:
    binary: str
    built: bool  # False when an up-to-date build was reused
    info: dict[str, Any]


def read_info(build_dir: Path = BUILD_DIR) -> dict[str, Any] | None:
    try:
        return dict(json.loads((build_dir / INFO_NAME).read_text()))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _compile_meson(source_dir: Path, build_dir: Path, progress: Progress) -> str:
    if not (build_dir / "build.ninja").exists():
        progress(f"meson setup {build_dir}")
        # A set-up that died before writing build.ninja is started over.
        shutil.rmtree(build_dir / "meson-private", ignore_errors=True)
        r = _run(["meson", "setup", str(build_dir), str(source_dir)])
        if r.returncode != 0:
            raise FastpathError(f"meson setup failed: {_last_lines(r.stdout + r.stderr)}")
    progress(f"ninja -C {build_dir}")
    r = _run(["ninja", "-C", str(build_dir)])
    if r.returncode != 0:
        raise FastpathError(f"compiling fastpath-l2fwd failed: {_last_lines(r.stdout + r.stderr)}")
    return "meson"


def _compile_cc(source_dir: Path, build_dir: Path, dpdk: DpdkInfo, progress: Progress) -> str:
    argv = ["cc", *CFLAGS_STRICT, *dpdk.cflags, str(source_dir / "main.c"), "-o",
            str(build_dir / BINARY_NAME), *dpdk.libs]
    progress("cc " + " ".join(argv[1:]))
    r = _run(argv)
    if r.returncode != 0:
        raise FastpathError(f"compiling fastpath-l2fwd failed: {_last_lines(r.stderr)}")
    return "cc"


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


def build(
    *,
    force: bool = False,
    source_dir: Path = SOURCE_DIR,
    build_dir: Path = BUILD_DIR,
    progress: Progress = _quiet,
    use_meson: bool | None = None,
) -> BuildResult:
    """Build (or reuse) fastpath-l2fwd; returns the binary path and build record."""
    dpdk = probe_dpdk()
    binary = build_dir / BINARY_NAME
    want = {
        "source_sha256": source_hash(source_dir),
        "dpdk_version": dpdk.version,
        "compiler": compiler_version(),
    }
    with _build_lock(build_dir):
        info = read_info(build_dir)
        if (not force and info is not None and binary.exists()
                and all(info.get(k) == v for k, v in want.items())):
            return BuildResult(str(binary), False, info)
        if use_meson is None:
            use_meson = shutil.which("meson") is not None and shutil.which("ninja") is not None
        started = time.monotonic()
        progress(f"building fastpath-l2fwd against DPDK {dpdk.version} "
                 f"({'reason: ' + ('forced' if force else 'missing or out of date')})")
        if use_meson:
            method = _compile_meson(source_dir, build_dir, progress)
        else:
            method = _compile_cc(source_dir, build_dir, dpdk, progress)
        if not binary.exists():
            raise FastpathError(f"the build finished but {binary} is missing")
        info = {
            **want,
            "binary": str(binary),
            "method": method,
            "pkg_config_cflags": dpdk.cflags,
            "pkg_config_libs": dpdk.libs,
            "pmd_dir": dpdk.pmd_dir,
            "pmds": dpdk.pmds,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - started, 2),
        }
        (build_dir / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return BuildResult(str(binary), True, info)


def ensure_built(progress: Progress = _quiet, build_dir: Path = BUILD_DIR) -> str:
    """The l2fwd binary, built first when missing or stale."""
    result = build(build_dir=build_dir, progress=progress)
    return result.binary


def dpdk_summary(info: DpdkInfo) -> dict[str, Any]:
    return asdict(info)
