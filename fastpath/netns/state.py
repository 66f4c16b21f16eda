"""Lab statefiles: `/run/fastpath/topo/<lab>.json` records everything a lab made.

The file is claimed (O_EXCL) before the first namespace is created and rewritten after each
resource, so a crash at any point leaves a record `fastpath topo down` can clean up from, and
two builders can never bring up the same lab name at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastpath.core.jsonstate import write_json
from fastpath.errors import FastpathError

STATE_DIR = Path("/run/fastpath/topo")


def state_dir() -> Path:
    return STATE_DIR


def state_path(name: str) -> Path:
    return state_dir() / f"{name}.json"


def claim(name: str, data: dict[str, Any]) -> Path:
    """Create the statefile, failing if the lab exists: this is the lab-name lock."""
    path = state_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise FastpathError(
            f"lab {name!r} is already up (statefile {path}); take it down first with "
            f"`fastpath topo down {name}` or pick another name"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    return path


def save(name: str, data: dict[str, Any]) -> None:
    """Replace the statefile atomically, so readers never see half a file."""
    write_json(state_path(name), data)


def load(name: str) -> dict[str, Any] | None:
    path = state_path(name)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FastpathError(
            f"statefile {path} is unreadable ({exc}); remove the lab with `fastpath topo down {name}`"
        ) from None
    if not isinstance(data, dict):
        raise FastpathError(f"statefile {path} is not a lab record; delete it by hand")
    return data


def remove(name: str) -> None:
    try:
        state_path(name).unlink()
    except FileNotFoundError:
        pass


def names() -> list[str]:
    """Names of every lab with a statefile, sorted."""
    try:
        entries = os.listdir(state_dir())
    except FileNotFoundError:
        return []
    return sorted(e[: -len(".json")] for e in entries if e.endswith(".json") and e[0] != ".")
