"""The SYN-flood lab shared by the integration test, `fastpath demo synflood` and the
`synflood` benchmark: one topology, an echo service, a legitimate-client probe and the
spoofed flood (fastpath/labs/flood.py), each run in its node with `Lab.spawn`/`Lab.run`.

Topology: client, attacker and server on one bridge. The server runs with
tcp_syncookies=0 (it covers IPv6 too) and routes the spoofed source networks (IPv4 and
IPv6) back through the attacker (a SYN flood only hurts a server that answers, and the
attacker's kernel silently drops the SYN-ACKs since the addresses are not its own).
Every link has GRO on, which gives each veth its own NAPI ring: without it every veth of
one CPU feeds that CPU's one backlog queue, and the flood would crowd the client's frames
out of it, which separate NICs (or queues) would not. TX checksum offload is off (so frames
carry real checksums that XDP can check and the guard's SYN-ACKs are complete). Nothing is
done for veth's XDP_TX delivery: the runtime puts its pass program on the server's bridge
port when the guard attaches natively.

The module is also the service and the probe: `python -m fastpath.labs.floodlab serve|probe`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastpath.errors import FastpathError

if TYPE_CHECKING:
    from fastpath.netns import Lab

SERVICE_PORT = 8080
SPOOFED_NET = "10.99.0.0/16"
SPOOFED_NET6 = "fd99::/64"
SERVER4, CLIENT4, ATTACKER4 = "10.66.0.2", "10.66.0.1", "10.66.0.3"
SERVER6, ATTACKER6 = "fd66::2", "fd66::3"

TOPOLOGY: dict[str, Any] = {
    "name": "synflood",
    "nodes": {
        "client": {},
        # IPv6 answers a packet for an address it does not have with a (rate-limited)
        # ICMPv6 unreachable; one a minute keeps the guard's SYN-ACKs from echoing back.
        "attacker": {"sysctls": {"net.ipv6.icmp.ratelimit": 60000}},
        # No kernel cookies (so the flood hurts); half-open connections expire in ~3 s.
        "server": {"sysctls": {"net.ipv4.tcp_syncookies": 0, "net.ipv4.tcp_synack_retries": 1}},
    },
    "bridges": {"sw0": {}},
    "links": [{"endpoints": [f"{node}:eth0", "sw0"], "gro": True, "tx_checksum": False}
              for node in ("client", "attacker", "server")],
    "addresses": {
        "client:eth0": [f"{CLIENT4}/24", "fd66::1/64"],
        "attacker:eth0": [f"{ATTACKER4}/24", f"{ATTACKER6}/64"],
        "server:eth0": [f"{SERVER4}/24", f"{SERVER6}/64"],
    },
    "routes": {"server": [{"dst": SPOOFED_NET, "via": ATTACKER4}, {"dst": SPOOFED_NET6, "via": ATTACKER6}]},
    "static_neighbors": True,
}


# -- commands to run in the lab's nodes ---------------------------------------------------------

# The service's listen backlog, and how long a spoofed SYN holds a slot in it on the server
# (tcp_synack_retries=1: the SYN-ACK, one retransmit after 1 s, given up 2 s later). A flood
# faster than SERVE_BACKLOG / HALF_OPEN_SECONDS SYNs a second keeps the unguarded queue full.
SERVE_BACKLOG = 128
HALF_OPEN_SECONDS = 3.0


def serve_argv(port: int = SERVICE_PORT, backlog: int = SERVE_BACKLOG) -> list[str]:
    return [sys.executable, "-m", "fastpath.labs.floodlab", "serve", "--port", str(port),
            "--backlog", str(backlog)]


def probe_argv(target: str = SERVER4, port: int = SERVICE_PORT, count: int = 200, timeout: float = 3.0,
               interval: float = 0.01, seconds: float = 120.0, progress: bool = False) -> list[str]:
    return [sys.executable, "-m", "fastpath.labs.floodlab", "probe", "--target", target, "--port", str(port),
            "--count", str(count), "--timeout", str(timeout), "--interval", str(interval),
            "--seconds", str(seconds), *(["--progress"] if progress else [])]


# A probe starts no attempt after its `seconds`, and one attempt lasts at most two timeouts
# (the connect, then the echo): a flood that must outlast a probe runs for this long, bounded
# in frames by a count it cannot reach first at any engine's rate.
PROBE_SECONDS = 90.0
OUTLAST_FRAMES = 1_000_000_000


def outlast_seconds(probe_seconds: float = PROBE_SECONDS, timeout: float = 5.0) -> float:
    """How long a flood must run to outlast a probe of `probe_seconds` with `timeout`."""
    return probe_seconds + 2 * timeout + 10.0


def flood_argv(lab: Lab, count: int, seconds: float, port: int = SERVICE_PORT,
               target: str = SERVER4, engine: str | None = None) -> list[str]:
    """The spoofed flood at `target` (SERVER4: sources from SPOOFED_NET; SERVER6: SPOOFED_NET6),
    with `engine` (default: $FASTPATH_FLOOD_ENGINE, else auto)."""
    src_net = SPOOFED_NET6 if ":" in target else SPOOFED_NET
    return [sys.executable, "-m", "fastpath.labs.flood", "--iface", "eth0",
            "--dst-mac", lab.mac("server", "eth0"), "--dst", target, "--dport", str(port),
            "--src-net", src_net, "--count", str(count), "--seconds", str(seconds),
            *(["--engine", engine] if engine else [])]


@dataclass(frozen=True)
class FloodResult:
    sent: int
    seconds: float
    engine: str

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def flood_engine(out: str) -> str:
    """The engine the generator reported (`engine NAME ...`), once it is ready."""
    for line in out.splitlines():
        if line.startswith("engine "):
            return line.split()[1]
    raise FastpathError(f"the flood generator did not start: {flood_error(out)}")


def flood_error(out: str) -> str:
    """The generator's error line, or the tail of its output."""
    for line in reversed(out.splitlines()):
        if line.startswith("error: "):
            return line[len("error: "):]
    return repr(out[-300:]) if out.strip() else "no output"


def flood_result(out: str) -> FloodResult:
    """Frames sent, seconds and engine from the generator's last line."""
    for line in reversed(out.splitlines()):
        parts = line.split()
        if len(parts) == 6 and parts[0] == "sent":
            return FloodResult(int(parts[1]), float(parts[3]), parts[5])
    raise FastpathError(f"the flood generator failed: {flood_error(out)}")


def cleanup(lab: Lab) -> list[str]:
    """Detach every fastpath XDP program in the lab's namespaces (the guard with its nft
    rules); for finally-blocks and fixtures, so a failed run leaves no state file behind."""
    from fastpath.apps.guard import abi, synguard
    from fastpath.bpf import xdp

    names = {lab.netns(n) for n in lab.nodes}
    if lab.topology.switch_netns:
        names.add(lab.topology.switch_netns)
    done = []
    for att in xdp.attachments():
        if att.netns not in names or xdp.read_state(att.ifname, att.netns, att.program) is None:
            continue  # elsewhere, or a peer's pass program already removed with its user
        if att.program == abi.PROGRAM:
            synguard.detach(att.ifname, att.netns)
        else:
            xdp.detach(att.ifname, att.netns)
        done.append(f"{att.program} on {att.ifname} in {att.netns}")
    return done


def xdp_rx_packets(lab: Lab, node: str = "server") -> int:
    """Frames the XDP program on `node`'s eth0 has seen, from the veth driver's counters."""
    out = lab.run(node, ["ethtool", "-S", "eth0"]).stdout
    total = 0
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip().startswith("rx_queue_") and name.strip().endswith("_xdp_packets"):
            total += int(value)
    return total


# -- the service and the probe (run inside the lab) -----------------------------------------------

def _serve(port: int, backlog: int) -> int:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(backlog)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = conn.recv(256)
                conn.sendall(b"echo:" + data)
            except OSError:
                pass

    sock.settimeout(0.2)
    print("ready", flush=True)
    served = 0
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        served += 1
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    print(f"served {served}", flush=True)
    return 0


def _probe(target: str, port: int, count: int, timeout: float, interval: float, seconds: float,
           progress: bool = False) -> int:
    """Legitimate clients, one after another: connect, send, read the echo. Prints JSON."""
    ok = 0
    failures: dict[str, int] = {}
    connect_ms: list[float] = []
    attempt_ms: list[float] = []  # every attempt: until the echo came back, or until it failed
    deadline = time.monotonic() + seconds
    attempts = 0
    ports: set[int] = set()  # distinct client ports: a reused one may meet its old flow
    stalled = 0  # failed attempts whose connect had succeeded (the exchange got no echo)
    for i in range(count):
        if time.monotonic() > deadline:
            break
        attempts += 1
        msg = f"hello {i}".encode()
        ok_before = ok
        t0 = time.monotonic()
        t1 = 0.0
        try:
            with socket.create_connection((target, port), timeout=timeout) as s:
                t1 = time.monotonic()
                ports.add(s.getsockname()[1])
                s.sendall(msg)
                reply = b""
                while len(reply) < len(msg) + 5:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    reply += chunk
            if reply == b"echo:" + msg:
                ok += 1
                connect_ms.append((t1 - t0) * 1000)
            else:
                failures["bad reply"] = failures.get("bad reply", 0) + 1
        except OSError as exc:
            key = type(exc).__name__ if not exc.strerror else exc.strerror
            failures[key] = failures.get(key, 0) + 1
            stalled += t1 > 0
        attempt_ms.append((time.monotonic() - t0) * 1000)
        if progress:
            print("ok" if ok > ok_before else "fail", flush=True)
        time.sleep(interval)
    print(json.dumps({"attempts": attempts, "ok": ok, "failed": attempts - ok, "failures": failures,
                      "stalled": stalled, "local_ports": len(ports),
                      "connect_ms": [round(x, 3) for x in connect_ms],
                      "attempt_ms": [round(x, 3) for x in attempt_ms]}), flush=True)
    return 0


def probe_result(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    raise FastpathError(f"the probe reported nothing: {out[-300:]!r}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpath.labs.floodlab")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="TCP echo service (IPv4 and IPv6) until SIGTERM")
    s.add_argument("--port", type=int, default=SERVICE_PORT)
    s.add_argument("--backlog", type=int, default=SERVE_BACKLOG)
    c = sub.add_parser("probe", help="legitimate connect+exchange attempts; prints JSON")
    c.add_argument("--target", default=SERVER4)
    c.add_argument("--port", type=int, default=SERVICE_PORT)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--timeout", type=float, default=3.0)
    c.add_argument("--interval", type=float, default=0.01)
    c.add_argument("--seconds", type=float, default=120.0)
    c.add_argument("--progress", action="store_true", help="print ok/fail after every attempt")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args.port, args.backlog)
    return _probe(args.target, args.port, args.count, args.timeout, args.interval, args.seconds,
                  args.progress)


if __name__ == "__main__":
    sys.exit(main())
