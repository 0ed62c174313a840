"""Single-table lookups with collisions, after the FastEmbedding study of RTB House's
pytorch-fast-embedding.

One ``nn.Embedding(V, D)`` looked up with a ``[B]`` index vector; the index
distribution decides how many lookups collide on one gradient row, which is what
an atomic-add backward is sensitive to. It includes the worst case PyTorch users
reported for compiled backward: bf16, one row repeated hundreds of thousands of times.

inductor_embed's ``multi_embedding_cat`` pattern fuses two or more lookups, so on a
lone lookup the ``inductor_embed`` backend makes no rewrite (its row says so).
``inductor_embed.op`` calls the fused op on the one table directly, which is how
its kernels (gather forward, fp32 atomic-add backward) compare with the others here.
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


class SingleEmbedding(EmbeddingModel):
    """``F.embedding(idx, weight)``: [B] -> [B, D]."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, dtype=dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx)



class SingleEmbeddingOp(EmbeddingModel):
    """The same lookup through ``torch.ops.inductor_embed.multi_embedding`` with one table."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.ops.inductor_embed.multi_embedding([self.weight], [idx], [-1], [False])



class SingleTable(Workload):
    name = "single_table"
    title = "Single-table lookup, backward with collisions"
    source = "pytorch-fast-embedding's FastEmbedding study"
    pattern = "independent_lookups"  # a lone lookup: taken alone on the CPU (fp32)
    bytes_formula = ("fwd = N*8 + N*D*e (rows read) + N*D*e (output); bwd = N*8 + N*D*e (grad read) "
                     "+ V*D*e (zero-fill) + 2*N*D*e (atomic RMW), e = element size")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        return SingleEmbedding(case.vocabs[0], case.dims[0], dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (table_indices(case, case.batch, device)[:, 0].contiguous(),)

    def bytes(self, case: Case) -> Bytes:
        return unpooled_bytes(case)

    def op_model(self, model: EmbeddingModel) -> EmbeddingModel:
        return SingleEmbeddingOp(model.weights()[0])

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        return FbgemmTBE(model.weights(), device, lookup_bags)

