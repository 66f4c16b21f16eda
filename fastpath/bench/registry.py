"""Scenario registry: built-ins are imported lazily from `fastpath.bench.scenarios.SCENARIOS`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TypeVar

from fastpath.bench.scenario import Scenario, check_scenario_class
from fastpath.bench.scenarios import SCENARIOS as BUILTIN
from fastpath.errors import CapabilityError, FastpathError

S = TypeVar("S", bound=type[Scenario])

_REGISTRY: dict[str, type[Scenario]] = {}


class ScenarioUnavailable(CapabilityError):
    """A scenario cannot run on this host (missing module, library or kernel feature)."""


def register_scenario(cls: S) -> S:
    """Class decorator: make a Scenario subclass runnable as `fastpath bench <name>`."""
    check_scenario_class(cls)
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"scenario {cls.name!r} registered twice: {existing.__module__} and {cls.__module__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def unregister_scenario(name: str) -> None:
    _REGISTRY.pop(name, None)


def scenario_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTIN))


def load_scenario(name: str) -> type[Scenario]:
    """The class registered as `name`, importing its module on first use."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module = BUILTIN.get(name)
    if module is None:
        names = scenario_names()
        raise FastpathError(
            f"unknown scenario {name!r}",
            fix=f"choose from: {', '.join(names)}" if names else "no scenarios are registered",
        )
    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing = f"Python module {exc.name!r} is missing" if exc.name else str(exc)
        raise ScenarioUnavailable(
            f"scenario {name!r} is unavailable: {missing}",
            fix="run `make setup` or `fastpath doctor` to see what this host lacks",
        ) from exc
    except OSError as exc:  # e.g. ctypes failing to load a shared library
        raise ScenarioUnavailable(f"scenario {name!r} is unavailable: {exc}") from exc
    if name not in _REGISTRY:
        raise FastpathError(f"module {module} does not register scenario {name!r}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class Listing:
    name: str
    description: str
    available: bool
    reason: str
    scenario: type[Scenario] | None


def list_scenarios() -> list[Listing]:
    """Every known scenario; ones whose module can't be imported are marked unavailable."""
    out: list[Listing] = []
    for name in scenario_names():
        try:
            cls = load_scenario(name)
        except FastpathError as exc:
            out.append(Listing(name, "", False, str(exc), None))
            continue
        out.append(Listing(name, cls.description, True, "", cls))
    return out
