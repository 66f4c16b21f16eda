"""Compile fastpath's `bpf/*.c` programs with bcc and load them into the kernel.

Tunables reach the C side only as `-D` cflags (each program's `#ifndef` defaults are the
other half). Maps are declared with `FP_MAP` from `bpf/fastpath.h`: given a pin directory,
bcc opens the maps already pinned there, or creates and pins them, so a re-attached
program keeps its state. Compiler and verifier output is captured and turned into one
error that quotes their last lines.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpath.errors import CapabilityError, FastpathError


def bpf_source_dir() -> Path:
    """The directory holding the data-plane C sources (the repository's `bpf/`)."""
    env = os.environ.get("FASTPATH_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"


@dataclass(frozen=True)
class ProgramSpec:
    """One data-plane program: its source stem in `bpf/`, entry function and pinned maps."""

    name: str
    entry: str
    maps: tuple[str, ...]
    defaults: Mapping[str, int] = field(default_factory=dict)
    directory: Path | None = None
    # What the application declares to the runtime (which imports no application): the
    # command that manages an attachment ("fastpath lb" -> "fastpath lb detach IFACE"), and
    # its slot in an interface's program chain (None: it does not share an interface).
    command: str = ""
    chain_slot: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "entry": self.entry, "maps": list(self.maps),
                "defaults": dict(self.defaults), "directory": str(self.directory) if self.directory else None,
                "command": self.command, "chain_slot": self.chain_slot}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProgramSpec:
        directory = data.get("directory")
        maps = data.get("maps") or ()
        defaults = data.get("defaults") or {}
        slot = data.get("chain_slot")
        assert isinstance(maps, list | tuple) and isinstance(defaults, dict)
        return cls(str(data["name"]), str(data["entry"]), tuple(str(m) for m in maps),
                   {str(k): int(v) for k, v in defaults.items()},
                   Path(str(directory)) if directory else None, str(data.get("command") or ""),
                   int(slot) if isinstance(slot, int) else None)

    @property
    def source_dir(self) -> Path:
        return self.directory if self.directory is not None else bpf_source_dir()

    @property
    def source_path(self) -> Path:
        return self.source_dir / f"{self.name}.c"

    @property
    def header_path(self) -> Path:
        return self.source_dir / f"{self.name}.h"


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what libbcc and clang print on fd 2 (the C side bypasses sys.stderr)."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _tail(lines: list[str], n: int = 3) -> str:
    useful = [ln.strip() for ln in lines if ln.strip() and "modprobe" not in ln]
    return " | ".join(useful[-n:]) if useful else "no diagnostic output"


def build_cflags(spec: ProgramSpec, defines: Mapping[str, int | str], pin_dir: str | None) -> list[str]:
    values: dict[str, int | str] = dict(spec.defaults)
    values.update(defines)
    flags = [f"-I{bpf_source_dir()}", f"-I{spec.source_dir}"]
    for key in sorted(values):
        flags.append(f"-D{key}={values[key]}")
    if pin_dir is not None:
        flags.append(f'-DFP_PIN_DIR="{pin_dir}"')
    return flags


def _bcc() -> Any:
    try:
        from bcc import BPF
    except ImportError as exc:
        raise CapabilityError(
            "bcc's Python module is not importable",
            fix="run 'make test' or scripts/setup-host.sh (installs python3-bpfcc and a venv "
            "with --system-site-packages)",
        ) from exc
    return BPF


@dataclass
class LoadedProgram:
    """A compiled program and its loaded entry point; close() releases every fd bcc holds."""

    spec: ProgramSpec
    bpf: Any
    prog_fd: int
    cflags: list[str]

    def map_fd(self, name: str) -> int:
        return int(self.bpf[name.encode()].map_fd)

    def table(self, name: str) -> Any:
        return self.bpf[name.encode()]

    def leaf_type(self, name: str) -> Any:
        """bcc's decoded value type of a map (one CPU's value for per-CPU maps)."""
        table = self.table(name)
        return getattr(table, "sLeaf", table.Leaf)

    def close(self) -> None:
        self.bpf.cleanup()

    def __enter__(self) -> LoadedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    spec: ProgramSpec,
    defines: Mapping[str, int | str] | None = None,
    pin_dir: str | None = None,
    prog_type: str = "XDP",
) -> LoadedProgram:
    """Compile `spec` with bcc and load its entry function; errors quote the tool's output."""
    BPF = _bcc()
    if not spec.source_path.exists():
        raise FastpathError(f"BPF source {spec.source_path} not found",
                            fix="run from a fastpath checkout or set FASTPATH_BPF_DIR")
    cflags = build_cflags(spec, defines or {}, pin_dir)
    with captured_stderr() as out:
        try:
            bpf = BPF(src_file=str(spec.source_path).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception
            bpf = None
            error: Exception | None = exc
        else:
            error = None
    if bpf is None:
        hint = ""
        if any("kconfig.h" in ln or "kernel headers" in ln.lower() for ln in out):
            hint = "; kernel headers missing: run scripts/setup-host.sh"
        raise FastpathError(f"compiling {spec.name} failed: {_tail(out)}{hint}") from error
    with captured_stderr() as out:
        try:
            fn = bpf.load_func(spec.entry.encode(), getattr(BPF, prog_type))
        except Exception as exc:
            fn = None
            error = exc
    if fn is None:
        bpf.cleanup()
        raise FastpathError(f"the verifier rejected {spec.name}: {_tail(out)}") from error
    return LoadedProgram(spec, bpf, int(fn.fd), cflags)


def dump_source(spec: ProgramSpec, defines: Mapping[str, int | str], pin_dir: str | None) -> str:
    """The C text and cflags a load would use, for `--dump-bpf`."""
    flags = build_cflags(spec, defines, pin_dir)
    parts = [f"// cflags: {' '.join(flags)}", f"// ---- {spec.header_path.name}",
             spec.header_path.read_text() if spec.header_path.exists() else "",
             f"// ---- {spec.source_path.name}", spec.source_path.read_text()]
    return "\n".join(parts)
