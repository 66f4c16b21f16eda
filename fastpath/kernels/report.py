"""Verdicts per program and kernel from the guests' results.json, and the matrix table.

A program's verdict on a kernel:
- `ok`: every load of it (the sweep's variants and the tests') passed the verifier, and every
  test of a module that loaded it passed;
- `needs X.Y`: it was refused by a kernel older than the minimum its C file states (an entry
  may state its own, as doctor_probe's SYN-cookie probes do: `ok; ENTRY needs 6.0`);
- `FAIL load` / `FAIL k/n tests`: a verifier rejection or failed tests (details below the table);
- `not loaded`: nothing compiled it (a run that stopped early, or a load-only run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Version = tuple[int, int]


def kernel_version(release: str) -> Version | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_version(text: str | None) -> Version | None:
    return kernel_version(text) if text else None


@dataclass
class Verdict:
    text: str
    failed: bool = False
    details: list[str] = field(default_factory=list)


def _needs(load: Mapping[str, Any], result: Mapping[str, Any]) -> Version | None:
    return parse_version(load.get("needs") or result.get("min_kernel", {}).get(load["program"]))


# Failures known and stated in the README's "Kernel matrix" section, by (series, program):
# the table still says FAIL, marked "(known)", but they do not fail the run.
KNOWN: dict[tuple[str, str], str] = {}


def program_verdict(program: str, result: Mapping[str, Any]) -> Verdict:
    v = _verdict(program, result)
    kver = kernel_version(str(result.get("release", "")))
    known = KNOWN.get((_fmt(kver), program)) if kver else None
    if v.failed and known:
        return Verdict(f"{v.text} (known)", False, [f"{program}: known: {known}", *v.details])
    return v


def _verdict(program: str, result: Mapping[str, Any]) -> Verdict:
    kver = kernel_version(str(result.get("release", "")))
    loads = [ld for ld in result.get("loads", []) if ld["program"] == program]
    if not loads:
        return Verdict("not loaded")
    refused = [ld for ld in loads if not ld["ok"]]
    too_old = [ld for ld in refused if kver and (n := _needs(ld, result)) and kver < n]
    rejected = [ld for ld in refused if ld not in too_old]
    details = [f"{program} ({ld['label']}, {ld['entry']}{', ' + ld['module'] if ld.get('module') else ''}): "
               f"{ld['error']}" for ld in rejected]
    modules = {m for m, progs in result.get("modules", {}).items() if program in progs}
    tests = [t for t in result.get("tests", []) if t["module"] in modules]
    failed = [t for t in tests if t["outcome"] == "failed"]
    details += [f"{program}: {t['nodeid']} failed: {t['message']}" for t in failed]
    if rejected:
        return Verdict("FAIL load", True, details)
    if failed:
        return Verdict(f"FAIL {len(failed)}/{len(tests)} tests", True, details)
    if too_old:
        needs = {_fmt(_needs(ld, result)) for ld in too_old}
        entries = sorted({ld["entry"] for ld in too_old})
        if all(not ld["ok"] for ld in loads):
            return Verdict(f"needs {', '.join(sorted(needs))}")
        return Verdict(f"ok; {', '.join(entries)} needs {', '.join(sorted(needs))}")
    return Verdict("ok")


def _fmt(v: Version | None) -> str:
    return f"{v[0]}.{v[1]}" if v else "?"


def programs_in(results: Sequence[Mapping[str, Any]]) -> list[str]:
    names: set[str] = set()
    for r in results:
        names.update(r.get("min_kernel", {}))
        names.update(ld["program"] for ld in r.get("loads", []))
    return sorted(names)


OUTCOMES = ("passed", "failed", "skipped", "deselected")


def _counts(tests: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return counts


def _summary(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in OUTCOMES if counts.get(k)) or "none"


def _all_tests(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*result.get("tests", []), *[{**d, "outcome": "deselected"} for d in result.get("deselected", [])]]


def tests_summary(result: Mapping[str, Any]) -> str:
    if result.get("pytest_exit") is None:
        return "not run"
    return _summary(_counts(_all_tests(result)))


def _tests_cell(result: Mapping[str, Any]) -> str:
    """The tests/bpf row: a run stopped during the tests still counts those it finished."""
    if not result.get("error"):
        return tests_summary(result)
    done = _all_tests(result)
    return f"stopped after {_summary(_counts(done))}" if done else "did not run"


def test_files(result: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Outcome counts per test file (tests/bpf/test_x.py -> {"passed": n, ..., "seconds": s})."""
    by_file: dict[str, list[Mapping[str, Any]]] = {}
    for t in _all_tests(result):
        by_file.setdefault(t["module"], []).append(t)
    return {m: {**_counts(ts), "seconds": round(sum(t.get("seconds", 0) for t in ts))}
            for m, ts in sorted(by_file.items())}


def _secs(value: object) -> str:
    return f"{float(value):.0f} s" if isinstance(value, int | float) else "-"


def render(columns: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The matrix: one row per program, one column per kernel, then tests and timings, then
    every failure in detail. `columns` is (heading, result) per kernel."""
    results = [r for _, r in columns]
    header = ["program", *[h for h, _ in columns]]
    rows: list[list[str]] = []
    details: list[str] = []
    for program in programs_in(results):
        row = [program]
        for heading, result in columns:
            v = program_verdict(program, result)
            row.append(v.text)
            details += [f"[{heading}] {d}" for d in v.details]
        rows.append(row)
    rows.append(["tests/bpf", *[_tests_cell(r) for r in results]])
    per_kernel = [test_files(r) for r in results]
    for module in sorted({m for files in per_kernel for m in files}):
        rows.append([f"  {module.rsplit('/', 1)[-1]}",
                     *[_summary(files[module]) if module in files else "-" for files in per_kernel]])
    rows.append(["boot", *[_secs(r.get("boot_s")) for r in results]])
    rows.append(["load sweep", *[_secs(r.get("sweep_s")) for r in results]])
    rows.append(["tests", *[_secs(r.get("tests_s")) for r in results]])
    for heading, r in columns:
        if r.get("error"):
            details.append(f"[{heading}] {r['error']}")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, ["-" * w for w in widths], *rows]]
    reasons = sorted({(d["module"], d["reason"]) for r in results for d in r.get("deselected", [])})
    if reasons:
        lines += ["", "deselected in the VMs:", *[f"  {m}: {why}" for m, why in reasons]]
    if details:
        lines += ["", "failures:", *[f"  {d}" for d in details]]
    return "\n".join(lines)


def failed(result: Mapping[str, Any]) -> bool:
    """Whether a kernel's run counts as a failure of the matrix."""
    if result.get("error") or result.get("pytest_exit") not in (None, 0):
        return True
    return any(program_verdict(p, result).failed for p in programs_in([result]))
