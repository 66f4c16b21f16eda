"""fastpath.output: a table never cuts a fact."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fastpath import output

COLUMNS = ["namespace", "interface", "VIP", "backend", "share %"]
ROWS = [["fpt-1234abcd-lb-namespace", "veth-balancer0", "[fd93:aaaa:bbbb:cccc::1]:8443/tcp",
         "[fd93:aaaa:bbbb:cccc:dddd:eeee:ffff:1234]:8443", "33.3"]]


def render(monkeypatch: pytest.MonkeyPatch, terminal: bool, width: int) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(output, "console", Console(file=buf, force_terminal=terminal, width=width))
    monkeypatch.setattr(output.sys, "stdout", buf)
    monkeypatch.delenv(output.TABLES_ENV, raising=False)
    output.print_table(COLUMNS, ROWS, title="balancer")
    return buf.getvalue()


@pytest.mark.parametrize(("terminal", "width"), [(False, 80), (True, 80), (True, 40), (True, 200)])
def test_every_value_is_printed_whole(monkeypatch: pytest.MonkeyPatch, terminal: bool, width: int) -> None:
    text = render(monkeypatch, terminal, width)
    for value in ROWS[0]:
        assert value in text, text
    assert "…" not in text


def test_pipe_and_narrow_terminal_get_records(monkeypatch: pytest.MonkeyPatch) -> None:
    text = render(monkeypatch, False, 80)
    assert text.splitlines() == [
        "# balancer",
        "namespace=fpt-1234abcd-lb-namespace interface=veth-balancer0 vip=[fd93:aaaa:bbbb:cccc::1]:8443/tcp "
        "backend=[fd93:aaaa:bbbb:cccc:dddd:eeee:ffff:1234]:8443 share_pct=33.3"]
    assert render(monkeypatch, True, 80).splitlines()[1].startswith("namespace=")
    assert "┃" in render(monkeypatch, True, 200)


def test_values_with_spaces_are_quoted() -> None:
    text = output.format_records(["alive"], [["NO (interface gone)"], [None]])
    assert text == 'alive="NO (interface gone)"\nalive=""\n'



def test_a_reader_that_stops_early_gets_no_error_line() -> None:
    """`fastpath ... | head -1`: when the reader has gone, a command printing a table stops
    quietly with the shell's SIGPIPE status instead of printing an error (unbuffered, so the
    write fails inside the command, as a long listing into `head` does)."""
    import os
    import subprocess
    import sys

    child = (
        "import argparse, sys\n"
        "from fastpath import cli\n"
        "from fastpath.output import print_table\n"
        "p = argparse.ArgumentParser()\n"
        "p.set_defaults(func=lambda a: print_table(['n'], [[str(i)] for i in range(50000)]))\n"
        "cli.build_parser = lambda: p\n"
        "sys.exit(cli.main([]))\n"
    )
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run([sys.executable, "-u", "-c", child], stdout=w, stderr=subprocess.PIPE, text=True,
                             timeout=120)
    finally:
        os.close(w)
    assert res.stderr == ""
    assert res.returncode == 141
