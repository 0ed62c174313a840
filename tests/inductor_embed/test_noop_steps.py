"""No-op steps between a lookup and its cat or sum (``.to(x.device)``, ``.to(same dtype)``,
``.contiguous()``, a same-shape view or reshape, ``* 1``, ``float()`` of an fp32 lookup):
the lookup is fused as if the step were not there; a step that changes the values (a real
cast, ``* 2``) is not a no-op. Each case compiles once and checks every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import inductor_embed
from tests.inductor_embed._util import compare_with_eager, rewrites, rewritten_code


class TokenAndPosition(nn.Module):
    """Language-model code: ``tok_emb + pos_emb.to(tok_emb.device)``."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tok = nn.Embedding(100, 16, dtype=dtype)
        self.pos = nn.Embedding(32, 16, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok_emb = self.tok(x)
        pos_emb = self.pos(torch.arange(x.shape[1], device=x.device))
        return tok_emb + pos_emb.to(tok_emb.device).to(tok_emb.dtype)


class CatSteps(nn.Module):
    """One no-op step, or two, on each lookup before a feature cat and a token stack."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(50, 4, dtype=dtype) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        e = [emb(x[:, k]) for k, emb in enumerate(self.embs)]
        flat = torch.cat([e[0].contiguous(), e[1].view(b, 4) * 1, e[2].reshape(-1, 4).to(e[2].dtype),
                          1 * e[3].to(x.device)], dim=-1)
        tokens = torch.stack([t.view_as(t) for t in e], dim=1)
        return flat.square().sum(-1) + tokens.sum((1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sum_through_to_device(dtype):
    torch.manual_seed(0)
    x = torch.randint(0, 100, (4, 8))
    compare_with_eager(TokenAndPosition(dtype), (x,), dtype=dtype)
    assert rewrites("multi_embedding_sum") == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cat_and_stack_through_steps(dtype):
    torch.manual_seed(0)
    x = torch.randint(0, 50, (6, 4))
    compare_with_eager(CatSteps(dtype), (x,), dtype=dtype, exact_forward=False)
    assert rewrites() == 2
    code = rewritten_code(CatSteps(dtype), x)
    assert code.count("torch.ops.inductor_embed.multi_embedding.default(") == 1  # the stack reads the cat's op
    for step in (".contiguous(", ".view(", ".reshape(", ".view_as(", ".to(", " * 1", "1 * "):
        assert step not in code, step


class RealSteps(nn.Module):
    """Steps that change values: a cast to another dtype, a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(100, 16)
        self.typ = nn.Embedding(2, 16, dtype=torch.bfloat16)
        self.pos = nn.Embedding(32, 16, dtype=torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos(torch.arange(x.shape[1]))
        return self.tok(x) + self.typ(x % 2).float() + pos.float() * 2


def test_steps_that_change_values_are_left():
    torch.manual_seed(0)
    x = torch.randint(0, 100, (4, 8))
    report = inductor_embed.explain(RealSteps(), x)
    # No sum is fused; each lookup, left alone (no other of its dtype and index shape), is
    # taken alone (its backward).
    assert sorted((r.pattern, r.replaced) for r in report.rewrites) == [
        ("independent_lookups", (name,)) for name in ("embedding_1", "embedding_2", "pos")]
    reasons = " ".join(s.reason for s in report.skipped)
    assert "embedding_2 reaches the sum ending at add_1 through `float` (float_1), not no-op steps" in reasons
    assert "pos reaches the sum ending at add_1 through `float` (float_2), `mul` (mul)," in reasons
    assert "only 1 fusable lookup(s) in the sum ending at add_1" in reasons
