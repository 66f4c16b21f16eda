"""Make the host match a node config: plan the whole difference, check it, then apply it step
by step, undoing the steps already done when one fails.

A plan compares each interface of the config with what runs there (the attachments' state,
the guard's settings and lists, the balancer's VIPs and backends, decap's sets) and holds one
step per program that differs: attach, replace (a hot reload), configure (through the pinned
maps, no reload) or detach. Programs the config no longer names are detached when fastpath
applied them before (the record of what it manages is `/run/fastpath/agent/managed.json`) or
when they run on an interface the config names; anything else attached by hand is left
alone. What already matches is not touched, so a second apply has no step, and an agent that
starts where a previous one left off changes nothing (traffic never notices).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpath.agent.nodeconfig import BalancerSection, DecapSection, GuardSection, InterfaceConfig, NodeConfig
from fastpath.apps.decap import decap
from fastpath.apps.guard import nft, synguard
from fastpath.apps.guard.abi import Network
from fastpath.apps.guard.config import GuardConfig
from fastpath.apps.lb import program as lb_program
from fastpath.apps.lb import store as lb_store
from fastpath.apps.lb.abi import TIMEOUTS, TUNABLES
from fastpath.apps.lb.config import ATTACH_OPTIONS, BackendSpec, VipSpec, backend_name
from fastpath.bpf import xdp
from fastpath.core.jsonstate import read_json, write_json
from fastpath.core.namespaces import in_netns, netns_exists
from fastpath.core.paths import RUN_ROOT
from fastpath.errors import FastpathError
from fastpath.output import where

PROGRAMS = ("syn_guard", "l4lb", "decap")
TITLES = {"syn_guard": "SYN guard", "l4lb": "balancer", "decap": "decap"}
OPTION_OF = {tunable: opt[2:].replace("-", "_") for opt, tunable in ATTACH_OPTIONS.items()}


def managed_path() -> Path:
    return RUN_ROOT / "agent" / "managed.json"


Key = tuple[str | None, str, str]   # (netns, interface, program)


def read_managed() -> set[Key]:
    data = read_json(managed_path()) or {}
    return {(e[0], e[1], e[2]) for e in data.get("programs", []) if isinstance(e, list) and len(e) == 3}


def write_managed(keys: Iterable[Key]) -> None:
    rows = sorted([list(k) for k in keys], key=lambda e: [str(x) for x in e])
    write_json(managed_path(), {"programs": rows})


@dataclass
class Step:
    """One program on one interface brought to what the config says."""

    kind: str                 # attach, replace, configure, detach
    program: str
    ifname: str
    netns: str | None
    changes: list[str]
    do: Callable[[], object]       # may return the changes it made, as lines
    undo: Callable[[], object]
    early: bool = False       # frees the interface for another program: runs first

    @property
    def title(self) -> str:
        return f"{self.kind} {TITLES[self.program]} on {where(self.ifname, self.netns)}"

    def to_json(self) -> dict[str, object]:
        return {"action": self.kind, "program": self.program, "interface": self.ifname,
                "netns": self.netns, "changes": self.changes}


@dataclass
class Plan:
    config: NodeConfig
    steps: list[Step] = field(default_factory=list)
    managed: set[Key] = field(default_factory=set)

    def ordered(self) -> list[Step]:
        return [s for s in self.steps if s.early] + [s for s in self.steps if not s.early]

    def to_json(self) -> list[dict[str, object]]:
        return [s.to_json() for s in self.ordered()]

    def lines(self) -> list[str]:
        out = []
        for s in self.ordered():
            out.append(s.title)
            out.extend(f"  {c}" for c in s.changes)
        return out


class ApplyError(FastpathError):
    """A step failed; the steps before it were undone (`rolled_back`)."""

    def __init__(self, message: str, *, fix: str | None = None, rolled_back: int = 0) -> None:
        super().__init__(message, fix=fix)
        self.rolled_back = rolled_back


# -- what runs now ------------------------------------------------------------------------------

def _running(ifname: str, netns: str | None, program: str) -> xdp.Attachment | None:
    if netns is not None and not netns_exists(netns):
        return None
    att = xdp.read_state(ifname, netns, program)
    if att is None or att.program != program or xdp.dead_reason(att) is not None:
        return None
    return att


def check_host(node: NodeConfig) -> None:
    """Every namespace and interface the config names exists (and nft, where cookies need it)."""
    namespaces = [(e.netns, f"{e.where}.netns") for e in node.interfaces]
    if node.metrics.enabled:
        namespaces.append((node.metrics.netns, f"{node.source}: metrics.netns"))
    for netns, what in namespaces:
        if netns is not None and not netns_exists(netns):
            raise FastpathError(f"{what}: namespace {netns!r} does not exist", fix="see 'ip netns'")
    for e in node.interfaces:
        with in_netns(e.netns):
            try:
                socket.if_nametoindex(e.ifname)
            except OSError:
                raise FastpathError(f"{e.where}.interface: no interface {e.ifname!r} "
                                    f"{'in ' + e.netns if e.netns else 'in the root namespace'}",
                                    fix="see 'ip link'") from None
        if e.guard is not None and e.guard.config.uses_cookies:
            try:
                nft.require()
            except FastpathError as exc:
                raise FastpathError(f"{e.where}: guard: {exc.message}", fix=exc.fix) from None


def _check_mode(entry: InterfaceConfig, att: xdp.Attachment) -> None:
    if entry.mode != "auto" and att.mode != entry.mode:
        raise FastpathError(f"{entry.where}.mode: {att.program} runs on {entry.ifname} in {att.mode} mode, "
                            f"not {entry.mode}", fix=f"write mode: {att.mode} or auto, or detach it first "
                                                      f"({xdp.detach_hint(att)})")


# -- the guard -----------------------------------------------------------------------------------

def _acl(att: xdp.Attachment) -> dict[str, set[Network]]:
    out: dict[str, set[Network]] = {"allow": set(), "deny": set()}
    for net, action in synguard.acl_entries(att):
        out.setdefault(action, set()).add(net)
    return out


def _acl_moves(have: Mapping[str, set[Network]], want: Mapping[str, Iterable[Network]]
               ) -> list[tuple[str, str, list[Network]]]:
    """(action, verb, networks) that turn `have` into `want`: removals first."""
    dels, adds = [], []
    for action in ("allow", "deny"):
        target = set(want.get(action, ()))
        gone = sorted(have.get(action, set()) - target, key=lambda n: (n.version, n))
        new = sorted(target - have.get(action, set()), key=lambda n: (n.version, n))
        if gone:
            dels.append((action, "del", gone))
        if new:
            adds.append((action, "add", new))
    return dels + adds


def _apply_acl(ifname: str, netns: str | None, moves: list[tuple[str, str, list[Network]]]) -> None:
    for action, verb, nets in moves:
        synguard.acl_change([synguard.attachment(ifname, netns)], action, verb, nets)


def _undo_moves(moves: list[tuple[str, str, list[Network]]]) -> list[tuple[str, str, list[Network]]]:
    flip = {"add": "del", "del": "add"}
    undo = [(a, flip[v], n) for a, v, n in reversed(moves)]
    return [m for m in undo if m[1] == "del"] + [m for m in undo if m[1] == "add"]


def _acl_lines(moves: list[tuple[str, str, list[Network]]]) -> list[str]:
    return [f"{verb} {', '.join(map(str, nets))} {'to' if verb == 'add' else 'from'} the {action} list"
            for action, verb, nets in moves]


def _guard_attach(entry: InterfaceConfig, cfg: GuardConfig, lists: Mapping[str, Iterable[Network]],
                  mode: str) -> Callable[[], None]:
    def do() -> None:
        synguard.attach(entry.ifname, entry.netns, mode, cfg, peer_program=entry.peer_program)
        _apply_acl(entry.ifname, entry.netns, _acl_moves({}, lists))
    return do


def guard_steps(entry: InterfaceConfig, want: GuardSection) -> list[Step]:
    ifname, netns = entry.ifname, entry.netns
    att = _running(ifname, netns, "syn_guard")
    lists = {"allow": want.allow, "deny": want.deny}
    if att is None:
        changes = [want.config.describe(), *_acl_lines(_acl_moves({}, lists))]
        return [Step("attach", "syn_guard", ifname, netns, changes,
                     _guard_attach(entry, want.config, lists, entry.mode),
                     lambda: synguard.detach(ifname, netns))]
    _check_mode(entry, att)
    old = synguard.guard_config(att)
    moves = _acl_moves(_acl(att), lists)
    changes = [f"{old.describe()} -> {want.config.describe()}"] if old != want.config else []
    changes += _acl_lines(moves)
    if not changes:
        return []

    def do() -> None:
        _apply_acl(ifname, netns, moves)
        if old != want.config:
            synguard.set_config(synguard.attachment(ifname, netns), want.config)

    def undo() -> None:
        synguard.set_config(synguard.attachment(ifname, netns), old)
        _apply_acl(ifname, netns, _undo_moves(moves))

    return [Step("configure", "syn_guard", ifname, netns, changes, do, undo)]


# -- the balancer --------------------------------------------------------------------------------

def canon_specs(specs: Iterable[VipSpec]) -> dict[str, dict[str, Any]]:
    """VIPs as comparable data: mode, hash and every backend's weight, drain and MAC."""
    return {str(s.vip): {"mode": s.mode, "hash": s.hash,
                         "backends": {backend_name(s.vip, s.mode, b.address, b.port):
                                      {"weight": b.weight, "drained": b.drained, "mac": b.mac}
                                      for b in s.backends}}
            for s in specs}


def specs_of(state: lb_store.LbState | None) -> list[VipSpec]:
    """The VIPs a balancer runs, as the `lb apply` specs that would make them."""
    out = []
    for vs in (state.vips.values() if state else []):
        backends = tuple(BackendSpec(ipaddress.ip_address(b.address), b.port, b.weight, b.drained, b.mac)
                         for b in vs.backends.values())
        out.append(VipSpec(vs.id, vs.mode, vs.hash, backends))
    return out


def vip_diff(have: Mapping[str, dict[str, Any]], want: Mapping[str, dict[str, Any]]) -> list[str]:
    """What `lb apply` will change, in words (a wanted MAC of None keeps the resolved one)."""
    out = [f"remove VIP {v}" for v in sorted(set(have) - set(want))]
    for name in sorted(want):
        w = want[name]
        h = have.get(name)
        if h is not None and (h["mode"], h["hash"]) != (w["mode"], w["hash"]):
            out.append(f"re-create VIP {name} ({h['mode']}/{h['hash']} -> {w['mode']}/{w['hash']})")
            h = None
        if h is None:
            if name not in have:
                out.append(f"add VIP {name} ({w['mode']}, hash {w['hash']})")
            hb: dict[str, Any] = {}
        else:
            hb = h["backends"]
        wb = w["backends"]
        out += [f"remove backend {b} from {name}" for b in sorted(set(hb) - set(wb))]
        for b in sorted(wb):
            new, cur = wb[b], hb.get(b)
            if cur is None:
                out.append(f"add backend {b} to {name} (weight {new['weight']}"
                           + (", drained)" if new["drained"] else ")"))
                continue
            if cur["weight"] != new["weight"]:
                out.append(f"weight of {b} in {name}: {cur['weight']} -> {new['weight']}")
            if cur["drained"] != new["drained"]:
                out.append(f"{'drain' if new['drained'] else 'undrain'} {b} in {name}")
            if new["mac"] is not None and cur["mac"] != new["mac"]:
                out.append(f"MAC of {b} in {name}: {cur['mac']} -> {new['mac']}")
    return out


def _lb_apply(ifname: str, netns: str | None, specs: list[VipSpec]) -> list[str]:
    with lb_program.session(ifname, netns) as bal:
        return bal.apply(specs)


def _timeouts(defines: Mapping[str, int | str]) -> dict[str, int]:
    return {k: int(defines.get(k, TUNABLES[k])) for k in TIMEOUTS}


def balancer_steps(entry: InterfaceConfig, want: BalancerSection) -> list[Step]:
    ifname, netns = entry.ifname, entry.netns
    att = _running(ifname, netns, "l4lb")
    specs = list(want.vips)
    wanted = canon_specs(specs)
    # what attach would compile: the host's CPU counts unless the config gives --rx-cpus
    defines = {**TUNABLES, **lb_program.host_cpus(), **want.tunables}
    if att is None:
        sizes = ", ".join(f"{OPTION_OF[k]} {v}" for k, v in sorted(want.tunables.items()))
        changes = [f"attach the balancer{' (' + sizes + ')' if sizes else ''}", *vip_diff({}, wanted)]

        def attach() -> list[str]:
            lb_program.attach(ifname, netns, entry.mode, dict(want.tunables), peer_program=entry.peer_program)
            return [changes[0], *_lb_apply(ifname, netns, specs)]

        return [Step("attach", "l4lb", ifname, netns, changes, attach,
                     lambda: lb_program.detach(ifname, netns))]
    _check_mode(entry, att)
    for key, value in sorted(defines.items()):
        have = int(att.defines.get(key, TUNABLES.get(key, value)))
        if key in OPTION_OF and key not in TIMEOUTS and have != value:
            raise FastpathError(
                f"{entry.where}: balancer.{OPTION_OF[key]}: the running balancer has {have}, the config "
                f"{value}; pinned maps cannot change size or seed in place",
                fix=f"detach it first (fastpath lb detach {ifname}{' --netns ' + netns if netns else ''}; "
                    "its flows are lost), then apply")
    steps = []
    old_t, new_t = _timeouts(att.defines), _timeouts(defines)
    if old_t != new_t:
        changes = [f"{OPTION_OF[k]}: {old_t[k]} -> {new_t[k]}" for k in sorted(old_t) if old_t[k] != new_t[k]]
        steps.append(Step("replace", "l4lb", ifname, netns, changes,
                          lambda: lb_program.attach(ifname, netns, "auto", new_t),
                          lambda: lb_program.attach(ifname, netns, "auto", old_t)))
    old_specs = specs_of(lb_store.load_state(ifname, netns))
    diff = vip_diff(canon_specs(old_specs), wanted)
    if diff:
        steps.append(Step("configure", "l4lb", ifname, netns, diff,
                          lambda: _lb_apply(ifname, netns, specs),
                          lambda: _lb_apply(ifname, netns, old_specs)))
    return steps


# -- decap ---------------------------------------------------------------------------------------

def _decap_sets(section: DecapSection) -> dict[str, list[str]]:
    return {"sources": sorted(map(str, section.sources)), "vips": sorted(map(str, section.vips)),
            "addrs": sorted(map(str, section.extra))}


def _decap_attach(entry: InterfaceConfig, sets: Mapping[str, list[str]], mode: str) -> Callable[[], None]:
    def do() -> None:
        decap.attach(entry.ifname, entry.netns, [decap.parse_source(s) for s in sets["sources"]],
                     [decap.parse_addr(a) for a in sets["vips"]], mode,
                     [decap.parse_addr(a) for a in sets["addrs"]], peer_program=entry.peer_program)
    return do


def _recorded_sets(att: xdp.Attachment) -> dict[str, list[str]]:
    """The sets a running decap was attached with, as its state records them."""
    out = {}
    for key in ("sources", "vips", "addrs"):
        value = att.options.get(key)
        out[key] = sorted(str(x) for x in value) if isinstance(value, list) else []
    return out


def decap_steps(entry: InterfaceConfig, want: DecapSection) -> list[Step]:
    ifname, netns = entry.ifname, entry.netns
    att = _running(ifname, netns, "decap")
    sets = _decap_sets(want)
    text = [f"{k} {', '.join(v) or '-'}" for k, v in sets.items()]
    if att is None:
        return [Step("attach", "decap", ifname, netns, text, _decap_attach(entry, sets, entry.mode),
                     lambda: decap.detach(ifname, netns))]
    _check_mode(entry, att)
    old = _recorded_sets(att)
    if old == sets:
        return []
    changes = [f"{k}: {', '.join(old[k]) or '-'} -> {', '.join(v) or '-'}"
               for k, v in sets.items() if old[k] != v]
    return [Step("replace", "decap", ifname, netns, changes, _decap_attach(entry, sets, "auto"),
                 _decap_attach(entry, old, "auto"))]


# -- detaching what the config no longer names --------------------------------------------------

def detach_step(netns: str | None, ifname: str, program: str, early: bool) -> Step | None:
    att = _running(ifname, netns, program)
    if att is None:
        return None
    entry = InterfaceConfig(ifname, netns, att.mode)
    if program == "syn_guard":
        cfg, lists = synguard.guard_config(att), _acl(att)
        return Step("detach", program, ifname, netns, ["no longer in the config"],
                    lambda: synguard.detach(ifname, netns),
                    _guard_attach(entry, cfg, lists, att.mode), early)
    if program == "l4lb":
        old_specs = specs_of(lb_store.load_state(ifname, netns))
        tunables = {k: int(att.defines.get(k, v)) for k, v in TUNABLES.items() if k in OPTION_OF}

        def reattach() -> None:
            lb_program.attach(ifname, netns, att.mode, tunables, peer_program=entry.peer_program)
            _lb_apply(ifname, netns, old_specs)

        return Step("detach", program, ifname, netns, ["no longer in the config; its flows are forgotten"],
                    lambda: lb_program.detach(ifname, netns), reattach, early)
    sets = _recorded_sets(att)
    return Step("detach", program, ifname, netns, ["no longer in the config"],
                lambda: decap.detach(ifname, netns), _decap_attach(entry, sets, att.mode), early)


# -- planning and applying ------------------------------------------------------------------------

def make_plan(node: NodeConfig, managed: set[Key] | None = None) -> Plan:
    """Every step that makes the host match `node`, each checked; nothing is changed."""
    check_host(node)
    before = read_managed() if managed is None else managed
    plan = Plan(node)
    wanted: set[Key] = set()
    named = {e.key: e for e in node.interfaces}
    for e in node.interfaces:
        wanted.update((e.netns, e.ifname, p) for p in e.programs())
    candidates = set(before) | {(e.netns, e.ifname, p) for e in node.interfaces for p in PROGRAMS}
    for key in sorted(candidates - wanted, key=lambda k: [str(x) for x in k]):
        netns, ifname, prog = key
        entry = named.get((netns, ifname))
        early = entry is not None and (prog == "decap" or entry.decap is not None)
        step = detach_step(netns, ifname, prog, early)
        if step is not None:
            plan.steps.append(step)
    for e in node.interfaces:
        if e.guard is not None:
            plan.steps += guard_steps(e, e.guard)
        if e.balancer is not None:
            plan.steps += balancer_steps(e, e.balancer)
        if e.decap is not None:
            plan.steps += decap_steps(e, e.decap)
    plan.managed = wanted
    return plan


def _cause(exc: BaseException) -> str:
    if isinstance(exc, FastpathError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def execute(plan: Plan, report: Callable[[Step, list[str]], None] | None = None) -> list[dict[str, Any]]:
    """Apply `plan`; when a step fails, undo the ones done (newest first) and raise ApplyError.
    Returns each step with the changes it made. The record of managed programs is written
    only when every step succeeded."""
    done: list[Step] = []
    results: list[dict[str, Any]] = []
    for step in plan.ordered():
        try:
            got = step.do()
        except BaseException as exc:
            problems = []
            for prev in reversed(done):
                try:
                    prev.undo()
                except BaseException as undo_exc:  # noqa: BLE001 - every undo is tried
                    problems.append(f"undoing '{prev.title}' failed too: {_cause(undo_exc)}")
            # A first attach that failed half-way removed itself; a change may have started.
            with contextlib.suppress(BaseException):
                if step.kind != "attach":
                    step.undo()
            rolled = f"; the {len(done)} step(s) before it were undone" if done else ""
            raise ApplyError(f"{step.title} failed: {_cause(exc)}{rolled}"
                             + ("; " + "; ".join(problems) if problems else ""),
                             rolled_back=len(done)) from None
        done.append(step)
        changes = [str(c) for c in got] if isinstance(got, list) and got else step.changes
        results.append({**step.to_json(), "changes": changes})
        if report is not None:
            report(step, changes)
    write_managed(plan.managed)
    return results
