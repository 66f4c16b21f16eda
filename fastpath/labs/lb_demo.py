"""`fastpath demo lb`: the XDP load balancer on an embedded topology, with a live table.

A client namespace opens new TCP connections to a VIP; the balancer namespace runs l4lb
(dsr mode, native XDP) on its leg of a bridge; three backend namespaces answer with their
own name. The table shows each backend's weight, status, Maglev share and traffic as it
happens; half-way through, b1's weight goes to 2 and b3 is drained, and the shares follow.
Everything is detached and removed at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import sys
import time
from collections import Counter
from typing import Any

from fastpath.errors import FastpathError
from fastpath.output import console, info, make_table, print_json

LAB = "fpdemolb"
VIP = "10.20.100.1"
PORT = 80
BACKENDS = {"b1": "10.20.2.11", "b2": "10.20.2.12", "b3": "10.20.2.13"}

TOPOLOGY: dict[str, Any] = {
    "name": LAB,
    "nodes": {
        "client": {},
        "lb": {},
        **{n: {"sysctls": {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                           "net.ipv4.conf.all.rp_filter": 0}} for n in BACKENDS},
    },
    "bridges": {"sw0": {}},
    "links": [*({"endpoints": [f"{n}:eth0", "sw0"], "tx_checksum": False} for n in ("client", *BACKENDS)),
              {"endpoints": ["lb:eth0", "sw0"], "tx_checksum": False}],
    "addresses": {"client:eth0": ["10.20.1.10/24"], "lb:eth0": ["10.20.1.1/24", "10.20.2.1/24"],
                  **{f"{n}:eth0": [f"{a}/24"] for n, a in BACKENDS.items()}},
    "routes": {"client": [{"dst": "10.20.100.0/24", "via": "10.20.1.1"}],
               **{n: [{"dst": "10.20.1.0/24", "dev": "eth0"}] for n in BACKENDS}},
}

SERVER = """
import socket, sys, threading
name = sys.argv[1].encode() + b"\\n"
def serve(c):
    try:
        while c.recv(256):
            c.sendall(name)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(1024)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# New connections for at most `seconds` (and 200000 of them), ~500/s; prints who answered,
# then how many distinct source ports the answered ones used. The kernel may give a port
# again within seconds (a RST close leaves no TIME_WAIT): its SYN meets the balancer's flow
# of the earlier connection, which is no new flow.
CLIENT = """
import collections, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
seen, end, n, ports = collections.Counter(), time.monotonic() + min(seconds, 120), 0, set()
while time.monotonic() < end and n < 200000:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(1)
    try:
        s.connect((host, port))
        s.sendall(b"who\\n")
        seen[s.recv(64).decode().strip() or "closed"] += 1
        ports.add(s.getsockname()[1])
    except OSError:
        seen["error"] += 1
    finally:
        s.close()
    n += 1
    time.sleep(0.002)
print(" ".join(f"{k}={v}" for k, v in sorted(seen.items())))
print(len(ports))
"""


def run(args: argparse.Namespace) -> int:
    from fastpath.apps.lb import config, program
    from fastpath.netns import Lab, list_labs

    if any(s.name == LAB for s in list_labs()):
        raise FastpathError(f"a demo lab {LAB!r} is already up",
                            fix=f"remove it with: fastpath topo down {LAB}")
    info(f"building lab {LAB}: client -> lb (XDP, dsr) -> backends b1, b2, b3 on bridge sw0")
    vip = config.parse_vip(f"{VIP}:{PORT}/tcp")
    with Lab.up(TOPOLOGY) as lab:
        ns = lab.netns("lb")
        for node in BACKENDS:
            lab.run(node, ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
            lab.spawn(node, [sys.executable, "-c", SERVER, node, str(PORT)])
        try:
            att, _ = program.attach("eth0", ns, "auto", {"LB_RING_SIZE": 4099, "LB_MAX_VIPS": 4})
            info(f"l4lb attached to eth0 in {ns} ({att.mode} mode); VIP {vip} over 3 backends")
            with program.session("eth0", ns) as bal:
                bal.add_vip(vip, "dsr")
                for addr in BACKENDS.values():
                    bal.add_backend(vip, ipaddress.ip_address(addr))
            time.sleep(0.3)
            client = lab.spawn("client", [sys.executable, "-c", CLIENT, VIP, str(PORT), str(args.seconds)])
            final = _watch(program, ns, vip, args, client)
            client.wait(30)
            lines = client.output().splitlines()
            if len(lines) < 2 or not lines[-1].isdigit():
                raise FastpathError(f"the demo's client failed: {' '.join(lines[-3:]) or 'no output'}")
            counts, ports = lines[-2:]
            answered = dict(x.split("=") for x in counts.split())
        finally:
            with contextlib.suppress(FastpathError):
                program.detach("eth0", ns)
        info("detached; tearing the lab down")
    answers = {k: int(v) for k, v in answered.items()}
    problems = verdict(answers)
    result = {"lab": LAB, "vip": str(vip), "answers": answers, "client_ports": int(ports),
              "backends": final, "ok": not problems,
              "problems": problems}
    if args.json:
        print_json(result)
    else:
        info("done: connections answered per backend: "
             + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())))
    if problems:
        raise FastpathError(f"the demo did not show what it is for: {'; '.join(problems)}",
                            fix="see 'fastpath doctor'")
    return 0


def verdict(answers: dict[str, int]) -> list[str]:
    """What went wrong (empty: clients reached every backend and at most 1 % failed)."""
    total = sum(answers.values())
    failed = answers.get("error", 0) + answers.get("closed", 0)
    problems = []
    if total < 20:
        problems.append(f"the client made only {total} connections")
    elif failed > 0.01 * total:
        problems.append(f"{failed} of {total} client connections failed")
    missing = [b for b in BACKENDS if not answers.get(b)]
    if missing:
        problems.append(f"no connection reached {', '.join(missing)}")
    return problems


def _watch(program: Any, ns: str, vip: Any, args: argparse.Namespace, client: Any) -> list[dict[str, Any]]:
    from rich.live import Live

    prev: Counter[str] = Counter()
    t_prev = t0 = time.monotonic()
    changed = False
    rows: list[dict[str, Any]] = []
    with Live(console=console, auto_refresh=False, transient=args.json) as live:
        # Until the client's run ended (it stops itself after `seconds`, counted from its own
        # start-up, which a slow machine delays); the bound only stops a stuck one.
        while time.monotonic() < t0 + args.seconds + 30:
            time.sleep(0.5)
            done = not client.running  # before the read: the last rows hold all it did
            now = time.monotonic()
            if not changed and now - t0 > args.seconds / 2:
                with program.session("eth0", ns) as bal:
                    bal.set_weight(vip, ipaddress.ip_address(BACKENDS["b1"]), None, 2)
                    bal.set_drained(vip, ipaddress.ip_address(BACKENDS["b3"]), None, True)
                changed = True
            with program.session("eth0", ns, write=False) as bal:
                rows = bal.stats()["vips"][0]["backends"]
            dt, t_prev = now - t_prev, now
            table = [[r["backend"], r["weight"], r["status"], f"{r['share']:.1f}", f"{r['packets']:,}",
                      f"{(r['packets'] - prev[r['backend']]) / dt:,.0f}", f"{r['new_flows']:,}"]
                     for r in rows]
            prev = Counter({r["backend"]: r["packets"] for r in rows})
            note = "b1 weight 2, b3 drained" if changed else "equal weights (changes half-way)"
            if not args.json:
                live.update(make_table(["backend", "weight", "status", "share %", "packets", "pps",
                                        "new flows"], table,
                                       title=f"l4lb VIP {vip}: {note} (Ctrl-C stops and cleans up)"),
                            refresh=True)
            if done:
                break
    return rows
