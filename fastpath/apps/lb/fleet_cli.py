"""`fastpath lb fleet ...` and `fastpath lb bgp ...`: a balancer fleet behind ECMP — are the
nodes' Maglev tables equal, and what does each node's BGP speaker announce."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

from fastpath.apps.lb import bgp, fleet, program, speaker, store
from fastpath.errors import FastpathError
from fastpath.output import info, print_json, print_table, where

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iface", metavar="IFACE",
                   help="interface the balancer runs on (default: the only one attached)")
    p.add_argument("--netns", metavar="NAME", help="network namespace of that interface")


def register(sub: Sub) -> None:
    fl = sub.add_parser("fleet", help="compare the Maglev tables of a fleet's nodes",
                        description="Every node of a fleet must compute the same Maglev table for "
                                    "each VIP (same backends, weights, --seed and --table-size).")
    fs = fl.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = fs.add_parser("check", help="compare nodes; exit 1 and say which differs and why")
    p.add_argument("nodes", metavar="NODE", nargs="+",
                   help="IFACE@NETNS or IFACE (a balancer here), or FILE.json from 'fleet digest --json'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fleet_check)
    p = fs.add_parser("digest", help="this node's table digests (save with --json for a check elsewhere)")
    _target_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fleet_digest)

    bg = sub.add_parser("bgp", help="the node's BGP speaker: sessions, announced VIPs, its config")
    bs = bg.add_subparsers(dest="bgp_command", metavar="ACTION", required=True)
    p = bs.add_parser("status", help="sessions and announced VIP prefixes of the running speaker")
    _target_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bgp_status)
    p = bs.add_parser("config", help="the BIRD configuration generated from the lb apply file")
    _target_args(p)
    p.set_defaults(func=cmd_bgp_config)


def cmd_fleet_check(args: argparse.Namespace) -> int:
    nodes = [fleet.load_node(n) for n in args.nodes]
    out = fleet.compare(nodes)
    if args.json:
        print_json(out)
        return 0 if out["consistent"] else 1
    vips = sorted({v for n in out["nodes"] for v in n["vips"]})
    print_table(["node", "seed", "table size", *vips],
                [[n["node"], n["seed"], n["table_size"], *(n["vips"].get(v, "-") for v in vips)]
                 for n in out["nodes"]], title="Maglev table digests")
    if out["consistent"]:
        info(f"{len(nodes)} nodes agree: every flow gets the same backend whichever node it reaches")
        return 0
    for d in out["differences"]:
        info(f"{d['node']} differs on {d['vip']}: {'; '.join(d['reasons'])}")
    raise FastpathError(f"{len({d['node'] for d in out['differences']})} of {len(nodes)} nodes differ: "
                        "flows moved between nodes would change backend",
                        fix="apply the same file with the same --seed and --table-size on every node")


def cmd_fleet_digest(args: argparse.Namespace) -> int:
    iface, netns = program.find(args.iface, args.netns)
    out = fleet.report(iface, netns)
    if args.json:
        print_json(out)
        return 0
    print_table(["VIP", "mode", "hash", "backends", "digest"],
                [[v, d["mode"], d["hash"], len(d["backends"]), d["digest"]] for v, d in out["vips"].items()],
                title=f"l4lb on {where(iface, netns)}: seed {out['seed']}, table size {out['table_size']}")
    return 0


def cmd_bgp_status(args: argparse.Namespace) -> int:
    iface, netns = program.find(args.iface, args.netns)
    out = speaker.status(iface, netns)
    if args.json:
        print_json(out)
        return 0
    print_table(["peer", "AS", "state", "info", "since"],
                [[s["peer"], s["asn"], s["state"], s["info"], s["since"]] for s in out["sessions"]],
                title=f"BGP speaker of the balancer on {where(iface, netns)} (AS {out['asn']})")
    info("announced: " + (", ".join(out["announced"]) or "nothing"))
    for prefix, why in out["withheld"].items():
        info(f"withheld: {prefix} ({why})")
    return 0


def cmd_bgp_config(args: argparse.Namespace) -> int:
    iface, netns = program.find(args.iface, args.netns)
    state = store.load_state(iface, netns)
    if state is None or not state.bgp:
        raise FastpathError(f"the balancer on {where(iface, netns)} has no 'bgp' section",
                            fix="add one to the lb apply file (see README, Running a fleet)")
    sys.stdout.write(bgp.render(bgp.BgpSpec.from_json(state.bgp), state, where(iface, netns)))
    return 0
