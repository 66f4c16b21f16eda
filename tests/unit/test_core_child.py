"""fastpath.core.child against real child processes: small Python programs that print JSON
lines, die, hang or ignore signals, spawned or forked."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

from fastpath.core.child import (
    Child,
    ChildExited,
    ChildReported,
    ChildTimeout,
    ForkedProcess,
)

PY = sys.executable

TALKER = """\
import json, signal, sys, time
def line(**kw):
    print(json.dumps(kw), flush=True)
signal.signal(signal.SIGUSR1, lambda *a: line(event="stats", n=2))
print("a log line on stdout", flush=True)
sys.stderr.write("a log line on stderr\\n"); sys.stderr.flush()
line(event="ready", port=1234)
line(event="stats", n=1)
while True:
    time.sleep(0.05)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def talker() -> Iterator[Child]:
    with Child.spawn([PY, "-c", TALKER], name="talker") as child:
        yield child


def test_events_in_order_and_log_kept_apart(talker: Child) -> None:
    assert talker.expect("ready", 10) == {"event": "ready", "port": 1234}
    assert talker.expect("stats", 5)["n"] == 1
    talker.proc.send_signal(signal.SIGUSR1)
    assert talker.expect("stats", 5)["n"] == 2
    assert list(talker.output) == ["a log line on stdout"]
    assert list(talker.stderr) == ["a log line on stderr"]
    assert set(talker.log) == {"a log line on stdout", "a log line on stderr"}


def test_expect_passes_over_other_events(talker: Child) -> None:
    assert talker.expect("stats", 10)["n"] == 1  # the ready line before it is dropped
    assert talker.next_event(0.1) is None and not talker.ended


def test_a_line_already_read_counts_at_the_deadline() -> None:
    with Child.spawn([PY, "-c", "print('{\"event\": \"ready\", \"n\": 1}')"]) as child:
        assert child.stop([(None, 10)]) == 0  # a None rung only waits; the readers are done
        assert child.signals == []
        assert child.expect("ready", 0) == {"event": "ready", "n": 1}
        with pytest.raises(ChildExited):
            child.expect("stats", 0)


def test_on_event_sees_what_nobody_awaits() -> None:
    seen: list[dict[str, Any]] = []
    script = "import json\nfor i in range(5): print(json.dumps({'event': 'stats', 'i': i}))\n"
    with Child.spawn([PY, "-c", script], on_event=seen.append) as child:
        child.proc.wait(timeout=10)
        assert child.stop([(signal.SIGTERM, 5)]) == 0  # joins the readers: every line is in
    assert [e["i"] for e in seen] == [0, 1, 2, 3, 4]


def test_a_child_that_dies_is_reported_with_its_stderr_tail() -> None:
    script = "import sys\nsys.stderr.write('first\\nport 7 in use\\n')\nsys.exit(3)\n"
    with Child.spawn([PY, "-c", script], name="srv") as child:
        with pytest.raises(ChildExited) as exc:
            child.expect("ready", 10)
        assert child.ended
    assert exc.value.returncode == 3 and exc.value.detail == "port 7 in use"
    assert str(exc.value) == "srv exited before 'ready': port 7 in use"


def test_a_silent_death_reports_the_exit_status() -> None:
    with Child.spawn([PY, "-c", "import os; os._exit(4)"], name="srv") as child:
        with pytest.raises(ChildExited, match="exit status 4"):
            child.expect("ready", 10)


def test_a_hanging_child_times_out_then_stops_on_sigterm() -> None:
    with Child.spawn([PY, "-c", "import time; time.sleep(60)"], name="sleeper") as child:
        t0 = time.monotonic()
        with pytest.raises(ChildTimeout, match="sleeper: no 'ready' line within 0 s"):
            child.expect("ready", 0.3)
        assert time.monotonic() - t0 < 5
        assert child.stop([(signal.SIGTERM, 5)]) == -signal.SIGTERM
        assert child.signals == ["SIGTERM"] and not child.killed


def test_the_ladder_climbs_until_the_child_exits() -> None:
    script = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "print('{\"event\": \"ready\"}', flush=True)\ntime.sleep(60)\n")  # fmt: skip
    with Child.spawn([PY, "-c", script]) as child:
        child.expect("ready", 10)
        rc = child.stop([(signal.SIGINT, 0.3), (signal.SIGTERM, 5)])
    assert rc == -signal.SIGTERM and child.signals == ["SIGINT", "SIGTERM"]


def test_a_child_deaf_to_the_ladder_is_killed() -> None:
    script = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "print('{\"event\": \"ready\"}', flush=True)\ntime.sleep(60)\n")  # fmt: skip
    with Child.spawn([PY, "-c", script]) as child:
        child.expect("ready", 10)
        assert child.stop([(signal.SIGTERM, 0.3)]) == -signal.SIGKILL
        assert child.killed and child.signals == ["SIGTERM"]


def test_stop_sends_nothing_to_a_child_already_gone() -> None:
    with Child.spawn([PY, "-c", "pass"]) as child:
        child.proc.wait(timeout=10)
        assert child.stop([(signal.SIGTERM, 1)]) == 0
        assert child.signals == []


def test_an_error_event_is_raised_when_asked_and_logged() -> None:
    script = "import json\nprint(json.dumps({'event': 'error', 'message': 'bad portmask'}))\n"
    with Child.spawn([PY, "-c", script]) as child:
        with pytest.raises(ChildReported, match="^bad portmask$") as exc:
            child.expect("ready", 10, errors=True)
        assert exc.value.event["message"] == "bad portmask"
        assert "error: bad portmask" in child.log


def test_close_leaves_no_process_thread_or_pipe() -> None:
    """The child starts a grandchild in its session: close() takes both down."""
    script = ("import json, subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(json.dumps({'event': 'ready', 'grandchild': p.pid}), flush=True)\n"
              "time.sleep(60)\n")  # fmt: skip
    child = Child.spawn([PY, "-c", script])
    grandchild = child.expect("ready", 10)["grandchild"]
    child.close()
    child.close()
    assert gone(child.pid) and wait_gone(grandchild)
    assert all(not t.is_alive() and s.closed for t, s in child._threads)


def _forked_worker(out: IO[str]) -> int:
    out.write(json.dumps({"event": "ready", "pid": os.getpid()}) + "\n")
    signal.sigwait({signal.SIGUSR2})
    return 5


def test_a_forked_body_reports_and_exits_with_its_return_value() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        proc = ForkedProcess(_forked_worker)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    with Child(proc, name="worker") as child:
        assert child.expect("ready", 10)["pid"] == proc.pid != os.getpid()
        assert proc.poll() is None
        assert child.stop([(signal.SIGUSR2, 5)]) == 5
        assert child.signals == ["SIGUSR2"]


def test_a_forked_body_that_hangs_is_stopped_and_one_that_fails_says_so(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with Child(ForkedProcess(lambda out: time.sleep(60) or 0), name="hang") as child:
        with pytest.raises(ChildTimeout):
            child.expect("ready", 0.2)
        assert child.stop([(signal.SIGTERM, 5)]) == -signal.SIGTERM

    def broken(out: IO[str]) -> int:
        raise RuntimeError("no ring")

    with Child(ForkedProcess(broken), name="broken") as child:
        with pytest.raises(ChildExited, match="exit status 1"):
            child.expect("ready", 10)
    assert "RuntimeError('no ring')" in capfd.readouterr().err


def test_die_with_parent_takes_the_child_along() -> None:
    """A supervisor that dies outright: its child, started with die_with_parent, follows."""
    script = ("import json, sys, time\n"
              "from fastpath.core.child import Child, die_with_parent\n"
              "c = Child.spawn([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
              "                preexec_fn=die_with_parent)\n"
              "print(json.dumps({'event': 'ready', 'child': c.pid}), flush=True)\n"
              "time.sleep(60)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with Child.spawn([PY, "-c", script], env=env) as supervisor:
        orphan = supervisor.expect("ready", 10)["child"]
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.proc.wait(timeout=10)
        assert wait_gone(orphan), "the child outlived its supervisor"


def test_spawning_a_missing_program_fails_plainly() -> None:
    with pytest.raises(FileNotFoundError):
        Child.spawn(["/nonexistent/fastpath-program"])
