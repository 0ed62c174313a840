"""Odd graphs, compiled with inductor_embed against eager: grad modes, frozen and tied
tables, repeated modules, graph breaks, cats with other inputs, in-place writes around
the lookups, and graphs where nothing matches (which must come out unchanged). The
models mix multi_embedding_cat with one_hot_linear where it costs no extra compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.inductor_embed._util import rewrites, skips
from tests.reliability._util import check_like_eager, code_before_and_after, dynamo_graphs


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


# --- grad modes, frozen and tied tables, repeated modules, graph breaks --------------------

class Three(nn.Module):
    """Three tables (multi_embedding_cat), a Linear on a one-hot field of 4 classes
    (one_hot_linear), an MLP head."""

    def __init__(self, dims=(3, 5, 2), vocabs=(7, 11, 13)):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(v, d) for v, d in zip(vocabs, dims)])
        self.field = nn.Linear(4, sum(dims))
        self.head = nn.Linear(sum(dims), 2)

    def forward(self, a, b, c, d):
        h = torch.cat([t(i) for t, i in zip(self.tables, (a, b, c))], dim=-1)
        return self.head(h + self.field(F.one_hot(d, 4).float()))


def _three_inputs(n):
    return _idx(n, 7, 11, 13, 4)


def _one_hot_fused():
    return torch._dynamo.utils.counters["inductor_embed"]["one_hot_linear"]


def test_no_grad_and_inference_mode():
    torch.manual_seed(0)
    model = Three()
    compiled = torch.compile(model, backend="inductor_embed")
    x = _three_inputs(9)
    want = model(*x).detach()
    with torch.no_grad():
        out = compiled(*x)
    assert not out.requires_grad
    torch.testing.assert_close(out, want)
    with torch.inference_mode():
        out = compiled(*x)
    assert out.is_inference()
    torch.testing.assert_close(out, want)
    out = compiled(*x)  # and with grad again: a third graph (grad mode is guarded)
    assert out.requires_grad
    assert rewrites() >= 2 and _one_hot_fused() >= 2


@pytest.mark.parametrize("frozen", ["all", "first and last", "a buffer table"])
def test_frozen_tables(frozen):
    torch.manual_seed(0)
    model = Three()
    if frozen == "all":  # every table and the one-hot Linear; the head still trains
        for t in model.tables:
            t.weight.requires_grad_(False)
        model.field.requires_grad_(False)
    elif frozen == "first and last":  # a mix in one cat; a frozen weight with a trained bias
        model.tables[0].weight.requires_grad_(False)
        model.tables[2].weight.requires_grad_(False)
        model.field.weight.requires_grad_(False)
    else:
        table = model.tables[1].weight.detach().clone()
        del model.tables[1].weight
        model.tables[1].register_buffer("weight", table)  # nn.Embedding reads self.weight
    check_like_eager(model, _three_inputs(8), tol={"rtol": 1e-5, "atol": 1e-6})
    assert rewrites() == 1 and _one_hot_fused() == 1


def test_same_module_twice_in_one_cat_in_two_cats_and_across_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.user, self.item = nn.Embedding(20, 4), nn.Embedding(9, 3)

        def forward(self, u, v, i):
            a = torch.cat([self.user(u), self.item(i), self.user(v)], dim=-1)
            b = torch.cat([self.user(v), self.item(i)], dim=-1)
            return a.sum(-1) + b.sum(-1)

    model = Twice()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="inductor_embed")
    for shift in (1, 2):  # the second call reuses the compiled code
        u, v, i = _idx(6, 20, 20, 9)
        u = u.roll(shift)
        torch.testing.assert_close(compiled(u, v, i), model(u, v, i))
    assert rewrites() == 2  # one compile, two cats
    check_like_eager(model, _idx(6, 20, 20, 9), tol={"rtol": 1e-5, "atol": 1e-6})


def test_lookups_across_a_graph_break():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.ModuleList([nn.Embedding(10, d) for d in (2, 3, 4, 5)])

        def forward(self, x):
            e0, e1 = self.t[0](x[:, 0]), self.t[1](x[:, 1])
            torch._dynamo.graph_break()
            # e0 and e1 are inputs of this graph, not lookups: only e2 and e3 fuse
            return torch.cat([e0, self.t[2](x[:, 2]), self.t[3](x[:, 3]), e1], dim=-1)

    x = torch.stack(_idx(5, 10, 10, 10, 10), 1)
    check_like_eager(Broken(), [x])
    assert rewrites() == 1


def test_weight_tied_to_an_output_projection():
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(30, 8), nn.Embedding(6, 8)
            self.proj = nn.Linear(16, 8)
            self.out = nn.Linear(8, 30, bias=False)
            self.out.weight = self.tok.weight  # tied, as language models do

        def forward(self, tokens):
            pos = torch.arange(tokens.shape[-1]).expand_as(tokens)
            h = torch.cat([self.tok(tokens), self.pos(pos)], dim=-1)
            return self.out(torch.tanh(self.proj(h)))

    tokens = torch.randint(0, 30, (3, 6), generator=torch.Generator().manual_seed(0))
    check_like_eager(TiedLM(), [tokens], tol={"rtol": 1e-5, "atol": 1e-5})
    assert rewrites() == 1


def test_cat_whose_other_inputs_are_not_lookups():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.ModuleList([nn.Embedding(v, d) for v, d in ((7, 3), (11, 5), (13, 2), (5, 4))])
            self.scale = nn.Parameter(torch.randn(5))

        def forward(self, x, dense):
            e = [t(x[:, k]) for k, t in enumerate(self.t)]
            lone = torch.cat([dense, e[0]], dim=-1)  # one lookup: nothing to fuse
            return torch.cat([
                dense.relu(),  # a computed tensor
                e[0], e[1],
                e[1] * self.scale,  # a lookup's other user, inside the cat
                torch.ones_like(dense),  # a constant
                e[2], e[3],
                lone,
            ], dim=-1)

    x = torch.stack(_idx(6, 7, 11, 13, 5), 1)
    check_like_eager(Mixed(), [x, torch.randn(6, 2, requires_grad=True)])
    assert rewrites() == 2  # e0 e1 | e2 e3


@pytest.mark.parametrize("form", ["cat, split by a dense input", "stack, split by dtype"])
def test_lone_lookup_beside_a_fused_run(form):
    # Found by test_random_models: a lookup in a run shorter than min_tables, in a cat
    # where another run fuses, reached the new cat as the pass's own Lookup record, and
    # the compile failed ("expected Tensor as element 0 in argument 0, but got Lookup").
    class Lone(nn.Module):
        def __init__(self):
            super().__init__()
            half = torch.bfloat16 if "dtype" in form else torch.float32
            self.a = nn.Embedding(5, 4)
            self.b, self.c = nn.Embedding(6, 4), nn.Embedding(7, 4, dtype=half)
            self.d = nn.Embedding(8, 4, dtype=half)

        def forward(self, x, dense):
            if "dense" in form:
                return torch.cat([self.a(x), dense, self.b(x), self.c(x), self.d(x)], dim=-1)
            return torch.stack([self.a(x), self.b(x), self.c(x)], dim=1), self.d(x)

    x = torch.tensor([1, 4, 0])
    check_like_eager(Lone(), [x, torch.randn(3, 2)], tol={"rtol": 2e-2, "atol": 2e-2} if "dtype" in form else None)
    assert rewrites() == 1 and skips() == 1


# --- graphs where nothing matches come out unchanged -------------------------------------

class Summed(nn.Module):
    """Lookups summed, of two widths (a [.., 1] one broadcast over the other's 4 columns):
    multi_embedding_sum fuses lookups of one width only, and here each width has one."""

    def __init__(self):
        super().__init__()
        self.word, self.pos = nn.Embedding(20, 4), nn.Embedding(8, 1)

    def forward(self, x):
        return self.word(x) + self.pos(torch.arange(x.shape[-1]))


class Bagged(nn.Module):
    def __init__(self):
        super().__init__()
        # Bags the pattern leaves (scale_grad_by_freq): the graph must come out unchanged.
        self.a = nn.EmbeddingBag(10, 3, mode="sum", scale_grad_by_freq=True)
        self.b = nn.EmbeddingBag(10, 2, mode="mean", scale_grad_by_freq=True)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=-1)


class Renormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(10, 3, max_norm=1.0), nn.Embedding(10, 2, max_norm=1.0)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=-1)


class OneLookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Embedding(10, 3)

    def forward(self, x, dense):
        return torch.cat([self.a(x), dense], dim=-1)


class OneHotNoMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(5))

    def forward(self, x, dense):
        # a one-hot scaled, not multiplied by a matrix; a Linear on a dense input
        return F.one_hot(x, 5).float() * self.scale, F.linear(dense, self.scale.expand(2, 5))


NOTHING = {
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()), lambda: [torch.randn(3, 4)]),
    "one-hot without a matmul": (OneHotNoMatmul, lambda: [torch.randint(0, 5, (4,)), torch.randn(4, 5)]),
    "embedding bags with scale_grad_by_freq": (Bagged, lambda: [torch.randint(0, 10, (4, 3))]),
    "max_norm lookups": (Renormed, lambda: [torch.randint(0, 10, (4,))]),
}

# Nothing to fuse, but each lookup has no other of its index shape: on the CPU each is taken
# alone (a one-table op: Inductor's forward, the native backward), and nothing else changes.
ALONE = {
    "lookups of two widths summed": (Summed, lambda: [torch.randint(0, 8, (2, 5))], 2),
    "one lookup in the cat": (OneLookup, lambda: [torch.randint(0, 10, (4,)), torch.randn(4, 2)], 1),
}


@pytest.mark.parametrize("name", list(NOTHING))
def test_graph_where_nothing_matches_is_unchanged(name):
    make_model, make_inputs = NOTHING[name]
    torch.manual_seed(0)
    model = make_model()
    with torch.no_grad():  # max_norm renormalises the table in place
        graphs = dynamo_graphs(model, *make_inputs())
    assert graphs
    for gm in graphs:
        before, after = code_before_and_after(gm)
        assert after == before
    assert rewrites() == 0 and _one_hot_fused() == 0


@pytest.mark.parametrize("name", list(ALONE))
def test_lookups_with_nothing_to_fuse_are_taken_alone(name):
    import inductor_embed

    make_model, make_inputs, lone = ALONE[name]
    torch.manual_seed(0)
    report = inductor_embed.explain(make_model(), *make_inputs())
    assert [(r.pattern, len(r.tables)) for r in report.rewrites] == [("independent_lookups", 1)] * lone
    with inductor_embed.config.patch(independent_lookups=False):
        graphs = dynamo_graphs(make_model(), *make_inputs())
        for gm in graphs:
            before, after = code_before_and_after(gm)
            assert after == before
