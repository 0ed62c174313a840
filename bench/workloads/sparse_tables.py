"""Big tables with sparse gradients, optimizer step included.

T x ``nn.Embedding(V, D, sparse=True)`` looked up with ``x[:, k]`` ([B, T] int64) ->
``torch.cat`` -> a small MLP (``Linear(sum D_k, 64) -> ReLU -> Linear(64, 1)``): [B, 1].
The timed step is forward + backward + the optimizer step, as a recommendation model
trains: the tables' gradients are sparse COO (``B`` rows each, not ``V``), so the step
costs O(B * D), not O(V * D), whatever the table size. The case's ``variant`` picks the
tables' optimizer; the MLP always takes ``torch.optim.Adam``:

| variant | tables (eager, torch.compile, inductor_embed) | FBGEMM's fused TBE optimizer |
|---|---|---|
| ``adam`` | ``torch.optim.SparseAdam`` | ``EXACT_ROWWISE_ADAGRAD`` (TBE's CPU path has no Adam) |
| ``adagrad`` | ``torch.optim.Adagrad`` | ``EXACT_ADAGRAD`` (the same math) |
| ``sgd`` | ``torch.optim.SGD`` | ``EXACT_SGD`` (the same math) |

All providers but FBGEMM step one shared set of tables and one optimizer state
(``shares_tables``): at 4 x 2,000,000 x 64 fp32 the tables are 2 GiB and SparseAdam's
two dense moments 4 GiB more, once per provider would not fit the machine, and a step
costs the same whatever the values are. Every case gets a fresh model (``steps_weights``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from bench.config import DTYPES, INDEX_BYTES, Bytes, Case
from bench.workloads.base import (
    EmbeddingModel,
    FbgemmTBE,
    Workload,
    lookup_bags,
    table_indices,
)

HIDDEN = 64
# variant -> (the tables' torch optimizer, its learning rate, FBGEMM's fused optimizer)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], float, str]] = {
    "adam": (torch.optim.SparseAdam, 1e-3, "rowwise_adagrad"),
    "adagrad": (torch.optim.Adagrad, 1e-2, "adagrad"),
    "sgd": (torch.optim.SGD, 1e-2, "sgd"),
}


class SparseTablesMLP(EmbeddingModel):
    """T sparse-gradient lookups -> cat -> MLP: [B, T] -> [B, 1]. ``weights()``: the tables,
    then the MLP's parameters."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, d, sparse=True, dtype=dtype) for v, d in zip(vocabs, dims))
        self.mlp = nn.Sequential(nn.Linear(sum(dims), HIDDEN, dtype=dtype), nn.ReLU(),
                                 nn.Linear(HIDDEN, 1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1))


class SparseTables(Workload):
    name = "sparse_tables"
    title = "Big tables, sparse gradients, optimizer step included"
    source = "sparse=True recommender training"
    pattern = "multi_embedding_cat"
    bytes_formula = ("sum over tables of: fwd = N*8 + N*D_k*e (rows read) + N*D_k*e (output); bwd + step = "
                     "N*8 + N*D_k*e (grad read) + N*D_k*e (sparse grad values) + 6*N*D_k*e (optimizer: read "
                     "and write the row and two moment rows; no V*D_k term: nothing dense); the MLP is left out")
    shares_tables = True
    steps_weights = True

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        _optimizer(case)
        return SparseTablesMLP(case.vocabs, case.dims, dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (table_indices(case, case.batch, device),)

    def bytes(self, case: Case) -> Bytes:
        e, n = DTYPES[case.dtype], case.batch
        return Bytes(fwd=sum(n * INDEX_BYTES + 2 * n * d * e for d in case.dims),
                     bwd=sum(n * INDEX_BYTES + 8 * n * d * e for d in case.dims))

    def make_optimizer(self, model: EmbeddingModel, case: Case) -> Callable[[], None]:
        cls, lr, _ = _optimizer(case)
        # Lists of parameters, not the model: the step must not keep the model alive.
        tables = cls([t.weight for t in model.tables], lr=lr)
        return _two_steps(tables, torch.optim.Adam(list(model.mlp.parameters()), lr=1e-3))

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        _, lr, fused = _optimizer(case)
        head = copy.deepcopy(model.mlp)
        tbe = FbgemmTBE([t.weight for t in model.tables], device, lookup_bags, optimizer=fused, lr=lr, head=head)
        tbe.step = torch.optim.Adam(list(head.parameters()), lr=1e-3).step
        return tbe


def _optimizer(case: Case) -> tuple[type[torch.optim.Optimizer], float, str]:
    if case.variant not in OPTIMIZERS:
        raise ValueError(f"sparse_tables variant {case.variant!r} is not one of {list(OPTIMIZERS)}")
    return OPTIMIZERS[case.variant]


def _two_steps(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        a.step()
        b.step()

    return step
