"""The agent's events: one JSON object a line on stdout, which journald stores as it is.

    {"time": "2026-01-02T03:04:05.678Z", "level": "info", "event": "backend_down",
     "netns": "lab-lb", "interface": "eth0", "vip": "10.0.0.10:80/tcp",
     "backend": "10.0.1.21:8080", "reason": "ECONNREFUSED"}

Events a change makes are found by polling (`Watcher.poll`, every agent tick and right after
each apply), so a change made by hand (`fastpath lb backend drain`, `fastpath xdp attach`)
leaves a record as well as the agent's own:

  attached, replaced, detached   an XDP program appeared, was swapped, went away
  backend_down, backend_up       health verdicts (with the probe's reason)
  backend_drained, backend_undrained
  source_banned, source_unbanned the guard's per-source SYN ban (its `bans` map)
  cookie_mode_switched           an adaptive port switched to SYN cookies or back
  config_applied, config_unchanged, config_refused, apply_failed, error, agent_started,
  agent_stopping, metrics_listening      (emitted by fastpath.agent.service)

A new guard event is one function added to GUARD_WATCHES: it gets the watcher and one guard
attachment each poll and calls `emit`.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from fastpath.apps.guard import synguard
from fastpath.apps.lb import store as lb_store
from fastpath.bpf import xdp
from fastpath.errors import FastpathError

ERROR_EVENTS = frozenset({"config_refused", "apply_failed", "error"})


class Events:
    """Writes events as JSON lines (to stdout unless told otherwise); thread-safe."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        record = {"time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                  "level": "error" if event in ERROR_EVENTS else "info", "event": event, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            out = self.stream or sys.stdout
            out.write(line + "\n")
            out.flush()
        return record


AttKey = tuple[str | None, str, str]                 # (netns, interface, program)
BackendKey = tuple[str | None, str, str, str]        # (netns, interface, vip, backend)


@dataclass
class Watcher:
    """Remembers what it saw at the last poll and emits an event for each difference."""

    events: Events
    attachments: dict[AttKey, dict[str, Any]] | None = None
    backends: dict[BackendKey, tuple[bool, str]] = field(default_factory=dict)
    reasons: dict[BackendKey, str] = field(default_factory=dict)   # why a probe failed
    bans: dict[tuple[str | None, str, str], int] = field(default_factory=dict)
    ban_counts: dict[tuple[str | None, str], int] = field(default_factory=dict)
    modes: dict[tuple[str | None, str, int], tuple[str, int, int]] = field(default_factory=dict)
    armed: dict[tuple[str | None, str], bool] = field(default_factory=dict)

    def poll(self) -> None:
        atts = [a for a in xdp.attachments() if a.program != xdp.PEER_PROGRAM]
        self._attachments(atts)
        for att in atts:
            try:
                if att.program == "l4lb":
                    self._backends(att)
                elif att.program == synguard.PROGRAM:
                    for watch in GUARD_WATCHES:
                        watch(self, att)
            except (FastpathError, OSError) as exc:
                # An attachment going away under the poll: the next poll reports it detached.
                if xdp.dead_reason(att) is None and xdp.read_state(att.ifname, att.netns, att.program):
                    self.events.emit("error", netns=att.netns, interface=att.ifname, program=att.program,
                                     error=str(exc))

    def _attachments(self, atts: list[xdp.Attachment]) -> None:
        now = {(a.netns, a.ifname, a.program): {"mode": a.mode, "prog_id": a.prog_id,
                                                "generation": a.generation} for a in atts}
        before, self.attachments = self.attachments, now
        if before is None:
            return
        for key in sorted(set(now) - set(before), key=str):
            self.events.emit("attached", netns=key[0], interface=key[1], program=key[2], **now[key])
        for key in sorted(set(before) - set(now), key=str):
            self.events.emit("detached", netns=key[0], interface=key[1], program=key[2],
                             prog_id=before[key]["prog_id"])
        for key in sorted(set(now) & set(before), key=str):
            if now[key]["prog_id"] != before[key]["prog_id"]:
                self.events.emit("replaced", netns=key[0], interface=key[1], program=key[2],
                                 old_prog_id=before[key]["prog_id"], **now[key])

    def _backends(self, att: xdp.Attachment) -> None:
        state = lb_store.load_state(att.ifname, att.netns)
        seen: dict[BackendKey, tuple[bool, str]] = {}
        for vname, vs in (state.vips.items() if state else []):
            for bname, b in vs.backends.items():
                key = (att.netns, att.ifname, vname, bname)
                seen[key] = (b.drained, b.health)
                old = self.backends.get(key)
                if old is None:
                    continue
                where = {"netns": att.netns, "interface": att.ifname, "vip": vname, "backend": bname}
                if old[0] != b.drained:
                    self.events.emit("backend_drained" if b.drained else "backend_undrained", **where)
                if old[1] != b.health and b.health in ("up", "down"):
                    extra = {"reason": self.reasons.pop(key)} if key in self.reasons else {}
                    self.events.emit(f"backend_{b.health}", **where, **extra)
        for key in [k for k in self.backends if k[:2] == (att.netns, att.ifname)]:
            self.backends.pop(key)
        self.backends.update(seen)


# -- the guard's events -------------------------------------------------------------------------

def watch_bans(w: Watcher, att: xdp.Attachment) -> None:
    """source_banned when a ban appears in the guard's `bans` map, source_unbanned when one it
    reported is over. The map holds bans only (a flood of spoofed sources never enters it), and
    is read only when the `bans` counter moved or a reported ban may have ended."""
    iface = (att.netns, att.ifname)
    count = synguard.read_counters(att)["bans"][0]
    started = count != w.ban_counts.get(iface)
    first = iface not in w.ban_counts
    w.ban_counts[iface] = count
    mine = [k for k in w.bans if k[:2] == iface]
    if not started and not mine:
        return
    current = {b.source: b.seconds_left for b in synguard.read_bans(att)}
    where = {"netns": att.netns, "interface": att.ifname}
    for source, left in sorted(current.items()):
        if (*iface, source) not in w.bans and not first:
            w.events.emit("source_banned", **where, source=source, seconds=round(left, 1))
        w.bans[(*iface, source)] = 1
    for key in mine:
        if key[2] not in current:
            w.events.emit("source_unbanned", **where, source=key[2])
            w.bans.pop(key)


def watch_cookie_modes(w: Watcher, att: xdp.Attachment) -> None:
    """cookie_mode_switched when an adaptive port went from passing SYNs to cookies or back
    (the guard switches by itself, on the port's SYN rate), with the port's switch counts."""
    where = {"netns": att.netns, "interface": att.ifname}
    for m in synguard.port_modes(att, synguard.guard_config(att)):
        key = (att.netns, att.ifname, m.port)
        seen = (m.mode, m.to_cookie, m.to_pass)
        before = w.modes.get(key)
        w.modes[key] = seen
        if before is not None and before != seen:
            w.events.emit("cookie_mode_switched", **where, port=m.port, mode=m.mode, setting=m.setting,
                          to_cookie=m.to_cookie, to_pass=m.to_pass)


def watch_synproxy(w: Watcher, att: xdp.Attachment) -> None:
    """synproxy_armed / synproxy_disarmed when the guard's on-demand watcher put its SYNPROXY
    rules in (a port needs cookies) or took them out again."""
    key = (att.netns, att.ifname)
    proxy = synguard.synproxy_summary(att)
    if proxy["setting"] != "on-demand":
        w.armed.pop(key, None)
        return
    armed = bool(proxy["armed"])
    before = w.armed.get(key)
    w.armed[key] = armed
    if before is not None and before != armed:
        w.events.emit("synproxy_armed" if armed else "synproxy_disarmed", netns=att.netns,
                      interface=att.ifname, table=proxy["table"])


# Every guard event source, polled with each guard attachment.
GUARD_WATCHES: list[Callable[[Watcher, xdp.Attachment], None]] = [watch_bans, watch_cookie_modes,
                                                                   watch_synproxy]
