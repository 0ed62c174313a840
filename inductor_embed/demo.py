"""The inductor_embed showcase: a CTR-style model with many categorical features.

    python -m inductor_embed.demo                  # defaults: 26 tables, batch 4096
    python -m inductor_embed.demo --quick          # tiny sizes, a few iterations (smoke test)
    python -m inductor_embed.demo --device cuda --batch 16384 --iters 100

What it does, in order:

1. builds the model: 26 ``nn.Embedding`` tables of mixed vocabulary sizes and
   widths (1, 2, 4, 8, 16, 32), indices given as one ``[B, T]``
   int64 tensor and looked up as ``x[:, i]``, concatenated with a dense feature
   tensor by ``torch.cat(dim=1)``, then a small MLP;
2. prints ``inductor_embed.explain(model, *inputs)``: the rewrites it will make;
3. compiles one copy with ``torch.compile(model)`` and one with
   ``torch.compile(model, backend="inductor_embed")``, runs forward + backward on
   them and on eager, and checks the outputs and every parameter's gradient
   against eager (exit status 1 on a mismatch);
4. times forward + backward of the three side by side (median of ``--iters``
   interleaved iterations after warm-up, compile time excluded) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import inductor_embed
from inductor_embed import _compat

# Widths of the tables, cycled: the narrow widths of CTR features.
DIMS = (1, 2, 4, 8, 16, 32)
# Vocabulary sizes, cycled: a mix of tiny, medium and large categorical features.
VOCABS = (3, 24, 150, 1_000, 10_000, 60_000, 7, 500, 2_500, 100_000, 40, 25_000, 300)
# fp32 tolerances of the eager-vs-compiled check. The gathers are bit-exact; the MLP's
# matmuls may differ in the last bits once Inductor fuses the bias and activation.
RTOL, ATOL = 1e-4, 1e-5


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """One run's sizes."""

    batch: int
    tables: int
    dense: int
    hidden: int
    iters: int
    warmup: int
    device: str

    @property
    def vocabs(self) -> list[int]:
        return [VOCABS[k % len(VOCABS)] for k in range(self.tables)]

    @property
    def dims(self) -> list[int]:
        return [DIMS[k % len(DIMS)] for k in range(self.tables)]


class CTRModel(nn.Module):
    """Categorical features -> one embedding table each -> cat with dense features -> MLP."""

    def __init__(self, vocabs: Sequence[int], dims: Sequence[int], num_dense: int, hidden: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v, d) for v, d in zip(vocabs, dims))
        width = num_dense + sum(dims)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        # categorical: [B, T] int64, one column per table; dense: [B, num_dense]
        features = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        x = torch.cat([dense, *features], dim=1)
        return self.mlp(x).squeeze(-1)


def make_inputs(cfg: DemoConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices [B, T] (each column in its table's range), dense features [B, F], labels [B]."""
    g = torch.Generator().manual_seed(1)
    categorical = torch.stack([torch.randint(0, v, (cfg.batch,), generator=g) for v in cfg.vocabs], dim=1)
    dense = torch.randn(cfg.batch, cfg.dense, generator=g)
    labels = torch.randint(0, 2, (cfg.batch,), generator=g).float()
    return categorical.to(device), dense.to(device), labels.to(device)


def train_step(model: Callable[..., torch.Tensor], params: list[nn.Parameter], categorical: torch.Tensor,
               dense: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One forward + backward (no optimizer step: gradients are what we compare and time)."""
    for p in params:
        p.grad = None
    logits = model(categorical, dense)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    return logits.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_against_eager(name: str, logits: torch.Tensor, model: nn.Module, ref_logits: torch.Tensor,
                        ref_model: nn.Module) -> list[str]:
    """Compare a compiled copy's output and every parameter gradient with eager's."""
    errors = []
    pairs = [("output", logits, ref_logits)]
    for (pname, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        pairs.append((f"grad of {pname}", p.grad, q.grad))
    for what, got, want in pairs:
        if got is None or want is None:
            errors.append(f"{name}: {what} is missing (compiled: {got is not None}, eager: {want is not None})")
            continue
        try:
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
        except AssertionError as e:
            first = str(e).strip().splitlines()
            errors.append(f"{name}: {what} differs from eager: " + " ".join(line.strip() for line in first[:4]))
    return errors


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def parse_args(argv: Sequence[str] | None) -> DemoConfig:
    parser = argparse.ArgumentParser(prog="python -m inductor_embed.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4096; 64 with --quick)")
    parser.add_argument("--tables", type=int, default=None, help="number of embedding tables (default 26; 6 with --quick)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per provider (default 30; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 5; 1 with --quick)")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (the smoke test)")
    args = parser.parse_args(argv)
    quick = args.quick
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return DemoConfig(
        batch=args.batch or (64 if quick else 4096),
        tables=args.tables or (6 if quick else 26),
        dense=4 if quick else 13,
        hidden=32 if quick else 256,
        iters=args.iters or (3 if quick else 30),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 5),
        device=device,
    )


def _time_table(providers: dict[str, tuple[Callable[..., torch.Tensor], nn.Module]],
                params: dict[str, list[nn.Parameter]], inputs: tuple[torch.Tensor, ...], cfg: DemoConfig,
                device: torch.device) -> str:
    """The step-time table: each provider's median training step (ms), its p20 - p80 spread,
    and its speed-up over eager and torch.compile."""
    for _ in range(cfg.warmup):
        for name, (fn, _) in providers.items():
            train_step(fn, params[name], *inputs)
    times: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(cfg.iters):
        # One iteration of each provider in turn, so that drift on a shared machine
        # hits all three alike.
        for name, (fn, _) in providers.items():
            _sync(device)
            t0 = time.perf_counter()
            train_step(fn, params[name], *inputs)
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=5, method="inclusive") if len(ts) >= 2 else [ts[0]] * 4
        rows.append([
            name,
            f"{med[name]:.3f}",
            f"{q[0]:.3f} - {q[-1]:.3f}",
            f"{med['eager'] / med[name]:.2f}x",
            f"{med['torch.compile'] / med[name]:.2f}x",
        ])
    return _fmt_table(["provider", "median ms", "p20 - p80 ms", "vs eager", "vs torch.compile"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 if the compiled results match eager, 1 otherwise."""
    cfg = parse_args(argv)
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    counters = torch._dynamo.utils.counters

    import triton

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"inductor_embed {inductor_embed.__version__} demo: torch {torch.__version__}, "
          f"triton {triton.__version__}, device {device} ({dev_name})")
    print(f"model: {cfg.tables} embedding tables, vocab sizes {cfg.vocabs}")
    print(f"       dims {cfg.dims} (sum {sum(cfg.dims)}) + {cfg.dense} dense features -> MLP "
          f"{cfg.dense + sum(cfg.dims)}-{cfg.hidden}-{cfg.hidden // 2}-1; batch {cfg.batch}, fp32, train mode")

    eager = CTRModel(cfg.vocabs, cfg.dims, cfg.dense, cfg.hidden).to(device).train()
    inputs = make_inputs(cfg, device)
    categorical, dense, labels = inputs

    print("\n== inductor_embed.explain(model, categorical, dense) ==")
    torch._dynamo.reset()
    print(inductor_embed.explain(eager, categorical, dense))
    torch._dynamo.reset()  # explain's capture leaves a cache entry; start the compiles clean

    default_copy = copy.deepcopy(eager)
    embed_copy = copy.deepcopy(eager)
    providers: dict[str, tuple[Callable[..., torch.Tensor], nn.Module]] = {
        "eager": (eager, eager),
        "torch.compile": (torch.compile(default_copy), default_copy),
        "inductor_embed": (torch.compile(embed_copy, backend="inductor_embed"), embed_copy),
    }
    params = {name: list(module.parameters()) for name, (_, module) in providers.items()}

    print("\n== compile (first forward + backward, Inductor caches off) and check against eager ==")
    rewrites_before = counters["inductor_embed"]["multi_embedding_cat"]
    logits: dict[str, torch.Tensor] = {}
    # Inductor's caches off for the compiles: a cache hit reuses the compiled code
    # without running the pattern pass, so nothing would be logged or counted (and the
    # compile times below would be a cache's, not a compiler's).
    with _compat.inductor_config().patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*force_disable_caches")  # says just that
        for name, (fn, _) in providers.items():
            _sync(device)
            t0 = time.perf_counter()
            logits[name] = train_step(fn, params[name], *inputs)
            _sync(device)
            print(f"  {name:<15} first step {time.perf_counter() - t0:7.2f} s")
    errors = []
    for name in ("torch.compile", "inductor_embed"):
        errors += check_against_eager(name, logits[name], providers[name][1], logits["eager"], eager)
    rewrites = counters["inductor_embed"]["multi_embedding_cat"] - rewrites_before
    print(f"counters['inductor_embed']: {dict(sorted(counters['inductor_embed'].items()))}")
    if errors:
        print("\nFAILED: the compiled model does not match eager PyTorch:", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"outputs and all {len(params['eager'])} parameter gradients match eager "
          f"(rtol={RTOL}, atol={ATOL}); multi_embedding_cat rewrites in this run: {rewrites}")
    if rewrites == 0 and inductor_embed.config.pattern_enabled("multi_embedding_cat"):
        print("FAILED: the inductor_embed backend compiled the model without rewriting anything", file=sys.stderr)
        return 1

    print(f"\n== forward + backward, median of {cfg.iters} iterations after {cfg.warmup} warm-up "
          f"(interleaved, compile time excluded) ==")
    print(_time_table(providers, params, inputs, cfg, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
