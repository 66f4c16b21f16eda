"""`fastpath demo fleet`: three XDP balancers behind an ECMP router, each announcing the VIP
over BGP with its own BIRD; one loses its link mid-run and comes back, and every
connection is counted (fastpath.labs.fleetlab).

The live table shows, per balancer, whether the router's ECMP route uses it, how many of
the long-lived connections it carries now and its packet rate, and per backend its
long-lived connections and packet rate. The demo checks its own premises and exits
non-zero when one did not hold: the nodes' Maglev tables agreed, flows spread over the
three balancers, the router withdrew the dead one within the hold time, flows went back
to it on its return, >= 99 % of the long-lived connections survived both moves and >= 99 %
of the new ones succeeded.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastpath.errors import FastpathError
from fastpath.output import console, info, make_table, print_json

LAB = "fpfleet"
LONG_LIVED = 60


def run(args: argparse.Namespace) -> int:
    from rich.console import Group
    from rich.live import Live

    from fastpath.labs import fleetlab
    from fastpath.netns import list_labs

    if any(s.name == LAB for s in list_labs()):
        raise FastpathError(f"a demo lab {LAB!r} is already up",
                            fix=f"remove it with: fastpath topo down {LAB}")
    say = (lambda _m: None) if args.json else info
    say(f"building lab {LAB}: client -> router (BIRD, ECMP) -> lb1..lb3 (XDP l4lb dsr + BIRD) -> b1..b3")
    lab = fleetlab.FleetLab(LAB)
    lab.up(say)
    try:
        check = lab.check()
        say("fleet check: " + ("the three balancers' Maglev tables agree" if check["consistent"]
                               else f"tables differ: {check['differences']}"))
        prev: dict[str, Any] = {}

        with Live(console=console, auto_refresh=False, transient=args.json) as live:
            def show(phase: str, s: fleetlab.Sample, progress: dict[str, Any]) -> None:
                dt = s.t - prev["t"] if prev else 0.0

                def rate(kind: str, name: str, now: int) -> str:
                    return f"{(now - prev[kind].get(name, now)) / dt:,.0f}" if dt > 0 else ""

                rows = [[n, "yes" if n in s.nexthops else "[red]withdrawn[/red]", s.carried[n],
                         rate("p", n, s.packets[n])] for n in fleetlab.BALANCERS]
                brows = [[b, progress["per_backend"].get(b, 0), rate("b", b, s.backend_packets.get(b, 0))]
                         for b in fleetlab.BACKENDS]
                prev.update(t=s.t, p=dict(s.packets), b=dict(s.backend_packets))
                if args.json:
                    return
                title = (f"fleet: {phase} (long-lived lost so far {progress['lost']}, new failed "
                         f"{progress['new_failed']}; Ctrl-C stops and cleans up)")
                live.update(Group(make_table(["balancer", "in ECMP route", "long-lived flows now", "pps"],
                                             rows, title=title),
                                  make_table(["backend", "long-lived flows", "pps"], brows)), refresh=True)

            res = fleetlab.run_scenario(lab, long_lived=LONG_LIVED, phase_s=max(args.seconds, 3.0),
                                        on_sample=show, say=say)
    finally:
        lab.down()
    say("lab torn down")
    problems = fleetlab.problems(res)
    if not check["consistent"]:
        problems.insert(0, "the balancers' Maglev tables differ")
    out = {**res.to_json(), "fleet_consistent": check["consistent"], "ok": not problems, "problems": problems}
    if args.json:
        print_json(out)
    else:
        info(f"flows per balancer: before {res.flows_before}, {res.victim} down {res.flows_failed_over}, "
             f"back {res.flows_returned}; per backend {res.flows_per_backend}")
        info(f"{res.moved_from_survivors} long-lived connections of the surviving balancers were "
             "moved by the router's rehash as well")
        info(f"router withdrew {res.victim} after {res.withdraw_s} s (BFD detection "
             f"{res.detection_s:g} s, hold {fleetlab.HOLD_S} s) and took it back after {res.return_s} s")
        info(f"long-lived: {res.survived_failover}/{res.long_lived} survived the failover, "
             f"{res.survived_return}/{res.long_lived} the return too (longest wait for an answer "
             f"{res.max_stall_s:.2f} s); new connections: {res.new_ok} ok, {res.new_failed} failed")
    if problems:
        raise FastpathError(f"the fleet demo did not show what it is for: {'; '.join(problems)}")
    return 0
