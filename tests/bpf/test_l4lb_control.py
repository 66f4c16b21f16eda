"""The balancer's control plane against the real maps of a loaded l4lb: double-buffered
ring switch-over, declarative apply (only the difference, idempotent, all-or-nothing),
capacity limits, re-sync from state."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os

import pytest

from fastpath.apps.lb import abi, config, maglev, store
from fastpath.apps.lb.balancer import Balancer
from fastpath.apps.lb.maps import LbMaps
from fastpath.bpf import loader
from fastpath.errors import FastpathError

pytestmark = pytest.mark.bpf

DEFINES = {**abi.TUNABLES, "LB_RING_SIZE": 4099, "LB_MAX_VIPS": 3, "LB_MAX_BACKENDS": 8,
           "LB_CONNTRACK_SIZE": 4096}


def mac_of(addr) -> str:
    last = int(ipaddress.ip_address(addr)) & 0xFF
    if last == 99:
        raise FastpathError(f"backend {addr}: cannot resolve its MAC address on eth0")
    return f"02:00:00:00:00:{last:02x}"


@pytest.fixture(scope="module")
def prog():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    p = loader.load(abi.SPEC, DEFINES)
    yield p
    p.close()


@pytest.fixture
def bal(prog):
    """A balancer with empty state over the program's maps, emptied first."""
    maps = LbMaps.from_program(prog)
    for name in ("vips", "vip_addrs"):
        maps[name].clear()
    for i in range(DEFINES["LB_MAX_BACKENDS"]):
        maps["backends"].set(ctypes.c_uint32(i), abi.Backend())
    try:
        yield Balancer(maps, store.LbState.for_defines(DEFINES), mac_of)
    finally:
        maps.close()


def ring(bal: Balancer, vs: store.VipState, which: int) -> list[int]:
    size = bal.state.table_size
    base = (vs.index * 2 + which) * size
    m = bal.maps["rings"]
    return [m.get(ctypes.c_uint32(base + i)).value for i in range(size)]


def snapshot(bal: Balancer) -> tuple:
    vips = sorted((bytes(k), bytes(v)) for k, v in bal.maps["vips"].items())
    addrs = sorted((bytes(k), int(v.value)) for k, v in bal.maps["vip_addrs"].items())
    backends = [bytes(bal.maps["backends"].get(ctypes.c_uint32(i))) for i in range(8)]
    return vips, addrs, backends, json.dumps(bal.state.to_json(), sort_keys=True)


def specs(weights: dict[str, int], mode: str = "dsr", extra: dict | None = None) -> list[config.VipSpec]:
    vips = {"10.0.0.10:80/tcp": {"mode": mode, "backends": dict(weights)}}
    vips.update(extra or {})
    return config.parse_config({"vips": vips})


def test_ring_switch_over_writes_the_idle_ring_then_flips(bal):
    vip = config.parse_vip("10.0.0.10:80/tcp")
    vs = bal.add_vip(vip)
    assert bal.maps["vips"].get(vip.key()).backends == 0
    bal.add_backend(vip, ipaddress.ip_address("10.0.1.1"))
    live = bal.maps["vips"].get(vip.key())
    assert (live.ring, live.backends) == (1, 1)
    first = ring(bal, vs, 1)
    assert set(first) == {vs.backends["10.0.1.1:80"].id}
    bal.add_backend(vip, ipaddress.ip_address("10.0.1.2"))
    live = bal.maps["vips"].get(vip.key())
    assert (live.ring, live.backends) == (0, 2)
    assert ring(bal, vs, 1) == first, "the ring that was live is not touched by the rebuild"
    assert ring(bal, vs, 0) == bal.table(vs)
    shares = maglev.shares(ring(bal, vs, 0))
    assert sorted(shares.values()) == [2049, 2050]


def test_apply_changes_only_the_difference_and_is_idempotent(bal):
    cfg = specs({"10.0.1.1": 1, "10.0.1.2": 1, "10.0.1.3": 1},
                 extra={"[fd00::10]:53/udp": {"mode": "nat", "backends": {"[fd00::21]:5353": 2}}})
    changes = bal.apply(cfg)
    assert len(changes) == 6
    assert bal.apply(cfg) == []
    before = snapshot(bal)
    assert bal.apply(cfg) == [] and snapshot(bal) == before
    vs = bal.vip(config.parse_vip("10.0.0.10:80/tcp"))
    ids = {n: b.id for n, b in vs.backends.items()}
    v6 = {"[fd00::10]:53/udp": {"mode": "nat", "backends": {"[fd00::21]:5353": 2}}}
    changes = bal.apply(specs({"10.0.1.1": 3, "10.0.1.2": 1, "10.0.1.4": 1}, extra=v6))
    assert sorted(changes) == sorted([
        "removed backend 10.0.1.3:80 from 10.0.0.10:80/tcp",
        "added backend 10.0.1.4:80 to 10.0.0.10:80/tcp (weight 1)",
        "weight of 10.0.1.1:80 in 10.0.0.10:80/tcp: 1 -> 3",
    ])
    vs = bal.vip(config.parse_vip("10.0.0.10:80/tcp"))
    assert vs.backends["10.0.1.1:80"].id == ids["10.0.1.1:80"], "kept backends keep their ids"
    assert not bal.maps["backends"].get(ctypes.c_uint32(ids["10.0.1.3:80"])).flags
    live = bal.maps["vips"].get(vs.id.key())
    assert ring(bal, vs, live.ring) == bal.table(vs)
    # the nat VIP is counted for reply translation, the v6 address is known as a VIP address
    assert bal.maps["config"].get(ctypes.c_uint32(0)).nat_vips == 1
    assert len(list(bal.maps["vip_addrs"].keys())) == 2


def test_apply_drain_and_mode_change(bal):
    bal.apply(specs({"10.0.1.1": 1, "10.0.1.2": 1}))
    changes = bal.apply(config.parse_config({"vips": {"10.0.0.10:80/tcp": {"backends": {
        "10.0.1.1": 1, "10.0.1.2": {"drain": True}}}}}))
    assert changes == ["drained 10.0.1.2:80 in 10.0.0.10:80/tcp"]
    vs = bal.vip(config.parse_vip("10.0.0.10:80/tcp"))
    assert set(ring(bal, vs, bal.maps["vips"].get(vs.id.key()).ring)) == {vs.backends["10.0.1.1:80"].id}
    changes = bal.apply(specs({"10.0.1.1:8080": 1}, mode="nat"))
    assert changes[0] == "re-created VIP 10.0.0.10:80/tcp"
    vs = bal.vip(config.parse_vip("10.0.0.10:80/tcp"))
    assert vs.mode == "nat" and list(vs.backends) == ["10.0.1.1:8080"]
    assert bal.maps["vips"].get(vs.id.key()).mode == abi.MODES["nat"]


def test_apply_is_all_or_nothing(bal):
    bal.apply(specs({"10.0.1.1": 1}))
    before = snapshot(bal)
    # an unresolvable backend MAC, after valid changes in the same file
    with pytest.raises(FastpathError, match="cannot resolve its MAC"):
        bal.apply(specs({"10.0.1.1": 2, "10.0.1.2": 1, "10.0.1.99": 1},
                         extra={"10.0.0.11:80/tcp": {"backends": {"10.0.1.5": 1}}}))
    assert snapshot(bal) == before
    # more VIPs than the program holds
    extra = {f"10.0.0.{i}:80/tcp": {} for i in range(20, 23)}
    with pytest.raises(FastpathError, match="holds 3"):
        bal.apply(specs({"10.0.1.1": 1}, extra=extra))
    assert snapshot(bal) == before
    # more backends than the program holds
    with pytest.raises(FastpathError, match="no room for another backend"):
        bal.apply(specs({f"10.0.1.{i}": 1 for i in range(1, 12)}))
    assert snapshot(bal) == before


def test_apply_writes_the_vip_address_table_once_with_every_vips_count(bal, monkeypatch):
    """Applying N VIPs writes each VIP address once (a re-write after every VIP made a
    1000-VIP apply cost 10^6 map writes), and the table counts the VIPs on each address."""
    writes: list[bytes] = []
    addrs = bal.maps["vip_addrs"]
    real_set = addrs.set
    monkeypatch.setattr(addrs, "set", lambda k, v: (writes.append(bytes(k)), real_set(k, v))[1])

    def table() -> dict[str, int]:
        return {str(ipaddress.ip_address(bytes(k.addr)[:4])): int(v.value) for k, v in addrs.items()}

    bal.apply(specs({"10.0.1.1": 1}, extra={"10.0.0.10:443/tcp": {"backends": {"10.0.1.2": 1}},
                                            "10.0.0.11:80/tcp": {"backends": {"10.0.1.3": 1}}}))
    assert table() == {"10.0.0.10": 2, "10.0.0.11": 1}
    assert len(writes) == 2
    writes.clear()
    bal.apply(specs({"10.0.1.1": 1}))  # two VIPs gone, one address with them
    assert table() == {"10.0.0.10": 1} and len(writes) == 1


V, A = config.parse_vip, ipaddress.ip_address


@pytest.mark.parametrize("action,needle", [
    (lambda b: b.add_vip(V("10.0.0.10:80/tcp")), "already exists"),
    (lambda b: b.add_vip(V("10.0.0.12:80/tcp"), "gre"), "unknown mode"),
    (lambda b: b.del_vip(V("10.0.0.13:80/tcp")), "unknown VIP"),
    (lambda b: b.add_backend(V("10.0.0.13:80/tcp"), A("10.0.1.9")),
     "unknown VIP"),
    (lambda b: b.add_backend(V("10.0.0.10:80/tcp"), A("10.0.1.1")),
     "already has backend"),
    (lambda b: b.add_backend(V("10.0.0.10:80/tcp"), A("10.0.1.9"), weight=0),
     "out of range"),
    (lambda b: b.add_backend(V("10.0.0.10:80/tcp"), A("10.0.1.99")),
     "cannot resolve"),
    (lambda b: b.add_backend(V("10.0.0.10:80/tcp"), A("10.0.1.9"), 81),
     "cannot change the port"),
    (lambda b: b.del_backend(V("10.0.0.10:80/tcp"), A("10.0.1.9")),
     "has no backend"),
    (lambda b: b.set_weight(V("10.0.0.10:80/tcp"), A("10.0.1.1"), None, 5000),
     "out of range"),
])
def test_bad_operations_change_nothing(bal, action, needle):
    bal.apply(specs({"10.0.1.1": 1}))
    before = snapshot(bal)
    with pytest.raises(FastpathError, match=needle):
        action(bal)
    assert snapshot(bal) == before


def test_del_vip_cleans_maps(bal):
    bal.apply(specs({"10.0.1.1": 1}, mode="nat"))
    vs = bal.vip(config.parse_vip("10.0.0.10:80/tcp"))
    bid = vs.backends["10.0.1.1:80"].id
    ref = bal.maps["vip_refs"].get(ctypes.c_uint32(vs.index))
    assert bytes(ref.vip) == bytes(vs.id.key()) and ref.mode == abi.MODES["nat"]
    bal.del_vip(vs.id)
    assert bytes(bal.maps["vip_refs"].get(ctypes.c_uint32(vs.index))) == bytes(abi.VipRef())
    assert list(bal.maps["vips"].keys()) == []
    assert list(bal.maps["vip_addrs"].keys()) == []
    assert bal.maps["config"].get(ctypes.c_uint32(0)).nat_vips == 0
    assert bal.maps["config"].get(ctypes.c_uint32(0)).vip_addr_bits == 0
    assert bal.maps["backends"].get(ctypes.c_uint32(bid)).flags == 0


def test_sync_restores_maps_from_state(bal):
    bal.apply(specs({"10.0.1.1": 2, "10.0.1.2": 1}))
    state = store.LbState.from_json(bal.state.to_json())
    vs = state.vips["10.0.0.10:80/tcp"]
    # wipe the data plane as a fresh attach would find it, then sync
    bal.maps["vips"].delete(vs.id.key())
    for b in vs.backends.values():
        bal.maps["backends"].set(ctypes.c_uint32(b.id), abi.Backend())
    fresh = Balancer(bal.maps, state, mac_of)
    fresh.sync()
    live = bal.maps["vips"].get(vs.id.key())
    assert live.backends == 2
    assert ring(fresh, vs, live.ring) == fresh.table(vs)
    assert all(bal.maps["backends"].get(ctypes.c_uint32(b.id)).flags == abi.LB_BACKEND_F_EXISTS
               for b in vs.backends.values())


def test_ring_size_mismatch_is_refused(bal):
    with pytest.raises(FastpathError, match="rings hold 4099"):
        Balancer(bal.maps, store.LbState.for_defines(abi.TUNABLES), mac_of)
