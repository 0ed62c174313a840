"""Odd graphs, compiled with inductor_embed against eager: grad modes, frozen and tied
tables, repeated modules, graph breaks, cats with other inputs, in-place writes around
the lookups, and graphs where nothing matches (which must come out unchanged)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.inductor_embed._util import rewrites, skips
from tests.reliability._util import check_like_eager


def _idx(n, *vocabs, dtype=torch.int64):
    g = torch.Generator().manual_seed(n * 7 + len(vocabs))
    return [torch.randint(0, v, (n,), generator=g, dtype=dtype) for v in vocabs]


# --- in-place writes: the graph before autograd is not functional ------------------------

class Written(nn.Module):
    """A cat of two lookups with an in-place write somewhere around them."""

    def __init__(self, form):
        super().__init__()
        self.a, self.b = nn.Embedding(10, 3), nn.Embedding(7, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.form = form

    def forward(self, x, y, z):
        f = self.form
        e1, e2 = self.a(x), self.b(y)
        if f == "mul_ before the cat":
            e1.mul_(2)
        elif f == "setitem before the cat":
            e1[0] = 0.5
        elif f == "write through a view before the cat":
            e1.view(-1)[1:3].zero_()
        elif f == "indices written between lookup and cat":
            x.clamp_(max=2)
        elif f == "table written between lookup and cat":
            with torch.no_grad():
                self.b.weight.mul_(1.5)
        h = torch.cat([e1, e2], dim=-1)
        if f == "mul_ after the cat":
            e1.mul_(2)
            return h, e1
        if f == "+= after the cat":
            e1 += 1
            return h, e1 * 1
        if f == "cat result written, lookup read after":
            h.relu_()
            return h, e1 * 3
        if f == "buffer and input updated elsewhere":
            self.calls.add_(1)  # an unused in-place call: FX's default DCE deletes these
            z.mul_(3)
            return h
        if f == "lookup returned beside the cat":
            return h, e1
        return h


FUSED = ["buffer and input updated elsewhere", "lookup returned beside the cat",
         "cat result written, lookup read after"]
LEFT = [
    "mul_ before the cat", "setitem before the cat", "write through a view before the cat",
    "indices written between lookup and cat", "table written between lookup and cat",
    "mul_ after the cat", "+= after the cat",
]


@pytest.mark.parametrize("form", FUSED + LEFT)
def test_in_place_writes_around_the_lookups(form):
    # Before the fix every LEFT form but `+=` (which Dynamo renames) returned stale values
    # or changed the cat after the fact, "cat result written" fed relu'd values to `e1 * 3`,
    # and the DCE after a rewrite deleted `calls.add_(1)` and `z.mul_(3)`.
    model = Written(form)
    x, y = _idx(6, 10, 7)
    # Writing indices or a table that autograd saved makes eager's backward (and AOT's
    # trace of it) raise, so those forms run without autograd.
    with torch.set_grad_enabled("between" not in form):
        check_like_eager(model, [x, y, torch.ones(2)], backward="between" not in form)
    if form in FUSED:
        assert rewrites() == 1
    elif form in LEFT:
        assert rewrites() == 0 and skips() == 2  # the written lookup, then its lone partner


def test_a_returned_lookup_does_not_share_memory_with_the_cat():
    # The pass lets later users of a lookup read a slice of the fused output; a slice
    # returned to the caller would alias the cat, which eager's outputs never do.
    torch.manual_seed(0)
    model = Written("lookup returned beside the cat")
    x, y = _idx(5, 10, 7)
    h, e1 = torch.compile(model, backend="inductor_embed")(x, y, torch.ones(1))
    assert rewrites() == 1
    before = h.detach().clone()
    with torch.no_grad():
        e1.zero_()
    torch.testing.assert_close(h.detach(), before, rtol=0, atol=0)


def test_cat_with_out_is_left():
    a, b = nn.Embedding(10, 3), nn.Embedding(7, 2)

    def fn(x, y, buf):
        torch.cat([a(x), b(y)], -1, out=buf)
        return buf * 2

    x, y = _idx(4, 10, 7)
    with torch.no_grad():
        buf_e, buf_c = torch.zeros(4, 5), torch.zeros(4, 5)
        out_e = fn(x, y, buf_e)
        out_c = torch.compile(fn, backend="inductor_embed")(x, y, buf_c)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    torch.testing.assert_close(buf_c, buf_e, rtol=0, atol=0)
    assert rewrites() == 0 and skips() == 1


def test_torch_embedding_reads_a_negative_padding_idx_as_none():
    # F.embedding counts padding_idx=-1 from the end; torch.embedding (the ATen op) does
    # not pad at all then. Before the fix the pass gave row V-1 a zero gradient here.
    class Aten(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4, 2))
            self.c = nn.Embedding(6, 2, padding_idx=-1)  # F.embedding: row 5 is padding

        def forward(self, x, y, z):
            return torch.cat([torch.embedding(self.a, x, -1), torch.embedding(self.b, y, padding_idx=-2),
                              self.c(z)], -1)

    x, y, z = torch.tensor([4, 4, 1]), torch.tensor([3, 2, 2]), torch.tensor([5, 0, 5])
    check_like_eager(Aten(), [x, y, z])
    assert rewrites() == 1
