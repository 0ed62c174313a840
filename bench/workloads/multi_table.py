"""Many small tables looked up and concatenated, after the FastMultiEmbedding study of RTB
House's pytorch-fast-embedding.

Input ``[B, T]`` int64, column k indexing table k; output ``[B, sum(D_k)]``. The eager
forward is the reference twin ``inductor_embed.lowering.multi_embedding_ref.multi_embedding_ref``
(T x ``F.embedding`` -> ``torch.cat(dim=-1)``), the very graph inductor_embed's
``multi_embedding_cat`` pattern fuses into one gather and one multi-table backward.
At small batch and many tables the cost is launches, not bytes.

Variants (``Case.variant``): ``fm_slices`` and ``fm_bias``, a Criteo-like FM
model written as CTR libraries write it (``FieldsFM``), which the pattern's field-slice and
bias-hoisting forms rewrite; ``sum``, the lookups of one width added up then a LayerNorm
(``SumEncoder``, an atom/feature encoder: ``multi_embedding_sum``); ``mf``, matrix
factorisation's four independent lookups scored by a dot product (``MatrixFactorisation``:
``independent_lookups``, left on the CPU by default); ``shared``, each lookup's first columns
overwritten in place by a shared vector before the cat (``SharedColumns``: the column-write
form of ``multi_embedding_cat``).
"""

from __future__ import annotations

import copy

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


def fm_interaction(e: torch.Tensor) -> torch.Tensor:
    """A factorisation machine's pairwise term: [B, F, D] -> [B, 1]."""
    s = e.sum(dim=1)
    return 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1, keepdim=True)


class FieldsFM(EmbeddingModel):
    """A Criteo-like FM model: F fields of width D -> [B, F, D] -> FM: [B, 1].

    ``bias=False`` ("fm_slices"): ``torch.cat([emb_k(x[:, k:k+1]) ...], dim=1)``, the [B, 1]
    field slices of FM-style CTR libraries. ``bias=True`` ("fm_bias"): a per-field bias
    added before the cat, ``torch.cat([emb_k(x[:, k]) + b_k ...], dim=1).view(B, F, D)``.
    ``weights()``: the tables, then the biases.
    """

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype, bias: bool) -> None:
        super().__init__()
        if len(set(dims)) != 1:
            raise ValueError(f"an FM model needs one width for every field, got {sorted(set(dims))}")
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))
        self.bias = nn.ParameterList(torch.randn(d, dtype=dtype) * 0.1 for d in dims) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            e = torch.cat([t(x[:, k:k + 1]) for k, t in enumerate(self.tables)], dim=1)
        else:
            e = torch.cat([t(x[:, k]) + b for k, (t, b) in enumerate(zip(self.tables, self.bias))], dim=1)
            e = e.view(x.shape[0], len(self.tables), -1)
        return fm_interaction(e)


class FMHead(nn.Module):
    """FieldsFM after its lookups, for FBGEMM's TBE output [B, F*D]: (+ biases) -> FM."""

    def __init__(self, fields: int, bias: nn.ParameterList | None) -> None:
        super().__init__()
        self.fields = fields
        self.bias = bias

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + torch.cat(list(self.bias))
        return fm_interaction(y.view(y.shape[0], self.fields, -1))


class SumEncoder(EmbeddingModel):
    """``h = emb_0(x[:, 0]) + emb_1(x[:, 1]) + ...`` then a LayerNorm without parameters
    (graph atom/bond and tabular feature encoders): [B, T] -> [B, D]."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        if len(set(dims)) != 1:
            raise ValueError(f"a sum of lookups needs one width, got {sorted(set(dims))}")
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tables[0](x[:, 0])
        for k in range(1, len(self.tables)):
            h = h + self.tables[k](x[:, k])
        return torch.nn.functional.layer_norm(h, h.shape[-1:])


class NoOpSumEncoder(SumEncoder):
    """``SumEncoder`` written as language-model code writes its sums (with no-op steps):
    each added lookup goes through ``.to(h.device)`` and ``.contiguous()``, no-ops here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tables[0](x[:, 0])
        for k in range(1, len(self.tables)):
            h = h + self.tables[k](x[:, k]).to(h.device).contiguous()
        return torch.nn.functional.layer_norm(h, h.shape[-1:])


class MatrixFactorisation(EmbeddingModel):
    """Users and items with per-id biases, scored by a dot product (independent lookups):
    tables (users [U, D], items [I, D], user bias [U', 1], item bias [I', 1]), column k of
    ``x`` indexing table k; output [B]."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        if len(vocabs) != 4 or dims[0] != dims[1] or dims[2:] != (1, 1):
            raise ValueError(f"matrix factorisation takes 4 tables of widths (D, D, 1, 1), got {dims}")
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, i, ub, ib = (t(x[:, k]) for k, t in enumerate(self.tables))
        return (u * i).sum(-1) + ub.squeeze(-1) + ib.squeeze(-1)


class SharedColumns(EmbeddingModel):
    """Shared-embedding schemes: ``o = emb_k(x[:, k]); o[:, :S] =
    shared_k.expand(B, -1)`` for every table, then the cat: [B, T] -> [B, sum D]; S = D/4."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))
        self.shared = nn.ParameterList(torch.randn(max(1, d // 4), dtype=dtype) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = []
        for k, (t, s) in enumerate(zip(self.tables, self.shared)):
            o = t(x[:, k])
            o[:, :s.shape[0]] = s.expand(x.shape[0], -1)
            pieces.append(o)
        return torch.cat(pieces, dim=-1)


class DeepFM(EmbeddingModel):
    """A DeepFM: each field looked up once, the same lookups read twice, stacked
    for the FM interaction and concatenated flat with dense features for the deep part:
    [B, T] -> [B, 1]. The 13 dense features are derived from the first columns of ``x``
    (``log1p`` of the ids), so the model takes the multi-table input as it is."""

    DENSE = 13

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        if len(set(dims)) != 1:
            raise ValueError(f"a DeepFM needs one width for every field, got {sorted(set(dims))}")
        self.tables = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims))
        width = sum(dims) + self.DENSE
        self.deep = nn.Sequential(nn.Linear(width, 64, dtype=dtype), nn.ReLU(), nn.Linear(64, 1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = [t(x[:, k]) for k, t in enumerate(self.tables)]
        dense = x[:, :self.DENSE].to(e[0].dtype).log1p()
        return fm_interaction(torch.stack(e, dim=1)) + self.deep(torch.cat([*e, dense], dim=1))


# multi_table's model variants (Case.variant) besides the plain lookups + cat
VARIANTS = {"fm_slices": False, "fm_bias": True}  # name -> per-field bias
OTHER_VARIANTS = {"sum": SumEncoder, "sum_noop": NoOpSumEncoder, "mf": MatrixFactorisation, "shared": SharedColumns, "deepfm": DeepFM}


class MultiTable(Workload):
    name = "multi_table"
    title = "Multi-table lookup + cat"
    source = "pytorch-fast-embedding's FastMultiEmbedding study"
    pattern = "multi_embedding_cat"
    bytes_formula = ("sum over tables of: fwd = N*8 + N*D_k*e (rows read) + N*D_k*e (output); "
                     "bwd = N*8 + N*D_k*e (grad read) + V_k*D_k*e (zero-fill) + 2*N*D_k*e (atomic RMW)")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        if case.variant in OTHER_VARIANTS:
            return OTHER_VARIANTS[case.variant](case.vocabs, case.dims, dtype)
        if case.variant:
            if case.variant not in VARIANTS:
                raise ValueError(f"multi_table variant {case.variant!r} is not one of "
                                 f"{['', *VARIANTS, *OTHER_VARIANTS]}")
            return FieldsFM(case.vocabs, case.dims, dtype, bias=VARIANTS[case.variant])
        return MultiEmbeddingCat(case.vocabs, case.dims, dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (table_indices(case, case.batch, device),)

    def bytes(self, case: Case) -> Bytes:
        return unpooled_bytes(case)

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        if isinstance(model, (SumEncoder, MatrixFactorisation, SharedColumns, DeepFM)):
            return super().fbgemm(model, case, device)  # Unsupported: no pooled-bag form of these
        if isinstance(model, FieldsFM):
            head = FMHead(len(model.tables), copy.deepcopy(model.bias))
            return FbgemmTBE([t.weight for t in model.tables], device, lookup_bags, head=head)
        return FbgemmTBE(model.weights(), device, lookup_bags)
