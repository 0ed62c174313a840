#!/usr/bin/env bash
# Runs the whole test suite (set-up included): ruff, then pytest. Arguments go to pytest:
#   bash scripts/test.sh [-k expr] [tests/...]
# TRITON_INTERPRET is not set here: the tests' conftest sets it on a CPU-only machine,
# and on a GPU the kernels must compile for real.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

bash scripts/setup.sh

if "$PY" -m ruff --version >/dev/null 2>&1; then
  echo "test: ruff check ."
  "$PY" -m ruff check .
elif [[ -n "${CI:-}" ]]; then
  echo "test: ruff is not installed" >&2
  exit 1
else
  echo "test: warning: ruff is not installed (offline machine?); lint skipped" >&2
fi

# Two pytest-xdist workers (TEST_WORKERS) where it is installed: the suite is bound by
# Inductor's compiles, whose Python and C++ build steps leave a core idle half the time, so
# two workers on 2 cores take about half the serial time. Without it (the GPU machine has no
# network), serially. `-n 0` in the arguments runs serially too.
WORKERS=()
if "$PY" -c "import xdist" >/dev/null 2>&1; then
  WORKERS=(-n "${TEST_WORKERS:-2}" --dist worksteal)
else
  echo "test: pytest-xdist is not installed; the tests run serially" >&2
fi
echo "test: python -m pytest -q ${WORKERS[*]} $*"
exec "$PY" -m pytest -q "${WORKERS[@]}" "$@"
