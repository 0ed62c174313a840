"""End to end: models with N lookups + cat, compiled with inductor_embed vs eager.

Every case compiles once, checks outputs and every gradient against eager, and
checks from the counters that the rewrite fired (or was skipped, and why).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inductor_embed
from tests._util import deterministic
from tests.inductor_embed._util import TOL, compare_with_eager, rewrites, skips

torch.manual_seed(0)


# --- published models, as their authors write them ----------------------------------

class DynamicEmbeddingConcatenator(nn.Module):
    """Example 2 of the Q&A "How can PyTorch efficiently concatenate embedding layers during
    inference?"."""

    def __init__(self, vocab_sizes, embedding_dims):
        super().__init__()
        self.embeddings = nn.ModuleList([
            nn.Embedding(vocab_size, embedding_dim)
            for vocab_size, embedding_dim in zip(vocab_sizes, embedding_dims)
        ])

    def forward(self, input_data):
        embedded_tensors = [emb_layer(input_tensor) for emb_layer, input_tensor in zip(self.embeddings, input_data)]
        return torch.cat(embedded_tensors, dim=-1)


class InefficientModel(nn.Module):
    """Example 3 of the same Q&A."""

    def __init__(self, vocab_sizes, embedding_dims, hidden_dim):
        super().__init__()
        self.embeddings = nn.ModuleList([
            nn.Embedding(vocab_size, embedding_dim)
            for vocab_size, embedding_dim in zip(vocab_sizes, embedding_dims)
        ])
        total_embedding_dim = sum(embedding_dims)
        self.fc = nn.Linear(total_embedding_dim, hidden_dim)

    def forward(self, input_data):
        embedded_tensors = [emb_layer(input_tensor) for emb_layer, input_tensor in zip(self.embeddings, input_data)]
        concatenated_tensor = torch.cat(embedded_tensors, dim=-1)
        output = self.fc(concatenated_tensor)
        return output


class FastMultiEmbeddingEquivalent(nn.Module):
    """What RTB House's pytorch-fast-embedding says ``FastMultiEmbedding([100, 200, 300], [2, 4, 8])``
    is equivalent to."""

    def __init__(self):
        super().__init__()
        self.embbeddings = nn.ModuleList([nn.Embedding(100, 2), nn.Embedding(200, 4), nn.Embedding(300, 8)])

    def forward(self, batch):
        return torch.cat([
            self.embbeddings[0](batch[:, 0]),
            self.embbeddings[1](batch[:, 1]),
            self.embbeddings[2](batch[:, 2])
        ], 1)


def _concatenator_inputs():
    return [[torch.randint(0, v, (10, 5)) for v in (100, 200, 150)]]


def _batch(n, vocabs):
    return torch.stack([torch.randint(0, v, (n,)) for v in vocabs], dim=1)


def test_dynamic_embedding_concatenator():
    model = DynamicEmbeddingConcatenator([100, 200, 150], [32, 64, 48])
    out = compare_with_eager(model, _concatenator_inputs())
    assert out.shape == (10, 5, 144)
    assert rewrites() == 1


def test_inefficient_model():
    # Seeded: fc.bias's gradient sums 50 random rows, and where that sum cancels to ~0 the
    # reduction orders of eager and Inductor differ by more than the fp32 tolerance.
    torch.manual_seed(0)
    model = InefficientModel([100, 200, 150], [32, 64, 48], 256)
    out = compare_with_eager(model, _concatenator_inputs(), exact_forward=False)
    assert out.shape == (10, 5, 256)
    assert rewrites() == 1


def test_fast_multi_embedding_equivalent():
    model = FastMultiEmbeddingEquivalent()
    out = compare_with_eager(model, [_batch(33, (100, 200, 300))])
    assert out.shape == (33, 14)
    assert rewrites() == 1


def test_ten_tables_dims_1_to_8():
    dims = [1, 2, 4, 8, 1, 2, 4, 8, 1, 2]
    vocabs = [1000, 5000, 10000, 50000] * 3

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = nn.ModuleList([nn.Embedding(v, d) for v, d in zip(vocabs, dims)])

        def forward(self, x):
            return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)

    compare_with_eager(M(), [_batch(64, vocabs[:10])])
    assert rewrites() == 1


# --- forms of the cat ----------------------------------------------------------------

def _tables(dims=(3, 5, 2), vocabs=(7, 11, 13), dtype=torch.float32):
    return nn.ModuleList([nn.Embedding(v, d, dtype=dtype) for v, d in zip(vocabs, dims)])


class CatModel(nn.Module):
    def __init__(self, cat, dims=(3, 5, 2), vocabs=(7, 11, 13), dtype=torch.float32):
        super().__init__()
        self.tables = _tables(dims, vocabs, dtype)
        self.cat = cat

    def forward(self, x):
        return self.cat([t(x[..., k]) for k, t in enumerate(self.tables)])


@pytest.mark.parametrize("cat", [
    pytest.param(lambda xs: torch.cat(xs, dim=-1), id="cat-dim-1"),
    pytest.param(lambda xs: torch.cat(xs, 2), id="cat-dim2-positive"),
    pytest.param(lambda xs: torch.concat(xs, dim=-1), id="concat"),
    pytest.param(lambda xs: torch.concatenate(xs, axis=-1), id="concatenate-axis"),
])
def test_cat_spellings_with_2d_leading_shape(cat):
    x = torch.stack([torch.randint(0, v, (4, 6)) for v in (7, 11, 13)], dim=-1)  # [4, 6, 3]
    compare_with_eager(CatModel(cat), [x])
    assert rewrites() == 1


@pytest.mark.parametrize("form", ["stack-1", "stack-neg2", "unsqueeze-cat"])
def test_stacked_tokens(form):
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(4, 4, 4, 4), vocabs=(5, 9, 3, 17))

        def forward(self, x):
            es = [t(x[:, k]) for k, t in enumerate(self.tables)]
            if form == "stack-1":
                return torch.stack(es, dim=1)
            if form == "stack-neg2":
                return torch.stack(es, dim=-2)
            return torch.cat([e.unsqueeze(1) for e in es], dim=1)

    out = compare_with_eager(Tokens(), [_batch(9, (5, 9, 3, 17))])
    assert out.shape == (9, 4, 4)
    assert rewrites() == 1


class FieldSliceFM(nn.Module):
    """An FM-style CTR model (our own, after the way such libraries write it): one table per
    field looked up on the [B, 1] column slice of the categorical input, the fields cat
    along dim 1 into [B, F, D], then a first-order term and the FM interaction
    0.5 * ((sum_f v)^2 - sum_f v^2)."""

    def __init__(self, vocabs=(7, 11, 13, 5), dim=4, dtype=torch.float32):
        super().__init__()
        self.embeddings = nn.ModuleList([nn.Embedding(v, dim, dtype=dtype) for v in vocabs])
        self.first_order = nn.ModuleList([nn.Embedding(v, 1, dtype=dtype) for v in vocabs])
        for e in self.embeddings:  # CTR libraries initialise small; (sum v)^2 of N(0, 1) rows would
            nn.init.normal_(e.weight, std=0.1)  # leave bf16 a step of 1/16, far above its tolerance

    def forward(self, x):
        v = torch.cat([e(x[:, k:k + 1]) for k, e in enumerate(self.embeddings)], dim=1)  # [B, F, D]
        linear = torch.cat([w(x[:, k:k + 1]) for k, w in enumerate(self.first_order)], dim=1).sum(1)  # [B, 1]
        square_of_sum = torch.pow(torch.sum(v, dim=1, keepdim=True), 2)
        sum_of_square = torch.sum(v * v, dim=1, keepdim=True)
        cross = 0.5 * torch.sum(square_of_sum - sum_of_square, dim=2)  # [B, 1]
        return linear + cross, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_field_slices_with_fm_interaction(dtype):
    model = FieldSliceFM(dtype=dtype)
    x = _batch(9, (7, 11, 13, 5))
    compiled = torch.compile(copy.deepcopy(model), backend="inductor_embed")
    (y_c, v_c), (y_e, v_e) = compiled(x), model(x)
    torch.testing.assert_close(v_c, v_e, rtol=0, atol=0)  # the gather is exact in every dtype
    assert v_c.shape == (9, 4, 4) and v_c.stride() == v_e.stride()
    torch.testing.assert_close(y_c, y_e, **TOL[dtype])
    g = torch.randn_like(y_e)
    (y_c * g).sum().backward()
    (y_e * g).sum().backward()
    for (name, p), q in zip(model.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **TOL[dtype], msg=lambda m, n=name: f"grad of {n}: {m}")
    assert rewrites() == 2  # the [B, F, D] field embeddings and the [B, F, 1] first-order weights


def test_field_slices_over_a_leading_sequence_dim_and_their_limits(caplog):
    class Slices(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(3, 3, 3, 3, 3), vocabs=(7, 11, 13, 5, 6))

        def forward(self, x):  # x: [B, S, 6]
            t = self.tables
            a = torch.cat([t[0](x[..., 0:1]), t[1](x[..., 1:2]), t[2](x[..., 2:3])], dim=-2)  # [B, S, 3, 3]
            # an unsqueezed lookup between field slices breaks the run; two tokens at once are left
            b = torch.cat([t[3](x[..., 3:4]), t[4](x[..., 4]).unsqueeze(-2), t[0](x[..., 4:6])], dim=2)
            return torch.cat([a, b], dim=2)  # [B, S, 7, 3]: no lookup of its own

    x = torch.stack([torch.randint(0, v, (2, 3)) for v in (7, 11, 13, 5, 6, 5)], dim=-1)
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        compare_with_eager(Slices(), [x])
    assert rewrites() == 1 and skips() == 3  # x[..., 4:6]; then t[3] and t[4], each a run of one
    assert "[2, 3, 2, 3] output is neither unsqueezed into a token nor one token" in caplog.text
    assert "only 1 fusable lookup(s) in a row" in caplog.text


def test_stacked_tokens_with_a_non_lookup_token():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(4, 4, 4), vocabs=(5, 9, 3))
            self.cls = nn.Parameter(torch.randn(4))

        def forward(self, x):
            cls = self.cls.expand(x.shape[0], 4)
            return torch.stack([cls] + [t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)

    out = compare_with_eager(Tokens(), [_batch(6, (5, 9, 3))])
    assert out.shape == (6, 4, 4)
    assert rewrites() == 1


def test_dense_inputs_keep_their_place():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(3, 5, 2, 4), vocabs=(7, 11, 13, 5))

        def forward(self, x, dense):
            e = [t(x[:, k]) for k, t in enumerate(self.tables)]
            return torch.cat([dense, e[0], e[1], dense * 2, e[2], e[3]], dim=-1)

    dense = torch.randn(8, 3, requires_grad=True)
    out = compare_with_eager(Mixed(), [_batch(8, (7, 11, 13, 5)), dense])
    assert out.shape == (8, 3 + 3 + 5 + 3 + 2 + 4)
    assert rewrites() == 2  # two runs of two lookups, the dense pieces in between


def test_separate_int32_index_tensors_and_mixed_dims():
    dims, vocabs = (1, 3, 130, 17), (2, 50, 9, 1000)

    class Sep(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims, vocabs)

        def forward(self, a, b, c, d):
            return torch.cat([t(i) for t, i in zip(self.tables, (a, b, c, d))], dim=-1)

    idx = [torch.randint(0, v, (5,), dtype=torch.int32) for v in vocabs]
    out = compare_with_eager(Sep(), idx)
    assert out.shape == (5, sum(dims))
    assert rewrites() == 1


def test_functional_embedding_on_raw_parameters():
    w1, w2 = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(4, 2))

    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = w1, w2

        def forward(self, a, b):
            return torch.cat([F.embedding(a, self.w1), F.embedding(b, self.w2)], -1)

    compare_with_eager(Fn(), [torch.randint(0, 6, (7,)), torch.randint(0, 4, (7,))])
    assert rewrites() == 1


# --- a bias before the cat -------------------------------------------------------------------

class BiasedFields(nn.Module):
    """One table and one bias per field, the bias added before the cat."""

    def __init__(self, dims=(3, 5, 2), vocabs=(7, 11, 13), dtype=torch.float32):
        super().__init__()
        self.tables = _tables(dims, vocabs, dtype)
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(d, dtype=dtype)) for d in dims])

    def forward(self, x):
        return torch.cat([t(x[:, k]) + b.unsqueeze(0) for k, (t, b) in enumerate(zip(self.tables, self.biases))], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bias_before_the_cat(dtype):
    model = BiasedFields(dtype=dtype)
    x = _batch(8, (7, 11, 13))
    out = compare_with_eager(model, [x], dtype=dtype)  # every table's and every bias's gradient
    assert torch.equal(out, model(x))  # the same adds of the same values: exact in bf16 too
    assert rewrites() == 1 and skips() == 0


def test_bias_forms_placeholder_zeros_tokens_and_slices():
    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(4, 4, 4), vocabs=(7, 11, 13), dtype=torch.bfloat16)
            self.b = nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16))
            self.s = nn.Parameter(torch.randn(1, dtype=torch.bfloat16))  # one scalar per field, broadcast

        def forward(self, x):
            t = self.tables
            # a library's placeholder when bias is off; fp32 zeros promote the bf16 lookups to fp32
            zeros = torch.cat([e(x[:, k]) + torch.zeros(1, 4) for k, e in enumerate(t)], 1)
            tokens = torch.cat([(e(x[:, k]) + self.b[k]).unsqueeze(1) for k, e in enumerate(t)], 1)
            slices = torch.cat([self.s + e(x[:, k:k + 1]) for k, e in enumerate(t)], dim=1)
            return torch.cat([zeros, tokens.flatten(1).float(), slices.flatten(1).float()], 1)

    model = Forms()
    x = _batch(5, (7, 11, 13))
    # After the rewrite the bf16 add of tokens and slices sits in one Inductor kernel with the
    # .float() that follows, and Inductor skips the bf16 rounding between them (as for any
    # fused bf16 op, unless emulate_precision_casts); without it, the cat kernel rounded
    # first. So bf16 tolerance there; the fp32 zeros part is exact.
    out = compare_with_eager(model, [x], dtype=torch.bfloat16)
    assert out.shape == (5, 36) and torch.equal(out[:, :12], model(x)[:, :12])
    assert rewrites() == 3 and skips() == 0


def test_adds_that_are_not_a_bias_are_left_with_a_reason():
    class Adds(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = _tables(dims=(4, 4, 4, 4), vocabs=(7, 11, 13, 5))
            self.b = nn.Parameter(torch.randn(4))
            self.h = nn.Parameter(torch.randn(4, dtype=torch.bfloat16))

        def forward(self, x, bias):
            e = [t(x[:, k]) for k, t in enumerate(self.t)]
            per_row = torch.cat([e[0] + x[:, 0:1].float(), e[1] + e[2], torch.add(e[3], self.b, alpha=2)], 1)
            # a bf16 bias on fp32 tables: same result dtype, another bias dtype -> its own run
            mixed = torch.cat([e[0] + self.b, e[1] + self.b, e[2] + self.h, e[3] + self.h], 1)
            written = [e[0] + bias, e[1] + bias]
            bias.add_(1)  # the cat must see the adds of the old bias
            return per_row, mixed, torch.cat(written, 1)

    report = inductor_embed.explain(Adds(), _batch(3, (7, 11, 13, 5)), torch.randn(4))
    # mixed: one run per bias dtype; e[1] + e[2] is multi_embedding_sum's
    assert [r.pattern for r in report.rewrites] == ["multi_embedding_cat"] * 2 + ["multi_embedding_sum"]
    reasons = [s.reason for s in report.skipped if s.pattern == "multi_embedding_cat"]
    assert any("adds a [3, 1] tensor to the [3, 4] lookup: not a bias" in r for r in reasons)
    assert any("adds a [3, 4] tensor to the [3, 4] lookup" in r for r in reasons)  # e[1] + e[2]
    assert any("sits between the lookup and the cat" in r for r in reasons)  # alpha=2
    assert sum("the bias l_bias_ is written in place by add_" in r for r in reasons) == 2
    assert len(reasons) == 5


# --- columns of a lookup written in place before the cat --------------------------------------

class SharedColumns(nn.Module):
    """Shared-embedding schemes: the first columns of each field's lookup are one shared
    vector per field, written in place before the cat; in every form the writes take."""

    def __init__(self, dims=(6, 5, 4, 6), vocabs=(7, 11, 13, 5), dtype=torch.float32):
        super().__init__()
        self.tables = _tables(dims, vocabs, dtype)
        self.shared = nn.ParameterList([nn.Parameter(torch.randn(2, dtype=dtype)) for _ in dims])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(d, dtype=dtype)) for d in dims[2:]])

    def forward(self, x):
        t, s = self.tables, self.shared
        o = [e(x[:, k]) for k, e in enumerate(t)]
        o[0][:, :2] = s[0].expand(x.shape[0], -1)  # setitem of an expanded vector
        o[1][:, 3:] = s[1]  # setitem broadcasting a [2] vector over the rows
        o[2][..., 1:3].copy_(s[2].expand(x.shape[0], -1))  # copy_ into a column slice
        o[3][:, 0:4:2] = s[3]  # a step
        b = self.biases  # added after the writes: the hoisted add comes after them too
        return torch.cat([o[0], o[1], o[2] + b[0], o[3] + b[1]], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_column_writes_before_the_cat(dtype):
    model = SharedColumns(dtype=dtype)
    x = _batch(8, (7, 11, 13, 5))
    # Forward and every gradient: tables (none on the written columns) and shared vectors.
    out = compare_with_eager(model, [x], dtype=dtype)
    assert torch.equal(out, model(x))
    assert rewrites() == 2 and skips() == 0  # one run without biases, one with


def test_column_writes_on_field_slices_and_a_reader_after_the_cat():
    class Fields(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(4, 4, 4), vocabs=(7, 11, 13))
            self.shared = nn.Parameter(torch.randn(1))

        def forward(self, x):
            o = [e(x[:, k:k + 1]) for k, e in enumerate(self.tables)]  # [B, 1, 4] each
            for e in o:
                e[:, :, :1] = self.shared
            fields = torch.cat(o, dim=1)
            return fields.sum(1) * o[1].squeeze(1)  # o[1] read after the cat, writes included

    compare_with_eager(Fields(), [_batch(6, (7, 11, 13))])
    assert rewrites() == 1 and skips() == 0


class WrittenColumns(nn.Module):
    """Two lookups and a cat, a write into the first lookup's output in one of ``form``'s ways."""

    def __init__(self, form):
        super().__init__()
        self.a, self.b = nn.Embedding(7, 4), nn.Embedding(11, 4)
        self.form = form

    def forward(self, x, v):
        f, o, rest = self.form, self.a(x[:, 0]), []
        if f == "a row":
            o[0] = v
        elif f == "rows and columns":
            o[1:, :2] = v
        elif f == "a tensor index":
            o[:, x[0, :2] % 4] = v
        elif f == "mul_ of columns":
            o[:, :2].mul_(2)
        elif f != "after the cat":
            o[:, :2] = v
        if f == "a read in between":
            rest.append(o.sum(1, keepdim=True))
        elif f == "the value written":
            v.mul_(2)
        h = torch.cat([o, self.b(x[:, 1])], dim=1)
        if f == "after the cat":
            o[:, :2] = v
        elif f == "read by a second cat":
            rest.append(torch.cat([o, o], 1))
        elif f == "returned":
            rest.append(o)
        return (h, *rest)


WRITES_LEFT = {
    "a row": "the lookup's output is written in place by setitem",
    "rows and columns": "the lookup's output is written in place by setitem",
    "a tensor index": "the lookup's output is written in place by setitem",
    "mul_ of columns": "the lookup's output is written in place by mul_",
    "a read in between": "reads the lookup's output before h, around the column write setitem",
    "after the cat": "comes after the lookup's output is read on its way to h",
    "the value written": "the value setitem writes is written in place by mul_ before h",
    "read by a second cat": "reads the written lookup output after h",
    "returned": "reads the written lookup output after h",
}


@pytest.mark.parametrize("form", list(WRITES_LEFT))
def test_column_writes_that_are_left_with_a_reason(form, caplog):
    model, x = WrittenColumns(form), _batch(5, (7, 11))
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        out_c = torch.compile(model, backend="inductor_embed")(x, torch.full((), 1.5))
    out_e = model(x, torch.full((), 1.5))
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    assert rewrites() == 0  # the written lookup, then its lone partner (and the second cat's)
    assert WRITES_LEFT[form] in caplog.text


# --- other users, shared and tied tables ----------------------------------------------

def test_lookup_with_other_users_before_and_after_the_cat():
    class Users(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables()

        def forward(self, x):
            e = [t(x[:, k]) for k, t in enumerate(self.tables)]
            before = e[0].sum(-1, keepdim=True)  # computed before the cat
            y = torch.cat(e, dim=-1)
            after = e[1] * 3.0  # computed after the cat: reads a slice of the fused output
            return torch.cat([y, before, after], dim=-1)

    compare_with_eager(Users(), [_batch(10, (7, 11, 13))])
    assert rewrites() == 1


def test_same_table_twice_and_tied_output_projection():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(20, 6)
            self.other = nn.Embedding(9, 6)

        def forward(self, a, b, c):
            h = torch.cat([self.tok(a), self.other(b), self.tok(c)], dim=-1)  # [B, 18]
            h = h.view(-1, 3, 6).sum(1)
            return F.linear(h, self.tok.weight)  # tied output projection

    compare_with_eager(Tied(), [torch.randint(0, 20, (12,)), torch.randint(0, 9, (12,)), torch.randint(0, 20, (12,))],
                       exact_forward=False)
    assert rewrites() == 1


def test_padding_idx_and_scale_grad_by_freq():
    class Opts(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Embedding(10, 4, padding_idx=0)
            self.b = nn.Embedding(10, 3, scale_grad_by_freq=True)
            self.c = nn.Embedding(10, 2, padding_idx=-1, scale_grad_by_freq=True)

        def forward(self, x):
            return torch.cat([self.a(x[:, 0]), self.b(x[:, 1]), self.c(x[:, 2])], dim=-1)

    x = torch.tensor([[0, 1, 9], [0, 1, 9], [3, 1, 2], [0, 5, 9]])
    compare_with_eager(Opts(), [x])
    assert rewrites() == 1


# --- dtypes ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_tables(dtype):
    compare_with_eager(CatModel(lambda xs: torch.cat(xs, -1), dtype=dtype), [_batch(16, (7, 11, 13))], dtype=dtype)
    assert rewrites() == 1


def test_mixed_dtypes_make_one_op_per_dtype_group():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = _tables(dims=(3, 2), vocabs=(7, 5))
            self.h = _tables(dims=(4, 1), vocabs=(6, 8), dtype=torch.bfloat16)

        def forward(self, x):
            return torch.cat([self.f[0](x[:, 0]), self.f[1](x[:, 1]), self.h[0](x[:, 2]), self.h[1](x[:, 3])], -1)

    compare_with_eager(Mixed(), [_batch(8, (7, 5, 6, 8))], dtype=torch.bfloat16)
    assert rewrites() == 2


# --- left untouched, with a reason --------------------------------------------------------

@pytest.mark.parametrize("kind", ["max_norm", "sparse"])
def test_max_norm_and_sparse_are_left_alone(kind, caplog):
    class Left(nn.Module):
        def __init__(self):
            super().__init__()
            # sparse=True alone is fused (tests/inductor_embed/test_sparse.py); with
            # scale_grad_by_freq eager raises in the backward, so it is left.
            kw = {"max_norm": 1.0} if kind == "max_norm" else {"sparse": True, "scale_grad_by_freq": True}
            self.a = nn.Embedding(10, 4, **kw)
            self.b = nn.Embedding(10, 3, **kw)

        def forward(self, x):
            return torch.cat([self.a(x[:, 0]), self.b(x[:, 1])], dim=-1)

    model = Left()
    x = torch.randint(0, 10, (5, 2))
    # no_grad: with gradients, sparse=True + scale_grad_by_freq raises eager's error when
    # the backward is traced (as in plain torch.compile).
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"), torch.no_grad():
        out = torch.compile(model, backend="inductor_embed")(x)
    assert rewrites() == 0 and skips() == 2
    assert kind.replace("sparse", "sparse=True") in caplog.text
    if kind == "sparse":
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_lookups_before_a_graph_break_are_logged(caplog):
    """Lookups that ran eagerly, across a graph break, reach the next graph as inputs: nothing
    to fuse there, and the log says so. FSDP2 with each table wrapped on its own does this
    (its hooks are dynamo-disabled: tests/reliability/test_fsdp.py); so does this model."""
    @torch._dynamo.disable
    def eager_lookups(tables, x):
        return [t(x[:, k]) for k, t in enumerate(tables)]

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(3, 5, 2), vocabs=(7, 11, 13))

        def forward(self, x):
            return torch.cat(eager_lookups(self.tables, x), dim=-1)

    with caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        compare_with_eager(Broken(), [_batch(6, (7, 11, 13))])
    assert rewrites() == 0 and skips() == 1
    assert ("3 inputs of cat are lookups that ran outside this graph, across a graph break; "
            "TORCH_LOGS=graph_breaks shows where the graph breaks") in caplog.text
    assert "FSDP" not in caplog.text  # no FSDP2 module here: the message does not guess one


def test_elementwise_step_between_lookup_and_cat_is_logged(caplog):
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(3, 5, 2, 4), vocabs=(7, 11, 13, 5))
            self.scale = nn.Parameter(torch.randn(3))

        def forward(self, x):
            e = [t(x[:, k]) for k, t in enumerate(self.tables)]
            return torch.cat([e[0] * self.scale, e[1], e[2], e[3]], dim=-1)

    with caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        compare_with_eager(Scale(), [_batch(6, (7, 11, 13, 5))])
    assert rewrites() == 1  # e[1..3] still fuse
    assert "sits between the lookup and the cat" in caplog.text


def test_cat_along_the_batch_dim_is_not_rewritten():
    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = _tables(dims=(4, 4), vocabs=(7, 11))

        def forward(self, x):
            return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=0)

    compare_with_eager(Rows(), [_batch(5, (7, 11))])
    assert rewrites() == 0 and skips() == 2  # one reason per lookup


def test_model_without_lookups_is_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    compare_with_eager(model, [torch.randn(3, 4)])
    assert rewrites() == 0 and skips() == 0


# --- semantics: errors, determinism, dynamic shapes --------------------------------------

def test_out_of_range_index_raises():
    model = FastMultiEmbeddingEquivalent()
    compiled = torch.compile(model, backend="inductor_embed")
    good = _batch(4, (100, 200, 300))
    compiled(good)
    for bad_value in (300, -1):
        bad = good.clone()
        bad[2, 1] = bad_value
        with pytest.raises((IndexError, RuntimeError), match="out of"):
            compiled(bad)
    assert rewrites() == 1


def test_deterministic_mode_matches_eager():
    model = CatModel(lambda xs: torch.cat(xs, -1))
    x = torch.randint(0, 7, (64, 3))  # many collisions
    with deterministic():
        compare_with_eager(model, [x])
    assert rewrites() == 1


def test_new_batch_sizes_do_not_recompile_once_dynamic():
    model = FastMultiEmbeddingEquivalent()
    compiled = torch.compile(model, backend="inductor_embed")
    for n in (8, 16, 32, 64, 5):
        x = _batch(n, (100, 200, 300))
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    # one static compile, one dynamic recompile at the second size, then none
    assert rewrites() == 2


def test_reduce_overhead_mode_passes_through():
    compare_with_eager(FastMultiEmbeddingEquivalent(), [_batch(8, (100, 200, 300))], mode="reduce-overhead")
    assert rewrites() == 1


# --- the switches: config, enable(), explain, logs ---------------------------------------

def test_config_switches_turn_the_rewrite_off():
    for patch in ({"multi_embedding_cat": False}, {"enabled": False}, {"min_tables": 4}):
        torch._dynamo.reset()
        with inductor_embed.config.patch(**patch):
            compare_with_eager(FastMultiEmbeddingEquivalent(), [_batch(4, (100, 200, 300))])
        assert rewrites() == 0, patch


def test_config_patch_rejects_unknown_fields():
    with pytest.raises(AttributeError, match="no field"):
        with inductor_embed.config.patch(not_a_field=True):
            pass


def test_rewrite_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="inductor_embed"):
        compare_with_eager(FastMultiEmbeddingEquivalent(), [_batch(4, (100, 200, 300))])
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("inductor_embed")]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("multi_embedding_cat: 3 tables -> inductor_embed.multi_embedding")
    assert "dims=[2, 4, 8]" in line and "dtype=fp32" in line and "index_shape=[4]" in line
    assert "embbeddings.0.weight[100x2 fp32]" in line


def test_wide_dims_under_inference_mode():
    model = CatModel(lambda xs: torch.cat(xs, -1), dims=(1024, 7, 1000), vocabs=(3, 5, 4))
    x = _batch(6, (3, 5, 4))
    compiled = torch.compile(model, backend="inductor_embed")
    with torch.inference_mode():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert out.shape == (6, 2031) and rewrites() == 1


def test_column_writes_the_op_cannot_take_left_on_the_cpu_by_default(caplog):
    """tests/conftest.py forces _internal.column_writes_on_cpu on; by the CPU rule a CPU lookup whose columns
    are written before the cat with a value the op cannot write itself (a Python number here)
    is left out of the cat (the write on the fused output would copy all of it), and taken
    alone by independent_lookups (its own output, written in place as eager's; left to
    Inductor, torch 2.11 emitted C++ that did not compile: pytorch/pytorch#179135); a tensor
    value is taken."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Embedding(10, 4), nn.Embedding(10, 4), nn.Embedding(10, 4)
            self.s = nn.Parameter(torch.randn(2))

        def forward(self, x):
            o = self.a(x)
            o[:, :2] = 0.5
            p = self.b(x)
            p[:, 1:3] = self.s.expand(x.shape[0], -1)
            return torch.cat([o, p, self.c(x)], -1)

    x = torch.randint(0, 10, (6,))
    with inductor_embed._internal.patch(column_writes_on_cpu=False), caplog.at_level(logging.DEBUG, "inductor_embed"):
        compare_with_eager(Shared(), (x,))
        report = inductor_embed.explain(Shared(), x)
    assert rewrites() == 1 and len(report.rewrites[0].tables) == 2  # b (its write taken by the op) and c
    assert [(r.pattern, r.replaced) for r in report.rewrites[1:]] == [("independent_lookups", ("o",))]
    assert "written in place (setitem) with a Python number or a non-tensor (setitem): on the CPU that write " \
           "on the fused output copies the whole output" in caplog.text, caplog.text


class _ZeroColumns(nn.Module):
    """A cat of lookups some (or all) of whose tables are 0 columns wide."""

    def __init__(self, dims):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(5 + k, d) for k, d in enumerate(dims))

    def forward(self, x):
        return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], -1) * 2 + 1


@pytest.mark.parametrize("dims", [(0, 0), (0, 3, 0)], ids=["all", "some"])
def test_zero_column_tables_in_a_cat(dims):
    """Review finding: with every table 0 columns wide the CPU backward counted 0 positions
    and its ATen fallback raised on the 7 indices; eager's gradients are [V, 0] (and the
    others' where a table has columns)."""
    x = torch.stack([torch.randint(0, 5 + k, (7,)) for k in range(len(dims))], 1)
    compare_with_eager(_ZeroColumns(dims), [x])
