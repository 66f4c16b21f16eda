"""The SYN guard and the balancer chained on one interface, through BPF_PROG_TEST_RUN: the
guard, compiled with FP_CHAIN, tail-calls the balancer where it would pass a frame, so a VIP
frame, even on a port the guard protects for the host's own addresses, comes out as the
balancer's rewrite; an empty slot falls through to XDP_PASS."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastpath.apps.guard.config import GuardConfig
from fastpath.apps.lb import abi
from fastpath.bpf import loader

pytestmark = pytest.mark.bpf


def _sibling(name: str) -> ModuleType:
    """The frame builders and program wrappers of the two programs' own test modules."""
    spec = importlib.util.spec_from_file_location(f"_chain_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


l4 = _sibling("test_l4lb")
sgt = _sibling("test_syn_guard")

VIP = "10.100.0.1:80/tcp"
HOST = "10.100.0.9"  # the balancer host's own address, with a local service on :80
# The guard protects :80 (the VIP's port), :443 and :23 of the host's own address; the VIP
# is not one, so its traffic goes on to the balancer.
CONFIG = GuardConfig(cookie_ports=(80, 443), drop_ports=(23,), cookies="always")


@pytest.fixture(scope="module")
def chained():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    guard = sgt.Guard({"FP_CHAIN": 1, "FP_CHAIN_NEXT": 1})
    prog = loader.load(abi.SPEC, l4.prog_defines())
    env = l4.Env(prog)
    yield guard, env
    env.maps.close()
    prog.close()
    guard.close()


def _slot(guard: sgt.Guard, prog_fd: int | None) -> None:
    table = guard.prog.table("chain")
    if prog_fd is None:
        del table[table.Key(1)]
    else:
        table[table.Key(1)] = table.Leaf(prog_fd)


def test_guard_pass_tail_calls_the_balancer(chained):
    guard, env = chained
    guard.configure(CONFIG, protected=(HOST,))
    _slot(guard, env.prog.prog_fd)
    try:
        # The VIP's SYN and ACK on the guarded port 80: the guard passes them (not its
        # address), and they come out as the balancer's rewrite to the backend Maglev names.
        for flags in ("S", "A", "PA"):
            frame = l4.tcp4("10.100.0.1", 80, 40001, flags=flags)
            backend = env.pick(VIP, l4.CLIENT4, 40001)
            res, delta = guard.run(frame)
            assert res.verdict == "XDP_TX", flags
            assert res.output.hex() == l4.dsr_expected(frame, backend.mac).hex(), flags
            assert delta == {"pass_dest": (1, len(frame))}, (flags, delta)

        # What the guard drops or answers itself never reaches the balancer: the host's own
        # address, on the VIP's port too.
        res, delta = guard.run(l4.tcp4(HOST, 23, 40002))
        assert res.verdict == "XDP_DROP" and "drop_port" in delta
        for port in (443, 80):
            res, delta = guard.run(l4.tcp4(HOST, port, 40003))
            assert res.verdict == "XDP_TX" and "tx_cookie" in delta, port

        # Not a VIP: both pass, the frame unchanged.
        other = l4.udp4("10.9.9.9", 53, 40004)
        res, _ = guard.run(other)
        assert res.verdict == "XDP_PASS" and res.output == other
    finally:
        _slot(guard, None)


def test_empty_slot_falls_through_to_pass(chained):
    guard, _ = chained
    guard.configure(CONFIG, protected=(HOST,))
    frame = l4.tcp4("10.100.0.1", 80, 40005)
    res, delta = guard.run(frame)
    assert res.verdict == "XDP_PASS" and res.output == frame
    assert delta and all(k.startswith("pass") for k in delta), delta
