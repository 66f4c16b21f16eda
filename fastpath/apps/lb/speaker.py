"""The BGP speaker of a balancer node: BIRD 2, run as a child of `fastpath lb health` in the
balancer's namespace, so its session to the router leaves over the balancer's own link.

Why the route cannot outlive the data plane:
- BIRD is started with the parent-death signal set to SIGKILL: when the health checker
  dies, however it dies, BIRD dies with it, the kernel closes its TCP session, and the
  router withdraws the node's routes at once (graceful restart is off on both sides);
- every round the health checker checks that the balancer is still attached to its
  interface; when it is not (detached, interface or namespace gone), it stops BIRD, which
  tells the router (a BGP Cease), and exits with an error;
- a VIP address is withdrawn as soon as no VIP on it has a backend up;
- when the node itself dies or loses its link, the router's BFD (or the hold time) expires.

BIRD is driven through its control socket (the protocol `birdc` speaks: one command line,
replies of lines `NNNN-text` ending with `NNNN text`): `configure` after the generated
configuration is rewritten, `show protocols` for `fastpath lb bgp status`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastpath.apps.lb import bgp, store
from fastpath.core.child import die_with_parent
from fastpath.core.jsonstate import write_text
from fastpath.errors import CapabilityError, FastpathError

_BIRD_FIX = "install BIRD 2: apt-get install bird2 (scripts/setup-host.sh does)"


@dataclass(frozen=True)
class Paths:
    """Where one node's speaker keeps its configuration, control socket and log."""

    config: Path
    control: Path
    log: Path

    @classmethod
    def of(cls, ifname: str, netns: str | None) -> Paths:
        base = store.state_path(ifname, netns)
        conf, ctl, log = (base.with_suffix(s) for s in store.SPEAKER_SUFFIXES)
        return cls(conf, ctl, log)

    def remove(self) -> None:
        for p in (self.config, self.control, self.log):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


# ---------------------------------------------------------------------------------------
# the control socket


class ControlError(FastpathError):
    """BIRD answered a command with an error, or could not be reached."""


_LINE = re.compile(r"^(\d{4})([ -])(.*)$")


def command(control: Path, cmd: str, timeout: float = 5.0) -> list[tuple[int, str]]:
    """Send one command to BIRD's control socket; its reply as (code, text) lines.

    Codes 0xxx end a successful reply, 1xxx/2xxx are data and headings, 8xxx/9xxx errors.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(control))
        except OSError as exc:
            raise ControlError(f"cannot reach the BGP speaker at {control}: {exc.strerror or exc}") from None
        reader = sock.makefile("r", encoding="utf-8", errors="replace", newline="\n")
        _reply(reader, control)  # the greeting: 0001 BIRD x.y ready.
        sock.sendall(cmd.encode() + b"\n")
        lines = _reply(reader, control)
    except TimeoutError:
        raise ControlError(f"the BGP speaker at {control} did not answer {cmd!r} "
                           f"within {timeout:g}s") from None
    finally:
        sock.close()
    code, text = lines[-1]
    if code >= 8000:
        raise ControlError(f"BIRD refused {cmd!r}: {text.strip()}")
    return lines


def _reply(reader: Any, control: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    code = 0
    while True:
        line = reader.readline()
        if not line:
            raise ControlError(f"the BGP speaker at {control} closed its control socket")
        line = line.rstrip("\n")
        m = _LINE.match(line)
        if m is None:  # a continuation: " text" under the previous code
            out.append((code, line[1:] if line.startswith(" ") else line))
            continue
        code = int(m.group(1))
        out.append((code, m.group(3)))
        if m.group(2) == " ":
            return out


def protocols(control: Path) -> list[dict[str, str]]:
    """`show protocols`: name, proto, state, since and info of each."""
    rows = []
    for code, text in command(control, "show protocols"):
        if code != 1002:
            continue
        parts = text.split(None, 5)
        if len(parts) < 4:
            continue
        rows.append({"name": parts[0], "proto": parts[1], "table": parts[2], "state": parts[3],
                     "since": parts[4] if len(parts) > 4 else "",
                     "info": parts[5].strip() if len(parts) > 5 else ""})
    return rows


def routes(control: Path, protocol: str) -> list[str]:
    """The prefixes `protocol` (a static protocol of VIP routes) holds now."""
    out = []
    for code, text in command(control, f"show route protocol {protocol}"):
        if code == 1007 and text and not text.startswith(" "):
            first = text.split()[0]
            if "/" in first:
                out.append(first)
    return out


# ---------------------------------------------------------------------------------------
# the process


def bird_binary() -> str:
    path = shutil.which("bird")
    if path is None:
        raise CapabilityError("BIRD (the BGP speaker that announces VIPs) is not installed", fix=_BIRD_FIX)
    return path


def bird_version() -> str:
    res = subprocess.run([bird_binary(), "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"BIRD version (\S+)", res.stdout + res.stderr)
    if m is None or not m.group(1).startswith("2."):
        raise CapabilityError(f"{bird_binary()} is not BIRD 2 ({(res.stdout + res.stderr).strip()!r})",
                              fix=_BIRD_FIX)
    return m.group(1)


def check_config(text: str, path: Path) -> None:
    """Have BIRD parse a configuration (`bird -p`) before it is used."""
    tmp = path.with_suffix(".check")
    write_text(tmp, text)
    try:
        res = subprocess.run([bird_binary(), "-p", "-c", str(tmp)], capture_output=True, text=True,
                             timeout=10)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if res.returncode != 0:
        raise FastpathError(f"BIRD rejects the generated configuration: {(res.stderr or res.stdout).strip()}")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent thread goes, whatever kills it."""
    die_with_parent(signal.SIGKILL)


class Speaker:
    """One BIRD process for one balancer node; start(), reload(), stop()."""

    def __init__(self, ifname: str, netns: str | None) -> None:
        self.ifname = ifname
        self.netns = netns
        self.paths = Paths.of(ifname, netns)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, text: str) -> None:
        self.paths.config.parent.mkdir(parents=True, exist_ok=True)
        check_config(text, self.paths.config)
        write_text(self.paths.config, text)
        with contextlib.suppress(FileNotFoundError):
            self.paths.control.unlink()
        argv = [bird_binary(), "-f", "-c", str(self.paths.config), "-s", str(self.paths.control)]
        if self.netns:
            # `ip netns exec` execs BIRD in place: the parent-death signal stays set.
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.paths.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         preexec_fn=_die_with_parent)
        self.config = text
        deadline = time.monotonic() + 10
        while not self.paths.control.exists():
            if not self.running or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise FastpathError(f"BIRD did not start: {tail or 'no output'}")
            time.sleep(0.05)

    def reload(self, text: str) -> None:
        """Rewrite the configuration and have BIRD apply the difference (routes announced or
        withdrawn at once; sessions stay up)."""
        if text == self.config:
            return
        check_config(text, self.paths.config)
        write_text(self.paths.config, text)
        self.config = text
        command(self.paths.control, "configure")

    def check(self) -> None:
        """Raise when BIRD died on its own (its routes are gone with it)."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            tail = self.log_tail()
            self.proc = None
            raise FastpathError(f"the BGP speaker (BIRD) exited with status {code}; every VIP is withdrawn"
                                + (f": {tail}" if tail else ""))

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.paths.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM: BIRD closes its sessions with a Cease, so routers withdraw at once."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.paths.remove()
        self.config = ""


class Announcer:
    """Keeps the node's speaker in step with the state: started when the state has a `bgp`
    section, reloaded when what is to be announced changes, stopped when the section goes."""

    def __init__(self, ifname: str, netns: str | None) -> None:
        self.ifname = ifname
        self.netns = netns
        self.speaker = Speaker(ifname, netns)
        self.spec: bgp.BgpSpec | None = None
        self.announced: dict[str, bool] = {}

    def where(self) -> str:
        return f"{self.ifname} in {self.netns}" if self.netns else self.ifname

    def update(self, state: store.LbState) -> list[str]:
        """Bring the speaker in line with `state`; returns what changed, in words."""
        self.speaker.check()
        spec = bgp.BgpSpec.from_json(state.bgp) if state.bgp else None
        out: list[str] = []
        if spec is None:
            if self.speaker.running:
                self.close()
                out.append("BGP section removed: speaker stopped, every VIP withdrawn")
            return out
        text = bgp.render(spec, state, self.where())
        if not self.speaker.running:
            self.speaker.start(text)
            out.append(f"BGP speaker BIRD {bird_version()} started: {spec.describe()}")
        elif spec != self.spec:
            self.speaker.stop()
            self.speaker.start(text)
            out.append(f"BGP section changed, speaker restarted: {spec.describe()}")
        else:
            self.speaker.reload(text)
        self.spec = spec
        now = {p: on for p, (on, _why) in bgp.announcements(state).items()}
        for prefix, on in now.items():
            if self.announced.get(prefix, False) != on:
                out.append(f"{'announce' if on else 'withdraw'} {prefix}")
        self.announced = now
        return out

    def close(self) -> None:
        self.speaker.stop()
        self.spec = None
        self.announced = {}


def status(ifname: str, netns: str | None) -> dict[str, Any]:
    """The running speaker of a node: its sessions and the VIP prefixes it announces."""
    paths = Paths.of(ifname, netns)
    state = store.load_state(ifname, netns)
    where = f"{ifname} in {netns}" if netns else ifname
    if state is None or not state.bgp:
        raise FastpathError(f"the balancer on {where} has no 'bgp' section",
                            fix="add one to the lb apply file (see README, Running a fleet)")
    if not paths.control.exists():
        raise FastpathError(f"no BGP speaker runs for the balancer on {where}",
                            fix=f"start it: fastpath lb health --iface {ifname}"
                                + (f" --netns {netns}" if netns else ""))
    spec = bgp.BgpSpec.from_json(state.bgp)
    protos = {p["name"]: p for p in protocols(paths.control)}
    sessions = []
    for i, peer in enumerate(spec.peers):
        p = protos.get(bgp.peer_name(i), {})
        sessions.append({"peer": peer.address, "asn": peer.asn, "state": p.get("state", "?"),
                         "info": p.get("info", ""), "since": p.get("since", "")})
    announced = []
    for version in sorted(spec.families()):
        name = bgp.STATIC[version]
        if protos.get(name, {}).get("state") == "up":
            announced += routes(paths.control, name)
    withheld = {p: why for p, (on, why) in bgp.announcements(state).items() if not on}
    return {"iface": ifname, "netns": netns, "asn": spec.asn, "detection_s": spec.detection_s,
            "sessions": sessions, "announced": sorted(announced), "withheld": withheld}
