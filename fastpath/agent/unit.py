"""The systemd unit shipped in the package (`fastpath/data/fastpath.service`) and its
installation: ExecStart is pointed at the fastpath this is run from and at the config file."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from fastpath.errors import FastpathError

UNIT_NAME = "fastpath.service"
UNIT_DIR = Path("/etc/systemd/system")


def shipped() -> str:
    return (resources.files("fastpath") / "data" / UNIT_NAME).read_text()


def command() -> list[str]:
    """How to start this fastpath: the console script beside the interpreter, else `-m`."""
    script = Path(sys.executable).parent / "fastpath"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "fastpath.cli"]


# The directories a unit's PrivateTmp= replaces with empty ones of its own.
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def _hidden_by_private_tmp(path: Path) -> bool:
    return any(path == d or d in path.parents for d in PRIVATE_TMP)


def render(config: Path, argv: list[str] | None = None) -> str:
    """The shipped unit with ExecStart set; PrivateTmp is turned off (and the unit says why)
    when the program or the config lives under /tmp or /var/tmp, which it would hide."""
    argv = argv or command()
    exec_start = shlex.join([*argv, "agent", "--config", str(config)])
    hidden = [p for p in (Path(argv[0]), config) if _hidden_by_private_tmp(p)]
    lines = []
    for line in shipped().splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={exec_start}"
        elif line.startswith("PrivateTmp=") and hidden:
            lines.append(f"# {hidden[0]} is under {', '.join(map(str, PRIVATE_TMP))}, "
                         "which a private /tmp would hide from the service")
            line = "PrivateTmp=no"
        lines.append(line)
    return "\n".join(lines) + "\n"


def install(config: Path, unit_dir: Path = UNIT_DIR) -> tuple[Path, bool]:
    """Write the unit for `config` into `unit_dir`; returns its path and whether systemd was
    told (daemon-reload, when systemd runs this machine and the unit went to its directory)."""
    if not config.is_absolute():
        config = config.resolve()
    if not config.is_file():
        raise FastpathError(f"config file {config} does not exist", fix="write it first; the unit reads it")
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    path.write_text(render(config))
    reloaded = False
    if unit_dir == UNIT_DIR and Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        res = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise FastpathError(f"systemctl daemon-reload failed: {res.stderr.strip()}")
        reloaded = True
    return path, reloaded
