"""`fastpath bpf ls` and `fastpath count attach|stats|detach` (the runtime's proof program)."""

from __future__ import annotations

import argparse
import sys
import time

from fastpath.bpf import xdp, xdp_count
from fastpath.bpf.loader import dump_source
from fastpath.output import console, info, make_table, print_json, print_table


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 1-65535")
    return value


def _iface_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("iface", metavar="IFACE", help="interface name")
    p.add_argument("--netns", metavar="NAME", help="network namespace of the interface (ip netns)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bpf = sub.add_parser("bpf", help="what fastpath has loaded and pinned")
    bsub = bpf.add_subparsers(dest="bpf_command", metavar="ACTION", required=True)
    ls = bsub.add_parser("ls", help="every XDP attachment fastpath manages, in every namespace")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--prune", action="store_true",
                    help="remove every entry whose interface or namespace went away (pins, state, nft table)")
    ls.set_defaults(func=cmd_ls)

    count = sub.add_parser(
        "count", help="the counting XDP program (runtime proof)",
        epilog="example:\n  fastpath count attach veth0 --netns lab1-server --watch-port 9000\n"
               "  fastpath count stats veth0 --netns lab1-server --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = count.add_subparsers(dest="count_command", metavar="ACTION", required=True)
    att = csub.add_parser("attach", help="attach (or atomically replace) the counter")
    _iface_args(att)
    xdp.add_mode_args(att)
    att.add_argument("--watch-port", type=_port, default=9, help="UDP port counted as 'watched'")
    att.add_argument("--json", action="store_true", help="print the attachment as JSON")
    att.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    att.set_defaults(func=cmd_count_attach)
    st = csub.add_parser("stats", help="counter totals (and rates with --watch)")
    _iface_args(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECS",
                    help="redraw every SECS seconds with rates")
    st.set_defaults(func=cmd_count_stats)
    det = csub.add_parser("detach", help="detach the counter and remove its pins")
    _iface_args(det)
    det.set_defaults(func=cmd_count_detach)


def _peer_note(data: dict[str, object]) -> str:
    peer = data.get("peer") or {}
    options = data.get("options") or {}
    if data["program"] == xdp.PEER_PROGRAM and isinstance(options, dict):
        return f"pass program for {options.get('for', '?')}"
    if isinstance(peer, dict) and peer.get("ifname"):
        where = f"{peer['ifname']} in {peer['netns']}" if peer.get("netns") else str(peer["ifname"])
        return f"peer {where}" + (" (fastpath pass program)" if peer.get("helper") else "")
    return ""


def cmd_ls(args: argparse.Namespace) -> int:
    if args.prune:
        # The guard's nft clean-up is registered by its module, which the CLI has imported.
        removed = xdp.prune()
        if args.json:
            print_json([{**att.to_json(), "reason": reason} for att, reason in removed])
            return 0
        for att, reason in removed:
            where = f" in {att.netns}" if att.netns else ""
            info(f"removed {att.program} on {att.ifname}{where}: {reason}")
        if not removed:
            info("nothing to prune: every entry drives a live interface")
        return 0
    rows = []
    for att in xdp.attachments():
        data = att.to_json()
        data["dead"] = xdp.dead_reason(att)
        data["alive"] = data["dead"] is None
        rows.append(data)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        info("fastpath has no XDP program attached")
        return 0
    print_table(
        ["namespace", "interface", "program", "mode", "prog id", "generation", "alive", "veth peer"],
        [[r["netns"] or "root", r["ifname"], r["program"], r["mode"], r["prog_id"],
          r["generation"], "yes" if r["alive"] else f"NO ({r['dead']})", _peer_note(r)] for r in rows],
    )
    if any(not r["alive"] for r in rows):
        info("dead entries: remove them with 'fastpath bpf ls --prune' (attach also removes them)")
    return 0


def cmd_count_attach(args: argparse.Namespace) -> int:
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


def _stats_json(att: xdp.Attachment) -> dict[str, object]:
    counters = xdp_count.read_counters(att)
    gens = xdp_count.read_generations(att)
    return {
        "ifname": att.ifname, "netns": att.netns, "mode": att.mode,
        "counters": {k: {"packets": v.packets, "bytes": v.bytes} for k, v in counters.items()},
        "generations": {str(g): {"packets": v.packets, "bytes": v.bytes} for g, v in gens.items()},
    }


def cmd_count_stats(args: argparse.Namespace) -> int:
    att = _attachment(args.iface, args.netns)
    if args.watch is None:
        data = _stats_json(att)
        if args.json:
            print_json(data)
        else:
            counters = data["counters"]
            assert isinstance(counters, dict)
            print_table(["counter", "packets", "bytes"],
                        [[k, v["packets"], v["bytes"]] for k, v in counters.items()],
                        title=f"xdp_count on {att.ifname}")
        return 0
    from rich.live import Live

    prev = xdp_count.read_counters(att)
    t0 = time.monotonic()
    with Live(console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.watch)
            cur = xdp_count.read_counters(att)
            dt = time.monotonic() - t0
            t0 = time.monotonic()
            rows = [[k, cur[k].packets, f"{(cur[k].packets - prev[k].packets) / dt:,.0f}",
                     cur[k].bytes] for k in cur]
            prev = cur
            if args.json:
                print_json({k: {"packets": v.packets, "bytes": v.bytes} for k, v in cur.items()})
                continue
            live.update(make_table(["counter", "packets", "pps", "bytes"], rows,
                                   title=f"xdp_count on {att.ifname} (Ctrl-C to stop)"), refresh=True)


def cmd_count_detach(args: argparse.Namespace) -> int:
    att = xdp.detach(args.iface, args.netns, program=xdp_count.SPEC.name)
    where = f" in {args.netns}" if args.netns else ""
    info(f"xdp_count detached from {args.iface}{where}; pins and state removed"
         + ("" if att else " (state file was already gone)"))
    return 0
