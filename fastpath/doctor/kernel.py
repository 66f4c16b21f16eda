"""Probes of the host's privileges and kernel and of the BPF toolchain on top of them:
capabilities, the kernel release, bpffs, the BPF memory limit (RLIMIT_MEMLOCK or memcg),
vmlinux BTF, the kernel headers bcc compiles against, and bcc itself (it compiles and loads
the session's probe program).

All but the bcc probe only read /proc and /sys under `root`, so tests run them on fake trees.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import struct
import time
from pathlib import Path
from typing import Any

from fastpath.bpf import syscall
from fastpath.doctor.checks import (
    ROOT,
    ROOT_FIX,
    SETUP_HOST,
    Check,
    _fail,
    _kernel_release,
    _needs_root,
    _ok,
    _warn,
    parse_kernel_version,
)
from fastpath.doctor.session import NETNS_PREFIX, DoctorSession, _maybe_session
from fastpath.dpdk.sysfs import Host

CAPS = {
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def parse_capabilities(status_text: str) -> tuple[int, dict[str, bool]]:
    """CapEff from /proc/<pid>/status -> (mask, {capability: present})."""
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.M)
    if match is None:
        raise ValueError("no CapEff line")
    mask = int(match[1], 16)
    return mask, {name: bool(mask >> bit & 1) for name, bit in CAPS.items()}


def probe_privileges(root: Path = ROOT) -> Check:
    name = "privileges"
    status_text = Host(root).read_or("/proc/self/status", None)
    if status_text is None:
        return _fail(name, "cannot read /proc/self/status", "mount /proc")
    mask, caps = parse_capabilities(status_text)
    uid = re.search(r"^Uid:\s*\d+\s+(\d+)", status_text, re.M)
    euid = int(uid[1]) if uid else os.geteuid()
    data = {"euid": euid, "cap_eff": f"{mask:#018x}", "capabilities": caps}
    held = [c for c in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF") if caps[c]]
    missing = [c for c in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN") if not caps[c]]
    fix = "run as root (sudo fastpath ...) or grant cap_sys_admin,cap_net_admin,cap_bpf+ep"
    who = "root" if euid == 0 else f"uid {euid}"
    if missing:
        return _fail(
            name,
            f"{who}; CapEff {mask:#x} lacks {', '.join(missing)} (netns, XDP and bpffs need them)",
            fix,
            **data,
        )
    note = "" if caps["CAP_BPF"] else " (no CAP_BPF: CAP_SYS_ADMIN covers BPF)"
    return _ok(name, f"{who}; CapEff has {', '.join(held)}{note}", **data)


MIN_KERNEL = (5, 15)
SYNCOOKIE_KERNEL = (6, 0)


def probe_kernel(root: Path = ROOT) -> Check:
    name = "kernel"
    release = _kernel_release(root)
    version = parse_kernel_version(release)
    data = {"release": release, "version": list(version)}
    if version[:2] < MIN_KERNEL:
        return _fail(
            name,
            f"{release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}, the oldest LTS fastpath "
            "supports (it relies on bpf_link XDP 5.9, CAP_BPF 5.8, memcg-charged BPF maps 5.11)",
            "boot a 5.15 LTS or newer kernel (6.0+ for the SYN guard)",
            **data,
        )
    if version[:2] < SYNCOOKIE_KERNEL:
        return _warn(
            name,
            f"{release}: XDP and io_uring work, but the raw SYN-cookie helpers "
            "(bpf_tcp_raw_*_syncookie) and multishot recv arrived in 6.0, multishot accept in 5.19",
            "boot a 6.0 or newer kernel to run the XDP SYN guard",
            **data,
        )
    return _ok(name, f"{release} (>= 6.0: raw SYN-cookie helpers, multishot recv)", **data)


def probe_bpffs(root: Path = ROOT) -> Check:
    name = "bpffs"
    mountpoint = "/sys/fs/bpf"
    fix = f"mount -t bpf bpf {mountpoint} (or run {SETUP_HOST})"
    host = Host(root)
    mounted = [m for m in host.mounts() if m.path == mountpoint and m.fstype == "bpf"]
    if not mounted:
        others = [m.fstype for m in host.mounts() if m.path == mountpoint]
        what = f"{mountpoint} is {others[-1]}" if others else f"nothing mounted at {mountpoint}"
        return _fail(name, f"{what}: pinned maps and programs need bpffs", fix, mounted=False)
    # Pinning needs a writable bpffs; prove it with a throw-away directory (bpffs refuses
    # names containing a dot, so no hidden name).
    probe_dir = host.path(mountpoint) / f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe_dir.mkdir()
        probe_dir.rmdir()
    except OSError as exc:
        return _fail(
            name,
            f"bpffs at {mountpoint} is not writable: {exc.strerror}",
            f"remount it read-write: mount -o remount,rw {mountpoint}",
            mounted=True,
            writable=False,
        )
    options = mounted[-1].options
    return _ok(name, f"bpf at {mountpoint}, writable", mounted=True, writable=True, options=options)


# Linux 5.11 charges BPF maps and programs to the memory cgroup instead of RLIMIT_MEMLOCK.
MEMCG_BPF_KERNEL = (5, 11)
# Below this, older kernels refuse fastpath's maps (the SYN guard's and the load balancer's
# LRU maps alone lock several MiB) unless bcc can raise the limit.
MEMLOCK_ENOUGH = 64 << 20


def _bytes_text(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def probe_bpf_memlock(
    root: Path = ROOT, release: str | None = None, rlimit: tuple[int, int] | None = None
) -> Check:
    name = "bpf-memlock"
    release = release or _kernel_release(root)
    soft, hard = rlimit or resource.getrlimit(resource.RLIMIT_MEMLOCK)
    status_text = Host(root).read_or("/proc/self/status", None)
    cap = parse_capabilities(status_text)[1]["CAP_SYS_RESOURCE"] if status_text else None
    version = parse_kernel_version(release)
    memcg = version[:2] >= MEMCG_BPF_KERNEL
    kernel = f"kernel {version[0]}.{version[1]}"
    data = {
        "memlock_soft": soft,
        "memlock_hard": hard,
        "cap_sys_resource": cap,
        "release": release,
        "memcg_accounting": memcg,
    }
    cap_text = {True: "present", False: "absent", None: "unknown (no /proc/self/status)"}[cap]
    limits = f"RLIMIT_MEMLOCK {_bytes_text(soft)} (hard {_bytes_text(hard)}), CAP_SYS_RESOURCE {cap_text}"
    if memcg:
        why = f"{kernel} charges BPF memory to memcg, so the limit does not apply"
    elif soft == resource.RLIM_INFINITY or soft >= MEMLOCK_ENOUGH:
        why = f"{kernel} counts BPF memory against it; enough for fastpath's maps"
    elif hard == resource.RLIM_INFINITY or cap:
        # On EPERM bcc sets both limits to unlimited: allowed below an unlimited hard limit,
        # else only with CAP_SYS_RESOURCE.
        how = "with CAP_SYS_RESOURCE" if cap else "up to the unlimited hard limit"
        why = f"{kernel} counts BPF memory against it; bcc raises it {how}"
    else:
        return _warn(
            name,
            f"{limits}; {kernel} (< 5.11) counts BPF maps against it: large maps fail with EPERM",
            "ulimit -l unlimited before running fastpath, or run it with CAP_SYS_RESOURCE",
            **data,
        )
    return _ok(name, f"{limits}; {why}", **data)


BTF_MAGIC = 0xEB9F


def probe_btf(root: Path = ROOT) -> Check:
    name = "btf"
    path = Host(root).path("/sys/kernel/btf/vmlinux")
    fix = "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
        size = path.stat().st_size
    except OSError:
        return _warn(
            name,
            "no /sys/kernel/btf/vmlinux: bcc works, CO-RE tools (bpftool, libbpf skeletons) do not",
            fix,
            present=False,
        )
    if len(head) < 2 or struct.unpack("<H", head)[0] != BTF_MAGIC:
        return _warn(name, "/sys/kernel/btf/vmlinux has no BTF magic", fix, present=True)
    # sysfs reports 0 for the size of some attributes; only mention it when known.
    detail = "vmlinux BTF present" + (f", {size / 2**20:.1f} MiB" if size else "")
    return _ok(name, detail, present=True, size=size)


def _resolve_in_root(root: Path, path: str, hops: int = 16) -> tuple[Path, list[str]]:
    """Follow symlinks the way the kernel would if `root` were /; returns the chain too."""
    host = Host(root)
    current = host.path(path)
    chain: list[str] = []
    for _ in range(hops):
        if not current.is_symlink():
            return current, chain
        target = os.readlink(current)
        chain.append(target)
        current = host.path(target) if target.startswith("/") else current.parent / target
    return current, chain


def _headers_release(build: Path) -> str | None:
    tree = Host(build)
    uts = tree.read_or("include/generated/utsrelease.h", None)
    if uts:
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts)
        if match:
            return match[1]
    return tree.read_or("include/config/kernel.release", None)


def probe_kernel_headers(root: Path = ROOT) -> Check:
    name = "kernel-headers"
    release = _kernel_release(root)
    build_path = f"/lib/modules/{release}/build"
    build, chain = _resolve_in_root(root, build_path)
    data: dict[str, Any] = {"path": build_path, "links_to": chain[-1] if chain else None}
    fix_missing = (
        f"run {SETUP_HOST} (links the distribution's linux-headers to {build_path}) or "
        "install the headers of the running kernel"
    )
    if not (build / "Makefile").exists() and not (build / "include").is_dir():
        if Host(root).exists("/sys/kernel/kheaders.tar.xz"):
            return _ok(
                name, f"{build_path} missing; bcc uses /sys/kernel/kheaders.tar.xz", kheaders=True, **data
            )
        where = f"{build_path} -> {chain[-1]} (dangling)" if chain else f"no {build_path}"
        return _fail(name, f"{where}: bcc cannot compile without kernel headers", fix_missing, **data)
    headers = _headers_release(build)
    data["headers_release"] = headers
    if headers == release:
        return _ok(name, f"{build_path} matches the running kernel", stand_in=False, **data)
    data["stand_in"] = True
    origin = f" -> {chain[-1]}" if chain else ""
    return _warn(
        name,
        f"stand-in: {build_path}{origin} holds {headers or 'unversioned'} headers; bcc "
        "compiles with them (fastpath uses only UAPI types), kernel-internal layouts may differ",
        f"install the headers of {release}, or build it with CONFIG_IKHEADERS=y",
        **data,
    )


def probe_bcc(session: DoctorSession | None = None) -> Check:
    name = "bcc"
    with _maybe_session(session) as s:
        try:
            probe = s.probe_bpf()
        except ModuleNotFoundError as exc:
            return _fail(
                name,
                f"cannot import bcc: {exc}",
                "apt install python3-bpfcc and build the venv with --system-site-packages",
            )
        except Exception as exc:
            fix = ROOT_FIX if _needs_root(exc) else f"check kernel-headers; re-run {SETUP_HOST}"
            return _fail(name, f"bcc compile failed: {exc}", fix)
        t0 = time.monotonic()
        fn = s.load_xdp("doctor_pass")
        load_s = time.monotonic() - t0
        return _ok(
            name,
            f"bcc {probe.bcc_version}: compiled in {probe.compile_s:.2f} s, "
            f"loaded XDP program in {load_s * 1000:.1f} ms",
            version=probe.bcc_version,
            import_s=round(probe.import_s, 4),
            compile_s=round(probe.compile_s, 4),
            load_s=round(load_s, 5),
            prog_id=syscall.prog_info(fn.fd).id,
        )
