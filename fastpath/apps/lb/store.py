"""The balancer's desired state and where it is kept.

Each attached balancer has one state file, `/run/fastpath/lb/<netns or "root">/<ifname>.json`:
its VIPs, their backends (weight, drain, health, MAC, the id the data plane knows them by)
and the sizes and seed the program was built with. The maps are rebuilt from it when the
program is re-created; every change is made under the file's lock (`locked`), so
`fastpath lb` commands and the health checker never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastpath.apps.lb import maglev
from fastpath.apps.lb.abi import LB_VIP_F_HASH_SRC_ONLY, TUNABLES, IPAddress
from fastpath.apps.lb.config import VipId, fmt_addr_port
from fastpath.core.jsonstate import write_json
from fastpath.core.paths import RUN_ROOT


@dataclass
class BackendState:
    address: str
    port: int            # destination port (nat) or the VIP's port (dsr, ipip)
    weight: int
    id: int
    mac: str
    drained: bool = False
    health: str = "unknown"   # "up", "down" (drained by health checks) or "unknown"

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def name(self) -> str:
        """The backend's identity in the Maglev table: ADDR:PORT, the same on every node."""
        return fmt_addr_port(self.ip, self.port)

    @property
    def effective_weight(self) -> int:
        return 0 if self.drained or self.health == "down" else self.weight

    @property
    def status(self) -> str:
        if self.drained:
            return "drained"
        if self.health == "down":
            return "down"
        return "active"


@dataclass
class VipState:
    address: str
    port: int
    proto: str
    mode: str
    index: int
    hash: str = "5tuple"
    ring: int = 0
    backends: dict[str, BackendState] = field(default_factory=dict)

    @property
    def id(self) -> VipId:
        return VipId(ipaddress.ip_address(self.address), self.port, self.proto)

    @property
    def flags(self) -> int:
        return LB_VIP_F_HASH_SRC_ONLY if self.hash == "src" else 0

    def weights(self) -> dict[str, int]:
        return {b.name: b.effective_weight for b in self.backends.values()}


@dataclass
class LbState:
    seed: int = 0
    table_size: int = maglev.DEFAULT_TABLE_SIZE
    max_vips: int = TUNABLES["LB_MAX_VIPS"]
    max_backends: int = TUNABLES["LB_MAX_BACKENDS"]
    next_vip: int = 0
    next_backend: int = 0
    vips: dict[str, VipState] = field(default_factory=dict)
    # The `bgp` section of the last `lb apply` (fastpath.apps.lb.bgp.BgpSpec as JSON), or None.
    bgp: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LbState:
        vips = {}
        for name, v in data.get("vips", {}).items():
            backends = {n: BackendState(**b) for n, b in v.get("backends", {}).items()}
            vips[name] = VipState(**{**v, "backends": backends})
        return cls(**{**data, "vips": vips})

    @classmethod
    def for_defines(cls, defines: Mapping[str, int | str]) -> LbState:
        d = {**TUNABLES, **defines}
        return cls(seed=int(d["LB_HASH_SEED"]), table_size=int(d["LB_RING_SIZE"]),
                   max_vips=int(d["LB_MAX_VIPS"]), max_backends=int(d["LB_MAX_BACKENDS"]))



# ---------------------------------------------------------------------------------------
# state files

def state_path(ifname: str, netns: str | None) -> Path:
    return RUN_ROOT / "lb" / (netns or "root") / f"{ifname}.json"


def load_state(ifname: str, netns: str | None) -> LbState | None:
    try:
        return LbState.from_json(json.loads(state_path(ifname, netns).read_text()))
    except FileNotFoundError:
        return None


def save_state(ifname: str, netns: str | None, state: LbState) -> None:
    write_json(state_path(ifname, netns), state.to_json())


# Beside the state file: the BGP speaker's configuration, control socket and log
# (fastpath.apps.lb.speaker), removed with the state even when the speaker was killed.
SPEAKER_SUFFIXES = (".bird.conf", ".bird.ctl", ".bird.log")


def remove_state(ifname: str, netns: str | None) -> None:
    path = state_path(ifname, netns)
    for p in (path, path.with_suffix(".lock"), *(path.with_suffix(s) for s in SPEAKER_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
        path.parent.parent.rmdir()


@contextlib.contextmanager
def locked(ifname: str, netns: str | None) -> Iterator[None]:
    path = state_path(ifname, netns).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
        # A failed attach (or detach of nothing) leaves no state: leave no lock file either.
        if not state_path(ifname, netns).exists():
            remove_state(ifname, netns)


