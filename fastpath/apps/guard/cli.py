"""`fastpath xdp ...`: the XDP SYN-flood guard (attach, detach, status, stats, allow, deny,
ports, rate). Logic lives in fastpath/apps/guard/synguard.py; this module parses and prints."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from rich.table import Table

from fastpath.apps.guard import abi, nft, synguard
from fastpath.apps.guard.config import (
    COOKIE_MODES,
    DEFAULT_QUIET_SECONDS,
    DEFAULT_SYN_THRESHOLD,
    SYNPROXY_MODES,
    GuardConfig,
    cookie_mode,
    parse_ports,
    parse_protect,
    parse_rate,
    with_changes,
)
from fastpath.bpf import xdp
from fastpath.bpf.loader import dump_source
from fastpath.core.args import add_command, add_iface_args, add_json_arg, add_watch_arg, parse_cidr
from fastpath.core.watch import watch
from fastpath.errors import FastpathError
from fastpath.output import info, make_table, print_json, print_table

_N = TypeVar("_N", int, float)

EPILOG = """\
examples:
  fastpath xdp attach eth0 --ports 80,443 --drop-ports 23 --syn-rate 200/s --syn-burst 400
  fastpath xdp attach eth0 --ports 443 --cookies always
  fastpath xdp attach eth0 --ports 443 --syn-threshold 5000/s --quiet-period 60
  fastpath xdp stats eth0 --watch
  fastpath xdp deny add 203.0.113.0/24 2001:db8:bad::/48
  fastpath xdp ports eth0 --add 8443
  fastpath xdp rate eth0 --syn-rate off
  fastpath xdp bans eth0
  fastpath xdp protect eth0 --set local,192.0.2.10
  fastpath xdp status --json
  fastpath xdp detach eth0
"""

# What each counter means, for the stats table.
STAT_HELP = {
    "pass_other": "not TCP to a protected port",
    "pass_allow": "source in the allow list",
    "drop_deny": "source in the deny list",
    "drop_port": "SYN to a drop-mode port",
    "drop_limited": "SYN over its source's rate",
    "drop_banned": "SYN from a banned source",
    "tx_cookie": "SYN answered with a cookie SYN-ACK",
    "pass_syn": "SYN passed to the stack (cookies off, or adaptive below threshold)",
    "pass_cookie": "ACK with a valid cookie: new flow",
    "drop_cookie": "ACK with no flow and a bad cookie",
    "pass_flow": "segment of a known connection (cached or in the stack)",
    "pass_tcp": "other TCP to a protected port (RST, ...)",
    "fragment": "first fragment to a protected port",
    "drop_malformed": "truncated or unparsable headers",
    "drop_error": "helper failure building a SYN-ACK",
    "bans": "bans started (event)",
    "probes": "zero-window probes taken for a lost handshake ACK (event)",
    "pass_dest": "TCP to a protected port of an address not protected (a VIP)",
    "flow_socket": "flow-cache misses the stack knew: passed (event)",
    "flow_ends": "cached flows ended by FIN or RST (event)",
    "flow_idle": "cached flows idle too long, checked again (event)",
    "to_cookie": "adaptive ports switched to cookies (event)",
    "to_pass": "adaptive ports back to passing SYNs (event)",
    "cookie_held": "SYNs passed while the SYNPROXY rules were being armed (event)",
}


def _rate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--syn-rate", metavar="N/s",
                   help="SYNs per second per source (IPv6: per /64); off: no limit")
    p.add_argument("--syn-burst", metavar="N", help="SYNs a source may send back to back (default: the rate)")
    p.add_argument("--ban-after", metavar="N",
                   help="SYNs over the rate within one second that start a ban (default: the burst)")
    p.add_argument("--ban-seconds", metavar="S", help="ban length in seconds, 0: never ban (default 60)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = add_command(
        sub, "xdp", help="XDP SYN-flood guard: SYN cookies in XDP, allow/deny lists, SYN rate limits",
        description="Keep TCP services reachable under a spoofed SYN flood: SYNs to protected "
                    "ports are answered from XDP with SYN cookies, valid ACKs go on to SYNPROXY.",
        epilog=EPILOG)
    xs = top.add_subparsers(dest="xdp_command", metavar="ACTION", required=True)

    att = xs.add_parser("attach", help="attach the guard (or replace it atomically, keeping its maps)",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_iface_args(att)
    xdp.add_mode_args(att)
    att.add_argument("--ports", default="80,443", metavar="LIST",
                     help="TCP ports answered with SYN cookies (default 80,443; '' for none)")
    att.add_argument("--drop-ports", default="", metavar="LIST",
                     help="closed TCP ports whose SYNs are dropped")
    _rate_args(att)
    att.add_argument("--cookies", choices=COOKIE_MODES, default=None,
                     help="adaptive (default): SYNs to a port pass to the stack until its rate of SYNs "
                          "that complete no handshake crosses --syn-threshold, then cookies until "
                          "--quiet-period passes; always: "
                          "cookies for every SYN; off: lists and rate limits only (no SYNPROXY rules)")
    att.add_argument("--no-cookies", action="store_true", help="the same as --cookies off")
    att.add_argument("--syn-threshold", metavar="N/s",
                     help=f"adaptive: SYNs per second to one port on one CPU that complete no handshake "
                          f"and switch it to cookies "
                          f"(default {DEFAULT_SYN_THRESHOLD:g}/s)")
    att.add_argument("--quiet-period", metavar="S",
                     help=f"adaptive: seconds under the threshold before a port passes SYNs again "
                          f"(default {DEFAULT_QUIET_SECONDS:g})")
    att.add_argument("--synproxy", choices=SYNPROXY_MODES, default=None,
                     help="adaptive: on-demand (default): the SYNPROXY rules, and the conntrack they "
                          "turn on, only while a port is in cookie mode (a watcher process arms them "
                          "within ~0.1 s of a switch; the stack's own cookies cover that gap); always: "
                          "from attach on (also what --fragments pass implies)")
    att.add_argument("--fragments", choices=("drop", "pass"), default="drop",
                     help="verdict for first fragments to protected ports (default drop); pass: the "
                          "stack reassembles them and SYNs among them get SYNPROXY (IPv4) or a drop (IPv6)")
    att.add_argument("--protect", default="local", metavar="LIST",
                     help="destinations guarded: 'local' (every address of the interface's namespace, "
                          "the default), addresses or networks of up to 256, or 'any'; other "
                          "destinations (a balancer's VIPs) pass untouched")
    add_json_arg(att, "print the attachment as JSON")
    att.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    att.set_defaults(func=cmd_attach)

    det = xs.add_parser("detach", help="remove the guard, its pins and its nft rules")
    add_iface_args(det)
    det.set_defaults(func=cmd_detach)

    st = xs.add_parser("status", help="every interface the guard runs on, in every namespace")
    add_json_arg(st)
    st.set_defaults(func=cmd_status)

    stats = xs.add_parser("stats", help="counter totals and packets per second")
    add_iface_args(stats)
    add_json_arg(stats)
    add_watch_arg(stats)
    stats.add_argument("--interval", type=float, default=1.0, metavar="SECS",
                       help="sampling time for pps without --watch (0: totals only)")
    stats.set_defaults(func=cmd_stats)

    prot = xs.add_parser("protect", help="show or change the destination addresses the guard protects; "
                                         "reads the namespace's addresses again")
    add_iface_args(prot)
    prot.add_argument("--set", metavar="LIST", help="a new --protect list (local, addresses, any)")
    add_json_arg(prot)
    prot.set_defaults(func=cmd_protect)

    bans = xs.add_parser("bans", help="sources banned now for going over their SYN rate")
    add_iface_args(bans)
    add_json_arg(bans)
    bans.set_defaults(func=cmd_bans)

    for action in ("allow", "deny"):
        p = xs.add_parser(action, help=f"the {action} list: sources that always "
                                       f"{'pass' if action == 'allow' else 'are dropped'} (CIDR)")
        p.add_argument("verb", choices=("add", "del", "list"))
        p.add_argument("cidrs", nargs="*", metavar="CIDR")
        p.add_argument("--iface", metavar="IFACE", help="only this interface (default: every guarded one)")
        p.add_argument("--netns", metavar="NAME", help="only interfaces in this namespace")
        add_json_arg(p, "machine-readable output (list)")
        p.set_defaults(func=cmd_acl, acl_action=action)

    ports = xs.add_parser("ports", help="show or change protected ports, live")
    add_iface_args(ports)
    ports.add_argument("--add", default="", metavar="LIST", help="ports to answer with SYN cookies")
    ports.add_argument("--add-drop", default="", metavar="LIST", help="ports whose SYNs are dropped")
    ports.add_argument("--remove", default="", metavar="LIST", help="ports to stop protecting")
    add_json_arg(ports)
    ports.set_defaults(func=cmd_ports)

    rate = xs.add_parser("rate", help="change the per-source SYN rate limit and ban, live")
    add_iface_args(rate)
    _rate_args(rate)
    rate.set_defaults(func=cmd_rate)


# -- parsing helpers -----------------------------------------------------------------------------

# Bounds of the live settings: counts are u32 in the program's config, a ban at most a year.
COUNT_MAX, COUNT_MAX_TEXT = 0xFFFFFFFF, "4294967295"
BAN_MAX_S, BAN_MAX_TEXT = 86400 * 365, "one year"


def _number(text: str | None, what: str, default: _N, kind: Callable[[str], _N], most: float,
            most_text: str) -> _N:
    """`text` (an option's value) as a `kind` (int or float) from 0 to `most`; `default` when
    the option was not given."""
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise FastpathError(f"{what} {text!r} is not {noun}") from None
    if not 0 <= value <= most:
        raise FastpathError(f"{what} {text.strip()} out of range", fix=f"use 0 to {most_text}")
    return value


def _rate_changes(args: argparse.Namespace, base: GuardConfig) -> GuardConfig:
    rate = base.syn_rate if args.syn_rate is None else parse_rate(args.syn_rate)
    burst = _number(args.syn_burst, "--syn-burst", base.syn_burst if args.syn_rate is None else 0, int,
                    COUNT_MAX, COUNT_MAX_TEXT)
    if rate == 0 and args.syn_burst is None:
        burst = 0
    return with_changes(
        base, syn_rate=rate, syn_burst=burst,
        ban_after=_number(args.ban_after, "--ban-after", base.ban_after, int, COUNT_MAX, COUNT_MAX_TEXT),
        ban_seconds=_number(args.ban_seconds, "--ban-seconds", base.ban_seconds, float, BAN_MAX_S,
                            BAN_MAX_TEXT))


def _ns_flag(netns: str | None) -> str:
    return f" --netns {netns}" if netns else ""


# -- commands ------------------------------------------------------------------------------------

def _cookie_settings(args: argparse.Namespace) -> dict[str, object]:
    if args.no_cookies and args.cookies not in (None, "off"):
        raise FastpathError(f"--no-cookies contradicts --cookies {args.cookies}", fix="give one of them")
    mode = "off" if args.no_cookies else (args.cookies or "adaptive")
    if mode != "adaptive" and (args.syn_threshold is not None or args.quiet_period is not None
                               or getattr(args, "synproxy", None) is not None):
        raise FastpathError(f"--syn-threshold, --quiet-period and --synproxy apply to --cookies adaptive, "
                            f"not {mode}", fix="drop them, or use --cookies adaptive")
    out: dict[str, object] = {"cookies": mode}
    if getattr(args, "synproxy", None) is not None:
        out["synproxy"] = args.synproxy
    if args.syn_threshold is not None:
        threshold = parse_rate(args.syn_threshold)
        if threshold == 0:
            raise FastpathError("--syn-threshold cannot be off",
                                fix="give a rate such as 5000/s, or use --cookies always")
        out["syn_threshold"] = threshold
    out["quiet_seconds"] = _number(args.quiet_period, "--quiet-period", DEFAULT_QUIET_SECONDS, float,
                                   86400, "86400")
    return out


def attach_config(args: argparse.Namespace) -> GuardConfig:
    """The GuardConfig the options of `xdp attach` ask for, validated. The node config
    (fastpath.agent) parses its guard sections with the same parser and this function, so
    an option added to the attach parser and read here is accepted there too."""
    base = with_changes(GuardConfig(cookie_ports=parse_ports(args.ports),
                                    drop_ports=parse_ports(args.drop_ports), fragments=args.fragments,
                                    protect=parse_protect(args.protect)),
                        **_cookie_settings(args))
    return _rate_changes(args, base).validate()


def cmd_attach(args: argparse.Namespace) -> int:
    cfg = attach_config(args)
    if args.dump_bpf:
        defines, _ = synguard.attach_defines(args.iface, args.netns, cfg)
        sys.stdout.write(dump_source(abi.SPEC, defines, str(xdp.pin_dir(args.iface, args.netns))))
        return 0
    res = synguard.attach(args.iface, args.netns, args.mode, cfg, peer_program=args.peer_program)
    att = res.attachment
    for note in res.notes:
        info(note)
    scale = res.window_scale
    if args.json:
        print_json({**synguard.status(att), "replaced": res.replaced, "defines": res.defines,
                    "kept": res.kept, "window_scale": scale.as_json() if scale else None})
        return 0
    where = f" in {args.netns}" if args.netns else ""
    verb = "replaced the program on" if res.replaced else "attached to"
    layers = ["allow/deny lists", "port modes"]
    if cfg.syn_rate:
        layers.append("per-source SYN rate")
    if cfg.uses_cookies:
        how = "adaptive SYN cookies" if cfg.cookies == "adaptive" else "SYN cookies"
        if res.nft_table:
            layers.append(f"{how} + SYNPROXY (nft table {res.nft_table})")
        else:
            table = nft.table_name(att.ifname, att.ifindex)
            layers.append(f"{how} + SYNPROXY on demand (nft table {table} while a port needs cookies)")
    kept = f"; {res.kept} open connection(s) kept" if res.kept else ""
    scaled = f"; {scale.note}" if scale else ""
    info(f"syn_guard {verb} {args.iface}{where} ({att.mode} mode, prog id {att.prog_id}): "
         f"{cfg.describe()}; layers: {', '.join(layers)}{kept}{scaled}; "
         f"stop with: fastpath xdp detach {args.iface}{_ns_flag(args.netns)}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    att = synguard.detach(args.iface, args.netns)
    where = f" in {args.netns}" if args.netns else ""
    info(f"syn_guard detached from {args.iface}{where}; pins, state and nft rules removed"
         + ("" if att else " (state file was already gone)"))
    return 0


def _synproxy_cell(proxy: object) -> str:
    """The SYNPROXY rules in one status cell: in / out, and for on-demand rules whether the
    watcher that arms them runs."""
    if not isinstance(proxy, dict) or proxy.get("setting") == "off":
        return "-"
    state = "in" if proxy.get("armed") else "out"
    if proxy.get("setting") != "on-demand":
        return f"{state} (always)"
    return f"{state} (on demand{'' if proxy.get('watcher_pid') else ', NO watcher'})"


def cmd_status(args: argparse.Namespace) -> int:
    rows = [synguard.status(att) for att in synguard.attachments()]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        info("the SYN guard is not attached anywhere")
        return 0
    table = []
    for r in rows:
        cfg = r.get("config") or {}
        assert isinstance(cfg, dict)
        counters = r["counters"]
        assert isinstance(counters, dict)
        drops = sum(v for k, v in counters.items() if k.startswith("drop_"))
        rate = f"{cfg.get('syn_rate', 0):g}/s" if cfg.get("syn_rate") else "off"
        ports = []
        if cfg.get("cookie_ports"):
            how = {"always": "cookie", "adaptive": "adaptive", "off": "pass"}.get(
                cookie_mode(cfg.get("cookies")), "?")
            ports.append(f"{how} {','.join(map(str, cfg['cookie_ports']))}")
        if cfg.get("drop_ports"):
            ports.append(f"drop {','.join(map(str, cfg['drop_ports']))}")
        table.append([r["netns"] or "root", r["ifname"], r["mode"],
                      "yes" if r["alive"] else "NO (interface gone)", "; ".join(ports) or "-", rate,
                      _synproxy_cell(r.get("synproxy")), f"{counters.get('tx_cookie', 0):,}", f"{drops:,}"])
    print_table(["namespace", "interface", "mode", "alive", "ports", "SYN rate", "SYNPROXY rules",
                 "SYN-ACKs sent", "dropped"], table, title="XDP SYN guard")
    return 0


def _stats_rows(cur: dict[str, tuple[int, int]], prev: dict[str, tuple[int, int]] | None,
                dt: float) -> list[dict[str, object]]:
    out = []
    for name in abi.STAT_NAMES:
        packets, nbytes = cur[name]
        row: dict[str, object] = {"counter": name, "packets": packets, "bytes": nbytes}
        if prev is not None and dt > 0:
            row["pps"] = round((packets - prev[name][0]) / dt, 1)
        out.append(row)
    return out


def _port_modes(att: xdp.Attachment) -> list[synguard.PortMode]:
    try:
        return synguard.port_modes(att, synguard.guard_config(att))
    except FastpathError:
        return []


def _ports_line(modes: list[synguard.PortMode]) -> str:
    return ", ".join(f"{m.port} {m.mode}" for m in modes)


def cmd_stats(args: argparse.Namespace) -> int:
    att = synguard.attachment(args.iface, args.netns)
    title = f"syn_guard on {att.ifname}" + (f" in {att.netns}" if att.netns else "")
    warnings = synguard.window_scale_warnings(att)
    for line in warnings:
        ports = ",".join(map(str, synguard.guard_config(att).cookie_ports))
        info(f"warning: {line}; re-attach the guard so it takes the listener's scale: fastpath xdp attach "
             f"{att.ifname}{_ns_flag(att.netns)} --ports {ports}")
    if args.watch is None:
        prev = None
        t0 = time.monotonic()
        if args.interval > 0:
            prev = synguard.read_counters(att)
            time.sleep(min(args.interval, 60))
        cur = synguard.read_counters(att)
        rows = _stats_rows(cur, prev, time.monotonic() - t0)
        frames = sum(cur[n][0] for n in abi.OUTCOME_NAMES)
        bans = synguard.read_bans(att)
        modes = _port_modes(att)
        proxy = synguard.synproxy_summary(att)
        if proxy["setting"] == "on-demand" and proxy["watcher_pid"] is None:
            warnings.append("the on-demand SYNPROXY watcher is not running: a port that switches to "
                            "cookies passes SYNs to the stack instead")
            ports = ",".join(map(str, synguard.guard_config(att).cookie_ports))
            info(f"warning: {warnings[-1]}; re-attach the guard to start it: fastpath xdp attach "
                 f"{att.ifname}{_ns_flag(att.netns)} --ports {ports}")
        if args.json:
            print_json({"ifname": att.ifname, "netns": att.netns, "frames": frames,
                        "counters": {r["counter"]: {k: v for k, v in r.items() if k != "counter"}
                                     for r in rows}, "warnings": warnings,
                        "banned": [_ban_json(b) for b in bans],
                        "ports": [m.to_json() for m in modes], "synproxy": proxy})
            return 0
        print_table(["counter", "packets", "pps", "bytes", "meaning"],
                    [[r["counter"], f"{r['packets']:,}", f"{r['pps']:,.0f}" if "pps" in r else "-",
                      f"{r['bytes']:,}", STAT_HELP[str(r["counter"])]] for r in rows],
                    title=f"{title}: {frames:,} frames")
        if modes:
            print_table(["port", "SYNs get", "setting", "since", "to cookies", "to pass"],
                        [[m.port, "cookies" if m.mode == "cookies" else "the stack", m.setting,
                          "-" if m.since_s is None else f"{m.since_s:g}s", f"{m.to_cookie:,}",
                          f"{m.to_pass:,}"] for m in modes],
                        title=f"cookie ports on {att.ifname}")
        if proxy["setting"] != "off":
            state = "armed" if proxy["armed"] else "not armed (no port needs cookies)"
            watcher = f", watcher pid {proxy['watcher_pid']}" if proxy["watcher_pid"] else ""
            info(f"SYNPROXY rules: {proxy['setting']}, {state}{watcher}")
        if bans:
            shown = ", ".join(b.source for b in bans[:5]) + (", ..." if len(bans) > 5 else "")
            info(f"{len(bans)} source(s) banned now: {shown} (fastpath xdp bans {att.ifname}"
                 f"{_ns_flag(att.netns)})")
        return 0
    Counters = dict[str, tuple[int, int]]

    def render(cur: Counters, prev: Counters, dt: float) -> Table:
        return make_table(
            ["counter", "packets", "pps", "bytes", "meaning"],
            [[r["counter"], f"{r['packets']:,}", f"{r.get('pps', 0):,.0f}", f"{r['bytes']:,}",
              STAT_HELP[str(r["counter"])]] for r in _stats_rows(cur, prev, dt)],
            title=f"{title}; ports: {_ports_line(_port_modes(att)) or '-'} (Ctrl-C to stop)")

    def as_json(cur: Counters, prev: Counters, dt: float) -> dict[object, object]:
        rows = _stats_rows(cur, prev, dt)
        return {r["counter"]: {k: v for k, v in r.items() if k != "counter"} for r in rows}

    return watch(args.watch, lambda: synguard.read_counters(att), render, as_json if args.json else None)


def cmd_protect(args: argparse.Namespace) -> int:
    att = synguard.attachment(args.iface, args.netns)
    cfg = synguard.guard_config(att)
    if args.set is not None:
        cfg = with_changes(cfg, protect=parse_protect(args.set))
    att = synguard.set_config(att, cfg)
    have = synguard.read_protected(att)
    why = (("local", abi.PROTECT_LOCAL), ("listed", abi.PROTECT_LISTED))
    rows = [{"address": str(a), "why": " + ".join(w for w, bit in why if bits & bit)}
            for a, bits in sorted(have.items(), key=lambda e: (e[0].version, int(e[0])))]
    if args.json:
        print_json({"ifname": att.ifname, "netns": att.netns, "protect": list(cfg.protect),
                    "addresses": rows})
        return 0
    where = f"{att.ifname}" + (f" in {att.netns}" if att.netns else "")
    if cfg.any_dest:
        info(f"syn_guard on {where} protects every destination address (--protect any)")
        return 0
    print_table(["address", "why"], [[r["address"], r["why"]] for r in rows],
                title=f"destinations the SYN guard protects on {where} (others pass untouched)")
    return 0


def _ban_json(ban: synguard.Ban) -> dict[str, object]:
    return {"source": ban.source, "seconds_left": round(ban.seconds_left, 1),
            "seconds_since": round(ban.seconds_since, 1)}


def cmd_bans(args: argparse.Namespace) -> int:
    att = synguard.attachment(args.iface, args.netns)
    bans = synguard.read_bans(att)
    if args.json:
        print_json([_ban_json(b) for b in bans])
        return 0
    where = f"{att.ifname}" + (f" in {att.netns}" if att.netns else "")
    if not bans:
        info(f"no source is banned on {where}")
        return 0
    print_table(["source", "banned for", "ends in"],
                [[b.source, f"{b.seconds_since:,.0f} s", f"{b.seconds_left:,.0f} s"] for b in bans],
                title=f"sources banned on {where} (over their SYN rate)")
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    action: str = args.acl_action
    if args.verb != "list" and not args.cidrs:
        raise FastpathError(f"'fastpath xdp {action} {args.verb}' needs at least one CIDR",
                            fix=f"e.g. fastpath xdp {action} {args.verb} 203.0.113.0/24")
    nets = [parse_cidr(c) for c in args.cidrs]
    if len(set(nets)) != len(nets):
        raise FastpathError("a CIDR is listed twice", fix="give each network once")
    atts = synguard.attachments(args.iface, args.netns, live_only=True)
    if not atts:
        where = (f" on {args.iface}" if args.iface else "") + (f" in {args.netns}" if args.netns else "")
        raise FastpathError(f"the SYN guard is not attached{where}",
                            fix="attach it: fastpath xdp attach IFACE")
    if args.verb == "list":
        rows = [{"ifname": a.ifname, "netns": a.netns, "cidr": str(net), "action": act}
                for a in atts for net, act in synguard.acl_entries(a)
                if act == action and (not nets or net in nets)]
        if args.json:
            print_json(rows)
        elif not rows:
            info(f"the {action} list is empty")
        else:
            print_table(["namespace", "interface", "CIDR"],
                        [[r["netns"] or "root", r["ifname"], r["cidr"]] for r in rows],
                        title=f"{action} list")
        return 0
    for line in synguard.acl_change(atts, action, args.verb, nets):
        info(line)
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    att = synguard.attachment(args.iface, args.netns)
    add = parse_ports(args.add)
    add_drop = parse_ports(args.add_drop)
    remove = parse_ports(args.remove)
    cfg = synguard.guard_config(att)
    if add or add_drop or remove:
        clash = (set(add) | set(add_drop)) & set(remove)
        if clash or set(add) & set(add_drop):
            port = min(clash or set(add) & set(add_drop))
            raise FastpathError(f"port {port} is given twice with different modes",
                                fix="name each port in one of --add, --add-drop, --remove")
        cookie = (set(cfg.cookie_ports) - set(add_drop) - set(remove)) | set(add)
        drop = (set(cfg.drop_ports) - set(add) - set(remove)) | set(add_drop)
        cfg = with_changes(cfg, cookie_ports=tuple(sorted(cookie)), drop_ports=tuple(sorted(drop)))
        att = synguard.set_config(att, cfg)
    live = synguard.read_ports(att)
    table = att.options.get("nft_table")
    data = {"ifname": att.ifname, "netns": att.netns,
            "cookie_ports": [p for p, m in sorted(live.items()) if m == abi.PORT_COOKIE],
            "drop_ports": [p for p, m in sorted(live.items()) if m == abi.PORT_DROP],
            "synproxy_ports": nft.ports(att.netns, table) if isinstance(table, str) else []}
    if args.json:
        print_json(data)
        return 0
    print_table(["port", "mode"],
                [[p, "cookie" if m == abi.PORT_COOKIE else "drop"] for p, m in sorted(live.items())],
                title=f"protected ports on {att.ifname}")
    return 0


def cmd_rate(args: argparse.Namespace) -> int:
    att = synguard.attachment(args.iface, args.netns)
    if all(v is None for v in (args.syn_rate, args.syn_burst, args.ban_after, args.ban_seconds)):
        raise FastpathError("nothing to change",
                            fix="give --syn-rate, --syn-burst, --ban-after or --ban-seconds")
    cfg = _rate_changes(args, synguard.guard_config(att)).validate()
    synguard.set_config(att, cfg)
    info(f"syn_guard on {att.ifname}: {cfg.describe()}")
    return 0
