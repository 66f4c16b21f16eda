"""The tree stays as `make lint` wants it: ruff clean, and mypy clean over fastpath/ (so every
`type: ignore` left is one mypy needs, with its reason beside it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_is_clean() -> None:
    res = run("ruff", "check", ".")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_mypy_is_clean() -> None:
    res = run("mypy")  # files and strictness come from pyproject.toml
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_every_type_ignore_says_why() -> None:
    bare = []
    for path in sorted((ROOT / "fastpath").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            justified = re.search(r"type:\s*ignore\[[\w-]+\]\s+#\s*\S", line)
            if re.search(r"#\s*type:\s*ignore", line) and not justified:
                bare.append(f"{path.relative_to(ROOT)}:{n}")
    assert bare == [], f"type: ignore without a code and a reason: {bare}"
