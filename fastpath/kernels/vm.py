"""Boot one kernel with virtme-ng and run the guest entry in it, supervised.

The guest sees the host's root read-only over 9p, plus a second 9p share of it that the
guest mounts with caching (see fastpath.kernels.guest) and the output directory read-write.
Without usable KVM (no /dev/kvm, or a CPU that offers no vmx/svm to this machine, as in a
VM without nested virtualisation) qemu emulates the CPU (TCG).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastpath.errors import CapabilityError
from fastpath.kernels.guest import FAST_TAG
from fastpath.kernels.packages import KernelTree, Tools

# Under TCG, a CPU model without AVX: with vng's `-cpu max`, glibc and LLVM choose AVX code
# that qemu emulates slowly (one bcc compile: 260 s with max, 85 s with qemu64, measured on
# a 2-core host). qemu takes the last -cpu given.
TCG_CPU = " -cpu qemu64"


def kvm_usable(cpuinfo: str, dev_kvm_rw: bool) -> bool:
    """KVM only when /dev/kvm opens and the CPU shows hardware virtualisation: a nested
    guest without it has a /dev/kvm whose VMs hang at boot."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return dev_kvm_rw and bool(flags & {"vmx", "svm"})


def host_kvm_usable() -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return kvm_usable(cpuinfo, os.access("/dev/kvm", os.R_OK | os.W_OK))


def find_vng(python: str) -> str:
    """vng from the project's venv (pip, pinned in pyproject.toml), else from PATH."""
    beside = Path(python).parent / "vng"
    if beside.exists():
        return str(beside)
    found = shutil.which("vng")
    if found is None:
        raise CapabilityError("virtme-ng (vng) not found",
                              fix="run scripts/setup-host.sh (pip installs virtme-ng)")
    return found


def require_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        raise CapabilityError("qemu-system-x86_64 not found",
                              fix="run scripts/setup-host.sh (apt-get install qemu-system-x86)")


@dataclass(frozen=True)
class Boot:
    tree: KernelTree
    tools: Tools
    repo: Path
    out: Path
    python: str
    memory: str = "3G"
    cpus: int = 2
    kvm: bool = False
    headers: tuple[Path, Path] | None = None  # (build, source) instead of the kernel's own

    def guest_command(self, guest_args: list[str]) -> str:
        env = f"PYTHONPATH={shlex.quote(str(self.repo))} PYTHONUNBUFFERED=1"
        argv = [self.python, "-m", "fastpath.kernels.guest", "--outer", "--moddir", str(self.tree.moddir),
                "--out", str(self.out), *guest_args]
        if self.headers:
            argv.append(f"--headers={self.headers[0]}:{self.headers[1]}")
        return f"env {env} " + " ".join(shlex.quote(a) for a in argv)

    def command(self, vng: str, guest_args: list[str]) -> list[str]:
        share = (f"-fsdev local,id=fproot,path=/,security_model=none,readonly=on,multidevs=remap "
                 f"-device virtio-9p-pci,fsdev=fproot,mount_tag={FAST_TAG}")
        cmd = [vng, "--run", str(self.tree.image), "--busybox", str(self.tools.busybox), "--user", "root",
               "--memory", self.memory, "--cpus", str(self.cpus), "--force-9p", "--rwdir", str(self.out),
               "--cwd", str(self.repo), f"--qemu-opts={share}{'' if self.kvm else TCG_CPU}",
               "--exec", self.guest_command(guest_args)]
        if not self.kvm:
            cmd.insert(3, "--disable-kvm")
        return cmd


@dataclass
class BootResult:
    returncode: int
    boot_s: float | None
    total_s: float
    timed_out: bool
    tail: list[str]


def run(boot: Boot, vng: str, guest_args: list[str], timeout_s: float, log: Path,
        on_line: Callable[[str], None]) -> BootResult:
    """Boot, stream the guest's lines, stop everything on timeout or interrupt."""
    env = {**os.environ, "PATH": f"{boot.tools.path}:{Path(vng).parent}:{os.environ.get('PATH', '')}"}
    started = boot.out / "started"
    start = time.monotonic()
    boot_s: float | None = None
    tail: list[str] = []
    with open(log, "w") as console:
        proc = subprocess.Popen(boot.command(vng, guest_args), cwd=boot.repo, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                console.write(line)
                console.flush()
                tail.append(line.rstrip())
                del tail[:-20]
                on_line(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            while proc.poll() is None:
                if boot_s is None and started.exists():
                    boot_s = time.monotonic() - start
                if time.monotonic() - start > timeout_s:
                    timed_out = True
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                _stop(proc)
            reader.join(timeout=10)
    code = proc.returncode if not timed_out else -1
    return BootResult(code, boot_s, time.monotonic() - start, timed_out, tail)


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to vng's whole process group (vng, virtme-run, qemu), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
