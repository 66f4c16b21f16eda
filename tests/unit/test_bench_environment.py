"""The environment recorded with every benchmark result."""

from datetime import UTC, datetime

import fastpath
from fastpath.bench.environment import capture, cpu_model


def test_cpu_model_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n"
    assert cpu_model(x86) == "Intel(R) Xeon(R) Gold 6230"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\nHardware\t: BCM2835\n"
    assert cpu_model(arm) == "BCM2835"
    assert cpu_model("") != ""  # falls back to platform, never empty


def test_capture_records_what_makes_numbers_comparable():
    env = capture(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    assert env["timestamp"] == "2024-05-01T12:00:00+00:00"
    assert env["fastpath_version"] == fastpath.__version__
    assert env["kernel"] and env["cpu_model"] and env["nproc"] >= 1
    # No commit yet (or no git) is recorded as None, never as a made-up value.
    commit = env["git_commit"]
    assert commit is None or (len(commit) == 40 and isinstance(env["git_dirty"], bool))
