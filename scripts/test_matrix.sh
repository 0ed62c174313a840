#!/usr/bin/env bash
# Version matrix: the test suite and the offline sm_90 kernel compile, once per
# (torch, triton) pair, each pair in its own cached virtual environment.
#
#   bash scripts/test_matrix.sh [options] [-- pytest args]
#
#   --envs LIST       run only these envs (comma- or space-separated): an env name
#                     (torch-2.11.0-triton-3.6.0), a torch:triton pair (2.11.0:3.6.0; an
#                     empty triton, 2.14.1:, takes the triton torch itself pins) or a bare
#                     torch version (2.11.0: the listed env with that torch). Also MATRIX_ONLY.
#   --compile-only    only the kernel compile (minutes), no test suite
#   --setup-only      only build the envs (and install this checkout into them)
#   --timeout SECONDS per-suite wall-clock limit (default 2400 = 40 min; MATRIX_SUITE_TIMEOUT)
#   -h, --help        this text
#   -- ARGS           passed on to pytest (e.g. -- -x tests/kernels)
#
# Environment:
#   MATRIX_ENVS            the matrix, "torch:triton" pairs, space-separated
#                          (default "2.11.0:3.6.0 2.13.0:3.9.0 2.14.1:")
#   INDUCTOR_EMBED_ENV_CACHE  env cache root (default ~/.cache/inductor_embed/envs); the
#                          envs are <root>/matrix/<name>, plain `python -m venv` dirs
#   MATRIX_OUT             logs and summary.md (default <checkout>/.matrix)
#   MATRIX_PYTHON          the interpreter the venvs are made from (default python)
#   MATRIX_TABLES          table counts for the compile (default 1,26)
#   MATRIX_COMPILE_TIMEOUT per-compile limit in seconds (default 1800)
#
# Per env, in <MATRIX_OUT>/<name>/: setup.log, suite.log, junit.xml, failures.txt,
# kernel_compile.log, kernel_compile.json. At the end one markdown table goes to stdout
# and to <MATRIX_OUT>/summary.md. Exit 0 only if every env set up, its suite passed
# (no failures, no errors, no timeout) and its compile had no miss.
#
# The checkout tested is the one this script lives in (its parent directory), so a copy
# in any clone or worktree tests that clone. Envs are shared between clones: each run
# (re)installs its own checkout editable when the env points elsewhere, and holds a lock
# on the env while it uses it, so that two clones never re-point one env under each other.
set -uo pipefail  # no -e: one env failing must not stop the others; failures are collected

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INDUCTOR_EMBED_ENV_CACHE:-$HOME/.cache/inductor_embed/envs}/matrix"
OUT="${MATRIX_OUT:-$ROOT/.matrix}"
BASE_PY="${MATRIX_PYTHON:-python}"
MATRIX="${MATRIX_ENVS:-2.11.0:3.6.0 2.13.0:3.9.0 2.14.1:}"
SUITE_TIMEOUT="${MATRIX_SUITE_TIMEOUT:-2400}"
COMPILE_TIMEOUT="${MATRIX_COMPILE_TIMEOUT:-1800}"
TABLES="${MATRIX_TABLES:-1,26}"
ONLY="${MATRIX_ONLY:-}"
# The test tools, without ruff (lint is version-independent; scripts/test.sh runs it).
TOOLS=(pytest expecttest hypothesis numpy matplotlib)
# setuptools >= 70.1 builds the editable install (PEP 660 with package-dir mappings)
# without build isolation; a fresh 3.11 venv has 65.x.
BUILD_TOOLS=("setuptools>=70.1" wheel)
MODE=all  # all | compile | setup
PYTEST_ARGS=()

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --envs) [[ $# -ge 2 ]] || { echo "test_matrix: --envs needs a value" >&2; exit 2; }
            ONLY="$2"; shift 2 ;;
    --envs=*) ONLY="${1#--envs=}"; shift ;;
    --compile-only) MODE=compile; shift ;;
    --setup-only) MODE=setup; shift ;;
    --timeout) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "test_matrix: --timeout needs seconds" >&2; exit 2; }
               SUITE_TIMEOUT="$2"; shift 2 ;;
    --timeout=*) SUITE_TIMEOUT="${1#--timeout=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) echo "test_matrix: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$SUITE_TIMEOUT" =~ ^[0-9]+$ ]] || { echo "test_matrix: bad suite timeout $SUITE_TIMEOUT" >&2; exit 2; }

# The envs' interpreters must see only their own site-packages and this checkout.
unset PYTHONPATH PYTHONHOME PIP_USER VIRTUAL_ENV

log() { printf '[%(%H:%M:%S)T] test_matrix: %s\n' -1 "$*"; }

# "torch-X-triton-Y", or "torch-X" when triton is left to torch's own pin.
env_name() { if [[ -n "$2" ]]; then echo "torch-$1-triton-$2"; else echo "torch-$1"; fi; }

# --- which envs ------------------------------------------------------------------------
declare -a E_TORCH=() E_TRITON=()
add_env() {
  local i
  for i in "${!E_TORCH[@]}"; do  # no duplicates
    [[ "${E_TORCH[$i]}" == "$1" && "${E_TRITON[$i]}" == "$2" ]] && return 0
  done
  E_TORCH+=("$1"); E_TRITON+=("$2")
}
read -ra MATRIX_ITEMS <<<"$MATRIX"
if [[ -z "$ONLY" ]]; then
  for item in "${MATRIX_ITEMS[@]}"; do add_env "${item%%:*}" "$([[ "$item" == *:* ]] && echo "${item#*:}")"; done
else
  read -ra ONLY_ITEMS <<<"${ONLY//,/ }"
  for sel in "${ONLY_ITEMS[@]}"; do
    if [[ "$sel" =~ ^torch-([^-]+)-triton-(.+)$ ]]; then add_env "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ "$sel" =~ ^torch-([^-]+)$ ]]; then add_env "${BASH_REMATCH[1]}" ""
    elif [[ "$sel" == *:* ]]; then add_env "${sel%%:*}" "${sel#*:}"
    else  # a bare torch version: the matrix's entry for it, else torch's own triton
      found=""
      for item in "${MATRIX_ITEMS[@]}"; do
        if [[ "${item%%:*}" == "$sel" ]]; then
          found=1; add_env "$sel" "$([[ "$item" == *:* ]] && echo "${item#*:}")"
        fi
      done
      [[ -n "$found" ]] || add_env "$sel" ""
    fi
  done
fi
((${#E_TORCH[@]})) || { echo "test_matrix: no envs selected" >&2; exit 2; }

# --- set-up ----------------------------------------------------------------------------
# pip with the version check off (noise); its output goes to the env's setup.log.
pip_in() { local py="$1"; shift; "$py" -m pip --disable-pip-version-check install "$@"; }

# Prints "TORCH TRITON" as the env imports them (from /, so no checkout shadows anything).
versions_of() { (cd / && "$1" -c 'import torch, triton; print(torch.__version__, triton.__version__)' 2>/dev/null); }

# Fails loudly unless the env has torch $2 (any local label: 2.13.0 matches 2.13.0+cpu)
# and, when $3 is set, triton $3.
check_versions() {
  local py="$1" want_torch="$2" want_triton="$3" got t tr
  got="$(versions_of "$py")" || { echo "test_matrix: torch/triton do not import in $py" >&2; return 1; }
  read -r t tr <<<"$got"
  if [[ "${t%%+*}" != "$want_torch" ]] || [[ -n "$want_triton" && "$tr" != "$want_triton" ]]; then
    echo "test_matrix: VERSION MISMATCH in $py: wanted torch $want_torch triton ${want_triton:-(torch pin)}, got torch $t triton $tr" >&2
    return 1
  fi
}

# Builds the env at $1 for torch $2 / triton $3 unless its marker says it is complete for
# exactly these versions. The marker is written last, so an interrupted install is redone;
# a marker for other versions means the env is rebuilt from scratch (no leftovers).
setup_env() {
  local dir="$1" want_torch="$2" want_triton="$3" py="$1/bin/python" marker="$1/.matrix-complete"
  local key t0 got t tr
  key="torch==$want_torch triton==${want_triton:-<torch-pin>} tools=${TOOLS[*]} build=${BUILD_TOOLS[*]}"
  if [[ -f "$marker" && "$(head -n1 "$marker")" == "$key" ]] && check_versions "$py" "$want_torch" "$want_triton" 2>/dev/null; then
    log "env $dir: up to date ($(sed -n 2p "$marker"))"
    return 0
  fi
  if [[ -f "$marker" ]]; then
    log "env $dir: built for other versions ($(head -n1 "$marker")); rebuilding"
    rm -rf "$dir"
  fi
  t0=$SECONDS
  if ! "$py" -c '' 2>/dev/null; then
    rm -rf "$dir"
    log "env $dir: python -m venv (from $BASE_PY)"
    "$BASE_PY" -m venv "$dir" || return 1
  fi
  rm -f "$marker"
  log "env $dir: pip install ${BUILD_TOOLS[*]}"
  pip_in "$py" "${BUILD_TOOLS[@]}" || return 1
  # torch and triton first and together, so pip resolves triton against this torch only.
  local pkgs=("torch==$want_torch")
  [[ -n "$want_triton" ]] && pkgs+=("triton==$want_triton")
  log "env $dir: pip install ${pkgs[*]}"
  pip_in "$py" "${pkgs[@]}" || return 1
  check_versions "$py" "$want_torch" "$want_triton" || return 1
  # The tools next, under a constraint file pinning the exact torch/triton just installed:
  # no tool's dependency can move them.
  got="$(versions_of "$py")"; read -r t tr <<<"$got"
  printf 'torch==%s\ntriton==%s\n' "$t" "$tr" >"$dir/matrix-constraints.txt"
  log "env $dir: pip install ${TOOLS[*]} (constrained: torch==$t triton==$tr)"
  pip_in "$py" -c "$dir/matrix-constraints.txt" "${TOOLS[@]}" || return 1
  check_versions "$py" "$want_torch" "$want_triton" || return 1
  [[ "$(versions_of "$py")" == "$got" ]] || { echo "test_matrix: the tools moved torch/triton ($got -> $(versions_of "$py"))" >&2; return 1; }
  printf '%s\nbuilt %s in %d s: torch %s triton %s\n' "$key" "$(date -u +%FT%TZ)" $((SECONDS - t0)) "$t" "$tr" >"$marker"
  log "env $dir: built in $((SECONDS - t0)) s (torch $t, triton $tr; $(du -sh "$dir" 2>/dev/null | cut -f1))"
}

# Whether inductor_embed (and its mapped subpackages) import from THIS checkout. Run
# from /, so the checkout's own inductor_embed/ (cwd on sys.path) cannot stand in.
checkout_installed() {
  (cd / && ROOT="$ROOT" "$1" - <<'PYEOF' 2>/dev/null
import os, sys
import inductor_embed, inductor_embed.kernels, inductor_embed.lowering
root = os.path.realpath(os.environ["ROOT"])
where = [os.path.realpath(os.path.dirname(m.__file__))
         for m in (inductor_embed, inductor_embed.lowering, inductor_embed.kernels)]
sys.exit(0 if where == [os.path.join(root, d) for d in ("inductor_embed", "lowering", "kernels")] else 1)
PYEOF
  )
}

# (Re)installs this checkout editable, cheaply: only when the env imports another one.
install_checkout() {
  local py="$1"
  checkout_installed "$py" && return 0
  log "installing $ROOT editable (--no-deps --no-build-isolation)"
  pip_in "$py" --no-deps --no-build-isolation -e "$ROOT" || return 1
  checkout_installed "$py" || { echo "test_matrix: inductor_embed still does not import from $ROOT" >&2; return 1; }
}

# --- the two checks --------------------------------------------------------------------
# Sets S_PASSED S_FAILED S_SKIPPED S_ERRORS S_WALL S_RC. Counts come from pytest's final
# line ("3 failed, 1200 passed, 20 skipped, 2 errors in 812.31s"); a run that never got
# there (timeout, crash) has them as "?".
run_suite() {
  local py="$1" odir="$2" t0 last n
  t0=$SECONDS
  # timeout -k: a hung suite gets SIGTERM at the limit and SIGKILL a minute later.
  (cd "$ROOT" && timeout -k 60 "$SUITE_TIMEOUT" "$py" -m pytest -q -p no:cacheprovider \
      --junitxml="$odir/junit.xml" "${PYTEST_ARGS[@]}") >"$odir/suite.log" 2>&1
  S_RC=$?
  S_WALL=$((SECONDS - t0))
  S_PASSED='?' S_FAILED='?' S_SKIPPED='?' S_ERRORS='?'
  last="$(grep -E '^(=+ )?([0-9]+ [a-z]+.*|no tests ran) in [0-9.]+s' "$odir/suite.log" | tail -n1)"
  if [[ -n "$last" ]]; then
    S_PASSED=0 S_FAILED=0 S_SKIPPED=0 S_ERRORS=0
    n="$(grep -oE '[0-9]+ passed' <<<"$last")" && S_PASSED="${n%% *}"
    n="$(grep -oE '[0-9]+ failed' <<<"$last")" && S_FAILED="${n%% *}"
    n="$(grep -oE '[0-9]+ skipped' <<<"$last")" && S_SKIPPED="${n%% *}"
    n="$(grep -oE '[0-9]+ errors?' <<<"$last")" && S_ERRORS="${n%% *}"
  fi
  # Each failure and error: node id and the first line of its message, from the junit XML
  # (the -ra summary in the log cuts lines at the terminal width); the log's lines if no XML.
  (cd "$ROOT" && "$py" - "$odir/junit.xml" <<'PYEOF' >"$odir/failures.txt" 2>/dev/null) \
    || grep -E '^(FAILED|ERROR) ' "$odir/suite.log" >"$odir/failures.txt" || true
import os, sys, xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    for kind in ("failure", "error"):
        el = tc.find(kind)
        if el is None:
            continue
        # classname is the module's dotted path, then the class for a method: find the file.
        parts, name, node = tc.get("classname", "").split("."), tc.get("name", ""), None
        for i in range(len(parts), 0, -1):
            if os.path.isfile("/".join(parts[:i]) + ".py"):
                node = "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
                break
        msg = ((el.get("message") or el.text or "").strip().splitlines() or [""])[0][:240]
        print(f"{'FAILED' if kind == 'failure' else 'ERROR'} {node or tc.get('classname', '') + '::' + name} - {msg}")
PYEOF
}

# Sets C_MISSES ("0" or "family:T:reason, ...") C_NOTES C_RC. A miss is a compile error, a
# spill, a compile time over the budget, parameters over 4,096 B, a family that could not
# be imported or whose kernel_specs raised, a (family, T) with no row, or a run without JSON.
run_compile() {
  local py="$1" odir="$2" json="$2/kernel_compile.json" verdict
  rm -f "$json"
  # TRITON_INTERPRET is not touched: the tool re-runs itself without it if it is set.
  (cd "$ROOT" && timeout -k 60 "$COMPILE_TIMEOUT" "$py" -m bench.kernel_compile --arch sm_90 \
      --tables "$TABLES" --json "$json") >"$odir/kernel_compile.log" 2>&1
  C_RC=$?
  verdict="$(cd "$ROOT" && JSON="$json" LOG="$odir/kernel_compile.log" RC="$C_RC" TABLES="$TABLES" "$py" - <<'PYEOF' 2>&1
import json, os, re
try:  # the tool's own goals, where its module imports in this env
    from bench.kernel_compile import FAMILIES, PARAM_BYTES_GOAL, compile_goal_s
except Exception:
    FAMILIES, PARAM_BYTES_GOAL = ("multi_embedding", "one_hot_linear", "multi_embedding_bag"), 4096
    def compile_goal_s(t): return 30.0 if t <= 26 else 60.0 if t <= 100 else 120.0
misses, notes = [], []
log = open(os.environ["LOG"], errors="replace").read()
for fam, why in re.findall(r"^note: (\w+)(?: at T=\d+)?: (import failed|kernel_specs failed)", log, re.M):
    misses.append(f"{fam}:-:{why}")
rows = json.load(open(os.environ["JSON"])) if os.path.exists(os.environ["JSON"]) else None
if rows is None:
    misses.append(f"all:-:no JSON (exit {os.environ['RC']})")
    rows = []
elif os.environ["RC"] != "0":
    misses.append(f"all:-:exit {os.environ['RC']}")
seen = set()
for r in rows:
    fam, t = r["family"], r["tables"]
    seen.add((fam, t))
    if r.get("error"):  # each failed kernel by name, and the first error's first words
        bad = [k["name"] for k in r.get("per_kernel") or () if k.get("error")]
        first = r["error"].split(";")[0].split(": ", 1)[-1][:80]
        misses.append(f"{fam}:{t}:compile error in {'+'.join(bad) or '?'} ({first})")
    if r.get("spills"):
        misses.append(f"{fam}:{t}:spills {r['spills']} B")
    if r["compile_s"] > compile_goal_s(t):
        misses.append(f"{fam}:{t}:compile {r['compile_s']:.1f}s > {compile_goal_s(t):.0f}s")
    if r.get("param_bytes") is not None and r["param_bytes"] > PARAM_BYTES_GOAL:
        misses.append(f"{fam}:{t}:params {r['param_bytes']} B")
    if r.get("spills") is None and r.get("kernels"):
        notes.append(f"{fam}:{t}:spills unknown (no ptxas log)")
if rows or os.path.exists(os.environ["JSON"]):
    for fam in FAMILIES:
        for t in [int(x) for x in os.environ["TABLES"].split(",") if x.strip()]:
            if (fam, t) not in seen and not any(m.startswith(fam + ":-:") for m in misses):
                misses.append(f"{fam}:{t}:not measured")
print("MISSES\t" + (", ".join(misses) if misses else "0"))
print("NOTES\t" + ", ".join(notes))
PYEOF
  )"
  C_MISSES="$(sed -n 's/^MISSES\t//p' <<<"$verdict")"
  C_NOTES="$(sed -n 's/^NOTES\t//p' <<<"$verdict")"
  [[ -n "$C_MISSES" ]] || C_MISSES="? (verdict failed: $(tail -n1 <<<"$verdict"))"
}

# --- main loop -------------------------------------------------------------------------
mkdir -p "$CACHE" "$OUT" || exit 1
log "checkout $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git')); envs in $CACHE; logs in $OUT"
ROWS=()
NOTES=()
ALL_OK=1
for i in "${!E_TORCH[@]}"; do
  want_torch="${E_TORCH[$i]}" want_triton="${E_TRITON[$i]}"
  name="$(env_name "$want_torch" "$want_triton")"
  dir="$CACHE/$name" odir="$OUT/$name" py="$CACHE/$name/bin/python"
  mkdir -p "$odir"
  log "=== $name ==="
  # One user of an env at a time (another clone's run would re-point its editable install).
  exec {lockfd}>"$CACHE/$name.lock"
  if ! flock -n "$lockfd"; then
    log "env $name is in use by another run; waiting for it"
    flock "$lockfd"
  fi
  pyver='?' tv='?' trv='?' suite='-' wall='-' misses='-' status=()
  {
    setup_env "$dir" "$want_torch" "$want_triton" && install_checkout "$py"
  } >"$odir/setup.log" 2>&1
  setup_rc=$?
  if ((setup_rc)); then
    status+=("SETUP FAILED (see $odir/setup.log)")
    tail -n 5 "$odir/setup.log" | sed 's/^/  | /'
  else
    sed -n 's/^\[..:..:..\] test_matrix: //p' "$odir/setup.log" | sed 's/^/  /'
    pyver="$("$py" -c 'import platform; print(platform.python_version())')"
    read -r tv trv <<<"$(versions_of "$py")"
    if [[ "$MODE" == all ]]; then
      log "$name: pytest (limit ${SUITE_TIMEOUT} s) -> $odir/suite.log"
      run_suite "$py" "$odir"
      suite="$S_PASSED / $S_FAILED / $S_SKIPPED / $S_ERRORS"
      wall="$((S_WALL / 60))m$(printf '%02d' $((S_WALL % 60)))s"
      if ((S_RC == 124 || S_RC == 137)); then status+=("suite TIMEOUT (${SUITE_TIMEOUT} s)")
      elif [[ "$S_FAILED" != 0 || "$S_ERRORS" != 0 ]]; then status+=("suite FAILED")
      elif ((S_RC != 0)); then status+=("suite exit $S_RC")
      fi
      log "$name: suite $suite (passed / failed / skipped / errors) in $wall, exit $S_RC"
      [[ ! -s "$odir/failures.txt" ]] || NOTES+=("$name: $(wc -l <"$odir/failures.txt") failing tests in $odir/failures.txt")
    fi
    if [[ "$MODE" != setup ]]; then
      log "$name: kernel compile sm_90, tables $TABLES -> $odir/kernel_compile.log"
      run_compile "$py" "$odir"
      misses="$C_MISSES"
      [[ "$misses" == 0 ]] || status+=("compile MISS")
      [[ -z "$C_NOTES" ]] || NOTES+=("$name: $C_NOTES")
      log "$name: compile misses: $misses"
    fi
  fi
  flock -u "$lockfd"
  exec {lockfd}>&-
  if ((${#status[@]})); then ALL_OK=0; st="$(IFS=';'; echo "${status[*]}")"; st="${st//;/; }"
  else case "$MODE" in all) st=ok ;; compile) st="ok (compile only)" ;; setup) st="ok (set up)" ;; esac
  fi
  ROWS+=("| $name | $pyver | $tv | $trv | $suite | $wall | ${misses//|/\\|} | $st |")
done

{
  echo "## test matrix: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)'), $(date -u +%FT%TZ), mode $MODE"
  echo
  echo "| env | python | torch | triton | suite passed / failed / skipped / errors | suite wall | compile misses (sm_90, T=$TABLES) | status |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  if ((${#NOTES[@]})); then echo; printf -- '- note: %s\n' "${NOTES[@]}"; fi
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
echo
echo "(logs: $OUT/<env>/; table: $OUT/summary.md)"
((ALL_OK)) && exit 0 || exit 1
