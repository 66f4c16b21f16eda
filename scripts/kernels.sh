#!/usr/bin/env bash
# The kernel matrix: every program of bpf/ compiled and loaded, and tests/bpf run, under
# Debian 12's kernels booted with virtme-ng (qemu) and under the running kernel ("host").
# Arguments are kernels (default: 6.1 6.12 host) and options of python -m fastpath.kernels
# (--load-only, --json, --timeout MIN). Kernels are unpacked under build/kernels/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 6.1 6.12 host
exec .venv/bin/python -m fastpath.kernels "$@"
