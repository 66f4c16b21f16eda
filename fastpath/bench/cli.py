"""`fastpath bench`: run scenarios side by side and write JSON, Markdown and PNG reports."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fastpath import output
from fastpath.bench import environment
from fastpath.bench.registry import (
    ScenarioUnavailable,
    list_scenarios,
    load_scenario,
    scenario_names,
)
from fastpath.bench.report import make_run_dir, print_human, write_reports
from fastpath.bench.runner import ProgressEvent, ProgressFn, ScenarioResult, run_scenario
from fastpath.bench.scenario import Scenario
from fastpath.bench.stats import describe_target
from fastpath.core.args import add_command, add_json_arg
from fastpath.errors import FastpathError

EPILOG = """\
examples:
  fastpath bench --list                    scenarios, their metrics and targets
  fastpath bench                           every scenario, results under bench-results/
  fastpath bench counter --quick           a smoke run with few repeats
  fastpath bench counter --repeat 30 --strict --out /tmp/r
                                           exit non-zero if a target is missed
  make bench SCENARIOS=counter             the same through the Makefile
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers, "bench", help="run benchmark scenarios: fastpath and its peers side by side",
        description="Run fastpath and its peers side by side, each measurement repeated with the "
                    "contenders interleaved, and write raw JSON, a Markdown report and PNG plots "
                    "under --out/<timestamp>/ (also reachable as --out/latest).",
        epilog=EPILOG)
    add = p.add_argument
    add("scenarios", nargs="*", metavar="SCENARIO", help="scenarios to run (all if none)")
    add("--list", action="store_true", help="list scenarios with their descriptions")
    add("--repeat", type=_positive_int, metavar="N", help="measured repeats per contender")
    add("--quick", action="store_true", help="smoke run: few short repeats, no warm-up")
    add(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="results directory (default: bench-results)",
    )
    add_json_arg(p, "print results as JSON on stdout")
    add(
        "--strict",
        action="store_true",
        help="exit non-zero if a target is missed or a scenario could not run",
    )
    p.set_defaults(func=handle)


def _selected(names: list[str]) -> list[str]:
    known = scenario_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FastpathError(
            f"unknown scenario {unknown[0]!r}",
            fix=f"choose from: {', '.join(known)}" if known else "no scenarios are registered",
        )
    return list(dict.fromkeys(names)) if names else known


def _describe(cls: type[Scenario]) -> dict[str, Any]:
    try:
        contenders: list[str] | None = list(cls().contenders())
    except Exception:  # listing must not die on one scenario's constructor
        contenders = None
    metrics = {m.name: m for m in cls.metrics}
    return {
        "baseline": cls.baseline,
        "sweep": cls.sweep,
        "contenders": contenders,
        "metrics": [{"name": m.name, "unit": m.unit, "better": m.better} for m in cls.metrics],
        "targets": [describe_target(t, metrics[t.metric]) for t in cls.targets],
    }


def list_command(args: argparse.Namespace) -> int:
    wanted = set(_selected(args.scenarios))
    rows: list[dict[str, Any]] = []
    for item in list_scenarios():
        if item.name not in wanted:
            continue
        row: dict[str, Any] = {
            "name": item.name,
            "description": item.description,
            "available": item.available,
            "reason": item.reason,
        }
        if item.scenario is not None:
            row.update(_describe(item.scenario))
        rows.append(row)
    if args.json:
        output.print_json(rows)
        return 0
    if not rows:
        output.info("no benchmark scenarios are registered; see fastpath/bench/scenarios/")
        return 0
    table_rows = []
    for r in rows:
        if not r["available"]:
            table_rows.append((r["name"], f"unavailable: {r['reason']}"))
            continue
        points = ", ".join(r["contenders"] or ["?"])
        details = [
            r["description"],
            f"a curve over {r['sweep']}: {points}" if r.get("sweep")
            else f"contenders: {points} (baseline: {r['baseline']})",
            "metrics: "
            + ", ".join(f"{m['name']} ({m['unit']}, {m['better']} is better)" for m in r["metrics"]),
        ]
        details += [f"target: {t}" for t in r["targets"]]
        table_rows.append((r["name"], "\n".join(details)))
    output.console.print(
        output.make_table(
            ("scenario", "what it measures"),
            [tuple(escape(c) for c in row) for row in table_rows],
        )
    )
    return 0


@contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[ProgressFn]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    tasks: dict[str, Any] = {}

    def update(ev: ProgressEvent) -> None:
        if ev.scenario not in tasks:
            tasks[ev.scenario] = progress.add_task(ev.scenario, total=ev.total)
        if ev.contender is None:
            text = f"{ev.scenario}: done"
        else:
            phase = "warm-up" if ev.warmup else "repeat"
            text = f"{ev.scenario}: {ev.contender} ({phase} {ev.repeat + 1})"
        progress.update(tasks[ev.scenario], completed=ev.done, description=escape(text))

    with progress:
        yield update


def handle(args: argparse.Namespace) -> int:
    if args.list:
        return list_command(args)
    explicit = bool(args.scenarios)
    names = _selected(args.scenarios)
    if not names:
        raise FastpathError(
            "no benchmark scenarios are registered",
            fix="add one as described in fastpath/bench/scenarios/__init__.py",
        )
    unavailable: dict[str, str] = {}
    results: list[ScenarioResult] = []
    run_dir: Path | None = None
    env = environment.capture()
    for name in names:
        try:
            cls = load_scenario(name)
            with _progress(output.err_console, output.err_console.is_terminal) as progress:
                result = run_scenario(
                    cls,
                    repeat=args.repeat,
                    quick=args.quick,
                    env=env,
                    progress=progress,
                    log=output.info,
                )
        except ScenarioUnavailable as exc:
            if explicit:
                raise
            unavailable[name] = str(exc)
            output.info(f"skipping {escape(str(exc))}")
            continue
        if run_dir is None:
            run_dir = make_run_dir(args.out)
        write_reports(result, run_dir)
        results.append(result)
        if not args.json:
            print_human(result, output.console)
    if not results:
        raise FastpathError("no benchmark scenario can run on this host: " + "; ".join(unavailable.values()))
    missed = [(r.name, t.description) for r in results for t in r.missed]
    if args.json:
        output.print_json(
            {
                "run_dir": str(run_dir),
                "scenarios": [r.to_dict() for r in results],
                "unavailable": unavailable,
            }
        )
    else:
        output.info(f"results in {run_dir}")
    if args.strict and (missed or unavailable):
        parts = [f"{len(missed)} target(s) missed"] if missed else []
        parts += [f"{len(unavailable)} scenario(s) could not run"] if unavailable else []
        output.info(f"--strict: {' and '.join(parts)}")
        return 1
    return 0
