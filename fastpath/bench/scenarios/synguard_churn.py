"""`synguard-churn`: what the XDP SYN guard (bpf/syn_guard.c) costs new connections when
there is no attack.

One veth pair, a client namespace and a server namespace running fastpath-epoll-echo; the
client is fastpath-echo-bench with --new-conn-per-request (32 connections at a time, each
connects, sends 64 bytes, reads the echo and closes with a RST), which counts connections
per second and checks every echoed byte. Contenders, measured in turn on the same lab:
- `none`: no guard, the baseline;
- `adaptive`: the guard as `fastpath xdp attach` sets it up by default: adaptive cookies
  (with no flood, SYNs pass to the stack, handshakes are the kernel's own), SYNPROXY rules
  on demand (not armed: no conntrack), and `auto` mode, which on a veth is generic (skb)
  mode; the run checks all three, and that no cookie was sent;
- `adaptive-native`: the same attached natively (`--mode native`);
- `adaptive-synproxy`: the same with the SYNPROXY rules in from attach on (`--synproxy
  always`, which turns conntrack on in the namespace);
- `always`: cookies for every SYN (`--cookies always`, native): SYN-ACKs from XDP, every
  connection opened by SYNPROXY;
- `xdp-floor`, `xdp-floor-generic`: no guard, but the counting program (fastpath count)
  attached natively or in generic mode: what XDP on a veth pair costs by itself.
Native contenders make the runtime put its pass program on the client's end of the pair
(veth delivers XDP_TX frames only to a peer with a program), and veth then takes NAPI's path
on both ends, copying every frame the stack sends into a page of its own; `none` runs with no
program on either end, so `xdp-floor` vs `none` is that veth cost. On a quiet 2-CPU VM
(6.18), before the rules were on demand: xdp-floor 0.78x of none, xdp-floor-generic 0.99x;
the guard native 0.63x, generic 0.81x, generic with its nft table removed 0.96x: of the gap,
the veth native path was about a fifth and conntrack about a sixth.
Target: adaptive keeps >= 90 % of the unguarded connection rate (a ratio within one run,
so load elsewhere on the machine affects every contender alike; on a shared machine the
spread of one contender's samples can exceed that, so read the p25-p75 columns too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from fastpath.apps.count import xdp_count
from fastpath.apps.guard import synguard as sg
from fastpath.apps.guard.config import GuardConfig
from fastpath.bench import BenchContext, Metric, Scenario, Target, register_scenario
from fastpath.bpf import xdp
from fastpath.errors import CapabilityError, FastpathError

PORT = 8080
SERVER = "10.68.0.2"
TOPOLOGY: dict[str, Any] = {
    "name": "fpchurn",
    "nodes": {"client": {}, "server": {}},
    "links": [{"endpoints": ["client:eth0", "server:eth0"]}],
    "addresses": {"client:eth0": ["10.68.0.1/24"], "server:eth0": [f"{SERVER}/24"]},
}


@register_scenario
class SynguardChurn(Scenario):
    name = "synguard-churn"
    description = "new connections/s through the XDP SYN guard with no attack: adaptive, always, no guard"
    metrics = [Metric("conns_per_s", "connections/s", "higher"),
               Metric("conn_p99_us", "µs (p99 connect+echo+close)", "lower")]
    baseline = "none"
    targets = [Target("conns_per_s", "adaptive", ">=", 0.9, versus="none")]
    repeat, quick_repeat, warmup = 7, 1, 1

    def contenders(self) -> list[str]:
        return ["adaptive", "adaptive-native", "adaptive-synproxy", "always", "xdp-floor",
                "xdp-floor-generic", "none"]

    def setup(self, ctx: BenchContext) -> None:
        from fastpath.netns import Lab, netns_unavailable_reason

        if os.geteuid() != 0:
            raise CapabilityError("the churn lab needs root")
        reason = netns_unavailable_reason()
        if reason:
            raise CapabilityError(reason)
        if shutil.which("nft") is None:
            raise CapabilityError("nft is missing", fix="apt-get install nftables")
        echo = shutil.which("fastpath-epoll-echo") or str(Path(sys.executable).parent / "fastpath-epoll-echo")
        load = shutil.which("fastpath-echo-bench") or str(Path(sys.executable).parent / "fastpath-echo-bench")
        if not (Path(echo).exists() and Path(load).exists()):
            raise CapabilityError("fastpath-epoll-echo / fastpath-echo-bench are not built",
                                  fix="run scripts/setup-host.sh")
        self._load = load
        self._lab = Lab.up(TOPOLOGY, name=f"fpch{os.getpid() % 100000}")
        self._ns = self._lab.netns("server")
        self._lab.spawn("server", [echo, "--addr", "0.0.0.0", "--port", str(PORT), "--threads", "1"])
        self._client(0.3, 0.0)  # the service answers before anything is measured

    def _client(self, seconds: float, warmup: float) -> dict[str, Any]:
        argv = [self._load, "--addr", SERVER, "--port", str(PORT), "--threads", "2", "--size", "64",
                "--duration", str(seconds), "--warmup", str(warmup), "--connections", "32",
                "--new-conn-per-request"]
        res = self._lab.run("client", argv, timeout=seconds + warmup + 60, check=False)
        err = res.stderr.strip().splitlines()[-1:] or [f"exit status {res.returncode}"]
        if not res.stdout.strip():
            raise FastpathError(f"synguard-churn: fastpath-echo-bench: {err[0]}")
        out: dict[str, Any] = json.loads(res.stdout)
        if out["verify_failures"] or not out["conns"] or out["connection_errors"] > out["conns"] // 100:
            raise FastpathError(f"synguard-churn: {out['conns']} connections, {out['connection_errors']} "
                                f"connection errors, {out['verify_failures']} wrong echoes: {err[0]}")
        return out

    def _guard(self, contender: str) -> None:
        """The guard for `contender`, and its premise: adaptive as attach sets it up by default
        (auto mode, which on a veth is generic; the SYNPROXY rules on demand, not armed)."""
        if contender == "always":
            sg.attach("eth0", self._ns, "native", GuardConfig(cookie_ports=(PORT,), cookies="always"))
            return
        mode = "native" if contender == "adaptive-native" else "auto"
        synproxy = "always" if contender == "adaptive-synproxy" else "on-demand"
        cfg = GuardConfig(cookie_ports=(PORT,), synproxy=synproxy)
        att = sg.attach("eth0", self._ns, mode, cfg).attachment
        proxy = sg.synproxy_summary(att)
        want = ("native" if contender == "adaptive-native" else "generic", synproxy == "always")
        if (att.mode, bool(proxy["armed"])) != want:
            raise FastpathError(f"synguard-churn {contender}: the guard runs in {att.mode} mode with its "
                                f"SYNPROXY rules {'armed' if proxy['armed'] else 'not armed'}; expected "
                                f"{want[0]}, {'armed' if want[1] else 'not armed'}")

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        kind = "xdp-floor" if contender.startswith("xdp-floor") else contender
        if kind == "xdp-floor":
            mode = "generic" if contender.endswith("-generic") else "native"
            xdp.attach(xdp_count.SPEC, "eth0", self._ns, mode, {"WATCH_PORT": PORT, "GENERATION": 1})
        elif kind != "none":
            self._guard(contender)
        try:
            out = self._client(ctx.pick(3.0, 1.0), ctx.pick(0.5, 0.2))
            if kind not in ("xdp-floor", "none"):
                c = {k: v[0] for k, v in sg.read_counters(sg.attachment("eth0", self._ns)).items()}
                ctx.log(f"synguard-churn {contender}: {out['conn_per_s']:,.0f} conn/s, "
                        f"SYNs passed {c['pass_syn']:,}, cookies sent {c['tx_cookie']:,}, "
                        f"ports switched to cookies {c['to_cookie']}")
                if kind != "always" and (c["tx_cookie"] or c["to_cookie"]):
                    raise FastpathError(f"synguard-churn {contender}: with no attack the port switched to "
                                        f"cookies ({c['to_cookie']} switches, {c['tx_cookie']} cookies)")
        finally:
            if kind == "xdp-floor":
                xdp.detach("eth0", self._ns, program=xdp_count.SPEC.name)
            elif kind != "none":
                sg.detach("eth0", self._ns)
        return {"conns_per_s": float(out["conn_per_s"]), "conn_p99_us": float(out["conn_latency_us"]["p99"])}

    def teardown(self, ctx: BenchContext) -> None:
        lab = getattr(self, "_lab", None)
        if lab is not None:
            with contextlib.suppress(FastpathError):
                sg.detach("eth0", self._ns)
            with contextlib.suppress(FastpathError):
                xdp.detach("eth0", self._ns)
            lab.down()
