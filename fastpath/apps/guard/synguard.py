"""Control plane of bpf/syn_guard.c: the XDP SYN-flood guard.

Mirrors bpf/syn_guard.h (tests/bpf/test_syn_guard.py checks the mirror against bcc) and
drives the program through its pinned maps, so every change after attach (ports, rate,
allow/deny lists) is live, with no reload. Attach also installs the netfilter SYNPROXY
rules that finish handshakes whose cookie XDP has checked (fastpath/apps/guard/nft.py), in the
interface's own namespace; detach removes them. Connections already open on cookie ports
are carried into the flow table and conntrack first (fastpath/apps/guard/existing.py), at attach,
re-attach and port changes, so the guard never cuts them. The window scale the guard's
SYN-ACKs promise is the one the listeners on the cookie ports answer with
(fastpath/apps/guard/listeners.py), since SYNPROXY does not translate windows.

    att = synguard.attach("eth0", netns="lab1-server", config=GuardConfig(cookie_ports=(80,)))
    synguard.acl_change([att], "deny", "add", [ip_network("203.0.113.0/24")])
    synguard.read_counters(att)["tx_cookie"]
    synguard.detach("eth0", "lab1-server")
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastpath.apps.guard import armer, existing, knobs, listeners, nft
from fastpath.apps.guard.abi import (
    ACL_ACTIONS,
    MAP_TYPES,
    PORT_COOKIE,
    PORT_DROP,
    PORT_OPEN,
    PROGRAM,
    PROTECT_LISTED,
    PROTECT_LOCAL,
    PROTECTED_HASH,
    PROTECTED_INLINE,
    SPEC,
    STAT_NAMES,
    TUNABLES,
    Network,
    SgAdaptive,
    SgAddr,
    SgConfig,
    SgFlow,
    SgFlowKey,
    SgProtectedList,
    SgSourceKey,
    address_of,
    lpm_key,
    lpm_network,
    mapped_words,
)
from fastpath.apps.guard.config import PROTECT_LOCAL as PROTECT_LOCAL_WORD
from fastpath.apps.guard.config import GuardConfig, plan_defines
from fastpath.bpf import chain, peer, xdp
from fastpath.bpf.maps import TypedMap
from fastpath.core.paths import RUN_ROOT
from fastpath.errors import FastpathError

SG_PROTECTED_MAX = TUNABLES["SG_PROTECTED_MAX"]

# -- the pinned maps of one attachment ------------------------------------------------------------

@contextlib.contextmanager
def open_map(att: xdp.Attachment, name: str) -> Iterator[TypedMap]:
    key, value = MAP_TYPES[name]
    with TypedMap.open_pinned(att.map_path(name), key, value) as m:
        yield m


def read_counters(att: xdp.Attachment) -> dict[str, tuple[int, int]]:
    """(packets, bytes) per counter, summed over CPUs."""
    with open_map(att, "stats") as m:
        sums = [m.sum_percpu(ctypes.c_uint32(i)) for i in range(len(STAT_NAMES))]
    return {name: (s["packets"], s["bytes"]) for name, s in zip(STAT_NAMES, sums, strict=True)}


def coarse_now_ns() -> int:
    """The clock the program stamps bans and flows with (bpf_ktime_get_coarse_ns):
    CLOCK_MONOTONIC_COARSE (6)."""
    return time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))


@dataclass(frozen=True)
class Ban:
    source: str          # an IPv4 address, or an IPv6 /64
    seconds_left: float
    seconds_since: float


def source_name(key: SgSourceKey) -> str:
    """A `sources`/`bans` key as the user knows it: IPv4 address, or IPv6 source's /64."""
    addr = address_of(key.addr)
    return str(addr) if addr.version == 4 else f"{addr}/64"


def read_bans(att: xdp.Attachment) -> list[Ban]:
    """The bans in force (ended ones the program has not yet removed are left out),
    longest-running first."""
    now = coarse_now_ns()
    out = []
    with open_map(att, "bans") as m:
        for key, ban in m.items():
            if ban.until_ns > now:
                left, since = (ban.until_ns - now) / 1e9, max(0, now - ban.since_ns) / 1e9
                out.append(Ban(source_name(key), left, since))
    return sorted(out, key=lambda b: (-b.seconds_since, b.source))


def _acl_nonempty(att: xdp.Attachment) -> tuple[bool, bool]:
    out = []
    for name in ("acl_v4", "acl_v6"):
        with open_map(att, name) as m:
            out.append(next(iter(m.keys()), None) is not None)
    return out[0], out[1]


def write_config(att: xdp.Attachment, config: GuardConfig) -> None:
    acl4, acl6 = _acl_nonempty(att)
    # the threshold first: the flag that makes the program read it comes with `config`
    window = int(att.defines.get("SG_RATE_WINDOW_NS", TUNABLES["SG_RATE_WINDOW_NS"]))
    with open_map(att, "adaptive") as m:
        record = config.adaptive_ctype(window)
        old = m.get(ctypes.c_uint32(0))
        record.armed = old.armed if old is not None else 0
        m.set(ctypes.c_uint32(0), record)
    with open_map(att, "config") as m:
        m.set(ctypes.c_uint32(0), config.to_ctype(acl4, acl6))


def read_raw_config(att: xdp.Attachment) -> SgConfig:
    with open_map(att, "config") as m:
        cfg = m.get(ctypes.c_uint32(0))
    return cfg if cfg is not None else SgConfig()


# -- the destinations guarded: the namespace's own addresses and those listed -----------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def namespace_addresses(netns: str | None) -> list[Address]:
    """Every IPv4 and IPv6 address of the namespace, on any interface (`ip addr`): a local
    service listening on a wildcard address answers on each of them."""
    from pyroute2 import IPRoute

    with xdp.in_netns(netns):
        ipr = IPRoute()
    try:
        out = {ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr()
               if msg["family"] in (socket.AF_INET, socket.AF_INET6)}
    finally:
        ipr.close()
    return sorted(out, key=lambda a: (a.version, int(a)))


def protected_addresses(netns: str | None, config: GuardConfig) -> dict[Address, int]:
    """address -> PROTECT_* bits: what `protected_addrs` must hold for `config` (empty for
    --protect any, which guards every destination without a lookup)."""
    if config.any_dest:
        return {}
    want: dict[Address, int] = {}
    if PROTECT_LOCAL_WORD in config.protect:
        for addr in namespace_addresses(netns):
            want[addr] = want.get(addr, 0) | PROTECT_LOCAL
    for addr in config.listed():
        want[addr] = want.get(addr, 0) | PROTECT_LISTED
    if len(want) > SG_PROTECTED_MAX:
        raise FastpathError(f"{len(want):,} addresses to protect, more than the program holds "
                            f"({SG_PROTECTED_MAX:,})", fix="list fewer addresses with --protect")
    return want


def _addr_key(addr: Address) -> SgAddr:
    key = SgAddr()
    key.addr[:] = mapped_words(addr)
    return key


def read_protected(att: xdp.Attachment) -> dict[Address, int]:
    with open_map(att, "protected_addrs") as m:
        return {address_of(k.addr): int(v.value) for k, v in m.items()}


def protected_list(addrs: Iterable[Address]) -> SgProtectedList:
    """The inline copy of the protected addresses the program compares first, or the mark
    that sends it to the hash when there are more than PROTECTED_INLINE."""
    ordered = sorted(addrs, key=lambda a: (a.version, int(a)))
    out = SgProtectedList()
    if len(ordered) > PROTECTED_INLINE:
        out.n = PROTECTED_HASH
        return out
    out.n = len(ordered)
    for i, addr in enumerate(ordered):
        out.addr[i] = _addr_key(addr)
    return out


def write_protected(att: xdp.Attachment, want: Mapping[Address, int]) -> None:
    """Make `protected_addrs` hold exactly `want` and `protected_list` the same addresses:
    new addresses first, then the list, then the old ones go, so an address in both sets is
    guarded throughout."""
    have = read_protected(att)
    with open_map(att, "protected_addrs") as m:
        for addr, bits in want.items():
            if have.get(addr) != bits:
                m.set(_addr_key(addr), ctypes.c_uint32(bits))
        with open_map(att, "protected_list") as lst:
            # Through the union (which the hash holds now, whatever its size) to `want`.
            lst.set(ctypes.c_uint32(0), protected_list({**have, **want}))
            lst.set(ctypes.c_uint32(0), protected_list(want))
        for addr in have.keys() - want.keys():
            m.delete(_addr_key(addr))


def guard_claims(config: GuardConfig, protected: Iterable[Address]) -> list[chain.Claim]:
    """What the guard answers itself, for the chain's overlap check: TCP to its ports (cookie
    and drop) of the destinations it protects."""
    ports = frozenset((*config.cookie_ports, *config.drop_ports))
    if not ports:
        return []
    addrs = None if config.any_dest else frozenset(protected)
    what = ("a destination the SYN guard protects (--protect any)" if addrs is None
            else "an address the SYN guard protects")
    return [chain.Claim(PROGRAM, addrs, ports, what, answers=True,
                        fix="leave that address out of the guard's --protect list (e.g. --protect "
                            "with the host's own service addresses only), or take the port off the guard")]


def _claims_of(ifname: str, netns: str | None) -> list[chain.Claim]:
    att = xdp.read_state(ifname, netns, PROGRAM)
    if att is None or "config" not in att.options:
        return []
    cfg = guard_config(att)
    try:
        protected = list(read_protected(att)) if not cfg.any_dest else []
    except FastpathError:  # maps not there (yet)
        protected = list(protected_addresses(netns, cfg))
    return guard_claims(cfg, protected)


chain.CLAIMS[PROGRAM] = _claims_of


def _port_modes(config: GuardConfig) -> dict[int, int]:
    modes = {p: PORT_COOKIE for p in config.cookie_ports}
    modes.update({p: PORT_DROP for p in config.drop_ports})
    return modes


def write_ports(att: xdp.Attachment, config: GuardConfig, previous: GuardConfig | None) -> None:
    """Set every protected port's mode and open the ports `previous` protected and
    `config` does not (the array is only ever changed through here)."""
    new = _port_modes(config)
    old = _port_modes(previous) if previous is not None else {}
    with open_map(att, "ports") as m:
        for port in old.keys() - new.keys():
            m.set(ctypes.c_uint32(port), ctypes.c_uint32(PORT_OPEN))
        for port, mode in new.items():
            m.set(ctypes.c_uint32(port), ctypes.c_uint32(mode))


def forget_port_state(att: xdp.Attachment, keep: Iterable[int]) -> None:
    """Drop the adaptive state (mode, switch counts, SYN windows) of every port not in `keep`."""
    keep = set(keep)
    for name in ("port_state", "port_syns"):
        with open_map(att, name) as m:
            for key in [k for k in m.keys() if int(k.value) not in keep]:
                m.delete(key)


@dataclass
class PortMode:
    """How SYNs to one cookie port are answered right now (`fastpath xdp stats`)."""

    port: int
    mode: str             # "cookies" or "pass" (SYNs to the stack)
    setting: str          # the cookie setting: adaptive, always or off
    since_s: float | None  # seconds since the last switch (adaptive ports that saw SYNs)
    to_cookie: int = 0
    to_pass: int = 0

    def to_json(self) -> dict[str, object]:
        return {"port": self.port, "mode": self.mode, "setting": self.setting, "since_s": self.since_s,
                "to_cookie": self.to_cookie, "to_pass": self.to_pass}


def port_modes(att: xdp.Attachment, config: GuardConfig) -> list[PortMode]:
    """Every cookie port's current mode; for adaptive ports as the program switched them."""
    if config.cookies != "adaptive":
        mode = "pass" if config.cookies == "off" else "cookies"
        return [PortMode(p, mode, config.cookies, None) for p in config.cookie_ports]
    with open_map(att, "port_state") as m:
        states = {int(k.value): v for k, v in m.items()}
    now = time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))
    out = []
    for port in config.cookie_ports:
        st = states.get(port)
        if st is None:
            out.append(PortMode(port, "pass", "adaptive", None))
            continue
        out.append(PortMode(port, "cookies" if st.cookies else "pass", "adaptive",
                            round(max(0, now - st.since_ns) / 1e9, 1), st.to_cookie, st.to_pass))
    return out


def read_ports(att: xdp.Attachment) -> dict[int, int]:
    """Protected ports as the program sees them (a full walk of the array)."""
    with open_map(att, "ports") as m:
        buf = _array_values(m)
    return {p: mode for p, mode in enumerate(buf) if mode != PORT_OPEN}


def _array_values(m: TypedMap) -> list[int]:
    values = (m.get(ctypes.c_uint32(i)) for i in range(m.info.max_entries))
    return [int(v.value) if v is not None else 0 for v in values]


def acl_entries(att: xdp.Attachment) -> list[tuple[Network, str]]:
    """(network, 'allow'|'deny') for every list entry, IPv4 first."""
    names = {v: k for k, v in ACL_ACTIONS.items()}
    out: list[tuple[Network, str]] = []
    for name in ("acl_v4", "acl_v6"):
        with open_map(att, name) as m:
            for key, value in m.items():
                out.append((lpm_network(key), names.get(int(value.value), f"?{int(value.value)}")))
    return sorted(out, key=lambda e: (e[0].version, e[0]))


def acl_change(atts: Sequence[xdp.Attachment], action: str, verb: str, nets: Sequence[Network]) -> list[str]:
    """Add or remove `nets` in the allow or deny list of every attachment in `atts`.

    Everything is checked first (a prefix cannot be in both lists, a removed prefix must be
    in the list named), so an error leaves every list as it was. Returns what changed.
    """
    want = ACL_ACTIONS[action]
    other = "deny" if action == "allow" else "allow"
    current = {id(att): dict(acl_entries(att)) for att in atts}
    for att in atts:
        have = current[id(att)]
        for net in nets:
            if verb == "add" and have.get(net) == other:
                raise FastpathError(
                    f"{net} is in the {other} list of {_where(att)}",
                    fix=f"remove it first: fastpath xdp {other} del {net}")
            if verb == "del" and have.get(net) != action:
                raise FastpathError(f"{net} is not in the {action} list of {_where(att)}",
                                    fix=f"see: fastpath xdp {action} list")
    changed = []
    for att in atts:
        for net in nets:
            name = "acl_v4" if net.version == 4 else "acl_v6"
            with open_map(att, name) as m:
                if verb == "add":
                    m.set(lpm_key(net), ctypes.c_uint32(want))
                else:
                    m.delete(lpm_key(net))
            changed.append(f"{verb} {net} {'to' if verb == 'add' else 'from'} {action} list of {_where(att)}")
        # The lookup is skipped while a family's trie is empty; recompute the flags.
        write_config(att, guard_config(att))
    return changed


def _ns_flag(netns: str | None) -> str:
    return f" --netns {netns}" if netns else ""


def _where(att: xdp.Attachment) -> str:
    return f"{att.ifname}" + (f" in {att.netns}" if att.netns else "")


def guard_config(att: xdp.Attachment) -> GuardConfig:
    data = att.options.get("config")
    if not isinstance(data, dict):
        raise FastpathError(f"the state of {_where(att)} has no guard settings",
                            fix="attach again: fastpath xdp attach " + att.ifname)
    return GuardConfig.from_json(data)


# -- attach / detach -------------------------------------------------------------------------------

def attachment(ifname: str, netns: str | None) -> xdp.Attachment:
    return xdp.require(ifname, netns, PROGRAM, "the SYN guard", "fastpath xdp attach")


def attachments(ifname: str | None = None, netns: str | None = None,
                live_only: bool = False) -> list[xdp.Attachment]:
    """Every SYN-guard attachment, optionally only those on `ifname` / in `netns`, and with
    `live_only` only those whose namespace and pinned maps still exist."""
    out = []
    for att in xdp.attachments():
        if att.program != PROGRAM:
            continue
        if ifname is not None and att.ifname != ifname:
            continue
        if netns is not None and att.netns != netns:
            continue
        if live_only and not (_netns_alive(att.netns) and Path(att.map_path("config")).exists()):
            continue
        out.append(att)
    return out


def _netns_alive(netns: str | None) -> bool:
    return netns is None or os.path.exists(f"/run/netns/{netns}")


@dataclass
class AttachResult:
    attachment: xdp.Attachment
    replaced: bool
    nft_table: str | None
    defines: dict[str, int] = field(default_factory=dict)
    kept: int = 0  # connections open at attach carried into conntrack and the flows map
    window_scale: listeners.WindowScale | None = None  # what the SYN-ACKs promise (cookies on)
    notes: list[str] = field(default_factory=list)  # why `auto` took generic mode; sysctls set


# -- carried-over connections: the XDP flows map ----------------------------------------------

def add_flows(att: xdp.Attachment, conns: Sequence[existing.Connection]) -> None:
    if not conns:
        return
    now = coarse_now_ns()
    with open_map(att, "flows") as m:
        for conn in conns:
            key = SgFlowKey()
            key.client[:] = mapped_words(conn.client)
            key.server[:] = mapped_words(conn.server)
            key.client_port = socket.htons(conn.client_port)  # as read from the header
            key.server_port = socket.htons(conn.server_port)
            m.set(key, SgFlow(seen_ns=now))


@dataclass
class Seeded:
    connections: int = 0  # open connections (ESTABLISHED .. LAST-ACK) on cookie ports
    conntrack: int = 0    # conntrack entries created (the rest were tracked already)


def seed_existing(att: xdp.Attachment, ports: Iterable[int], conntrack: bool = True,
                  refresh: bool = False) -> Seeded:
    """Carry the namespace's open connections on `ports` into the flows map and (unless
    `conntrack` is False) into conntrack; `refresh`: see existing.add_conntrack."""
    conns = existing.connections(att.netns, ports)
    add_flows(att, conns)
    created = existing.add_conntrack(att.netns, conns, refresh=refresh) if conntrack else 0
    return Seeded(len(conns), created)


def attach_defines(ifname: str, netns: str | None,
                   cfg: GuardConfig) -> tuple[dict[str, int], listeners.WindowScale | None]:
    """The defines an attach compiles with. With cookies on, SG_WSCALE is the scale the
    listeners on the cookie ports really use (SYNPROXY does not translate windows), the
    sysctls' when none is there; listeners that disagree are refused (FastpathError)."""
    defines = plan_defines(ifname, netns)
    if not cfg.uses_cookies:
        return defines, None
    scale = listeners.window_scale(netns, cfg.cookie_ports, defines["SG_WSCALE"])
    defines["SG_WSCALE"] = scale.value
    return defines, scale


def attach_mode(ifname: str, netns: str | None, mode: str) -> tuple[str, str | None]:
    """`auto` on a veth with no fastpath link yet is generic mode: veth's native path copies
    every frame the stack sends into a page of its own and moves both ends to NAPI, which
    costs a busy service about a quarter of its new connections per second with no attack
    (`bench synguard-churn`), while a flood costs the same in either mode (`bench synflood`:
    `fastpath-generic`). Elsewhere `auto` stays native first. Returns the mode and a note
    that says why when it chose generic."""
    if mode != "auto" or xdp.members(ifname, netns) or xdp.read_state(ifname, netns) is not None:
        return mode, None
    if not peer.is_veth(ifname, netns):
        return mode, None
    return "generic", (f"{ifname} is a veth: the guard attaches in generic mode, which costs its "
                       f"connections less there than native (--mode native to override)")


def attach(
    ifname: str,
    netns: str | None = None,
    mode: str = "auto",
    config: GuardConfig | None = None,
    peer_program: bool = True,
) -> AttachResult:
    """Attach the guard to `ifname` (or replace it atomically, keeping every map) and make
    the maps and SYNPROXY rules match `config`. On a first attach that fails half-way,
    everything is removed again."""
    cfg = (config or GuardConfig()).validate()
    use_nft = cfg.uses_cookies
    if use_nft:
        nft.require()
    mode, mode_note = attach_mode(ifname, netns, mode)
    defines, scale = attach_defines(ifname, netns, cfg)
    with rules_lock():
        xdp.clear_stale(ifname, netns)
        protected = protected_addresses(netns, cfg)
        chain.check_claims(ifname, netns, {PROGRAM: guard_claims(cfg, protected)})
        old = xdp.read_state(ifname, netns, PROGRAM)
        ours = old is not None and old.program == PROGRAM and "config" in old.options
        previous = guard_config(old) if ours and old is not None else None
        options: dict[str, object] = {"config": cfg.to_json()}
        if old is not None and old.program == PROGRAM:
            for key in ("nft_table", *knobs.KEYS, armer.PID_KEY):
                if key in old.options:
                    options[key] = old.options[key]
        att, replaced = xdp.attach(SPEC, ifname, netns, mode, defines, options, peer_program)
        seeded = Seeded()
        try:
            table = nft.table_name(ifname, att.ifindex)
            # A first attach starts with every port open (zeroed maps), a re-attach with the old
            # settings: the connections open now are carried over before cookies are checked.
            seeded = _switch(att, cfg, previous, defines, table if use_nft else None, protected)
            cookies_was = _kernel_cookies(att, cfg)
            _watcher(att, cfg)
            xdp.save_state(att)
        except BaseException:
            if not replaced:
                with contextlib.suppress(Exception):
                    armer.stop(att, remove_log=True)
                with contextlib.suppress(Exception):
                    _remove_nft(att, force_table=nft.table_name(ifname, att.ifindex))
                with contextlib.suppress(Exception):
                    _kernel_cookies(att, None)
                with contextlib.suppress(Exception):
                    xdp.detach(ifname, netns, program=PROGRAM)
            raise
    notes = [mode_note] if mode_note else []
    if cookies_was is not None:
        in_ns = f" in netns {netns}" if netns else ""
        notes.append(f"net.ipv4.tcp_syncookies {cookies_was} -> 1{in_ns} while the guard "
                     f"uses cookies (SYNPROXY needs it once a flood fills a SYN queue); detach restores it")
    nft_table = att.options.get("nft_table")
    return AttachResult(att, replaced, nft_table if isinstance(nft_table, str) else None, defines,
                        seeded.connections, scale, notes)


def _switch(att: xdp.Attachment, cfg: GuardConfig, previous: GuardConfig | None,
            defines: Mapping[str, int], table: str | None, protected: Mapping[Address, int]) -> Seeded:
    """Make the maps and the SYNPROXY table match `cfg` without cutting open connections
    (fastpath/apps/guard/existing.py): flows seeded, XDP maps (the protected addresses before
    the config that turns their lookup on; cookies on, so a flood never reaches conntrack),
    then the rules (arm_rules). With on-demand rules not armed now, the maps only: the
    interface's watcher arms them when a port switches to cookies."""
    write_protected(att, protected)
    forget_port_state(att, cfg.cookie_ports)
    if table is None or (cfg.on_demand and not rules_armed(att)):
        write_ports(att, cfg, previous)
        write_config(att, cfg)
        set_armed(att, False)
        _remove_nft(att)
        return Seeded()
    first = seed_existing(att, cfg.cookie_ports, conntrack=False)
    write_ports(att, cfg, previous)
    write_config(att, cfg)
    seeded = arm_rules(att, cfg, defines, table)
    return Seeded(max(first.connections, seeded.connections), seeded.conntrack)


# -- the SYNPROXY rules: in from attach on, or armed on demand (fastpath/apps/guard/ondemand.py) --

@contextlib.contextmanager
def rules_lock() -> Iterator[None]:
    """Serialises changes to the SYNPROXY rules and the state of the guards between commands
    and the on-demand watchers (an flock on the folder of every interface's state: held over
    an attach's compile too, so a watcher never works on options an attach is about to
    overwrite; per-namespace folders are created and pruned with their state)."""
    folder = RUN_ROOT / "xdp"  # one lock for all: attaches are rare
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_armed(att: xdp.Attachment) -> bool:
    """The program's `armed` flag: ports in cookie mode send cookies (the rules are in)."""
    with open_map(att, "adaptive") as m:
        record = m.get(ctypes.c_uint32(0))
    return bool(record is not None and record.armed)


def rules_armed(att: xdp.Attachment) -> bool:
    return read_armed(att) or "nft_table" in att.options


def set_armed(att: xdp.Attachment, armed: bool) -> None:
    with open_map(att, "adaptive") as m:
        record = m.get(ctypes.c_uint32(0)) or SgAdaptive()
        if record.armed != int(armed):
            record.armed = int(armed)
            m.set(ctypes.c_uint32(0), record)


def arm_rules(att: xdp.Attachment, cfg: GuardConfig, defines: Mapping[str, int], table: str) -> Seeded:
    """Install (or update) the SYNPROXY table, carry the open connections on the cookie ports
    into flows and conntrack (refreshing entries conntrack kept while it was off), set
    tcp_loose=0, and only then let ports in cookie mode send cookies."""
    nft.install(att.netns, table, att.ifname, cfg.cookie_ports, defines, cfg.fragments == "pass")
    att.options["nft_table"] = table
    seeded = seed_existing(att, cfg.cookie_ports, refresh=True)  # and handshakes completed meanwhile
    knobs.hold(att, knobs.TCP_LOOSE, _armed_others(att))
    set_armed(att, True)
    return seeded


def synproxy_summary(att: xdp.Attachment) -> dict[str, object]:
    """How the attachment's SYNPROXY rules stand (`stats`, `status`): the setting, whether
    they are armed, the table, and the on-demand watcher's pid (None: not running)."""
    cfg = guard_config(att)
    setting = "off" if not cfg.uses_cookies else "on-demand" if cfg.on_demand else "always"
    table = att.options.get("nft_table")
    return {"setting": setting, "armed": read_armed(att) if setting == "on-demand" else table is not None,
            "table": table, "watcher_pid": armer.watcher_pid(att) if cfg.on_demand else None}


def disarm_rules(att: xdp.Attachment) -> None:
    """Ports in cookie mode pass SYNs again (first, so no cookie goes out without rules),
    then the table goes and tcp_loose is restored."""
    set_armed(att, False)
    _remove_nft(att)


def _remove_nft(att: xdp.Attachment, force_table: str | None = None) -> None:
    """Remove this attachment's SYNPROXY table and restore conntrack's tcp_loose when no
    other guard in the namespace still needs it."""
    table = att.options.pop("nft_table", None) or force_table
    if not _netns_alive(att.netns):
        att.options.pop(knobs.TCP_LOOSE.key, None)
        return
    if isinstance(table, str):
        nft.remove(att.netns, table)
    knobs.release(att, knobs.TCP_LOOSE, _armed_others(att))


def _others(att: xdp.Attachment) -> list[xdp.Attachment]:
    """The other SYN guards in `att`'s namespace."""
    return [a for a in attachments(netns=att.netns) if a.ifname != att.ifname and a.netns == att.netns]


def _armed_others(att: xdp.Attachment) -> list[xdp.Attachment]:
    return [a for a in _others(att) if "nft_table" in a.options]


def _kernel_cookies(att: xdp.Attachment, cfg: GuardConfig | None) -> int | None:
    """tcp_syncookies at least 1 in the namespace while the guard uses cookies (`cfg`; None:
    the guard goes), see fastpath/apps/guard/knobs.py. Returns the old value when it set it."""
    if cfg is not None and cfg.uses_cookies:
        return knobs.hold(att, knobs.SYNCOOKIES, _others(att))
    if not _netns_alive(att.netns):
        att.options.pop(knobs.SYNCOOKIES.key, None)
        return None
    others = []
    for other in _others(att):
        with contextlib.suppress(FastpathError):
            if guard_config(other).uses_cookies:
                others.append(other)
    knobs.release(att, knobs.SYNCOOKIES, others)
    return None


def _remove_guard(att: xdp.Attachment) -> None:
    """What the guard set up besides its program: its watcher, its SYNPROXY table and the
    sysctls it holds."""
    armer.stop(att, remove_log=True)
    _remove_nft(att, force_table=nft.table_name(att.ifname, att.ifindex))
    _kernel_cookies(att, None)


# An entry whose interface or namespace went away still leaves its watcher, and its nft table
# when only the interface went: the runtime calls this when it removes the dead entry.
xdp.STALE_HOOKS[PROGRAM] = _remove_guard


def _watcher(att: xdp.Attachment, cfg: GuardConfig) -> None:
    """The on-demand watcher runs exactly when the rules are on demand."""
    if cfg.on_demand:
        armer.ensure(att)
    else:
        armer.stop(att)


def detach(ifname: str, netns: str | None = None) -> xdp.Attachment | None:
    """Remove the program, its pins and state, its SYNPROXY rules and its watcher."""
    with rules_lock():
        att = xdp.read_state(ifname, netns, PROGRAM)
        if att is not None and att.program != PROGRAM:
            raise FastpathError(f"{ifname} runs fastpath program {att.program}, not the SYN guard",
                                fix=f"use '{xdp.detach_hint(att)}'")
        if att is not None:
            _remove_guard(att)
        return xdp.detach(ifname, netns, program=PROGRAM)


def set_config(att: xdp.Attachment, config: GuardConfig) -> xdp.Attachment:
    """Apply a new GuardConfig live (ports, rate, cookies, fragments, protected addresses,
    whose `local` part is read from the namespace again), no reload."""
    cfg = config.validate()
    with rules_lock():
        att = xdp.read_state(att.ifname, att.netns, PROGRAM) or att  # what a watcher changed
        previous = guard_config(att)
        if cfg.uses_cookies:
            nft.require()
            _check_window_scale(att, cfg, sorted(set(cfg.cookie_ports) - set(previous.cookie_ports)))
        protected = protected_addresses(att.netns, cfg)
        chain.check_claims(att.ifname, att.netns, {PROGRAM: guard_claims(cfg, protected)})
        table = None
        if cfg.uses_cookies:
            table = str(att.options.get("nft_table") or nft.table_name(att.ifname, att.ifindex))
        _switch(att, cfg, previous, {k: int(v) for k, v in att.defines.items()}, table, protected)
        att.options["config"] = cfg.to_json()
        _kernel_cookies(att, cfg)
        _watcher(att, cfg)
        xdp.save_state(att)
    return att


def _check_window_scale(att: xdp.Attachment, cfg: GuardConfig, ports: Sequence[int]) -> None:
    """Refuse new cookie ports (`ports`, of `cfg`) whose listeners use another window scale
    than the one the program was compiled with (only a re-attach can change it)."""
    wrong = window_scale_warnings(att, ports)
    if wrong:
        every = ",".join(map(str, cfg.cookie_ports))
        raise FastpathError(wrong[0], fix="re-attach with the new ports so the guard takes the "
                                          f"listeners' scale: fastpath xdp attach {att.ifname}"
                                          f"{_ns_flag(att.netns)} --ports {every}")


def window_scale_warnings(att: xdp.Attachment, ports: Sequence[int] | None = None) -> list[str]:
    """A line per listener on the cookie ports (or `ports`) whose window scale differs from
    the one the guard's SYN-ACKs promise (a listener started or changed after attach)."""
    try:
        cfg = guard_config(att)
    except FastpathError:
        return []
    if cfg.cookies == "off" or not _netns_alive(att.netns) or "SG_WSCALE" not in att.defines:
        return []
    return listeners.mismatches(att.netns, cfg.cookie_ports if ports is None else ports,
                                int(att.defines["SG_WSCALE"]))


def status(att: xdp.Attachment) -> dict[str, object]:
    """One attachment as `fastpath xdp status` reports it."""
    data: dict[str, object] = {
        "ifname": att.ifname, "netns": att.netns, "mode": att.mode, "prog_id": att.prog_id,
        "generation": att.generation, "alive": xdp.link_alive(att), "pin_dir": str(att.pin_dir),
        "nft_table": att.options.get("nft_table"), "peer": att.peer,
    }
    with contextlib.suppress(FastpathError):
        data["config"] = guard_config(att).to_json()
    with contextlib.suppress(FastpathError, OSError):
        data["synproxy"] = synproxy_summary(att)
    with contextlib.suppress(FastpathError):
        data["protected"] = [str(a) for a in sorted(read_protected(att), key=lambda a: (a.version, int(a)))]
    try:
        counters = read_counters(att)
    except FastpathError:
        counters = {}
    data["counters"] = {k: v[0] for k, v in counters.items()}
    return data
