"""`fastpath lb health`: TCP health checks of every backend, draining the failing ones.

Every `interval` seconds all TCP backends are probed at once (a non-blocking connect to
the backend's address and port, from the balancer's namespace, bounded by `timeout`).
`fall` failures in a row mark a backend down: it leaves its VIP's Maglev ring (new flows
go elsewhere, conntrack keeps existing ones, exactly like `backend drain`); `rise`
successes in a row bring it back. With the defaults (0.5 s, 0.5 s, fall 2) a dead backend
is drained about 1.5 s after it stops answering. UDP backends are not checked.

When the `lb apply` file has a `bgp` section, the checker also runs the node's BGP speaker
(fastpath.apps.lb.speaker) and after every round announces the VIP addresses that have a
backend up and withdraws the others. It checks each round that the balancer is still
attached; when it is not, it withdraws everything and exits with an error.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastpath.apps.lb import program, speaker, store
from fastpath.bpf import xdp
from fastpath.errors import FastpathError


@dataclass(frozen=True)
class Target:
    vip: str
    backend: str
    address: str
    port: int


@dataclass
class Transition:
    vip: str
    backend: str
    up: bool
    reason: str


def targets(state: store.LbState) -> list[Target]:
    out = []
    for vname, vs in sorted(state.vips.items()):
        if vs.proto != "tcp":
            continue
        for bname, b in sorted(vs.backends.items()):
            out.append(Target(vname, bname, b.address, b.port))
    return out


def probe(checks: Iterable[Target], netns: str | None, timeout: float) -> dict[Target, str | None]:
    """Connect to every target at once; None for success, else the reason it failed."""
    sel = selectors.DefaultSelector()
    results: dict[Target, str | None] = {}
    socks: list[socket.socket] = []
    try:
        with xdp.in_netns(netns):
            for t in checks:
                fam = socket.AF_INET6 if ":" in t.address else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setblocking(False)
                socks.append(s)
                err = s.connect_ex((t.address, t.port))
                if err in (0, errno.EINPROGRESS):
                    sel.register(s, selectors.EVENT_WRITE, t)
                else:
                    results[t] = errno.errorcode.get(err, str(err))
        deadline = time.monotonic() + timeout
        while len(sel.get_map()) and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                results[key.data] = None if err == 0 else errno.errorcode.get(err, str(err))
                sel.unregister(sock)
        for key in list(sel.get_map().values()):
            results[key.data] = f"no answer within {timeout:g}s"
    finally:
        sel.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
    return results


class HealthChecker:
    """Turns probe results into up/down transitions with fall/rise hysteresis."""

    def __init__(self, fall: int = 2, rise: int = 2) -> None:
        if fall < 1 or rise < 1:
            raise FastpathError("--fall and --rise must be at least 1")
        self.fall = fall
        self.rise = rise
        self.fails: dict[tuple[str, str], int] = {}
        self.oks: dict[tuple[str, str], int] = {}

    def update(self, state: store.LbState, results: dict[Target, str | None]) -> list[Transition]:
        out = []
        for t, err in results.items():
            vs = state.vips.get(t.vip)
            b = vs.backends.get(t.backend) if vs else None
            if b is None:
                continue
            k = (t.vip, t.backend)
            if err is None:
                self.fails[k] = 0
                self.oks[k] = self.oks.get(k, 0) + 1
                if b.health != "up" and (b.health == "unknown" or self.oks[k] >= self.rise):
                    out.append(Transition(t.vip, t.backend, True, "answers"))
            else:
                self.oks[k] = 0
                self.fails[k] = self.fails.get(k, 0) + 1
                if b.health != "down" and self.fails[k] >= self.fall:
                    out.append(Transition(t.vip, t.backend, False, err))
        return out


def check_timing(interval: float, timeout: float) -> None:
    if not 0.05 <= interval <= 60 or not 0.05 <= timeout <= 60:
        raise FastpathError("--interval and --timeout must be between 0.05 and 60 seconds")


def run(ifname: str, netns: str | None, *, interval: float = 0.5, timeout: float = 0.5, fall: int = 2,
        rise: int = 2, rounds: int | None = None,
        report: Callable[[Transition], None] | None = None, announce: bool = False,
        say: Callable[[str], None] | None = None) -> int:
    """Check until interrupted (or for `rounds` rounds); returns how many transitions.

    With `announce`, the node's BGP speaker follows every round (see the module's doc) and
    is stopped, withdrawing every VIP, when this returns or raises, whatever the cause.
    """
    check_timing(interval, timeout)
    program.attachment(ifname, netns)
    checker = HealthChecker(fall, rise)
    announcer = speaker.Announcer(ifname, netns) if announce else None
    changed = 0
    n = 0
    try:
        while rounds is None or n < rounds:
            started = time.monotonic()
            if announcer is not None:
                _require_data_plane(ifname, netns, announcer.speaker.running)
            state = store.load_state(ifname, netns) or store.LbState()
            results = probe(targets(state), netns, timeout)
            moves = checker.update(state, results)
            if moves:
                with program.session(ifname, netns) as bal:
                    for m in moves:
                        bal.set_health(m.vip, m.backend, m.up)
                        changed += 1
                        if report:
                            report(m)
                    state = bal.state
            if announcer is not None:
                for line in announcer.update(state):
                    if say:
                        say(line)
            n += 1
            if rounds is not None and n >= rounds:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        if announcer is not None:
            announcer.close()
    return changed


def _require_data_plane(ifname: str, netns: str | None, announcing: bool) -> None:
    """Raise unless the balancer still runs on its interface: the routes must not outlive it
    (the caller's clean-up stops the speaker)."""
    withdrawn = ": every VIP withdrawn" if announcing else ""
    try:
        att = program.attachment(ifname, netns)
    except FastpathError as exc:
        raise FastpathError(f"{exc.message}{withdrawn}") from None
    dead = xdp.dead_reason(att)
    if dead is not None:
        raise FastpathError(f"the balancer on {ifname} is gone ({dead}){withdrawn}",
                            fix="attach it again, then restart fastpath lb health")
