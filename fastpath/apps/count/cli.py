"""`fastpath count attach|stats|detach`: the per-CPU counter (the runtime's proof program)."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from fastpath.apps.count import xdp_count
from fastpath.bpf import xdp
from fastpath.bpf.loader import dump_source
from fastpath.core.args import add_command, add_iface_args, add_json_arg, add_watch_arg, port_type
from fastpath.core.watch import watch
from fastpath.output import info, make_table, print_json, print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    count = add_command(
        sub, "count", help="the counting XDP program (runtime proof)",
        epilog="example:\n  fastpath count attach veth0 --netns lab1-server --watch-port 9000\n"
               "  fastpath count stats veth0 --netns lab1-server --json")
    csub = count.add_subparsers(dest="count_command", metavar="ACTION", required=True)
    att = csub.add_parser("attach", help="attach (or atomically replace) the counter")
    add_iface_args(att)
    xdp.add_mode_args(att)
    att.add_argument("--watch-port", type=port_type, default=9, help="UDP port counted as 'watched'")
    add_json_arg(att, "print the attachment as JSON")
    att.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    att.set_defaults(func=cmd_attach)
    st = csub.add_parser("stats", help="counter totals (and rates with --watch)")
    add_iface_args(st)
    add_json_arg(st)
    add_watch_arg(st, "redraw every SECS seconds with rates")
    st.set_defaults(func=cmd_stats)
    det = csub.add_parser("detach", help="detach the counter and remove its pins")
    add_iface_args(det)
    det.set_defaults(func=cmd_detach)


def cmd_attach(args: argparse.Namespace) -> int:
    old = xdp.read_state(args.iface, args.netns)
    generation = (old.generation + 1 if old else 1) % xdp_count.COUNT_GENERATIONS
    defines: dict[str, int | str] = {"WATCH_PORT": args.watch_port, "GENERATION": generation}
    if args.dump_bpf:
        sys.stdout.write(dump_source(xdp_count.SPEC, defines, str(xdp.pin_dir(args.iface, args.netns))))
        return 0
    att, replaced = xdp.attach(xdp_count.SPEC, args.iface, args.netns, args.mode, defines,
                               peer_program=args.peer_program)
    if args.json:
        print_json({**att.to_json(), "replaced": replaced})
        return 0
    where = f" in {args.netns}" if args.netns else ""
    verb = "replaced program on" if replaced else "attached to"
    ns_flag = f" --netns {args.netns}" if args.netns else ""
    info(f"xdp_count {verb} {args.iface}{where} ({att.mode} mode, prog id {att.prog_id}, "
         f"generation {att.generation}); counting UDP port {args.watch_port} as watched; "
         f"stop with: fastpath count detach {args.iface}{ns_flag}")
    return 0


def _attachment(iface: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(iface, netns, xdp_count.SPEC.name, "xdp_count", "fastpath count attach")


def _totals(counters: dict[str, xdp_count.Totals]) -> dict[str, dict[str, int]]:
    return {k: {"packets": v.packets, "bytes": v.bytes} for k, v in counters.items()}


def cmd_stats(args: argparse.Namespace) -> int:
    att = _attachment(args.iface, args.netns)
    if args.watch is not None:
        def render(cur: dict[str, xdp_count.Totals], prev: dict[str, xdp_count.Totals], dt: float) -> Table:
            rows = [[k, cur[k].packets, f"{(cur[k].packets - prev[k].packets) / dt:,.0f}", cur[k].bytes]
                    for k in cur]
            return make_table(["counter", "packets", "pps", "bytes"], rows,
                              title=f"xdp_count on {att.ifname} (Ctrl-C to stop)")

        return watch(args.watch, lambda: xdp_count.read_counters(att), render,
                     (lambda cur, _prev, _dt: _totals(cur)) if args.json else None)
    counters = xdp_count.read_counters(att)
    if args.json:
        print_json({"ifname": att.ifname, "netns": att.netns, "mode": att.mode, "counters": _totals(counters),
                    "generations": {str(g): {"packets": v.packets, "bytes": v.bytes}
                                    for g, v in xdp_count.read_generations(att).items()}})
        return 0
    print_table(["counter", "packets", "bytes"], [[k, v.packets, v.bytes] for k, v in counters.items()],
                title=f"xdp_count on {att.ifname}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    att = xdp.detach(args.iface, args.netns, program=xdp_count.SPEC.name)
    where = f" in {args.netns}" if args.netns else ""
    info(f"xdp_count detached from {args.iface}{where}; pins and state removed"
         + ("" if att else " (state file was already gone)"))
    return 0
