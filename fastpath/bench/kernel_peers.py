"""The kernel's own XDP programs as benchmark peers, built from Debian's kernel source package.

- `synproxy`: tools/testing/selftests/bpf/progs/xdp_synproxy_kern.c, the kernel's XDP SYN
  proxy: SYN cookies from XDP (bpf_tcp_raw_gen_syncookie_ipv4/6), a conntrack lookup per
  packet through kfuncs (bpf_xdp_ct_lookup, bpf_ct_release), the cookie ACK checked by
  bpf_tcp_raw_check_syncookie_ipv4/6. Built with clang against a vmlinux.h that bpftool
  writes from the running kernel's BTF, as the selftests build it.
- `tunnel`: samples/bpf/xdp_tx_iptunnel_kern.c, the kernel's IPIP sample: VIP lookup in a
  hash, an outer IPv4 header pushed with bpf_xdp_adjust_head, XDP_TX. No hashing, no
  conntrack. Built the way samples/bpf builds it (clang with the kernel headers to LLVM IR,
  then llc for BPF).

Nothing of the kernel tree is in this repository: `build()` extracts the few files it needs
from /usr/src/linux-source-6.12.tar.xz (the `linux-source-6.12` package) into
build/kernel-peers/ and compiles there; later runs reuse what is built (the extraction
reads the whole compressed archive once: tens of seconds; each compile takes a second or
two). 6.12, not 6.1: the SYN proxy of 6.1 walks TCP options with a packet pointer inside a
bpf_loop callback, which verifiers from Linux 6.7 on refuse as too complex; 6.12's carries
the offset as a scalar and loads on old and new kernels alike.

Each peer is built three ways, all loaded through libbpf (fastpath.bpf.libbpf): on its own
(`plain`, to check the bytes it answers with) and inside bpf/peer_harness.c (`harness`, and
its no-op build `noop`), the frame-restoring harness that lets a test run repeat a program
that rewrites its frame, the same method and the same C steps as restoring_harness.c around
fastpath's data planes. A peer's `harness - noop` is thus its own cost per packet, measured
exactly as fastpath's `ns_net`.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import ipaddress
import os
import platform
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastpath.bpf import libbpf, loader, testrun
from fastpath.bpf.maps import TypedMap
from fastpath.errors import CapabilityError, FastpathError

PACKAGE = "linux-source-6.12"
TARBALL = Path("/usr/src") / f"{PACKAGE}.tar.xz"
_TOP = PACKAGE  # the archive's top directory
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
# kfuncs the SYN proxy calls (bpf_tcp_raw_* are helpers, present since 6.0)
KFUNCS = ("bpf_xdp_ct_lookup", "bpf_ct_release")
TOOLS = ("clang", "llc", "opt", "llvm-dis", "bpftool")

_SELFTESTS = "tools/testing/selftests/bpf/progs"
_SAMPLES = "samples/bpf"


@dataclass(frozen=True)
class PeerSource:
    """One kernel program: where it is in the tree, its XDP entry, how it is compiled."""

    name: str
    source: str  # member path below the archive's top directory
    headers: tuple[str, ...]  # members it includes from the tree
    entry: str
    others: Mapping[str, str]  # other entries in the file -> their context type, left unbuilt
    moves: str  # the end of the frame it moves: "tail" (answers) or "head" (encapsulation)
    kernel_headers: bool  # True: samples/bpf style (kernel headers, IR, llc); False: vmlinux.h


SYNPROXY = PeerSource("synproxy", f"{_SELFTESTS}/xdp_synproxy_kern.c", (f"{_SELFTESTS}/bpf_compiler.h",),
                      "syncookie_xdp", {"syncookie_tc": "struct __sk_buff *"}, "tail", False)
TUNNEL = PeerSource("tunnel", f"{_SAMPLES}/xdp_tx_iptunnel_kern.c",
                    (f"{_SAMPLES}/xdp_tx_iptunnel_common.h", f"{_SAMPLES}/asm_goto_workaround.h"),
                    "_xdp_tx_iptunnel", {}, "head", True)
PEERS = {p.name: p for p in (SYNPROXY, TUNNEL)}
KINDS = ("plain", "harness", "noop")


def build_dir() -> Path:
    return loader.bpf_source_dir().parent / "build" / "kernel-peers"


def _kernel_build() -> tuple[Path, Path]:
    """The running kernel's header trees: build (generated files) and source (the rest)."""
    mods = Path("/lib/modules") / os.uname().release
    build = mods / "build"
    source = mods / "source" if (mods / "source").exists() else build
    return build, source


def _kfuncs_missing() -> list[str]:
    """The SYN proxy's kfuncs that the running kernel's BTF does not have."""
    try:
        data = VMLINUX_BTF.read_bytes()
    except OSError:
        return list(KFUNCS)
    # A kfunc is a FUNC in vmlinux BTF; its name is in the BTF string section, NUL-delimited.
    return [k for k in KFUNCS if b"\0" + k.encode() + b"\0" not in data]


def unavailable_reason(peer: PeerSource | None = None) -> str | None:
    """Why the kernel peers (or one of them) cannot be built and loaded here; None if they can."""
    if not TARBALL.exists():
        return f"{TARBALL} is missing (apt-get install {PACKAGE})"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install clang llvm bpftool)"
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        return "libbpf's headers are missing (apt-get install libbpf-dev)"
    why = libbpf.missing()
    if why:
        return why
    if peer is None or not peer.kernel_headers:
        if not VMLINUX_BTF.exists():
            return f"{VMLINUX_BTF} is missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)"
        gone = _kfuncs_missing()
        if gone:
            return (f"the kernel lacks the conntrack kfuncs {', '.join(gone)} the SYN proxy calls "
                    "(CONFIG_NF_CONNTRACK, Linux 6.0+)")
    if peer is None or peer.kernel_headers:
        build, _source = _kernel_build()
        if not (build / "include").exists():
            return f"no kernel headers at {build} (scripts/setup-host.sh links them)"
    return None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], what: str, stdin: bytes | None = None) -> bytes:
    res = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        detail = " | ".join(ln for ln in err if "error" in ln)[-400:]
        detail = detail or (err[-1] if err else f"status {res.returncode}")
        raise FastpathError(f"{what} failed: {detail}")
    return res.stdout


def _extract(dest: Path) -> Path:
    """The peers' files from the source package, extracted once per archive."""
    src = dest / "src"
    stat = TARBALL.stat()
    stamp = f"{TARBALL} {stat.st_size} {int(stat.st_mtime)}\n"
    members = sorted({m for p in PEERS.values() for m in (p.source, *p.headers)})
    if (src / ".stamp").exists() and (src / ".stamp").read_text() == stamp and \
            all((src / m).exists() for m in members):
        return src
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    wanted = {f"{_TOP}/{m}": m for m in members}
    try:
        with tarfile.open(TARBALL, "r:xz") as tar:
            for info in tar:
                rel = wanted.pop(info.name, None)
                if rel is None:
                    continue
                data = tar.extractfile(info)
                if data is None:
                    raise FastpathError(f"{TARBALL}: {info.name} is not a file")
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data.read())
                if not wanted:
                    break
    except (OSError, tarfile.TarError) as exc:
        raise FastpathError(f"reading {TARBALL} failed: {exc}") from exc
    if wanted:
        raise FastpathError(f"{TARBALL} lacks {', '.join(sorted(wanted.values()))}",
                            fix=f"reinstall {PACKAGE}")
    (src / ".stamp").write_text(stamp)
    return src


def _vmlinux_h(dest: Path) -> Path:
    """vmlinux.h of the running kernel (bpftool, from its BTF), regenerated when that changes."""
    out = dest / "vmlinux" / os.uname().release / "vmlinux.h"
    size = str(VMLINUX_BTF.stat().st_size)
    stamp = out.with_suffix(".stamp")
    if not out.exists() or not stamp.exists() or stamp.read_text() != size:
        out.parent.mkdir(parents=True, exist_ok=True)
        text = _run(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"], "bpftool btf dump")
        out.write_bytes(text)
        stamp.write_text(size)
    return out


def _multiarch_include() -> list[str]:
    """<asm/...> of the C library's kernel headers (the SYN proxy includes asm/errno.h)."""
    d = Path("/usr/include") / f"{platform.machine()}-linux-gnu"
    return ["-idirafter", str(d)] if d.exists() else []


def _compile_args(peer: PeerSource, kind: str, src: Path, frame_len: int) -> tuple[list[str], Path]:
    """The compiler flags for one build of `peer`, and the C file compiled."""
    source = src / peer.source
    # Entries not built become unused inline functions (their SEC() on a bare declaration).
    defines = [f"-D{o}=fp_peer_unused_{o}({t}); static __always_inline __attribute__((unused)) int "
               f"fp_peer_unused_body_{o}" for o, t in peer.others.items()]
    if kind == "plain":
        return defines, source
    # The entry becomes an inline function the harness calls (see bpf/peer_harness.c).
    defines += [f"-D{peer.entry}=fp_peer_entry(struct xdp_md *); static __always_inline int fp_peer_process",
                "-DBENCH_PROCESS=fp_peer_process", f"-DFRAME_LEN={frame_len}"]
    if peer.moves == "tail":
        defines.append("-DBENCH_MOVES_TAIL")
    if kind == "noop":
        defines.append("-DBENCH_NOOP")
    return [*defines, "-include", str(source)], loader.bpf_source_dir() / "peer_harness.c"


def _compile(peer: PeerSource, kind: str, src: Path, dest: Path, frame_len: int) -> Path:
    args, cfile = _compile_args(peer, kind, src, frame_len)
    if peer.kernel_headers:
        build, ksrc = _kernel_build()
        arch = "x86" if platform.machine() == "x86_64" else platform.machine()
        resource = _run(["clang", "-print-file-name=include"], "clang").decode().strip()
        incs = [f"-I{ksrc}/arch/{arch}/include", f"-I{build}/arch/{arch}/include/generated",
                f"-I{ksrc}/include", f"-I{build}/include", f"-I{ksrc}/arch/{arch}/include/uapi",
                f"-I{build}/arch/{arch}/include/generated/uapi", f"-I{ksrc}/include/uapi",
                f"-I{build}/include/generated/uapi", "-include", f"{ksrc}/include/linux/kconfig.h"]
        front = ["clang", "-nostdinc", "-isystem", resource, *incs, "-idirafter", "/usr/include",
                 f"-I{src / _SAMPLES}", "-include", "asm_goto_workaround.h",
                 "-D__KERNEL__", "-D__BPF_TRACING__",
                 f"-D__TARGET_ARCH_{arch}", "-Wno-unused-value", "-Wno-pointer-sign",
                 "-Wno-compare-distinct-pointer-types", "-Wno-gnu-variable-sized-type-not-at-end",
                 "-Wno-address-of-packed-member", "-Wno-tautological-compare", "-Wno-unknown-warning-option",
                 "-fno-asynchronous-unwind-tables", "-g", "-O2",
                 "-emit-llvm", "-Xclang", "-disable-llvm-passes",
                 *args, "-c", str(cfile), "-o", "-"]
        steps = [front, ["opt", "-O2", "-mtriple=bpf-pc-linux"], ["llvm-dis"],
                 ["llc", "-march=bpf", "-mcpu=v3", "-filetype=obj", "-o", "{out}"]]
    else:
        vmlinux = _vmlinux_h(dest)
        steps = [["clang", "-O2", "-g", "-target", "bpf", "-mcpu=v3", f"-I{vmlinux.parent}",
                  f"-I{src / _SELFTESTS}", *_multiarch_include(), "-Wno-compare-distinct-pointer-types",
                  *args, "-c", str(cfile), "-o", "{out}"]]
    digest = hashlib.sha256(os.uname().release.encode())
    for part in (*[" ".join(s) for s in steps], (src / peer.source).read_text(), cfile.read_text()):
        digest.update(part.encode())
    out = dest / f"{peer.name}-{kind}-{digest.hexdigest()[:12]}.o"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    data: bytes | None = None
    for step in steps:
        argv = [a.replace("{out}", str(tmp)) for a in step]
        data = _run(argv, f"building the kernel's {peer.name} ({argv[0]})", data)
    tmp.rename(out)
    return out


def build(frame_len: Mapping[str, int]) -> dict[tuple[str, str], Path]:
    """Every build of every peer in `frame_len` (peer name -> bytes of the frames it runs):
    (peer, kind) -> object file under build/kernel-peers/. CapabilityError when this host
    cannot build them, FastpathError when a build fails."""
    for name in frame_len:
        why = unavailable_reason(PEERS[name])
        if why:
            raise CapabilityError(f"the kernel's {name} cannot be built: {why}")
    dest = build_dir()
    with _locked(dest):
        src = _extract(dest)
        return {(name, kind): _compile(PEERS[name], kind, src, dest, length)
                for name, length in frame_len.items() for kind in KINDS}


class LoadedPeer:
    """One build of a peer, loaded: the fd to test-run and its maps."""

    def __init__(self, peer: PeerSource, kind: str, path: Path) -> None:
        self.peer, self.kind = peer, kind
        self.obj = libbpf.BpfObject(path)
        self.entry = peer.entry if kind == "plain" else "fp_peer_harness"
        try:
            self.obj.only(self.entry)
            self.obj.load()
        except FastpathError as exc:
            self.obj.close()
            raise FastpathError(f"the kernel's {peer.name} ({kind}) did not load: {exc.message}") from exc
        self.prog_fd = self.obj.prog_fd(self.entry)

    def map(self, name: str, key: type[ctypes._CData], value: type[ctypes._CData]) -> TypedMap:
        return TypedMap(os.dup(self.obj.map_fd(name)), key, value, name=name)

    def close(self) -> None:
        self.obj.close()


def load(objects: Mapping[tuple[str, str], Path]) -> dict[tuple[str, str], LoadedPeer]:
    """Load every object of `build()`; on a failure, what was loaded is closed again."""
    loaded: dict[tuple[str, str], LoadedPeer] = {}
    try:
        for (name, kind), path in objects.items():
            loaded[(name, kind)] = LoadedPeer(PEERS[name], kind, path)
    except BaseException:
        for p in loaded.values():
            p.close()
        raise
    return loaded


# ---------------------------------------------------------------------------------------
# Configuration, as the peers' own user-space parts set it

# The SYN proxy's `values[0]` (tools/testing/selftests/bpf/xdp_synproxy.c --mss4 --mss6
# --wscale --ttl): mss6 << 32 | ttl << 24 | wscale << 16 | mss4. The selftest's values.
SYNPROXY_MSS4, SYNPROXY_MSS6, SYNPROXY_WSCALE, SYNPROXY_TTL = 1460, 1440, 7, 64
_SYNPROXY_PORTS = 8  # MAX_ALLOWED_PORTS


def synproxy_tcpipopts(mss4: int = SYNPROXY_MSS4, mss6: int = SYNPROXY_MSS6, wscale: int = SYNPROXY_WSCALE,
                       ttl: int = SYNPROXY_TTL) -> int:
    return mss6 << 32 | ttl << 24 | wscale << 16 | mss4


def configure_synproxy(peer: LoadedPeer, ports: tuple[int, ...]) -> None:
    """Cookies for `ports` (a 0 ends the list), the selftest's MSS, window scale and TTL."""
    if not 0 < len(ports) < _SYNPROXY_PORTS:
        raise ValueError(f"the SYN proxy takes 1 to {_SYNPROXY_PORTS - 1} ports")
    with peer.map("allowed_ports", ctypes.c_uint32, ctypes.c_uint16) as m:
        for i, port in enumerate((*ports, 0)):
            m.set(ctypes.c_uint32(i), ctypes.c_uint16(port))
    with peer.map("values", ctypes.c_uint32, ctypes.c_uint64) as m:
        m.set(ctypes.c_uint32(0), ctypes.c_uint64(synproxy_tcpipopts()))


class _Addr(ctypes.Union):
    _fields_ = [("v6", ctypes.c_uint32 * 4), ("v4", ctypes.c_uint32)]


class TunnelVip(ctypes.Structure):
    """struct vip of samples/bpf/xdp_tx_iptunnel_common.h (the sample's map key)."""

    _fields_ = [("daddr", _Addr), ("dport", ctypes.c_uint16), ("family", ctypes.c_uint16),
                ("protocol", ctypes.c_uint8)]


class TunnelInfo(ctypes.Structure):
    """struct iptnl_info of samples/bpf/xdp_tx_iptunnel_common.h (the sample's map value)."""

    _fields_ = [("saddr", _Addr), ("daddr", _Addr), ("family", ctypes.c_uint16), ("dmac", ctypes.c_uint8 * 6)]


_AF_INET = 2


def _be32(addr: str) -> int:
    """An IPv4 address as the sample reads it from the frame: network-order bytes, host int."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def configure_tunnel(peer: LoadedPeer, vip: str, port: int, proto: int, saddr: str, daddr: str,
                     dmac: bytes) -> None:
    """One VIP -> IPIP tunnel entry, as xdp_tx_iptunnel_user.c -i/-a/-p/-s/-d/-m fills it."""
    key = TunnelVip(protocol=proto, family=_AF_INET, dport=struct.unpack("<H", struct.pack(">H", port))[0])
    key.daddr.v4 = _be32(vip)
    info = TunnelInfo(family=_AF_INET)
    info.saddr.v4, info.daddr.v4 = _be32(saddr), _be32(daddr)
    info.dmac[:] = list(dmac)
    with peer.map("vip2tnl", TunnelVip, TunnelInfo) as m:
        m.set(key, info)


# ---------------------------------------------------------------------------------------
# The peers as benchmark contenders

REQUIRE_ALL_ENV = "FASTPATH_REQUIRE_ALL"


def skip_or_fail(skip: Callable[[str, str], None], contenders: Iterable[str], exc: CapabilityError) -> None:
    """A host that cannot build the kernel peers skips their contenders with the reason;
    under FASTPATH_REQUIRE_ALL=1 (CI) that is a failure instead."""
    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        raise FastpathError(f"{exc.message} (and {REQUIRE_ALL_ENV}=1 turns a skip into a failure)",
                            fix=exc.fix)
    for c in contenders:
        skip(c, exc.message)


def _run_expect(fd: int, frame: bytes, want: str, repeat: int, what: str) -> float:
    res = testrun.run_xdp(fd, frame, repeat=repeat)
    if res.verdict != want:
        raise FastpathError(f"{what} returned {res.verdict}, expected {want}")
    if repeat > 1 and res.output != frame:
        raise FastpathError(f"{what}: the harness did not restore the frame")
    return res.ns_per_packet


def _pad(raw: bytes, frame_len: int) -> bytes:
    if len(raw) > frame_len:
        raise FastpathError(f"bench frame is {len(raw)} bytes, more than {frame_len}")
    return raw + b"\0" * (frame_len - len(raw))


def check_synack(syn: bytes, answer: bytes) -> int:
    """The SYN proxy's answer to `syn` is a SYN-ACK to its sender: addresses and ports
    swapped, ack = seq + 1, IP and TCP checksums valid. Returns the cookie (its seq)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    s, a = Ether(syn), Ether(answer)
    net = IP if IP in s else IPv6
    if net not in a or TCP not in a:
        raise FastpathError(f"the kernel SYN proxy answered with no {net.__name__}/TCP frame")
    problems = []
    if (a[net].src, a[net].dst) != (s[net].dst, s[net].src) or (a.src, a.dst) != (s.dst, s.src):
        problems.append("addresses not swapped")
    if (a[TCP].sport, a[TCP].dport) != (s[TCP].dport, s[TCP].sport):
        problems.append("ports not swapped")
    if str(a[TCP].flags) != "SA":
        problems.append(f"flags {a[TCP].flags}")
    if a[TCP].ack != (s[TCP].seq + 1) % 2**32:
        problems.append(f"ack {a[TCP].ack} != seq + 1 ({s[TCP].seq + 1})")
    fresh = Ether(answer)
    del fresh[TCP].chksum
    if net is IP:
        del fresh[IP].chksum
        if Ether(fresh.build())[IP].chksum != a[IP].chksum:
            problems.append("bad IP checksum")
    if Ether(fresh.build())[TCP].chksum != a[TCP].chksum:
        problems.append("bad TCP checksum")
    if problems:
        raise FastpathError(f"the kernel SYN proxy's SYN-ACK is wrong: {', '.join(problems)}")
    return int(a[TCP].seq)


def cookie_ack(syn: bytes, cookie: int, frame_len: int) -> bytes:
    """The client's ACK completing `syn`'s handshake with a SYN-ACK carrying `cookie`."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    s = Ether(syn)
    net = IP if IP in s else IPv6
    ip = IP(src=s[IP].src, dst=s[IP].dst, flags="DF") if net is IP else IPv6(src=s[IPv6].src, dst=s[IPv6].dst)
    tcp = TCP(sport=s[TCP].sport, dport=s[TCP].dport, flags="A", seq=(s[TCP].seq + 1) % 2**32,
              ack=(cookie + 1) % 2**32)
    return _pad((Ether(src=s.src, dst=s.dst) / ip / tcp).build(), frame_len)


class SynproxyBench:
    """The kernel SYN proxy on synflood-packet's frames: `contender -> (frame, verdict)`
    with the frames `syn4`, `syn6` and `bad_ack` given and the good ACK made here."""

    PATHS: dict[str, tuple[str, str]] = {
        "kernel-cookie-v4": ("syn4", "XDP_TX"),
        "kernel-cookie-v6": ("syn6", "XDP_TX"),
        "kernel-drop-cookie": ("bad_ack", "XDP_DROP"),
        "kernel-pass-cookie": ("good_ack", "XDP_PASS"),
    }

    def __init__(self, frames: Mapping[str, bytes], port: int, frame_len: int) -> None:
        self._frames = dict(frames)
        self._len = frame_len
        self._peers = load(build({"synproxy": frame_len}))
        try:
            for p in self._peers.values():
                configure_synproxy(p, (port,))
            self.check()
        except BaseException:
            self.close()
            raise

    def _fd(self, kind: str) -> int:
        return self._peers[("synproxy", kind)].prog_fd

    def _good_ack(self) -> bytes:
        """A fresh good ACK: a cookie is valid for minutes, so every measurement makes its own."""
        syn = self._frames["syn4"]
        res = testrun.run_xdp(self._fd("plain"), syn)
        if res.verdict != "XDP_TX":
            raise FastpathError(f"the kernel SYN proxy returned {res.verdict} for a SYN, expected XDP_TX")
        return cookie_ack(syn, check_synack(syn, res.output), self._len)

    def check(self) -> None:
        """The premise: on these frames the proxy answers SYNs with a correct SYN-ACK, drops
        the bad ACK, passes the ACK that returns its cookie, in its own build and in the harness."""
        self._frames["good_ack"] = self._good_ack()
        res = testrun.run_xdp(self._fd("plain"), self._frames["syn6"])
        if res.verdict != "XDP_TX":
            raise FastpathError(f"the kernel SYN proxy returned {res.verdict} for an IPv6 SYN, "
                                "expected XDP_TX")
        check_synack(self._frames["syn6"], res.output)
        for c, (frame, want) in self.PATHS.items():
            _run_expect(self._fd("plain"), self._frames[frame], want, 1, f"the kernel SYN proxy ({c})")
            _run_expect(self._fd("harness"), self._frames[frame], want, 3,
                        f"the kernel SYN proxy ({c}, harness)")

    def measure(self, contender: str, repeat: int) -> dict[str, float]:
        """ns/packet in the harness, and net of the harness's no-op build run just before."""
        frame, want = self.PATHS[contender]
        if frame == "good_ack":
            self._frames["good_ack"] = self._good_ack()
        noop = _run_expect(self._fd("noop"), self._frames[frame], "XDP_TX", repeat, "the no-op peer harness")
        ns = _run_expect(self._fd("harness"), self._frames[frame], want, repeat,
                         f"the kernel SYN proxy ({contender})")
        return {"ns_per_packet": ns, "ns_net": ns - noop}

    def close(self) -> None:
        for p in self._peers.values():
            p.close()


def check_tunnel(inner: bytes, out: bytes, saddr: str, daddr: str, dmac: bytes) -> None:
    """The tunnel sample's output is `inner`'s IP packet in an IPv4 header from `saddr` to
    `daddr` (protocol 4, valid checksum, right length) in an Ethernet frame to `dmac`."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    e = Ether(out)
    problems = []
    if e.dst != ":".join(f"{b:02x}" for b in dmac) or e.src != Ether(inner).dst or e.type != 0x0800:
        problems.append(f"Ethernet {e.src} -> {e.dst} type {e.type:#x}")
    outer = e[IP]
    if (outer.src, outer.dst, outer.proto) != (saddr, daddr, 4):
        problems.append(f"outer {outer.src} -> {outer.dst} proto {outer.proto}")
    if outer.len != len(inner) - 14 + 20 or outer.ihl != 5:
        problems.append(f"outer length {outer.len}")
    fresh = IP(bytes(outer)[:20])
    del fresh.chksum
    if IP(fresh.build()).chksum != outer.chksum:
        problems.append("bad outer checksum")
    if out[34:] != inner[14:]:
        problems.append("the inner packet changed")
    if problems:
        raise FastpathError(f"the kernel tunnel sample's IPIP frame is wrong: {', '.join(problems)}")


class TunnelBench:
    """The kernel's IPIP tunnel sample on one frame to a VIP it encapsulates for."""

    SADDR, DADDR, DMAC = "10.0.0.1", "10.0.0.11", bytes.fromhex("0200000000aa")

    def __init__(self, frame: bytes, vip: str, port: int) -> None:
        self._frame = frame
        self._peers = load(build({"tunnel": len(frame)}))
        try:
            for p in self._peers.values():
                configure_tunnel(p, vip, port, 6, self.SADDR, self.DADDR, self.DMAC)
            self.check()
        except BaseException:
            self.close()
            raise

    def _fd(self, kind: str) -> int:
        return self._peers[("tunnel", kind)].prog_fd

    def check(self) -> None:
        res = testrun.run_xdp(self._fd("plain"), self._frame)
        if res.verdict != "XDP_TX":
            raise FastpathError(f"the kernel tunnel sample returned {res.verdict}, expected XDP_TX")
        check_tunnel(self._frame, res.output, self.SADDR, self.DADDR, self.DMAC)
        _run_expect(self._fd("harness"), self._frame, "XDP_TX", 3, "the kernel tunnel sample (harness)")

    def measure(self, repeat: int) -> tuple[float, float]:
        """(ns/packet in the harness, ns/packet of the harness's no-op build)."""
        noop = _run_expect(self._fd("noop"), self._frame, "XDP_TX", repeat, "the no-op peer harness")
        ns = _run_expect(self._fd("harness"), self._frame, "XDP_TX", repeat, "the kernel tunnel sample")
        return ns, noop

    def close(self) -> None:
        for p in self._peers.values():
            p.close()
