#!/usr/bin/env bash
# The README's test command: lint, then every test suite, then the kernel matrix's CI leg
# (every program of bpf/ loaded under Debian 12's Linux 6.1 in a VM; `make kernels` runs
# the whole matrix). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "== kernel matrix: load sweep under Linux 6.1 (make kernels: the whole matrix)"
set +e
.venv/bin/python -m fastpath.kernels 6.1 --load-only
krc=$?
set -e
# Exit 2 is a missing capability (qemu, virtme-ng, root): a skip, unless CI forbids skips.
case "${FASTPATH_REQUIRE_ALL:-}" in
  1|true|yes|TRUE|YES) ;;
  *) if [ "$krc" -eq 2 ]; then
       echo "kernel matrix skipped (missing capability above); FASTPATH_REQUIRE_ALL=1 makes this a failure" >&2
       krc=0
     fi ;;
esac
exit "$krc"
