"""`fastpath demo synflood`: a spoofed SYN flood against a TCP service, first unguarded, then
with the XDP SYN guard attached, on the embedded flood topology (fastpath/labs/floodlab.py).

A live table gets one row a second: flood frames per second arriving at the server, SYN-ACKs
per second the guard sends from XDP, and the legitimate client's connects that succeeded
or failed in that second. Everything is torn down at the end, on Ctrl-C or on error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.live import Live

from fastpath.errors import FastpathError
from fastpath.labs import floodlab
from fastpath.output import console, info, make_table, print_json

if TYPE_CHECKING:
    from fastpath.netns import Lab, NodeProcess

DEMO_LAB = "fpsynflood"


@dataclass
class Row:
    t: float
    phase: str
    flood_pps: float
    cookies_pps: float
    ok: int
    failed: int


@dataclass
class Phase:
    name: str
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)


class _Tally:
    """Counts the probe's ok/fail lines as they come."""

    def __init__(self, proc: NodeProcess) -> None:
        self.proc = proc
        self.seen = 0

    def take(self) -> tuple[int, int]:
        lines = self.proc.output().splitlines()
        new = [ln.strip() for ln in lines[self.seen:] if ln.strip() in ("ok", "fail")]
        self.seen = len(lines)
        return sum(1 for ln in new if ln == "ok"), sum(1 for ln in new if ln == "fail")


def _cookies(lab: Lab) -> int:
    from fastpath.apps.guard import synguard

    try:
        att = synguard.attachment("eth0", lab.netns("server"))
    except FastpathError:
        return 0
    return synguard.read_counters(att)["tx_cookie"][0]


def _watch(lab: Lab, phase: Phase, tally: _Tally, live: Live | None, rows: list[Row], t0: float,
           seconds: float) -> None:
    prev_rx, prev_ck, prev_t = floodlab.xdp_rx_packets(lab), _cookies(lab), time.monotonic()
    end = prev_t + seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        rx, ck, now = floodlab.xdp_rx_packets(lab), _cookies(lab), time.monotonic()
        ok, failed = tally.take()
        dt = now - prev_t
        row = Row(now - t0, phase.name, (rx - prev_rx) / dt, (ck - prev_ck) / dt, ok, failed)
        prev_rx, prev_ck, prev_t = rx, ck, now
        phase.ok += ok
        phase.failed += failed
        phase.seconds += dt
        phase.rows.append(row)
        rows.append(row)
        if live is not None:
            live.update(make_table(
                ["t (s)", "XDP guard", "flood frames/s at server", "SYN-ACKs/s from XDP", "legit ok",
                 "legit failed"],
                [[f"{r.t:.0f}", r.phase, f"{r.flood_pps:,.0f}", f"{r.cookies_pps:,.0f}", r.ok, r.failed]
                 for r in rows[-20:]],
                title="spoofed SYN flood on server:8080 (Ctrl-C stops and cleans up)"), refresh=True)


# The demo's premise: the unguarded server must fail most legitimate connects, the guarded one
# serve nearly all of them. A demo that cannot show that says so and exits non-zero.
UNGUARDED_MAX_OK = 0.5
PROBE_TIMEOUT = 1.5
GUARDED_MIN_OK = 0.95


def _alive(flood: NodeProcess, when: str) -> None:
    if not flood.running:
        raise FastpathError(f"the flood generator died {when}: {floodlab.flood_error(flood.output())}",
                            fix="'fastpath doctor' says what this host allows (xdp-live-frames row)")


def verdict(result: dict[str, Any]) -> list[str]:
    """What went wrong with the demo's premise (empty: it showed what it is for)."""
    off, on = result["phases"]
    problems = []
    for p in (off, on):
        if p["flood_pps"] < 1000:
            problems.append(f"the flood barely reached the server with the guard {p['guard']} "
                            f"({p['flood_pps']:,} frames/s, engine {result['engine']})")
    total_off = off["legit_ok"] + off["legit_failed"]
    if total_off and off["legit_ok"] > UNGUARDED_MAX_OK * total_off:
        problems.append(f"the flood did not hurt the unguarded server: {off['legit_ok']}/{total_off} "
                        "connects "
                        f"ok at {off['flood_pps']:,} flood frames/s (engine {result['engine']})")
    total_on = on["legit_ok"] + on["legit_failed"]
    if not total_on or on["legit_ok"] < GUARDED_MIN_OK * total_on:
        problems.append(f"the guarded server served only {on['legit_ok']}/{total_on} connects "
                        f"(wanted >= {GUARDED_MIN_OK:.0%})")
    return problems


def run(seconds: float, as_json: bool) -> int:
    """Build the lab, flood it unguarded for `seconds`, attach the guard, flood `seconds`
    more, tear everything down; prints a summary (or JSON). Exits non-zero, saying why,
    when the flood died or the demo did not show an unguarded server failing and a guarded
    one serving."""
    from fastpath.apps.guard import synguard
    from fastpath.apps.guard.config import GuardConfig
    from fastpath.netns import Lab, list_labs

    if any(s.name == DEMO_LAB for s in list_labs()):
        raise FastpathError(f"a demo lab {DEMO_LAB!r} is already up",
                            fix=f"remove it: fastpath topo down {DEMO_LAB}")
    info(f"building lab {DEMO_LAB}: client, attacker and server (tcp_syncookies=0) on one bridge")
    phases = [Phase("off"), Phase("on")]
    rows: list[Row] = []
    with Lab.up(floodlab.TOPOLOGY, name=DEMO_LAB) as lab:
        ns = lab.netns("server")
        try:
            server = lab.spawn("server", floodlab.serve_argv())
            server.wait_output("ready")
            # The guard's compile and attach happen in between, under the flood: on a slow
            # machine that takes tens of seconds. The demo stops both when it is done.
            total = 2 * seconds + 120
            flood = lab.spawn("attacker", floodlab.flood_argv(lab, floodlab.OUTLAST_FRAMES, total))
            try:
                flood.wait_output("ready")
            except FastpathError:
                _alive(flood, "at start")
                raise
            engine = floodlab.flood_engine(flood.output())
            note = next((ln for ln in flood.output().splitlines() if ln.startswith("engine ")), "")
            info(f"flood engine: {note.removeprefix('engine ')}")
            # 1.5 s per connect: room for the kernel's first SYN retransmit (after 1 s), as a
            # real client waits when the flood crowds out its SYN or the SYN-ACK.
            probe = lab.spawn("client", floodlab.probe_argv(count=1_000_000, timeout=PROBE_TIMEOUT,
                                                            interval=0.05,
                                                            seconds=total, progress=True))
            tally = _Tally(probe)
            info(f"flooding {floodlab.SERVER4}:{floodlab.SERVICE_PORT} from spoofed {floodlab.SPOOFED_NET}; "
                 f"a client connects every 50 ms ({PROBE_TIMEOUT:g} s timeout: one SYN retransmit)")
            t0 = time.monotonic()
            with Live(console=console, auto_refresh=False, transient=as_json) as live:
                _watch(lab, phases[0], tally, None if as_json else live, rows, t0, seconds)
                _alive(flood, "before the guard was attached")
                info("attaching the XDP SYN guard (the compile takes a few seconds; the flood goes on)")
                cfg = GuardConfig(cookie_ports=(floodlab.SERVICE_PORT,), cookies="always")
                res = synguard.attach("eth0", ns, "auto", cfg)
                # A connect that began before the attach ends within one timeout: it belongs to
                # neither phase.
                time.sleep(PROBE_TIMEOUT)
                cookies_before = _cookies(lab)
                tally.take()
                _watch(lab, phases[1], tally, None if as_json else live, rows, t0, seconds)
                cookies = _cookies(lab) - cookies_before
            _alive(flood, "while the guard was attached")
            flood.stop()
            probe.stop()
        finally:
            floodlab.cleanup(lab)
        info("guard detached; tearing the lab down")
    result: dict[str, Any] = {
        "lab": DEMO_LAB, "mode": res.attachment.mode, "engine": engine, "cookies_sent": cookies,
        "phases": [{"guard": p.name, "legit_ok": p.ok, "legit_failed": p.failed,
                    "flood_pps": round(sum(r.flood_pps for r in p.rows) / max(len(p.rows), 1)),
                    "synacks_from_xdp_pps": round(sum(r.cookies_pps for r in p.rows) / max(len(p.rows), 1)),
                    "seconds": round(p.seconds, 1)}
                   for p in phases],
    }
    problems = verdict(result)
    result["ok"] = not problems
    result["problems"] = problems
    if as_json:
        print_json(result)
    else:
        for p in result["phases"]:
            total = p["legit_ok"] + p["legit_failed"]
            info(f"XDP guard {p['guard']}: {p['legit_ok']}/{total} legit connects ok under "
                 f"{p['flood_pps']:,} flood frames/s ({p['synacks_from_xdp_pps']:,} SYN-ACKs/s from XDP)")
    if problems:
        raise FastpathError(f"the demo did not show what it is for: {'; '.join(problems)}",
                            fix="see 'fastpath doctor'; a busy machine slows the flood")
    return 0
