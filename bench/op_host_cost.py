"""The host cost of each opaque CPU op a compiled graph calls: microseconds a call at batch 1.

At batch 1 the data work is nil, so a call's time is what it costs on the host: the
dispatcher, the argument checks, building the native kernel's tables, allocating the
outputs. A compiled graph calls these ops once a step (forward or backward), for all tables
at once, so the cost per call is what a small-batch step (CPU serving) pays on top of the
work. Goal: under 20 us a call at 26 tables. Each op is called as a compiled graph calls it:
the bag forward by the public op's body and the backwards by their autograd formulas, with
``checked=True``; the five with a C++ host (``_fast``) also as their Python ops (their arguments' structure checked by the caller, on fake tensors when
compiled).

    python -m bench.op_host_cost [--out bench/results/cpu]

writes ``op_host_cost.md``: per op, the median of 9 rounds of 400 calls, at 1 and 26 tables,
next to ATen's ``embedding`` on one table (the floor: a dispatcher call into a C++ kernel) and
ATen's ``_foreach_neg`` over the tables (the floor of one op returning a tensor per table).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import inductor_embed  # noqa: F401  (registers the ops)
from bench.host import REPO, arg_parser, cpu_model, git_state

OPS = torch.ops.inductor_embed
ROWS, DIM = 100, 16


def _per_call_us(fn: Callable[[], object], calls: int = 400, rounds: int = 9) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def _calls(t: int) -> dict[str, Callable[[], object]]:
    """Each op's call on ``t`` tables of ``ROWS x DIM`` fp32 at batch 1."""
    g = torch.Generator().manual_seed(t)
    weights = [torch.randn(ROWS, DIM, generator=g) for _ in range(t)]
    idx = [torch.randint(0, ROWS, (1,), generator=g) for _ in range(t)]
    bags = [i.reshape(1, 1) for i in idx]
    grad = torch.randn(1, t * DIM, generator=g)
    pooled = torch.randn(1, t * DIM, generator=g)
    rows, dims, pads, no = [ROWS] * t, [DIM] * t, [-1] * t, [False] * t
    cols = [k * DIM for k in range(t)]
    fields = [torch.randint(0, ROWS, (1, 1), generator=g) for _ in range(t)]
    onehot_w = torch.randn(DIM, t * ROWS, generator=g)
    offs = [k * ROWS for k in range(t)]
    no_max = torch.empty(0, 0, dtype=torch.int64)  # arg_max of bags in no max mode
    onehot_grad = torch.randn(1, DIM, generator=g)
    return {
        "multi_embedding_backward_cpu_fast (cat / lookups backward, C++ host)": lambda: (
            OPS.multi_embedding_backward_cpu_fast(grad, idx, rows, dims, pads, no, cols, [], checked=True)),
        "multi_embedding_backward_cpu (the same, Python op)": lambda: OPS.multi_embedding_backward_cpu(
            grad, idx, rows, dims, pads, no, cols, [], checked=True),
        "multi_embedding_bag_cpu_fast (bags forward, C++ host)": lambda: OPS.multi_embedding_bag_cpu_fast(
            weights, bags, [None] * t, [], [0] * t, pads, no, checked=True),
        "multi_embedding_bag_cpu (the same, Python op)": lambda: OPS.multi_embedding_bag_cpu(
            weights, bags, [None] * t, [], [0] * t, pads, no, checked=True),
        "multi_embedding_bag_backward_cpu_fast (bags backward, C++ host)": lambda: (
            OPS.multi_embedding_bag_backward_cpu_fast(pooled, no_max, bags, [None] * t, [None] * t, rows, dims,
                                                      [0] * t, pads, no, no, checked=True)),
        "multi_embedding_bag_backward_cpu (the same, Python op)": lambda: OPS.multi_embedding_bag_backward_cpu(
            pooled, no_max, bags, [None] * t, [None] * t, rows, dims, [0] * t, pads, no, no, checked=True),
        "one_hot_linear_cpu_fast (one-hot forward, C++ host)": lambda: OPS.one_hot_linear_cpu_fast(
            fields, rows, offs, onehot_w, None),
        "one_hot_linear_cpu (the same, Python op)": lambda: OPS.one_hot_linear_cpu(fields, rows, offs, onehot_w, None),
        "one_hot_linear_backward_cpu_fast (one-hot backward, C++ host)": lambda: OPS.one_hot_linear_backward_cpu_fast(
            onehot_grad, fields, rows, offs, t * ROWS, False, True, torch.float32),
        "one_hot_linear_backward_cpu (the same, Python op)": lambda: OPS.one_hot_linear_backward_cpu(
            onehot_grad, fields, rows, offs, t * ROWS, False, True, torch.float32),
    }


def measure() -> list[tuple[str, float, float]]:
    """``(op, us at 1 table, us at 26 tables)`` per op, then ATen's embedding (one table) and
    ATen's ``_foreach_neg`` (a tensor in and out per table)."""
    from inductor_embed.lowering import _cpu_host

    if not _cpu_host.load():  # (built on first use: before the timing)
        raise SystemExit("op_host_cost: the C++ host kernel could not be built (see the log)")
    one, many = _calls(1), _calls(26)
    out = [(name, _per_call_us(one[name]), _per_call_us(many[name])) for name in one]
    w, i = torch.randn(ROWS, DIM), torch.randint(0, ROWS, (1,))
    floor = _per_call_us(lambda: torch.ops.aten.embedding(w, i))
    out.append(("aten.embedding (the floor: one ATen op, one table)", floor, float("nan")))
    # An op that returns a tensor per table pays each output's allocation and Python wrapper:
    # ATen's own foreach op over the tables' [100, 16] weights is that floor for a backward.
    tables = {t: [torch.randn(ROWS, DIM) for _ in range(t)] for t in (1, 26)}
    out.append(("aten._foreach_neg (the floor of an op returning one tensor per table: ATen, the tables' shapes)",
                _per_call_us(lambda: torch.ops.aten._foreach_neg(tables[1])),
                _per_call_us(lambda: torch.ops.aten._foreach_neg(tables[26]))))
    return out


def markdown(rows: list[tuple[str, float, float]]) -> str:
    sha, dirty = git_state()
    lines = ["# Host cost of the CPU ops, microseconds a call", "",
             f"- {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
             f"git {sha[:12]}{' (dirty)' if dirty else ''}",
             f"- batch 1, tables of {ROWS} x {DIM} fp32; median of 9 rounds of 400 calls "
             "(`python -m bench.op_host_cost`); goal: under 20 us a call at 26 tables",
             "- each op called as a compiled graph calls it (`checked=True` where the op takes it)", "",
             "| op | 1 table | 26 tables | 26 tables, per table |", "|---|---|---|---|"]
    for name, a, b in rows:
        per = "—" if b != b else f"{b / 26:.1f}"
        lines.append(f"| {name} | {a:.1f} | {'—' if b != b else f'{b:.1f}'} | {per} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = arg_parser("python -m bench.op_host_cost", __doc__)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu")
    args = p.parse_args()
    text = markdown(measure())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "op_host_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
