"""Standalone benchmark of the one_hot_linear pattern: a Linear on a one-hot.

    python -m bench.one_hot_linear                 # quick sizes (the default on a CPU)
    python -m bench.one_hot_linear --sizes issue   # the full grid: V 16..1e6, D 8..1024, B 1..65536
    python -m bench.one_hot_linear --json out.json --iters 50

The model is ``nn.Linear(V, D)(F.one_hot(idx, V).float())``, idx uniform in [0, V).
Providers, side by side on the same inputs and weights: ``eager``, ``torch.compile``
(the default inductor backend, which keeps the dense one-hot GEMM) and
``inductor_embed`` (the rewrite to a column gather). Modes: ``fwd`` (under no_grad)
and ``fwd+bwd`` (gradients of W and b). Each number is the median of ``--iters``
timed iterations after ``--warmup`` untimed ones (compile time excluded), with the
20th-80th percentile spread.

Memory: on CUDA, the peak of ``torch.cuda.max_memory_allocated`` during one iteration,
above what was allocated before it. On the CPU there is no allocator counter, so the
column is a byte count of what each provider materialises per call: eager the int64
one-hot and its float copy (B x V x 12 bytes), torch.compile the float one-hot its GEMM
reads (B x V x 4; Inductor fuses the int64 step away), inductor_embed none; plus the
B x D output for all. Dense providers are skipped where the one-hot would exceed
``--max-one-hot-gb``.

This is a small script for one pattern, not the benchmark suite (``python -m bench``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import host

PROVIDERS = ("eager", "torch.compile", "inductor_embed")
MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Case:
    v: int  # one-hot classes (Linear in_features)
    d: int  # Linear out_features
    b: int  # batch

    def __str__(self) -> str:
        return f"V={self.v} D={self.d} B={self.b}"


@dataclasses.dataclass(frozen=True)
class Result:
    case: Case
    provider: str
    mode: str
    median_ms: float | None
    p20_ms: float | None
    p80_ms: float | None
    mem_bytes: int | None  # measured peak (CUDA) or byte count (CPU); see the module doc
    note: str = ""


SIZES = {
    # A few points across the full grid's ranges that a shared 2-core CPU finishes in minutes.
    "quick": [Case(16, 64, 4096), Case(1024, 64, 4096), Case(16384, 256, 1024),
              Case(65536, 64, 256), Case(1_000_000, 64, 32), Case(1024, 1024, 1)],
    # The full grid, meant for a GPU.
    "issue": [Case(v, d, b) for v in (16, 1024, 65536, 1_000_000) for d in (8, 64, 1024) for b in (1, 1024, 65536)],
}


class OneHotLinear(nn.Module):
    def __init__(self, v: int, d: int) -> None:
        super().__init__()
        self.v = v
        self.proj = nn.Linear(v, d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(F.one_hot(idx, self.v).float())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_hot_bytes(case: Case, provider: str) -> int:
    if provider == "eager":
        return case.b * case.v * (8 + 4)
    if provider == "torch.compile":
        return case.b * case.v * 4
    return 0


def _time(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[list[float], int | None]:
    for _ in range(warmup):
        step()
    _sync(device)
    peak = None
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, peak


def run_case(case: Case, device: torch.device, warmup: int, iters: int, max_one_hot_gb: float) -> list[Result]:
    torch.manual_seed(0)
    base = OneHotLinear(case.v, case.d).to(device)
    idx = torch.randint(0, case.v, (case.b,), device=device)
    grad = torch.randn(case.b, case.d, device=device)
    results: list[Result] = []
    outputs: dict[str, torch.Tensor] = {}
    for provider in PROVIDERS:
        too_big = provider != "inductor_embed" and case.b * case.v * 12 > max_one_hot_gb * 2**30
        model = copy.deepcopy(base)
        # Every instance shares one forward code object: without a reset, the cases and
        # grad modes would pile up recompiles until Dynamo's limit sends them to eager.
        torch._dynamo.reset()
        if provider != "eager":
            backend = "inductor" if provider == "torch.compile" else "inductor_embed"
            model = torch.compile(model, backend=backend, dynamic=False)
        for mode in MODES:
            if too_big:
                gb = case.b * case.v * 12 / 2**30
                results.append(Result(case, provider, mode, None, None, None, None,
                                      f"skipped: the dense one-hot needs {gb:.1f} GiB"))
                continue

            def step(model=model, mode=mode, provider=provider) -> None:
                if mode == "fwd":
                    with torch.no_grad():
                        outputs[provider] = model(idx)
                else:
                    for p in model.parameters():
                        p.grad = None
                    model(idx).backward(grad)

            times, peak = _time(step, device, warmup, iters)
            q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
            mem = peak if device.type == "cuda" else _one_hot_bytes(case, provider) + case.b * case.d * 4
            results.append(Result(case, provider, mode, statistics.median(times), q[0], q[3], mem))
        del model
    if "eager" in outputs and "inductor_embed" in outputs:
        torch.testing.assert_close(outputs["inductor_embed"], outputs["eager"], rtol=1e-4, atol=1e-4)
    return results


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(results: list[Result], device: torch.device) -> str:
    mem = "peak mem" if device.type == "cuda" else "bytes/call (count)"
    head = f"{'case':<24} {'mode':<8} {'provider':<15} {'median ms':>10} {'p20 - p80 ms':>19} {'vs eager':>9} {mem:>19}"
    lines = [head, "-" * len(head)]
    eager = {(r.case, r.mode): r.median_ms for r in results if r.provider == "eager"}
    for r in results:
        if r.median_ms is None:
            lines.append(f"{str(r.case):<24} {r.mode:<8} {r.provider:<15} {r.note}")
            continue
        ref = eager.get((r.case, r.mode))
        speed = f"{ref / r.median_ms:.2f}x" if ref else "-"
        spread = f"{r.p20_ms:.3f} - {r.p80_ms:.3f}"
        lines.append(f"{str(r.case):<24} {r.mode:<8} {r.provider:<15} {r.median_ms:>10.3f} {spread:>19} "
                     f"{speed:>9} {_fmt_bytes(r.mem_bytes):>19}")
    return "\n".join(lines)


def _header(device: torch.device) -> str:
    import triton

    sha = host.git_state()[0][:12]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return (f"one_hot_linear benchmark: {name}, torch {torch.__version__}, triton {triton.__version__}, "
            f"git {sha}, {datetime.date.today().isoformat()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default=None,
                        help="case grid (default: issue on CUDA, quick on the CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: 10 CPU, 50 CUDA)")
    parser.add_argument("--max-one-hot-gb", type=float, default=None,
                        help="skip dense providers above this one-hot size (default: 1 CPU, 16 CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default 1: on a shared machine OpenMP's barriers wait on "
                             "descheduled threads and multi-threaded medians swing 100x)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = args.sizes or ("issue" if cuda else "quick")
    iters = args.iters or (50 if cuda else 10)
    cap = args.max_one_hot_gb if args.max_one_hot_gb is not None else (16.0 if cuda else 1.0)
    if not cuda or args.threads:
        torch.set_num_threads(args.threads or 1)
    results: list[Result] = []
    print(_header(device), flush=True)
    for case in SIZES[sizes]:
        results += run_case(case, device, args.warmup, iters, cap)
        print(f"  done {case}", flush=True)
    print(table(results, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": _header(device), "results": [
                {**dataclasses.asdict(r), "case": dataclasses.asdict(r.case)} for r in results]}, f, indent=1)


if __name__ == "__main__":
    main()
