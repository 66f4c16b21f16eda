"""Option validation shared by both echo engines, the native argv, stats aggregation, the
ServerProcess supervisor's failure paths and the `fastpath uring` command wiring."""

from __future__ import annotations

import sys
import time

import pytest

from fastpath.cli import main
from fastpath.errors import CapabilityError, FastpathError
from fastpath.uring import echo, echo_core, echo_serve
from fastpath.uring.native import EchoOptions, ServerProcess, find_binary


def test_defaults_validate():
    opts = EchoOptions().validate()
    assert opts.effective_conn_max_bytes == 256 * 1024


def test_conn_max_defaults_to_a_quarter_of_a_small_pool():
    assert EchoOptions(buffers=16, buffer_size=1024).effective_conn_max_bytes == 4096
    assert EchoOptions(buffers=16, buffer_size=64).effective_conn_max_bytes == 256
    assert EchoOptions(conn_max_bytes=9999).effective_conn_max_bytes == 9999


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"addr": "example.com"}, "--addr example.com: not an IPv4 or IPv6 address"),
        ({"addr": "1.2.3"}, "--addr 1.2.3"),
        ({"port": -1}, "--port -1: out of range 0..65535"),
        ({"port": 65536}, "--port 65536"),
        ({"threads": 0}, "--threads 0"),
        ({"threads": 257}, "--threads 257"),
        ({"buffers": 8}, "--buffers 8"),
        ({"buffers": 48}, "must be a power of two"),
        ({"buffer_size": 63}, "--buffer-size 63"),
        ({"buffers": 32768, "buffer_size": 1 << 20}, "exceeds"),
        ({"conn_max_bytes": 100}, "--conn-max-bytes 100"),
        ({"conn_max_bytes": 1 << 30}, "must lie in buffer-size..pool size"),
        ({"stats_interval": -1.0}, "--stats-interval"),
        ({"drain_ms": 60001}, "--drain-ms 60001"),
    ],
)
def test_bad_options_name_the_option(changes, needle):
    with pytest.raises(FastpathError) as exc:
        EchoOptions(**changes).validate()
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_ipv6_and_bracketed_addresses_are_accepted():
    EchoOptions(addr="::1").validate()
    EchoOptions(addr="[::1]").validate()
    EchoOptions(addr="0.0.0.0").validate()


def test_native_argv_carries_every_option():
    opts = EchoOptions(addr="::1", port=0, threads=2, sqpoll=True, buffers=64, buffer_size=512,
                       conn_max_bytes=2048, stats_interval=1.5, drain_ms=10)
    argv = opts.native_argv("/x/fastpath-uring-echo")
    assert argv[0] == "/x/fastpath-uring-echo"
    text = " ".join(argv)
    for part in ("--addr ::1", "--port 0", "--threads 2", "--sqpoll", "--buffers 64",
                 "--buffer-size 512", "--conn-max-bytes 2048", "--stats-interval 1.5",
                 "--drain-ms 10"):
        assert part in text
    assert "--sqpoll" not in EchoOptions().native_argv("/bin/true")
    assert "--conn-max-bytes" not in EchoOptions().native_argv("/bin/true")


def test_find_binary():
    with pytest.raises(CapabilityError, match="not found"):
        find_binary("fastpath-no-such-binary")
    assert find_binary().name == "fastpath-uring-echo"


def test_sum_stats_adds_workers():
    a = {"uptime_s": 1.0, "cqes": 10, "enters": 5, "connections_accepted": 3,
         "connections_closed": 1, "bytes_queued": 7}
    b = {"uptime_s": 2.0, "cqes": 30, "enters": 5, "connections_accepted": 4,
         "connections_closed": 4, "bytes_queued": 0}
    total = echo_serve.sum_stats([a, b], final=True)
    assert total["final"] is True and total["threads"] == 2 and total["uptime_s"] == 2.0
    assert total["cqes"] == 40 and total["cqes_per_enter"] == 4.0
    assert total["connections_open"] == 2 and total["bytes_queued"] == 7
    assert set(echo.COUNTERS) <= set(total)


def test_user_data_packing():
    ud = echo_core.pack_ud(echo_core.OP_SEND, 0x1ABCDEF, 77)
    assert ud >> 56 == echo_core.OP_SEND
    assert (ud >> 32) & echo_core.GEN_MASK == 0xABCDEF  # generation wraps at 24 bits
    assert ud & echo_core.SLOT_MASK == 77


def test_server_process_reports_an_early_exit():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('x: error: port in use\\n'); sys.exit(3)"]
    with pytest.raises(FastpathError, match="exited before 'ready': x: error: port in use"):
        ServerProcess(argv, ready_timeout=10)


def test_server_process_gives_up_on_a_silent_child():
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    t0 = time.monotonic()
    with pytest.raises(FastpathError, match="no 'ready' line within"):
        ServerProcess(argv, ready_timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_server_process_ignores_non_json_and_reads_stats():
    script = (
        "import json, signal, sys, time\n"
        "signal.signal(signal.SIGUSR1,\n"
        "              lambda *a: print(json.dumps({'event': 'stats', 'n': 1}), flush=True))\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print(json.dumps({'event': 'stats', 'final': True}),"
        " flush=True), sys.exit(0)))\n"
        "print('not json', flush=True)\n"
        "print(json.dumps({'event': 'ready', 'addr': '127.0.0.1', 'port': 1, 'pid': 0}), flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    with ServerProcess([sys.executable, "-c", script]) as srv:
        assert srv.address == ("127.0.0.1", 1)
        assert srv.stats()["n"] == 1
        assert srv.stop() == 0
        assert srv.final_stats == {"event": "stats", "final": True}
        assert srv.other_output == ["not json"]


def test_uring_without_subcommand_shows_help(capsys):
    assert main(["uring"]) == 2
    assert "serve" in capsys.readouterr().out


def test_serve_rejects_a_non_integer_port(capsys):
    assert main(["uring", "serve", "--port", "eighty"]) == 1
    assert "--port eighty: expected an integer" in capsys.readouterr().err
