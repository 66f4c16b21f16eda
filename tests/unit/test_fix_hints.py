"""Every command line a fix hint can print is a real command: each `fix=` of a
FastpathError (or CapabilityError) in fastpath/ is rendered with sample values for its
placeholders, every `fastpath ...` command in it is cut out and argparse must accept it.
Hints once said `fastpath syn_guard detach`, `fastpath l4lb detach`: no such commands."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpath.apps.count import xdp_count
from fastpath.apps.decap import decap
from fastpath.apps.guard import abi as guard_abi
from fastpath.apps.lb import abi as lb_abi
from fastpath.bpf import xdp
from fastpath.cli import build_parser

PACKAGE = Path(__file__).resolve().parents[2] / "fastpath"
# What a placeholder stands for, by the words in its expression; a flag-shaped name
# (`ns`, `ns_flag`) holds " --netns NAME" or "".
SAMPLES = [
    (re.compile(r"detach_hint|attach_cmd|hint"), None),
    (re.compile(r"\baction\b"), "allow"),
    (re.compile(r"\bother\b"), "deny"),
    (re.compile(r"\bverb\b"), "add"),
    (re.compile(r"\bnet\b"), "10.0.0.0/8"),
    (re.compile(r"\b(ns|ns_flag|_ns_flag\(.*\))$"), " --netns lab1-server"),
    (re.compile(r"netns"), "lab1-server"),
    (re.compile(r"if(ace|name)"), "eth0"),
    (re.compile(r"mode"), "generic"),
    (re.compile(r"port"), "8080"),
    (re.compile(r"vip"), "10.0.0.10:80/tcp"),
    (re.compile(r"name|lab"), "lab1"),
]
TOP = set(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)
COMMAND = re.compile(r"\bfastpath (?:" + "|".join(sorted(TOP)) + r")\b(?: [^'`;()]*)?")
# Metavars a hint may show, and a value for each.
METAVARS = {"IFACE": "eth0", "NS": "lab1-server", "VIP": "10.0.0.10:80/tcp", "BACKEND": "10.0.1.1",
            "N": "2", "CONFIG.yaml": "lb.yaml"}


def _sample(expr: str) -> str | None:
    for pattern, value in SAMPLES:
        if pattern.search(expr):
            return value
    return "1"


def _render(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            else:
                assert isinstance(part, ast.FormattedValue)
                value = _sample(ast.unparse(part.value))
                if value is None:
                    return None  # a hint built elsewhere: checked where it is built
                out.append(value)
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        return None if left is None or right is None else left + right
    return None


def fix_hints() -> Iterator[tuple[str, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "fix":
                    text = _render(kw.value)
                    if text is not None:
                        yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", text


def commands(text: str) -> list[str]:
    out = []
    for m in COMMAND.finditer(text):
        cmd = m.group(0).strip().rstrip(".,")
        cmd = cmd.replace("[--netns NS]", "--netns NS")
        for metavar, value in METAVARS.items():
            cmd = re.sub(rf"(?<![\w.-]){re.escape(metavar)}(?![\w.-])", value, cmd)
        out.append(cmd)
    return out


HINTS = [(where, cmd) for where, text in fix_hints() for cmd in commands(text)]


def test_the_scan_finds_the_hints() -> None:
    assert len(HINTS) >= 15, HINTS


@pytest.mark.parametrize(("where", "cmd"), HINTS, ids=[w for w, _ in HINTS])
def test_every_fix_hint_is_a_command_argparse_accepts(where: str, cmd: str) -> None:
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(cmd)[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: the hint `{cmd}` is not a fastpath command line (exit {exc.code})")


@pytest.mark.parametrize("spec", [guard_abi.SPEC, lb_abi.SPEC, decap.SPEC, xdp_count.SPEC],
                         ids=lambda s: s.name)
def test_detach_hints_of_every_program(spec) -> None:
    """The runtime's hints come from what each application declared (its ProgramSpec)."""
    att = xdp.Attachment(spec.name, "eth0", "lab1-server", 2, "native", 1, 1, spec=spec.to_json())
    hint = xdp.detach_hint(att)
    assert hint.endswith("detach eth0 --netns lab1-server")
    build_parser().parse_args(shlex.split(hint)[1:])
    assert xdp.program_spec(att) == spec
