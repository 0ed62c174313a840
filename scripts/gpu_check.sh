#!/usr/bin/env bash
# One-shot check on a lent GPU machine (one H100/H200, torch 2.11 + triton 3.6 already
# installed, no network), meant to finish within 10 minutes:
#
#   bash scripts/gpu_check.sh
#
# 1. versions: nvidia-smi, torch, triton (and which optional tools import)
# 2. install this checkout (editable, offline: --no-index --no-deps --no-build-isolation,
#    setup.sh's own fallback) when inductor_embed does not import from it; if that fails,
#    stop at once (exit 2) and say why
# 3. the CUDA tests: tests/reliability/test_cuda.py (every pattern: fp32/bf16, int32/int64,
#    dynamic batch, reduce-overhead, launch counts, the device assert), tests/kernels,
#    tests/lowering, tests/reliability/test_bad_input.py
#    (at most TEST_TIMEOUT_S seconds; exit code recorded)
# 4. the benchmark cases behind the GPU goals, one bench/presets.py `gpu-check-*` preset per
#    goal, each under its own time cap (a run killed by its cap writes nothing, so the
#    cases are split where one slow compile could otherwise cost the others):
#      multi        the 10 tables D 1..8 of RTB House's pytorch-fast-embedding, fwd+bwd at
#                   B <= 4096 vs eager / torch.compile, and 10 tables D 64..256
#      gather       one-table forward gather at D=128: forward GB/s as a share of the copy bandwidth
#      bf16         bf16 backward, one row repeated 262,144 / 1,048,576 times
#      tables       T=10 and T=100 at B=128
#      tables1000   T=1,000 at B=128: eager and inductor_embed, then (if time is left)
#                   torch.compile on its own, its compile being the slowest thing here
# 5. outputs in bench/results/<gpu name>/: the suite's <preset>.json / .md (/ .png), the
#    pytest junit xml, gpu_check_digest.md (forward bandwidth share, speedups, launches)
#    and gpu_check.log (everything printed).
#
# No `set -e`: a failing step is recorded and the next one runs. Steps share one wall-time
# budget (BUDGET_S, default 570 s): a step gets min(its cap, what is left), and a step
# that cannot get its minimum is skipped. A summary table (step, status, seconds) ends the run.
# Not run here: bench.kernel_compile (offline sm_90 compile; it is for CPU machines).
#
# Env: PYTHON (default python), BUDGET_S (570), TEST_TIMEOUT_S (300).
set -uo pipefail

START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
BUDGET_S="${BUDGET_S:-570}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-300}"
DEADLINE=$((START + BUDGET_S))
RESERVE_S=20  # kept for the digest and the summary
# Kernels must compile for real here, and progress lines should reach the log as they come.
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

# --- results folder: bench's own name for this device (torch's name, lower-case, dashes) ---
sanitize() { tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//'; }
GPU_DIR="$(cd / && "$PY" -c '
import re, torch
print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))' 2>/dev/null)"
if [[ -z "$GPU_DIR" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  GPU_DIR="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | sanitize)"
fi
GPU_DIR="${GPU_DIR:-gpu-unknown}"
RESULTS="$ROOT/bench/results/$GPU_DIR"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"

say() { printf '%s\n' "$*" | tee -a "$LOG"; }

STEP_NAMES=()
STEP_STATUS=()
STEP_SECS=()
record() { STEP_NAMES+=("$1"); STEP_STATUS+=("$2"); STEP_SECS+=("$3"); }

# step NAME CAP_S MIN_S CMD...: run CMD under min(CAP_S, budget left), output to the log.
# Returns CMD's exit code (or 125 when skipped for lack of time).
step() {
  local name=$1 cap=$2 min=$3
  shift 3
  local now left t0 rc dt status
  now=$(date +%s)
  left=$((DEADLINE - RESERVE_S - now))
  if ((left < min)); then
    say "=== $name: skipped, ${left}s of the budget left (needs ${min}s)"
    record "$name" "skipped (time)" 0
    return 125
  fi
  ((cap > left)) && cap=$left
  say ""
  say "=== $name (cap ${cap}s, $((now - START))s elapsed): $*"
  t0=$(date +%s)
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  case $rc in
    0) status="ok" ;;
    124 | 137) status="timeout (${cap}s)" ;;
    *) status="failed (rc $rc)" ;;
  esac
  say "=== $name: $status in ${dt}s"
  record "$name" "$status" "$dt"
  return "$rc"
}

# --- 1. versions ----------------------------------------------------------------------
say "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), checkout $ROOT, results in $RESULTS, budget ${BUDGET_S}s"
if command -v nvidia-smi >/dev/null 2>&1; then
  step "nvidia-smi" 30 5 nvidia-smi
else
  say "=== nvidia-smi: not found"
  record "nvidia-smi" "missing" 0
fi
step "versions" 60 10 "$PY" - <<'PYEOF'
import importlib.util, platform, torch, triton
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {triton.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs")
else:
    print("device: torch sees no CUDA device")
mods = ("pytest", "numpy", "matplotlib", "hypothesis", "expecttest", "fbgemm_gpu")
print("importable: " + ", ".join(f"{m}={importlib.util.find_spec(m) is not None}" for m in mods))
raise SystemExit(0 if torch.cuda.is_available() else 3)
PYEOF
# 3: torch sees no CUDA device; the CUDA tests and the benchmarks are then skipped.
NO_CUDA=$([[ $? == 3 ]] && echo 1 || echo 0)

# --- 2. this checkout, installed --------------------------------------------------------
# True when inductor_embed, .lowering and .kernels import from THIS checkout (run from /,
# so the checkout's own folder on sys.path cannot stand in for an installed package).
installed_here() {
  (cd / && ROOT="$ROOT" "$PY" - <<'PYEOF' >/dev/null 2>&1
import os
import inductor_embed, inductor_embed.kernels, inductor_embed.lowering
where = [os.path.realpath(os.path.dirname(m.__file__))
         for m in (inductor_embed, inductor_embed.lowering, inductor_embed.kernels)]
root = os.path.realpath(os.environ["ROOT"])
assert where == [os.path.join(root, d) for d in ("inductor_embed", "lowering", "kernels")], where
PYEOF
  )
}
if installed_here; then
  say "=== install: inductor_embed already imports from this checkout"
  record "install" "ok (already)" 0
else
  # setup.sh's offline fallback, without its network attempts first (on a machine whose
  # network drops packets those wait out pip's timeouts).
  step "install" 180 30 "$PY" -m pip --disable-pip-version-check install --no-index --no-build-isolation \
    --no-deps -e .
  install_rc=$?
  # Stop here: the tests would import another copy of the package (or none), and a GPU
  # run is too rare to spend on results that do not belong to this checkout.
  if ((install_rc != 0)) || ! installed_here; then
    say "gpu_check: FAILED: this checkout could not be installed (pip exit code $install_rc), so inductor_embed"
    say "  does not import from $ROOT. An editable install needs setuptools >= 70.1, or 'wheel'"
    say "  beside an older one ('invalid command bdist_wheel' means neither). Nothing else was run."
    exit 2
  fi
fi

# --- 3. the CUDA tests ------------------------------------------------------------------
if ((NO_CUDA)); then
  say "=== tests: torch sees no CUDA device; skipped"
  record "tests" "skipped (no CUDA)" 0
elif (cd / && "$PY" -c "import pytest" >/dev/null 2>&1); then
  step "tests" "$TEST_TIMEOUT_S" 60 "$PY" -m pytest -q -p no:cacheprovider -rfE \
    --junitxml="$RESULTS/gpu_check_pytest.xml" \
    tests/reliability/test_cuda.py tests/kernels tests/lowering tests/reliability/test_bad_input.py
  TEST_RC=$?
  say "gpu_check: pytest exit code $TEST_RC"
else
  say "=== tests: pytest is not installed; skipped"
  record "tests" "skipped (no pytest)" 0
fi

# --- 4. the benchmark cases behind the GPU goals ---------------------------------------
# bench NAME PRESET CAP_S [args...]: one `python -m bench` run into bench/results/<gpu>/.
bench() {
  local name=$1 preset=$2 cap=$3
  shift 3
  if ((NO_CUDA)); then
    say "=== bench $name: torch sees no CUDA device; skipped"
    record "bench $name" "skipped (no CUDA)" 0
    return 125
  fi
  step "bench $name" "$cap" 45 "$PY" -m bench --preset "$preset" --device cuda "$@"
}
bench multi gpu-check-multi 150
bench gather gpu-check-gather 120
bench bf16 gpu-check-bf16 150
bench tables gpu-check-tables 150
bench tables1000 gpu-check-tables1000 150 --providers eager,inductor_embed
bench tables1000-compile gpu-check-tables1000 240 --providers eager,torch.compile \
  --name gpu-check-tables1000-compile

# --- 5. digest: forward bandwidth share, speedups and launches from the jsons ----------
RESERVE_S=0
step "digest" 30 5 "$PY" - "$RESULTS" "$START" <<'PYEOF'
import json
import sys
from pathlib import Path


def ratio(x):
    return "-" if x is None else f"{x['median']:.2f}x"


results, start = Path(sys.argv[1]), float(sys.argv[2])
lines = ["# gpu_check digest", ""]
# Only this run's files: an older run's json may sit in the same folder.
for js in sorted(p for p in results.glob("gpu-check-*.json") if p.stat().st_mtime >= start):
    d = json.loads(js.read_text())
    m = d["meta"]
    copy = m["copy_gbps"] or None
    lines += [f"## {js.stem} ({m['device_name']}, torch {m['torch']}, triton {m['triton']}, "
              f"git {m['git_sha'][:12]}, copy {m['copy_gbps']:.0f} GB/s)", "",
              "| case | provider | fwd ms | fwd GB/s | fwd % copy | fwd+bwd ms | vs eager | vs torch.compile "
              "| launches | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in d["cases"]:
        case = c["case"]
        dims = case["dims"]
        label = (f"T={len(dims)} D={min(dims)}..{max(dims)} B={case['batch']} {case['dist']} {case['dtype']}"
                 if len(dims) > 1 else
                 f"V={case['vocabs'][0]} D={dims[0]} B={case['batch']} {case['dist']} {case['dtype']}")
        for r in c["results"]:
            if r["fwd"] is None:
                lines.append(f"| {label} | {r['provider']} | | | | | | | | {r['status']}: {r['note'][:80]} |")
                continue
            fwd_ms = r["fwd"]["median_ms"]
            gbps = c["bytes"]["fwd"] / (fwd_ms * 1e-3) / 1e9
            share = f"{100 * gbps / copy:.0f}%" if copy else "-"
            lines.append(f"| {label} | {r['provider']} | {fwd_ms:.4g} | {gbps:.3g} | {share} | "
                         f"{r['fwd_bwd']['median_ms']:.4g} | {ratio(r.get('vs_eager'))} | "
                         f"{ratio(r.get('vs_compile'))} | {r.get('launches') if r.get('launches') is not None else '-'} "
                         f"| {r['status']} |")
    lines.append("")
if len(lines) == 2:
    lines.append("no gpu-check-*.json was written by this run")
text = "\n".join(lines)
(results / "gpu_check_digest.md").write_text(text + "\n")
print(text)
PYEOF

# --- summary ----------------------------------------------------------------------------
say ""
say "gpu_check summary ($(($(date +%s) - START))s in all; results in $RESULTS)"
say "$(printf '%-60s  %-22s  %7s' step status seconds)"
say "$(printf '%-60s  %-22s  %7s' "$(printf -- '-%.0s' {1..60})" "$(printf -- '-%.0s' {1..22})" '-------')"
for i in "${!STEP_NAMES[@]}"; do
  say "$(printf '%-60s  %-22s  %7s' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_SECS[$i]}")"
done
say "files: $(find "$RESULTS" -maxdepth 1 -type f -printf '%f ' | sort)"
# 0 only when every step passed (a skipped or failed step makes it 1; the log says which).
for st in "${STEP_STATUS[@]}"; do
  [[ $st == ok* ]] || exit 1
done
exit 0
