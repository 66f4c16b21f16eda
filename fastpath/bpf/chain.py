"""Several fastpath XDP programs on one interface: the SYN guard first, then the balancer.

An interface has one bpf_link (`<pin dir>/link`). A lone program is attached exactly as
before. When a second program joins, each program keeps its maps in its own pin directory
(the first one's stay where they were, the newcomer's go to `<pin dir>/<program>/`), and the
programs are chained through a pinned prog array `<pin dir>/chain` with fixed slots
(each program's `chain_slot`, declared in its ProgramSpec: the SYN guard 0, the balancer
1; the runtime knows programs only by what they declare, and what an attachment's state
records). A program is compiled with `-DFP_CHAIN=1 -DFP_CHAIN_NEXT=<slot>` only while a
later slot is occupied: it then tail-calls that slot where it would return XDP_PASS (an
empty slot falls through to XDP_PASS). The link points at the occupied slot that comes
first. Every change is a map update or a BPF_LINK_UPDATE, so traffic never sees an
interface without a program; a program whose chain position changed is recompiled and
reopens its pinned maps, so counters and flows survive.

Programs that share an interface must not want the same traffic: a program earlier in the
chain that answers a destination itself (the SYN guard, for the addresses it protects on
its ports) hides it from a later one that serves it (the balancer, for a VIP). Each
application declares what it claims through CLAIMS, and `check_claims` refuses an overlap
with one line, at join and whenever an application changes what it claims.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fastpath.bpf import loader, state, syscall
from fastpath.errors import FastpathError

CHAIN_MAP = "chain"
MAX_SLOTS = 2  # FP_CHAIN_SLOTS in bpf/fastpath.h


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Claim:
    """TCP destinations one program of a chain wants: `answers` (it replies itself, so no
    later program sees them) or serves (it needs to see them)."""

    program: str
    addresses: frozenset[Address] | None  # None: every address
    ports: frozenset[int]
    what: str          # in the user's words: "VIP 10.0.0.1:80/tcp", "an address the SYN guard protects"
    answers: bool
    fix: str = ""      # how to give up the claim


# program -> its claims on an interface, from its saved state (applications register).
CLAIMS: dict[str, Callable[[str, str | None], list[Claim]]] = {}


def _overlap(a: Claim, b: Claim) -> tuple[Address | None, int] | None:
    """Where two claims meet: (an address, or None for every address, and a port)."""
    ports = a.ports & b.ports
    if not ports:
        return None
    if a.addresses is None and b.addresses is None:
        return None, min(ports)
    if a.addresses is None or b.addresses is None:
        addrs = a.addresses if b.addresses is None else b.addresses
    else:
        addrs = a.addresses & b.addresses
    if not addrs:
        return None
    return min(addrs, key=lambda x: (x.version, int(x))), min(ports)


def check_claims(ifname: str, netns: str | None, pending: Mapping[str, list[Claim]] | None = None,
                 programs: Iterable[str] = ()) -> None:
    """Refuse (one line) when a program that answers destinations itself would hide some
    from a program that serves them, among the programs on `ifname` plus `programs`; the
    claims of a program in `pending` replace what its state says."""
    pend = dict(pending or {})
    names = {a.program for a in state.members(ifname, netns)} | set(programs) | set(pend)
    claims: list[Claim] = []
    for name in sorted(names):
        hook = CLAIMS.get(name)
        claims.extend(pend[name] if name in pend else hook(ifname, netns) if hook else [])
    where = ifname + (f" in {netns}" if netns else "")
    for ans in (c for c in claims if c.answers):
        for srv in (c for c in claims if not c.answers and c.program != ans.program):
            hit = _overlap(ans, srv)
            if hit is None:
                continue
            addr, port = hit
            at = f"{addr} port {port}" if addr is not None else f"port {port}"
            raise FastpathError(
                f"{srv.what} on {where} is also {ans.what} ({at}): {ans.program} runs first in the "
                f"chain and would answer its SYNs itself, so {srv.program} would see only their ACKs",
                fix=ans.fix or srv.fix or None)


def chain_defines(program: str, occupied: Mapping[str, int], pdir: Path) -> dict[str, int | str]:
    """The FP_CHAIN defines `program` needs when the programs `occupied` (name -> slot)
    share `pdir`."""
    slot = occupied[program]
    later = sorted(s for s in occupied.values() if s > slot)
    if not later:
        return {}
    return {"FP_CHAIN": 1, "FP_CHAIN_NEXT": later[0], "FP_CHAIN_PIN": f'"{pdir / CHAIN_MAP}"'}


def _u32(value: int) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(struct.pack("=I", value), 4)


def _check(spec: loader.ProgramSpec, others: Iterable[state.Attachment], ifname: str) -> dict[str, int]:
    """The chain's slots (program -> slot), or an error when a program declares none or two
    want one slot."""
    slots = {spec.name: spec.chain_slot}
    for o in others:
        slots[o.program] = state.program_spec(o).chain_slot
    taken: dict[int, str] = {}
    for o in others:
        slot = slots[o.program]
        if slot is None or spec.chain_slot is None or slot in taken or slot == spec.chain_slot:
            raise FastpathError(
                f"{ifname} runs fastpath program {o.program}, which cannot share it with {spec.name}",
                fix=f"detach it first: {state.detach_hint(o)}",
            )
        taken[slot] = o.program
    return {k: v for k, v in slots.items() if v is not None}


class _Chain:
    """Loads the programs whose chain position changes and publishes the new chain."""

    def __init__(self, ifname: str, netns: str | None, occupied: dict[str, int]) -> None:
        self.pdir = state.pin_dir(ifname, netns)
        self.occupied = occupied
        self.progs: dict[str, int] = {}
        self.loaded: list[loader.LoadedProgram] = []
        self.fds: list[int] = []

    def load(self, spec: loader.ProgramSpec, defines: dict[str, int | str], mdir: Path) -> int:
        want = chain_defines(spec.name, self.occupied, self.pdir)
        prog = loader.load(spec, {**defines, **want}, pin_dir=str(mdir))
        self.loaded.append(prog)
        self.progs[spec.name] = prog.prog_fd
        return prog.prog_fd

    def keep_or_reload(self, att: state.Attachment) -> bool:
        """Use `att`'s running program, or reload it when its chain defines change."""
        want = chain_defines(att.program, self.occupied, self.pdir)
        if want == att.chain:
            fd = syscall.obj_get(str(att.pin_dir / "prog"))
            self.fds.append(fd)
            self.progs[att.program] = fd
            return False
        fd = self.load(state.program_spec(att), dict(att.defines), att.pin_dir)
        att.chain = want
        att.prog_id = syscall.prog_info(fd).id
        att.replaced_at = time.time()
        att.generation += 1
        return True

    def publish(self) -> None:
        """Fill the chain's slots, point the link at its head, then empty the stale slots."""
        order = sorted(self.occupied, key=self.occupied.__getitem__)
        path = self.pdir / CHAIN_MAP
        cfd = syscall.obj_get(str(path)) if path.exists() else -1
        try:
            if cfd >= 0:
                for program in order[1:]:
                    syscall.map_update(cfd, _u32(self.occupied[program]), _u32(self.progs[program]))
            link = syscall.obj_get(str(self.pdir / "link"))
            try:
                syscall.link_update(link, self.progs[order[0]])
            finally:
                os.close(link)
            if cfd >= 0:
                used = {self.occupied[p] for p in order[1:]}
                for slot in range(MAX_SLOTS):
                    if slot not in used:
                        syscall.map_delete(cfd, _u32(slot))
        finally:
            if cfd >= 0:
                os.close(cfd)

    def pin(self, atts: Iterable[state.Attachment]) -> None:
        for att in atts:
            fd = self.progs[att.program]
            with contextlib.suppress(FileNotFoundError):
                (att.pin_dir / "prog").unlink()
            syscall.obj_pin(fd, str(att.pin_dir / "prog"))

    def close(self) -> None:
        for prog in self.loaded:
            prog.close()
        for fd in self.fds:
            os.close(fd)


def join(
    spec: loader.ProgramSpec,
    ifname: str,
    netns: str | None,
    ifindex: int,
    defines: dict[str, int | str],
    options: dict[str, object],
    old: state.Attachment | None,
    others: list[state.Attachment],
    mode: str = "auto",
) -> tuple[state.Attachment, bool]:
    """Attach `spec` next to the programs `others` on `ifname` (or replace it there).

    Every program of the chain runs in the mode the interface's link was created in (the
    first program's): `mode` must be that one or "auto".
    """
    slots = _check(spec, others, ifname)
    state.check_link_mode(spec.name, ifname, netns, mode, others[0])
    check_claims(ifname, netns, programs=[spec.name])
    pdir = state.pin_dir(ifname, netns)
    subdir = old.subdir if old is not None else spec.name
    mdir = pdir / subdir if subdir else pdir
    created = not mdir.exists()
    mdir.mkdir(parents=True, exist_ok=True)
    ch = _Chain(ifname, netns, slots)
    now = time.time()
    try:
        fd = ch.load(spec, defines, mdir)
        reloaded = [o for o in others if ch.keep_or_reload(o)]
        ch.publish()
        head = others[0]
        att = state.Attachment(
            spec.name, ifname, netns, ifindex, head.mode, syscall.prog_info(fd).id, head.link_id,
            defines, old.attached_at if old else now, now if old else None,
            old.generation + 1 if old else 1, options, subdir,
            chain_defines(spec.name, ch.occupied, pdir), dict(old.peer) if old else {}, spec.to_json(),
        )
        ch.pin([att, *reloaded])
        for o in [att, *reloaded]:
            state.save_state(o)
        return att, old is not None
    except BaseException:
        if old is None and created:
            shutil.rmtree(mdir, ignore_errors=True)
        raise
    finally:
        ch.close()


def leave(att: state.Attachment, others: list[state.Attachment]) -> None:
    """Take `att` out of its interface's chain; the programs `others` keep running."""
    pdir = att.pin_dir if not att.subdir else att.pin_dir.parent
    occupied = {o.program: slot for o in others if (slot := state.program_spec(o).chain_slot) is not None}
    ch = _Chain(att.ifname, att.netns, occupied)
    try:
        reloaded = [o for o in others if ch.keep_or_reload(o)]
        ch.publish()
        ch.pin(reloaded)
        if att.peer and not others[0].peer:
            # The interface's veth peer record goes with the link, which stays.
            others[0].peer = att.peer
            if others[0] not in reloaded:
                reloaded.append(others[0])
        for o in reloaded:
            state.save_state(o)
    finally:
        ch.close()
    if att.subdir:
        shutil.rmtree(pdir / att.subdir, ignore_errors=True)
    else:
        for entry in pdir.iterdir():
            if entry.name not in ("link", CHAIN_MAP) and not entry.is_dir():
                entry.unlink()
    if not any(o.chain for o in others):
        with contextlib.suppress(FileNotFoundError):
            (pdir / CHAIN_MAP).unlink()
    state.remove_state(att)
