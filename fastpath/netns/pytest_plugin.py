"""pytest plugin: namespace labs as fixtures, skip-is-failure for CI, and a leak check.

Load it with `pytest_plugins = ["fastpath.netns.pytest_plugin"]` in a root conftest.py.

Fixtures
  make_lab(source) -> Lab     build a lab from a file path, dict or Topology under a unique
                              per-test name; torn down at test end, pass or fail
  lab1 -> Lab                 the bundled example lab (client, server, bridge sw0)
  netns_required              skip (with the reason) where namespaces cannot be made
  fastpath_session_token      this session's token (see below)

Every lab a session builds is named `t<token><n>`: its namespaces (`t<token><n>-<node>`),
the pins other fastpath code keeps under /sys/fs/bpf/fastpath/<netns>/, its statefile and
its in-flight root-namespace veths all carry the token. At session end the plugin looks for
anything with the token that is still there and fails the run if it finds some (then removes
it). Other developers' sessions on the same machine have other tokens and are never touched.
Tests that make namespaces without a lab should name them with `session_netns_name()`.

Helpers
  run_fastpath(*args, check=True) runs the `fastpath` command line as a user would (this
                              interpreter, wide columns) and fails the test with the
                              command's stderr when it exits non-zero (check=False: returns)

With FASTPATH_REQUIRE_ALL=1 every skip (xfail excepted) is reported as a failure carrying
the skip reason, so CI cannot pass by skipping.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from fastpath.core import paths
from fastpath.core.namespaces import (
    NETNS_RUN_DIR,
    list_netns,
    netns_unavailable_reason,
    umount_detach,
)
from fastpath.errors import FastpathError
from fastpath.netns import builder, state
from fastpath.netns.fileformat import bundled_topology
from fastpath.netns.lab import Lab
from fastpath.netns.model import Topology
from fastpath.netns.procs import live_processes

REQUIRE_ALL_ENV = "FASTPATH_REQUIRE_ALL"
RUN_ROOT = str(paths.RUN_ROOT)

# 24 random bits: enough that concurrent sessions on one machine never share a token, short
# enough that `t<token><n>` stays a 12-character lab name.
_TOKEN = secrets.token_hex(3)
_counter = itertools.count(1)


def run_fastpath(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`fastpath ARGS...` in a child process; with `check`, a non-zero exit fails the test."""
    res = subprocess.run([sys.executable, "-m", "fastpath.cli", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "COLUMNS": "200"}, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"fastpath {' '.join(args)} failed (exit {res.returncode}): {res.stderr}")
    return res


def session_token() -> str:
    """The token carried by every lab and namespace name this test session makes."""
    return _TOKEN


def session_lab_name() -> str:
    """A fresh lab name owned by this session (`t<token><n>`)."""
    return f"t{_TOKEN}{next(_counter)}"


def session_netns_name(label: str) -> str:
    """A fresh namespace name owned by this session, for tests that make one by hand."""
    return f"{session_lab_name()}-{label}"


def is_session_name(name: str, token: str | None = None) -> bool:
    """True for a lab, namespace or pin directory name made by this session."""
    return re.match(rf"^t{token or _TOKEN}\d+(-|$)", name) is not None


def require_netns() -> None:
    """Skip the calling test, with the reason, where namespaces cannot be made."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "").strip().lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def fastpath_session_token() -> str:
    return _TOKEN


@pytest.fixture
def netns_required() -> None:
    require_netns()


LabFactory = Callable[..., Lab]


@pytest.fixture
def make_lab() -> Iterator[LabFactory]:
    """Factory: make_lab(source) builds a lab from a file path, a dict or a Topology.

    Each lab gets a unique session-owned name (the source's `name` is replaced), so tests can
    run concurrently, and is torn down when the test ends (spawned processes killed first).
    """
    labs: list[Lab] = []

    def factory(source: Topology | Mapping[str, Any] | str | Path) -> Lab:
        require_netns()
        lab = Lab.up(source, name=session_lab_name())
        labs.append(lab)
        return lab

    yield factory
    errors = []
    for lab in reversed(labs):
        try:
            lab.down()
        except FastpathError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("lab tear-down failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def lab1(make_lab: LabFactory) -> Lab:
    """The bundled example lab: client and server on bridge sw0 plus a direct eth1 pair."""
    return make_lab(bundled_topology("lab1"))


# ---------------------------------------------------------------------------------------
# skip is not pass


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")


_MARK = "fastpath_forbidden_skip"


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_ALL_ENV}=1 forbids skips: {reason}"
    setattr(report, _MARK, True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    # xfail reports are "skipped" too, marked by wasxfail; an expected failure is not a skip.
    if require_all() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    # A module-level skip (importorskip, allow_module_level) hides every test in it.
    if require_all() and report.skipped:
        _as_failure(report)


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    # pytest files any failed setup under "error"; a skip from a skipif mark or a fixture
    # happens in setup, and should read as the failed test it stands for.
    if getattr(report, _MARK, False) and report.when == "setup":
        return "failed", "F", "FAILED"
    return None


def pytest_report_header(config: pytest.Config) -> str:
    strict = f", {REQUIRE_ALL_ENV}=1: skips fail" if require_all() else ""
    return f"fastpath: lab names t{_TOKEN}<n>{strict}"


# ---------------------------------------------------------------------------------------
# the leak check


@dataclass
class Leak:
    kind: str
    what: str
    cleanup: Callable[[], object]

    def __str__(self) -> str:
        return f"{self.kind} {self.what}"


def _unescape_mountinfo(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def find_leaks(token: str | None = None) -> list[Leak]:
    """Everything with this session's token that still exists."""
    ours: Callable[[str], bool] = lambda name: is_session_name(name, token)  # noqa: E731
    leaks: list[Leak] = []

    for proc in live_processes():
        if token is None or is_session_name(proc.netns, token):
            leaks.append(Leak("process", f"{proc.pid} ({' '.join(proc.argv)})", proc.stop))

    for name in state.names():
        if ours(name):
            leaks.append(Leak("statefile", str(state.state_path(name)), _destroy(name)))

    leaked_ns = [ns for ns in list_netns() if ours(ns)]
    for ns in leaked_ns:
        leaks.append(Leak("namespace", ns, _remove_netns(ns)))

    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [_unescape_mountinfo(line.split()[4]) for line in f]
    except OSError:
        mounts = []
    # A namespace's own bind mount is part of that namespace's leak, not a second one.
    ns_mounts = {os.path.join(NETNS_RUN_DIR, ns) for ns in leaked_ns}
    for point in mounts:
        if point not in ns_mounts and any(ours(part) for part in Path(point).parts):
            leaks.append(Leak("mount", point, _umount(point)))

    try:
        links = builder.root_links_of(None)
    except Exception:  # noqa: BLE001 - no netlink (odd container): nothing to check
        links = []
    for index, ifname, lab in links:
        if ours(lab):
            leaks.append(Leak("root-namespace link", f"{ifname} (lab {lab})", _del_link(index)))

    try:
        pins = os.listdir(builder.BPF_PIN_ROOT)
    except OSError:
        pins = []
    for entry in pins:
        if ours(entry):
            path = os.path.join(builder.BPF_PIN_ROOT, entry)
            leaks.append(Leak("BPF pin directory", path, _rmtree(path)))

    # Run-time state of XDP attachments (/run/fastpath/<plane>/<netns>/...).
    for plane in ("xdp", "lb"):
        base = os.path.join(RUN_ROOT, plane)
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        for entry in entries:
            if ours(entry):
                path = os.path.join(base, entry)
                leaks.append(Leak("run-time state", path, _rmtree(path)))
    return leaks


def _destroy(lab: str) -> Callable[[], None]:
    def run() -> None:
        builder.destroy(lab)

    return run


def _remove_netns(ns: str) -> Callable[[], None]:
    return lambda: builder.remove_netns(ns)


def _umount(point: str) -> Callable[[], None]:
    def run() -> None:
        try:
            umount_detach(point)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):  # already gone
                raise
        if os.path.dirname(point) == NETNS_RUN_DIR and os.path.exists(point):
            os.unlink(point)

    return run


def _del_link(index: int) -> Callable[[], None]:
    def run() -> None:
        with IPRoute() as ipr:
            ipr.link("del", index=index)

    return run


def _rmtree(path: str) -> Callable[[], None]:
    return lambda: shutil.rmtree(path)


def check_and_clean(token: str | None = None) -> tuple[list[Leak], list[str]]:
    """Find this session's leftovers, remove them; returns (leaks, clean-up failures)."""
    leaks = find_leaks(token)
    failures = []
    for leak in leaks:
        try:
            leak.cleanup()
        except Exception as exc:  # noqa: BLE001 - report every failure, keep cleaning
            failures.append(f"{leak}: {exc}")
    return leaks, failures


_leak_report: list[str] = []
# Sessions run in this process (pytester's in-process runs nest one inside a test). Only the
# outermost may check: an inner one shares the token and would tear down the outer
# session's labs while they are still in use.
_session_depth = 0


def pytest_sessionstart(session: pytest.Session) -> None:
    global _session_depth
    _session_depth += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _session_depth
    _session_depth -= 1
    if _session_depth > 0:
        return
    leaks, failures = check_and_clean()
    if not leaks:
        return
    _leak_report[:] = [str(leak) for leak in leaks]
    _leak_report.extend(f"could not remove {f}" for f in failures)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _leak_report:
        return
    terminalreporter.section("fastpath leak check", sep="=", red=True, bold=True)
    terminalreporter.line(
        f"FAILED: this session (token {_TOKEN}) left {len(_leak_report)} thing(s) behind; "
        "they have now been removed, but a test or fixture is missing its clean-up:",
        red=True,
    )
    for line in _leak_report:
        terminalreporter.line(f"  {line}")
