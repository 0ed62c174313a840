"""Lookups read by several cats or stacks (DeepFM: the FM term stacks the fields, the deep
part concatenates them flat): one fused op, read again by each later site.

Each case compiles once, checks the forward and every gradient against eager, and counts
the fused ops in the graph Inductor receives.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import inductor_embed
from tests.inductor_embed._util import compare_with_eager, rewrites, rewritten_code

VOCABS = (50, 70, 30, 90)
_OP = "torch.ops.inductor_embed.multi_embedding.default("


def _batch(n: int = 16) -> torch.Tensor:
    return torch.stack([torch.randint(0, v, (n,)) for v in VOCABS], dim=1)


class DeepFM(nn.Module):
    """Each field looked up once; the FM term stacks them, the deep part cats them flat
    with dense features."""

    def __init__(self, dim: int = 4, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(v, dim, dtype=dtype) for v in VOCABS)
        self.deep = nn.Linear(len(VOCABS) * dim + 2, 1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = [emb(x[:, k]) for k, emb in enumerate(self.embs)]
        s = torch.stack(e, dim=1)
        fm = (s.sum(1) * s[:, 0]).sum(1, keepdim=True)  # no cancellation, so bf16 stays close
        dense = x[:, :2].to(e[0].dtype)
        return fm + self.deep(torch.cat([*e, dense], dim=1))


class FieldSlices(nn.Module):
    """FM field slices ``emb_k(x[:, k:k+1])`` cat along the fields, and again along the features."""

    def __init__(self) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(v, 4) for v in VOCABS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = [emb(x[:, k:k + 1]) for k, emb in enumerate(self.embs)]  # [B, 1, 4] each
        return torch.cat(e, dim=1).sum(1) + torch.cat(e, dim=-1).squeeze(1)[:, :4] * 2


class SubRun(nn.Module):
    """The second cat reads the middle two lookups of the first."""

    def __init__(self) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(v, d) for v, d in zip(VOCABS, (2, 3, 4, 5)))
        self.bias = nn.Parameter(torch.randn(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = [emb(x[:, k]) for k, emb in enumerate(self.embs)]
        a = torch.cat(e, dim=-1)
        b = torch.cat([e[1], e[2]], dim=-1) + self.bias
        return a.sum(-1) + b.square().sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deepfm_one_fused_op(dtype):
    torch.manual_seed(0)
    model, x = DeepFM(dtype=dtype), _batch()
    compare_with_eager(model, (x,), dtype=dtype)
    assert rewrites() == 2
    assert rewritten_code(DeepFM(dtype=dtype), x).count(_OP) == 1


def test_field_slices_read_twice():
    torch.manual_seed(0)
    x = _batch()
    compare_with_eager(FieldSlices(), (x,))
    assert rewrites() == 2
    assert rewritten_code(FieldSlices(), x).count(_OP) == 1


def test_sub_run_is_a_column_slice():
    torch.manual_seed(0)
    x = _batch()
    compare_with_eager(SubRun(), (x,), exact_forward=False)  # Inductor orders the sums its own way
    assert rewrites() == 2
    code = rewritten_code(SubRun(), x)
    assert code.count(_OP) == 1
    assert "torch.narrow(" in code and ", -1, 2, 7)" in code


class WrittenStack(nn.Module):
    """The stack's result is written in place: it may be the fused buffer itself, so the
    cat after it must not read that buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(v, 4) for v in VOCABS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = [emb(x[:, k]) for k, emb in enumerate(self.embs)]
        s = torch.stack(e, dim=1)
        s.mul_(3)
        return s.sum(1).sum(1) + torch.cat(e, dim=-1).sum(-1)


def test_written_site_lends_no_output():
    torch.manual_seed(0)
    x = _batch()
    compare_with_eager(WrittenStack(), (x,), exact_forward=False)  # Inductor orders the sums its own way
    assert rewrites() == 2
    assert rewritten_code(WrittenStack(), x).count(_OP) == 2


class BothReturned(nn.Module):
    """Both sites are graph outputs: each gets its own op, so the outputs share no memory."""

    def __init__(self) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(v, 4) for v in VOCABS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = [emb(x[:, k]) for k, emb in enumerate(self.embs)]
        return torch.stack(e, dim=1), torch.cat(e, dim=-1)


def test_sites_that_are_outputs_share_nothing():
    torch.manual_seed(0)
    x = _batch()
    stacked, flat = torch.compile(BothReturned(), backend="inductor_embed")(x)
    assert rewrites() == 2
    assert stacked.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()
    assert rewritten_code(BothReturned(), x).count(_OP) == 2


def test_explain_names_the_shared_op():
    torch.manual_seed(0)
    report = inductor_embed.explain(DeepFM(), _batch())
    assert [r.shares for r in report.rewrites] == ["", "s"]  # the stack, named after its variable
    assert "the inductor_embed.multi_embedding of s, read again" in report.rewrites[1].describe()


class TwoCatsOfBags(nn.Module):
    """Bags read by a stack and a cat: the bag family shares its op the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(v, 4, mode="sum") for v in VOCABS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = [bag(x[:, :, k]) for k, bag in enumerate(self.bags)]  # [B, 4] each, bags of 3
        return torch.stack(p, dim=1).square().sum((1, 2)) + torch.cat(p, dim=-1).sum(-1)


def test_bags_read_twice():
    torch.manual_seed(0)
    x = _batch(12).view(4, 3, len(VOCABS))  # 4 bags of 3 ids per table
    compare_with_eager(TwoCatsOfBags(), (x,), exact_forward=False)
    assert rewrites("multi_embedding_bag") == 2
    code = rewritten_code(TwoCatsOfBags(), x)
    assert code.count("torch.ops.inductor_embed.multi_embedding_bag.default(") == 1
