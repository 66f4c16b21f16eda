"""The README is the manual: every command and sub-command the CLI offers is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fastpath.cli import build_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_readme_starts_with_the_two_setup_commands():
    head = README[:2500]
    assert "make demo" in head and "make test" in head


def test_every_command_and_action_is_in_the_readme():
    missing = []
    for name, sub in _subcommands(build_parser()).items():
        if f"fastpath {name}" not in README:
            missing.append(name)
            continue
        for action in _subcommands(sub):
            # "fastpath topo up ..." in an example, or "fastpath topo up|down|..." in the table
            if not re.search(rf"fastpath {name} [^\n]*\b{re.escape(action)}\b", README):
                missing.append(f"{name} {action}")
    assert not missing, f"README lacks: {', '.join(missing)}"
