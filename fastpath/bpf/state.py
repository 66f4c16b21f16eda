"""What fastpath attached where: the state file of each attachment and its pin directory.

State lives in `/run/fastpath/xdp/<netns or "root">/<ifname>.json` (the first program on an
interface) and `<ifname>.d/<program>.json` (programs that joined its chain); pins live under
`/sys/fs/bpf/fastpath/<netns or "root">/<ifname>/`. Both roots move with FASTPATH_PIN_ROOT and
FASTPATH_RUN_ROOT. Attach (fastpath.bpf.xdp) and the chain (fastpath.bpf.chain) both build on
this module; it acts on no kernel object.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fastpath.bpf import loader
from fastpath.core.jsonstate import read_json, write_json
from fastpath.core.paths import PIN_ROOT, RUN_ROOT
from fastpath.errors import FastpathError


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
    # The veth peer of the interface, when the link was made in native mode on a veth:
    # {"ifname", "netns", "helper": True when this attachment relies on fastpath's pass
    # program there, "note": what was found}. Empty otherwise.
    peer: dict[str, object] = field(default_factory=dict)
    # The ProgramSpec the application declared (loader.ProgramSpec.to_json): how to reload
    # the program in a chain and which command detaches it, without importing its module.
    spec: dict[str, object] = field(default_factory=dict)

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
    data = read_json(path)
    if data is None:
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
    write_json(_state_file(att), att.to_json())


def save_state(att: Attachment) -> None:
    """Rewrite the state file of `att`, e.g. after a control plane changed its `options`."""
    _write_state(att)


def check_link_mode(program: str, ifname: str, netns: str | None, mode: str,
                     running: Attachment | None) -> None:
    """A program that joins an interface's chain, or replaces itself there, runs behind the
    interface's existing XDP link, so in that link's mode: refuse an explicit other mode
    rather than ignore it (a new link would leave a window without a program)."""
    if running is None or mode == "auto" or mode == running.mode:
        return
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
            f"({detach_hint(running)}) and attach both in {mode} mode",
    )


def program_spec(att: Attachment) -> loader.ProgramSpec:
    """The spec `att`'s application declared when it attached (recorded in its state)."""
    if not att.spec:
        raise FastpathError(f"the state of {att.program} on {att.ifname} records no program spec "
                            "(written by an older fastpath)",
                            fix=f"detach and attach it again: {detach_hint(att)}")
    return loader.ProgramSpec.from_json(att.spec)


def detach_hint(att: Attachment) -> str:
    """The command line that detaches `att`, from what its application declared."""
    command = att.spec.get("command") if att.spec else None
    if not command:
        return "see 'fastpath bpf ls'"
    ns = f" --netns {att.netns}" if att.netns else ""
    return f"{command} detach {att.ifname}{ns}"


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


