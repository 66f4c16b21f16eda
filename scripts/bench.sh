#!/usr/bin/env bash
# `make bench [SCENARIOS="a b"]`: run benchmark scenarios (all when none are named) with
# fastpath and its peers side by side. Results: bench-results/<timestamp>/ and
# bench-results/latest. Extra flags through BENCH_ARGS, e.g. BENCH_ARGS="--quick --strict".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/fastpath ]; then
  echo "bench: .venv/bin/fastpath is missing; run 'make setup' first" >&2
  exit 1
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
exec .venv/bin/fastpath bench ${BENCH_ARGS:-} "$@"
