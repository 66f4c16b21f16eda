"""`fastpath lb decap attach|detach|stats`: decapsulation on a backend of an ipip VIP. The
commands sit under `fastpath lb` (the balancer's tunnels are what they undo)."""

from __future__ import annotations

import argparse
import sys

from fastpath.apps.decap import decap
from fastpath.bpf import xdp
from fastpath.bpf.loader import dump_source
from fastpath.output import info, print_json, print_table, where


def register(lb_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `decap` to the sub-commands of `fastpath lb`."""
    dc = lb_sub.add_parser("decap", help="XDP decapsulation on a backend of an ipip VIP (no tunnel module)")
    ds = dc.add_subparsers(dest="decap_command", metavar="ACTION", required=True)
    p = ds.add_parser("attach", help="strip the balancer's outer IP headers on this interface")
    p.add_argument("iface", metavar="IFACE", help="the backend's interface the tunnels arrive on")
    p.add_argument("--netns", metavar="NAME", help="network namespace of the interface")
    xdp.add_mode_args(p)
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="CIDR",
                   help="a balancer network the tunnels' outer source must lie in (required; "
                        "the balancer's ipip sources are 172.16.0.0/16 and 100::/96 by default)")
    p.add_argument("--vip", dest="vips", action="append", default=[], metavar="ADDR",
                   help="a VIP the tunnels may carry packets to (required; others are dropped)")
    p.add_argument("--addr", action="append", default=[], metavar="ADDR",
                   help="also take tunnels to this address (the interface's own are always taken)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_attach)
    p = ds.add_parser("detach", help="detach decap and remove its pins and state")
    p.add_argument("iface", metavar="IFACE")
    p.add_argument("--netns", metavar="NAME")
    p.set_defaults(func=cmd_detach)
    p = ds.add_parser("stats", help="packets decapsulated, passed and dropped, per verdict")
    p.add_argument("iface", metavar="IFACE")
    p.add_argument("--netns", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)


AttachSets = tuple[list[decap.Network], list[decap.IPAddress], list[decap.IPAddress]]


def attach_sets(args: argparse.Namespace) -> AttachSets:
    """(balancer networks, VIPs, extra addresses) the options of `decap attach` give (the
    node config's decap sections go through the same parser and this function)."""
    sources = [decap.parse_source(s) for s in args.sources]
    vips = [decap.parse_addr(a) for a in args.vips]
    decap.check_sets(sources, vips)
    return sources, vips, [decap.parse_addr(a) for a in args.addr]


def cmd_attach(args: argparse.Namespace) -> int:
    sources, vips, extra = attach_sets(args)
    if args.dump_bpf:
        sys.stdout.write(dump_source(decap.SPEC, decap.TUNABLES, str(xdp.pin_dir(args.iface, args.netns))))
        return 0
    att, replaced, addrs = decap.attach(args.iface, args.netns, sources, vips, args.mode, extra,
                                        peer_program=args.peer_program)
    source_text = [str(n) for n in decap.sources(att)]
    vip_text = [str(a) for a in decap.vips(att)]
    if args.json:
        print_json({**att.to_json(), "replaced": replaced, "addresses": [str(a) for a in addrs],
                    "sources": source_text, "vips": vip_text})
        return 0
    verb = "replaced program on" if replaced else "attached to"
    info(f"decap {verb} {where(args.iface, args.netns)} ({att.mode} mode, prog id {att.prog_id}); "
         f"IPv4-in-IPv4 and IPv6-in-IPv6 to {', '.join(map(str, addrs)) or 'no address'} from "
         f"{', '.join(source_text)} for VIPs {', '.join(vip_text)} are "
         f"decapsulated; stop with: {xdp.detach_hint(att)}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    decap.detach(args.iface, args.netns)
    info(f"decap detached from {where(args.iface, args.netns)}; pins and state removed")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    att = decap.attachment(args.iface, args.netns)
    counters = decap.read_counters(att)
    addrs = [str(a) for a in decap.addresses(att)]
    sources = [str(n) for n in decap.sources(att)]
    vips = [str(a) for a in decap.vips(att)]
    if args.json:
        print_json({"iface": att.ifname, "netns": att.netns, "mode": att.mode, "addresses": addrs,
                    "sources": sources, "vips": vips, "counters": counters})
        return 0
    print_table(["counter", "packets", "bytes"],
                [[k, f"{v['packets']:,}", f"{v['bytes']:,}"] for k, v in counters.items()],
                title=f"decap on {where(att.ifname, att.netns)} (tunnels to {', '.join(addrs)} "
                      f"from {', '.join(sources)} for {', '.join(vips)})")
    return 0
