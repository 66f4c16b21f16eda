"""XDP probes: native and generic attach to a veth in the session's scratch namespace,
bpf_link attach and detach-on-close, BPF_PROG_TEST_RUN, live frames and the flood engine
they decide, the pass programs fastpath installed on veth peers, and the raw SYN-cookie
helpers the SYN guard needs (a round trip through bpf/doctor_probe.c on a test-run SYN).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from fastpath.bpf import syscall, testrun
from fastpath.core.namespaces import netns_context
from fastpath.doctor.checks import ROOT_FIX, Check, _fail, _ok, _warn
from fastpath.doctor.session import (
    BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4,
    BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6,
    BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4,
    BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6,
    DoctorSession,
    _maybe_session,
)
from fastpath.errors import FastpathError

# enum xdp_action: what the probe programs return.
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3


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
                f"BPF_LINK_CREATE(BPF_XDP) failed: {exc.reason}",
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
                f"BPF_PROG_TEST_RUN failed: {exc.reason}",
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
    refused = testrun.live_frames_refused()
    missing = testrun.packet_engine_missing()
    forced = os.environ.get(testrun.ENGINE_ENV)
    data: dict[str, Any] = {"live_frames_refused": refused, "packet_engine_missing": missing}
    live = "live frames work" if refused is None else f"live frames refused ({refused})"
    try:
        choice = testrun.choose_engine()
    except FastpathError as exc:
        data["engine"] = None
        if refused is not None and missing is not None:
            return _fail(name, f"{live}; no flood engine: {missing}", "run as root (CAP_NET_RAW and CAP_BPF)",
                         **data)
        # Only the engine named by the environment cannot run: auto would pick the other one.
        return _warn(
            name,
            f"{live}; {testrun.ENGINE_ENV}={forced}: {exc.message}",
            f"unset {testrun.ENGINE_ENV} so that auto picks the engine that runs here",
            **data,
        )
    data["engine"] = choice.engine
    engine = "live" if choice.engine == "live" else "packet (AF_PACKET, sendmmsg)"
    if forced:
        engine += f" ({testrun.ENGINE_ENV}={forced})"
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
        return True, f"loaded; round trip not run ({exc.reason})"
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


def probe_kernel_peers() -> Check:
    """Whether the benchmarks' peers from the kernel's own tree (the selftests' XDP SYN proxy,
    the samples' IPIP tunnel) can be built here: source package, tools, libbpf, kfuncs."""
    from fastpath.bench import kernel_peers

    name = "kernel-peers"
    why = kernel_peers.unavailable_reason()
    data = {"source": str(kernel_peers.TARBALL), "kfuncs": list(kernel_peers.KFUNCS),
            "build_dir": str(kernel_peers.build_dir())}
    if why is None:
        return _ok(name, f"{kernel_peers.TARBALL.name}, clang/llc, bpftool, libbpf, kfuncs "
                         f"{', '.join(kernel_peers.KFUNCS)}: the bench builds the kernel's SYN proxy and "
                         "IPIP tunnel sample", **data)
    return _warn(name, f"the benchmarks' kernel peers cannot be built: {why}",
                 f"apt-get install {kernel_peers.PACKAGE} bpftool libbpf-dev clang llvm "
                 "(scripts/setup-host.sh does)", **data)
