"""fastpath.uring's bindings (structs, liburing, ring, bufring, probe) against real rings:
struct layout, probe, and every prep helper round-tripping through the kernel (NOP, pipe
read/write, timeouts, accept, recv, send, close, shutdown, cancel, provided buffers)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from fastpath.errors import FastpathError
from fastpath.uring import abi, structs
from fastpath.uring import liburing as lu
from fastpath.uring import ring as rg
from fastpath.uring.probe import probe_features


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_fd_leak():
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    # listdir's own directory fd is gone by now; anything else is ours.
    assert not leaked, f"file descriptors leaked: {sorted(leaked)}"


@pytest.fixture
def ring():
    with rg.Ring(64) as r:
        yield r


# --- loading and layout -------------------------------------------------------------------


def test_binding_loads_and_layout_was_checked():
    b = lu.load()
    assert b.kind in ("ffi", "shim")
    assert b.layout_checked, "the shim's layout table was not compared with the mirrors"
    if ctypes.util.find_library("uring-ffi") is None and not os.environ.get("FASTPATH_LIBURING"):
        assert b.kind == "shim"  # liburing < 2.4: the shim must have been chosen
    assert b.version[0].isdigit()


def test_shim_layout_matches_every_mirror():
    b = lu.load()
    assert b.shim is not None
    c_side = lu.shim_layout(b.shim)
    py_side = structs.python_layout()
    assert structs.compare_layouts(c_side, py_side) == []
    # The table really covers the structs, not just their sizes.
    assert c_side["io_uring"] == ctypes.sizeof(structs.IoUring)
    assert c_side["io_uring.ring_fd"] == structs.IoUring.ring_fd.offset
    assert c_side["io_uring_sqe.user_data"] == 32


def test_layout_mismatch_is_refused():
    class BadRing(structs.Mirror):
        _c_name_ = "io_uring"
        _fields_ = [(name, t) for name, t, *_ in structs.IoUring._fields_ if name != "features"]

    b = lu.load()
    assert b.shim is not None
    mirrors = tuple(m for m in structs.MIRRORS if m is not structs.IoUring) + (BadRing,)
    with pytest.raises(FastpathError, match="layout mismatch.*io_uring"):
        lu.check_layout(b.shim, mirrors)
    problems = structs.compare_layouts(lu.shim_layout(b.shim), structs.python_layout(mirrors))
    assert "io_uring.features: in C, not mirrored in Python" in problems


def test_layout_agrees_with_an_independent_compile(tmp_path):
    """Compile a separate program against <liburing.h> and compare with the mirrors."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to cross-check struct layouts")
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <liburing.h>\n#include <stdio.h>\n#include <stddef.h>\n"
        "int main(void) {\n"
        ' printf("%zu %zu %zu %zu %zu %zu %zu\\n", sizeof(struct io_uring),\n'
        "  offsetof(struct io_uring, cq), offsetof(struct io_uring, ring_fd),\n"
        "  offsetof(struct io_uring_cq, cqes), sizeof(struct io_uring_params),\n"
        "  offsetof(struct io_uring_sqe, buf_group), sizeof(struct io_uring_buf_reg));\n"
        " return 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True, capture_output=True)
    run = subprocess.run([str(exe)], check=True, capture_output=True, text=True)
    got = [int(x) for x in run.stdout.split()]
    assert got == [
        ctypes.sizeof(structs.IoUring),
        structs.IoUring.cq.offset,
        structs.IoUring.ring_fd.offset,
        structs.IoUringCq.cqes.offset,
        ctypes.sizeof(structs.IoUringParams),
        structs.IoUringSqe.buf_group.offset,
        ctypes.sizeof(structs.IoUringBufReg),
    ]


def test_explicit_library_path_selects_the_shim():
    b = lu.load()
    path = b.shim_path or b.path
    again = lu.open_library(path)
    assert again.kind == "shim" and again.layout_checked


def test_missing_library_is_one_clear_error(tmp_path):
    with pytest.raises(FastpathError, match="cannot load liburing binding"):
        lu.open_library(str(tmp_path / "nope.so"))


# --- ring setup ---------------------------------------------------------------------------


def test_default_setup_prefers_single_issuer_defer_taskrun(ring):
    # Kernel 6.1+ accepts the first entry of the chain.
    assert ring.setup_flags & abi.IORING_SETUP_SINGLE_ISSUER
    assert ring.setup_flags & abi.IORING_SETUP_DEFER_TASKRUN
    assert ring.fd >= 0 and ring.sq_entries == 64 and ring.cq_entries == 128
    assert ring.features & abi.IORING_FEAT_NODROP


def test_setup_falls_back_when_flags_are_refused():
    # DEFER_TASKRUN without SINGLE_ISSUER is invalid: the ring must fall back to the next.
    chain = (abi.IORING_SETUP_DEFER_TASKRUN, abi.IORING_SETUP_COOP_TASKRUN)
    with rg.Ring(8, setup_chain=chain) as r:
        assert r.setup_flags & abi.IORING_SETUP_COOP_TASKRUN
        assert not r.setup_flags & abi.IORING_SETUP_DEFER_TASKRUN
        assert r.run_nop_roundtrip().res == 0


def test_explicit_invalid_flags_raise():
    with pytest.raises(FastpathError, match="io_uring_queue_init_params failed: EINVAL"):
        rg.Ring(8, flags=abi.IORING_SETUP_DEFER_TASKRUN)


def test_sqpoll_ring_round_trips():
    with rg.Ring(8, sqpoll=True, sq_thread_idle_ms=50) as r:
        assert r.setup_flags & abi.IORING_SETUP_SQPOLL
        assert r.run_nop_roundtrip().res == 0


def test_out_of_range_entries():
    with pytest.raises(FastpathError, match="out of range"):
        rg.Ring(0)


def test_close_is_idempotent():
    r = rg.Ring(8)
    r.close()
    r.close()
    assert r.closed


# --- probe --------------------------------------------------------------------------------


def test_probe_lists_the_opcodes_the_echo_servers_need(ring):
    probe = ring.probe()
    assert probe.last_op >= abi.OP["SEND_ZC"]
    for name in ("NOP", *abi.ECHO_OPCODES):
        assert name in probe
    assert probe.missing(abi.ECHO_OPCODES) == []
    assert probe.missing(["NOP"]) == []
    assert "NOP" in probe.names()
    assert abi.OP["RECV"] == 27 and abi.OP["ASYNC_CANCEL"] == 14  # kernel ABI numbers


def test_probe_features_uses_each_feature():
    report = probe_features()
    assert report["binding"] == lu.load().kind
    assert report["functional"]["multishot_accept"]["ok"] is True
    assert report["functional"]["multishot_recv_buffer_ring"]["ok"] is True
    assert "NODROP" in report["features"]
    assert report["missing_for_echo"] == []


def test_probe_cli_json(capsys):
    from fastpath.cli import main

    assert main(["uring", "probe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["binding"] in ("ffi", "shim")
    assert "RECV" in report["opcodes"]


def test_probe_cli_table(capsys):
    from fastpath.cli import main

    assert main(["uring", "probe"]) == 0
    out = capsys.readouterr().out
    assert "binding" in out and "multishot_accept" in out


# --- every prep helper through a real ring ---------------------------------------------------


def test_nop_carries_user_data(ring):
    ring.prep_nop(0xDEADBEEF12345678)
    (c,) = ring.completions(1)
    assert c == rg.Completion(0xDEADBEEF12345678, 0, 0)


def test_read_from_a_pipe(ring):
    r, w = os.pipe()
    try:
        os.write(w, b"hello ring")
        buf = bytearray(32)
        ring.prep_read(r, buf, 7)
        (c,) = ring.completions(1)
        assert c.user_data == 7 and c.res == 10
        assert bytes(buf[:10]) == b"hello ring"
        assert not ring._keep, "the buffer keep-alive outlived its completion"
    finally:
        os.close(r)
        os.close(w)


def test_write_to_a_pipe(ring):
    r, w = os.pipe()
    try:
        ring.prep_write(w, b"written by io_uring", 8)
        (c,) = ring.completions(1)
        assert c.res == 19
        assert os.read(r, 64) == b"written by io_uring"
    finally:
        os.close(r)
        os.close(w)


def test_timeout_expires(ring):
    t0 = time.monotonic()
    ring.prep_timeout(0.05, 9)
    (c,) = ring.completions(1)
    assert c.user_data == 9 and c.res == -errno.ETIME
    assert time.monotonic() - t0 >= 0.04


def test_timeout_completes_on_count(ring):
    ring.prep_timeout(10.0, 1, count=1)
    ring.prep_nop(2)
    got = {c.user_data: c.res for c in ring.completions(2, timeout=2)}
    assert got == {1: 0, 2: 0}


def test_timeout_remove_cancels(ring):
    ring.prep_timeout(10.0, 1)
    ring.submit()
    ring.prep_timeout_remove(1, 2)
    got = {c.user_data: c.res for c in ring.completions(2, timeout=2)}
    assert got == {1: -errno.ECANCELED, 2: 0}


def test_accept_one_shot(ring):
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        ring.prep_accept(lsock.fileno(), 3)
        ring.submit()
        with socket.create_connection(lsock.getsockname(), timeout=2) as client:
            (c,) = ring.completions(1)
            assert c.res >= 0 and not c.more
            with socket.socket(fileno=c.res) as server_side:
                client.sendall(b"x")
                assert server_side.recv(1) == b"x"


def test_multishot_accept_then_cancel(ring):
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        ring.prep_multishot_accept(lsock.fileno(), 5)
        ring.submit()
        clients = [socket.create_connection(lsock.getsockname(), timeout=2) for _ in range(3)]
        try:
            accepted = ring.completions(3)
            assert all(c.user_data == 5 and c.res >= 0 and c.more for c in accepted)
            for c in accepted:
                os.close(c.res)
            ring.prep_cancel(5, 6)
            got = {c.user_data: c for c in ring.completions(2)}
            assert got[6].res == 0
            assert got[5].res == -errno.ECANCELED and not got[5].more
        finally:
            for s in clients:
                s.close()


def test_recv_into_a_buffer_and_send(ring):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"ping")
        buf = bytearray(16)
        ring.prep_recv(a.fileno(), buf, 1)
        ring.prep_send(a.fileno(), b"pong!", 2)
        got = {c.user_data: c.res for c in ring.completions(2)}
        assert got == {1: 4, 2: 5}
        assert bytes(buf[:4]) == b"ping"
        assert b.recv(16) == b"pong!"


def test_send_with_raw_address_and_ctypes_buffer(ring):
    a, b = socket.socketpair()
    with a, b:
        arr = (ctypes.c_char * 8).from_buffer_copy(b"rawbytes")
        ring.prep_send(a.fileno(), ctypes.addressof(arr), 11, length=8)
        (c,) = ring.completions(1)
        assert c.res == 8 and b.recv(16) == b"rawbytes"
        with pytest.raises(TypeError):
            ring.prep_send(a.fileno(), ctypes.addressof(arr), 12)


def test_recv_with_buffer_select(ring):
    a, b = socket.socketpair()
    with a, b:
        br = ring.buffer_ring(1, 4, 32)
        b.sendall(b"selected")
        ring.prep_recv_select(a.fileno(), 1, 4)
        (c,) = ring.completions(1)
        assert c.res == 8 and c.buffer_id is not None
        assert br.read(c.buffer_id, c.res) == b"selected"
        br.recycle(c.buffer_id)


def test_multishot_recv_buffer_ring_enobufs_and_rearm(ring):
    """Two buffers: two messages fill them, the third ends the multishot with ENOBUFS;
    after recycling, a re-armed recv gets the data that waited in the socket."""
    a, b = socket.socketpair()
    with a, b:
        br = ring.buffer_ring(2, 2, 64)
        ring.prep_recv_multishot(a.fileno(), 2, 10)
        ring.submit()
        seen = []
        for msg in (b"one", b"two"):
            b.sendall(msg)
            (c,) = ring.completions(1)
            assert c.res == len(msg) and c.more and c.buffer_id is not None
            assert br.read(c.buffer_id, c.res) == msg
            seen.append(c.buffer_id)
        assert sorted(seen) == [0, 1]
        b.sendall(b"three")
        (c,) = ring.completions(1)
        assert c.res == -errno.ENOBUFS and not c.more
        br.recycle_many(seen)
        ring.prep_recv_multishot(a.fileno(), 2, 11)
        (c,) = ring.completions(1)
        assert c.res == 5 and c.more and br.read(c.buffer_id, 5) == b"three"
        b.shutdown(socket.SHUT_WR)
        (c,) = ring.completions(1)
        assert c.user_data == 11 and c.res == 0 and not c.more


def test_recycle_without_the_batched_helper(ring):
    a, b = socket.socketpair()
    with a, b:
        br = ring.buffer_ring(3, 1, 16)
        br._recycle_fn = None  # the liburing-ffi-only path
        for msg in (b"a", b"b", b"c"):
            b.sendall(msg)
            ring.prep_recv_select(a.fileno(), 3, 1)
            (c,) = ring.completions(1)
            assert c.res == 1 and br.read(c.buffer_id, 1) == msg
            br.recycle_many([c.buffer_id])


def test_close_through_the_ring(ring):
    r, w = os.pipe()
    os.close(w)
    ring.prep_close(r, 12)
    (c,) = ring.completions(1)
    assert c.res == 0
    with pytest.raises(OSError) as exc:
        os.fstat(r)
    assert exc.value.errno == errno.EBADF


def test_shutdown_through_the_ring(ring):
    a, b = socket.socketpair()
    with a, b:
        ring.prep_shutdown(a.fileno(), socket.SHUT_WR, 13)
        (c,) = ring.completions(1)
        assert c.res == 0
        assert b.recv(8) == b""


def test_cancel_a_pending_recv_by_user_data(ring):
    a, b = socket.socketpair()
    with a, b:
        ring.prep_recv(a.fileno(), bytearray(8), 20)
        ring.submit()
        ring.prep_cancel(20, 21)
        got = {c.user_data: c.res for c in ring.completions(2)}
        assert got == {20: -errno.ECANCELED, 21: 0}
        assert not ring._keep


def test_cancel_all_requests_on_an_fd(ring):
    a, b = socket.socketpair()
    with a, b:
        ring.prep_recv(a.fileno(), bytearray(8), 30)
        ring.prep_recv(a.fileno(), bytearray(8), 31)
        ring.submit()
        ring.prep_cancel_fd(a.fileno(), 32, flags=abi.IORING_ASYNC_CANCEL_ALL)
        got = {c.user_data: c.res for c in ring.completions(3)}
        assert got == {30: -errno.ECANCELED, 31: -errno.ECANCELED, 32: 2}


def test_full_submission_queue_is_flushed_not_lost():
    with rg.Ring(4) as r:
        for i in range(10):
            r.prep_nop(i)
        assert sorted(c.user_data for c in r.completions(10)) == list(range(10))


def test_batched_and_portable_reaping_agree(ring):
    for i in range(20):
        ring.prep_nop(i)
    ring.submit()
    deadline = time.monotonic() + 2
    while ring.cq_ready() < 20 and time.monotonic() < deadline:
        ring.wait(1, 0.1)
    assert ring.cq_ready() == 20
    first = ring._reap_portable(10)
    rest = ring.reap()
    assert [c.user_data for c in first + rest] == list(range(20))
    assert ring.cq_ready() == 0


def test_peek_and_queue_counters(ring):
    assert ring.peek() is None
    ring.prep_nop(1)
    ring.prep_nop(2)
    assert ring.sq_ready() == 2 and ring.sq_space_left() == 62
    ring.wait(2, 2)
    assert ring.sq_ready() == 0
    c1 = ring.peek()
    c2 = ring.peek()
    assert c1 is not None and c2 is not None
    assert {c1.user_data, c2.user_data} == {1, 2}
    assert ring.peek() is None


def test_wait_times_out(ring):
    t0 = time.monotonic()
    assert ring.wait(1, 0.05) is False
    assert time.monotonic() - t0 >= 0.04


def test_completions_times_out_with_a_clear_error(ring):
    with pytest.raises(FastpathError, match="timed out: 0 of 1"):
        ring.completions(1, timeout=0.05)


# --- buffer ring validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "size", "group", "match"),
    [
        (3, 64, 0, "power of two"),
        (65536, 64, 0, "power of two"),
        (4, 0, 0, "buffer size"),
        (4, 64, 70000, "buffer group"),
    ],
)
def test_buffer_ring_rejects_bad_shapes(ring, entries, size, group, match):
    with pytest.raises(FastpathError, match=match):
        ring.buffer_ring(group, entries, size)


def test_buffer_group_registered_once(ring):
    ring.buffer_ring(4, 4, 64)
    with pytest.raises(FastpathError, match="already registered"):
        ring.buffer_ring(4, 4, 64)


def test_buffer_ring_close_unregisters(ring):
    br = ring.buffer_ring(5, 4, 64)
    br.close()
    again = ring.buffer_ring(5, 4, 64)  # the kernel accepts group 5 again
    assert again.base


def test_completion_helpers():
    c = rg.Completion(1, 5, abi.IORING_CQE_F_BUFFER | abi.IORING_CQE_F_MORE | (7 << 16))
    assert c.more and c.buffer_id == 7
    assert rg.Completion(1, 0, 0).buffer_id is None
    assert lu.strerror(-errno.ENOBUFS).startswith("ENOBUFS")
    assert abi.flag_names(abi.IORING_SETUP_SQPOLL | abi.IORING_SETUP_SINGLE_ISSUER,
                          abi.SETUP_FLAG_NAMES) == ["SQPOLL", "SINGLE_ISSUER"]
