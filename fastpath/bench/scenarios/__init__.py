"""Built-in benchmark scenarios, imported only when listed or run.

How to add a scenario (one module, one line here):

1. Write `fastpath/bench/scenarios/<name>.py` (module name: the scenario name with
   "-" turned into "_"):

       from fastpath.bench import BenchContext, Metric, Scenario, Target, register_scenario

       @register_scenario
       class Counter(Scenario):
           name = "counter"
           description = "XDP counter program: ns/packet via BPF_PROG_TEST_RUN"
           metrics = [Metric("ns_per_packet", "ns/packet", "lower")]
           baseline = "kernel"                      # ratios are reported against it
           # goals as ratios to a peer in the same run, never one machine's timings
           targets = [Target("ns_per_packet", "fastpath", ">=", 0.8, versus="kernel")]
           repeat, quick_repeat, warmup = 10, 3, 1  # optional, these are the defaults

           def contenders(self) -> list[str]:
               return ["fastpath", "kernel"]

           def setup(self, ctx: BenchContext) -> None:
               ...  # load programs; raise fastpath.errors.CapabilityError if the host
                    # can't; ctx.skip_contender(name, reason) if only one peer can't;
                    # keep what measure() needs on self or in ctx.state; scratch
                    # files go in ctx.workdir (removed after teardown)

           def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
               runs = ctx.pick(1_000_000, 10_000)   # shorter under --quick
               return {"ns_per_packet": ...}        # one value per declared metric

           def teardown(self, ctx: BenchContext) -> None:
               ...  # always runs, even after a failed setup() or measure()

2. Add `"counter": "fastpath.bench.scenarios.counter"` to SCENARIOS below.

Import optional dependencies (bcc, pyroute2, ...) at the top of the scenario module if
you like: when one is missing, `fastpath bench --list` marks that scenario unavailable
and running it fails with one line naming the scenario, while every other scenario still
runs. Then `fastpath bench counter --quick` is the smoke test.
"""

from __future__ import annotations

# scenario name -> module that registers it (kept as data so nothing is imported until
# a scenario is listed or run).
SCENARIOS: dict[str, str] = {
    "counter": "fastpath.bench.scenarios.counter",
    "echo": "fastpath.bench.scenarios.echo",
    "echo-conns": "fastpath.bench.scenarios.echo_conns",
    "l2fwd": "fastpath.bench.scenarios.l2fwd",
    "lb": "fastpath.bench.scenarios.lb",
    "lb-packet": "fastpath.bench.scenarios.lb",
    "lb-apply": "fastpath.bench.scenarios.lb_apply",
    "lb-churn": "fastpath.bench.scenarios.lb_churn",
    "lb-vips": "fastpath.bench.scenarios.lb_scaling",
    "lb-backends": "fastpath.bench.scenarios.lb_scaling",
    "synflood": "fastpath.bench.scenarios.synflood",
    "synflood-packet": "fastpath.bench.scenarios.synflood",
    "synflood-rate": "fastpath.bench.scenarios.synflood_rate",
    "synguard-churn": "fastpath.bench.scenarios.synguard_churn",
    "topo-scale": "fastpath.bench.scenarios.topo_scale",
}
