#!/usr/bin/env bash
# Offline sm_90 compile of every kernel variant the launchers can pick, with each Triton
# version users run, on a machine without a GPU (CI runs it after the test suite):
#
#   bash scripts/compile_check.sh            # Triton 3.6 and this environment's Triton
#   TRITONS="3.6.0" bash scripts/compile_check.sh
#
# - this environment's Triton (the newest, what setup.sh installs): any compile error or
#   spill fails.
# - each version in TRITONS (default 3.6.0, torch 2.11's pin and the GPU machines'
#   toolchain): installed on first use with `pip install --no-deps --target` into
#   ${INDUCTOR_EMBED_ENV_CACHE:-~/.cache/inductor_embed/envs}/triton-<version> and put in
#   front of this environment's Triton with PYTHONPATH (the compile needs only Triton; the
#   torch beside it is not involved). A compile error fails; spills of at most
#   OLD_SPILL_ALLOWANCE bytes per kernel (default 16) are listed, not failures: Triton 3.6's
#   ptxas pipeline leaves a few bytes of local memory in a handful of narrow or max-mode
#   variants that the newest Triton compiles without any (the table names each one).
#
# Env: PYTHON (default python), JOBS (worker processes, default nproc), TRITONS,
# OLD_SPILL_ALLOWANCE, INDUCTOR_EMBED_ENV_CACHE.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
JOBS="${JOBS:-$(nproc)}"
TRITONS="${TRITONS:-3.6.0}"
OLD_SPILL_ALLOWANCE="${OLD_SPILL_ALLOWANCE:-16}"
CACHE="${INDUCTOR_EMBED_ENV_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/inductor_embed/envs}"
# The tests' conftest sets the interpreter; the compile needs real @triton.jit functions.
unset TRITON_INTERPRET

rc=0
here="$(cd / && "$PY" -c 'import triton; print(triton.__version__)')"
echo "compile_check: triton $here (this environment): every variant, no error, no spill"
"$PY" -m bench.kernel_compile --variants --strict --jobs "$JOBS" || rc=1

for version in $TRITONS; do
  side="$CACHE/triton-$version"
  # The marker is written last, so an interrupted install is redone, not trusted.
  if [[ ! -f "$side/.installed" ]]; then
    echo "compile_check: installing triton==$version into $side"
    rm -rf "$side"
    mkdir -p "$CACHE"
    "$PY" -m pip --disable-pip-version-check -q install --no-deps --target "$side" "triton==$version"
    touch "$side/.installed"
  fi
  got="$(cd / && PYTHONPATH="$side" "$PY" -c 'import triton; print(triton.__version__)')"
  if [[ "$got" != "$version" ]]; then
    echo "compile_check: failed: $side gives triton $got, not $version" >&2
    rc=1
    continue
  fi
  echo "compile_check: triton $version: every variant, no error, spills <= $OLD_SPILL_ALLOWANCE B"
  PYTHONPATH="$side${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m bench.kernel_compile --variants --strict \
    --jobs "$JOBS" --spill-allowance "$OLD_SPILL_ALLOWANCE" || rc=1
done
if ((rc)); then
  echo "compile_check: FAILED (see the tables above)" >&2
fi
exit "$rc"
