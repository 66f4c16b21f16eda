"""`--watch`: sample, redraw (or print one JSON line per sample), until Ctrl-C."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import RenderableType

from fastpath.output import console

Sample = TypeVar("Sample")


def watch(interval: float, sample: Callable[[], Sample],
          render: Callable[[Sample, Sample, float], RenderableType],
          as_json: Callable[[Sample, Sample, float], Any] | None = None) -> int:
    """Every `interval` seconds take a sample and show it against the previous one and the
    seconds between them (for rates): a redrawn table, or with `as_json` one JSON document
    per line for a pipe. Ctrl-C ends it (the CLI turns that into exit 130)."""
    from rich.live import Live

    prev = sample()
    t0 = time.monotonic()
    with Live(console=console, auto_refresh=False, transient=as_json is not None) as live:
        while True:
            time.sleep(interval)
            cur = sample()
            now = time.monotonic()
            dt = max(now - t0, 1e-3)
            if as_json is not None:
                sys.stdout.write(json.dumps(as_json(cur, prev, dt), default=str) + "\n")
                sys.stdout.flush()
            else:
                live.update(render(cur, prev, dt), refresh=True)
            prev, t0 = cur, now
