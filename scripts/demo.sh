#!/usr/bin/env bash
# `make demo`: the main job on the embedded default topology (no real NIC needed):
# a spoofed SYN flood against a server, first unguarded, then with the XDP guard.
# Extra arguments go to `fastpath demo` (e.g. `bash scripts/demo.sh counter`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- synflood
fi
exec .venv/bin/fastpath demo "$@"
