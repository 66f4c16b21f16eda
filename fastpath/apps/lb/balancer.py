"""VIPs and backends of one attached l4lb program: every change validated in full first
(syntax, capacity, backend MAC resolution), then written to the maps.

A VIP's Maglev table is written into its idle ring and made live by replacing the VIP's
map entry in one step, so the data plane never sees a half-written table. The caller
(fastpath.apps.lb.program.session) holds the state lock and saves the state afterwards.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any

from fastpath.apps.lb import maglev
from fastpath.apps.lb.abi import (
    LB_BACKEND_F_DOWN,
    LB_BACKEND_F_EXISTS,
    LB_FLOW_F_CLOSING,
    LB_FLOW_F_RESET,
    LB_NO_BACKEND,
    MODES,
    PROTOS,
    STAT_NAMES,
    TIMEOUTS,
    TUNABLES,
    AddrKey,
    Backend,
    BackendStats,
    Config,
    FlowKey,
    IPAddress,
    Vip,
    VipRef,
    VipStats,
    addr_bit,
)
from fastpath.apps.lb.config import (
    VipId,
    VipSpec,
    backend_name,
    backend_port,
    check_backend,
    check_hash,
    check_mac,
    check_mode,
    check_weight,
    fmt_addr_port,
)
from fastpath.apps.lb.hashing import flow_hash
from fastpath.apps.lb.maps import LbMaps, write_u32_array
from fastpath.apps.lb.store import BackendState, LbState, VipState
from fastpath.errors import FastpathError


@functools.lru_cache(maxsize=8)
def _ring(weights: tuple[tuple[str, int], ...], size: int, seed: int) -> tuple[int, ...]:
    """The Maglev table of `weights`, built once per config for callers that predict many
    flows (a 65537-slot build takes tens of ms in Python)."""
    return tuple(maglev.build_table(weights, size, seed))


def predict(state: LbState, vip: VipId, client: IPAddress, sport: int) -> str | None:
    """The backend (name) the Maglev ring gives a new flow, computed from the config alone:
    what every node of a fleet with this config and seed would pick."""
    vs = state.vips.get(str(vip))
    if vs is None:
        return None
    weights = vs.weights()
    table = _ring(tuple(sorted(weights.items())), state.table_size, state.seed)
    slot = flow_hash(client, sport, vip.port, src_only=vs.hash == "src", seed=state.seed) % state.table_size
    return None if table[slot] == maglev.NO_BACKEND else sorted(weights)[table[slot]]


MacResolver = Callable[[IPAddress], str]


class Balancer:
    """VIPs and backends of one attached program: validates, then writes maps and state."""

    def __init__(self, maps: LbMaps, state: LbState, resolver: MacResolver,
                 defines: Mapping[str, int | str] | None = None) -> None:
        self.maps = maps
        self.state = state
        self.resolver = resolver
        # Called with every VIP the state is about to hold, before a map is written: the
        # chain's check that no program ahead of the balancer answers a VIP itself.
        self.vip_check: Callable[[list[VipId]], None] | None = None
        # The program's flow timeouts (seconds), for `explain`.
        self.timeouts = {k: int({**TUNABLES, **(defines or {})}[k]) for k in TIMEOUTS}
        # apply() adds and removes many VIPs, then writes the address table once: re-writing
        # it after each VIP made applying N VIPs cost N^2 map writes.
        self._batch = False
        if maps.ring_size != state.table_size:
            raise FastpathError(f"the program's rings hold {maps.ring_size} slots, the state says "
                                f"{state.table_size}", fix="detach and attach again")

    # -- lookups ---------------------------------------------------------------------------

    def vip(self, vip: VipId) -> VipState:
        state = self.state.vips.get(str(vip))
        if state is None:
            raise FastpathError(f"unknown VIP {vip}", fix="see 'fastpath lb vip list'")
        return state

    def backend(self, vip: VipId, addr: IPAddress, port: int | None) -> BackendState:
        vs = self.vip(vip)
        name = backend_name(vip, vs.mode, addr, port)
        b = vs.backends.get(name)
        if b is None:
            raise FastpathError(f"VIP {vip} has no backend {name}",
                                fix=f"see 'fastpath lb backend list {vip}'")
        return b

    # -- writing the data plane ------------------------------------------------------------

    def _alloc(self, used: set[int], limit: int, start: int, what: str) -> int:
        # Round-robin from the last allocation, so a freed id is reused as late as possible
        # (stale conntrack entries then never meet a new owner of their id).
        for i in range(limit):
            cand = (start + i) % limit
            if cand not in used:
                return cand
        raise FastpathError(f"no room for another {what} (the program holds {limit})",
                            fix="remove one, or detach and attach with a larger limit")

    def _vip_value(self, vs: VipState) -> Vip:
        live = sum(1 for b in vs.backends.values() if b.effective_weight > 0)
        return Vip(index=vs.index, flags=vs.flags, mode=MODES[vs.mode], ring=vs.ring, backends=live)

    def _write_backend(self, vs: VipState, b: BackendState) -> None:
        v = Backend()
        v.addr[:] = b.ip.packed.ljust(16, b"\0")
        v.port = socket.htons(b.port) if vs.mode == "nat" else 0
        v.family = b.ip.version
        v.flags = LB_BACKEND_F_EXISTS | (LB_BACKEND_F_DOWN if b.health == "down" else 0)
        v.mac[:] = bytes.fromhex(b.mac.replace(":", ""))
        v.vip = vs.index
        self.maps["backends"].set(ctypes.c_uint32(b.id), v)

    def table(self, vs: VipState) -> list[int]:
        """The VIP's Maglev table as backend ids (LB_NO_BACKEND for empty slots)."""
        weights = vs.weights()
        order = sorted(weights)
        ids = [vs.backends[n].id for n in order]
        raw = maglev.build_table(weights, self.state.table_size, self.state.seed)
        return [ids[i] if i != maglev.NO_BACKEND else LB_NO_BACKEND for i in raw]

    def _publish(self, vs: VipState) -> None:
        """Write the VIP's table into its idle ring, then flip the VIP entry to it."""
        cur = self.maps["vips"].get(vs.id.key())
        live_ring = cur.ring if cur is not None else vs.ring
        ring = 1 - (live_ring & 1)
        base = (vs.index * 2 + ring) * self.state.table_size
        write_u32_array(self.maps["rings"].fd, base, array("I", self.table(vs)))
        vs.ring = ring
        self.maps["vips"].set(vs.id.key(), self._vip_value(vs))

    def sync_hints(self) -> None:
        """Write what the data plane's conntrack-first hit reads besides the VIPs themselves
        (`vip_refs`, `config`'s address bits), as an attach over older maps needs."""
        self._sync_addresses()
        self.sync_refs()

    def sync_refs(self) -> None:
        """Write `vip_refs` whole from the state: each VIP's entry at its index, every other
        index empty (conntrack hits then take the long way through `vips`)."""
        by_index = {vs.index: vs for vs in self.state.vips.values()}
        for index in range(self.state.max_vips):
            vs = by_index.get(index)
            ref = VipRef()
            if vs is not None:
                ref.vip = vs.id.key()
                ref.mode = MODES[vs.mode]
            self.maps["vip_refs"].set(ctypes.c_uint32(index), ref)

    def _sync_addresses(self) -> None:
        counts: dict[tuple[bytes, int], int] = {}
        nat = 0
        for vs in self.state.vips.values():
            ip = ipaddress.ip_address(vs.address)
            k = (ip.packed.ljust(16, b"\0"), ip.version)
            counts[k] = counts.get(k, 0) + 1
            nat += vs.mode == "nat"
        m = self.maps["vip_addrs"]
        for key in list(m.keys()):
            if (bytes(key.addr), key.family) not in counts:
                m.delete(key)
        for (addr, fam), n in counts.items():
            akey = AddrKey()
            akey.addr[:] = addr
            akey.family = fam
            m.set(akey, ctypes.c_uint32(n))
        bits = 0
        for addr, _fam in counts:
            bits |= addr_bit(addr)
        self.maps["config"].set(ctypes.c_uint32(0), Config(nat_vips=nat, vip_addr_bits=bits))

    def _zero_stats(self, name: str, index: int, cls: type[Any]) -> None:
        m = self.maps[name]
        m.set_percpu(ctypes.c_uint32(index), [cls() for _ in range(m.ncpus)])

    # -- VIPs -------------------------------------------------------------------------------

    def _check_new_vip(self, vip: VipId, mode: str, hash_: str) -> None:
        check_mode(mode, f"VIP {vip}")
        check_hash(hash_, f"VIP {vip}")
        if str(vip) in self.state.vips:
            raise FastpathError(f"VIP {vip} already exists",
                                fix="delete it first, or change it with 'fastpath lb apply CONFIG.yaml'")

    def add_vip(self, vip: VipId, mode: str = "dsr", hash_: str = "5tuple") -> VipState:
        self._check_new_vip(vip, mode, hash_)
        if self.vip_check is not None:
            self.vip_check([*(v.id for v in self.state.vips.values()), vip])
        return self._place_vip(vip, mode, hash_)

    def _place_vip(self, vip: VipId, mode: str, hash_: str, used: set[int] | None = None) -> VipState:
        """Give the VIP a free index and write it; `used`: the indices taken (kept up to date)."""
        if used is None:
            used = {v.index for v in self.state.vips.values()}
        index = self._alloc(used, self.state.max_vips, self.state.next_vip, "VIP")
        used.add(index)
        return self._insert_vip(vip, mode, hash_, index)

    def _insert_vip(self, vip: VipId, mode: str, hash_: str, index: int) -> VipState:
        vs = VipState(str(vip.address), vip.port, vip.proto, mode, index, hash_)
        self.state.next_vip = (index + 1) % self.state.max_vips
        self._zero_stats("vip_stats", index, VipStats)
        self.state.vips[str(vip)] = vs
        if not self._batch:
            self._sync_addresses()
        self.maps["vips"].set(vip.key(), self._vip_value(vs))
        self.maps["vip_refs"].set(ctypes.c_uint32(index), VipRef(vip=vip.key(), mode=MODES[mode]))
        return vs

    def del_vip(self, vip: VipId) -> VipState:
        vs = self.vip(vip)
        self.maps["vips"].delete(vip.key())
        self.maps["vip_refs"].set(ctypes.c_uint32(vs.index), VipRef())
        del self.state.vips[str(vip)]
        if not self._batch:
            self._sync_addresses()
        for b in vs.backends.values():
            self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        return vs

    # -- backends ---------------------------------------------------------------------------

    def _backend_ids(self) -> set[int]:
        return {b.id for v in self.state.vips.values() for b in v.backends.values()}

    def _new_backend(self, vs: VipState, addr: IPAddress, port: int | None, weight: int,
                     mac: str | None, drained: bool, taken: set[int]) -> BackendState:
        """Validate and build (not write) a backend; resolving its MAC is the last check."""
        vip = vs.id
        check_backend(vip, vs.mode, addr, port)
        name = backend_name(vip, vs.mode, addr, port)
        check_weight(weight, f"backend {name}")
        if name in vs.backends:
            raise FastpathError(f"VIP {vip} already has backend {name}",
                                fix="change it with 'fastpath lb backend weight VIP BACKEND N' "
                                    "or '... drain'")
        bid = self._alloc(taken, self.state.max_backends, self.state.next_backend, "backend")
        mac = check_mac(mac, f"backend {name}") if mac is not None else self.resolver(addr)
        taken.add(bid)
        self.state.next_backend = (bid + 1) % self.state.max_backends
        return BackendState(str(addr), backend_port(vip, vs.mode, port), weight, bid, mac, drained)

    def add_backend(self, vip: VipId, addr: IPAddress, port: int | None = None, weight: int = 1,
                    mac: str | None = None) -> BackendState:
        vs = self.vip(vip)
        b = self._new_backend(vs, addr, port, weight, mac, False, self._backend_ids())
        self._zero_stats("backend_stats", b.id, BackendStats)
        self._write_backend(vs, b)
        vs.backends[b.name] = b
        self._publish(vs)
        return b

    def del_backend(self, vip: VipId, addr: IPAddress, port: int | None = None) -> BackendState:
        vs = self.vip(vip)
        b = self.backend(vip, addr, port)
        del vs.backends[b.name]
        self._publish(vs)  # out of the ring first, then gone: pinned flows re-pick
        self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        return b

    def set_drained(self, vip: VipId, addr: IPAddress, port: int | None, drained: bool) -> BackendState:
        b = self.backend(vip, addr, port)
        if b.drained != drained:
            b.drained = drained
            self._publish(self.vip(vip))
        return b

    def set_weight(self, vip: VipId, addr: IPAddress, port: int | None, weight: int) -> BackendState:
        b = self.backend(vip, addr, port)
        check_weight(weight, f"backend {b.name}")
        if b.weight != weight:
            b.weight = weight
            self._publish(self.vip(vip))
        return b

    def set_health(self, vip_name: str, backend_name_: str, up: bool) -> bool:
        """Record a health verdict; True when it changed what the ring holds. The backend's
        entry says it too: a SYN of a flow pinned to a down backend picks again."""
        vs = self.state.vips.get(vip_name)
        b = vs.backends.get(backend_name_) if vs else None
        if vs is None or b is None:
            return False
        health = "up" if up else "down"
        if b.health == health:
            return False
        before = b.effective_weight
        b.health = health
        changed = before != b.effective_weight
        if changed:  # the ring first: a SYN that leaves the backend finds it gone from it
            self._publish(vs)
        self._write_backend(vs, b)
        return changed

    def sync(self) -> None:
        """Write every VIP, backend and ring from the state (after re-creating the maps)."""
        wanted = {bytes(v.id.key()) for v in self.state.vips.values()}
        for key in list(self.maps["vips"].keys()):
            if bytes(key) not in wanted:
                self.maps["vips"].delete(key)
        self._sync_addresses()
        self.sync_refs()
        for vs in self.state.vips.values():
            for b in vs.backends.values():
                self._write_backend(vs, b)
            self._publish(vs)

    # -- declarative ------------------------------------------------------------------------

    def apply(self, specs: list[VipSpec]) -> list[str]:
        """Make the state equal `specs`, touching only what differs; returns the changes.

        Everything is validated (capacity and MAC resolution included) before the first
        map write, so a bad config applies nothing.
        """
        want = {str(s.vip): s for s in specs}
        if self.vip_check is not None:
            self.vip_check([s.vip for s in specs])
        changes: list[str] = []
        drop_vips = [n for n in self.state.vips if n not in want or
                     (self.state.vips[n].mode, self.state.vips[n].hash) != (want[n].mode, want[n].hash)]
        keep_indices = {v.index for n, v in self.state.vips.items() if n not in drop_vips}
        new_vips = [s for n, s in want.items() if n not in self.state.vips or n in drop_vips]
        if len(keep_indices) + len(new_vips) > self.state.max_vips:
            raise FastpathError(f"the config has {len(want)} VIPs, the program holds {self.state.max_vips}",
                                fix="detach and attach with a larger --max-vips")
        # Plan: every new backend validated and its MAC resolved before anything is written.
        taken = self._backend_ids()
        saved_next = self.state.next_backend
        plan_new: dict[str, list[BackendState]] = {}
        try:
            for name, spec in want.items():
                existing = self.state.vips.get(name)
                fresh = existing is None or name in drop_vips
                probe = VipState(str(spec.vip.address), spec.vip.port, spec.vip.proto, spec.mode, 0,
                                 spec.hash, 0, {} if fresh or existing is None else dict(existing.backends))
                for bs in spec.backends:
                    bname = backend_name(spec.vip, spec.mode, bs.address, bs.port)
                    if bname in probe.backends:
                        continue
                    plan_new.setdefault(name, []).append(
                        self._new_backend(probe, bs.address, bs.port, bs.weight, bs.mac, bs.drained, taken))
        except BaseException:
            self.state.next_backend = saved_next
            raise
        # Execute: the VIPs' address table is written once, after every VIP is in place.
        self._batch = True
        try:
            for name in drop_vips:
                self.del_vip(self.state.vips[name].id)
                changes.append(f"removed VIP {name}" if name not in want else f"re-created VIP {name}")
            used = {v.index for v in self.state.vips.values()}
            for name, spec in want.items():
                vs = self.state.vips.get(name)
                if vs is None:
                    self._check_new_vip(spec.vip, spec.mode, spec.hash)
                    vs = self._place_vip(spec.vip, spec.mode, spec.hash, used)
                    if name not in drop_vips:
                        changes.append(f"added VIP {name} ({spec.mode})")
                wanted = {backend_name(spec.vip, spec.mode, b.address, b.port): b for b in spec.backends}
                removed = [vs.backends.pop(n) for n in list(vs.backends) if n not in wanted]
                changes.extend(f"removed backend {b.name} from {name}" for b in removed)
                dirty = bool(removed)
                for b in plan_new.get(name, []):
                    self._zero_stats("backend_stats", b.id, BackendStats)
                    self._write_backend(vs, b)
                    vs.backends[b.name] = b
                    changes.append(f"added backend {b.name} to {name} (weight {b.weight}"
                                   + (", drained)" if b.drained else ")"))
                    dirty = True
                for bname, bs in wanted.items():
                    b = vs.backends[bname]
                    if b.weight != bs.weight:
                        changes.append(f"weight of {bname} in {name}: {b.weight} -> {bs.weight}")
                        b.weight = bs.weight
                        dirty = True
                    if b.drained != bs.drained:
                        changes.append(f"{'drained' if bs.drained else 'undrained'} {bname} in {name}")
                        b.drained = bs.drained
                        dirty = True
                    if bs.mac is not None and bs.mac != b.mac:
                        changes.append(f"MAC of {bname} in {name}: {b.mac} -> {bs.mac}")
                        b.mac = bs.mac
                        self._write_backend(vs, b)
                if dirty:
                    self._publish(vs)
                # Out of the ring first, then gone: flows pinned to them pick a new backend.
                for b in removed:
                    self.maps["backends"].set(ctypes.c_uint32(b.id), Backend())
        finally:
            self._batch = False
            self._sync_addresses()
        return changes

    # -- reading ---------------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, int]]:
        """The global counters (enum lb_stat), summed over CPUs."""
        m = self.maps["stats"]
        return {name: m.sum_percpu(ctypes.c_uint32(i)) for i, name in enumerate(STAT_NAMES)}

    def vip_counters(self, vs: VipState) -> dict[str, int]:
        return self.maps["vip_stats"].sum_percpu(ctypes.c_uint32(vs.index))

    def backend_counters(self, b: BackendState) -> dict[str, int]:
        return self.maps["backend_stats"].sum_percpu(ctypes.c_uint32(b.id))

    def stats(self) -> dict[str, Any]:
        """Every VIP with its counters and its backends' (status, Maglev share, counters)."""
        vips = []
        for name, vs in sorted(self.state.vips.items(), key=lambda kv: kv[1].index):
            table = self.table(vs)
            slots: dict[int, int] = {}
            for bid in table:
                slots[bid] = slots.get(bid, 0) + 1
            backends = []
            for bname, b in sorted(vs.backends.items()):
                backends.append({"backend": bname, "id": b.id, "weight": b.weight, "status": b.status,
                                 "health": b.health, "mac": b.mac, "slots": slots.get(b.id, 0),
                                 "share": round(100.0 * slots.get(b.id, 0) / len(table), 2),
                                 **self.backend_counters(b)})
            vips.append({"vip": name, "mode": vs.mode, "hash": vs.hash, "index": vs.index,
                         **self.vip_counters(vs), "backends": backends})
        return {"vips": vips, "counters": self.counters()}

    def vip_rows(self) -> list[dict[str, Any]]:
        """Every VIP with its backend count, and how many of them take new flows."""
        out = []
        for name, vs in sorted(self.state.vips.items(), key=lambda kv: kv[1].index):
            active = sum(1 for b in vs.backends.values() if b.effective_weight > 0)
            out.append({"vip": name, "mode": vs.mode, "hash": vs.hash, "index": vs.index,
                        "backends": len(vs.backends), "active": active})
        return out

    def backend_rows(self, only: VipId | None = None) -> list[dict[str, Any]]:
        """The backends of `only` (an unknown VIP is an error), or of every VIP."""
        if only is not None:
            self.vip(only)
        keys = ("backend", "weight", "status", "health", "mac", "slots", "share", "packets", "new_flows")
        return [{"vip": v["vip"], **{k: b[k] for k in keys}}
                for v in self.stats()["vips"] if only is None or v["vip"] == str(only)
                for b in v["backends"]]

    def _flow_state(self, key: FlowKey, vip: VipId, by_id: dict[int, BackendState],
                    table: str) -> tuple[BackendState | None, str | None, float | None]:
        """(backend while live, state, idle seconds) of the flow's entry in `table`
        (conntrack or half_open); (None, None, None) without one."""
        flow = self.maps[table].get(key)
        if flow is None:
            return None, None, None
        # bpf_ktime_get_coarse_ns() is CLOCK_MONOTONIC, read at tick granularity; the data
        # plane subtracts modulo 2**64, and so does this.
        since = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - flow.atime) % 2**64
        idle = since / 1e9 if since < 2**63 else 0.0
        short = bool(flow.flags & (LB_FLOW_F_CLOSING | LB_FLOW_F_RESET))
        limit = self.timeouts["LB_CLOSING_TIMEOUT" if short else
                              "LB_TCP_TIMEOUT" if vip.proto == "tcp" else "LB_UDP_TIMEOUT"]
        if idle > limit:
            return None, "expired", idle
        state = ("reset" if flow.flags & LB_FLOW_F_RESET else "closing" if flow.flags & LB_FLOW_F_CLOSING
                 else "half-open" if table == "half_open" else "established")
        return by_id.get(flow.backend), state, idle

    def explain(self, client: IPAddress, sport: int, vip: VipId) -> dict[str, Any]:
        """Which backend a flow from client:sport to `vip` gets, and why."""
        vs = self.vip(vip)
        if client.version != vip.address.version:
            raise FastpathError(f"client {client} and VIP {vip} are of different address families")
        by_id = {b.id: b for b in vs.backends.values()}
        key = FlowKey()
        key.src[:] = client.packed.ljust(16, b"\0")
        key.dst[:] = vip.address.packed.ljust(16, b"\0")
        key.sport = socket.htons(sport)
        key.dport = socket.htons(vip.port)
        key.proto = PROTOS[vip.proto]
        key.family = vip.address.version
        h = flow_hash(client, sport, vip.port, src_only=vs.hash == "src", seed=self.state.seed)
        slot = h % self.state.table_size
        live = self.maps["vips"].get(vip.key())
        ring = (live.ring if live is not None else vs.ring) & 1
        rkey = (vs.index * 2 + ring) * self.state.table_size + slot
        got = self.maps["rings"].get(ctypes.c_uint32(rkey))
        ring_id = int(got.value) if got is not None else LB_NO_BACKEND
        ring_backend = by_id.get(ring_id)
        ct_backend, state, idle = self._flow_state(key, vip, by_id, "conntrack")
        if ct_backend is None:
            # The data plane looks at half_open when conntrack has no live entry.
            half = self._flow_state(key, vip, by_id, "half_open")
            if half[1] is not None and (half[0] is not None or state is None):
                ct_backend, state, idle = half
        out: dict[str, Any] = {
            "vip": str(vip), "client": fmt_addr_port(client, sport), "mode": vs.mode,
            "hash": h, "slot": slot, "ring": ring,
            "maglev_backend": ring_backend.name if ring_backend else None,
            "conntrack_backend": ct_backend.name if ct_backend else None,
            "conntrack_state": state, "idle_s": None if idle is None else round(idle, 1),
        }
        if ct_backend is not None:
            out["backend"] = ct_backend.name
            out["reason"] = (f"conntrack hit ({state} flow pinned to {ct_backend.name}, idle "
                             f"{idle or 0:.0f} s); once it ends, a new connection "
                             f"would take Maglev slot {slot} -> "
                             f"{ring_backend.name if ring_backend else 'no backend'}")
        elif ring_backend is not None:
            out["backend"] = ring_backend.name
            why = "conntrack entry expired" if state == "expired" else "no conntrack entry"
            out["reason"] = f"{why}: Maglev slot {slot} of {self.state.table_size}"
        else:
            out["backend"] = None
            out["reason"] = "no usable backend: packets are dropped (counted as no_backend)"
        return out

