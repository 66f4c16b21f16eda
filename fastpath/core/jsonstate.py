"""Run-time state as JSON files: written atomically (readers never see half a file, a crash
never leaves one), read with a missing file as None, edited under a lock file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any, *, sort_keys: bool = False) -> None:
    """Replace `path` with `data` as indented JSON in one rename; parents are created."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename (a reader sees the old file or the new one);
    parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process: two writers never share (and truncate) one temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` + `.lock` (read-modify-write of the state in `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
