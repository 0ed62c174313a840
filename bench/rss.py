"""Peak RSS growth of a training step, each provider in a fresh process.

The profiler's peak (``PeakMemory``) counts the bytes torch allocates; what a user of
big tables runs out of is resident memory, which also holds what the allocator keeps,
optimizer state made on the first step, and anything a library allocates behind torch's
back (FBGEMM). One process per (case, provider), so nothing another provider allocated
or freed is in it:

1. build the workload's model and the provider (eager, a compiled copy, FBGEMM's TBE);
2. the first step (compile, optimizer state): ``first`` = VmHWM after it - RSS before it;
3. warm-up steps; ``gc.collect()``; ``malloc_trim(0)``, so freed heap pages go back to
   the kernel and a step's temporaries must be faulted in again to be counted;
4. reset the high-water mark (``echo 5 > /proc/self/clear_refs``: VmHWM := VmRSS), run
   ``steps`` steps: VmHWM - RSS before them; steps 3-4 ``repeats`` times, ``step`` = the
   median (one window moves by several MiB with what malloc happens to keep).

A step here is forward + backward + the workload's optimizer step (``_step(optimize=True)``).
Linux only; where /proc/self/clear_refs cannot be written the numbers are None and the
note says why.

    python -m bench.rss --case '<Case as json>' --provider inductor_embed   # one child, prints json
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

METHOD = ("peak RSS growth of one training step (forward + backward + optimizer step), each provider in a "
          "fresh process: VmHWM over 3 steps after warm-up, malloc_trim(0) and a reset of VmHWM "
          "(/proc/self/clear_refs), minus the RSS before them, median of 5 such windows; 'first' is the "
          "first step's (compile, optimizer state). Method in bench/rss.py")


@dataclasses.dataclass(frozen=True)
class RssGrowth:
    step_bytes: int | None
    first_bytes: int | None
    note: str = ""


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed pages may stay resident
        pass


def child(case_json: str, provider: str, steps: int, warmup: int, repeats: int = 5) -> RssGrowth:
    """Runs in the fresh process: build, step, measure."""
    import torch

    from bench.config import Case
    from bench.providers import PROVIDERS
    from bench.runner import _step
    from bench.workloads import WORKLOADS

    try:
        _reset_hwm()
    except OSError as e:
        return RssGrowth(None, None, f"VmHWM cannot be reset here ({e})")
    d = json.loads(case_json)
    case = Case(**{**d, "vocabs": tuple(d["vocabs"]), "dims": tuple(d["dims"])})
    device = torch.device("cpu")
    wl = WORKLOADS[case.workload]
    model = wl.build(case, device).train()
    runner = PROVIDERS[provider].build(wl, case, model, device)
    del model  # the runner keeps what it runs (FBGEMM: its own copy of the tables)
    inputs = wl.inputs(case, device)
    inputs = tuple(runner.adapt(*inputs)) if runner.adapt else inputs
    with torch.no_grad():
        shape = runner.fn(*inputs).shape
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    gc.collect()
    _trim()
    before = _rss()
    _reset_hwm()
    _step(runner, inputs, grad, optimize=True)
    first = _hwm() - before
    for _ in range(warmup):
        _step(runner, inputs, grad, optimize=True)
    growth = []
    for _ in range(repeats):
        for p in runner.params:
            p.grad = None
        gc.collect()
        _trim()
        before = _rss()
        _reset_hwm()
        for _ in range(steps):
            _step(runner, inputs, grad, optimize=True)
        growth.append(_hwm() - before)
    return RssGrowth(int(statistics.median(growth)), first)


def measure(case, provider: str, steps: int = 3, warmup: int = 2, timeout_s: float = 900) -> RssGrowth:
    """``provider``'s RSS growth on ``case`` (a ``bench.config.Case``), in a fresh process."""
    import torch

    cmd = [sys.executable, "-m", "bench.rss", "--case", json.dumps(dataclasses.asdict(case)),
           "--provider", provider, "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(torch.get_num_threads())]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return RssGrowth(None, None, f"RSS child ran over {timeout_s:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return RssGrowth(None, None, f"RSS child failed (rc {done.returncode}): {tail[:200]}")
    return RssGrowth(**json.loads(lines[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser("python -m bench.rss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, help="a bench.config.Case as json")
    ap.add_argument("--provider", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    import warnings

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = child(args.case, args.provider, args.steps, args.warmup)
    print(json.dumps(dataclasses.asdict(got)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
