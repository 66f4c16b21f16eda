"""The pytest plugin's FASTPATH_REQUIRE_ALL rule, run in a child pytest (no privileges)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("no widget on this machine")

@pytest.mark.skipif(True, reason="widget too old")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False

def test_imperative_xfail():
    pytest.xfail("known limitation")
"""

MODULE_SKIP = """
import pytest
pytest.skip("whole module needs a widget", allow_module_level=True)

def test_never_runs():
    pass
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess, so the child has its own plugin state (session token, leak report).
    return pytester.runpytest_subprocess(
        "-p", "fastpath.netns.pytest_plugin", "-p", "no:cacheprovider", "-rA", *args
    )


def test_skips_are_skips_by_default(pytester, monkeypatch):
    monkeypatch.delenv("FASTPATH_REQUIRE_ALL", raising=False)
    pytester.makepyfile(test_things=TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=2, xfailed=2)
    assert result.ret == 0


def test_require_all_turns_skips_into_failures_with_the_reason(pytester, monkeypatch):
    monkeypatch.setenv("FASTPATH_REQUIRE_ALL", "1")
    pytester.makepyfile(test_things=TESTS)
    result = run(pytester)
    # Skips in the test body and from skipif marks (setup phase) both count as failures;
    # xfails are expected failures, not skips, and stay as they are.
    result.assert_outcomes(passed=1, failed=2, xfailed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED test_things.py::test_skips - skipped, but FASTPATH_REQUIRE_ALL=1 *"])
    result.stdout.fnmatch_lines(
        ["FAILED test_things.py::test_skipif - skipped, but FASTPATH_REQUIRE_ALL=1 *"]
    )
    result.stdout.fnmatch_lines(["*FASTPATH_REQUIRE_ALL=1 forbids skips: widget too old"])
    result.stdout.fnmatch_lines(["*FASTPATH_REQUIRE_ALL=1 forbids skips: no widget on this*"])


def test_require_all_fails_module_level_skips(pytester, monkeypatch):
    monkeypatch.setenv("FASTPATH_REQUIRE_ALL", "1")
    pytester.makepyfile(test_module_skip=MODULE_SKIP)
    result = run(pytester)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*forbids skips: whole module needs a widget*"])


def test_header_names_the_session_token(pytester, monkeypatch):
    monkeypatch.setenv("FASTPATH_REQUIRE_ALL", "1")
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(pytester)
    result.stdout.fnmatch_lines(["fastpath: lab names t??????<n>, FASTPATH_REQUIRE_ALL=1: skips fail"])
    assert result.ret == 0
