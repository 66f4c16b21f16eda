"""The fleet lab's traffic: an echo server per backend and a client that counts every
connection. Run inside the lab's namespaces:

    python -m fastpath.labs.fleetpeers server NAME PORT
    python -m fastpath.labs.fleetpeers client HOST PORT --long-lived 60 --seconds 120

The server answers each line "SEQ" with "NAME SEQ", so the client knows which backend holds
each connection. The client keeps `--long-lived` connections, each sending a line every
`--interval` seconds and checking the answer (right number, same backend as at the start,
within `--reply-timeout`), and opens `--new-rate` new short connections a second. It prints
JSON lines: "ready" (every long-lived connection and its backend), "lost" (a long-lived
connection that failed: when and why), "new_failed", and at the end (SIGTERM or
`--seconds`) "summary". Bounded: at most `--seconds` (<= 600) and 100000 new connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from typing import Any


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


# ---------------------------------------------------------------------------------------
# server


async def serve(name: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(f"{name} {line.decode(errors='replace').strip()}\n".encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024, reuse_address=True)
    emit("ready", name=name, port=port)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------
# client


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.host: str = args.host
        self.port: int = args.port
        self.args = args
        self.stop = asyncio.Event()
        self.backends: dict[int, str] = {}    # long-lived connection (source port) -> backend
        self.lost: dict[int, str] = {}
        self.stall: dict[int, float] = {}     # longest wait for an answer, per connection
        self.new = Counter[str]()
        self.new_backends = Counter[str]()

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seq: str) -> str:
        writer.write(f"{seq}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), self.args.reply_timeout)
        if not line:
            raise ConnectionError("closed by the other side")
        name, _, got = line.decode(errors="replace").strip().partition(" ")
        if got != seq:
            raise ConnectionError(f"answer {got!r} to {seq!r}")
        return name

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                      self.args.connect_timeout)

    async def long_lived(self, ready: asyncio.Queue[int | str]) -> None:
        try:
            reader, writer = await self.open()
            sport = int(writer.get_extra_info("sockname")[1])
            first = await self.exchange(reader, writer, "0")
        except OSError as exc:  # timeouts too: TimeoutError is an OSError
            await ready.put(f"{type(exc).__name__}: {exc}")
            return
        self.backends[sport] = first
        self.stall[sport] = 0.0
        await ready.put(sport)
        seq = 1
        try:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.interval)
                if self.stop.is_set():
                    break
                t0 = time.monotonic()
                name = await self.exchange(reader, writer, str(seq))
                self.stall[sport] = max(self.stall[sport], time.monotonic() - t0)
                if name != first:
                    raise ConnectionError(f"moved from backend {first} to {name}")
                seq += 1
        except OSError as exc:  # timeouts too: TimeoutError is an OSError
            reason = (f"no answer within {self.args.reply_timeout:g}s" if isinstance(exc, TimeoutError)
                      else f"{type(exc).__name__}: {exc}")
            self.lost[sport] = reason
            emit("lost", sport=sport, backend=first, reason=reason, seq=seq)
        finally:
            writer.close()

    async def one_new(self) -> None:
        try:
            reader, writer = await self.open()
            try:
                name = await self.exchange(reader, writer, "new")
            finally:
                writer.close()
            self.new["ok"] += 1
            self.new_backends[name] += 1
        except OSError as exc:  # timeouts too: TimeoutError is an OSError
            self.new["failed"] += 1
            emit("new_failed", reason=f"{type(exc).__name__}: {exc}")

    async def new_connections(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        gap = 1.0 / self.args.new_rate if self.args.new_rate > 0 else None
        n = 0
        while gap is not None and not self.stop.is_set() and n < 100_000:
            if len(tasks) < 200:
                task = asyncio.create_task(self.one_new())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), gap)
        if tasks:
            await asyncio.wait(tasks)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.call_later(min(self.args.seconds, 600), self.stop.set)
        ready: asyncio.Queue[int | str] = asyncio.Queue()
        flows = [asyncio.create_task(self.long_lived(ready)) for _ in range(self.args.long_lived)]
        errors = []
        for _ in flows:
            got = await ready.get()
            if isinstance(got, str):
                errors.append(got)
        emit("ready", flows={str(p): b for p, b in sorted(self.backends.items())}, errors=errors)
        await asyncio.gather(self.new_connections(), *flows)
        emit("summary", long_lived=len(self.backends), failed_to_open=len(errors),
             lost={str(p): r for p, r in self.lost.items()}, new_ok=self.new["ok"],
             new_failed=self.new["failed"], new_backends=dict(self.new_backends),
             max_stall_s=round(max(self.stall.values(), default=0.0), 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetpeers")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("name")
    s.add_argument("port", type=int)
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--long-lived", type=int, default=60)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--new-rate", type=float, default=20.0)
    c.add_argument("--seconds", type=float, default=120.0)
    c.add_argument("--connect-timeout", type=float, default=10.0)
    c.add_argument("--reply-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.role == "server":
        asyncio.run(serve(args.name, args.port))
    else:
        asyncio.run(Client(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
