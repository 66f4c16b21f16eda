"""Echo servers fastpath is benchmarked against: asyncio and uvloop, Protocol style.

Each is the echo server those libraries' own docs teach (``data_received`` writes the
bytes back on the transport), with the two things a production one adds: a listen backlog
that does not drop a burst of connects, and flow control (reading pauses while the
transport's write buffer is above its high-water mark, so a slow reader cannot grow the
server's memory). Both speak the echo engines' stdout line protocol (see native.py): a
JSON ``ready`` line with the bound port, and a final ``stats`` line after SIGINT/SIGTERM
closed the listener and every connection, exit 0.

    python -m fastpath.uring.peers --loop uvloop --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

LOOPS = ("asyncio", "uvloop")
LISTEN_BACKLOG = 4096  # as the native servers; asyncio's default of 100 drops connect bursts


class EchoProtocol(asyncio.Protocol):
    """Writes every chunk straight back; stops reading while the peer does not read."""

    def __init__(self, server: PeerServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.opened(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made; no check per read

    def eof_received(self) -> bool:
        return False  # close once the echoes already written are flushed

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.closed(self)


class PeerServer:
    """Connection bookkeeping shared by every protocol instance of one server."""

    def __init__(self, loop_name: str) -> None:
        self.loop_name = loop_name
        self.conns: set[EchoProtocol] = set()
        self.accepted = 0
        self.closed_count = 0
        self.started = time.monotonic()

    def opened(self, proto: EchoProtocol) -> None:
        self.conns.add(proto)
        self.accepted += 1

    def closed(self, proto: EchoProtocol) -> None:
        self.conns.discard(proto)
        self.closed_count += 1

    def stats(self, final: bool) -> dict[str, Any]:
        return {
            "event": "stats",
            "final": final,
            "engine": self.loop_name,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "threads": 1,
            "connections_accepted": self.accepted,
            "connections_open": len(self.conns),
            "connections_closed": self.closed_count,
        }


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve(loop_name: str, addr: str, port: int, drain_s: float) -> None:
    loop = asyncio.get_running_loop()
    state = PeerServer(loop_name)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: _emit(state.stats(final=False)))
    server = await loop.create_server(
        lambda: EchoProtocol(state), addr, port, backlog=LISTEN_BACKLOG, reuse_address=True
    )
    bound = server.sockets[0].getsockname()
    _emit({
        "event": "ready", "engine": loop_name, "addr": addr, "port": bound[1], "threads": 1,
        "pid": os.getpid(), "setup": f"{loop_name} Protocol",
    })  # fmt: skip
    await stop.wait()
    # Stop accepting, let written echoes go out for up to drain_s, then close the rest.
    server.close()
    for proto in list(state.conns):
        if proto.transport is not None:
            proto.transport.pause_reading()
            proto.transport.close()  # flushes the write buffer first
    deadline = loop.time() + drain_s
    while state.conns and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for proto in list(state.conns):
        if proto.transport is not None:
            proto.transport.abort()
    await asyncio.sleep(0)  # let connection_lost callbacks run
    await server.wait_closed()
    _emit(state.stats(final=True))


def runner(loop_name: str) -> Callable[[Any], None]:
    """asyncio.run, or uvloop's equivalent (ImportError names uvloop when it is missing)."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastpath.uring.peers",
        description="asyncio / uvloop Protocol echo servers, the peers of `fastpath bench echo`.",
        epilog="example: python -m fastpath.uring.peers --loop uvloop --port 0",
    )
    p.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (default asyncio)")
    p.add_argument("--addr", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7777, help="TCP port, 0 picks a free one")
    p.add_argument("--drain-ms", type=int, default=2000,
                   help="on SIGINT/SIGTERM, time allowed to flush echoes (default 2000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port}: out of range 0..65535", file=sys.stderr)
        return 2
    if not 0 <= args.drain_ms <= 60000:
        print(f"error: --drain-ms {args.drain_ms}: out of range 0..60000", file=sys.stderr)
        return 2
    try:
        run = runner(args.loop)
    except ImportError:
        print(f"error: --loop {args.loop}: the {args.loop} module is not installed "
              "(pip install -e '.[bench]')", file=sys.stderr)  # fmt: skip
        return 1
    try:
        run(serve(args.loop, args.addr, args.port, args.drain_ms / 1000))
    except OSError as exc:
        print(f"error: listen on {args.addr} port {args.port}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
