"""SYNPROXY rules on demand: the nft table, and the conntrack it turns on, only while an
adaptive port of the guard needs cookies.

Why: with no attack an adaptive port passes every SYN to the stack, and the SYNPROXY table
only costs: its `ct state` match turns conntrack on in the namespace, which tracks every
connection of a busy service (a sixth of its new connections per second on a veth pair,
`fastpath bench synguard-churn`).

How: the program never sends a cookie that nothing could finish. A port in cookie mode
sends cookies only while the `adaptive` record's `armed` flag is 1; before that its SYNs
go to the stack (counted as `cookie_held`), whose own SYN cookies take over when its queue
fills. This watcher (one process per interface, started by attach: fastpath/apps/guard/armer.py)
reads the ports' modes every POLL_S seconds:

- a port in cookie mode and the rules not armed: arm them (synguard.arm_rules: the table,
  the open connections carried into flows and conntrack, tcp_loose=0, then `armed`);
- the rules armed, no port in cookie mode for LINGER_S seconds, and no connection that
  SYNPROXY opened still exchanging data (its sequence numbers are translated by SYNPROXY's
  conntrack hooks for its whole life): disarm (`armed` to 0 first, then the table goes and
  tcp_loose is restored).

Every change happens under synguard.rules_lock, with the state read again inside it, so
commands that change the guard at the same moment see a consistent table.

    python -m fastpath.apps.guard.ondemand eth0 [--netns NS]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from types import FrameType

from fastpath.apps.guard import armer, existing, nft, synguard
from fastpath.apps.guard.abi import PROGRAM
from fastpath.apps.guard.config import GuardConfig
from fastpath.bpf import xdp
from fastpath.errors import FastpathError

POLL_S = 0.05
LINGER_S = 5.0          # every port out of cookie mode this long before the rules go
SPLICE_RECHECK_S = 2.0  # how often open SYNPROXY connections are counted while they hold the rules
DEAD_CHECK_S = 1.0      # how often the watcher checks that the guard still drives its interface


def log(message: str) -> None:
    sys.stdout.write(f"{datetime.now().isoformat(timespec='milliseconds')} {message}\n")
    sys.stdout.flush()


def wanted(att: xdp.Attachment, ports: Sequence[int]) -> bool:
    """Some cookie port is in cookie mode right now (as the program switched it)."""
    keep = set(ports)
    with synguard.open_map(att, "port_state") as m:
        return any(st.cookies for key, st in m.items() if int(key.value) in keep)


def _ours(att: xdp.Attachment) -> bool:
    pid = att.options.get(armer.PID_KEY)
    return pid in (None, os.getpid()) or armer.watcher_pid(att) is None


class Watcher:
    def __init__(self, ifname: str, netns: str | None, linger: float = LINGER_S) -> None:
        self.ifname, self.netns, self.linger = ifname, netns, linger
        self.calm_since: float | None = None
        self.recheck_at = 0.0
        self.alive_checked = 0.0

    def current(self) -> tuple[xdp.Attachment, GuardConfig] | None:
        """The attachment and its config while this watcher has a job: the guard is there, on
        demand, and no other watcher took over."""
        att = xdp.read_state(self.ifname, self.netns, PROGRAM)
        if att is None or att.program != PROGRAM or not _ours(att):
            return None
        try:
            cfg = synguard.guard_config(att)
        except FastpathError:
            return None
        return (att, cfg) if cfg.on_demand else None

    def step(self, now: float) -> bool:
        """One look at the ports; False when the job is over."""
        found = self.current()
        if found is None:
            return False
        att, cfg = found
        if now - self.alive_checked >= DEAD_CHECK_S:
            # its namespace or interface gone: the next fastpath command prunes the entry
            if xdp.dead_reason(att) is not None:
                return False
            self.alive_checked = now
        want = wanted(att, cfg.cookie_ports)
        armed = synguard.read_armed(att)
        if want:
            self.calm_since = None
            if not armed:
                self.arm()
            return True
        if not armed and "nft_table" not in att.options:
            self.calm_since = None
            return True
        if self.calm_since is None:
            self.calm_since = now
        if now - self.calm_since < self.linger or now < self.recheck_at:
            return True
        held = existing.spliced(att.netns, cfg.cookie_ports)
        if held:
            self.recheck_at = now + SPLICE_RECHECK_S
            return True
        self.disarm()
        return True

    def arm(self) -> None:
        t0 = time.monotonic()
        with synguard.rules_lock():
            found = self.current()
            if found is None or synguard.read_armed(found[0]):
                return
            att, cfg = found
            table = nft.table_name(att.ifname, att.ifindex)
            seeded = synguard.arm_rules(att, cfg, {k: int(v) for k, v in att.defines.items()}, table)
            xdp.save_state(att)
        log(f"armed: SYNPROXY table {table} in, {seeded.connections} open connection(s) carried "
            f"({seeded.conntrack} new in conntrack), in {(time.monotonic() - t0) * 1e3:.0f} ms")

    def disarm(self) -> None:
        with synguard.rules_lock():
            found = self.current()
            if found is None:
                return
            att, cfg = found
            if wanted(att, cfg.cookie_ports):
                return
            synguard.disarm_rules(att)
            xdp.save_state(att)
        self.calm_since = None
        log("disarmed: no port in cookie mode and no SYNPROXY connection open; table removed")


def run(ifname: str, netns: str | None, poll: float = POLL_S) -> int:
    watcher = Watcher(ifname, netns)
    log(f"watching the SYN guard on {ifname}{f' in {netns}' if netns else ''} (pid {os.getpid()})")
    errors = 0
    while True:
        try:
            if not watcher.step(time.monotonic()):
                log("the guard is gone, detached from a vanished interface, or no longer on demand: exiting")
                return 0
            errors = 0
        except (FastpathError, OSError) as exc:
            # an attachment going away under the step ends the job at the next one
            errors += 1
            log(f"error: {exc}")
            if errors >= 100:
                return 1
            time.sleep(min(1.0, poll * errors))
        time.sleep(poll)


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {armer.MODULE}",
                                     description="Arm the SYN guard's SYNPROXY rules while a port "
                                                 "needs cookies.")
    parser.add_argument("ifname")
    parser.add_argument("--netns")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        return run(args.ifname, args.netns)
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
