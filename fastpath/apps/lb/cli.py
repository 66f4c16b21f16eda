"""`fastpath lb ...`: the XDP L4 load balancer (bpf/l4lb.c) from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fastpath.apps.decap import cli as decap_cli
from fastpath.apps.lb import abi, config, health, program, store
from fastpath.bpf import xdp
from fastpath.bpf.loader import dump_source
from fastpath.core.watch import watch
from fastpath.errors import FastpathError
from fastpath.output import console, info, make_table, print_json, print_table, where

EPILOG = """\
examples:
  fastpath lb attach eth0 --netns lab-lb
  fastpath lb vip add 10.0.0.10:80/tcp --mode nat
  fastpath lb backend add 10.0.0.10:80/tcp 10.0.1.21:8080 --weight 3
  fastpath lb backend drain 10.0.0.10:80/tcp 10.0.1.21:8080
  fastpath lb apply lb.yaml
  fastpath lb stats --watch
  fastpath lb explain 198.51.100.7:40000 10.0.0.10:80/tcp
  fastpath lb health                      # keep running: drains failing backends
  fastpath lb decap attach eth0 --netns lab-b1   # on a backend of an ipip VIP
  fastpath lb detach eth0 --netns lab-lb
"""


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iface", metavar="IFACE",
                   help="interface the balancer runs on (default: the only one attached)")
    p.add_argument("--netns", metavar="NAME", help="network namespace of that interface")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser(
        "lb", help="XDP L4 load balancer: Maglev, conntrack, dsr/nat/ipip, health checks",
        description="VIPs spread over backends by weighted Maglev hashing in XDP, flows pinned "
                    "by conntrack, managed through pinned BPF maps.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = top.add_subparsers(dest="lb_command", metavar="ACTION", required=True)

    att = s.add_parser("attach", help="attach the balancer (or hot-reload it, keeping every flow)")
    att.add_argument("iface", metavar="IFACE", help="interface clients reach the VIPs through")
    att.add_argument("--netns", metavar="NAME", help="network namespace of the interface")
    xdp.add_mode_args(att)
    att.add_argument("--table-size", type=int, metavar="PRIME",
                     help=f"Maglev table size per VIP (default {abi.TUNABLES['LB_RING_SIZE']})")
    att.add_argument("--seed", type=int, help="hash seed: equal on every node of a fleet (default 0)")
    att.add_argument("--max-vips", type=int, help=f"default {abi.TUNABLES['LB_MAX_VIPS']}")
    att.add_argument("--max-backends", type=int, help=f"default {abi.TUNABLES['LB_MAX_BACKENDS']}")
    att.add_argument("--conntrack", type=int, metavar="FLOWS",
                     help=f"conntrack size (default {abi.TUNABLES['LB_CONNTRACK_SIZE']})")
    for opt, key, what in (("--udp-timeout", "LB_UDP_TIMEOUT", "a UDP flow"),
                           ("--tcp-timeout", "LB_TCP_TIMEOUT", "a TCP flow"),
                           ("--closing-timeout", "LB_CLOSING_TIMEOUT", "a TCP flow after a FIN")):
        att.add_argument(opt, type=int, metavar="SECONDS",
                         help=f"idle time after which {what} is forgotten (default {abi.TUNABLES[key]}; "
                              "a hot reload may change it)")
    _json_arg(att)
    att.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    att.set_defaults(func=cmd_attach)

    det = s.add_parser("detach", help="detach the balancer and remove its pins and state")
    det.add_argument("iface", metavar="IFACE")
    det.add_argument("--netns", metavar="NAME")
    det.set_defaults(func=cmd_detach)

    vip = s.add_parser("vip", help="add, delete, list VIPs")
    vs = vip.add_subparsers(dest="vip_command", metavar="ACTION", required=True)
    p = vs.add_parser("add", help="add a VIP (no backends yet: its packets drop)")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    p.add_argument("--mode", default="dsr", help="dsr (default), nat or ipip")
    p.add_argument("--hash", default="5tuple", help="5tuple (default) or src (client address only)")
    _target_args(p)
    p.set_defaults(func=cmd_vip_add)
    p = vs.add_parser("del", help="delete a VIP and its backends")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    _target_args(p)
    p.set_defaults(func=cmd_vip_del)
    p = vs.add_parser("list", help="every VIP")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_vip_list)

    be = s.add_parser("backend", help="add, delete, drain, weigh, list backends")
    bs = be.add_subparsers(dest="backend_command", metavar="ACTION", required=True)
    p = bs.add_parser("add", help="add a backend (its MAC comes from the neighbour table)")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    p.add_argument("backend", metavar="ADDR[:PORT]")
    p.add_argument("--weight", default="1", help=f"1-{abi.MAX_WEIGHT} (default 1)")
    p.add_argument("--mac", help="next-hop MAC, instead of resolving it")
    _target_args(p)
    p.set_defaults(func=cmd_backend_add)
    p = bs.add_parser("del", help="remove a backend (its flows move to others)")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    p.add_argument("backend", metavar="ADDR[:PORT]")
    _target_args(p)
    p.set_defaults(func=cmd_backend_del)
    p = bs.add_parser("drain", help="no new flows to a backend; existing ones stay")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    p.add_argument("backend", metavar="ADDR[:PORT]")
    p.add_argument("--undo", action="store_true", help="take new flows again")
    _target_args(p)
    p.set_defaults(func=cmd_backend_drain)
    p = bs.add_parser("weight", help="change a backend's weight")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    p.add_argument("backend", metavar="ADDR[:PORT]")
    p.add_argument("weight", metavar="N")
    _target_args(p)
    p.set_defaults(func=cmd_backend_weight)
    p = bs.add_parser("list", help="backends of one VIP or of all")
    p.add_argument("vip", metavar="VIP:PORT/PROTO", nargs="?")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_backend_list)

    p = s.add_parser("apply", help="make the VIPs and backends equal a YAML file (only the difference)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate and show nothing else")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_apply)

    p = s.add_parser("stats", help="per-VIP and per-backend counters")
    _target_args(p)
    _json_arg(p)
    p.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECS",
                   help="redraw every SECS seconds with rates")
    p.set_defaults(func=cmd_stats)

    p = s.add_parser("explain", help="which backend a flow gets, and why")
    p.add_argument("client", metavar="SRC:SPORT")
    p.add_argument("vip", metavar="VIP:PORT/PROTO")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_explain)

    p = s.add_parser("health", help="TCP health checks; drains failing backends (runs until Ctrl-C)")
    _target_args(p)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between rounds (default 0.5)")
    p.add_argument("--timeout", type=float, default=0.5, help="connect timeout (default 0.5)")
    p.add_argument("--fall", type=int, default=2, help="failures in a row that drain (default 2)")
    p.add_argument("--rise", type=int, default=2, help="successes in a row that restore (default 2)")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.set_defaults(func=cmd_health)

    decap_cli.register(s)


# ---------------------------------------------------------------------------------------
# helpers

def target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The interface a command acts on: --iface, or the only balancer attached."""
    if args.iface:
        return args.iface, args.netns
    atts = [a for a in xdp.attachments() if a.program == abi.SPEC.name
            and (args.netns is None or a.netns == args.netns)]
    if len(atts) == 1:
        return atts[0].ifname, atts[0].netns
    where = f" in namespace {args.netns}" if args.netns else ""
    if not atts:
        raise FastpathError(f"the load balancer is not attached to any interface{where}",
                            fix="attach it: fastpath lb attach IFACE [--netns NS]")
    names = ", ".join(f"{a.ifname}@{a.netns or 'root'}" for a in atts)
    raise FastpathError(f"the load balancer runs on several interfaces ({names})",
                        fix="choose one with --iface IFACE [--netns NS]")


def _weight(text: str, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise FastpathError(f"{what}: weight {text!r} is not a number",
                            fix=f"give an integer 1-{abi.MAX_WEIGHT}") from None
    return config.check_weight(value, what)


# ---------------------------------------------------------------------------------------
# attach / detach

def cmd_attach(args: argparse.Namespace) -> int:
    tunables: dict[str, int] = {}
    for opt, key in (("table_size", "LB_RING_SIZE"), ("seed", "LB_HASH_SEED"), ("max_vips", "LB_MAX_VIPS"),
                     ("max_backends", "LB_MAX_BACKENDS"), ("conntrack", "LB_CONNTRACK_SIZE"),
                     ("udp_timeout", "LB_UDP_TIMEOUT"), ("tcp_timeout", "LB_TCP_TIMEOUT"),
                     ("closing_timeout", "LB_CLOSING_TIMEOUT")):
        if getattr(args, opt) is not None:
            tunables[key] = getattr(args, opt)
    if args.dump_bpf:
        defines = {**abi.TUNABLES, **tunables}
        config.check_tunables(defines)
        sys.stdout.write(dump_source(abi.SPEC, defines, str(xdp.pin_dir(args.iface, args.netns))))
        return 0
    att, replaced = program.attach(args.iface, args.netns, args.mode, tunables,
                                   peer_program=args.peer_program)
    if args.json:
        print_json({**att.to_json(), "replaced": replaced})
        return 0
    ns = f" --netns {args.netns}" if args.netns else ""
    verb = "hot-reloaded on" if replaced else "attached to"
    state = store.load_state(args.iface, args.netns)
    nv = len(state.vips) if state else 0
    info(f"l4lb {verb} {where(args.iface, args.netns)} ({att.mode} mode, prog id {att.prog_id}, "
         f"generation {att.generation}); {nv} VIPs configured"
         + ("; conntrack and counters kept" if replaced else "")
         + f"; stop with: fastpath lb detach {args.iface}{ns}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    program.detach(args.iface, args.netns)
    info(f"l4lb detached from {where(args.iface, args.netns)}; pins, state and flows removed")
    return 0


# ---------------------------------------------------------------------------------------
# VIPs and backends

def cmd_vip_add(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        vs = bal.add_vip(vip, args.mode, args.hash)
    info(f"VIP {vip} added ({vs.mode}, hash {vs.hash}); add backends with: "
         f"fastpath lb backend add {vip} ADDR[:PORT]")
    return 0


def cmd_vip_del(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        vs = bal.del_vip(vip)
    info(f"VIP {vip} deleted with its {len(vs.backends)} backends")
    return 0


def _vip_rows(state: store.LbState) -> list[dict[str, Any]]:
    out = []
    for name, vs in sorted(state.vips.items(), key=lambda kv: kv[1].index):
        active = sum(1 for b in vs.backends.values() if b.effective_weight > 0)
        out.append({"vip": name, "mode": vs.mode, "hash": vs.hash, "index": vs.index,
                    "backends": len(vs.backends), "active": active})
    return out


def cmd_vip_list(args: argparse.Namespace) -> int:
    iface, netns = target(args)
    with program.session(iface, netns, write=False) as bal:
        rows = _vip_rows(bal.state)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        info(f"no VIPs on {where(iface, netns)}; add one with: fastpath lb vip add VIP:PORT/PROTO")
        return 0
    print_table(["VIP", "mode", "hash", "backends", "active"],
                [[r["vip"], r["mode"], r["hash"], r["backends"], r["active"]] for r in rows],
                title=f"l4lb on {where(iface, netns)}")
    return 0


def cmd_backend_add(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    addr, port = config.parse_backend(args.backend)
    weight = _weight(args.weight, f"backend {args.backend}")
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        b = bal.add_backend(vip, addr, port, weight, args.mac)
    info(f"backend {b.name} added to {vip} (weight {b.weight}, MAC {b.mac})")
    return 0


def cmd_backend_del(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    addr, port = config.parse_backend(args.backend)
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        b = bal.del_backend(vip, addr, port)
    info(f"backend {b.name} removed from {vip}; its flows pick new backends")
    return 0


def cmd_backend_drain(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    addr, port = config.parse_backend(args.backend)
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        b = bal.set_drained(vip, addr, port, not args.undo)
    info(f"backend {b.name} of {vip} " + ("takes new flows again" if args.undo
                                          else "drained: no new flows, existing ones stay"))
    return 0


def cmd_backend_weight(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    addr, port = config.parse_backend(args.backend)
    weight = _weight(args.weight, f"backend {args.backend}")
    iface, netns = target(args)
    with program.session(iface, netns) as bal:
        b = bal.set_weight(vip, addr, port, weight)
    info(f"backend {b.name} of {vip}: weight {b.weight}")
    return 0


def cmd_backend_list(args: argparse.Namespace) -> int:
    only = config.parse_vip(args.vip) if args.vip else None
    iface, netns = target(args)
    with program.session(iface, netns, write=False) as bal:
        if only is not None:
            bal.vip(only)
        rows = []
        for v in bal.stats()["vips"]:
            if only is not None and v["vip"] != str(only):
                continue
            for b in v["backends"]:
                keys = ("backend", "weight", "status", "health", "mac", "slots", "share", "packets",
                        "new_flows")
                rows.append({"vip": v["vip"], **{k: b[k] for k in keys}})
    if args.json:
        print_json(rows)
        return 0
    print_table(["VIP", "backend", "weight", "status", "health", "MAC", "share %", "packets", "new flows"],
                [[r["vip"], r["backend"], r["weight"], r["status"], r["health"], r["mac"], r["share"],
                  r["packets"], r["new_flows"]] for r in rows],
                title=f"l4lb backends on {where(iface, netns)}")
    return 0


# ---------------------------------------------------------------------------------------
# apply, stats, explain, health

def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FastpathError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FastpathError(f"{path}: not valid YAML{where}") from None
    specs = config.parse_config(data, str(path))
    iface, netns = target(args)
    if args.dry_run:
        info(f"{path}: valid, {len(specs)} VIPs (dry run: nothing applied)")
        return 0
    with program.session(iface, netns) as bal:
        changes = bal.apply(specs)
    if args.json:
        print_json({"changes": changes})
        return 0
    for c in changes:
        info(c)
    info(f"{path}: {len(changes)} changes applied" if changes else f"{path}: nothing to do")
    return 0


Rows = list[list[Any]]


def _stats_rows(data: dict[str, Any], prev: dict[tuple[str, str], int] | None,
                dt: float) -> tuple[Rows, Rows]:
    def rate(kind: str, key: str, now: int) -> str:
        if prev is None:
            return ""
        return f"{(now - prev.get((kind, key), now)) / dt:,.0f}"

    vrows, brows = [], []
    for v in data["vips"]:
        vrows.append([v["vip"], v["mode"], f"{v['packets']:,}", rate("v", v["vip"], v["packets"]),
                      f"{v['bytes']:,}", v["new_flows"], v["lru_hits"], v["lru_misses"], v["no_backend"]])
        for b in v["backends"]:
            brows.append([v["vip"], b["backend"], b["weight"], b["status"], f"{b['share']:.1f}",
                          f"{b['packets']:,}", rate("b", v["vip"] + b["backend"], b["packets"]),
                          b["new_flows"]])
    return vrows, brows


def _flat(data: dict[str, Any]) -> dict[tuple[str, str], int]:
    out = {}
    for v in data["vips"]:
        out[("v", v["vip"])] = v["packets"]
        for b in v["backends"]:
            out[("b", v["vip"] + b["backend"])] = b["packets"]
    return out


VIP_COLS = ["VIP", "mode", "packets", "pps", "bytes", "new flows", "lru hits", "lru misses", "no backend"]
BACKEND_COLS = ["VIP", "backend", "weight", "status", "share %", "packets", "pps", "new flows"]


def cmd_stats(args: argparse.Namespace) -> int:
    iface, netns = target(args)

    def read() -> dict[str, Any]:
        with program.session(iface, netns, write=False) as bal:
            return bal.stats()

    if args.watch is None:
        data = read()
        if args.json:
            print_json({"iface": iface, "netns": netns, **data})
            return 0
        vrows, brows = _stats_rows(data, None, 1.0)
        print_table(VIP_COLS, vrows, title=f"l4lb VIPs on {where(iface, netns)}")
        print_table(BACKEND_COLS, brows, title="backends")
        nz = [[k, v["packets"], v["bytes"]] for k, v in data["counters"].items() if v["packets"]]
        if nz:
            print_table(["counter", "packets", "bytes"], nz, title="other traffic")
        return 0
    from rich.console import Group

    def render(cur: dict[str, Any], prev: dict[str, Any], dt: float) -> Group:
        vrows, brows = _stats_rows(cur, _flat(prev), dt)
        return Group(make_table(VIP_COLS, vrows, title=f"l4lb on {where(iface, netns)} (Ctrl-C to stop)"),
                     make_table(BACKEND_COLS, brows))

    return watch(args.watch, read, render,
                 (lambda cur, _prev, _dt: {"iface": iface, "netns": netns, **cur}) if args.json else None)


def cmd_explain(args: argparse.Namespace) -> int:
    addr, port = config.parse_backend(args.client)
    if port is None:
        raise FastpathError(f"bad client {args.client!r}: the source port is missing",
                            fix="write SRC:SPORT, e.g. 198.51.100.7:40000 or [2001:db8::7]:40000")
    vip = config.parse_vip(args.vip)
    iface, netns = target(args)
    with program.session(iface, netns, write=False) as bal:
        out = bal.explain(addr, port, vip)
    if args.json:
        print_json(out)
        return 0
    console.print(f"{out['client']} -> {out['vip']} ({out['mode']}): "
                  f"[bold]{out['backend'] or 'dropped'}[/bold]", highlight=False)
    console.print(f"  {out['reason']}", highlight=False)
    console.print(f"  flow hash {out['hash']:#010x}, slot {out['slot']}, ring {out['ring']}", highlight=False)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    iface, netns = target(args)

    def report(t: health.Transition) -> None:
        state = "up: back in the ring" if t.up else f"DOWN ({t.reason}): drained"
        info(f"{time.strftime('%H:%M:%S')} {t.vip} backend {t.backend} {state}")

    if not args.once:
        info(f"health checks of every TCP backend on {where(iface, netns)} every {args.interval:g}s "
             f"(fall {args.fall}, rise {args.rise}); Ctrl-C to stop")
    # One round decides on its own: a single failure drains, a single success restores.
    fall, rise = (1, 1) if args.once else (args.fall, args.rise)
    health.run(iface, netns, interval=args.interval, timeout=args.timeout, fall=fall, rise=rise,
               rounds=1 if args.once else None, report=report)
    if args.once:
        state = store.load_state(iface, netns)
        rows = [[v, b.name, b.health, b.status] for v, vs in sorted((state.vips if state else {}).items())
                for b in vs.backends.values()]
        print_table(["VIP", "backend", "health", "status"], rows)
    return 0
