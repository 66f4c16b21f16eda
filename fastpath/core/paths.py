"""Where fastpath keeps what outlives a command: pins in bpffs and run-time state. Tests and
unprivileged trials move both with FASTPATH_PIN_ROOT and FASTPATH_RUN_ROOT."""

from __future__ import annotations

import os
from pathlib import Path

PIN_ROOT = Path(os.environ.get("FASTPATH_PIN_ROOT", "/sys/fs/bpf/fastpath"))
RUN_ROOT = Path(os.environ.get("FASTPATH_RUN_ROOT", "/run/fastpath"))
