"""`fastpath bpf ls`: every XDP attachment fastpath manages, whichever application made it."""

from __future__ import annotations

import argparse

from fastpath.bpf import xdp
from fastpath.output import info, print_json, print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bpf = sub.add_parser("bpf", help="what fastpath has loaded and pinned")
    bsub = bpf.add_subparsers(dest="bpf_command", metavar="ACTION", required=True)
    ls = bsub.add_parser("ls", help="every XDP attachment fastpath manages, in every namespace")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--prune", action="store_true",
                    help="remove every entry whose interface or namespace went away (pins, state, nft table)")
    ls.set_defaults(func=cmd_ls)


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
