"""`fastpath doctor`: measure every kernel feature, tool and privilege fastpath relies on.

Each probe is a small function returning a `Check`; it does the real thing (compile and load
a BPF program, attach XDP to a throw-away veth, set up an io_uring, create an ipip link in a
scratch namespace) rather than guess from version numbers, and it never raises: an
unexpected exception becomes a FAIL row carrying the message.

Probes that only read /proc and /sys take a `root` directory so tests can point them at a
fake tree. Probes that need kernel objects share one `DoctorSession`, which compiles the
probe BPF programs once and creates at most one scratch namespace; closing the session
removes every namespace, link, program and table it made, also when a probe failed.

Other modules ask questions through the same API, e.g. for test skips:

    from fastpath import doctor
    if not doctor.check("xdp-native").ok:
        pytest.skip(doctor.check("xdp-native").detail)
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import glob
import mmap
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastpath.bpf import syscall
from fastpath.bpf.loader import captured_stderr
from fastpath.core.namespaces import NETNS_RUN_DIR, netns_context
from fastpath.errors import FastpathError

ROOT = Path("/")
NETNS_PREFIX = "fpdoc"
NETNS_DIR = Path(NETNS_RUN_DIR)
SETUP_HOST = "scripts/setup-host.sh"

# ---------------------------------------------------------------------------------------
# Result type


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One row of the report: what was measured, and for anything not OK, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status is not Status.OK and not self.fix:
            raise ValueError(f"check {self.name!r} is {self.status} but names no fix")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def usable(self) -> bool:
        """True unless FAIL: a WARN row still works, with a caveat."""
        return self.status is not Status.FAIL

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        return out


def _ok(name: str, detail: str, **data: Any) -> Check:
    return Check(name, Status.OK, detail, None, data)


def _warn(name: str, detail: str, fix: str, **data: Any) -> Check:
    return Check(name, Status.WARN, detail, fix, data)


def _fail(name: str, detail: str, fix: str, **data: Any) -> Check:
    return Check(name, Status.FAIL, detail, fix, data)


# ---------------------------------------------------------------------------------------
# Small readers shared by the /proc and /sys probes


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def _mounts(root: Path) -> list[tuple[str, str, str, str]]:
    """(source, mountpoint, fstype, options) from root/proc/mounts."""
    rows = []
    for line in (_read(_under(root, "/proc/mounts")) or "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append((parts[0], parts[1].replace("\\040", " "), parts[2], parts[3]))
    return rows


def _kernel_release(root: Path) -> str:
    return _read(_under(root, "/proc/sys/kernel/osrelease")) or platform.release()


def parse_kernel_version(release: str) -> tuple[int, int, int]:
    """'6.18.44-fc-v669' -> (6, 18, 44); missing parts are 0."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if match is None:
        raise ValueError(f"unrecognised kernel release {release!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _has_module_support(root: Path) -> bool:
    return _under(root, "/proc/modules").exists()


def _kernel_feature_fix(root: Path, *features: tuple[str, str]) -> str:
    """How to get kernel features, given as (CONFIG_ option, module name) pairs."""
    configs = " and ".join(f"{config}=y" for config, _ in features)
    if _has_module_support(root):
        return f"modprobe {' '.join(m for _, m in features)} (or build with {configs})"
    return f"boot a kernel built with {configs} (this kernel cannot load modules)"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _run(cmd: Sequence[str], *, timeout: float = 10.0, stdin: str | None = None) -> tuple[int, str, str]:
    """Run a tool; a missing binary is rc 127, like a shell would say."""
    try:
        proc = subprocess.run(
            list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: not found"
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def _pkg_config(*args: str) -> str | None:
    rc, out, _ = _run(["pkg-config", *args])
    return out if rc == 0 else None


# ---------------------------------------------------------------------------------------
# Failures and logs

ROOT_FIX = "run as root (sudo fastpath doctor); see the privileges row"


def _needs_root(exc: BaseException) -> bool:
    """Whether a failure is the kernel refusing an unprivileged caller."""
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EPERM:
        return True
    text = str(exc)
    return any(words in text for words in ("Operation not permitted", "super-user", "run as root"))


def _last_lines(log: Sequence[str], n: int = 3) -> str:
    """The informative part of a tool's log lines: its first errors, else its last lines."""
    lines = [ln.strip() for ln in log if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    return " | ".join(errors[:2] if errors else lines[-n:])


# ---------------------------------------------------------------------------------------
# Scratch network namespaces


def _netns_name() -> str:
    return f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"


@contextmanager
def temp_netns() -> Iterator[str]:
    """A uniquely named namespace under /run/netns that is removed on exit, whatever happens."""
    from pyroute2 import netns

    from fastpath.netns.builder import remove_netns

    name = _netns_name()
    try:
        netns.create(name)
        yield name
    finally:
        remove_netns(name)


def reap_stale_netns() -> list[str]:
    """Remove scratch namespaces left by doctor runs that were killed (their pid is gone)."""
    from fastpath.netns.builder import remove_netns

    removed = []
    for path in NETNS_DIR.glob(f"{NETNS_PREFIX}-*-*"):
        match = re.fullmatch(rf"{NETNS_PREFIX}-(\d+)-[0-9a-f]+", path.name)
        if match and not Path(f"/proc/{match[1]}").exists():
            try:
                remove_netns(path.name)
            except (FastpathError, OSError):
                continue  # not ours to remove (no privilege): the probes still run
            removed.append(path.name)
    return removed


# ---------------------------------------------------------------------------------------
# The probe BPF programs: one compile serves every BPF row

# Helper ids from enum bpf_func_id (include/uapi/linux/bpf.h, Linux 6.0). bcc 0.26's
# helpers.h predates these helpers, so the program declares them by id.
BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4 = 204
BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6 = 205
BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4 = 206
BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6 = 207

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
# Added to a genuine cookie to forge one: it changes the hash bits, not just the low MSS-index
# bits (a cookie off by one still validates, with another MSS).
FORGED_COOKIE_DELTA = 0x12345

# Packet layout is spelled as offsets: including the kernel's ip/tcp headers costs bcc about
# two seconds of parsing, the whole budget of a doctor run.
PROBE_BPF_TEXT = r"""
#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define TCP_LEN 20
#define TCP_FLAG_ACK 0x10
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BE32(x) __builtin_bswap32(x)
#else
#define BE32(x) (x)
#endif

static long (*raw_gen_v4)(void *iph, void *th, u32 th_len) = (void *)FUNC_RAW_GEN_V4;
static long (*raw_gen_v6)(void *iph, void *th, u32 th_len) = (void *)FUNC_RAW_GEN_V6;
static long (*raw_check_v4)(void *iph, void *th) = (void *)FUNC_RAW_CHECK_V4;
static long (*raw_check_v6)(void *iph, void *th) = (void *)FUNC_RAW_CHECK_V6;

int doctor_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

/* Round trip: issue a cookie for the SYN, rewrite the SYN into the client's ACK of our
 * SYN-ACK (seq + 1, ack = cookie + 1) and check it, then check a forged ACK too.
 * XDP_TX = genuine cookie accepted and forged one rejected, XDP_PASS = forged cookie
 * accepted, XDP_DROP = genuine cookie rejected, XDP_ABORTED = no cookie issued. */
static __always_inline void set_ack(u8 *th, u32 ack_seq)
{
    *(u32 *)(th + 8) = BE32(ack_seq);
}

static __always_inline void syn_to_ack(u8 *th, s64 gen)
{
    u32 *seq = (u32 *)(th + 4);

    *seq = BE32(BE32(*seq) + 1);
    th[13] = TCP_FLAG_ACK;
    set_ack(th, (u32)gen + 1);
}

int doctor_cookie_v4(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    u8 *ip = data + ETH_LEN, *th = ip + IP4_LEN;

    if ((void *)(th + TCP_LEN) > end)
        return XDP_ABORTED;
    s64 gen = raw_gen_v4(ip, th, TCP_LEN);
    if (gen < 0)
        return XDP_ABORTED;
    syn_to_ack(th, gen);
    if (raw_check_v4(ip, th) != 0)
        return XDP_DROP;
    set_ack(th, (u32)gen + 1 + FORGED_DELTA);
    return raw_check_v4(ip, th) == 0 ? XDP_PASS : XDP_TX;
}

int doctor_cookie_v6(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    u8 *ip = data + ETH_LEN, *th = ip + IP6_LEN;

    if ((void *)(th + TCP_LEN) > end)
        return XDP_ABORTED;
    s64 gen = raw_gen_v6(ip, th, TCP_LEN);
    if (gen < 0)
        return XDP_ABORTED;
    syn_to_ack(th, gen);
    if (raw_check_v6(ip, th) != 0)
        return XDP_DROP;
    set_ack(th, (u32)gen + 1 + FORGED_DELTA);
    return raw_check_v6(ip, th) == 0 ? XDP_PASS : XDP_TX;
}
"""

PROBE_BPF_CFLAGS = [
    f"-DFUNC_RAW_GEN_V4={BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4}",
    f"-DFUNC_RAW_GEN_V6={BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6}",
    f"-DFUNC_RAW_CHECK_V4={BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4}",
    f"-DFUNC_RAW_CHECK_V6={BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6}",
    f"-DFORGED_DELTA={FORGED_COOKIE_DELTA:#x}",
]


def syn_packet(family: int = socket.AF_INET) -> bytes:
    """Ethernet + IPv4/IPv6 + 20-byte TCP SYN, 10.0.0.1:40000 -> 10.0.0.2:80 (or fd00::1/2)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
    if family == socket.AF_INET:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp),
            1,
            0x4000,
            64,
            socket.IPPROTO_TCP,
            0,
            socket.inet_aton("10.0.0.1"),
            socket.inet_aton("10.0.0.2"),
        )
        ethertype = 0x0800
    else:
        ip = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(tcp),
            socket.IPPROTO_TCP,
            64,
            socket.inet_pton(socket.AF_INET6, "fd00::1"),
            socket.inet_pton(socket.AF_INET6, "fd00::2"),
        )
        ethertype = 0x86DD
    eth = bytes.fromhex("020000000002020000000001") + struct.pack("!H", ethertype)
    return eth + ip + tcp


@dataclass
class _ProbeBPF:
    bpf: Any
    bcc_version: str
    import_s: float
    compile_s: float


class DoctorSession:
    """Resources several probes share, created on first use and removed by close()."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._stack = ExitStack()
        self._bpf: _ProbeBPF | None = None
        self._bpf_error: Exception | None = None
        self._netns: str | None = None
        self._veth: tuple[str, int] | None = None

    def __enter__(self) -> DoctorSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._stack = ExitStack()
            self._bpf = None
            self._netns = None
            self._veth = None

    def probe_bpf(self) -> _ProbeBPF:
        """The compiled probe programs; a compile failure is remembered and re-raised."""
        if self._bpf_error is not None:
            raise self._bpf_error
        if self._bpf is None:
            try:
                t0 = time.monotonic()
                import bcc

                t1 = time.monotonic()
                failure: Exception | None = None
                with captured_stderr() as log:
                    try:
                        bpf = bcc.BPF(text=PROBE_BPF_TEXT.encode(), cflags=PROBE_BPF_CFLAGS)
                    except Exception as exc:
                        failure = exc
                if failure is not None:
                    raise RuntimeError(f"{failure}: {_last_lines(log)}") from failure
                t2 = time.monotonic()
                self._stack.callback(bpf.cleanup)
                version = getattr(bcc, "__version__", "?")
                self._bpf = _ProbeBPF(bpf, version, t1 - t0, t2 - t1)
            except Exception as exc:
                self._bpf_error = exc
                raise
        return self._bpf

    def load_xdp(self, func: str) -> Any:
        """Load one probe function as XDP; a verifier refusal raises with the log's last lines."""
        import bcc

        probe = self.probe_bpf()
        with captured_stderr() as log:
            try:
                return probe.bpf.load_func(func.encode(), bcc.BPF.XDP)
            except Exception as exc:
                failure = exc
        raise RuntimeError(f"{failure}: {_last_lines(log)}") from failure

    def netns(self) -> str:
        """The session's scratch namespace."""
        if self._netns is None:
            self._netns = self._stack.enter_context(temp_netns())
        return self._netns

    def veth(self) -> tuple[str, int]:
        """(ifname, ifindex) of one end of a veth pair inside the scratch namespace."""
        if self._veth is None:
            from fastpath.netns.builder import iproute_in

            with iproute_in(self.netns()) as ipr:
                ipr.link("add", ifname="fpdoc0", kind="veth", peer="fpdoc1")
                self._veth = ("fpdoc0", ipr.link_lookup(ifname="fpdoc0")[0])
        return self._veth

    def xdp_state(self) -> tuple[str | None, int | None]:
        """(attach mode as `ip link` names it, program id) of the session veth."""
        from fastpath.netns.builder import iproute_in

        _, ifindex = self.veth()
        with iproute_in(self.netns()) as ipr:
            link = ipr.get_links(ifindex)[0]
        xdp = link.get_attr("IFLA_XDP")
        if xdp is None:
            return None, None
        return xdp.get_attr("IFLA_XDP_ATTACHED"), xdp.get_attr("IFLA_XDP_PROG_ID")


# ---------------------------------------------------------------------------------------
# Privileges and kernel

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
    status_text = _read(_under(root, "/proc/self/status"))
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
    mounted = [m for m in _mounts(root) if m[1] == mountpoint and m[2] == "bpf"]
    if not mounted:
        others = [m[2] for m in _mounts(root) if m[1] == mountpoint]
        what = f"{mountpoint} is {others[-1]}" if others else f"nothing mounted at {mountpoint}"
        return _fail(name, f"{what}: pinned maps and programs need bpffs", fix, mounted=False)
    # Pinning needs a writable bpffs; prove it with a throw-away directory (bpffs refuses
    # names containing a dot, so no hidden name).
    probe_dir = _under(root, mountpoint) / f"{NETNS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
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
    return _ok(name, f"bpf at {mountpoint}, writable", mounted=True, writable=True, options=mounted[-1][3])


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
    status_text = _read(_under(root, "/proc/self/status"))
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
    path = _under(root, "/sys/kernel/btf/vmlinux")
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
    current = _under(root, path)
    chain: list[str] = []
    for _ in range(hops):
        if not current.is_symlink():
            return current, chain
        target = os.readlink(current)
        chain.append(target)
        current = _under(root, target) if target.startswith("/") else current.parent / target
    return current, chain


def _headers_release(build: Path) -> str | None:
    uts = _read(build / "include/generated/utsrelease.h")
    if uts:
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts)
        if match:
            return match[1]
    return _read(build / "include/config/kernel.release")


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
        if _under(root, "/sys/kernel/kheaders.tar.xz").exists():
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


@contextmanager
def _maybe_session(session: DoctorSession | None) -> Iterator[DoctorSession]:
    if session is not None:
        yield session
        return
    with DoctorSession() as own:
        yield own


# ---------------------------------------------------------------------------------------
# XDP


def _probe_xdp_mode(session: DoctorSession | None, name: str, flags: int, want: str) -> Check:
    import bcc

    fix_for = {
        "xdp": "native XDP on veth needs Linux 4.19+ with CONFIG_VETH; check `dmesg`",
        "xdpgeneric": "generic XDP needs Linux 4.12+ with CONFIG_BPF_SYSCALL=y",
    }
    with _maybe_session(session) as s:
        fn = s.load_xdp("doctor_pass")
        ifname, _ = s.veth()
        try:
            with netns_context(s.netns()):
                bcc.BPF.attach_xdp(ifname.encode(), fn, flags)
        except Exception as exc:
            return _fail(name, f"attach to veth failed: {exc}", fix_for[want])
        try:
            mode, prog_id = s.xdp_state()
        finally:
            with netns_context(s.netns()):
                bcc.BPF.remove_xdp(ifname.encode(), flags)
        after, _ = s.xdp_state()
        expected_id = syscall.prog_info(fn.fd).id
        data = {"mode": mode, "prog_id": prog_id, "detached": after is None}
        if mode != want or prog_id != expected_id:
            return _fail(
                name,
                f"kernel reports mode {mode!r} prog {prog_id}, expected {want!r} prog {expected_id}",
                fix_for[want],
                **data,
            )
        if after is not None:
            return _fail(
                name,
                f"program still attached ({after}) after detach",
                "report a kernel bug; delete the veth to clear it",
                **data,
            )
        return _ok(name, f"attached as {want} to a veth in a scratch namespace, then detached", **data)


def probe_xdp_native(session: DoctorSession | None = None) -> Check:
    return _probe_xdp_mode(session, "xdp-native", syscall.XDP_FLAGS_DRV_MODE, "xdp")


def probe_xdp_generic(session: DoctorSession | None = None) -> Check:
    return _probe_xdp_mode(session, "xdp-generic", syscall.XDP_FLAGS_SKB_MODE, "xdpgeneric")


def probe_xdp_link(session: DoctorSession | None = None) -> Check:
    name = "xdp-link"
    with _maybe_session(session) as s:
        fn = s.load_xdp("doctor_pass")
        _, ifindex = s.veth()
        try:
            with netns_context(s.netns()):
                link_fd = syscall.xdp_link_create(fn.fd, ifindex, 0)
        except syscall.BpfError as exc:
            return _warn(
                name,
                f"BPF_LINK_CREATE(BPF_XDP) failed: {os.strerror(exc.errno)}",
                "needs Linux 5.9+; without it replace programs with netlink XDP_FLAGS_REPLACE (5.7+)",
                errno=exc.errno,
            )
        try:
            mode, prog_id = s.xdp_state()
        finally:
            os.close(link_fd)
        after, _ = s.xdp_state()
        data = {"mode": mode, "prog_id": prog_id, "detached_on_close": after is None}
        if prog_id != syscall.prog_info(fn.fd).id:
            return _fail(
                name, f"link created but the veth reports prog {prog_id}", "report a kernel bug", **data
            )
        if after is not None:
            return _fail(
                name,
                "program still attached after closing the link fd",
                "report a kernel bug; delete the veth to clear it",
                **data,
            )
        return _ok(name, f"bpf_link attach ({mode}) and detach on close work", **data)


def probe_xdp_test_run(session: DoctorSession | None = None) -> Check:
    name = "xdp-test-run"
    with _maybe_session(session) as s:
        fn = s.load_xdp("doctor_pass")
        try:
            run = syscall.prog_test_run(fn.fd, syn_packet(), repeat=100)
        except syscall.BpfError as exc:
            return _fail(
                name,
                f"BPF_PROG_TEST_RUN failed: {os.strerror(exc.errno)}",
                "needs Linux 4.12+ with CONFIG_BPF_SYSCALL; tests/bpf cannot run",
                errno=exc.errno,
            )
        if run.retval != XDP_PASS:
            return _fail(
                name,
                f"program returned {run.retval}, expected XDP_PASS ({XDP_PASS})",
                "report a kernel bug",
                retval=run.retval,
            )
        return _ok(
            name,
            f"XDP_PASS program returned {run.retval} on a 74-byte SYN ({run.duration_ns} ns/run)",
            retval=run.retval,
            ns_per_run=run.duration_ns,
        )


LIVE_FRAMES_FIX = (
    "floods still run on the packet engine, more slowly; the live engine needs Linux 5.18+ "
    "and a host that lets BPF_PROG_TEST_RUN transmit live frames"
)


def probe_live_frames() -> Check:
    name = "xdp-live-frames"
    from fastpath.labs import flood

    refused = flood.live_frames_refused()
    missing = flood.packet_engine_missing()
    forced = os.environ.get(flood.ENGINE_ENV)
    data: dict[str, Any] = {"live_frames_refused": refused, "packet_engine_missing": missing}
    live = "live frames work" if refused is None else f"live frames refused ({refused})"
    try:
        choice = flood.choose_engine()
    except FastpathError as exc:
        data["engine"] = None
        if refused is not None and missing is not None:
            return _fail(name, f"{live}; no flood engine: {missing}", "run as root (CAP_NET_RAW and CAP_BPF)",
                         **data)
        # Only the engine named by the environment cannot run: auto would pick the other one.
        return _warn(
            name,
            f"{live}; {flood.ENGINE_ENV}={forced}: {exc.message}",
            f"unset {flood.ENGINE_ENV} so that auto picks the engine that runs here",
            **data,
        )
    data["engine"] = choice.engine
    engine = "live" if choice.engine == "live" else "packet (AF_PACKET, sendmmsg)"
    if forced:
        engine += f" ({flood.ENGINE_ENV}={forced})"
    if refused is not None:
        fix = ROOT_FIX if os.geteuid() != 0 else LIVE_FRAMES_FIX
        return _warn(name, f"{live}; flood engine: {engine}", fix, **data)
    return _ok(name, f"{live}; flood engine: {engine}", **data)


def probe_veth_peers() -> Check:
    name = "veth-peer-programs"
    from fastpath.bpf import xdp

    peers = [a for a in xdp.attachments() if a.program == xdp.PEER_PROGRAM]
    data = {"peers": [{"ifname": a.ifname, "netns": a.netns, "prog_id": a.prog_id} for a in peers]}
    if not peers:
        return _ok(name, f"none installed ({xdp.PEER_PROGRAM} goes on a veth peer of native XDP)", **data)
    where = ", ".join(f"{a.ifname} in {a.netns or 'the root namespace'}" for a in peers)
    return _ok(name, f"{len(peers)} pass program(s) on veth peers installed by fastpath: {where}", **data)


def _cookie_round_trip(s: DoctorSession, func: str, family: int) -> tuple[bool, str]:
    try:
        fn = s.load_xdp(func)
    except RuntimeError as exc:
        if "unknown func" not in str(exc) and "invalid func" not in str(exc):
            raise  # not about the helpers (privileges, bcc): the runner reports it
        return False, "kernel lacks the helper (verifier: unknown func)"
    try:
        retval = syscall.prog_test_run(fn.fd, syn_packet(family)).retval
    except syscall.BpfError as exc:
        return True, f"loaded; round trip not run ({os.strerror(exc.errno)})"
    meaning = {
        XDP_TX: "cookie issued and accepted, forged one rejected",
        XDP_PASS: "forged cookie accepted",
        XDP_DROP: "genuine cookie rejected",
        XDP_ABORTED: "no cookie issued",
    }
    return retval == XDP_TX, meaning.get(retval, f"unexpected verdict {retval}")


def probe_syncookie_helpers(session: DoctorSession | None = None) -> Check:
    name = "syncookie-helpers"
    with _maybe_session(session) as s:
        ok4, why4 = _cookie_round_trip(s, "doctor_cookie_v4", socket.AF_INET)
        ok6, why6 = _cookie_round_trip(s, "doctor_cookie_v6", socket.AF_INET6)
    data = {
        "ipv4": {"ok": ok4, "detail": why4},
        "ipv6": {"ok": ok6, "detail": why6},
        "helper_ids": {
            "tcp_raw_gen_syncookie_ipv4": BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4,
            "tcp_raw_gen_syncookie_ipv6": BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6,
            "tcp_raw_check_syncookie_ipv4": BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4,
            "tcp_raw_check_syncookie_ipv6": BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6,
        },
    }
    detail = f"IPv4: {why4}; IPv6: {why6}"
    if ok4 and ok6:
        return _ok(name, "bpf_tcp_raw_{gen,check}_syncookie_ipv{4,6}: " + detail, **data)
    return _fail(name, detail, "the XDP SYN guard needs Linux 6.0+ with CONFIG_SYN_COOKIES=y", **data)


# ---------------------------------------------------------------------------------------
# io_uring, through raw syscalls so the probe depends on the kernel alone

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR_IO_URING_SETUP = 425
NR_IO_URING_ENTER = 426
NR_IO_URING_REGISTER = 427


def _syscall(nr: int, *args: Any) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


class _SqOffsets(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint32)
        for n in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")
    ] + [("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint32)
        for n in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")
    ] + [("user_addr", ctypes.c_uint64)]


class _UringParams(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint32)
        for n in ("sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle", "features", "wq_fd")
    ] + [("resv", ctypes.c_uint32 * 3), ("sq_off", _SqOffsets), ("cq_off", _CqOffsets)]


# enum io_uring_op (include/uapi/linux/io_uring.h); the probe reports numbers, these name them.
IORING_OPS = (
    "NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE "
    "SENDMSG RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT FALLOCATE "
    "OPENAT CLOSE FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV OPENAT2 EPOLL_CTL "
    "SPLICE PROVIDE_BUFFERS REMOVE_BUFFERS TEE SHUTDOWN RENAMEAT UNLINKAT MKDIRAT SYMLINKAT "
    "LINKAT MSG_RING FSETXATTR SETXATTR FGETXATTR GETXATTR SOCKET URING_CMD SEND_ZC SENDMSG_ZC "
    "READ_MULTISHOT WAITID FUTEX_WAIT FUTEX_WAKE FUTEX_WAITV FIXED_FD_INSTALL FTRUNCATE BIND "
    "LISTEN RECV_ZC EPOLL_WAIT READV_FIXED WRITEV_FIXED PIPE"
).split()
IORING_OP = {op: i for i, op in enumerate(IORING_OPS)}
# What fastpath's echo servers submit.
REQUIRED_OPS = ("ACCEPT", "RECV", "SEND", "CLOSE", "ASYNC_CANCEL", "TIMEOUT", "PROVIDE_BUFFERS")

IORING_FEATS = (
    "SINGLE_MMAP NODROP SUBMIT_STABLE RW_CUR_POS CUR_PERSONALITY FAST_POLL POLL_32BITS "
    "SQPOLL_NONFIXED EXT_ARG NATIVE_WORKERS RSRC_TAGS CQE_SKIP LINKED_FILE REG_REG_RING "
    "RECVSEND_BUNDLE MIN_TIMEOUT RW_ATTR NO_IOWAIT"
).split()

IORING_REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1
IORING_ENTER_GETEVENTS = 1
IORING_OFF_SQES = 0x10000000
IOSQE_BUFFER_SELECT = 1 << 5
IORING_ACCEPT_MULTISHOT = 1 << 0
IORING_RECV_MULTISHOT = 1 << 1
IORING_CQE_F_BUFFER = 1 << 0
IORING_CQE_F_MORE = 1 << 1
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
_CQE = struct.Struct("<QiI")


class _Ring:
    """The least io_uring that can submit one SQE and reap CQEs: enough to probe behaviour."""

    def __init__(self, entries: int = 8) -> None:
        self.params = _UringParams()
        self.fd = _syscall(NR_IO_URING_SETUP, ctypes.c_uint(entries), ctypes.byref(self.params))
        try:
            p = self.params
            sq_size = p.sq_off.array + p.sq_entries * 4
            cq_size = p.cq_off.cqes + p.cq_entries * _CQE.size
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
            if p.features & 1:  # IORING_FEAT_SINGLE_MMAP
                self.sq = self.cq = mmap.mmap(self.fd, max(sq_size, cq_size), flags, prot)
            else:
                self.sq = mmap.mmap(self.fd, sq_size, flags, prot, offset=0)
                self.cq = mmap.mmap(self.fd, cq_size, flags, prot, offset=0x8000000)
            self.sqes = mmap.mmap(self.fd, p.sq_entries * _SQE.size, flags, prot, offset=IORING_OFF_SQES)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        for m in {id(self.sq): self.sq, id(self.cq): self.cq, id(self.sqes): self.sqes}.values():
            m.close()
        os.close(self.fd)

    def _u32(self, m: mmap.mmap, off: int) -> int:
        return int(struct.unpack_from("<I", m, off)[0])

    def submit(
        self,
        opcode: int,
        *,
        fd: int = -1,
        flags: int = 0,
        ioprio: int = 0,
        off: int = 0,
        addr: int = 0,
        length: int = 0,
        op_flags: int = 0,
        user_data: int = 0,
        buf_group: int = 0,
    ) -> None:
        o = self.params.sq_off
        tail = self._u32(self.sq, o.tail)
        index = tail & self._u32(self.sq, o.ring_mask)
        _SQE.pack_into(
            self.sqes,
            index * _SQE.size,
            opcode,
            flags,
            ioprio,
            fd,
            off,
            addr,
            length,
            op_flags,
            user_data,
            buf_group,
            0,
            0,
            0,
            0,
        )
        struct.pack_into("<I", self.sq, o.array + index * 4, index)
        struct.pack_into("<I", self.sq, o.tail, (tail + 1) & 0xFFFFFFFF)
        _syscall(
            NR_IO_URING_ENTER,
            ctypes.c_uint(self.fd),
            ctypes.c_uint(1),
            ctypes.c_uint(0),
            ctypes.c_uint(0),
            None,
            ctypes.c_size_t(0),
        )

    def reap(self, user_data: int, timeout: float = 1.0) -> tuple[int, int] | None:
        """(res, flags) of the next CQE for `user_data`; others are dropped; None on timeout."""
        o = self.params.cq_off
        deadline = time.monotonic() + timeout
        while True:
            head, tail = self._u32(self.cq, o.head), self._u32(self.cq, o.tail)
            while head != tail:
                slot = head & self._u32(self.cq, o.ring_mask)
                ud, res, flags = _CQE.unpack_from(self.cq, o.cqes + slot * _CQE.size)
                head = (head + 1) & 0xFFFFFFFF
                struct.pack_into("<I", self.cq, o.head, head)
                if ud == user_data:
                    return res, flags
            if time.monotonic() > deadline:
                return None
            _syscall(
                NR_IO_URING_ENTER,
                ctypes.c_uint(self.fd),
                ctypes.c_uint(0),
                ctypes.c_uint(0),
                ctypes.c_uint(IORING_ENTER_GETEVENTS),
                None,
                ctypes.c_size_t(0),
            )
            time.sleep(0.001)

    def probe_ops(self) -> tuple[int, set[int]]:
        """IORING_REGISTER_PROBE: (last_op, supported opcodes)."""
        nops = 256
        buf = ctypes.create_string_buffer(16 + nops * 8)
        _syscall(
            NR_IO_URING_REGISTER,
            ctypes.c_uint(self.fd),
            ctypes.c_uint(IORING_REGISTER_PROBE),
            buf,
            ctypes.c_uint(nops),
        )
        last_op, ops_len = buf.raw[0], buf.raw[1]
        supported = set()
        for i in range(ops_len):
            op, _, op_flags = struct.unpack_from("<BBH", buf.raw, 16 + i * 8)
            if op_flags & IO_URING_OP_SUPPORTED:
                supported.add(op)
        return last_op, supported


def _op_name(op: int) -> str:
    return IORING_OPS[op] if op < len(IORING_OPS) else f"OP_{op}"


def probe_io_uring(root: Path = ROOT) -> Check:
    name = "io-uring"
    disabled = _read_int(_under(root, "/proc/sys/kernel/io_uring_disabled"))
    data: dict[str, Any] = {"io_uring_disabled": disabled}
    if disabled == 2:
        return _fail(
            name,
            "kernel.io_uring_disabled = 2: io_uring is off for everyone",
            "sysctl -w kernel.io_uring_disabled=0",
            **data,
        )
    try:
        ring = _Ring(4)
    except OSError as exc:
        fix = (
            "boot a kernel with CONFIG_IO_URING=y"
            if exc.errno == errno.ENOSYS
            else "sysctl -w kernel.io_uring_disabled=0, or run as a member of kernel.io_uring_group"
        )
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", fix, errno=exc.errno, **data)
    try:
        feats = [f for i, f in enumerate(IORING_FEATS) if ring.params.features >> i & 1]
    finally:
        ring.close()
    data["features"] = feats
    sysctl = "" if disabled is None else f"io_uring_disabled={disabled}, "
    return _ok(
        name,
        f"{sysctl}io_uring_setup works; {len(feats)} feature flags "
        f"(FAST_POLL {'yes' if 'FAST_POLL' in feats else 'no'})",
        **data,
    )


def probe_io_uring_opcodes() -> Check:
    name = "io-uring-opcodes"
    try:
        ring = _Ring(4)
    except OSError as exc:
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", "see the io-uring row")
    try:
        last_op, ops = ring.probe_ops()
    except OSError as exc:
        return _fail(
            name, f"IORING_REGISTER_PROBE failed: {exc.strerror}", "needs Linux 5.6+", errno=exc.errno
        )
    finally:
        ring.close()
    names = sorted((_op_name(op) for op in ops), key=lambda n: IORING_OP.get(n, 999))
    required = {op: IORING_OP[op] in ops for op in REQUIRED_OPS}
    data = {"last_op": last_op, "supported": names, "required": required}
    missing = [op for op, ok in required.items() if not ok]
    if missing:
        return _fail(
            name,
            f"{len(ops)} opcodes, missing {', '.join(missing)}",
            f"boot Linux 5.19+ (fastpath's echo servers need all of {', '.join(REQUIRED_OPS)})",
            **data,
        )
    return _ok(name, f"{len(ops)} opcodes (last {last_op}); has {', '.join(REQUIRED_OPS)}", **data)


def _multishot_round_trip(ring: _Ring) -> dict[str, Any]:
    """Multishot accept on a loopback listener, then multishot recv into provided buffers."""
    result: dict[str, Any] = {"accept": False, "recv": False}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client: socket.socket | None = None
    conn: socket.socket | None = None
    nbufs, buf_size, group = 4, 64, 7
    buffers = ctypes.create_string_buffer(nbufs * buf_size)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        client = socket.create_connection(listener.getsockname(), timeout=1)
        ring.submit(IORING_OP["ACCEPT"], fd=listener.fileno(), ioprio=IORING_ACCEPT_MULTISHOT, user_data=1)
        cqe = ring.reap(1)
        result["accept_cqe"] = cqe
        if cqe is not None and cqe[0] >= 0:
            conn = socket.socket(fileno=cqe[0])
            result["accept"] = bool(cqe[1] & IORING_CQE_F_MORE)
        else:
            conn, _ = listener.accept()
        ring.submit(
            IORING_OP["PROVIDE_BUFFERS"],
            fd=nbufs,
            addr=ctypes.addressof(buffers),
            length=buf_size,
            off=0,
            buf_group=group,
            user_data=2,
        )
        result["provide_cqe"] = ring.reap(2)
        ring.submit(
            IORING_OP["RECV"],
            fd=conn.fileno(),
            flags=IOSQE_BUFFER_SELECT,
            ioprio=IORING_RECV_MULTISHOT,
            buf_group=group,
            user_data=3,
        )
        payload = b"fastpath doctor"
        client.sendall(payload)
        cqe = ring.reap(3)
        result["recv_cqe"] = cqe
        if cqe is not None and cqe[0] == len(payload) and cqe[1] & IORING_CQE_F_BUFFER:
            bid = cqe[1] >> 16
            got = buffers.raw[bid * buf_size : bid * buf_size + cqe[0]]
            result["recv"] = bool(cqe[1] & IORING_CQE_F_MORE) and got == payload
        # End both multishot requests before the buffers go away: EOF ends the recv, a
        # cancel ends the accept.
        client.close()
        client = None
        if result["recv"]:
            ring.reap(3)
        if result["accept"]:
            ring.submit(IORING_OP["ASYNC_CANCEL"], addr=1, user_data=4)
            result["cancel_cqe"] = ring.reap(4)
            ring.reap(1)
    finally:
        for sock in (client, conn, listener):
            if sock is not None:
                sock.close()
    return result


def probe_io_uring_multishot(root: Path = ROOT) -> Check:
    name = "io-uring-multishot"
    version = parse_kernel_version(_kernel_release(root))
    try:
        ring = _Ring(16)
    except OSError as exc:
        return _fail(name, f"io_uring_setup failed: {exc.strerror}", "see the io-uring row")
    try:
        result = _multishot_round_trip(ring)
    finally:
        ring.close()
    # What the version alone would predict (accept 5.19, recv 6.0), next to what was measured.
    result["expected_by_version"] = {"accept": version >= (5, 19), "recv": version >= (6, 0)}
    got = [k for k in ("accept", "recv") if result[k]]
    if len(got) == 2:
        return _ok(
            name,
            "multishot accept and multishot recv with provided buffers both "
            "post CQEs with IORING_CQE_F_MORE on loopback",
            **result,
        )
    missing = [k for k in ("accept", "recv") if not result[k]]
    return _warn(
        name,
        f"multishot {' and '.join(missing)} not available "
        f"(accept CQE {result.get('accept_cqe')}, recv CQE {result.get('recv_cqe')})",
        "multishot accept needs Linux 5.19+, multishot recv 6.0+; without them a server "
        "must re-arm a single-shot accept/recv after every completion",
        **result,
    )


def probe_liburing() -> Check:
    name = "liburing"
    version = _pkg_config("--modversion", "liburing")
    if version is None:
        return _fail(name, "pkg-config finds no liburing", "apt install liburing-dev pkg-config")
    libdir = Path(_pkg_config("--variable=libdir", "liburing") or "/usr/lib")
    shared = sorted(p.name for p in libdir.glob("liburing.so*"))
    ffi = sorted(p.name for p in libdir.glob("liburing-ffi.so*"))
    data = {"version": version, "libdir": str(libdir), "shared": shared, "ffi": ffi}
    if not shared:
        return _fail(
            name, f"liburing {version} has no shared library in {libdir}", "apt install liburing2", **data
        )
    ffi_note = (
        f"{ffi[0]} present"
        if ffi
        else "no liburing-ffi.so (arrives with 2.4): the "
        "inline prep helpers are not callable from ctypes, hence uring/'s C shim"
    )
    if _version_tuple(version) < (2, 2):
        return _warn(
            name,
            f"liburing {version}: older than 2.2, no multishot prep helpers",
            "install liburing 2.2 or newer",
            **data,
        )
    return _ok(name, f"liburing {version} ({shared[-1]}); {ffi_note}", **data)


# ---------------------------------------------------------------------------------------
# DPDK-side resources: hugepages, VFIO/UIO, NICs, the library and its PMDs


def read_hugepages(root: Path = ROOT) -> dict[str, Any]:
    """Hugepage pools per size, system-wide and per NUMA node, plus hugetlbfs mounts."""

    def pools(base: Path) -> dict[str, dict[str, int | None]]:
        out = {}
        for d in sorted(base.glob("hugepages-*kB")):
            out[d.name.removeprefix("hugepages-")] = {
                "total": _read_int(d / "nr_hugepages"),
                "free": _read_int(d / "free_hugepages"),
            }
        return out

    nodes = {}
    for node in sorted(_under(root, "/sys/devices/system/node").glob("node[0-9]*")):
        nodes[node.name] = pools(node / "hugepages")
    mounts = [{"path": m[1], "options": m[3]} for m in _mounts(root) if m[2] == "hugetlbfs"]
    return {"sizes": pools(_under(root, "/sys/kernel/mm/hugepages")), "nodes": nodes, "hugetlbfs": mounts}


def probe_hugepages(root: Path = ROOT) -> Check:
    name = "hugepages"
    data = read_hugepages(root)
    sizes = data["sizes"]
    summary = ", ".join(f"{size}: {p['free']}/{p['total']} free" for size, p in sizes.items())
    per_node = "; ".join(
        f"{node} " + ", ".join(f"{s} {p['free']}/{p['total']}" for s, p in pools.items())
        for node, pools in data["nodes"].items()
    )
    reserve = f"echo 256 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or run {SETUP_HOST})"
    if not sizes:
        return _warn(
            name,
            "no /sys/kernel/mm/hugepages: kernel without CONFIG_HUGETLBFS",
            "boot a kernel with CONFIG_HUGETLBFS=y, or run DPDK with --no-huge",
            **data,
        )
    if not any((p["total"] or 0) > 0 for p in sizes.values()):
        return _warn(name, f"none reserved ({summary})", reserve, **data)
    if not any((p["free"] or 0) > 0 for p in sizes.values()):
        return _warn(
            name,
            f"all reserved pages in use ({summary})",
            "stop the process holding them or reserve more: " + reserve,
            **data,
        )
    if not data["hugetlbfs"]:
        return _warn(
            name,
            f"{summary}, but no hugetlbfs mounted",
            f"mount -t hugetlbfs nodev /dev/hugepages (or run {SETUP_HOST})",
            **data,
        )
    where = ", ".join(m["path"] for m in data["hugetlbfs"])
    node_note = f"; per node: {per_node}" if per_node else ""
    return _ok(name, f"{summary}{node_note}; hugetlbfs at {where}", **data)


def read_vfio(root: Path = ROOT) -> dict[str, Any]:
    groups = _under(root, "/sys/kernel/iommu_groups")
    drivers = _under(root, "/sys/bus/pci/drivers")
    dev_vfio = _under(root, "/dev/vfio")
    noiommu = _read(_under(root, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"))
    return {
        "iommu_groups": len(list(groups.iterdir())) if groups.is_dir() else 0,
        "dev_vfio": sorted(p.name for p in dev_vfio.iterdir()) if dev_vfio.is_dir() else None,
        "vfio_pci": (drivers / "vfio-pci").is_dir(),
        "uio_pci_generic": (drivers / "uio_pci_generic").is_dir(),
        "igb_uio": (drivers / "igb_uio").is_dir(),
        "noiommu_mode": noiommu in ("Y", "1"),
        "module_support": _has_module_support(root),
    }


def probe_vfio(root: Path = ROOT) -> Check:
    name = "vfio"
    d = read_vfio(root)
    uio = [drv for drv in ("uio_pci_generic", "igb_uio") if d[drv]]
    iommu_fix = "boot with intel_iommu=on (or amd_iommu=on) iommu=pt"
    if d["vfio_pci"] and d["iommu_groups"] > 0:
        return _ok(name, f"vfio-pci with {d['iommu_groups']} IOMMU groups", **d)
    if d["vfio_pci"] and d["noiommu_mode"]:
        return _warn(name, "vfio-pci in unsafe no-IOMMU mode: DMA is not isolated", iommu_fix, **d)
    if d["vfio_pci"]:
        return _warn(
            name,
            "vfio-pci loaded but no IOMMU groups: it cannot bind devices",
            f"{iommu_fix}, or echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
            **d,
        )
    if uio:
        return _warn(
            name,
            f"no vfio-pci, only {', '.join(uio)}: works, without DMA isolation",
            _kernel_feature_fix(root, ("CONFIG_VFIO_PCI", "vfio-pci")),
            **d,
        )
    return _warn(
        name,
        "this kernel has no VFIO/UIO: DPDK can use only virtual devices "
        "(net_af_packet, net_af_xdp, net_tap, net_memif, ...)",
        _kernel_feature_fix(root, ("CONFIG_VFIO_PCI", "vfio-pci")) + " with an IOMMU, to give "
        "DPDK a physical NIC",
        **d,
    )


def _default_route_ifaces(root: Path) -> set[str]:
    ifaces = set()
    for line in (_read(_under(root, "/proc/net/route")) or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000" and parts[7] == "00000000":
            ifaces.add(parts[0])
    for line in (_read(_under(root, "/proc/net/ipv6_route")) or "").splitlines():
        parts = line.split()
        if len(parts) == 10 and parts[0] == "0" * 32 and parts[1] == "00" and parts[9] != "lo":
            ifaces.add(parts[9])
    return ifaces


def read_pci_nics(root: Path = ROOT) -> list[dict[str, Any]]:
    """PCI functions of class 0x02 (network controller) with driver and kernel interfaces."""
    defaults = _default_route_ifaces(root)
    nics = []
    for dev in sorted(_under(root, "/sys/bus/pci/devices").glob("*")):
        cls = _read(dev / "class") or ""
        if not cls.lower().startswith("0x02"):
            continue
        driver = dev / "driver"
        netdevs = sorted(
            {Path(p).name for p in glob.glob(str(dev / "net" / "*"))}
            | {Path(p).name for p in glob.glob(str(dev / "*" / "net" / "*"))}
        )
        nics.append(
            {
                "address": dev.name,
                "class": cls,
                "vendor": _read(dev / "vendor"),
                "device": _read(dev / "device"),
                "driver": Path(os.readlink(driver)).name if driver.is_symlink() else None,
                "netdevs": netdevs,
                "default_route": any(n in defaults for n in netdevs),
            }
        )
    return nics


def probe_pci_nics(root: Path = ROOT) -> Check:
    name = "pci-nics"
    nics = read_pci_nics(root)
    if not nics:
        return _warn(
            name,
            "no PCI network controllers: DPDK has only virtual devices here",
            "add a NIC (or an SR-IOV VF) for DPDK; net_af_packet/net_af_xdp on veth cover development",
            nics=nics,
        )
    desc = ", ".join(
        f"{n['address']} {n['driver'] or 'no driver'}"
        + (
            f" ({', '.join(n['netdevs'])}{', default route' if n['default_route'] else ''})"
            if n["netdevs"]
            else ""
        )
        for n in nics
    )
    spare = [n for n in nics if not n["default_route"]]
    if not spare:
        return _warn(
            name,
            f"{desc}: every NIC carries the default route",
            "binding it to DPDK would cut this machine off the network; add a second "
            "NIC or use net_af_packet/net_af_xdp on veth",
            nics=nics,
        )
    return _ok(name, f"{len(nics)} NIC(s): {desc}", nics=nics)


MIN_DPDK = (22, 11)
WANTED_PMDS = ("af_packet", "af_xdp", "null", "tap", "memif", "ring", "virtio", "vhost")


def probe_dpdk() -> Check:
    name = "dpdk"
    version = _pkg_config("--modversion", "libdpdk")
    if version is None:
        return _fail(name, "pkg-config finds no libdpdk", "apt install dpdk libdpdk-dev")
    data = {"version": version}
    if _version_tuple(version)[:2] < MIN_DPDK:
        return _warn(
            name,
            f"DPDK {version} is older than 22.11 (fastpath's l2fwd targets the 22.11 LTS API)",
            "install DPDK 22.11 or newer",
            **data,
        )
    testpmd = shutil.which("dpdk-testpmd")
    data["testpmd"] = testpmd
    return _ok(name, f"DPDK {version}" + (f", {testpmd}" if testpmd else ""), **data)


def find_pmd_dirs(libdir: Path | None = None) -> list[Path]:
    if libdir is None:
        found = _pkg_config("--variable=libdir", "libdpdk")
        if found is None:
            return []
        libdir = Path(found)
    return sorted((libdir / "dpdk").glob("pmds-*"))


def probe_dpdk_pmds(libdir: Path | None = None) -> Check:
    name = "dpdk-pmds"
    dirs = find_pmd_dirs(libdir)
    if not dirs:
        return _fail(
            name,
            "no DPDK PMD directory (<libdir>/dpdk/pmds-*)",
            "apt install dpdk (the PMDs ship as librte-net-* packages)",
        )
    pmd_dir = dirs[-1]
    net = sorted(
        {m[1] for p in pmd_dir.iterdir() if (m := re.fullmatch(r"librte_net_(\w+?)\.so(\..*)?", p.name))}
    )
    data = {"dir": str(pmd_dir), "net": net}
    virtual = [p for p in WANTED_PMDS if p in net]
    if not {"af_packet", "af_xdp"} & set(net):
        return _warn(
            name,
            f"{pmd_dir}: {len(net)} net PMDs, neither af_packet nor af_xdp",
            "apt install librte-net-af-packet23 librte-net-af-xdp23",
            **data,
        )
    return _ok(name, f"{len(net)} net PMDs in {pmd_dir}; virtual: {', '.join(virtual)}", **data)


# ---------------------------------------------------------------------------------------
# Kernel networking peers: tunnels, IPVS, SYNPROXY


def probe_tunnels(session: DoctorSession | None = None, root: Path = ROOT) -> Check:
    name = "ipip-gre"
    from pyroute2.netlink.exceptions import NetlinkError

    from fastpath.netns.builder import iproute_in

    kinds = {
        "ipip": {"ipip_local": "192.0.2.1", "ipip_remote": "192.0.2.2"},
        "gre": {"gre_local": "192.0.2.1", "gre_remote": "192.0.2.2"},
    }
    results: dict[str, str] = {}
    with _maybe_session(session) as s, iproute_in(s.netns()) as ipr:
        for kind, attrs in kinds.items():
            ifname = f"fpdoc-{kind}"
            try:
                ipr.link("add", ifname=ifname, kind=kind, **attrs)
                results[kind] = "ok"
                ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                results[kind] = os.strerror(exc.code)
    missing = [k for k, v in results.items() if v != "ok"]
    detail = ", ".join(f"{k}: {v}" for k, v in results.items())
    if not missing:
        return _ok(name, f"created and deleted {' and '.join(results)} links ({detail})", **results)
    configs = {"ipip": ("CONFIG_NET_IPIP", "ipip"), "gre": ("CONFIG_NET_IPGRE", "ip_gre")}
    return _warn(
        name,
        f"kernel lacks {' and '.join(missing)} ({detail}): the load balancer's "
        f"{'/'.join(missing)} mode can only be verified by golden packets",
        _kernel_feature_fix(root, *(configs[k] for k in missing)),
        **results,
    )


def probe_ipvs(root: Path = ROOT) -> Check:
    name = "ipvs"
    present = _under(root, "/proc/net/ip_vs").exists()
    if present:
        return _ok(name, "IPVS present (/proc/net/ip_vs)", present=True)
    return _warn(
        name,
        "kernel lacks IPVS (no /proc/net/ip_vs): benchmarks cannot run IPVS beside the XDP load balancer",
        _kernel_feature_fix(root, ("CONFIG_IP_VS", "ip_vs")),
        present=False,
    )


SYNPROXY_NFT = """\
table inet fpdoc {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 80 ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    }
}
"""


IPTABLES_SYNPROXY = (
    "-w -A INPUT -p tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED "
    "-j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460"
).split()


def probe_synproxy(session: DoctorSession | None = None) -> Check:
    name = "synproxy"
    nft, iptables = shutil.which("nft"), shutil.which("iptables")
    data: dict[str, Any] = {"nft": nft, "iptables": iptables}
    if nft is None and iptables is None:
        return _warn(
            name,
            "neither nft nor iptables installed: no SYNPROXY peer for the SYN guard benchmark",
            "apt install nftables iptables",
            **data,
        )
    with _maybe_session(session) as s, netns_context(s.netns()):
        # Children inherit the thread's namespace: these rules never touch the host's tables.
        if nft is not None:
            data["nft_version"] = _run([nft, "--version"])[1]
            rc, _, err = _run([nft, "-f", "-"], stdin=SYNPROXY_NFT)
            data["nft_synproxy"] = rc == 0
            data["nft_error"] = _last_lines(err.splitlines(), 1) if rc else None
            if rc == 0:
                deleted = _run([nft, "delete", "table", "inet", "fpdoc"])[0] == 0
                data["nft_cleaned"] = deleted
        if iptables is not None:
            data["iptables_version"] = _run([iptables, "-V"])[1]
            rc, _, err = _run([iptables, *IPTABLES_SYNPROXY])
            data["iptables_synproxy"] = rc == 0
            data["iptables_error"] = _last_lines(err.splitlines(), 1) if rc else None
            if rc == 0:
                _run([iptables, "-w", "-F", "INPUT"])
    have = [t for t in ("nft", "iptables") if data.get(f"{t}_synproxy")]
    if have:
        versions = "; ".join(data[f"{t}_version"] for t in have)
        return _ok(
            name,
            f"SYNPROXY rule accepted by {' and '.join(have)} in a scratch namespace ({versions})",
            **data,
        )
    errors = "; ".join(e for e in (data.get("nft_error"), data.get("iptables_error")) if e)
    return _warn(
        name,
        f"SYNPROXY rejected: {errors}",
        "needs CONFIG_NFT_SYNPROXY / "
        "CONFIG_IP_NF_TARGET_SYNPROXY; without it the SYN guard has no kernel peer "
        "to compare against",
        **data,
    )


# ---------------------------------------------------------------------------------------
# Registry and runner

Probe = Callable[[DoctorSession], Check]

PROBES: dict[str, Probe] = {
    "privileges": lambda s: probe_privileges(s.root),
    "kernel": lambda s: probe_kernel(s.root),
    "bpffs": lambda s: probe_bpffs(s.root),
    "bpf-memlock": lambda s: probe_bpf_memlock(s.root),
    "btf": lambda s: probe_btf(s.root),
    "kernel-headers": lambda s: probe_kernel_headers(s.root),
    "bcc": probe_bcc,
    "xdp-native": probe_xdp_native,
    "xdp-generic": probe_xdp_generic,
    "xdp-link": probe_xdp_link,
    "xdp-test-run": probe_xdp_test_run,
    "xdp-live-frames": lambda s: probe_live_frames(),
    "veth-peer-programs": lambda s: probe_veth_peers(),
    "syncookie-helpers": probe_syncookie_helpers,
    "io-uring": lambda s: probe_io_uring(s.root),
    "io-uring-opcodes": lambda s: probe_io_uring_opcodes(),
    "io-uring-multishot": lambda s: probe_io_uring_multishot(s.root),
    "liburing": lambda s: probe_liburing(),
    "hugepages": lambda s: probe_hugepages(s.root),
    "vfio": lambda s: probe_vfio(s.root),
    "pci-nics": lambda s: probe_pci_nics(s.root),
    "dpdk": lambda s: probe_dpdk(),
    "dpdk-pmds": lambda s: probe_dpdk_pmds(),
    "ipip-gre": lambda s: probe_tunnels(s, s.root),
    "ipvs": lambda s: probe_ipvs(s.root),
    "synproxy": probe_synproxy,
}


def run_probe(name: str, probe: Probe, session: DoctorSession) -> Check:
    """Run one probe; whatever it raises becomes a FAIL row, and the time it took is kept."""
    t0 = time.monotonic()
    try:
        result = probe(session)
    except Exception as exc:
        fix = (
            ROOT_FIX
            if _needs_root(exc)
            else f"fix the cause above, then re-run `fastpath doctor --only {name}`"
        )
        result = _fail(name, f"probe error: {type(exc).__name__}: {exc}", fix)
    return replace(result, name=name, elapsed_s=round(time.monotonic() - t0, 4))


def run_checks(names: Sequence[str] | None = None, *, root: Path = ROOT) -> list[Check]:
    """Run the named probes (all by default) in registry order, sharing one session."""
    selected = list(PROBES) if not names else list(names)
    unknown = [n for n in selected if n not in PROBES]
    if unknown:
        raise FastpathError(f"unknown check {', '.join(unknown)}", fix=f"choose from: {', '.join(PROBES)}")
    if root == ROOT and NETNS_DIR.is_dir():
        reap_stale_netns()
    with DoctorSession(root) as session:
        return [run_probe(n, PROBES[n], session) for n in PROBES if n in selected]


def check(name: str) -> Check:
    """Run a single probe, e.g. for a test's skip decision."""
    return run_checks([name])[0]


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def report(checks: Sequence[Check], elapsed_s: float | None = None) -> dict[str, Any]:
    """The --json document."""
    counts = {str(s): sum(c.status is s for c in checks) for s in Status}
    doc: dict[str, Any] = {
        "ok": exit_code(checks) == 0,
        "summary": counts,
        "checks": [c.to_dict() for c in checks],
    }
    if elapsed_s is not None:
        doc["elapsed_s"] = round(elapsed_s, 3)
    return doc


# ---------------------------------------------------------------------------------------
# CLI

STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}

EPILOG = """\
examples:
  fastpath doctor                   every check as a table; exit 1 if any FAILs
  fastpath doctor --json            the same with measured data, for scripts
  fastpath doctor --only xdp-native --only io-uring-opcodes
"""


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=list(PROBES),
        help=f"run only this check (repeatable): {', '.join(PROBES)}",
    )
    parser.set_defaults(func=handler)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check every capability fastpath uses",
        description="Probe the kernel, tools and privileges that fastpath's data planes need.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)


def build_parser() -> argparse.ArgumentParser:
    return configure_parser(
        argparse.ArgumentParser(
            prog="fastpath doctor",
            description="Probe what fastpath's data planes need.",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def handler(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fastpath.output import info, print_json, print_table

    t0 = time.monotonic()
    checks = run_checks(args.only)
    elapsed = time.monotonic() - t0
    if args.json:
        print_json(report(checks, elapsed))
    else:
        rows = [
            (
                escape(c.name),
                f"[{STATUS_STYLE[c.status]}]{c.status}[/]",
                escape(c.detail),
                escape(c.fix or ""),
            )
            for c in checks
        ]
        print_table(
            ("capability", "status", "detail", "fix"),
            rows,
            title=f"fastpath doctor: {platform.node()} {platform.release()}",
        )
        counts = report(checks)["summary"]
        info(f"{len(checks)} checks in {elapsed:.1f} s: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return exit_code(checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return handler(args)
    except FastpathError as exc:
        print(f"fastpath doctor: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
