"""`fastpath lb ...`: the XDP L4 load balancer (bpf/l4lb.c) from the command line.

Each sub-command has its parser builder and its `cmd_*` function, which parses what the
user typed with fastpath.apps.lb.config, acts through fastpath.apps.lb.program and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

from fastpath.apps.decap import cli as decap_cli
from fastpath.apps.lb import abi, config, fleet_cli, health, program, store
from fastpath.apps.lb.abi import IPAddress
from fastpath.apps.lb.balancer import Balancer
from fastpath.bpf import xdp
from fastpath.core.watch import watch
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
  fastpath lb health                      # keep running: drains failing backends, announces VIPs
  fastpath lb bgp status                  # the node's BGP sessions and announced VIPs
  fastpath lb fleet check eth0@lab-lb1 eth0@lab-lb2   # equal Maglev tables on every node?
  fastpath lb decap attach eth0 --netns lab-b1 --from 172.16.0.0/16 --vip 10.0.0.10  # ipip backend
  fastpath lb detach eth0 --netns lab-lb
"""

# argparse's sub-parser group; a string, as the class is not subscriptable at run time.
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: Sub) -> None:
    top = sub.add_parser(
        "lb", help="XDP L4 load balancer: Maglev, conntrack, dsr/nat/ipip, health checks, BGP fleets",
        description="VIPs spread over backends by weighted Maglev hashing in XDP, flows pinned "
                    "by conntrack, managed through pinned BPF maps.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = top.add_subparsers(dest="lb_command", metavar="ACTION", required=True)
    for build in (_attach_parser, _detach_parser, _vip_parsers, _backend_parsers, _apply_parser,
                  _stats_parser, _explain_parser, _health_parser, fleet_cli.register, decap_cli.register):
        build(s)


# ---------------------------------------------------------------------------------------
# parsers

def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iface", metavar="IFACE",
                   help="interface the balancer runs on (default: the only one attached)")
    p.add_argument("--netns", metavar="NAME", help="network namespace of that interface")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _vip_arg(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("vip", metavar="VIP:PORT/PROTO", **kwargs)


def _attach_parser(s: Sub) -> None:
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
                     help=f"established flows held (default {abi.TUNABLES['LB_CONNTRACK_SIZE']})")
    att.add_argument("--half-open", type=int, metavar="FLOWS",
                     help="half-open flows held: handshakes in progress, flows seen once; a flood of "
                          f"new tuples evicts only these (default {abi.TUNABLES['LB_HALF_OPEN_SIZE']})")
    att.add_argument("--rx-cpus", type=int, metavar="N",
                     help="CPUs that run the program (serve the NIC's receive queues); sizes the "
                          "half-open table's per-CPU shares (default: the CPUs online)")
    for opt, what in (("--udp-timeout", "a UDP flow"), ("--tcp-timeout", "a TCP flow"),
                      ("--closing-timeout", "a TCP flow after a FIN")):
        att.add_argument(opt, type=int, metavar="SECONDS",
                         help=f"idle time after which {what} is forgotten (default "
                              f"{abi.TUNABLES[config.ATTACH_OPTIONS[opt]]}; a hot reload may change it)")
    _json_arg(att)
    att.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    att.set_defaults(func=cmd_attach)


def _detach_parser(s: Sub) -> None:
    det = s.add_parser("detach", help="detach the balancer and remove its pins and state")
    det.add_argument("iface", metavar="IFACE")
    det.add_argument("--netns", metavar="NAME")
    det.set_defaults(func=cmd_detach)


def _vip_parsers(s: Sub) -> None:
    vip = s.add_parser("vip", help="add, delete, list VIPs")
    vs = vip.add_subparsers(dest="vip_command", metavar="ACTION", required=True)
    p = vs.add_parser("add", help="add a VIP (no backends yet: its packets drop)")
    _vip_arg(p)
    p.add_argument("--mode", default="dsr", help="dsr (default), nat or ipip")
    p.add_argument("--hash", default="5tuple", help="5tuple (default) or src (client address only)")
    _target_args(p)
    p.set_defaults(func=cmd_vip_add)
    p = vs.add_parser("del", help="delete a VIP and its backends")
    _vip_arg(p)
    _target_args(p)
    p.set_defaults(func=cmd_vip_del)
    p = vs.add_parser("list", help="every VIP")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_vip_list)


def _backend_parsers(s: Sub) -> None:
    be = s.add_parser("backend", help="add, delete, drain, weigh, list backends")
    bs = be.add_subparsers(dest="backend_command", metavar="ACTION", required=True)

    def parser(action: str, help: str) -> argparse.ArgumentParser:
        p = bs.add_parser(action, help=help)
        _vip_arg(p)
        p.add_argument("backend", metavar="ADDR[:PORT]")
        return p

    p = parser("add", "add a backend (its MAC comes from the neighbour table)")
    p.add_argument("--weight", default="1", help=f"1-{abi.MAX_WEIGHT} (default 1)")
    p.add_argument("--mac", help="next-hop MAC, instead of resolving it")
    _target_args(p)
    p.set_defaults(func=cmd_backend_add)
    p = parser("del", "remove a backend (its flows move to others)")
    _target_args(p)
    p.set_defaults(func=cmd_backend_del)
    p = parser("drain", "no new flows to a backend; existing ones stay")
    p.add_argument("--undo", action="store_true", help="take new flows again")
    _target_args(p)
    p.set_defaults(func=cmd_backend_drain)
    p = parser("weight", "change a backend's weight")
    p.add_argument("weight", metavar="N")
    _target_args(p)
    p.set_defaults(func=cmd_backend_weight)
    p = bs.add_parser("list", help="backends of one VIP or of all")
    _vip_arg(p, nargs="?")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_backend_list)


def _apply_parser(s: Sub) -> None:
    p = s.add_parser("apply", help="make the VIPs and backends equal a YAML file (only the difference)")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate and show nothing else")
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_apply)


def _stats_parser(s: Sub) -> None:
    p = s.add_parser("stats", help="per-VIP and per-backend counters")
    _target_args(p)
    _json_arg(p)
    p.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECS",
                   help="redraw every SECS seconds with rates")
    p.set_defaults(func=cmd_stats)


def _explain_parser(s: Sub) -> None:
    p = s.add_parser("explain", help="which backend a flow gets, and why")
    p.add_argument("client", metavar="SRC:SPORT")
    _vip_arg(p)
    _target_args(p)
    _json_arg(p)
    p.set_defaults(func=cmd_explain)


def _health_parser(s: Sub) -> None:
    p = s.add_parser("health", help="TCP health checks; drains failing backends and, with a 'bgp' "
                                    "section, announces the VIPs that have a backend up (until Ctrl-C)")
    _target_args(p)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between rounds (default 0.5)")
    p.add_argument("--timeout", type=float, default=0.5, help="connect timeout (default 0.5)")
    p.add_argument("--fall", type=int, default=2, help="failures in a row that drain (default 2)")
    p.add_argument("--rise", type=int, default=2, help="successes in a row that restore (default 2)")
    p.add_argument("--once", action="store_true", help="one round, then exit (announces nothing)")
    p.set_defaults(func=cmd_health)


# ---------------------------------------------------------------------------------------
# commands

def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    return program.find(args.iface, args.netns)


@contextlib.contextmanager
def _session(args: argparse.Namespace, *, write: bool = True) -> Iterator[Balancer]:
    with program.session(*_target(args), write=write) as bal:
        yield bal


def attach_tunables(args: argparse.Namespace) -> dict[str, int]:
    """The tunables the options of `lb attach` ask for (the node config's balancer sections
    go through the same parser and this function)."""
    # argparse keeps --table-size as args.table_size, and so on.
    given = {opt: getattr(args, opt[2:].replace("-", "_")) for opt in config.ATTACH_OPTIONS}
    return config.tunables(given)


def cmd_attach(args: argparse.Namespace) -> int:
    tunables = attach_tunables(args)
    if args.dump_bpf:
        sys.stdout.write(program.dump(args.iface, args.netns, tunables))
        return 0
    att, replaced = program.attach(args.iface, args.netns, args.mode, tunables,
                                   peer_program=args.peer_program)
    if args.json:
        print_json({**att.to_json(), "replaced": replaced})
        return 0
    verb = "hot-reloaded on" if replaced else "attached to"
    state = store.load_state(args.iface, args.netns)
    nv = len(state.vips) if state else 0
    info(f"l4lb {verb} {where(args.iface, args.netns)} ({att.mode} mode, prog id {att.prog_id}, "
         f"generation {att.generation}); {nv} VIPs configured"
         + ("; conntrack and counters kept" if replaced else "")
         + f"; stop with: {xdp.detach_hint(att)}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    program.detach(args.iface, args.netns)
    info(f"l4lb detached from {where(args.iface, args.netns)}; pins, state and flows removed")
    return 0


def cmd_vip_add(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    with _session(args) as bal:
        vs = bal.add_vip(vip, args.mode, args.hash)
    info(f"VIP {vip} added ({vs.mode}, hash {vs.hash}); add backends with: "
         f"fastpath lb backend add {vip} ADDR[:PORT]")
    return 0


def cmd_vip_del(args: argparse.Namespace) -> int:
    vip = config.parse_vip(args.vip)
    with _session(args) as bal:
        vs = bal.del_vip(vip)
    info(f"VIP {vip} deleted with its {len(vs.backends)} backends")
    return 0


def cmd_vip_list(args: argparse.Namespace) -> int:
    iface, netns = _target(args)
    with program.session(iface, netns, write=False) as bal:
        rows = bal.vip_rows()
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


def _backend_args(args: argparse.Namespace) -> tuple[config.VipId, IPAddress, int | None, int]:
    """The VIP, backend and weight (`add`, `weight`; 1 for the others) a `backend` command
    names, every one checked before the balancer is looked for."""
    vip = config.parse_vip(args.vip)
    addr, port = config.parse_backend(args.backend)
    return vip, addr, port, config.parse_weight(getattr(args, "weight", "1"), f"backend {args.backend}")


def cmd_backend_add(args: argparse.Namespace) -> int:
    vip, addr, port, weight = _backend_args(args)
    with _session(args) as bal:
        b = bal.add_backend(vip, addr, port, weight, args.mac)
    info(f"backend {b.name} added to {vip} (weight {b.weight}, MAC {b.mac})")
    return 0


def cmd_backend_del(args: argparse.Namespace) -> int:
    vip, addr, port, _ = _backend_args(args)
    with _session(args) as bal:
        b = bal.del_backend(vip, addr, port)
    info(f"backend {b.name} removed from {vip}; its flows pick new backends")
    return 0


def cmd_backend_drain(args: argparse.Namespace) -> int:
    vip, addr, port, _ = _backend_args(args)
    with _session(args) as bal:
        b = bal.set_drained(vip, addr, port, not args.undo)
    info(f"backend {b.name} of {vip} " + ("takes new flows again" if args.undo
                                          else "drained: no new flows, existing ones stay"))
    return 0


def cmd_backend_weight(args: argparse.Namespace) -> int:
    vip, addr, port, weight = _backend_args(args)
    with _session(args) as bal:
        b = bal.set_weight(vip, addr, port, weight)
    info(f"backend {b.name} of {vip}: weight {b.weight}")
    return 0


def cmd_backend_list(args: argparse.Namespace) -> int:
    only = config.parse_vip(args.vip) if args.vip else None
    iface, netns = _target(args)
    with program.session(iface, netns, write=False) as bal:
        rows = bal.backend_rows(only)
    if args.json:
        print_json(rows)
        return 0
    print_table(["VIP", "backend", "weight", "status", "health", "MAC", "share %", "packets", "new flows"],
                [[r["vip"], r["backend"], r["weight"], r["status"], r["health"], r["mac"], r["share"],
                  r["packets"], r["new_flows"]] for r in rows],
                title=f"l4lb backends on {where(iface, netns)}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.config)
    specs, announce = program.load_file(path)
    iface, netns = _target(args)
    if args.dry_run:
        info(f"{path}: valid, {len(specs)} VIPs" + (f", BGP {announce.describe()}" if announce else "")
             + " (dry run: nothing applied)")
        return 0
    changes = program.apply_file(path, iface, netns)
    if args.json:
        print_json({"changes": changes})
        return 0
    for c in changes:
        info(c)
    info(f"{path}: {len(changes)} changes applied" if changes else f"{path}: nothing to do")
    return 0


# ---------------------------------------------------------------------------------------
# stats, explain, health

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
    iface, netns = _target(args)

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
    addr, port = config.parse_client(args.client)
    vip = config.parse_vip(args.vip)
    with _session(args, write=False) as bal:
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
    iface, netns = _target(args)

    def report(t: health.Transition) -> None:
        state = "up: back in the ring" if t.up else f"DOWN ({t.reason}): drained"
        info(f"{time.strftime('%H:%M:%S')} {t.vip} backend {t.backend} {state}")

    # SIGTERM (a service manager, a lab's tear-down) stops the BGP speaker cleanly, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if not args.once:
        info(f"health checks of every TCP backend on {where(iface, netns)} every {args.interval:g}s "
             f"(fall {args.fall}, rise {args.rise}); Ctrl-C to stop")
    # One round decides on its own: a single failure drains, a single success restores.
    fall, rise = (1, 1) if args.once else (args.fall, args.rise)
    health.run(iface, netns, interval=args.interval, timeout=args.timeout, fall=fall, rise=rise,
               rounds=1 if args.once else None, report=report, announce=not args.once,
               say=lambda line: info(f"{time.strftime('%H:%M:%S')} {line}"))
    if args.once:
        state = store.load_state(iface, netns)
        rows = [[v, b.name, b.health, b.status] for v, vs in sorted((state.vips if state else {}).items())
                for b in vs.backends.values()]
        print_table(["VIP", "backend", "health", "status"], rows)
    return 0
