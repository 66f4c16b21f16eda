"""What the SYN guard is told: ports, SYN rate, bans and fragments as `GuardConfig` (parsed
from the user's words, validated, turned into the program's config record), and the
compile-time defines an interface implies (MSS from its MTU; timestamps, SACK and window
scale from its namespace's TCP sysctls, so the SYN-ACKs XDP sends promise what the server
will do; the window scale is only a default: attach takes the one the listeners really use,
fastpath/apps/guard/listeners.py).
"""

from __future__ import annotations

import fcntl
import ipaddress
import math
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fastpath.apps.guard.abi import (
    CFG_ACL4,
    CFG_ACL6,
    CFG_ADAPTIVE,
    CFG_COOKIES,
    CFG_DESTS,
    CFG_FRAG_PASS,
    TUNABLES,
    SgAdaptive,
    SgConfig,
)
from fastpath.bpf import xdp
from fastpath.core.args import parse_cidr, parse_port
from fastpath.errors import FastpathError

SIOCGIFMTU = 0x8921

# -- user input ---------------------------------------------------------------------------------

def parse_ports(text: str) -> tuple[int, ...]:
    """'80,443' -> (80, 443); '' -> ()."""
    if not text.strip():
        return ()
    return tuple(sorted({parse_port(p) for p in text.split(",")}))


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*$")


def parse_rate(text: str) -> float:
    """'200/s', '200', '6000/min' -> SYNs per second; '0' or 'off' turns the limit off."""
    if text.strip().lower() in ("off", "0"):
        return 0.0
    m = _RATE_RE.match(text)
    if m is None:
        raise FastpathError(f"bad SYN rate {text!r}", fix="write it as N/s or N/min, e.g. 200/s")
    value = float(m.group(1))
    if m.group(2) and m.group(2).startswith("m"):
        value /= 60.0
    if not 0 < value <= 1e9:
        raise FastpathError(f"SYN rate {text!r} out of range", fix="use a rate above 0 and up to 1e9/s")
    return value


# --protect: "local" (the namespace's own addresses), "any" (every destination), and
# addresses or small networks (each address of one is protected).
PROTECT_LOCAL, PROTECT_ANY = "local", "any"
PROTECT_NET_MAX = 256


def parse_protect(text: str) -> tuple[str, ...]:
    """'local,192.0.2.10,2001:db8::/126' -> ('local', '192.0.2.10', '2001:db8::/126');
    'any' alone; every network at most PROTECT_NET_MAX addresses."""
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items:
        raise FastpathError("--protect is empty", fix="give local, any, or addresses, e.g. --protect local")
    out: list[str] = []
    for item in items:
        if item.lower() in (PROTECT_LOCAL, PROTECT_ANY):
            word = item.lower()
            if word not in out:
                out.append(word)
            continue
        net = parse_cidr(item, "--protect address",
                         "give local, any, or addresses such as 192.0.2.10 or 2001:db8::10")
        if net.num_addresses > PROTECT_NET_MAX:
            raise FastpathError(f"--protect {item}: {net.num_addresses:,} addresses, more than "
                                f"{PROTECT_NET_MAX}", fix="list the host's own addresses, not whole networks")
        name = str(net.network_address) if net.num_addresses == 1 else str(net)
        if name not in out:
            out.append(name)
    if PROTECT_ANY in out and len(out) > 1:
        raise FastpathError("--protect any covers every address", fix="give 'any' alone, or drop it")
    return tuple(out)


COOKIE_MODES = ("adaptive", "always", "off")
SYNPROXY_MODES = ("on-demand", "always")
DEFAULT_SYN_THRESHOLD = 5000.0  # SYNs per second to one port on one CPU that complete no handshake
DEFAULT_QUIET_SECONDS = 30.0


def cookie_mode(value: object) -> str:
    """A stored `cookies` setting as a mode: states written before adaptive mode existed hold
    True (cookies for every SYN) or False."""
    if value is True:
        return "always"
    if value is False:
        return "off"
    return str(value)


@dataclass(frozen=True)
class GuardConfig:
    """What the guard protects and how; everything here can change without a reload."""

    cookie_ports: tuple[int, ...] = (80, 443)
    drop_ports: tuple[int, ...] = ()
    syn_rate: float = 0.0          # SYNs per second per source; 0: no limit
    syn_burst: int = 0             # SYNs a source may send back to back; 0: same as the rate
    ban_after: int = 0             # SYNs over the rate within a second that start a ban; 0: burst
    ban_seconds: float = 60.0      # ban length; 0: never ban
    cookies: str = "adaptive"      # adaptive: cookies per port under a SYN flood; always; off
    syn_threshold: float = DEFAULT_SYN_THRESHOLD  # adaptive: unanswered SYN/s to a port on one CPU: cookies
    quiet_seconds: float = DEFAULT_QUIET_SECONDS  # adaptive: back to passing SYNs after this long quiet
    synproxy: str = "on-demand"    # adaptive: SYNPROXY rules only while a port needs them; always
    fragments: str = "drop"        # verdict for first fragments to protected ports
    protect: tuple[str, ...] = (PROTECT_LOCAL,)  # destinations guarded: see parse_protect

    def validate(self) -> GuardConfig:
        both = sorted(set(self.cookie_ports) & set(self.drop_ports))
        if both:
            raise FastpathError(
                f"port {both[0]} is both a cookie port and a drop port",
                fix="list each port in only one of --ports and --drop-ports")
        for p in (*self.cookie_ports, *self.drop_ports):
            if not 1 <= p <= 65535:
                raise FastpathError(f"port {p} out of range", fix="ports are 1-65535")
        if not self.cookie_ports and not self.drop_ports:
            raise FastpathError("no port to protect", fix="give --ports and/or --drop-ports")
        if self.syn_rate < 0 or self.syn_burst < 0 or self.ban_after < 0 or self.ban_seconds < 0:
            raise FastpathError("rates, bursts and ban settings cannot be negative")
        if self.syn_burst and not self.syn_rate:
            raise FastpathError("--syn-burst needs --syn-rate",
                                fix="give both, e.g. --syn-rate 200/s --syn-burst 400")
        if self.cookies not in COOKIE_MODES:
            raise FastpathError(f"bad cookie mode {self.cookies!r}", fix="use adaptive, always or off")
        if self.synproxy not in SYNPROXY_MODES:
            raise FastpathError(f"bad SYNPROXY setting {self.synproxy!r}", fix="use on-demand or always")
        if not 0 < self.syn_threshold <= 1e9:
            raise FastpathError(f"SYN threshold {self.syn_threshold:g}/s out of range",
                                fix="use a rate above 0 and up to 1e9/s, e.g. --syn-threshold 5000/s")
        if not 0 <= self.quiet_seconds <= 86400:
            raise FastpathError(f"quiet period {self.quiet_seconds:g} s out of range", fix="use 0 to 86400")
        if self.fragments not in ("drop", "pass"):
            raise FastpathError(f"bad fragment verdict {self.fragments!r}", fix="use drop or pass")
        if parse_protect(",".join(self.protect)) != self.protect:
            raise FastpathError(f"bad --protect list {','.join(self.protect)!r}",
                                fix="give local, any, or addresses, each once")
        return self

    @property
    def any_dest(self) -> bool:
        return PROTECT_ANY in self.protect

    def listed(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address the --protect list names (networks expanded)."""
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for item in self.protect:
            if item not in (PROTECT_LOCAL, PROTECT_ANY):
                net = ipaddress.ip_network(item)
                out.extend(net if net.num_addresses > 1 else [net.network_address])
        return out

    @property
    def burst(self) -> int:
        return self.syn_burst or max(1, math.ceil(self.syn_rate))

    @property
    def ban_threshold(self) -> int:
        return self.ban_after or self.burst

    def to_ctype(self, acl4: bool, acl6: bool) -> SgConfig:
        cfg = SgConfig()
        if self.syn_rate:
            interval = max(1, round(1e9 / self.syn_rate))
            cfg.syn_interval_ns = interval
            cfg.syn_burst_ns = interval * (self.burst - 1)
            cfg.ban_ns = round(self.ban_seconds * 1e9)
            cfg.ban_after = self.ban_threshold if self.ban_seconds else 0
        flags = 0
        if self.cookies != "off":
            flags |= CFG_COOKIES
        if self.cookies == "adaptive":
            flags |= CFG_ADAPTIVE
        if self.fragments == "pass":
            flags |= CFG_FRAG_PASS
        if acl4:
            flags |= CFG_ACL4
        if acl6:
            flags |= CFG_ACL6
        if not self.any_dest:
            flags |= CFG_DESTS
        cfg.flags = flags
        return cfg

    @property
    def uses_cookies(self) -> bool:
        """SYNs to cookie ports may be answered from XDP (so SYNPROXY rules are needed)."""
        return self.cookies != "off" and bool(self.cookie_ports)

    @property
    def on_demand(self) -> bool:
        """The SYNPROXY rules are armed only while an adaptive port is in cookie mode
        (fastpath/apps/guard/ondemand.py); otherwise they stay in as long as cookies are on.
        `fragments pass` keeps them in: SYNs reassembled from fragments never show XDP a SYN,
        so only the rules' fragment chains answer them, flood or not."""
        return (self.uses_cookies and self.cookies == "adaptive" and self.synproxy == "on-demand"
                and self.fragments != "pass")

    def adaptive_ctype(self, window_ns: int) -> SgAdaptive:
        """The `adaptive` record: the threshold as SYNs per CPU per window of `window_ns`; the
        quiet period at least two windows (a flood seen by one CPU stamps the port once per
        window, so a shorter one would let the other CPUs switch back in between)."""
        return SgAdaptive(quiet_ns=max(round(self.quiet_seconds * 1e9), 2 * window_ns),
                          window_syns=max(1, math.ceil(self.syn_threshold * window_ns / 1e9)))

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["cookie_ports"] = list(self.cookie_ports)
        data["drop_ports"] = list(self.drop_ports)
        data["protect"] = list(self.protect)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GuardConfig:
        known = {f for f in cls.__dataclass_fields__}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for key in ("cookie_ports", "drop_ports"):
            if key in kw:
                kw[key] = tuple(int(p) for p in kw[key])
        if "protect" in kw:
            kw["protect"] = tuple(str(p) for p in kw["protect"])
        if "cookies" in kw:
            kw["cookies"] = cookie_mode(kw["cookies"])
        return cls(**kw)

    def describe(self) -> str:
        parts = []
        if self.cookie_ports:
            how = {"always": "SYN cookies", "adaptive": "adaptive SYN cookies",
                   "off": "rate limit only (cookies off)"}[self.cookies]
            when = (f" (over {self.syn_threshold:g} unanswered SYN/s per CPU, "
                    f"back after {self.quiet_seconds:g}s quiet, SYNPROXY rules {self.synproxy})"
                    if self.cookies == "adaptive" else "")
            parts.append(f"{how} on {','.join(map(str, self.cookie_ports))}{when}")
        if self.drop_ports:
            parts.append(f"SYNs dropped on {','.join(map(str, self.drop_ports))}")
        if self.syn_rate:
            ban = (f", ban {self.ban_seconds:g}s after {self.ban_threshold} excess"
                   if self.ban_seconds else "")
            parts.append(f"{self.syn_rate:g} SYN/s per source (burst {self.burst}{ban})")
        parts.append(f"fragments {self.fragments}")
        if self.any_dest:
            parts.append("every destination address")
        else:
            what = ["the namespace's own addresses"] if PROTECT_LOCAL in self.protect else []
            listed = [p for p in self.protect if p != PROTECT_LOCAL]
            parts.append(" + ".join(what + ([", ".join(listed)] if listed else [])))
        return "; ".join(parts)


# -- defines derived from the interface ----------------------------------------------------------

def _read_sysctl(name: str, default: str) -> str:
    try:
        return Path("/proc/sys", name.replace(".", "/")).read_text().strip()
    except OSError:
        return default


def _mtu(ifname: str) -> int:
    """The MTU by ioctl on a socket of the calling thread's namespace (/sys/class/net shows
    the namespace sysfs was mounted in, not ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si", ifname.encode(), 0))
    return int(struct.unpack("16si", req)[1])


def server_wscale(tcp_rmem_max: int, rmem_max: int) -> int:
    """The window scale Linux advertises (tcp_select_initial_window): SYNPROXY does not
    translate windows, so our SYN-ACKs must promise exactly what the server will use."""
    space = max(tcp_rmem_max, rmem_max, 1)
    return max(0, min(14, space.bit_length() - 1 - 15))


def interface_defines(ifname: str, netns: str | None) -> dict[str, int]:
    """MSS from the MTU, timestamp/SACK/window-scale offers from the namespace's sysctls."""
    rmem_max = int(_read_sysctl("net.core.rmem_max", "212992"))  # global, read from here
    with xdp.in_netns(netns):
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            where = f"namespace {netns!r}" if netns else "the root namespace"
            hint = "see 'ip link'" + (f" in 'ip netns exec {netns}'" if netns else "")
            raise FastpathError(f"unknown interface {ifname!r} in {where}", fix=hint) from None
        mtu = _mtu(ifname)
        timestamps = _read_sysctl("net.ipv4.tcp_timestamps", "1") != "0"
        sack = _read_sysctl("net.ipv4.tcp_sack", "1") != "0"
        scaling = _read_sysctl("net.ipv4.tcp_window_scaling", "1") != "0"
        rmem = _read_sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456").split()
    tcp_rmem_max = int(rmem[-1]) if rmem else 6291456
    return {
        "SG_MSS4": max(536, min(65495, mtu - 40)),
        "SG_MSS6": max(1220, min(65475, mtu - 60)),
        "SG_WSCALE": server_wscale(tcp_rmem_max, rmem_max) if scaling else 15,
        "SG_TIMESTAMPS": int(timestamps),
        "SG_SACK": int(sack),
    }


def plan_defines(ifname: str, netns: str | None) -> dict[str, int]:
    """Every define an attach to `ifname` compiles the guard with."""
    return {**TUNABLES, **interface_defines(ifname, netns)}


def with_changes(config: GuardConfig, **changes: Any) -> GuardConfig:
    return replace(config, **changes)
