"""What users write, parsed and checked: VIPs (ADDR:PORT/PROTO), backends (ADDR[:PORT]),
weights, MACs, the `lb attach` tunables and the `lb apply` YAML file.

A bad value is one FastpathError naming what is wrong and how to write it, raised before
anything touches the kernel.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fastpath.apps.lb import maglev
from fastpath.apps.lb.abi import HASHES, MAX_TIMEOUT, MAX_WEIGHT, MODES, PROTOS, TIMEOUTS, IPAddress, VipKey
from fastpath.apps.lb.hashing import M32
from fastpath.core.args import parse_port
from fastpath.errors import FastpathError

# ---------------------------------------------------------------------------------------
# VIP and backend syntax

_VIP_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:/\[\]]+)):(?P<port>[^/]+)/(?P<proto>.+)$")
_VIP_FIX = "write ADDR:PORT/PROTO, e.g. 10.0.0.10:80/tcp or [fd00::10]:443/udp"
_BACKEND_FIX = "write ADDR or ADDR:PORT, e.g. 10.0.0.21, 10.0.0.21:8080, [fd00::21]:8080"
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def fmt_addr_port(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True, order=True)
class VipId:
    """One VIP: address, port and protocol, written ADDR:PORT/PROTO."""

    address: IPAddress
    port: int
    proto: str

    def __str__(self) -> str:
        return f"{fmt_addr_port(self.address, self.port)}/{self.proto}"

    def key(self) -> VipKey:
        k = VipKey()
        k.addr[:] = self.address.packed.ljust(16, b"\0")
        k.port = socket.htons(self.port)
        k.proto = PROTOS[self.proto]
        k.family = self.address.version
        return k


def _address(text: str, what: str, fix: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise FastpathError(f"bad {what}: {text!r} is not an IPv4 or IPv6 address", fix=fix) from None
    if addr.is_multicast or addr.is_unspecified or (addr.version == 4 and addr == ipaddress.IPv4Address(
            "255.255.255.255")):
        raise FastpathError(f"bad {what}: {addr} is not a unicast address", fix=fix)
    return addr


def parse_vip(text: str) -> VipId:
    """ADDR:PORT/PROTO (IPv6 in brackets) -> VipId; one-line error naming what is wrong."""
    m = _VIP_RE.match(text.strip())
    if not m:
        raise FastpathError(f"bad VIP {text!r}", fix=_VIP_FIX)
    what = f"VIP {text!r}"
    raw = m.group("v6") or m.group("v4")
    addr = _address(raw, what, _VIP_FIX)
    if m.group("v4") and addr.version == 6:
        raise FastpathError(f"bad {what}: put IPv6 addresses in brackets", fix=_VIP_FIX)
    proto = m.group("proto").lower()
    if proto not in PROTOS:
        raise FastpathError(f"bad {what}: protocol {m.group('proto')!r} is not tcp or udp", fix=_VIP_FIX)
    return VipId(addr, parse_port(m.group("port"), what, _VIP_FIX), proto)


def parse_backend(text: str) -> tuple[IPAddress, int | None]:
    """ADDR or ADDR:PORT (IPv6: bare, or in brackets with a port) -> (address, port or None)."""
    text = text.strip()
    what = f"backend {text!r}"
    if text.startswith("["):
        m = re.match(r"^\[([^\]]+)\](?::(.*))?$", text)
        if not m:
            raise FastpathError(f"bad {what}", fix=_BACKEND_FIX)
        addr = _address(m.group(1), what, _BACKEND_FIX)
        port = parse_port(m.group(2), what, _BACKEND_FIX) if m.group(2) is not None else None
        return addr, port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        addr = _address(host, what, _BACKEND_FIX)
        return addr, parse_port(port_text, what, _BACKEND_FIX)
    return _address(text, what, _BACKEND_FIX), None


def check_weight(weight: int, what: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise FastpathError(f"{what}: weight {weight!r} out of range 1-{MAX_WEIGHT}",
                            fix="give an integer weight; use 'backend drain' to stop new flows")
    return weight


def check_mac(mac: str, what: str) -> str:
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise FastpathError(f"{what}: bad MAC address {mac!r}", fix="write it as 02:00:00:00:00:01")
    return mac.lower()


def parse_weight(text: str, what: str) -> int:
    """A weight as typed on the command line ('3') -> 3, checked like one from a file."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise FastpathError(f"{what}: weight {text!r} is not a number",
                            fix=f"give an integer 1-{MAX_WEIGHT}") from None
    return check_weight(value, what)


def parse_client(text: str) -> tuple[IPAddress, int]:
    """SRC:SPORT (IPv6 in brackets) -> (address, port): the flow `lb explain` asks about."""
    addr, port = parse_backend(text)
    if port is None:
        raise FastpathError(f"bad client {text!r}: the source port is missing",
                            fix="write SRC:SPORT, e.g. 198.51.100.7:40000 or [2001:db8::7]:40000")
    return addr, port


# ---------------------------------------------------------------------------------------
# declarative config (`fastpath lb apply`)


@dataclass(frozen=True)
class BackendSpec:
    address: IPAddress
    port: int | None
    weight: int = 1
    drained: bool = False
    mac: str | None = None


@dataclass(frozen=True)
class VipSpec:
    vip: VipId
    mode: str = "dsr"
    hash: str = "5tuple"
    backends: tuple[BackendSpec, ...] = ()


def check_mode(mode: object, what: str) -> str:
    if mode not in MODES:
        raise FastpathError(f"{what}: unknown mode {mode!r}", fix="use dsr, nat or ipip")
    return str(mode)


def check_hash(value: object, what: str) -> str:
    if value not in HASHES:
        raise FastpathError(f"{what}: unknown hash {value!r}", fix="use 5tuple or src")
    return str(value)


def parse_config(data: object, source: str = "config") -> list[VipSpec]:
    """The `lb apply` file:

        vips:
          10.0.0.10:80/tcp:
            mode: nat            # dsr (default), nat or ipip
            hash: 5tuple         # or src: the client address only
            backends:
              10.0.1.21:8080: {weight: 3}
              10.0.1.22:8080: {drain: true, mac: "02:00:00:00:01:22"}
              10.0.1.23:8080:    # weight 1
        bgp: ...                 # announcing the VIPs: fastpath.apps.lb.bgp reads it
    """
    top = _mapping(data, source, "the top level must be a mapping with 'vips'", ("vips", "bgp"),
                   "only 'vips' and 'bgp' are allowed")
    vips = _mapping(top.get("vips"), source, "'vips' must be a mapping of ADDR:PORT/PROTO to settings")
    out: list[VipSpec] = []
    seen: set[VipId] = set()
    for text, conf in vips.items():
        vip = parse_vip(str(text))
        what = f"{source}: VIP {vip}"
        if vip in seen:
            raise FastpathError(f"{what} appears twice")
        seen.add(vip)
        out.append(_vip_spec(vip, conf or {}, what))
    return out


def _mapping(value: object, what: str, shape: str, keys: tuple[str, ...] | None = None,
             fix: str = "") -> dict[Any, Any]:
    """`value` as a mapping (None: an empty one) with no key but `keys` (when given)."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise FastpathError(f"{what}: {shape}")
    unknown = sorted(set(value) - set(keys)) if keys is not None else []
    if unknown:
        raise FastpathError(f"{what}: unknown key {unknown[0]!r}", fix=fix or f"use {', '.join(keys or ())}")
    return value


def _vip_spec(vip: VipId, raw: object, what: str) -> VipSpec:
    conf = _mapping(raw, what, "settings must be a mapping", ("mode", "hash", "backends"))
    mode = check_mode(conf.get("mode", "dsr"), what)
    hsh = check_hash(conf.get("hash", "5tuple"), what)
    braw = _mapping(conf.get("backends"), what, "'backends' must be a mapping of ADDR[:PORT] to settings")
    backends = []
    names: set[str] = set()
    for btext, bconf in braw.items():
        addr, port = parse_backend(str(btext))
        bwhat = f"{what}: backend {btext}"
        if isinstance(bconf, int) and not isinstance(bconf, bool):
            bconf = {"weight": bconf}
        bconf = _mapping(bconf, bwhat, "settings must be a mapping (weight, drain, mac)",
                         ("weight", "drain", "mac"))
        drain = bconf.get("drain", False)
        if not isinstance(drain, bool):
            raise FastpathError(f"{bwhat}: drain must be true or false")
        spec = BackendSpec(addr, port, check_weight(bconf.get("weight", 1), bwhat), drain,
                           check_mac(bconf["mac"], bwhat) if "mac" in bconf else None)
        name = backend_name(vip, mode, addr, port)
        if name in names:
            raise FastpathError(f"{what}: backend {name} appears twice")
        names.add(name)
        check_backend(vip, mode, addr, port)
        backends.append(spec)
    return VipSpec(vip, mode, hsh, tuple(backends))


def backend_port(vip: VipId, mode: str, port: int | None) -> int:
    return port if (port is not None and mode == "nat") else vip.port


def backend_name(vip: VipId, mode: str, addr: IPAddress, port: int | None) -> str:
    return fmt_addr_port(addr, backend_port(vip, mode, port))


def check_backend(vip: VipId, mode: str, addr: IPAddress, port: int | None) -> None:
    what = f"backend {fmt_addr_port(addr, port) if port else addr} of VIP {vip}"
    if addr.version != vip.address.version:
        raise FastpathError(f"{what}: address family differs from the VIP's",
                            fix="IPv4 VIPs take IPv4 backends, IPv6 VIPs IPv6 ones")
    if port is not None and mode != "nat" and port != vip.port:
        raise FastpathError(f"{what}: {mode} cannot change the port ({port} != {vip.port})",
                            fix="give no port, or use --mode nat for port translation")




# libyaml's parser when PyYAML has it: the pure-Python one took ~2.5 s of a 1000-VIP file
# (bench lb-apply); both build the same safe types.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_file(path: Path) -> object:
    """The YAML document in an `lb apply` file, unchecked."""
    try:
        return yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise FastpathError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise FastpathError(f"config file {path} is a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FastpathError(f"{path}: not valid YAML{where}") from None


def load_config(path: Path) -> list[VipSpec]:
    """Read and check the VIPs of an `lb apply` file (see parse_config)."""
    return parse_config(read_file(path), str(path))


# ---------------------------------------------------------------------------------------
# tunables (`fastpath lb attach`)

# The attach options, and the tunable each sets.
ATTACH_OPTIONS: dict[str, str] = {
    "--table-size": "LB_RING_SIZE",
    "--seed": "LB_HASH_SEED",
    "--max-vips": "LB_MAX_VIPS",
    "--max-backends": "LB_MAX_BACKENDS",
    "--conntrack": "LB_CONNTRACK_SIZE",
    "--half-open": "LB_HALF_OPEN_SIZE",
    "--rx-cpus": "LB_RX_CPUS",
    "--udp-timeout": "LB_UDP_TIMEOUT",
    "--tcp-timeout": "LB_TCP_TIMEOUT",
    "--closing-timeout": "LB_CLOSING_TIMEOUT",
}
_OPTION = {key: opt for opt, key in ATTACH_OPTIONS.items()}


def tunables(options: Mapping[str, int | None]) -> dict[str, int]:
    """{'--seed': 7, '--max-vips': None} -> {'LB_HASH_SEED': 7}: the options given, as tunables."""
    return {ATTACH_OPTIONS[opt]: value for opt, value in options.items() if value is not None}


# Tunables given by the attach options: (lowest, highest, unit) each.
_RANGES: dict[str, tuple[int, int, str]] = {
    "LB_MAX_VIPS": (1, 1024, ""),
    "LB_MAX_BACKENDS": (1, 65535, ""),
    "LB_HASH_SEED": (0, M32, ""),
    **{key: (1, MAX_TIMEOUT, " seconds") for key in TIMEOUTS},
    "LB_CONNTRACK_SIZE": (1024, 1 << 26, ""),
    "LB_HALF_OPEN_SIZE": (1024, 1 << 24, ""),
}
# Entries of half_open (and of half_open_reverse) at most: its size grows by the possible
# CPUs over the CPUs that run the program.
MAX_HALF_OPEN_ENTRIES = 1 << 26


def check_tunables(defines: Mapping[str, int | str]) -> None:
    size = int(defines["LB_RING_SIZE"])
    if not maglev.is_prime(size) or not 7 <= size <= 1_000_003:
        raise FastpathError(f"Maglev table size {size} must be a prime between 7 and 1000003",
                            fix="e.g. 65537 (default), 4099, 131071")
    for key, (low, high, unit) in _RANGES.items():
        if not low <= int(defines[key]) <= high:
            raise FastpathError(f"{_OPTION[key]} {defines[key]} out of range {low}-{high}{unit}")
    possible, rx = int(defines["LB_POSSIBLE_CPUS"]), int(defines["LB_RX_CPUS"])
    if not 1 <= rx <= possible:
        raise FastpathError(f"--rx-cpus {rx} out of range 1-{possible} (the CPUs this host may have)")
    half_open = int(defines["LB_HALF_OPEN_SIZE"])
    if -(-half_open * possible // rx) > MAX_HALF_OPEN_ENTRIES:
        raise FastpathError(f"--half-open {half_open} on {rx} of {possible} possible CPUs needs more than "
                            f"{MAX_HALF_OPEN_ENTRIES} entries",
                            fix="lower --half-open, or raise --rx-cpus to the CPUs serving the queues")
    vips = int(defines["LB_MAX_VIPS"])
    if vips * 2 * size >= 2**32 or vips * 2 * size * 4 > 1 << 30:
        raise FastpathError(f"{vips} VIPs x 2 rings x {size} slots needs more than 1 GiB",
                            fix="lower --max-vips or --table-size")
