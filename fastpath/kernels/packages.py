"""Which Debian packages make a kernel of the matrix, fetched with `apt-get download` and
unpacked with `dpkg-deb -x` under build/kernels/ (nothing is installed).

A kernel is named by its series ("6.1", "6.12"). Debian 12's stock kernel is what the
`linux-image-amd64` meta-package depends on (6.1); newer series come from bookworm-security
or bookworm-backports as `linux-image-<series>-amd64`. The meta-package's dependency names
the ABI ("6.1.0-57", "6.12.118+deb12"), and from it the image and the two halves of the
headers: Debian splits them into `linux-headers-<abi>-amd64` (generated files, what
`/lib/modules/<release>/build` must point at) and `linux-headers-<abi>-common` (`source`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastpath.errors import CapabilityError, FastpathError

FLAVOUR = "amd64"
# The tools virtme-ng needs on the host and finds there only as packages: a static busybox
# for the guest's initramfs, and kmod (modprobe, depmod) to resolve the virtio/9p modules of
# a distribution kernel.
TOOL_PACKAGES = ("busybox-static", "kmod")


@dataclass(frozen=True)
class KernelPackages:
    series: str
    abi: str

    @property
    def release(self) -> str:
        """What `uname -r` says inside the kernel."""
        return f"{self.abi}-{FLAVOUR}"

    @property
    def image(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def headers(self) -> str:
        return f"linux-headers-{self.release}"

    @property
    def common(self) -> str:
        return f"linux-headers-{self.abi}-common"

    @property
    def names(self) -> tuple[str, str, str]:
        return (self.image, self.headers, self.common)


def meta_packages(series: str) -> list[str]:
    """The meta-packages that may depend on the newest kernel of `series`, most specific first."""
    return [f"linux-image-{series}-{FLAVOUR}", f"linux-image-{FLAVOUR}"]


def parse_depends(text: str) -> list[str]:
    """Package names on the `Depends:` lines of `apt-cache depends` output."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(\S+)", line)
        if m and not m.group(1).startswith("<"):
            out.append(m.group(1))
    return out


def abi_of(image: str, series: str) -> str | None:
    """'linux-image-6.1.0-57-amd64' -> '6.1.0-57' when it belongs to `series` ('6.1')."""
    m = re.fullmatch(rf"linux-image-(.+)-{FLAVOUR}", image)
    if not m or re.search(r"-(rt|cloud)$", m.group(1)):
        return None
    abi = m.group(1)
    return abi if abi.startswith(series + ".") or abi == series else None


def select_check(series: str) -> None:
    if not re.fullmatch(r"\d+\.\d+", series):
        raise FastpathError(f"kernel {series!r} is neither a series like 6.1 or 6.12 nor 'host'",
                            fix="e.g. make kernels KERNELS='6.1 6.12 host'")


def select(series: str, depends: Callable[[str], list[str]]) -> KernelPackages:
    """The packages of the newest kernel of `series` the apt sources offer."""
    select_check(series)
    for meta in meta_packages(series):
        for dep in depends(meta):
            abi = abi_of(dep, series)
            if abi:
                return KernelPackages(series, abi)
    raise FastpathError(f"no Debian package of Linux {series} in the apt sources "
                        f"(looked at {', '.join(meta_packages(series))})",
                        fix="add bookworm-security or bookworm-backports and run apt-get update")


def dist_headers(src: Path = Path("/usr/src")) -> tuple[Path, Path]:
    """The installed linux-headers-amd64 (build, source): what scripts/setup-host.sh links for a
    kernel that has no headers of its own."""
    def natural(p: Path) -> list[str | int]:
        return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)]

    found = sorted(src.glob(f"linux-headers-*-{FLAVOUR}"), key=natural)
    if not found:
        raise CapabilityError("no linux-headers-*-amd64 under /usr/src",
                              fix="apt-get install linux-headers-amd64")
    build = found[-1]
    return build, build.with_name(build.name.removesuffix(f"-{FLAVOUR}") + "-common")


def apt_depends(package: str) -> list[str]:
    res = subprocess.run(["apt-cache", "depends", package], capture_output=True, text=True, check=False)
    return parse_depends(res.stdout) if res.returncode == 0 else []


@dataclass(frozen=True)
class KernelTree:
    """One unpacked kernel: the image, its modules and both halves of its headers."""

    packages: KernelPackages
    root: Path

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.packages.release}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.packages.release


@dataclass(frozen=True)
class Tools:
    """busybox and kmod unpacked from their packages; `path` goes first on PATH for vng."""

    root: Path

    @property
    def busybox(self) -> Path:
        return self.root / "bin" / "busybox"

    @property
    def path(self) -> Path:
        return self.root / "path"


Say = Callable[[str], None]


def _download(names: tuple[str, ...] | list[str], into: Path) -> None:
    res = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *names],
                         cwd=into, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        raise FastpathError(f"apt-get download {' '.join(names)} failed: {last[0]}",
                            fix="check the apt sources and network, then run apt-get update")


def _unpack(debs: Path, names: tuple[str, ...] | list[str], into: Path) -> None:
    for name in names:
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            raise FastpathError(f"apt-get download left no {name}_*.deb in {debs}")
        res = subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(into)], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0:
            raise FastpathError(f"dpkg-deb -x {found[-1].name} failed: {res.stderr.strip()[-300:]}")


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        raise CapabilityError(f"{tool} not found",
                              fix="run on Debian (apt-get, dpkg-deb) or scripts/setup-host.sh")


def fetch_tools(cache: Path, say: Say) -> Tools:
    tools = Tools(cache / "tools")
    if (tools.root / ".complete").exists():
        return tools
    for tool in ("apt-get", "dpkg-deb"):
        _require(tool)
    say(f"fetching {', '.join(TOOL_PACKAGES)} (unpacked under {tools.root}, not installed)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".debs-") as tmp:
        shutil.rmtree(tools.root, ignore_errors=True)
        _download(TOOL_PACKAGES, Path(tmp))
        _unpack(Path(tmp), TOOL_PACKAGES, tools.root)
    # Debian's links point at /bin/kmod, which the host may not have: relative ones instead.
    tools.path.mkdir()
    for name in ("modprobe", "depmod", "insmod"):
        (tools.path / name).symlink_to("../bin/kmod")
    (tools.path / "busybox").symlink_to("../bin/busybox")
    (tools.root / ".complete").write_text("\n".join(TOOL_PACKAGES) + "\n")
    return tools


def fetch_kernel(pkgs: KernelPackages, cache: Path, tools: Tools, say: Say) -> KernelTree:
    """Download and unpack one kernel, once: a finished tree is kept until `make clean`."""
    base = cache / pkgs.abi
    tree = KernelTree(pkgs, base / "root")
    stamp = base / ".complete"
    if stamp.exists() and tree.image.exists():
        return tree
    say(f"fetching Linux {pkgs.series}: {', '.join(pkgs.names)}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        return _unpack_kernel(pkgs, cache, tools, base, tree, say)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _unpack_kernel(pkgs: KernelPackages, cache: Path, tools: Tools, base: Path, tree: KernelTree,
                   say: Say) -> KernelTree:
    partial = KernelTree(pkgs, base / "root.partial")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".debs-") as tmp:
        _download(pkgs.names, Path(tmp))
        say(f"unpacking Linux {pkgs.series} into {base}")
        _unpack(Path(tmp), pkgs.names, partial.root)
    if not partial.image.exists():
        raise FastpathError(f"{pkgs.image} has no {partial.image.relative_to(partial.root)}")
    # Debian's build/source links are absolute (/usr/src/...): point them into this tree, so
    # bcc inside the guest compiles against this kernel's own headers.
    src = Path("../../../usr/src")
    for link, target in (("build", f"linux-headers-{pkgs.release}"), ("source", pkgs.common)):
        path = partial.moddir / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(src / target)
        if not path.is_dir():
            raise FastpathError(f"{pkgs.headers} / {pkgs.common} did not provide {path}")
    res = subprocess.run([str(tools.path / "depmod"), "-b", str(partial.root), pkgs.release],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise FastpathError(f"depmod for {pkgs.release} failed: {res.stderr.strip()[-300:]}")
    os.rename(partial.root, tree.root)
    (base / ".complete").write_text("\n".join(pkgs.names) + "\n")
    return tree
