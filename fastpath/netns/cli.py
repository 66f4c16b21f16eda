"""`fastpath topo`: build, list, inspect, use and remove namespace labs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastpath.core.args import add_actions, add_command, add_json_arg
from fastpath.errors import FastpathError
from fastpath.netns.fileformat import bundled_topology, load_topology, topology_to_dict
from fastpath.netns.procs import netns_argv
from fastpath.output import console, info, make_table, print_json, print_table

if TYPE_CHECKING:
    from fastpath.netns.lab import Lab

EPILOG = """\
examples:
  fastpath topo up                         build the bundled example lab (lab1)
  fastpath topo up lab.yaml --json         build a lab from a file, print its facts as JSON
  fastpath topo ls                         list labs that are up
  fastpath topo show lab1                  interfaces, MACs and addresses of a lab
  fastpath topo exec lab1 client -- ping -c1 -W2 10.10.0.2
  fastpath topo down lab1                  remove every namespace, link and process of lab1
  fastpath topo validate lab.yaml          check a file without building it (no root needed)
"""


def register(subparsers: Any) -> None:
    topo = add_command(subparsers, "topo", help="network-namespace labs: build, list, exec into, tear down",
                       description="Declarative veth/bridge labs in network namespaces (<lab>-<node>).",
                       epilog=EPILOG)
    sub = add_actions(topo, "topo_command")

    p = sub.add_parser("up", help="build a lab from a topology file")
    p.add_argument("file", nargs="?", help="topology YAML file (default: the bundled lab1 example)")
    p.add_argument("--name", help="lab name to use instead of the file's `name`")
    add_json_arg(p, "print the lab's facts as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="tear a lab down (processes, namespaces, links, pins)")
    p.add_argument("names", nargs="+", metavar="NAME", help="lab name(s)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("ls", help="list labs")
    add_json_arg(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="show a lab's namespaces, interfaces and addresses")
    p.add_argument("name", metavar="NAME")
    add_json_arg(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "exec",
        help="run a command in a node; exits with the command's status",
        usage="fastpath topo exec NAME NODE -- CMD [ARG...]",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("node", metavar="NODE", help="node name, or `sw` for the bridges' namespace")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("validate", help="check a topology file without building it")
    p.add_argument("file")
    add_json_arg(p, "print the normalised topology")
    p.set_defaults(func=cmd_validate)


# fastpath.netns.lab pulls in pyroute2; handlers import it so `fastpath --help` stays quick.


def cmd_up(args: argparse.Namespace) -> int:
    from fastpath.netns.lab import Lab

    source = args.file or bundled_topology("lab1")
    lab = Lab.up(source, name=args.name)
    if args.json:
        print_json(lab.info())
    else:
        _print_interfaces(lab)
        info(
            f"lab {lab.name} is up: namespaces {', '.join(lab.info()['namespaces'].values())}; "
            f"remove it with `fastpath topo down {lab.name}`"
        )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from fastpath.netns.lab import down

    failed = []
    for name in args.names:
        try:
            removed = down(name)
        except FastpathError as exc:
            if len(args.names) == 1:
                raise
            failed.append(str(exc))
            continue
        info(f"lab {name} removed ({', '.join(removed) or 'no namespaces left'})")
    if failed:
        raise FastpathError("; ".join(failed))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from fastpath.netns.lab import list_labs

    labs = list_labs()
    if args.json:
        print_json([lab.as_dict() for lab in labs])
        return 0
    if not labs:
        info("no labs are up; build one with `fastpath topo up FILE`")
        return 0
    print_table(
        ["lab", "status", "nodes", "namespaces", "created"],
        [
            (
                s.name,
                s.status if not s.missing else f"{s.status} (missing {', '.join(s.missing)})",
                ", ".join(s.nodes),
                ", ".join(s.namespaces),
                s.created,
            )
            for s in labs
        ],
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from fastpath.netns.lab import Lab

    lab = Lab.load(args.name)
    if args.json:
        print_json(lab.info())
        return 0
    _print_interfaces(lab)
    routes = lab.info()["routes"]
    if routes:
        print_table(
            ["node", "dst", "via", "dev", "metric"],
            [
                (node, r["dst"], r.get("via"), r.get("dev"), r.get("metric"))
                for node, rs in routes.items()
                for r in rs
            ],
            title="routes",
        )
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise FastpathError("no command given; usage: fastpath topo exec NAME NODE -- CMD...")
    from fastpath.netns.lab import Lab

    lab = Lab.load(args.name)
    argv = netns_argv(lab.netns(args.node), cmd)
    try:
        # Inherit the terminal: this is an interactive pass-through, not a captured run.
        proc = subprocess.run(argv, check=False)
    except KeyboardInterrupt:
        return 130
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def cmd_validate(args: argparse.Namespace) -> int:
    topo = load_topology(args.file)
    if args.json:
        print_json(topology_to_dict(topo))
    else:
        info(
            f"{args.file}: lab {topo.name} is valid: {len(topo.nodes)} nodes, "
            f"{len(topo.bridges)} bridges, {len(topo.links)} links; namespaces "
            f"{', '.join(topo.all_netns())}"
        )
    return 0


def _print_interfaces(lab: Lab) -> None:
    ifaces = sorted(lab.record.get("interfaces", []), key=lambda i: (i["node"], i["ifname"]))
    rows = [
        (
            i["node"],
            i["ifname"],
            i["mac"],
            i["mtu"],
            "\n".join(i["addresses"]),
            i["peer"] + (f" ({i['bridge_port']})" if i.get("bridge_port") else ""),
        )
        for i in ifaces
    ]
    table = make_table(
        ["node", "interface", "mac", "mtu", "addresses", "peer"],
        rows,
        title=f"lab {lab.name} (namespaces <lab>-<node>)",
    )
    # Truncated MACs and addresses are useless; let the peer column wrap instead.
    for col in (table.columns[2], table.columns[4]):
        col.no_wrap = True
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fastpath.netns.cli ...`: the topo commands alone, as `fastpath topo ...`."""
    parser = argparse.ArgumentParser(prog="fastpath")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(["topo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except FastpathError as exc:
        print(f"fastpath: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
