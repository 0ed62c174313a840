"""Table-batched pooled lookups, after FBGEMM's TBE benchmark defaults.

FBGEMM's ``split_table_batched_embeddings_benchmark`` defaults: B=512 bags per table,
T=32 tables, 100,000 rows, D=128, bag size L=20, Zipf alpha 1.15. Input ``[B, T, L]``
int64 (fixed-size bags; plus ``[B, T, L]`` per-sample weights when ``weighted``);
the eager model is T x ``nn.EmbeddingBag(mode="sum")`` -> ``torch.cat``; FBGEMM
runs its dense TBE on the same tables; inductor_embed's ``multi_embedding_bag``
pattern turns the T lookups + cat into one table-batched op. Variants: ``max`` (max
pooling) and ``sparse`` (sum pooling, ``sparse=True`` tables: COO gradients, the DLRM
reference's default); FBGEMM's dense TBE runs neither (SUM pooling, dense gradients).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.config import DTYPES, INDEX_BYTES, Bytes, Case
from bench.workloads.base import (
    EmbeddingModel,
    FbgemmTBE,
    Unsupported,
    Workload,
    rng_for,
    table_indices,
    torch_dtype,
)


class MultiEmbeddingBag(EmbeddingModel):
    """T x ``nn.EmbeddingBag(mode=mode, sparse=sparse)`` on ``x[:, k]`` ([B, L] bags) -> cat:
    [B, sum(D_k)]."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype, mode: str = "sum",
                 sparse: bool = False) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(v, d, mode=mode, sparse=sparse, dtype=dtype)
                                  for v, d in zip(vocabs, dims))

    def forward(self, x: torch.Tensor, psw: torch.Tensor | None = None) -> torch.Tensor:
        if psw is None:
            return torch.cat([bag(x[:, k]) for k, bag in enumerate(self.bags)], dim=1)
        return torch.cat([bag(x[:, k], per_sample_weights=psw[:, k]) for k, bag in enumerate(self.bags)], dim=1)



class TableBatchedBags(Workload):
    name = "table_batched_bags"
    title = "Table-batched embedding bags (sum pooling)"
    source = "FBGEMM TBE benchmark defaults"
    pattern = "multi_embedding_bag"
    bytes_formula = ("sum over tables of: fwd = N*L*8 (+ N*L*e weights) + N*L*D_k*e (rows read) + N*D_k*e "
                     "(pooled output); bwd = N*L*8 (+ N*L*e) + N*D_k*e (grad read) + V_k*D_k*e (zero-fill) "
                     "+ 2*N*L*D_k*e (atomic RMW)")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        if case.variant not in ("", "max", "sparse"):
            raise ValueError(f"table_batched_bags variant {case.variant!r} is not one of ['', 'max', 'sparse']")
        return MultiEmbeddingBag(case.vocabs, case.dims, dtype, "max" if case.variant == "max" else "sum",
                                 case.variant == "sparse")

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        b, t, bag = case.batch, case.tables, case.bag_size
        x = table_indices(case, b * bag, device).view(b, bag, t).permute(0, 2, 1).contiguous()
        if not case.weighted:
            return (x,)
        rng = rng_for(case, "weights")
        psw = torch.from_numpy(rng.random((b, t, bag), dtype="float32")).to(device, torch_dtype(case.dtype))
        return x, psw

    def dynamic_dims(self, case: Case) -> tuple[tuple[int, int], ...]:
        return ((0, 0), (1, 0)) if case.weighted else ((0, 0),)

    def bytes(self, case: Case) -> Bytes:
        e, n, bag = DTYPES[case.dtype], case.batch, case.bag_size
        per_index = INDEX_BYTES + (e if case.weighted else 0)
        fwd = sum(n * bag * per_index + n * bag * d * e + n * d * e for d in case.dims)
        bwd = sum(n * bag * per_index + n * d * e + v * d * e + 2 * n * bag * d * e
                  for v, d in zip(case.vocabs, case.dims))
        return Bytes(fwd=fwd, bwd=bwd)

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        if case.variant:
            raise Unsupported(f"FBGEMM's dense TBE is SUM pooling with dense gradients (variant {case.variant!r})")

        def adapt(x: torch.Tensor, psw: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
            # [B, T, L] -> table-major flat indices and one offset per bag.
            b, t, bag = x.shape
            flat = x.permute(1, 0, 2).reshape(-1)
            offsets = torch.arange(0, flat.numel() + 1, bag, device=x.device)
            if psw is None:
                return flat, offsets
            return flat, offsets, psw.permute(1, 0, 2).reshape(-1).float()

        return FbgemmTBE(model.weights(), device, adapt)
