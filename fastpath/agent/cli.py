"""`fastpath apply FILE` and `fastpath agent --config FILE`: the node config, once or as a
service. Logic lives in fastpath/agent/ (plan, service, unit); this module parses and prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastpath.agent import nodeconfig, plan, service, unit
from fastpath.core.args import add_command, add_json_arg
from fastpath.errors import FastpathError
from fastpath.output import info, print_json

APPLY_EPILOG = """\
examples:
  fastpath apply node.yaml --dry-run       print the plan: what would change, nothing applied
  fastpath apply node.yaml                 apply only the difference, all or nothing
  fastpath apply node.yaml --json          the steps applied, as JSON
"""

AGENT_EPILOG = """\
examples:
  fastpath agent --config /etc/fastpath/node.yaml
  fastpath agent --config node.yaml --detach-on-exit
  fastpath agent --config /etc/fastpath/node.yaml --install-unit   then: systemctl enable --now fastpath
  systemctl reload fastpath                SIGHUP: re-apply the edited config
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "apply", help="make the host match a node config (guard, balancer, decap)",
                    description="Plan the difference between a node config and what runs, then apply "
                                "it all or nothing (a failed step undoes the ones before it).",
                    epilog=APPLY_EPILOG)
    p.add_argument("config", metavar="FILE", help="the node config (YAML)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    add_json_arg(p, "the plan or the steps applied as JSON")
    p.set_defaults(func=cmd_apply)

    a = add_command(sub, "agent", help="run as a service: apply the config, health checks, metrics, events",
                    description="Apply a node config and keep the node matching it: health checks, "
                                "Prometheus metrics, JSON events on stdout; SIGHUP re-applies, SIGTERM "
                                "stops without detaching.",
                    epilog=AGENT_EPILOG)
    a.add_argument("--config", required=True, metavar="FILE", help="the node config (YAML)")
    a.add_argument("--detach-on-exit", action="store_true",
                   help="on SIGTERM detach what the config attached (default: leave the data plane running)")
    a.add_argument("--poll-interval", type=float, default=service.DEFAULT_POLL, metavar="SECS",
                   help=f"how often to look for events (default {service.DEFAULT_POLL:g})")
    a.add_argument("--install-unit", action="store_true",
                   help=f"write the systemd unit ({unit.UNIT_NAME}) for this config and exit")
    a.add_argument("--unit-dir", default=str(unit.UNIT_DIR), metavar="DIR",
                   help=f"where --install-unit writes (default {unit.UNIT_DIR})")
    a.set_defaults(func=cmd_agent)


def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config = nodeconfig.load(path)
    p = plan.make_plan(config)
    if args.dry_run or not p.steps:
        if args.json:
            print_json({"config": str(path), "dry_run": args.dry_run, "plan": p.to_json()})
        else:
            for line in p.lines():
                print(line)
        if not p.steps:
            if not args.dry_run:
                plan.write_managed(p.managed)
            info(f"{path}: nothing to do, the host matches it")
        else:
            info(f"{path}: {len(p.steps)} step(s) planned (dry run: nothing applied)")
        return 0
    results = plan.execute(p)
    if args.json:
        print_json({"config": str(path), "applied": results})
        return 0
    for r in results:
        step = f"{r['action']} {plan.TITLES[r['program']]} on {r['interface']}" + \
            (f" in {r['netns']}" if r["netns"] else "")
        print(step)
        for c in r["changes"]:
            print(f"  {c}")
    info(f"{path}: applied {len(results)} step(s)")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if args.install_unit:
        nodeconfig.load(path)  # a unit for a file that does not parse would only fail to start
        where, reloaded = unit.install(path, Path(args.unit_dir))
        info(f"wrote {where}" + ("; systemd reloaded" if reloaded else "")
             + f"; start it with: systemctl enable --now {unit.UNIT_NAME}")
        return 0
    if not 0.05 <= args.poll_interval <= 60:
        raise FastpathError("--poll-interval must be between 0.05 and 60 seconds")
    return service.Agent(path, detach_on_exit=args.detach_on_exit, poll=args.poll_interval).run()
