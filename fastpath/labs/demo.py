"""`fastpath demo`: the main job on the embedded default topology, no real NIC needed.

`counter` builds the bundled lab (client and server on a bridge), attaches the counting
XDP program natively to the server's interface, drives real traffic from the client and
shows a live table of what XDP saw, then detaches and tears everything down — also on
Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from rich.live import Live

from fastpath.errors import FastpathError
from fastpath.output import console, info, make_table, print_json

if TYPE_CHECKING:
    from fastpath.apps.count.xdp_count import Totals
    from fastpath.bpf.xdp import Attachment
    from fastpath.netns import NodeProcess

DEMO_LAB = "fpdemo"
UDP_PORT = 9000

# Bounded UDP load from the client: at most `count` datagrams within `seconds`.
_SENDER = f"""
import socket, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end, sent = time.monotonic() + seconds, 0
while sent < count and time.monotonic() < end:
    s.sendto(b"fastpath demo", ("10.10.0.2", {UDP_PORT}))
    sent += 1
    if sent % 50 == 0:
        time.sleep(0.001)
print(sent)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run a demo on the embedded namespace topology",
        description="Build the bundled lab, run a data plane on it with real traffic, tear down.",
        epilog="example:\n  fastpath demo counter --seconds 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?", default="counter", choices=["counter", "lb", "synflood", "fleet"],
                   help="which demo (default: counter)")
    p.add_argument("--seconds", type=float, default=6.0, help="how long traffic runs (1-60)")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON, no live table")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.seconds <= 60:
        raise FastpathError(f"--seconds {args.seconds:g} out of range", fix="use 1 to 60")
    if args.scenario == "synflood":
        from fastpath.labs import flooddemo

        return flooddemo.run(args.seconds, args.json)
    if args.scenario == "fleet":
        from fastpath.labs import fleet_demo

        return fleet_demo.run(args)
    if args.scenario == "lb":
        from fastpath.labs import lb_demo

        return lb_demo.run(args)
    from fastpath.apps.count import xdp_count
    from fastpath.bpf import xdp
    from fastpath.netns import Lab, bundled_topology, list_labs

    if any(s.name == DEMO_LAB for s in list_labs()):
        raise FastpathError(f"a demo lab {DEMO_LAB!r} is already up",
                            fix=f"remove it with: fastpath topo down {DEMO_LAB}")
    info(f"building lab {DEMO_LAB} from {bundled_topology('lab1')} (client, server, bridge sw0)")
    with Lab.up(bundled_topology("lab1"), name=DEMO_LAB) as lab:
        ns = lab.netns("server")
        att, _ = xdp.attach(xdp_count.SPEC, "eth0", ns, "auto",
                            {"WATCH_PORT": UDP_PORT, "GENERATION": 1})
        info(f"xdp_count attached to eth0 in {ns} ({att.mode} mode, prog id {att.prog_id}); "
             f"pins under {att.pin_dir}")
        try:
            sender = lab.spawn("client", [sys.executable, "-c", _SENDER, "2000000", str(args.seconds)])
            pinger = lab.spawn("client", ["ping", "-q", "-i", "0.01", "-w", str(int(args.seconds)),
                                          "10.10.0.2"])
            final = _watch(att, args, sender)
            pinger.stop()
            sent = sender.output().strip().splitlines()
        finally:
            xdp.detach("eth0", ns)
        info("detached xdp_count; tearing the lab down")
    result = {
        "lab": DEMO_LAB, "mode": att.mode,
        "udp_sent": int(sent[-1]) if sent and sent[-1].isdigit() else None,
        "counters": {k: {"packets": v.packets, "bytes": v.bytes} for k, v in final.items()},
    }
    if args.json:
        print_json(result)
    else:
        info(f"done: client sent {result['udp_sent']} UDP datagrams to port {UDP_PORT}; "
             f"XDP counted {final['watched'].packets} of them, {final['all'].packets} frames in all")
    return 0


def _watch(att: Attachment, args: argparse.Namespace, sender: NodeProcess) -> dict[str, Totals]:
    from fastpath.apps.count import xdp_count

    prev = xdp_count.read_counters(att)
    t_prev = time.monotonic()
    # Until the sender's run ended (it stops itself after `seconds`, counted from its own
    # start-up, which a slow machine delays); the bound only stops a stuck one.
    end = t_prev + args.seconds + 30
    with Live(console=console, auto_refresh=False, transient=args.json) as live:
        while time.monotonic() < end:
            time.sleep(0.5)
            cur = xdp_count.read_counters(att)
            now = time.monotonic()
            dt, t_prev = now - t_prev, now
            rows = [[k, f"{cur[k].packets:,}", f"{(cur[k].packets - prev[k].packets) / dt:,.0f}",
                     f"{cur[k].bytes:,}"] for k in cur]
            prev = cur
            if not args.json:
                live.update(make_table(["counter", "packets", "pps", "bytes"], rows,
                                       title="xdp_count on server eth0 (Ctrl-C stops and cleans up)"),
                            refresh=True)
            if not sender.running:
                break
    return xdp_count.read_counters(att)
