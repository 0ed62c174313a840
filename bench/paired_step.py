"""One 26-table training step, torch.compile vs inductor_embed in one process.

``python -m bench.paired_step {cat,bag} [--rounds N] [--rows V]``: forward + backward,
``param.grad = None`` each step, ``torch.compile`` and ``backend="inductor_embed"``
alternated, the median of per-round time ratios.

26 x 100,000 x 64 fp32 tables; ``cat``: 26 ``nn.Embedding`` lookups + cat, B=4,096 uniform;
``bag``: 26 ``nn.EmbeddingBag(mode="sum")`` + cat, B=2,048 bags of 20, Zipf 1.15. Run it
once as is and once with ``MALLOC_TRIM_THRESHOLD_=17179869184
MALLOC_MMAP_THRESHOLD_=4294967296`` to see both of glibc's modes (docs/benchmarks.md,
"Reading the numbers"). It also says whose gradients are bit-equal to eager's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn

TABLES, DIM = 26, 64


class Tables(nn.Module):
    def __init__(self, bags: bool, rows: int) -> None:
        super().__init__()
        make = (lambda: nn.EmbeddingBag(rows, DIM, mode="sum")) if bags else (lambda: nn.Embedding(rows, DIM))
        self.tables = nn.ModuleList(make() for _ in range(TABLES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("cat", "bag"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--rows", type=int, default=100_000, help="rows per table")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    bags = args.kind == "bag"
    if bags:
        batch = 2048
        x = torch.from_numpy((rng.zipf(1.15, (batch, TABLES, 20)) - 1) % args.rows)
    else:
        batch = 4096
        x = torch.from_numpy(rng.integers(0, args.rows, (batch, TABLES)))
    torch.manual_seed(0)
    eager, plain, ours = (Tables(bags, args.rows) for _ in range(3))
    plain.load_state_dict(eager.state_dict())
    ours.load_state_dict(eager.state_dict())
    steps = {"torch.compile": (torch.compile(plain), plain),
             "inductor_embed": (torch.compile(ours, backend="inductor_embed"), ours)}
    grad = torch.randn(batch, TABLES * DIM)

    def step(name: str) -> float:
        fn, model = steps[name]
        for p in model.parameters():
            p.grad = None
        t = time.perf_counter()
        fn(x).backward(grad)
        return time.perf_counter() - t

    eager(x).backward(grad)
    same = {}
    for name in steps:
        step(name)
        same[name] = all(torch.equal(a.grad, b.grad) for a, b in zip(eager.parameters(), steps[name][1].parameters()))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name in steps:
            times[name].append(step(name))
    ratio = statistics.median(a / b for a, b in zip(times["torch.compile"], times["inductor_embed"]))
    print(f"{args.kind}: torch.compile {statistics.median(times['torch.compile']) * 1e3:.1f} ms, "
          f"inductor_embed {statistics.median(times['inductor_embed']) * 1e3:.1f} ms, "
          f"inductor_embed vs torch.compile {ratio:.2f}x; gradients bit-equal to eager's: "
          + ", ".join(f"{name} {ok}" for name, ok in same.items()))


if __name__ == "__main__":
    main()
