"""The paced flood behind `synflood-rate`: the rate it is asked for, within its time bound."""

from __future__ import annotations

import time

import pytest

from fastpath.bench.scenarios.synflood import paced_flood


class CountingFlood:
    """A generator that sends instantly: records when and how many frames were asked for."""

    def __init__(self, cap: int | None = None) -> None:
        self.calls: list[tuple[float, int]] = []
        self.cap = cap

    def run(self, frames: int, seconds: float, chunk: int = 0) -> int:
        assert frames > 0 and seconds >= 0
        sent = frames if self.cap is None else min(frames, self.cap)
        self.calls.append((time.monotonic(), sent))
        return sent


@pytest.mark.parametrize("rate", [2_000, 50_000])
def test_paced_flood_sends_the_rate_spread_over_the_time(rate):
    flood = CountingFlood()
    t0 = time.monotonic()
    sent = paced_flood(flood, rate, 0.4)
    took = time.monotonic() - t0
    assert 0.4 <= took < 1.5  # its bound, plus room for a scheduler stall on a busy machine
    assert 0.9 * rate * 0.4 <= sent <= rate * 0.4
    # spread out: the first 100 ms carry about a quarter of it, not all of it
    early = sum(n for t, n in flood.calls if t - t0 < 0.1)
    assert early < 0.45 * sent


def test_paced_flood_reports_what_a_slow_generator_managed():
    flood = CountingFlood(cap=10)  # at most 10 frames a call, one call per 2 ms slice
    sent = paced_flood(flood, 1_000_000, 0.2)
    assert sent == sum(n for _, n in flood.calls) and sent < 0.1 * 1_000_000 * 0.2
