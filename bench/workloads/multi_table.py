"""Many small tables looked up and concatenated, after seed 004's FastMultiEmbedding study.

Input ``[B, T]`` int64, column k indexing table k; output ``[B, sum(D_k)]``. The eager
forward is the reference twin ``inductor_embed.lowering.multi_embedding_ref.multi_embedding_ref``
(T x ``F.embedding`` -> ``torch.cat(dim=-1)``), the very graph inductor_embed's
``multi_embedding_cat`` pattern fuses into one gather and one multi-table backward.
At small batch and many tables the cost is launches, not bytes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.config import Bytes, Case
from bench.workloads.base import (
    EmbeddingModel,
    FbgemmTBE,
    Workload,
    lookup_bags,
    table_indices,
    unpooled_bytes,
)
from inductor_embed.lowering.multi_embedding_ref import multi_embedding_ref


class MultiEmbeddingCat(EmbeddingModel):
    """T tables; ``x[:, k]`` looks up table k; the lookups are concatenated."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multi_embedding_ref([t.weight for t in self.tables], [x[:, k] for k in range(len(self.tables))])



class MultiTable(Workload):
    name = "multi_table"
    title = "Multi-table lookup + cat"
    source = "seed 004, FastMultiEmbedding study"
    pattern = "multi_embedding_cat"
    bytes_formula = ("sum over tables of: fwd = N*8 + N*D_k*e (rows read) + N*D_k*e (output); "
                     "bwd = N*8 + N*D_k*e (grad read) + V_k*D_k*e (zero-fill) + 2*N*D_k*e (atomic RMW)")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        return MultiEmbeddingCat(case.vocabs, case.dims, dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (table_indices(case, case.batch, device),)

    def bytes(self, case: Case) -> Bytes:
        return unpooled_bytes(case)

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        return FbgemmTBE(model.weights(), device, lookup_bags)
