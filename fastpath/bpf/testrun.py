"""BPF_PROG_TEST_RUN: packet bytes in, verdict, output bytes and ns/packet out.

The core of every data-plane test (golden packets) and per-packet benchmark; the
frame-restoring harness below lets a benchmark repeat a data plane that rewrites its frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastpath.bpf import loader, syscall
from fastpath.errors import FastpathError

XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}


@dataclass(frozen=True)
class RunResult:
    verdict: str
    retval: int
    output: bytes
    ns_per_packet: float
    repeat: int


def run_xdp(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """Run an XDP program on one frame `repeat` times; the output is the last run's frame."""
    res = syscall.prog_test_run(prog_fd, packet, repeat=repeat)
    verdict = XDP_VERDICTS.get(res.retval, f"retval={res.retval}")
    return RunResult(verdict, res.retval, res.data_out, float(res.duration_ns), max(repeat, 1))


def run_expect(prog_fd: int, packet: bytes, want: str, repeat: int = 1, what: str = "program") -> RunResult:
    """`run_xdp`, and a FastpathError unless the verdict is `want` (e.g. "XDP_TX")."""
    res = run_xdp(prog_fd, packet, repeat=repeat)
    if res.verdict != want:
        raise FastpathError(f"{what} returned {res.verdict}, expected {want}")
    return res


# ---------------------------------------------------------------------------------------
# The frame-restoring harness: ns/packet of a data plane that rewrites its frame.
#
# A test run repeats the program on one buffer, and a data plane that answers (SYN cookies)
# or encapsulates (ipip) rewrites that buffer, so the second run would see another packet.
# The harness saves the frame, runs the data plane, moves the end it may have moved back
# (`moves`: "head" for encapsulation, "tail" for an answer of another length) and copies
# the frame back; an optional `after(saved_frame)` hook then undoes state the run left
# (a conntrack entry, say). Built with BENCH_NOOP it runs no data plane at all: the
# baseline whose time, taken off a measurement, leaves the data plane's own cost.
# Everything variable is a -D define; the C text never changes.

HARNESS_ENTRY = "fp_restoring_harness"

RESTORING_HARNESS = r"""

/* ---- frame-restoring harness (fastpath/bpf/testrun.py) ---- */
struct fp_bench_frame { __u8 b[FRAME_LEN]; };
BPF_PERCPU_ARRAY(fp_bench_saved, struct fp_bench_frame, 1);

int fp_restoring_harness(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct fp_bench_frame *s;
	__u32 zero = 0;
	int ret, grown;

	s = fp_bench_saved.lookup(&zero);
	if (!s || data + FRAME_LEN > data_end || data_end - data != FRAME_LEN)
		return XDP_ABORTED;
	__builtin_memcpy(s->b, data, FRAME_LEN);
#ifdef BENCH_NOOP
	ret = XDP_TX;
#else
	ret = BENCH_PROCESS(ctx);
#endif
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	grown = (int)(data_end - data) - FRAME_LEN;
#ifdef BENCH_MOVES_TAIL
	if (grown && bpf_xdp_adjust_tail(ctx, -grown))
		return XDP_ABORTED;
#else
	if (grown && bpf_xdp_adjust_head(ctx, grown))
		return XDP_ABORTED;
#endif
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, s->b, FRAME_LEN);
#ifdef BENCH_AFTER
	BENCH_AFTER(s->b);
#endif
	return ret;
}
"""


def load_restoring(source: str, process: str, frame_len: int, defines: Mapping[str, int | str],
                   workdir: Path, *, moves: str = "head", after: str | None = None,
                   noop: bool = False) -> loader.LoadedProgram:
    """Load `source` (a data plane's C text, plus any helpers such as `after`) with the
    restoring harness as its entry, for frames of exactly `frame_len` bytes. `process` is
    the data plane's `int f(struct xdp_md *)`; `defines` its tunables."""
    if moves not in ("head", "tail"):
        raise ValueError(f"moves must be 'head' or 'tail', not {moves!r}")
    name = f"{process}_harness"
    Path(workdir, f"{name}.c").write_text(source + RESTORING_HARNESS)
    spec = loader.ProgramSpec(name=name, entry=HARNESS_ENTRY, maps=(), directory=Path(workdir))
    extra: dict[str, int | str] = {"FRAME_LEN": frame_len, "BENCH_PROCESS": process}
    if moves == "tail":
        extra["BENCH_MOVES_TAIL"] = 1
    if after:
        extra["BENCH_AFTER"] = after
    if noop:
        extra["BENCH_NOOP"] = 1
    return loader.load(spec, {**defines, **extra})
