"""Benchmarks: scenarios that run fastpath and its peers side by side, and the report writer.

A scenario module needs only what this package exports; see `fastpath.bench.scenarios`.
"""

from fastpath.bench.registry import register_scenario
from fastpath.bench.scenario import BenchContext, Metric, Scenario, Target

__all__ = ["BenchContext", "Metric", "Scenario", "Target", "register_scenario"]
