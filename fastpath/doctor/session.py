"""What several probes share, owned by one `DoctorSession`: the probe BPF programs
(bpf/doctor_probe.c, compiled once by bcc for every BPF row) and one scratch network
namespace with a veth pair for the XDP, tunnel and SYNPROXY rows. Closing the session
removes every namespace, link, program and table it made, also when a probe failed.

Also here: removing the scratch namespaces of doctor runs that were killed.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastpath.bpf.loader import bpf_source_dir, captured_stderr
from fastpath.core.namespaces import NETNS_RUN_DIR
from fastpath.doctor.checks import ROOT, _last_lines
from fastpath.errors import FastpathError

# Scratch namespaces (and the bpffs probe directory) are named NETNS_PREFIX-<pid>-<random>,
# so a later run can tell a dead run's leftovers from a live one's.
NETNS_PREFIX = "fpdoc"
NETNS_DIR = Path(NETNS_RUN_DIR)


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

    if not NETNS_DIR.is_dir():
        return []  # no /run/netns: no named namespace exists, so none is stale
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
# The probe BPF programs (bpf/doctor_probe.c): one compile serves every BPF row

# Helper ids from enum bpf_func_id (include/uapi/linux/bpf.h, Linux 6.0). bcc 0.26's
# helpers.h predates these helpers, so the program declares them by id, given as -D flags.
BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4 = 204
BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6 = 205
BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4 = 206
BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6 = 207

# Added to a genuine cookie to forge one: it changes the hash bits, not just the low MSS-index
# bits (a cookie off by one still validates, with another MSS).
FORGED_COOKIE_DELTA = 0x12345

# The C text lives with the data planes' sources; it is compiled from this string (not
# from the file) so a test can append a function to it. A checkout without bpf/ leaves it
# empty, and every BPF row then fails saying where the source was looked for.
PROBE_BPF_PATH = bpf_source_dir() / "doctor_probe.c"


def _read_probe_source(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


PROBE_BPF_TEXT = _read_probe_source(PROBE_BPF_PATH)

# The values bpf/doctor_probe.c needs and has no default for.
PROBE_BPF_CFLAGS = [
    f"-DFUNC_RAW_GEN_V4={BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4}",
    f"-DFUNC_RAW_GEN_V6={BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6}",
    f"-DFUNC_RAW_CHECK_V4={BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4}",
    f"-DFUNC_RAW_CHECK_V6={BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6}",
    f"-DFORGED_DELTA={FORGED_COOKIE_DELTA:#x}",
]


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
                if not PROBE_BPF_TEXT:
                    raise FastpathError(
                        f"BPF source {PROBE_BPF_PATH} not found",
                        fix="run from a fastpath checkout or set FASTPATH_BPF_DIR",
                    )
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


@contextmanager
def _maybe_session(session: DoctorSession | None) -> Iterator[DoctorSession]:
    """The runner's shared session, or one of the probe's own when it is called alone."""
    if session is not None:
        yield session
        return
    with DoctorSession() as own:
        yield own
