"""End to end: one-hot fields in an ensemble's per-member contraction (TabM-style), compiled
with inductor_embed vs eager: ``column_stack`` of one-hot and dense features, a copy per
member (``[:, None].expand``), an optional per-member scale, then ``einsum`` / ``bmm`` /
``baddbmm`` / a 3-D ``@`` with a ``[k, V, O]`` weight -> one_hot_linear gathering rows of the
(scaled) weight, the dense features kept an einsum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inductor_embed
from tests.inductor_embed._util import compare_with_eager, rewrites, skips

NAME = "one_hot_linear"
CLASSES = (5, 7)


class Ensemble(nn.Module):
    """k members over two one-hot fields and ``dense`` continuous features."""

    def __init__(self, form: str = "einsum", scale: str = "kv", k: int = 3, out: int = 4, dense: int = 2,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.form, self.scale, self.k = form, scale, k
        v = sum(CLASSES) + dense
        r_shape = {"kv": (k, v), "v": (v,), "k1": (k, 1), "none": (1,)}[scale]
        self.r = nn.Parameter(torch.randn(r_shape, dtype=dtype))
        self.weight = nn.Parameter(torch.randn(k, v, out, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(k, 1, out, dtype=dtype))

    def forward(self, x: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        feats = torch.column_stack([*(F.one_hot(x[:, j], n) for j, n in enumerate(CLASSES)), cont])
        if self.form == "einsum":
            h = feats[:, None].expand(-1, self.k, -1)
            h = h if self.scale == "none" else h * self.r
            return torch.einsum("bki,kio->bko", h, self.weight)
        if self.form == "einsum-permuted":  # the same contraction, other axis orders
            h = feats.unsqueeze(-1).expand(-1, -1, self.k) * self.r.t()
            return torch.einsum("bik,koi->bok", h, self.weight.transpose(1, 2))
        h = feats.unsqueeze(0).expand(self.k, -1, -1)
        h = h if self.scale == "none" else h * (self.r[:, None] if self.r.dim() == 2 else self.r)
        if self.form == "bmm":
            return torch.bmm(h, self.weight)
        if self.form == "matmul":
            return h @ self.weight
        return torch.baddbmm(self.bias, h, self.weight)


def _inputs(batch: int = 6, dense: int = 2, dtype: torch.dtype = torch.float32):
    x = torch.stack([torch.randint(0, n, (batch,)) for n in CLASSES], 1)
    return x, torch.randn(batch, dense, dtype=dtype)


@pytest.mark.parametrize("form, scale", [(f, s) for f in ("einsum", "bmm", "matmul", "baddbmm") for s in ("kv", "none")]
                         + [("einsum-permuted", "kv")])
def test_forms_match_eager(form: str, scale: str) -> None:
    torch.manual_seed(0)
    compare_with_eager(Ensemble(form, scale), _inputs(), exact_forward=False)
    assert rewrites(NAME) == 1 and skips(NAME) == 0


@pytest.mark.parametrize("scale", ["v", "k1"])
def test_scales_broadcast_over_members_or_features(scale: str) -> None:
    torch.manual_seed(0)
    compare_with_eager(Ensemble("einsum", scale), _inputs(), exact_forward=False)
    assert rewrites(NAME) == 1


def test_bf16() -> None:
    torch.manual_seed(0)
    compare_with_eager(Ensemble("einsum", "kv", dtype=torch.bfloat16), _inputs(dtype=torch.bfloat16),
                       dtype=torch.bfloat16)
    assert rewrites(NAME) == 1


def test_one_hot_only_and_multi_hot_fields() -> None:
    """No dense features (the cast after the stack makes the features float), and a multi-hot
    field (a bag of 3 categories a row) unscaled."""

    class OneHots(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 12, 3))

        def forward(self, x: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
            feats = torch.column_stack([F.one_hot(x, 5), F.one_hot(bag, 7).sum(1)]).float()
            return torch.einsum("bki,kio->bko", feats[:, None].expand(-1, 2, -1), self.weight)

    torch.manual_seed(0)
    compare_with_eager(OneHots(), (torch.randint(0, 5, (6,)), torch.randint(0, 7, (6, 3))), exact_forward=False)
    assert rewrites(NAME) == 1


def _left(fn, *inputs) -> list[tuple[str, str]]:
    report = inductor_embed.explain(fn, *inputs)
    assert not report.rewrites, str(report)
    return [(s.node, s.reason) for s in report.skipped]


def test_left_with_a_reason() -> None:
    x, cont = _inputs()
    w, r = torch.randn(3, 14, 4), torch.randn(3, 14)

    def feats_of(x, cont):
        return torch.column_stack([F.one_hot(x[:, 0], 5), F.one_hot(x[:, 1], 7), cont])

    def per_row(x, cont, rows):
        return torch.einsum("bki,kio->bko", feats_of(x, cont)[:, None].expand(-1, 3, -1) * rows, w)

    left = _left(per_row, x, cont, torch.randn(6, 1, 14))
    assert left == [("mul", "mul scales each row differently ([6, 1, 14]): not a per-member scale")], left

    def number(x, cont):
        return torch.einsum("bki,kio->bko", feats_of(x, cont)[:, None].expand(-1, 3, -1) * 2.0, w)

    left = _left(number, x, cont)
    assert left == [("mul", "mul scales the features by a Python number (its rounding in half types is not a "
                            "tensor's)")], left

    def mixed(x, cont):
        return torch.einsum("bki,kio->bko", feats_of(x, cont)[:, None].expand(-1, 3, -1).double() * r.double(),
                            w.double()).float()

    assert _left(mixed, x, cont) == [("einsum", "a torch.float64 weight on cpu: no fused kernel")]

    def autocast(x, cont):
        with torch.autocast("cpu", torch.bfloat16):
            return torch.einsum("bki,kio->bko", feats_of(x, cont)[:, None].expand(-1, 3, -1) * r, w)

    left = _left(autocast, x, cont)
    assert left == [("einsum", "einsum mixes dtypes (features torch.float32, weight torch.float32, result "
                               "torch.bfloat16; autocast?): the gather would round differently")], left

    def scaled_bag(x, bag):
        feats = torch.column_stack([F.one_hot(x[:, 0], 5), F.one_hot(bag, 9).sum(1)])
        return torch.einsum("bki,kio->bko", feats[:, None].expand(-1, 3, -1) * r, w)

    left = _left(scaled_bag, x, torch.randint(0, 9, (6, 2)))
    assert left == [("einsum", "a multi-hot bag is scaled (eager rounds count * r before the contraction)")], left

    def written(x, cont):
        idx = x[:, 0]
        feats = torch.column_stack([F.one_hot(idx, 5), F.one_hot(x[:, 1], 7), cont])
        idx.zero_()
        return torch.einsum("bki,kio->bko", feats[:, None].expand(-1, 3, -1) * r, w)

    left = _left(written, x.clone(), cont)
    assert left == [("einsum", "the indices of one_hot are written in place by zero_ before einsum")], left


def test_a_member_axis_that_is_not_a_copy_is_left_and_logged() -> None:
    """Features reshaped into groups (``view(B, k, V / k)``) are not one copy per member: the
    one-hots are logged as reaching a contraction through the view."""
    w = torch.randn(2, 6, 3)

    def grouped(x):
        feats = torch.column_stack([F.one_hot(x[:, 0], 6), F.one_hot(x[:, 1], 6)]).float()
        return torch.einsum("bki,kio->bko", feats.view(-1, 2, 6), w)

    left = _left(grouped, torch.randint(0, 6, (4, 2)))
    assert [n for n, _ in left] == ["one_hot", "one_hot_1"] and all("`view` (view)" in r for _, r in left), left


def test_a_member_axis_that_broadcasts_or_features_per_member_are_left() -> None:
    """Review findings: a weight of one member broadcast against k copies (``@`` and einsum
    broadcast size-1 axes) is not k members, and ``[k, B]`` indices give each member its own
    features: both left with a reason, never rewritten to the wrong shape."""
    v, k = 4, 3
    w1, wk, r = torch.randn(1, v, 5), torch.randn(k, v, 5), torch.randn(k, 1, v)

    def matmul_broadcast(i):
        return F.one_hot(i, v).float().unsqueeze(0).expand(k, -1, -1) @ w1

    def einsum_broadcast(i):
        return torch.einsum("bki,kio->bko", F.one_hot(i, v).float()[:, None].expand(-1, k, -1), w1)

    for fn in (matmul_broadcast, einsum_broadcast):
        left = _left(fn, torch.randint(0, v, (6,)))
        assert len(left) == 1 and "broadcasts its member axis (features x3, weight x1)" in left[0][1], left

    def per_member(i):
        return torch.bmm(F.one_hot(i, v).float() * r, wk)

    left = _left(per_member, torch.randint(0, v, (k, 6)))
    assert left == [("mul", "the one-hot features reaching bmm are [3, 6, 4], not [B, V] rows copied to every "
                            "member")], left
