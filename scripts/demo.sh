#!/usr/bin/env bash
# `make demo`: the main job on the embedded default topology (no real NIC needed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/fastpath demo "$@"
