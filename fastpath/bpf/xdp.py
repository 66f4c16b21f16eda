"""Attach, replace and detach XDP programs, with their state pinned in bpffs.

Layout: `/sys/fs/bpf/fastpath/<netns or "root">/<ifname>/` holds `link` (the bpf_link that
keeps the program attached with no process alive), `prog` and one pin per map; run-time
config is `/run/fastpath/xdp/<netns or "root">/<ifname>.json`. Re-attach swaps the program
behind the pinned link in one step (BPF_LINK_UPDATE) and the new program opens the pinned
maps, so counters and flow state survive an upgrade. Detach removes exactly what attach made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fastpath.bpf import loader, syscall
from fastpath.errors import CapabilityError, FastpathError
from fastpath.netns.namespaces import netns_context

PIN_ROOT = Path(os.environ.get("FASTPATH_PIN_ROOT", "/sys/fs/bpf/fastpath"))
RUN_ROOT = Path(os.environ.get("FASTPATH_RUN_ROOT", "/run/fastpath"))
MODES = ("auto", "native", "generic")



@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace `netns` (None: stay put)."""
    if netns is None:
        yield
        return
    with netns_context(netns):
        yield


def pin_dir(ifname: str, netns: str | None) -> Path:
    return PIN_ROOT / (netns or "root") / ifname


def state_path(ifname: str, netns: str | None) -> Path:
    return RUN_ROOT / "xdp" / (netns or "root") / f"{ifname}.json"


@dataclass
class Attachment:
    """What fastpath attached to one interface, as recorded in its state file."""

    program: str
    ifname: str
    netns: str | None
    ifindex: int
    mode: str
    prog_id: int
    link_id: int
    defines: dict[str, int | str] = field(default_factory=dict)
    attached_at: float = 0.0
    replaced_at: float | None = None
    generation: int = 1
    options: dict[str, object] = field(default_factory=dict)
    # Set when the program shares the interface with another (see fastpath.bpf.chain): its
    # maps then live in a sub-directory of the interface's pin directory, and `chain` holds
    # the FP_CHAIN defines it was compiled with.
    subdir: str = ""
    chain: dict[str, int | str] = field(default_factory=dict)

    @property
    def pin_dir(self) -> Path:
        base = pin_dir(self.ifname, self.netns)
        return base / self.subdir if self.subdir else base

    def map_path(self, name: str) -> str:
        return str(self.pin_dir / name)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["pin_dir"] = str(self.pin_dir)
        return data


def member_state_path(ifname: str, netns: str | None, program: str) -> Path:
    """State of a program that joined an interface already running another one."""
    return RUN_ROOT / "xdp" / (netns or "root") / f"{ifname}.d" / f"{program}.json"


def _read(path: Path) -> Attachment | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    # Keys a newer fastpath may add are ignored, so one state file never breaks listing.
    known = {f.name for f in fields(Attachment)}
    return Attachment(**{k: v for k, v in data.items() if k in known})


def read_state(ifname: str, netns: str | None, program: str | None = None) -> Attachment | None:
    """The attachment on `ifname`: the first one attached, or with `program` that program's."""
    att = _read(state_path(ifname, netns))
    if program is None or (att is not None and att.program == program):
        return att
    return _read(member_state_path(ifname, netns, program))


def require(ifname: str, netns: str | None, program: str, what: str, attach_cmd: str) -> Attachment:
    """`program`'s attachment on `ifname`, else one error naming what is attached there
    instead and the command (`attach_cmd IFACE [--netns NS]`) that attaches it."""
    att = read_state(ifname, netns, program)
    if att is not None and att.program == program:
        return att
    first = read_state(ifname, netns)
    where = f" in namespace {netns}" if netns else ""
    there = f"fastpath program {first.program} is" if first is not None else "nothing from fastpath is"
    ns = f" --netns {netns}" if netns else ""
    raise FastpathError(f"{what} is not attached to {ifname}{where} ({there})",
                        fix=f"attach it: {attach_cmd} {ifname}{ns}")


def members(ifname: str, netns: str | None) -> list[Attachment]:
    """Every program fastpath attached to `ifname` (more than one when chained)."""
    out = []
    first = _read(state_path(ifname, netns))
    if first is not None:
        out.append(first)
    d = state_path(ifname, netns).parent / f"{ifname}.d"
    if d.is_dir():
        out.extend(a for f in sorted(d.glob("*.json")) if (a := _read(f)) is not None)
    return out


def _state_file(att: Attachment) -> Path:
    if att.subdir:
        return member_state_path(att.ifname, att.netns, att.program)
    return state_path(att.ifname, att.netns)


def _write_state(att: Attachment) -> None:
    path = _state_file(att)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(att.to_json(), indent=2))
    tmp.replace(path)


def save_state(att: Attachment) -> None:
    """Rewrite the state file of `att`, e.g. after a control plane changed its `options`."""
    _write_state(att)


def _ifindex(ifname: str, netns: str | None) -> int:
    if len(ifname) > 15 or not ifname or "/" in ifname:
        raise FastpathError(f"bad interface name {ifname!r}", fix="names are 1-15 characters")
    with in_netns(netns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            where = f"namespace {netns!r}" if netns else "the root namespace"
            raise FastpathError(
                f"unknown interface {ifname!r} in {where}",
                fix="see 'ip link'" + (f" in 'ip netns exec {netns}'" if netns else ""),
            ) from None


def _check_bpffs() -> None:
    if not os.path.ismount("/sys/fs/bpf") and not os.environ.get("FASTPATH_PIN_ROOT"):
        raise CapabilityError("bpffs is not mounted at /sys/fs/bpf", fix="run scripts/setup-host.sh")


def _create_link(prog_fd: int, ifindex: int, netns: str | None, mode: str, ifname: str) -> tuple[int, str]:
    tries = {"native": [("native", syscall.XDP_FLAGS_DRV_MODE)],
             "generic": [("generic", syscall.XDP_FLAGS_SKB_MODE)],
             "auto": [("native", syscall.XDP_FLAGS_DRV_MODE), ("generic", syscall.XDP_FLAGS_SKB_MODE)]}
    last: syscall.BpfError | None = None
    with in_netns(netns):
        for got, flags in tries[mode]:
            try:
                return syscall.xdp_link_create(prog_fd, ifindex, flags), got
            except syscall.BpfError as exc:
                if exc.errno in (errno.EBUSY, errno.EEXIST):
                    raise FastpathError(
                        f"{ifname} already has an XDP program that fastpath did not attach",
                        fix=f"remove it first (ip link set dev {ifname} xdp off)",
                    ) from exc
                last = exc
    assert last is not None
    raise FastpathError(
        f"cannot attach XDP in {mode} mode to {ifname}: {os.strerror(last.errno)}",
        fix="try --mode generic" if mode == "native" else None,
    )


def check_link_mode(program: str, ifname: str, netns: str | None, mode: str,
                     running: Attachment | None) -> None:
    """A program that joins an interface's chain, or replaces itself there, runs behind the
    interface's existing XDP link, so in that link's mode: refuse an explicit other mode
    rather than ignore it (a new link would leave a window without a program)."""
    if running is None or mode == "auto" or mode == running.mode:
        return
    ns = f" --netns {netns}" if netns else ""
    if running.program == program:
        raise FastpathError(
            f"{program} runs on {ifname} in {running.mode} mode; a hot reload keeps its XDP link "
            f"and so its mode, not {mode}",
            fix=f"give --mode {running.mode} or auto, or detach first to attach in {mode} mode",
        )
    raise FastpathError(
        f"{ifname} runs {running.program} in {running.mode} mode; {program} shares its XDP link "
        f"(one program chain per interface) and so runs in {running.mode} mode, not {mode}",
        fix=f"give --mode {running.mode} or auto, or detach {running.program} "
            f"(fastpath {_COMMANDS.get(running.program, running.program)} detach {ifname}{ns}) "
            f"and attach both in {mode} mode",
    )


# The CLI command that detaches each program.
_COMMANDS = {"syn_guard": "xdp", "l4lb": "lb", "xdp_count": "count"}


def _pin_replace(fd: int, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    syscall.obj_pin(fd, str(path))


def attach(
    spec: loader.ProgramSpec,
    ifname: str,
    netns: str | None = None,
    mode: str = "auto",
    defines: Mapping[str, int | str] | None = None,
    options: Mapping[str, object] | None = None,
) -> tuple[Attachment, bool]:
    """Attach `spec` to `ifname`, or replace the program fastpath already attached there.

    Returns the attachment and whether it replaced a running program. On failure nothing
    new is left behind: a first attach removes its pins, a replace leaves the old program.
    """
    if mode not in MODES:
        raise FastpathError(f"bad mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
    _check_bpffs()
    ifindex = _ifindex(ifname, netns)
    defs = dict(defines or {})
    pdir = pin_dir(ifname, netns)
    old = read_state(ifname, netns, spec.name)
    replacing = old is not None and (pdir / "link").exists()
    others = [a for a in members(ifname, netns) if a.program != spec.name]
    if others and (pdir / "link").exists():
        from fastpath.bpf import chain

        return chain.join(spec, ifname, netns, ifindex, defs, dict(options or {}), old, others, mode)
    if replacing and old is not None and old.program != spec.name:
        raise FastpathError(
            f"{ifname} runs fastpath program {old.program}, not {spec.name}",
            fix=f"detach it first (fastpath {old.program} detach {ifname})",
        )
    if replacing:
        check_link_mode(spec.name, ifname, netns, mode, old)
    created_dir = not pdir.exists()
    pdir.mkdir(parents=True, exist_ok=True)
    prog = None
    link_fd = -1
    try:
        # A program left alone by its chain partner keeps its maps where they are.
        mdir = old.pin_dir if replacing and old is not None else pdir
        prog = loader.load(spec, defs, pin_dir=str(mdir))
        info = syscall.prog_info(prog.prog_fd)
        now = time.time()
        if replacing and old is not None:
            link_fd = syscall.obj_get(str(pdir / "link"))
            syscall.link_update(link_fd, prog.prog_fd)
            got_mode = old.mode
            att = Attachment(
                spec.name, ifname, netns, ifindex, got_mode, info.id, old.link_id, defs,
                old.attached_at, now, old.generation + 1, dict(options or {}), old.subdir,
            )
        else:
            link_fd, got_mode = _create_link(prog.prog_fd, ifindex, netns, mode, ifname)
            syscall.obj_pin(link_fd, str(pdir / "link"))
            link_id = syscall.link_info(link_fd).id
            att = Attachment(spec.name, ifname, netns, ifindex, got_mode, info.id, link_id, defs,
                             now, None, 1, dict(options or {}))
        _pin_replace(prog.prog_fd, mdir / "prog")
        _write_state(att)
        return att, replacing
    except BaseException:
        if not replacing:
            if link_fd >= 0:
                with contextlib.suppress(OSError):
                    syscall.link_detach(link_fd)
            if created_dir:
                shutil.rmtree(pdir, ignore_errors=True)
                _prune(pdir.parent)
            with contextlib.suppress(FileNotFoundError):
                state_path(ifname, netns).unlink()
        raise
    finally:
        if link_fd >= 0:
            os.close(link_fd)
        if prog is not None:
            prog.close()


def _prune(directory: Path) -> None:
    """Remove empty per-namespace directories up to (not including) the roots."""
    for root in (PIN_ROOT, RUN_ROOT / "xdp"):
        d = directory
        while d != root and root in d.parents:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent


def detach(ifname: str, netns: str | None = None, program: str | None = None) -> Attachment | None:
    """Detach what fastpath attached to `ifname` and remove its pins and state.

    Works also when the interface or its namespace is already gone (the kernel then has
    detached the program; only pins and state remain to remove).
    """
    pdir = pin_dir(ifname, netns)
    att = read_state(ifname, netns, program)
    present = members(ifname, netns)
    if att is None and present:
        att = present[0]  # not `program`: refused below
    others = [a for a in present if att is not None and a.program != att.program]
    if att is not None and (program is None or att.program == program) and others \
            and (pdir / "link").exists():
        from fastpath.bpf import chain

        chain.leave(att, others)
        return att
    if att is None and not pdir.exists():
        where = f" in namespace {netns}" if netns else ""
        raise FastpathError(f"fastpath has nothing attached to {ifname}{where}",
                            fix="see 'fastpath bpf ls'")
    if att is not None and program is not None and att.program != program:
        raise FastpathError(f"{ifname} runs fastpath program {att.program}, not {program}",
                            fix=f"use 'fastpath {att.program} detach {ifname}'")
    link = pdir / "link"
    if link.exists():
        fd = syscall.obj_get(str(link))
        try:
            with contextlib.suppress(syscall.BpfError):
                syscall.link_detach(fd)
        finally:
            os.close(fd)
    shutil.rmtree(pdir, ignore_errors=True)
    _prune(pdir.parent)
    sp = state_path(ifname, netns)
    with contextlib.suppress(FileNotFoundError):
        sp.unlink()
    if att is not None and att.subdir:
        remove_state(att)
    _prune(sp.parent)
    return att


def remove_state(att: Attachment) -> None:
    """Remove the state file of `att` (and its interface's member directory once empty)."""
    path = _state_file(att)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if att.subdir:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def attachments() -> list[Attachment]:
    """Every attachment fastpath recorded, in every namespace."""
    out: list[Attachment] = []
    base = RUN_ROOT / "xdp"
    if not base.is_dir():
        return out
    for nsdir in sorted(base.iterdir()):
        netns = None if nsdir.name == "root" else nsdir.name
        for f in sorted(nsdir.glob("*.json")):
            att = read_state(f.stem, netns)
            if att is not None:
                out.append(att)
        for d in sorted(nsdir.glob("*.d")):
            out.extend(a for f in sorted(d.glob("*.json")) if (a := _read(f)) is not None)
    return out


def link_alive(att: Attachment) -> bool:
    """True when the pinned link still drives a live interface."""
    try:
        fd = syscall.obj_get(str(pin_dir(att.ifname, att.netns) / "link"))
    except syscall.BpfError:
        return False
    try:
        return syscall.link_info(fd).ifindex != 0
    finally:
        os.close(fd)
