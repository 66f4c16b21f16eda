"""Attach, replace and detach XDP programs, with their state pinned in bpffs.

Layout: `/sys/fs/bpf/fastpath/<netns or "root">/<ifname>/` holds `link` (the bpf_link that
keeps the program attached with no process alive), `prog` and one pin per map; run-time
config is `/run/fastpath/xdp/<netns or "root">/<ifname>.json`. Re-attach swaps the program
behind the pinned link in one step (BPF_LINK_UPDATE) and the new program opens the pinned
maps, so counters and flow state survive an upgrade. Detach removes exactly what attach made.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fastpath.bpf import chain, loader, peer, syscall

# The attachment records are fastpath.bpf.state's; callers of attach see them here too.
from fastpath.bpf.state import (
    PIN_ROOT as PIN_ROOT,
)
from fastpath.bpf.state import (
    RUN_ROOT as RUN_ROOT,
)
from fastpath.bpf.state import (
    Attachment as Attachment,
)
from fastpath.bpf.state import (
    _write_state,
)
from fastpath.bpf.state import (
    attachments as attachments,
)
from fastpath.bpf.state import (
    check_link_mode as check_link_mode,
)
from fastpath.bpf.state import (
    detach_hint as detach_hint,
)
from fastpath.bpf.state import (
    member_state_path as member_state_path,
)
from fastpath.bpf.state import (
    members as members,
)
from fastpath.bpf.state import (
    pin_dir as pin_dir,
)
from fastpath.bpf.state import (
    program_spec as program_spec,
)
from fastpath.bpf.state import (
    read_state as read_state,
)
from fastpath.bpf.state import (
    remove_state as remove_state,
)
from fastpath.bpf.state import (
    require as require,
)
from fastpath.bpf.state import (
    save_state as save_state,
)
from fastpath.bpf.state import (
    state_path as state_path,
)
from fastpath.core.namespaces import in_netns, netns_exists
from fastpath.errors import CapabilityError, FastpathError

MODES = ("auto", "native", "generic")
# The pass-everything program the runtime puts on a veth peer so that native XDP_TX frames
# reach it at once (see ensure_peer_program); listed by `fastpath bpf ls` like any other.
PEER_PROGRAM = "veth_peer_pass"


def add_mode_args(parser: argparse.ArgumentParser) -> None:
    """--mode and --no-peer-program, the same on every attach command."""
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="native, generic, or auto (native, else generic)")
    parser.add_argument("--no-peer-program", dest="peer_program", action="store_false",
                        help="on a veth, do not put fastpath's pass program on the peer (native XDP_TX "
                             "frames then reach it only when it runs XDP of its own)")


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
        f"cannot attach XDP in {mode} mode to {ifname}: {last.reason}",
        fix="try --mode generic" if mode == "native" else None,
    )


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
    peer_program: bool = True,
) -> tuple[Attachment, bool]:
    """Attach `spec` to `ifname`, or replace the program fastpath already attached there.

    Returns the attachment and whether it replaced a running program. On failure nothing
    new is left behind: a first attach removes its pins, a replace leaves the old program.
    An entry whose interface or namespace went away is removed first (with one line). A new
    native link on a veth gets fastpath's pass program on the peer unless `peer_program`
    is False (see fastpath.bpf.peer); a peer that cannot be reached refuses native mode.
    """
    if mode not in MODES:
        raise FastpathError(f"bad mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
    _check_bpffs()
    ifindex = _ifindex(ifname, netns)
    clear_stale(ifname, netns)
    defs = dict(defines or {})
    pdir = pin_dir(ifname, netns)
    helper = read_state(ifname, netns)
    if helper is not None and helper.program == PEER_PROGRAM:
        return _replace_pass(spec, helper, mode, defs, dict(options or {}), peer_program)
    old = read_state(ifname, netns, spec.name)
    replacing = old is not None and (pdir / "link").exists()
    others = [a for a in members(ifname, netns) if a.program != spec.name]
    if others and (pdir / "link").exists():
        return chain.join(spec, ifname, netns, ifindex, defs, dict(options or {}), old, others, mode)
    if replacing and old is not None and old.program != spec.name:
        raise FastpathError(
            f"{ifname} runs fastpath program {old.program}, not {spec.name}",
            fix=f"detach it first: {detach_hint(old)}",
        )
    if replacing:
        check_link_mode(spec.name, ifname, netns, mode, old)
    created_dir = not pdir.exists()
    pdir.mkdir(parents=True, exist_ok=True)
    prog = None
    link_fd = -1
    peer_record: dict[str, object] = {}
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
                {}, dict(old.peer), spec.to_json(),
            )
        else:
            # The peer's pass program goes first, so that no XDP_TX frame ever waits for it.
            peer_record = ensure_peer_program(ifname, netns, "native" if mode != "generic" else mode,
                                              peer_program)
            link_fd, got_mode = _create_link(prog.prog_fd, ifindex, netns, mode, ifname)
            syscall.obj_pin(link_fd, str(pdir / "link"))
            link_id = syscall.link_info(link_fd).id
            att = Attachment(spec.name, ifname, netns, ifindex, got_mode, info.id, link_id, defs,
                             now, None, 1, dict(options or {}), spec=spec.to_json())
            att.peer = peer_record
            if got_mode != "native":
                release_peer_program(att)
                att.peer = {}
        _pin_replace(prog.prog_fd, mdir / "prog")
        _write_state(att)
        return att, replacing
    except BaseException:
        if not replacing and peer_record:
            with contextlib.suppress(Exception):
                release_peer_program(Attachment(spec.name, ifname, netns, ifindex, mode, 0, 0,
                                                peer=peer_record))
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
    if att is not None and (program is None or att.program == program) and dead_reason(att):
        _remove_dead(ifname, netns, present)
        return att
    others = [a for a in present if att is not None and a.program != att.program]
    if att is not None and (program is None or att.program == program) and others \
            and (pdir / "link").exists():
        chain.leave(att, others)
        return att
    if att is None and not pdir.exists():
        where = f" in namespace {netns}" if netns else ""
        raise FastpathError(f"fastpath has nothing attached to {ifname}{where}",
                            fix="see 'fastpath bpf ls'")
    if att is not None and program is not None and att.program != program:
        raise FastpathError(f"{ifname} runs fastpath program {att.program}, not {program}",
                            fix=f"use '{detach_hint(att)}'")
    link = pdir / "link"
    needed = _peer_dependents(ifname, netns) if att is not None and att.program != PEER_PROGRAM else []
    if needed and att is not None and link.exists():
        _hand_back_to_pass(att, needed)
        return att
    if link.exists():
        fd = syscall.obj_get(str(link))
        try:
            with contextlib.suppress(syscall.BpfError):
                syscall.link_detach(fd)
        finally:
            os.close(fd)
    _remove_files(ifname, netns, att)
    if att is not None:
        release_peer_program(att)
    return att


def _remove_files(ifname: str, netns: str | None, att: Attachment | None) -> None:
    pdir = pin_dir(ifname, netns)
    shutil.rmtree(pdir, ignore_errors=True)
    _prune(pdir.parent)
    sp = state_path(ifname, netns)
    with contextlib.suppress(FileNotFoundError):
        sp.unlink()
    if att is not None and att.subdir:
        remove_state(att)
    with contextlib.suppress(OSError):
        (sp.parent / f"{ifname}.d").rmdir()
    _prune(sp.parent)


def link_alive(att: Attachment) -> bool:
    """True when the pinned link still drives a live interface."""
    return dead_reason(att) is None


# -- entries whose interface or namespace went away --------------------------------------------

# Per-program clean-up of what an application made beside the pins (e.g. the guard's nft
# table), run when a dead entry is removed. Applications register themselves.
STALE_HOOKS: dict[str, Callable[[Attachment], None]] = {}


def dead_reason(att: Attachment) -> str | None:
    """Why `att` no longer drives its interface (None: it does)."""
    if att.netns is not None and not netns_exists(att.netns):
        return f"namespace {att.netns} is gone"
    try:
        fd = syscall.obj_get(str(pin_dir(att.ifname, att.netns) / "link"))
    except syscall.BpfError:
        return "its pinned link is gone"
    try:
        ifindex = syscall.link_info(fd).ifindex
    except syscall.BpfError:
        return "its pinned link cannot be read"
    finally:
        os.close(fd)
    if ifindex == 0:
        where = f" (or namespace {att.netns} was re-created)" if att.netns else ""
        return f"interface {att.ifname} went away{where}"
    return None


def _remove_dead(ifname: str, netns: str | None, present: list[Attachment]) -> None:
    for att in present:
        hook = STALE_HOOKS.get(att.program)
        if hook is not None:
            with contextlib.suppress(FastpathError, OSError):
                hook(att)
    _remove_files(ifname, netns, present[0] if present else None)
    for att in present:
        remove_state(att)
        release_peer_program(att)


def clear_stale(ifname: str, netns: str | None) -> list[Attachment]:
    """Remove the entry on `ifname` when its interface or namespace went away, saying so in
    one line; returns what was removed."""
    present = members(ifname, netns)
    reason = next((r for a in present if (r := dead_reason(a))), None)
    if not present or reason is None:
        return []
    from fastpath.output import info

    _remove_dead(ifname, netns, present)
    where = f" in {netns}" if netns else ""
    info(f"removed stale fastpath state on {ifname}{where} "
         f"({', '.join(a.program for a in present)}): {reason}")
    return present


def prune() -> list[tuple[Attachment, str]]:
    """Remove every dead entry, and every veth peer pass program nothing relies on any more;
    returns each removed attachment with the reason."""
    out: list[tuple[Attachment, str]] = []
    before = {(a.ifname, a.netns, a.program): (a, dead_reason(a)) for a in attachments()}
    for att in attachments():
        reason = dead_reason(att)
        if reason is None or read_state(att.ifname, att.netns, att.program) is None:
            continue
        present = members(att.ifname, att.netns)
        _remove_dead(att.ifname, att.netns, present)
        out.extend((a, reason) for a in present)
    for att in attachments():
        if att.program == PEER_PROGRAM and not _peer_dependents(att.ifname, att.netns):
            detach(att.ifname, att.netns)
            out.append((att, "no fastpath program relies on this pass program"))
    # A dead entry's pass program on its veth peer goes with it (release_peer_program), in
    # whichever order the namespaces were listed: report it too.
    reported = {(a.ifname, a.netns, a.program) for a, _ in out}
    now = {(a.ifname, a.netns, a.program) for a in attachments()}
    for key, (att, reason) in before.items():
        if key not in now and key not in reported:
            out.append((att, reason or "no fastpath program relies on this pass program"))
    return out


# -- the pass program on a veth peer (fastpath.bpf.peer) -------------------------------------------

def _same_peer(att: Attachment, ifname: str, netns: str | None) -> bool:
    rec = att.peer
    return bool(rec.get("helper")) and rec.get("ifname") == ifname and rec.get("netns") == netns


def _peer_dependents(ifname: str, netns: str | None) -> list[Attachment]:
    """Attachments that rely on a pass program on `ifname` (their veth peer)."""
    return [a for a in attachments() if _same_peer(a, ifname, netns)]


def ensure_peer_program(ifname: str, netns: str | None, mode: str, wanted: bool = True) -> dict[str, object]:
    """Make native XDP_TX on the veth `ifname` work: its peer gets fastpath's pass program
    unless it runs XDP already. Returns the record kept in the attachment's `peer`."""
    if mode != "native":
        return {}
    try:
        found = peer.find(ifname, netns)
    except peer.PeerUnreachable as exc:
        if not wanted:
            return {}
        raise FastpathError(
            f"{exc}; native XDP_TX frames from {ifname} would wait in the peer's ring",
            fix="name that namespace (ip netns attach NAME PID), use --mode generic, or run an XDP "
                "program on the peer yourself and pass --no-peer-program") from None
    if found is None:
        return {}
    record: dict[str, object] = {"ifname": found.ifname, "netns": found.netns, "helper": False}
    clear_stale(found.ifname, found.netns)
    current = read_state(found.ifname, found.netns)
    if current is not None and current.program == PEER_PROGRAM:
        record.update(helper=True, note="shares fastpath's pass program")
        return record
    if found.has_xdp:
        record["note"] = "the peer runs an XDP program"
        return record
    if not wanted:
        record["note"] = "no XDP program on the peer (--no-peer-program): XDP_TX frames may wait"
        return record
    _attach_pass(found, f"{ifname} in {netns}" if netns else ifname)
    record["helper"] = True
    from fastpath.output import info

    info(f"veth peer {found.where()} runs no XDP program: installed fastpath's pass program there so "
         f"that XDP_TX frames from {ifname} arrive at once (removed at detach; --no-peer-program opts out)")
    return record


def _attach_pass(found: peer.VethPeer, owner: str) -> Attachment:
    try:
        fd = peer.attach_pass(found)
    except syscall.BpfError as exc:
        raise FastpathError(f"cannot put a pass program on veth peer {found.where()}: "
                            f"{exc.reason}",
                            fix="use --mode generic, or pass --no-peer-program") from None
    pdir = pin_dir(found.ifname, found.netns)
    try:
        pdir.mkdir(parents=True, exist_ok=True)
        syscall.obj_pin(fd, str(pdir / "link"))
        li = syscall.link_info(fd)
        att = Attachment(PEER_PROGRAM, found.ifname, found.netns, found.ifindex, "native", li.prog_id,
                         li.id, {}, time.time(), options={"for": owner})
        _write_state(att)
        return att
    except BaseException:
        with contextlib.suppress(OSError):
            syscall.link_detach(fd)
        shutil.rmtree(pdir, ignore_errors=True)
        _prune(pdir.parent)
        raise
    finally:
        os.close(fd)


def release_peer_program(att: Attachment) -> None:
    """Remove the pass program `att` relied on once no other attachment relies on it."""
    name, ns = att.peer.get("ifname"), att.peer.get("netns")
    if not att.peer.get("helper") or not isinstance(name, str) or not (ns is None or isinstance(ns, str)):
        return
    if any(_same_peer(a, name, ns) for a in attachments() if (a.ifname, a.netns) != (att.ifname, att.netns)):
        return
    helper = read_state(name, ns)
    if helper is not None and helper.program == PEER_PROGRAM:
        detach(name, ns)


def _replace_pass(spec: loader.ProgramSpec, helper: Attachment, mode: str, defines: dict[str, int | str],
                  options: dict[str, object], peer_program: bool) -> tuple[Attachment, bool]:
    """A program attached where fastpath's pass program runs takes over its link."""
    if mode == "generic":
        raise FastpathError(
            f"{helper.ifname} is the veth peer of {helper.options.get('for', 'a native XDP program')}, so "
            "fastpath keeps a native XDP program on it",
            fix="attach with --mode native or auto")
    pdir = pin_dir(helper.ifname, helper.netns)
    prog = loader.load(spec, defines, pin_dir=str(pdir))
    try:
        fd = syscall.obj_get(str(pdir / "link"))
        try:
            syscall.link_update(fd, prog.prog_fd)
        finally:
            os.close(fd)
        att = Attachment(spec.name, helper.ifname, helper.netns, helper.ifindex, helper.mode,
                         syscall.prog_info(prog.prog_fd).id, helper.link_id, defines, time.time(),
                         options=options, spec=spec.to_json())
        att.peer = ensure_peer_program(helper.ifname, helper.netns, helper.mode, peer_program)
        _pin_replace(prog.prog_fd, pdir / "prog")
        _write_state(att)
        return att, False
    finally:
        prog.close()


def _hand_back_to_pass(att: Attachment, needed: list[Attachment]) -> None:
    """Detaching a program from an interface that others use as their veth peer: the link
    stays, running the pass program again."""
    pdir = pin_dir(att.ifname, att.netns)
    prog = peer.load_pass_program()
    try:
        fd = syscall.obj_get(str(pdir / "link"))
        try:
            syscall.link_update(fd, prog)
        finally:
            os.close(fd)
        for entry in pdir.iterdir():
            if entry.name != "link":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        owner = f"{needed[0].ifname} in {needed[0].netns}" if needed[0].netns else needed[0].ifname
        helper = Attachment(PEER_PROGRAM, att.ifname, att.netns, att.ifindex, att.mode,
                            syscall.prog_info(prog).id, att.link_id, {}, time.time(), options={"for": owner})
        remove_state(att)
        _write_state(helper)
    finally:
        os.close(prog)
    release_peer_program(att)
