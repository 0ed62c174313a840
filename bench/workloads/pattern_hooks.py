"""Workloads of single patterns, written before their patterns existed (pattern hooks).

Each one is complete (model, inputs, byte count) and is run by the presets that list it.
A hook runs only when ``inductor_embed.config`` has its pattern's switch; in a checkout
without the pattern the whole workload is reported as skipped, with the reason, and costs
nothing. Both patterns exist now, so both workloads run.

- ``one_hot_linear`` (a Linear on a one-hot is an embedding lookup):
  ``F.linear(F.one_hot(idx, n).to(dtype), W, b)``, which the pattern turns into a gather
  of W's columns; variant ``scaled``: ``(F.one_hot(idx, n).float() * r) @ W``, a gather
  scaled by ``r[idx]``; variant ``ensemble``: a TabM-style ensemble, one-hot fields and
  dense features column-stacked, copied to k members, scaled per member and contracted by
  ``einsum("bki,kio->bko")``.
- ``tied_bags`` (a tied Embedding / EmbeddingBag): ``F.embedding`` and ``F.embedding_bag``
  reading one weight (a token and its bag of context tokens, summed), which the pattern
  turns into one op that reads the weight once and writes one gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import inductor_embed
from bench.config import DTYPES, INDEX_BYTES, Bytes, Case
from bench.distributions import sample
from bench.workloads.base import (
    EmbeddingModel,
    Workload,
    rng_for,
    table_indices,
)


class PatternHook(Workload):
    """A workload that runs only where its inductor_embed pattern exists (has a config switch)."""

    def unavailable(self) -> str | None:
        if hasattr(inductor_embed.config, self.pattern):
            return None
        return (f"pattern {self.pattern} is not implemented in inductor_embed yet (inductor_embed.config has "
                f"no {self.pattern!r} switch); this workload runs as soon as it has")


class OneHotProjection(EmbeddingModel):
    """``Linear(n, D)`` applied to ``one_hot(idx, n)``: [B] -> [B, D]."""

    def __init__(self, n: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.n = n
        self.proj = nn.Linear(n, dim, dtype=dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(F.one_hot(idx, self.n).to(self.proj.weight.dtype))


class ScaledOneHotProjection(EmbeddingModel):
    """``(F.one_hot(idx, n).float() * r) @ W`` with a per-class scale ``r`` [n] broadcast
    over the batch and ``W`` [n, D] (ensemble / feature-scaling layers): [B] -> [B, D]."""

    def __init__(self, n: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(torch.randn(n, dim, dtype=dtype) / n**0.5)
        self.scale = nn.Parameter(torch.rand(n, dtype=dtype) + 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return (F.one_hot(idx, self.n).to(self.weight.dtype) * self.scale) @ self.weight


class OneHotEnsemble(EmbeddingModel):
    """A TabM-style ensemble layer: one-hot fields (``classes``) and ``dense`` continuous
    features column-stacked to ``[B, V]``, copied to ``k`` members, scaled per member by
    ``r`` ``[k, V]`` and contracted with ``W`` ``[k, V, D]``: [B, F], [B, dense] -> [B, k, D]."""

    def __init__(self, classes: tuple[int, ...], dim: int, dtype: torch.dtype, k: int = 8, dense: int = 4) -> None:
        super().__init__()
        self.classes, self.k = classes, k
        v = sum(classes) + dense
        self.r = nn.Parameter(torch.rand(k, v, dtype=dtype) + 0.5)
        self.weight = nn.Parameter(torch.randn(k, v, dim, dtype=dtype) / v**0.5)

    def forward(self, idx: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        feats = torch.column_stack([*(F.one_hot(idx[:, j], n) for j, n in enumerate(self.classes)), cont])
        return torch.einsum("bki,kio->bko", feats[:, None].expand(-1, self.k, -1) * self.r, self.weight)


class OneHotLinear(PatternHook):
    name = "one_hot_linear"
    title = "Linear layer on a one-hot encoding"
    source = "the embedding-vs-Linear equivalence"
    pattern = "one_hot_linear"
    bytes_formula = ("as a gather of weight columns: fwd = N*8 + N*D*e (columns read) + N*D*e (output) + D*e "
                     "(bias); bwd = N*8 + N*D*e (grad read) + V*D*e (zero-fill) + 2*N*D*e (atomic RMW) + D*e "
                     "(bias grad)")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        if case.variant not in ("", "scaled", "ensemble"):
            raise ValueError(f"one_hot_linear variant {case.variant!r} is not one of ['', 'scaled', 'ensemble']")
        if case.variant == "ensemble":
            return OneHotEnsemble(case.vocabs, case.dims[0], dtype)
        cls = ScaledOneHotProjection if case.variant == "scaled" else OneHotProjection
        return cls(case.vocabs[0], case.dims[0], dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        idx = table_indices(case, case.batch, device)
        if case.variant == "ensemble":
            cont = torch.randn(case.batch, 4, generator=torch.Generator().manual_seed(0))
            return idx, cont.to(device, getattr(torch, case.dtype))
        return (idx[:, 0].contiguous(),)

    def dynamic_dims(self, case: Case) -> tuple[tuple[int, int], ...]:
        return ((0, 0), (1, 0)) if case.variant == "ensemble" else ((0, 0),)

    def bytes(self, case: Case) -> Bytes:
        e, n, v, d = DTYPES[case.dtype], case.batch, case.vocabs[0], case.dims[0]
        if case.variant == "ensemble":  # F fields gather rows of k*D (k = 8); the 4 dense features' einsum
            f, kd, vv = len(case.vocabs), 8 * d, sum(case.vocabs) + 4
            return Bytes(fwd=n * f * INDEX_BYTES + n * f * kd * e + n * kd * e + vv * kd * e,
                         bwd=n * f * INDEX_BYTES + n * kd * e + vv * kd * e + 2 * n * f * kd * e + vv * kd * e)
        return Bytes(fwd=n * INDEX_BYTES + 2 * n * d * e + d * e,
                     bwd=n * INDEX_BYTES + n * d * e + v * d * e + 2 * n * d * e + d * e)


class TiedEmbeddingBag(EmbeddingModel):
    """``F.embedding(tok, W) + F.embedding_bag(ctx, W, mode="sum")``: [B], [B, L] -> [B, D]."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, dim, dtype=dtype))

    def forward(self, tok: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return F.embedding(tok, self.weight) + F.embedding_bag(ctx, self.weight, mode="sum")



class TiedBags(PatternHook):
    name = "tied_bags"
    title = "A token and its context bag reading one tied table"
    source = "a tied Embedding / EmbeddingBag"
    pattern = "tied_embedding_bag"
    bytes_formula = ("fwd = N*(1+L)*8 + N*(1+L)*D*e (rows read) + N*D*e (output); bwd = N*(1+L)*8 + N*D*e "
                     "(grad read) + V*D*e (zero-fill) + 2*N*(1+L)*D*e (atomic RMW)")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        return TiedEmbeddingBag(case.vocabs[0], case.dims[0], dtype)

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        rng = rng_for(case)
        v, b, bag = case.vocabs[0], case.batch, case.bag_size
        tok = torch.from_numpy(sample(case.dist, b, v, rng)).to(device)
        ctx = torch.from_numpy(sample(case.dist, b * bag, v, rng).reshape(b, bag)).to(device)
        return tok, ctx

    def dynamic_dims(self, case: Case) -> tuple[tuple[int, int], ...]:
        return ((0, 0), (1, 0))

    def bytes(self, case: Case) -> Bytes:
        e, n, bag, v, d = DTYPES[case.dtype], case.batch, case.bag_size, case.vocabs[0], case.dims[0]
        return Bytes(fwd=n * (1 + bag) * INDEX_BYTES + n * (1 + bag) * d * e + n * d * e,
                     bwd=n * (1 + bag) * INDEX_BYTES + n * d * e + v * d * e + 2 * n * (1 + bag) * d * e)
