#!/usr/bin/env bash
# Installs what the demo and the tests need, and does nothing when that is done already.
#
#   bash scripts/setup.sh
#
# - torch: kept if importable; else `pip install torch==2.13.0` (the CPU build here).
#   Never an unpinned torch, which would pull several GB of CUDA packages.
# - this package (editable, from this checkout) and the test tools (pytest, pytest-xdist,
#   expecttest, hypothesis, ruff): `pip install -e ".[test]"` when something is missing. torch and
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
if any(importlib.util.find_spec(m) is None for m in ("pytest", "xdist", "expecttest", "hypothesis", "ruff", "numpy", "matplotlib")):
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
  [[ -z "$todo" ]] || echo "setup: warning: some test tools (pytest, pytest-xdist, expecttest, hypothesis, ruff, numpy, matplotlib) are missing" >&2
fi

# torchrec + FBGEMM's CPU build, for the torchrec tests (an unsharded EmbeddingBagCollection,
# and one sharded by DistributedModelParallel on gloo): optional, pinned, never another torch.
# fbgemm-gpu-cpu 1.8 is built against torch 2.13 (1.9 fails to load: undefined symbols), and
# torchrec 1.8 goes with it; torchrec asks for the CUDA `fbgemm-gpu`, whose files would
# overwrite the CPU build's, so every package goes in with --no-deps, its dependencies listed
# here. Only on x86_64 Linux with torch 2.13.x, and only when torchrec does not import; elsewhere
# (the GPU machine: torch 2.11, no network) the step is skipped and the torchrec tests skip.
TORCHREC_PKGS=(torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 pyvers==0.2.3 torchmetrics==1.0.3
  iopath==0.1.10 portalocker==4.4.2 lightning-utilities==0.15.3 pyre-extensions==0.0.32 typing-inspect==0.9.0
  mypy-extensions==1.1.0 cloudpickle==2.1.0 tqdm)
torchrec_ok() {
  (cd / && "$PY" -c "import torchrec; from torchrec.distributed.model_parallel import DistributedModelParallel" \
    >/dev/null 2>&1)
}
if ! torchrec_ok; then
  torch_version="$(cd / && "$PY" -c "import torch; print(torch.__version__)")"
  if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" || "$torch_version" != 2.13.* ]]; then
    echo "setup: skipping torchrec (pinned for torch 2.13 on x86_64 Linux; here torch $torch_version on $(uname -s)/$(uname -m)); its tests will be skipped"
  else
    echo "setup: installing torchrec 1.8.0 and fbgemm-gpu-cpu 1.8.0 (--no-deps) for the torchrec tests"
    "${PIP[@]}" install --no-deps --timeout 30 --retries 1 "${TORCHREC_PKGS[@]}" \
      || echo "setup: warning: torchrec could not be installed; its tests will be skipped" >&2
    after="$(cd / && "$PY" -c "import torch; print(torch.__version__)")"
    if [[ "$after" != "$torch_version" ]]; then
      echo "setup: failed: installing torchrec changed torch from $torch_version to $after" >&2
      exit 1
    fi
    torchrec_ok || echo "setup: warning: torchrec still does not import; its tests will be skipped" >&2
  fi
fi

(cd / && "$PY" -c "
import torch, triton
dev = f'cuda ({torch.cuda.get_device_name()})' if torch.cuda.is_available() else 'cpu'
print(f'setup: using torch {torch.__version__}, triton {triton.__version__}, device {dev}')")
