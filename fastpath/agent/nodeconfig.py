"""The node config: one YAML file saying what runs on every interface of a host.

    metrics:
      listen: 127.0.0.1:9433     # HOST:PORT ([v6]:PORT), or "off"
      netns: lab-lb              # optional: listen inside this namespace
    interfaces:
      - interface: eth0
        netns: lab-lb            # optional (default: the root namespace)
        mode: auto               # XDP mode when attaching: auto, native, generic
        peer_program: true       # false: like --no-peer-program
        guard:                   # the options of `fastpath xdp attach`, plus allow/deny lists
          ports: [80, 443]
          drop_ports: [23]
          syn_rate: 200/s
          syn_burst: 400
          cookies: adaptive
          allow: [192.0.2.0/24]
          deny: [203.0.113.0/24]
        balancer:                # the options of `fastpath lb attach`, `health`, and an
          table_size: 4099       # `lb apply` file's keys
          seed: 7
          health: {interval: 0.5, timeout: 0.5, fall: 2, rise: 2}   # or false
          vips:
            10.0.0.10:80/tcp:
              mode: nat
              backends:
                10.0.1.21:8080: {weight: 3}
      - interface: eth0
        netns: lab-b1
        decap:                   # the options of `fastpath lb decap attach`
          from: [172.16.0.0/16]
          vip: [10.0.0.10]

Each section goes through its command's own parser and its application's own conversion
(fastpath.agent.options), so it is exactly as strict as the command line. A bad file is one
FastpathError naming the key (`node.yaml: interfaces[0] (eth0 in lab-lb): guard.syn_rate: bad
SYN rate 'fast'; ...`). Parsing touches no kernel object; fastpath.agent.plan checks the host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastpath.agent import options
from fastpath.apps.decap import cli as decap_cli
from fastpath.apps.decap.decap import IPAddress as DecapAddress
from fastpath.apps.decap.decap import Network as DecapNetwork
from fastpath.apps.guard import cli as guard_cli
from fastpath.apps.guard.abi import Network
from fastpath.apps.guard.config import GuardConfig
from fastpath.apps.lb import cli as lb_cli
from fastpath.apps.lb import config as lb_config
from fastpath.apps.lb import health
from fastpath.apps.lb.abi import TUNABLES
from fastpath.bpf.xdp import MODES
from fastpath.core.args import parse_cidr, parse_port
from fastpath.errors import FastpathError

DEFAULT_METRICS_PORT = 9433
INTERFACE_KEYS = ("interface", "netns", "mode", "peer_program", "guard", "balancer", "decap")
GUARD_LISTS = ("allow", "deny")


@dataclass(frozen=True)
class GuardSection:
    config: GuardConfig
    allow: frozenset[Network] = frozenset()
    deny: frozenset[Network] = frozenset()


@dataclass(frozen=True)
class HealthSettings:
    interval: float = 0.5
    timeout: float = 0.5
    fall: int = 2
    rise: int = 2


@dataclass(frozen=True)
class BalancerSection:
    tunables: Mapping[str, int]           # only those the section sets (e.g. LB_HASH_SEED)
    vips: tuple[lb_config.VipSpec, ...]
    health: HealthSettings | None = HealthSettings()


@dataclass(frozen=True)
class DecapSection:
    sources: tuple[DecapNetwork, ...]
    vips: tuple[DecapAddress, ...]
    extra: tuple[DecapAddress, ...] = ()


@dataclass(frozen=True)
class InterfaceConfig:
    ifname: str
    netns: str | None = None
    mode: str = "auto"
    peer_program: bool = True
    guard: GuardSection | None = None
    balancer: BalancerSection | None = None
    decap: DecapSection | None = None
    where: str = ""   # how errors name this entry: "interfaces[0] (eth0 in lab-lb)"

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.netns, self.ifname)

    def programs(self) -> list[str]:
        """The programs this entry runs, by the names the runtime records."""
        return [name for name, section in (("syn_guard", self.guard), ("l4lb", self.balancer),
                                           ("decap", self.decap)) if section is not None]


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT
    netns: str | None = None
    enabled: bool = True

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


@dataclass(frozen=True)
class NodeConfig:
    interfaces: tuple[InterfaceConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "config"


# -- the commands whose parsers read the sections ------------------------------------------------

def guard_parser() -> Any:
    return options.command_parser(guard_cli.register, ("xdp", "attach"))


def balancer_parser() -> Any:
    return options.command_parser(lb_cli.register, ("lb", "attach"))


def health_parser() -> Any:
    return options.command_parser(lb_cli.register, ("lb", "health"))


def decap_parser() -> Any:
    return options.command_parser(lb_cli.register, ("lb", "decap", "attach"))


# -- parsing -----------------------------------------------------------------------------------------

def _mapping(value: object, what: str, allow_none: bool = True) -> dict[Any, Any]:
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise FastpathError(f"{what}: must be a mapping of keys to values")
    return value


def _unknown(data: Mapping[Any, Any], allowed: tuple[str, ...], what: str) -> None:
    extra = [k for k in data if k not in allowed]
    if extra:
        raise FastpathError(f"{what}.{extra[0]}: unknown key", fix=f"use one of {', '.join(allowed)}")


def _networks(value: object, what: str) -> frozenset[Network]:
    items = value if isinstance(value, list) else [value]
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise FastpathError(f"{what}: {item!r} is not a CIDR", fix="write e.g. 203.0.113.0/24")
        try:
            out.add(parse_cidr(item))
        except FastpathError as exc:
            raise FastpathError(f"{what}: {exc.message}", fix=exc.fix) from None
    return frozenset(out)


def parse_guard(data: object, where: str, ifname: str) -> GuardSection:
    section = _mapping(data, where)
    cfg = options.parse(guard_parser(), section, where, guard_cli.attach_config, positional=[ifname],
                        ignore=GUARD_LISTS)
    allow = _networks(section.get("allow", []), f"{where}.allow")
    deny = _networks(section.get("deny", []), f"{where}.deny")
    both = sorted(allow & deny, key=lambda n: (n.version, n))
    if both:
        raise FastpathError(f"{where}.deny: {both[0]} is also in the allow list", fix="list it once")
    return GuardSection(cfg, allow, deny)


def _health(data: object, where: str) -> HealthSettings | None:
    if data is False:
        return None
    if data is True or data is None:
        return HealthSettings()

    def convert(args: Any) -> HealthSettings:
        health.check_timing(args.interval, args.timeout)
        health.HealthChecker(args.fall, args.rise)
        return HealthSettings(args.interval, args.timeout, args.fall, args.rise)

    return options.parse(health_parser(), _mapping(data, where), where, convert)


def parse_balancer(data: object, where: str, ifname: str) -> BalancerSection:
    section = _mapping(data, where)
    attach_keys = set(options.settings(balancer_parser()))
    attach = {k: v for k, v in section.items() if k in attach_keys}
    rest = {k: v for k, v in section.items() if k not in attach_keys and k != "health"}

    def convert(args: Any) -> dict[str, int]:
        given = lb_cli.attach_tunables(args)
        lb_config.check_tunables({**TUNABLES, **given})
        return given

    tunables = options.parse(balancer_parser(), attach, where, convert, positional=[ifname])
    try:
        specs = lb_config.parse_config(rest, where)
    except FastpathError as exc:
        if "unknown key" not in exc.message:
            raise
        raise FastpathError(exc.message, fix="a balancer section takes the options of 'lb attach' "
                            f"({', '.join(sorted(attach_keys))}), health, and the keys of an "
                            f"'lb apply' file ({exc.fix})") from None
    return BalancerSection(tunables, tuple(specs), _health(section.get("health"), f"{where}.health"))


def parse_decap(data: object, where: str, ifname: str) -> DecapSection:
    sources, vips, extra = options.parse(decap_parser(), _mapping(data, where), where,
                                         decap_cli.attach_sets, positional=[ifname])
    return DecapSection(tuple(sources), tuple(vips), tuple(extra))


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 15 or "/" in value or value != value.strip():
        raise FastpathError(f"{what}: {value!r} is not an interface name", fix="names are 1-15 characters")
    return value


def _netns_name(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise FastpathError(f"{what}: {value!r} is not a namespace name", fix="see 'ip netns'")
    return value


def parse_interface(data: object, index: int, source: str) -> InterfaceConfig:
    what = f"{source}: interfaces[{index}]"
    entry = _mapping(data, what, allow_none=False)
    _unknown(entry, INTERFACE_KEYS, what)
    if "interface" not in entry:
        raise FastpathError(f"{what}.interface: missing", fix="name the interface, e.g. interface: eth0")
    ifname = _name(entry["interface"], f"{what}.interface")
    netns = _netns_name(entry.get("netns"), f"{what}.netns")
    where = f"{what} ({ifname} in {netns})" if netns else f"{what} ({ifname})"
    mode = entry.get("mode", "auto")
    if mode not in MODES:
        raise FastpathError(f"{where}.mode: unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
    peer = entry.get("peer_program", True)
    if not isinstance(peer, bool):
        raise FastpathError(f"{where}.peer_program: {peer!r} is not true or false")
    guard = parse_guard(entry["guard"], f"{where}: guard", ifname) if "guard" in entry else None
    balancer = (parse_balancer(entry["balancer"], f"{where}: balancer", ifname)
                if "balancer" in entry else None)
    decap = parse_decap(entry["decap"], f"{where}: decap", ifname) if "decap" in entry else None
    if guard is None and balancer is None and decap is None:
        raise FastpathError(f"{where}: nothing to run", fix="give guard, balancer or decap")
    if decap is not None and (guard is not None or balancer is not None):
        raise FastpathError(f"{where}.decap: decap runs alone on its interface",
                            fix="run decap on a backend's interface, the guard and balancer on the "
                                "balancer's")
    return InterfaceConfig(ifname, netns, str(mode), peer, guard, balancer, decap, where)


def parse_metrics(data: object, source: str) -> MetricsConfig:
    what = f"{source}: metrics"
    if data is False or data == "off":
        return MetricsConfig(enabled=False)
    section = _mapping(data, what)
    _unknown(section, ("listen", "netns"), what)
    netns = _netns_name(section.get("netns"), f"{what}.netns")
    listen = section.get("listen", f"127.0.0.1:{DEFAULT_METRICS_PORT}")
    if listen is False or listen == "off":
        return MetricsConfig(enabled=False)
    fix = "write HOST:PORT, e.g. 127.0.0.1:9433 or [::1]:9433, or off"
    text = str(listen)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise FastpathError(f"{what}.listen: {text!r} is not HOST:PORT", fix=fix)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise FastpathError(f"{what}.listen: {host!r} is not an IP address", fix=fix) from None
    try:
        number = parse_port(port)
    except FastpathError as exc:
        raise FastpathError(f"{what}.listen: {exc.message}", fix=fix) from None
    return MetricsConfig(str(addr), number, netns)


def parse_node(data: object, source: str = "config") -> NodeConfig:
    top = _mapping(data, source)
    _unknown(top, ("interfaces", "metrics"), source)
    raw = top.get("interfaces")
    raw = [] if raw is None else raw
    if not isinstance(raw, list):
        raise FastpathError(f"{source}: interfaces: must be a list of interfaces",
                            fix="write '- interface: eth0' entries")
    entries = [parse_interface(item, i, source) for i, item in enumerate(raw)]
    seen: dict[tuple[str | None, str], str] = {}
    for e in entries:
        if e.key in seen:
            raise FastpathError(f"{e.where}: the same interface as {seen[e.key].split(': ', 1)[1]}",
                                fix="give each interface one entry")
        seen[e.key] = e.where
    return NodeConfig(tuple(entries), parse_metrics(top.get("metrics"), source), source)


def load(path: Path) -> NodeConfig:
    """Read and check a node config file (see the module docstring)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FastpathError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise FastpathError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FastpathError(f"{path}: not valid YAML{where}") from None
    return parse_node(data, str(path))
