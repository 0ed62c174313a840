#!/usr/bin/env bash
# Installs what the demo and the tests need, and does nothing when that is done already.
#
#   bash scripts/setup.sh
#
# - torch: kept if importable; else `pip install torch==2.13.0` (the CPU build here).
#   Never an unpinned torch, which would pull several GB of CUDA packages.
# - this package (editable, from this checkout) and the test tools (pytest, expecttest,
#   hypothesis, ruff): `pip install -e ".[test]"` when something is missing. torch and
#   triton already installed satisfy the pyproject's torch>=2.11 / triton>=3.6, so pip
#   keeps them. Where that fails (a GPU machine with torch 2.11 + triton 3.6 and no
#   network), it falls back to `pip install --no-build-isolation --no-deps -e .`.
#
# Set PYTHON to use another interpreter than `python`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
PIP=("$PY" -m pip --disable-pip-version-check -q)

# Prints what is missing: "torch", "package" (inductor_embed not installed from THIS
# checkout: a fresh clone on a machine where another checkout was installed editable
# would otherwise mix the two checkouts' files) and "tools" (the test tools). Runs from
# outside the checkout, so that its inductor_embed/ (the current directory is on
# sys.path) cannot stand in for an installed one.
missing() {
  (cd / && ROOT="$ROOT" "$PY" - <<'PYEOF'
import importlib.util, os, shutil, sys
missing = []
try:
    import torch  # noqa: F401
except Exception:
    missing.append("torch")
try:
    import inductor_embed, inductor_embed.kernels, inductor_embed.lowering
    root = os.environ["ROOT"]
    where = [os.path.realpath(os.path.dirname(m.__file__))
             for m in (inductor_embed, inductor_embed.lowering, inductor_embed.kernels)]
    if where != [os.path.join(root, d) for d in ("inductor_embed", "lowering", "kernels")]:
        missing.append("package")
except Exception:
    missing.append("package")
if any(importlib.util.find_spec(m) is None for m in ("pytest", "expecttest", "hypothesis", "ruff", "numpy", "matplotlib")):
    missing.append("tools")
print(" ".join(missing))
PYEOF
  )
}

todo="$(missing)"
if [[ " $todo " == *" torch "* ]]; then
  echo "setup: torch is not installed; installing torch==2.13.0"
  "${PIP[@]}" install "torch==2.13.0"
  todo="$(missing)"
fi
if [[ -n "$todo" ]]; then
  echo "setup: installing this checkout (editable) and the test tools (missing: $todo)"
  if ! "${PIP[@]}" install --timeout 30 --retries 1 -e ".[test]"; then
    echo "setup: 'pip install -e .[test]' failed (no network?); installing the package alone, offline" >&2
    if [[ " $todo " == *" package "* ]]; then
      "${PIP[@]}" install --no-build-isolation --no-deps -e .
    fi
  fi
  todo="$(missing)"
  if [[ " $todo " == *" package "* || " $todo " == *" torch "* ]]; then
    echo "setup: failed: still missing: $todo" >&2
    exit 1
  fi
  [[ -z "$todo" ]] || echo "setup: warning: some test tools (pytest, expecttest, hypothesis, ruff, numpy, matplotlib) are missing" >&2
fi

# torchrec (its unsharded EmbeddingBagCollection is a test of the multi_embedding_bag pattern):
# best effort, every package with --no-deps so that nothing can pull another torch.
if ! (cd / && "$PY" -c "import torchrec" >/dev/null 2>&1); then
  echo "setup: installing torchrec 1.3.0 (--no-deps) for its EmbeddingBagCollection test"
  "${PIP[@]}" install --no-deps --timeout 30 --retries 1 torchrec==1.3.0 fbgemm-gpu-cpu==1.8.0 tensordict pyvers \
      torchmetrics==1.0.3 iopath portalocker lightning-utilities pyre-extensions tqdm typing-inspect \
      mypy-extensions cloudpickle \
    || echo "setup: warning: torchrec could not be installed; its test will be skipped" >&2
fi

(cd / && "$PY" -c "
import torch, triton
dev = f'cuda ({torch.cuda.get_device_name()})' if torch.cuda.is_available() else 'cpu'
print(f'setup: using torch {torch.__version__}, triton {triton.__version__}, device {dev}')")
