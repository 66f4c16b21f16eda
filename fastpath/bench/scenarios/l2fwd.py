"""`l2fwd`: frames forwarded per second between two veths, and the share lost, for
fastpath-l2fwd next to dpdk-testpmd, the Linux bridge and XDP redirect.

One lab carries every measurement; only the forwarder in `fwd` changes:

    gen:eth0 --veth-- fwd:p0 [forwarder] fwd:p1 --veth-- sink:eth0 (GRO on)

Generator: dpdk-testpmd --forward-mode=txonly on an af_xdp vdev in `gen`, pinned to the
first CPU, 64-byte UDP/IPv4 frames (60 bytes + FCS) to the sink's MAC. Of the generators
tried here (the kernel's pktgen module is not available), testpmd txonly on an af_xdp vdev
pushed the most frames into a veth with nothing behind it: 1.2-1.6 Mpps against 0.7-1.2
Mpps on an af_packet vdev (PACKET_MMAP, qdisc bypass), on a shared 2-CPU VM. Where AF_XDP
is unusable the af_packet vdev stands in and the af_xdp contenders are skipped. The
generator runs for the whole scenario and is started and stopped around each measurement
window through testpmd's interactive prompt, so the counts have exact edges.

Counting uses interface counters read over netlink, never a contender's own report:
offered = frames gen:eth0 sent (tx_packets + tx_dropped), forwarded = frames sink:eth0
received, read before "start" and after "stop" plus a drain; fwd_mpps = forwarded / window,
loss_pct = 100 * (1 - forwarded / offered).

Contenders (one at a time, on the second CPU):
- `l2fwd-<vdev>`: fastpath-l2fwd with its default MAC rewrite (destination
  02:00:00:00:00:<egress port>, source the egress port's MAC), against
  `testpmd-<vdev>-mac`: testpmd --forward-mode=mac, which makes exactly that rewrite. That
  pair is the fair comparison of the default; `l2fwd-<vdev>-nomac` (--no-mac-updating)
  against `testpmd-<vdev>-io` compares forwarding untouched frames. Both apps run one
  forwarding lcore on the same CPU, --in-memory hugepages, the PMD's preferred ring
  sizes, bursts of 32, the same vdev arguments; <vdev> is afpacket or afxdp.
- `bridge` (the baseline: forwarding without leaving the kernel): a Linux bridge in `fwd`
  with p0 and p1, the sink's MAC static in its FDB (known unicast, no flooding).
- `xdp-redirect`: an XDP program in native veth mode on p0, bpf_redirect_map() through a
  one-slot devmap to p1. Redirected frames reach a veth peer only when the peer runs
  NAPI (GRO on, or an XDP program); GRO is on at sink:eth0 for every contender, so all
  forward into the same sink.

Where the CPU time goes, which the numbers only make sense with: a veth delivers a frame
on the CPU that sent it. The generator's CPU therefore also does p0's receive side for
every contender (the copy into af_packet's ring, the XDP hop into the AF_XDP socket), and
for `bridge` and `xdp-redirect` the whole forward, since both run inside that receive
path; the second CPU then stays idle. Their rate is bounded by the generator's CPU (their
loss stays near 0 and offered_mpps falls), while the DPDK contenders, which add a copy and
a system call per burst on top of the same kernel work, lose what their CPU cannot take.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fastpath.bench import BenchContext, Metric, Scenario, Target, register_scenario
from fastpath.core.namespaces import netns_unavailable_reason
from fastpath.dpdk import build, eal
from fastpath.dpdk.eal import EalConfig, MemoryChoice, Vdev
from fastpath.dpdk.l2fwd import L2fwdOptions, L2fwdProcess
from fastpath.errors import CapabilityError, FastpathError
from fastpath.netns.lab import Lab

TESTPMD = "dpdk-testpmd"
FRAME_BYTES = 60  # without the FCS: 64-byte frames on a wire
GEN_BURST = 64
TESTPMD_MBUFS = 16384  # never fewer than fastpath-l2fwd's pool: no starving the peer
# Two DPDK processes (generator and one forwarder) run at once; each takes ~50 MiB.
MIN_FREE_HUGEPAGES = 160 << 20
WINDOW_S = 2.0
QUICK_WINDOW_S = 1.0
SETTLE_S = 0.5  # after a forwarder is up, before the window opens
DRAIN_S = 0.3  # after the generator stops, before the counters are read
READY_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 10.0
QUIT_TIMEOUT_S = 10.0
LOG_TAIL = 4

QUIET = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
TOPOLOGY: dict[str, Any] = {
    "name": "l2fwdbench",
    "nodes": {"gen": {"sysctls": QUIET}, "fwd": {"sysctls": QUIET}, "sink": {"sysctls": QUIET}},
    "links": [
        {"endpoints": ["gen:eth0", "fwd:p0"]},
        {"endpoints": ["fwd:p1", "sink:eth0"], "gro": True},
    ],
}

XDP_FLAGS_DRV_MODE = 4


@dataclass(frozen=True)
class Contender:
    name: str
    app: str  # "l2fwd", "testpmd", "bridge", "xdp"
    vdev: str | None = None  # "af_packet" or "af_xdp" for the DPDK apps
    rewrite: bool = False  # MACs rewritten on the way

    @property
    def testpmd_mode(self) -> str:
        return "mac" if self.rewrite else "io"


def _dpdk(vdev: str, short: str) -> list[Contender]:
    return [
        Contender(f"l2fwd-{short}", "l2fwd", vdev, True),
        Contender(f"testpmd-{short}-mac", "testpmd", vdev, True),
        Contender(f"l2fwd-{short}-nomac", "l2fwd", vdev, False),
        Contender(f"testpmd-{short}-io", "testpmd", vdev, False),
    ]


CONTENDERS = [
    *_dpdk("af_packet", "afpacket"),
    *_dpdk("af_xdp", "afxdp"),
    Contender("bridge", "bridge"),
    Contender("xdp-redirect", "xdp"),
]
BY_NAME = {c.name: c for c in CONTENDERS}


def _tail(text: str, n: int = LOG_TAIL) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


class Testpmd:
    """dpdk-testpmd in a lab node, driven through its interactive prompt on stdin.

    Every run has its own file prefix; close() quits it (then SIGTERM, SIGKILL to its
    process group) and removes the runtime dir EAL leaves in /var/run/dpdk.
    """

    PROMPT = "testpmd> "

    def __init__(self, lab: Lab, node: str, cpu: int, vdevs: list[Vdev], app: list[str],
                 memory: MemoryChoice, log_path: Path) -> None:
        self.config = EalConfig(cores=[cpu], vdevs=vdevs, memory=memory,
                                file_prefix=eal.unique_file_prefix("testpmd"))
        args = eal.build_eal_args(self.config)
        at = args.index("-l")
        # Main lcore (the prompt, asleep) and the forwarding lcore share the one CPU.
        args[at:at + 2] = ["--lcores", f"0@{cpu},1@{cpu}"]
        self.argv = ["ip", "netns", "exec", lab.netns(node), TESTPMD, *args, "--",
                     "-i", "--no-mlockall", "--nb-cores=1", *app]
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        try:
            self._wait_prompts(1, READY_TIMEOUT_S, "start")
        except BaseException:
            self.close()
            raise

    def _wait_prompts(self, count: int, timeout: float, what: str) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.output().count(self.PROMPT) < count:
            if self.proc.poll() is not None:
                raise FastpathError(f"dpdk-testpmd exited ({self.proc.returncode}) during "
                                    f"{what}: {_tail(self.output())}")
            if time.monotonic() > deadline:
                raise FastpathError(f"dpdk-testpmd did not finish {what} within {timeout:.0f}s: "
                                    f"{_tail(self.output())}")
            time.sleep(0.02)

    def command(self, line: str) -> None:
        """Send one prompt command and wait until testpmd is back at its prompt."""
        assert self.proc is not None and self.proc.stdin is not None
        seen = self.output().count(self.PROMPT)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self._wait_prompts(seen + 1, COMMAND_TIMEOUT_S, repr(line))

    def close(self) -> int | None:
        """Quit; returns the exit status (None if it never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write("quit\n")
                proc.stdin.flush()
        for sig, grace in ((None, QUIT_TIMEOUT_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if sig is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._log is not None:
            self._log.close()
        for path in eal.leftovers(self.config):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return proc.returncode


@dataclass
class Counts:
    offered: int
    forwarded: int


@register_scenario
class L2fwdBench(Scenario):
    name = "l2fwd"
    description = (
        "Mpps forwarded between two veths and loss: fastpath-l2fwd vs dpdk-testpmd (mac/io) "
        "on af_packet and af_xdp, the Linux bridge and XDP redirect; testpmd txonly generator"
    )
    metrics = [
        Metric("fwd_mpps", "Mpps", "higher"),
        Metric("loss_pct", "%", "lower"),
        Metric("offered_mpps", "Mpps", "higher"),
    ]
    baseline = "bridge"
    targets = [
        Target("fwd_mpps", "l2fwd-afpacket", ">=", 0.95, versus="testpmd-afpacket-mac"),
        Target("fwd_mpps", "l2fwd-afpacket-nomac", ">=", 0.95, versus="testpmd-afpacket-io"),
        Target("fwd_mpps", "l2fwd-afxdp", ">=", 0.95, versus="testpmd-afxdp-mac"),
        Target("fwd_mpps", "l2fwd-afxdp-nomac", ">=", 0.95, versus="testpmd-afxdp-io"),
    ]
    repeat, quick_repeat, warmup = 10, 2, 1
    # The lab's name; None picks a fresh one (tests set a name their leak check knows).
    lab_name: str | None = None

    def contenders(self) -> list[str]:
        return [c.name for c in CONTENDERS]

    # -- set-up ----------------------------------------------------------------------

    def setup(self, ctx: BenchContext) -> None:
        self._lab: Lab | None = None
        self._gen: Testpmd | None = None
        self._xdp: Any = None
        self._counters: contextlib.ExitStack = contextlib.ExitStack()
        if os.geteuid() != 0:
            raise CapabilityError("the l2fwd benchmark needs root (namespaces, DPDK, XDP)")
        reason = netns_unavailable_reason()
        if reason:
            raise CapabilityError(reason)
        if shutil.which(TESTPMD) is None:
            raise CapabilityError(f"{TESTPMD} is the traffic generator and a contender, and it "
                                  "is missing", fix="apt-get install dpdk")
        cpus = eal.online_cpus()
        if len(cpus) < 2:
            raise CapabilityError(f"needs 2 CPUs (generator, forwarder); {len(cpus)} online")
        self._gen_cpu, self._fwd_cpu = cpus[0], cpus[1]
        self._memory = eal.choose_memory(in_memory=True)
        if self._memory.mode == "no-huge" or self._memory.free_bytes < MIN_FREE_HUGEPAGES:
            raise CapabilityError(
                f"needs {MIN_FREE_HUGEPAGES >> 20} MiB of free hugepages for two DPDK "
                f"processes: {self._memory.reason}",
                fix="fastpath dpdk hugepages reserve 512M",
            )
        try:
            self._binary: str | None = build.ensure_built(progress=ctx.log)
        except FastpathError as exc:  # CapabilityError included: no DPDK headers, no PMD
            self._binary = None
            for c in CONTENDERS:
                if c.app == "l2fwd":
                    ctx.skip_contender(c.name, f"fastpath-l2fwd cannot be built: {exc.message}")
        self._window_s = ctx.pick(WINDOW_S, QUICK_WINDOW_S)
        self._lab = Lab.up(TOPOLOGY, name=self.lab_name or f"l2b{secrets.token_hex(3)}")
        self._sink_mac = self._lab.mac("sink", "eth0")
        gen_ipr = self._counters.enter_context(self._lab.iproute("gen"))
        sink_ipr = self._counters.enter_context(self._lab.iproute("sink"))
        self._readers = (gen_ipr, gen_ipr.link_lookup(ifname="eth0")[0],
                         sink_ipr, sink_ipr.link_lookup(ifname="eth0")[0])
        self._fwd_ipr = self._counters.enter_context(self._lab.iproute("fwd"))
        self._start_generator(ctx)
        self._load_xdp(ctx)

    def _start_generator(self, ctx: BenchContext) -> None:
        assert self._lab is not None
        failures = []
        for kind in ("af_xdp", "af_packet"):
            gen = Testpmd(
                self._lab, "gen", self._gen_cpu, [Vdev(kind, "eth0")],
                ["--forward-mode=txonly", "--port-topology=loop", f"--txpkts={FRAME_BYTES}",
                 f"--burst={GEN_BURST}", f"--total-num-mbufs={TESTPMD_MBUFS}",
                 f"--eth-peer=0,{self._sink_mac}"],
                self._memory, Path(ctx.workdir, f"gen-{kind}.log"),
            )
            try:
                gen.start()
            except FastpathError as exc:
                failures.append(f"{kind}: {exc.message}")
                continue
            self._gen = gen
            ctx.log(f"l2fwd bench: generator dpdk-testpmd txonly on {kind} (CPU "
                    f"{self._gen_cpu}), forwarders on CPU {self._fwd_cpu}, lab {self._lab.name}")
            if kind != "af_xdp":
                for c in CONTENDERS:
                    if c.vdev == "af_xdp":
                        ctx.skip_contender(c.name, f"AF_XDP is unusable here: {failures[0]}")
            return
        raise FastpathError("the traffic generator (dpdk-testpmd txonly) did not start: "
                            + "; ".join(failures))

    def _load_xdp(self, ctx: BenchContext) -> None:
        from fastpath.bpf import loader

        assert self._lab is not None
        # bpf/l2fwd_redirect.c: one devmap slot, the egress port fwd:p1
        spec = loader.ProgramSpec(name="l2fwd_redirect", entry="xdp_redirect", maps=())
        try:
            self._xdp = loader.load(spec)
        except FastpathError as exc:
            ctx.skip_contender("xdp-redirect", exc.message)
            return
        # A devmap resolves the ifindex in the namespace of whoever writes the slot.
        with self._lab.enter("fwd"):
            self._xdp.table("egress")[ctypes.c_int(0)] = ctypes.c_int(self._lab.ifindex("fwd", "p1"))

    # -- measuring -------------------------------------------------------------------

    def measure(self, contender: str, ctx: BenchContext) -> dict[str, float]:
        c = BY_NAME[contender]
        with self._forwarder(c, ctx):
            counts, seconds = self._window()
        self._check_clean(contender)
        if counts.offered <= 0:
            raise FastpathError(f"the generator sent nothing: {_tail(self._gen_output())}")
        if counts.forwarded <= 0:
            raise FastpathError(f"{contender} forwarded none of {counts.offered} frames")
        return {
            "fwd_mpps": counts.forwarded / seconds / 1e6,
            "loss_pct": 100.0 * (1.0 - counts.forwarded / counts.offered),
            "offered_mpps": counts.offered / seconds / 1e6,
        }

    def _gen_output(self) -> str:
        return self._gen.output() if self._gen is not None else ""

    def _read(self) -> Counts:
        gen_ipr, gen_idx, sink_ipr, sink_idx = self._readers
        sent = gen_ipr.get_links(gen_idx)[0].get_attr("IFLA_STATS64")
        got = sink_ipr.get_links(sink_idx)[0].get_attr("IFLA_STATS64")
        return Counts(int(sent["tx_packets"]) + int(sent["tx_dropped"]), int(got["rx_packets"]))

    def _window(self) -> tuple[Counts, float]:
        assert self._gen is not None
        before = self._read()
        t0 = time.monotonic()
        self._gen.command("start")
        time.sleep(max(0.0, self._window_s - (time.monotonic() - t0)))
        t1 = time.monotonic()
        self._gen.command("stop")
        time.sleep(DRAIN_S)
        after = self._read()
        return Counts(after.offered - before.offered, after.forwarded - before.forwarded), t1 - t0

    @contextlib.contextmanager
    def _forwarder(self, c: Contender, ctx: BenchContext) -> Iterator[None]:
        if c.app == "l2fwd":
            with self._l2fwd(c):
                yield
        elif c.app == "testpmd":
            with self._testpmd(c, ctx):
                yield
        elif c.app == "bridge":
            with self._bridge():
                yield
        else:
            with self._xdp_redirect():
                yield

    @contextlib.contextmanager
    def _l2fwd(self, c: Contender) -> Iterator[None]:
        assert self._lab is not None and c.vdev is not None
        opts = L2fwdOptions(vdevs=[Vdev(c.vdev, "p0"), Vdev(c.vdev, "p1")], cores=[self._fwd_cpu],
                            netns=self._lab.netns("fwd"), mac_updating=c.rewrite)
        run = L2fwdProcess(opts, binary=self._binary, memory=self._memory)
        try:
            run.start()
            time.sleep(SETTLE_S)
            yield
        finally:
            result = run.stop()
        if result.crashed or result.exit_event is None:
            raise FastpathError(f"fastpath-l2fwd ended badly (code {result.returncode}, "
                                f"signals {result.signals}): {' | '.join(result.log_tail[-3:])}")

    @contextlib.contextmanager
    def _testpmd(self, c: Contender, ctx: BenchContext) -> Iterator[None]:
        assert self._lab is not None and c.vdev is not None
        fwd = Testpmd(self._lab, "fwd", self._fwd_cpu, [Vdev(c.vdev, "p0"), Vdev(c.vdev, "p1")],
                      ["--auto-start", f"--forward-mode={c.testpmd_mode}", "--burst=32",
                       f"--total-num-mbufs={TESTPMD_MBUFS}"],
                      self._memory, Path(ctx.workdir, f"{c.name}.log"))
        fwd.start()
        try:
            time.sleep(SETTLE_S)
            yield
        finally:
            code = fwd.close()
        if code != 0:
            raise FastpathError(f"dpdk-testpmd ({c.name}) exited with {code}: {_tail(fwd.output())}")

    @contextlib.contextmanager
    def _bridge(self) -> Iterator[None]:
        assert self._lab is not None
        lab = self._lab
        try:
            lab.run("fwd", ["ip", "link", "add", "br0", "type", "bridge"])
            for port in ("p0", "p1"):
                lab.run("fwd", ["ip", "link", "set", port, "master", "br0"])
            lab.run("fwd", ["ip", "link", "set", "br0", "up"])
            lab.run("fwd", ["bridge", "fdb", "add", self._sink_mac, "dev", "p1", "master",
                            "static"])
            time.sleep(SETTLE_S / 2)
            yield
        finally:
            lab.run("fwd", ["ip", "link", "del", "br0"], check=False)

    @contextlib.contextmanager
    def _xdp_redirect(self) -> Iterator[None]:
        from fastpath.bpf import syscall

        assert self._lab is not None and self._xdp is not None
        with self._lab.enter("fwd"):
            link = syscall.xdp_link_create(self._xdp.prog_fd, self._lab.ifindex("fwd", "p0"),
                                           XDP_FLAGS_DRV_MODE)
        try:
            time.sleep(SETTLE_S / 2)
            yield
        finally:
            os.close(link)  # the link was never pinned: closing it detaches the program

    def _check_clean(self, contender: str) -> None:
        """p0 and p1 carry no XDP program and no bridge after a contender: the next one
        must find the ports as the lab made them."""
        for port in ("p0", "p1"):
            idx = self._fwd_ipr.link_lookup(ifname=port)
            if not idx:
                raise FastpathError(f"after {contender}: fwd:{port} is gone")
            link = self._fwd_ipr.get_links(idx[0])[0]
            xdp = link.get_attr("IFLA_XDP")
            attached = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp is not None else 0
            if attached or link.get_attr("IFLA_MASTER"):
                raise FastpathError(f"after {contender}: fwd:{port} still has "
                                    f"{'an XDP program' if attached else 'a bridge'}")

    # -- tear-down -------------------------------------------------------------------

    def teardown(self, ctx: BenchContext) -> None:
        errors = []
        if getattr(self, "_gen", None) is not None:
            assert self._gen is not None
            self._gen.close()
        if getattr(self, "_xdp", None) is not None:
            self._xdp.close()
        if hasattr(self, "_counters"):
            self._counters.close()
        if getattr(self, "_lab", None) is not None:
            assert self._lab is not None
            try:
                self._lab.down()
            except FastpathError as exc:
                errors.append(exc.message)
        if errors:
            raise FastpathError("; ".join(errors))
