"""Benchmark reports: raw JSON, a Markdown summary, one PNG per metric, a rich table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fastpath.bench.runner import ScenarioResult
from fastpath.bench.scenario import Metric
from fastpath.bench.stats import describe_advantage, format_measured, format_value
from fastpath.bench.sweep import KNEE_FACTOR, axis_label, log_axis, ratio_text, x_value
from fastpath.errors import FastpathError

RESULT_COLUMNS = ("median", "p25", "p75", "min", "max", "mean", "stdev")


def make_run_dir(out: Path, now: datetime | None = None) -> Path:
    """A fresh `out/<UTC timestamp>/` for this run, with `out/latest` pointing at it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        run_dir = out / stamp
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = out / f"{stamp}-{n}"
        run_dir.mkdir()
    except OSError as exc:
        raise FastpathError(f"cannot create results directory {out}: {exc.strerror}") from exc
    latest = out / "latest"
    try:  # a convenience only: a file system without symlinks loses nothing else
        if latest.is_symlink():
            latest.unlink()
        if not latest.exists():
            latest.symlink_to(run_dir.name)
    except OSError:
        pass
    return run_dir


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _heading(metric: Metric) -> str:
    return f"{metric.name} — {metric.unit} ({metric.better} is better)"


def _environment_rows(result: ScenarioResult) -> Iterator[tuple[str, str]]:
    env = result.environment
    commit = env.get("git_commit") or "unknown"
    if env.get("git_dirty"):
        commit += " (uncommitted changes)"
    yield "date", str(env.get("timestamp", "unknown"))
    yield "host", str(env.get("hostname", "unknown"))
    yield "kernel", str(env.get("kernel", "unknown"))
    yield "CPU", f"{env.get('cpu_model', 'unknown')} ({env.get('nproc', '?')} usable CPUs)"
    if env.get("cpu_governor"):
        yield "CPU governor", str(env["cpu_governor"])
    yield "git commit", commit
    yield "fastpath", str(env.get("fastpath_version", "unknown"))
    warm = f"; {result.warmup} warm-up round(s) discarded" if result.warmup else ""
    yield "repeats", f"{result.repeat} per contender, contenders interleaved{warm}"
    yield "mode", "quick (smoke run, not for comparison)" if result.quick else "full"


def render_markdown(result: ScenarioResult, plots: dict[str, str] | None = None) -> str:
    """The human report: environment, one table per metric, ratios, target verdicts.

    `plots` maps metric name -> image path relative to the Markdown file.
    """
    plots = plots or {}
    lines = [f"# fastpath bench: {result.name}", "", _cell(result.description), ""]
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in _environment_rows(result)]
    if result.sweep is not None:
        lines += _sweep_markdown(result, plots)
    else:
        lines += _race_markdown(result, plots)
    if result.skipped:
        lines += ["## Skipped contenders" if result.sweep is None else "## Skipped points", ""]
        lines += [f"- {c}: {_cell(why)}" for c, why in result.skipped.items()]
        lines.append("")
    lines += [
        f"Raw samples and environment: `{result.name}.json`. Run took {result.duration_s:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def _sweep_markdown(result: ScenarioResult, plots: dict[str, str]) -> list[str]:
    """A scaling curve: one row per point in x order, the ratio to the first point, where
    the cost stops being flat, and the scenario's explanation."""
    axis, first = result.sweep or "", result.contenders[0]
    lines = [
        "",
        f"A scaling curve over **{_cell(axis)}**: one point per x value, in x order. "
        f"`÷ {first}` is median(point) / median(at {first} {_cell(axis)}). The cost stops being "
        f"flat at the first point more than {KNEE_FACTOR:g}× worse than the first point, "
        "in the metric's direction. p25/p75 are the interquartile range over the repeats.",
        "",
    ]
    for m in result.metrics:
        s = result.summaries[m.name]
        lines += [f"## {_heading(m)}", ""]
        header = [_cell(axis), *RESULT_COLUMNS, "n", f"÷ {first}", f"vs {first}"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| ---: |" + " ---: |" * (len(header) - 1))
        for p in result.contenders:
            stats = [format_value(getattr(s[p], col)) for col in RESULT_COLUMNS]
            verdict = "—" if p == first else describe_advantage(result.advantage(m, p))
            rel = ratio_text(s[p].median, s[first].median)
            lines.append("| " + " | ".join([axis_label(p), *stats, str(s[p].n), rel, verdict]) + " |")
        lines += ["", f"**{_cell(result.knees[m.name].statement(axis, m.unit))}**", ""]
        if m.name in plots:
            lines += [f"![{m.name}]({plots[m.name]})", ""]
    if result.explanation:
        lines += ["## Why the curve bends", ""]
        lines += [f"- {_cell(line)}" for line in result.explanation]
        lines.append("")
    return lines


def _race_markdown(result: ScenarioResult, plots: dict[str, str]) -> list[str]:
    b = result.baseline
    lines = [
        "",
        f"Baseline: **{b}**. `÷ {b}` is median(contender) / median({b}); the verdict "
        "turns it into how many times better or worse, following each metric's "
        "direction. p25/p75 are the interquartile range over the repeats.",
        "",
    ]
    for m in result.metrics:
        lines += [f"## {_heading(m)}", ""]
        header = ["contender", *RESULT_COLUMNS, "n", f"÷ {b}", f"vs {b}"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| --- |" + " ---: |" * (len(header) - 1))
        for c in result.contenders:
            s = result.summaries[m.name][c]
            stats = [format_value(getattr(s, col)) for col in RESULT_COLUMNS]
            if c == b:
                label, rel, verdict = f"{c} (baseline)", "1", "—"
            else:
                label = c
                r = result.ratio(m.name, c)
                rel = "n/a" if r is None else f"{r:.3g}"
                verdict = describe_advantage(result.advantage(m, c))
            lines.append("| " + " | ".join([label, *stats, str(s.n), rel, verdict]) + " |")
        lines.append("")
        for c in result.contenders:
            if c != b:
                r = result.ratio(m.name, c)
                verdict = describe_advantage(result.advantage(m, c))
                ratio_text = "n/a" if r is None else f"{r:.3g}×"
                lines.append(f"- {c} / {b} = {ratio_text} → {verdict}")
        if len(result.contenders) > 1:
            lines.append("")
        if m.name in plots:
            lines += [f"![{m.name}]({plots[m.name]})", ""]
    if result.targets:
        met = sum(t.met for t in result.targets)
        lines += [f"## Targets: {met} of {len(result.targets)} met", ""]
        lines += ["| target | measured (median) | verdict |", "| --- | --- | --- |"]
        for t in result.targets:
            verdict = "met" if t.met else "**NOT MET**"
            measured = format_measured(t, result.metric(t.target.metric))
            lines.append(f"| {_cell(t.description)} | {_cell(measured)} | {verdict} |")
        lines.append("")
    return lines


def _figure(width: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise FastpathError(
            "matplotlib is needed for benchmark plots", fix="pip install -e '.[bench]'"
        ) from exc
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_curve(result: ScenarioResult, metric: Metric, path: Path) -> None:
    """A sweep: the median per point as a line, the p25–p75 band shaded, every repeat as a
    dot, the point where the cost stops being flat marked; log x when x spans >= 100×."""
    points = result.contenders
    xs = [x_value(p) for p in points]
    summaries = [result.summaries[metric.name][p] for p in points]
    fig = _figure(6.4)
    ax = fig.add_subplot()
    ax.fill_between(xs, [s.p25 for s in summaries], [s.p75 for s in summaries], color="C0", alpha=0.25,
                    label="p25–p75")
    ax.plot(xs, [s.median for s in summaries], marker="o", color="C0", label="median")
    for x, p in zip(xs, points, strict=True):
        vals = result.values(metric.name, p)
        ax.scatter([x] * len(vals), vals, s=8, color="black", alpha=0.6, zorder=3)
    knee = result.knees.get(metric.name)
    if knee is not None and knee.point is not None:
        ax.axvline(x_value(knee.point), color="C3", linestyle="--",
                   label=f"> {knee.factor:g}× the first point")
    if log_axis(xs):
        ax.set_xscale("log")
    ax.set_xticks(xs, [axis_label(p) for p in points])
    ax.minorticks_off()
    ax.set_xlabel(result.sweep or "")
    ax.set_ylabel(metric.unit)
    ax.set_title(f"{result.name}: {metric.name} ({metric.better} is better)")
    all_vals = [v for p in points for v in result.values(metric.name, p)]
    if all_vals and min(all_vals) >= 0:
        ax.set_ylim(bottom=0, top=max(all_vals) * 1.2 or 1)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=100, format="png")


def plot_metric(result: ScenarioResult, metric: Metric, path: Path) -> None:
    """Bar per contender at the median, whiskers p25–p75, every sample as a dot (a sweep:
    its curve, see plot_curve)."""
    if result.sweep is not None:
        plot_curve(result, metric, path)
        return

    names = result.contenders
    summaries = [result.summaries[metric.name][c] for c in names]
    fig = _figure(max(4.0, 1.4 * len(names) + 2))
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    medians = [s.median for s in summaries]
    err = [
        [max(0.0, s.median - s.p25) for s in summaries],
        [max(0.0, s.p75 - s.median) for s in summaries],
    ]
    colors = ["#9e9e9e" if c == result.baseline else f"C{i}" for i, c in enumerate(names)]
    ax.bar(xs, medians, yerr=err, capsize=6, color=colors, alpha=0.8, edgecolor="black")
    for x, c in zip(xs, names, strict=True):
        vals = result.values(metric.name, c)
        # Spread the dots evenly across the bar so identical values stay visible.
        n = len(vals)
        offs = [(-0.25 + 0.5 * i / (n - 1)) if n > 1 else 0.0 for i in range(n)]
        ax.scatter([x + o for o in offs], vals, s=10, color="black", alpha=0.7, zorder=3)
    for x, c, s in zip(xs, names, summaries, strict=True):
        adv = result.advantage(metric, c)
        note = "baseline" if c == result.baseline else describe_advantage(adv)
        # Above the whisker and the highest dot, so the label never sits on the data.
        ax.annotate(
            f"{format_value(s.median)}\n{note}",
            (x, max(s.p75, s.max, s.median)),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(xs, names)
    ax.set_ylabel(metric.unit)
    ax.set_xlabel("bar: median   whiskers: p25–p75   dots: repeats", fontsize=8, color="dimgray")
    ax.set_title(f"{result.name}: {metric.name} ({metric.better} is better)")
    all_vals = [v for c in names for v in result.values(metric.name, c)]
    if all_vals and min(all_vals) >= 0:
        ax.set_ylim(bottom=0, top=max(all_vals) * 1.3 or 1)
    ax.margins(x=0.15)
    fig.savefig(path, dpi=100, format="png")


def write_reports(result: ScenarioResult, run_dir: Path) -> dict[str, Path]:
    """`<name>.json`, `<name>.md` and `<name>-<metric>.png` in `run_dir`; records them in
    `result.files`."""
    files: dict[str, Path] = {}
    plots: dict[str, str] = {}
    try:
        for m in result.metrics:
            path = run_dir / f"{result.name}-{m.name}.png"
            plot_metric(result, m, path)
            plots[m.name] = path.name
            files[f"plot:{m.name}"] = path
        md = run_dir / f"{result.name}.md"
        md.write_text(render_markdown(result, plots))
        files["markdown"] = md
        js = run_dir / f"{result.name}.json"
        files["json"] = js
        result.files = {k: str(p) for k, p in files.items()}
        js.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise FastpathError(f"cannot write benchmark results in {run_dir}: {exc}") from exc
    return files


def _print_sweep(result: ScenarioResult, console: Console) -> None:
    axis, first = result.sweep or "", result.contenders[0]
    for m in result.metrics:
        s = result.summaries[m.name]
        table = Table(title=escape(_heading(m)), title_justify="left")
        for col in (axis, "median", "p25–p75", "n", f"÷ {first}"):
            table.add_column(escape(col), justify="right", no_wrap=True)
        for p in result.contenders:
            table.add_row(axis_label(p), format_value(s[p].median),
                          f"{format_value(s[p].p25)}–{format_value(s[p].p75)}", str(s[p].n),
                          ratio_text(s[p].median, s[first].median))
        console.print(table)
        console.print(escape(f"  {result.knees[m.name].statement(axis, m.unit)}"), highlight=False)
    for line in result.explanation:
        console.print(escape(f"  why: {line}"), highlight=False)


def print_human(result: ScenarioResult, console: Console) -> None:
    b = result.baseline
    console.print(escape(f"{result.name}: {result.description}"), style="bold", highlight=False)
    if result.sweep is not None:
        _print_sweep(result, console)
    for m in result.metrics if result.sweep is None else ():
        table = Table(title=escape(_heading(m)), title_justify="left")
        table.add_column("contender")
        for col in ("median", "p25–p75", "min–max", "n", f"vs {b}"):
            table.add_column(escape(col), justify="right", no_wrap=True)
        for c in result.contenders:
            s = result.summaries[m.name][c]
            verdict = "baseline" if c == b else describe_advantage(result.advantage(m, c))
            table.add_row(
                escape(c),
                format_value(s.median),
                f"{format_value(s.p25)}–{format_value(s.p75)}",
                f"{format_value(s.min)}–{format_value(s.max)}",
                str(s.n),
                verdict,
            )
        console.print(table)
    for t in result.targets:
        metric = result.metric(t.target.metric)
        mark = "[green]met[/green]" if t.met else "[bold red]NOT MET[/bold red]"
        text = escape(f"  target {t.description}: {format_measured(t, metric)}")
        console.print(f"{text} — {mark}", highlight=False)
    for c, why in result.skipped.items():
        what = f"{c} {result.sweep}" if result.sweep else c
        console.print(escape(f"  skipped {what}: {why}"), highlight=False)
    if result.quick:
        console.print("  [yellow]quick run: too few repeats to compare numbers[/yellow]")
    if "markdown" in result.files:
        console.print(escape(f"  report: {result.files['markdown']}"), highlight=False)
