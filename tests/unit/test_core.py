"""The helpers every layer shares: the port parser, the --watch loop, atomic JSON state."""

from __future__ import annotations

import argparse
import json
import os
import threading

import pytest
from rich.text import Text

from fastpath.core import args, jsonstate, watch
from fastpath.errors import FastpathError


@pytest.mark.parametrize(("text", "what", "message"), [
    ("http", "", "port 'http' is not a number"),
    ("0", "", "port 0 out of range 1-65535"),
    ("70000", "VIP 10.0.0.1:70000", "bad VIP 10.0.0.1:70000: port 70000 out of range 1-65535"),
])
def test_parse_port_names_what_was_wrong(text: str, what: str, message: str) -> None:
    with pytest.raises(FastpathError) as err:
        args.parse_port(text, what)
    assert err.value.message == message
    assert err.value.fix == args.PORT_FIX


def test_port_type_is_an_argparse_error_with_the_reason() -> None:
    assert args.port_type(" 443 ") == 443
    with pytest.raises(argparse.ArgumentTypeError, match="port 65536 out of range"):
        args.port_type("65536")


def test_watch_prints_one_json_line_per_sample_with_rates(monkeypatch, capsys) -> None:
    samples = iter([10, 30, 60])
    monkeypatch.setattr(watch.time, "sleep", lambda s: None)

    def sample() -> int:
        try:
            return next(samples)
        except StopIteration:
            raise KeyboardInterrupt from None

    with pytest.raises(KeyboardInterrupt):
        watch.watch(1.0, sample, lambda c, p, dt: Text(str(c)), lambda c, p, dt: {"now": c, "delta": c - p})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"now": 30, "delta": 20}, {"now": 60, "delta": 30}]


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "a" / "state.json"
    assert jsonstate.read_json(path) is None
    jsonstate.write_json(path, {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert os.listdir(path.parent) == ["state.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "state.json"
    jsonstate.write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        jsonstate.write_json(path, {"bad": object()})
    assert jsonstate.read_json(path) == {"ok": True}
    assert os.listdir(tmp_path) == ["state.json"]


def test_locked_serialises_read_modify_write(tmp_path) -> None:
    path = tmp_path / "count.json"
    jsonstate.write_json(path, {"n": 0})

    def bump() -> None:
        for _ in range(50):
            with jsonstate.locked(path):
                data = jsonstate.read_json(path)
                data["n"] += 1
                jsonstate.write_json(path, data)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jsonstate.read_json(path) == {"n": 200}
