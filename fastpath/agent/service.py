"""`fastpath agent`: keep a node matching its config.

At start the agent reads the config, plans and applies it (what is already attached and
matches is adopted untouched, so a restarted agent does not disturb traffic), starts the
metrics listener and tells systemd it is ready. Then, until SIGTERM or SIGINT, each tick it
runs the balancers' health checks that are due and polls for events (fastpath.agent.events).
SIGHUP re-reads the file: a file that does not parse, or a plan that fails (rolled back), is
refused with an event and the running state kept. On SIGTERM the agent exits and leaves the
data plane running; with `detach_on_exit` it detaches what the config made first.

Signals only set flags; all work happens in the main thread, so an apply is never cut short.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fastpath import __version__
from fastpath.agent import metrics, nodeconfig, notify, plan
from fastpath.agent.events import Events, Watcher
from fastpath.agent.nodeconfig import HealthSettings, NodeConfig
from fastpath.apps.lb import health
from fastpath.apps.lb import program as lb_program
from fastpath.apps.lb import store as lb_store
from fastpath.errors import FastpathError

DEFAULT_POLL = 1.0


@dataclass
class _Checks:
    """Health checks of one balancer: its settings, hysteresis and when the next round is due."""

    settings: HealthSettings
    checker: health.HealthChecker
    due: float = 0.0


@dataclass
class Agent:
    path: Path
    detach_on_exit: bool = False
    poll: float = DEFAULT_POLL
    events: Events = field(default_factory=Events)

    def __post_init__(self) -> None:
        self.config: NodeConfig | None = None
        self.status = metrics.AgentStatus(config=str(self.path))
        self.watcher = Watcher(self.events)
        self.server: metrics.MetricsServer | None = None
        self.checks: dict[tuple[str | None, str], _Checks] = {}
        self.wake = threading.Event()
        self.stop = False
        self.reload = False

    # -- signals ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True
        self.wake.set()

    # -- applying ------------------------------------------------------------------------------

    def apply(self, config: NodeConfig) -> bool:
        """Plan and apply `config`; events say what happened. True when the host matches it."""
        try:
            p = plan.make_plan(config)
            if not p.steps:
                self.events.emit("config_unchanged", config=str(self.path))
                self.status.record("unchanged", True)
                plan.write_managed(p.managed)
                return True
            results = plan.execute(p)
        except plan.ApplyError as exc:
            self.events.emit("apply_failed", config=str(self.path), error=str(exc),
                             rolled_back=exc.rolled_back)
            self.status.record("failed", False)
            return False
        except FastpathError as exc:
            self.events.emit("config_refused", config=str(self.path), error=str(exc))
            self.status.record("refused", False)
            return False
        except OSError as exc:  # reading what runs failed (a map, a state file): nothing applied
            self.events.emit("apply_failed", config=str(self.path), error=str(exc), rolled_back=0)
            self.status.record("failed", False)
            return False
        finally:
            self._poll()
        self.events.emit("config_applied", config=str(self.path), steps=results,
                         changes=[c for r in results for c in r["changes"]])
        self.status.record("ok", True)
        return True

    def _load(self) -> NodeConfig | None:
        try:
            return nodeconfig.load(self.path)
        except FastpathError as exc:
            self.events.emit("config_refused", config=str(self.path), error=str(exc))
            self.status.record("refused", self.config is not None)
            return None

    def _serve_metrics(self, config: NodeConfig) -> None:
        old = self.config.metrics if self.config is not None else None
        if self.server is not None and old == config.metrics:
            return
        if self.server is not None:
            self.server.close()
            self.server = None
        if config.metrics.enabled:
            self.server = metrics.MetricsServer(config.metrics, metrics.registry(self.status))
            self.events.emit("metrics_listening", url=config.metrics.url, netns=config.metrics.netns)

    def _take(self, config: NodeConfig) -> None:
        """Make `config` the running one: metrics listener and health checks follow it."""
        self._serve_metrics(config)
        self.config = config
        checks = {}
        for e in config.interfaces:
            if e.balancer is None or e.balancer.health is None:
                continue
            old = self.checks.get(e.key)
            s = e.balancer.health
            checks[e.key] = old if old is not None and old.settings == s else \
                _Checks(s, health.HealthChecker(s.fall, s.rise))
        self.checks = checks

    def do_reload(self) -> None:
        notify.notify(*notify.reloading())
        config = self._load()
        if config is not None and self.apply(config):
            try:
                self._take(config)
            except FastpathError as exc:
                self.events.emit("error", error=str(exc))
        notify.notify("READY=1", f"STATUS={self._status_line()}")

    def _status_line(self) -> str:
        n = len(self.config.interfaces) if self.config else 0
        result = "ok" if self.status.last_success else "FAILED"
        return f"{n} interface(s) from {self.path}; last apply {result}"

    # -- the loop ------------------------------------------------------------------------------

    def _poll(self) -> None:
        try:
            self.watcher.poll()
        except (FastpathError, OSError) as exc:
            self.events.emit("error", error=f"polling for events: {exc}")

    def health_round(self, now: float) -> bool:
        """Probe every balancer whose round is due; True when a verdict changed."""
        moved = False
        for (netns, ifname), c in self.checks.items():
            if now < c.due:
                continue
            c.due = now + c.settings.interval
            state = lb_store.load_state(ifname, netns)
            if state is None:
                continue
            results = health.probe(health.targets(state), netns, c.settings.timeout)
            moves = c.checker.update(state, results)
            if not moves:
                continue
            moved = True
            with lb_program.session(ifname, netns) as bal:
                for m in moves:
                    bal.set_health(m.vip, m.backend, m.up)
                    if not m.up:
                        self.watcher.reasons[(netns, ifname, m.vip, m.backend)] = m.reason
        return moved

    def _next_wait(self, last_poll: float) -> float:
        now = time.monotonic()
        due = [last_poll + self.poll, *(c.due for c in self.checks.values())]
        return max(0.01, min(due) - now)

    def tick(self, last_poll: float) -> float:
        now = time.monotonic()
        moved = False
        try:
            moved = self.health_round(now)
        except (FastpathError, OSError) as exc:
            self.events.emit("error", error=f"health checks: {exc}")
        if moved or now - last_poll >= self.poll:
            self._poll()
            return now
        return last_poll

    def run(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.events.emit("agent_started", config=str(self.path), version=__version__,
                         detach_on_exit=self.detach_on_exit)
        self._poll()  # what runs before the first apply: its changes become events
        config = self._load()
        if config is None or not self.apply(config):
            return 1
        try:
            self._take(config)
        except FastpathError as exc:
            self.events.emit("error", error=str(exc))
            return 1
        notify.notify("READY=1", f"STATUS={self._status_line()}")
        last_poll = time.monotonic()
        while not self.stop:
            self.wake.wait(self._next_wait(last_poll))
            self.wake.clear()
            if self.stop:
                break
            if self.reload:
                self.reload = False
                self.do_reload()
            last_poll = self.tick(last_poll)
        return self.shutdown()

    def shutdown(self) -> int:
        notify.notify("STOPPING=1")
        self.events.emit("agent_stopping", detach=self.detach_on_exit)
        code = 0
        if self.detach_on_exit:
            for key in sorted(plan.read_managed(), key=lambda k: [str(x) for x in k]):
                step = plan.detach_step(*key, early=False)
                if step is None:
                    continue
                try:
                    step.do()
                except (FastpathError, OSError) as exc:
                    self.events.emit("error", error=f"{step.title}: {exc}")
                    code = 1
            plan.write_managed(set())
            self._poll()
        if self.server is not None:
            self.server.close()
        return code

