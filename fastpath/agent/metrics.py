"""Prometheus metrics of every attached program, read from the pinned maps at scrape time.

Served with prometheus-client (the exposition format is the library's). Families:

  fastpath_xdp_packets_total{netns,interface,program,counter}   per-CPU counters, summed
  fastpath_xdp_bytes_total{netns,interface,program,counter}
  fastpath_lb_vip_total{netns,interface,program,vip,counter}      packets, bytes, new_flows,
                                                                  lru_hits, lru_misses, no_backend
  fastpath_lb_backend_total{netns,interface,program,vip,backend,counter}   packets, bytes, new_flows
  fastpath_lb_backend_up{...,vip,backend}           1 unless a health check marked it down
  fastpath_lb_backend_health{...,vip,backend,state} 1 for its state: up, down or unknown
  fastpath_lb_backend_weight{...,vip,backend}       the configured weight
  fastpath_lb_backend_effective_weight{...}         the weight in the Maglev ring (0: drained/down)
  fastpath_attachment_info{netns,interface,program,mode,prog_id}   1 per attached program
  fastpath_attachment_generation{netns,interface,program}          hot reloads + 1
  fastpath_agent_info{version,config}
  fastpath_agent_applies_total{result}              ok, unchanged, failed, refused
  fastpath_agent_last_apply_success                 1 when the last apply (or refusal) left
                                                    the host matching the config
  fastpath_agent_last_apply_timestamp_seconds
  fastpath_scrape_errors{netns,interface,program}   1 when a program's maps could not be read

A counter of a new program is one reader in READERS: (packets, bytes) per counter name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server

from fastpath import __version__
from fastpath.agent.nodeconfig import MetricsConfig
from fastpath.apps.count import xdp_count
from fastpath.apps.decap import decap
from fastpath.apps.guard import synguard
from fastpath.apps.lb import program as lb_program
from fastpath.bpf import xdp
from fastpath.core.namespaces import in_netns
from fastpath.errors import FastpathError

Counters = dict[str, tuple[int, int]]


def _count(att: xdp.Attachment) -> Counters:
    return {k: (v.packets, v.bytes) for k, v in xdp_count.read_counters(att).items()}


def _decap(att: xdp.Attachment) -> Counters:
    return {k: (v["packets"], v["bytes"]) for k, v in decap.read_counters(att).items()}


READERS: dict[str, Callable[[xdp.Attachment], Counters]] = {
    synguard.PROGRAM: synguard.read_counters,
    "decap": _decap,
    xdp_count.SPEC.name: _count,
}


@dataclass
class AgentStatus:
    """What the agent tells the metrics about itself; written by the agent's main thread."""

    config: str = ""
    applies: dict[str, int] = field(default_factory=lambda: {"ok": 0, "unchanged": 0, "failed": 0,
                                                              "refused": 0})
    last_success: bool = False
    last_time: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, result: str, success: bool) -> None:
        with self.lock:
            self.applies[result] = self.applies.get(result, 0) + 1
            self.last_success = success
            self.last_time = time.time()


ATT = ["netns", "interface", "program"]


class Collector:
    """A prometheus-client collector that reads every program's maps on each scrape."""

    def __init__(self, status: AgentStatus | None = None) -> None:
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # the families depend on what is attached: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("fastpath_xdp_packets", "Packets counted by an XDP program's "
                                      "per-CPU counters, summed over CPUs", labels=[*ATT, "counter"])
        nbytes = CounterMetricFamily("fastpath_xdp_bytes", "Bytes counted by an XDP program's per-CPU "
                                     "counters, summed over CPUs", labels=[*ATT, "counter"])
        info = GaugeMetricFamily("fastpath_attachment_info", "An XDP program fastpath attached",
                                 labels=[*ATT, "mode", "prog_id"])
        generation = GaugeMetricFamily("fastpath_attachment_generation",
                                       "Hot reloads of the program plus one", labels=ATT)
        errors = GaugeMetricFamily("fastpath_scrape_errors", "1 when the program's maps could not be read",
                                   labels=ATT)
        lb = _LbFamilies()
        for att in xdp.attachments():
            if att.program == xdp.PEER_PROGRAM or xdp.dead_reason(att) is not None:
                continue
            base = [att.netns or "root", att.ifname, att.program]
            info.add_metric([*base, att.mode, str(att.prog_id)], 1)
            generation.add_metric(base, att.generation)
            try:
                if att.program == "l4lb":
                    lb.add(att, base, packets, nbytes)
                elif att.program in READERS:
                    for name, (p, b) in READERS[att.program](att).items():
                        packets.add_metric([*base, name], p)
                        nbytes.add_metric([*base, name], b)
                errors.add_metric(base, 0)
            except (FastpathError, OSError):
                errors.add_metric(base, 1)
        yield from (packets, nbytes, info, generation, errors, *lb.families())
        if self.status is not None:
            yield from self._agent()

    def _agent(self) -> Iterator[Metric]:
        assert self.status is not None
        with self.status.lock:
            applies = dict(self.status.applies)
            success, when, config = self.status.last_success, self.status.last_time, self.status.config
        info = InfoMetricFamily("fastpath_agent", "The fastpath agent")
        info.add_metric([], {"version": __version__, "config": config})
        total = CounterMetricFamily("fastpath_agent_applies", "Applies of the node config, by result",
                                    labels=["result"])
        for result, n in sorted(applies.items()):
            total.add_metric([result], n)
        ok = GaugeMetricFamily("fastpath_agent_last_apply_success",
                               "1 when the last apply left the host matching the config")
        ok.add_metric([], 1 if success else 0)
        stamp = GaugeMetricFamily("fastpath_agent_last_apply_timestamp_seconds", "When the last apply ended")
        stamp.add_metric([], when)
        yield from (info, total, ok, stamp)


class _LbFamilies:
    def __init__(self) -> None:
        vb = [*ATT, "vip", "backend"]
        self.vip = CounterMetricFamily("fastpath_lb_vip", "A VIP's counters", labels=[*ATT, "vip", "counter"])
        self.backend = CounterMetricFamily("fastpath_lb_backend", "A backend's counters",
                                           labels=[*vb, "counter"])
        self.up = GaugeMetricFamily("fastpath_lb_backend_up", "1 unless health checks marked the backend "
                                    "down", labels=vb)
        self.health = GaugeMetricFamily("fastpath_lb_backend_health", "1 for the backend's health state",
                                        labels=[*vb, "state"])
        self.weight = GaugeMetricFamily("fastpath_lb_backend_weight", "The backend's configured weight",
                                        labels=vb)
        self.effective = GaugeMetricFamily("fastpath_lb_backend_effective_weight",
                                           "The backend's weight in the Maglev ring (0: drained or down)",
                                           labels=vb)

    def add(self, att: xdp.Attachment, base: list[str], packets: CounterMetricFamily,
            nbytes: CounterMetricFamily) -> None:
        with lb_program.session(att.ifname, att.netns, write=False) as bal:
            data: dict[str, Any] = bal.stats()
            weights = {(name, b.name): (b.weight, b.effective_weight)
                       for name, vs in bal.state.vips.items() for b in vs.backends.values()}
        for name, value in data["counters"].items():
            packets.add_metric([*base, name], value["packets"])
            nbytes.add_metric([*base, name], value["bytes"])
        for v in data["vips"]:
            for counter in ("packets", "bytes", "new_flows", "lru_hits", "lru_misses", "no_backend"):
                if counter in v:
                    self.vip.add_metric([*base, v["vip"], counter], v[counter])
            for b in v["backends"]:
                labels = [*base, v["vip"], b["backend"]]
                for counter in ("packets", "bytes", "new_flows"):
                    if counter in b:
                        self.backend.add_metric([*labels, counter], b[counter])
                self.up.add_metric(labels, 0 if b["health"] == "down" else 1)
                for state in ("up", "down", "unknown"):
                    self.health.add_metric([*labels, state], 1 if b["health"] == state else 0)
                weight, effective = weights.get((v["vip"], b["backend"]), (b["weight"], 0))
                self.weight.add_metric(labels, weight)
                self.effective.add_metric(labels, effective)

    def families(self) -> tuple[Metric, ...]:
        return (self.vip, self.backend, self.up, self.health, self.weight, self.effective)


def registry(status: AgentStatus | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(status))
    return reg


class MetricsServer:
    """The HTTP listener, bound in the configured namespace (its socket stays there)."""

    def __init__(self, config: MetricsConfig, reg: CollectorRegistry) -> None:
        self.config = config
        try:
            with in_netns(config.netns):
                self.httpd, self.thread = start_http_server(config.port, config.host, registry=reg)
        except OSError as exc:
            where = f" in namespace {config.netns}" if config.netns else ""
            raise FastpathError(f"metrics: cannot listen on {config.host}:{config.port}{where}: "
                                f"{exc.strerror or exc}", fix="choose another metrics.listen port") from None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
