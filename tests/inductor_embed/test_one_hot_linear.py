"""End to end: Linear / matmul on one-hot inputs, compiled with inductor_embed vs eager.

Every case compiles once, checks outputs and every gradient against eager, and checks
from the counters that the rewrite fired (or was skipped, and why). Skips that need no
compiled code are checked with ``explain`` or ``rewritten_code`` (Dynamo only).
"""

from __future__ import annotations

import logging

import expecttest
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import inductor_embed
from inductor_embed.graph_pass import run_patterns
from tests.inductor_embed._util import compare_with_eager, rewrites, rewritten_code, skips

NAME = "one_hot_linear"
torch.manual_seed(0)


# --- the article "Embedding vs Linear layer in PyTorch", as it writes it --------------

def _embedding_and_linear(V=4, dims=5):
    """The article's two layers, the Linear's weight tied to the Embedding's (transposed)."""
    embedding = torch.nn.Embedding(V, dims)
    linear = torch.nn.Linear(V, dims, bias=False)
    linear.weight = torch.nn.Parameter(embedding.weight.T)
    return embedding, linear


class LinearOnOneHot(nn.Module):
    """``linear(one_hot(idx).float())``: the article's Linear, with the one-hot width given."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.embedding, self.linear = _embedding_and_linear()
        self.num_classes = num_classes

    def forward(self, idx):
        onehot_idx = torch.nn.functional.one_hot(idx, self.num_classes)
        return self.linear(onehot_idx.float())


def test_linear_on_one_hot_is_rewritten_and_is_the_embedding():
    model = LinearOnOneHot()
    idx = torch.tensor([2, 3, 1])
    out = compare_with_eager(model, [idx])
    assert rewrites(NAME) == 1
    torch.testing.assert_close(out, model.embedding(idx), rtol=0, atol=0)


def test_literal_one_hot_without_num_classes_breaks_the_graph():
    """The article's ``one_hot(idx)`` has num_classes=-1: Dynamo breaks the graph at the
    data-dependent one-hot, so the linear sees a graph input and nothing is rewritten."""

    class Literal(LinearOnOneHot):
        def forward(self, idx):
            return self.linear(torch.nn.functional.one_hot(idx).float())

    compare_with_eager(Literal(), [torch.tensor([2, 3, 1])])
    assert rewrites(NAME) == 0


def test_num_classes_minus_one_is_skipped_with_a_reason():
    """Dynamo never records one_hot(idx, -1); a hand-built graph, with the metadata Dynamo
    would give it (a width of 4 standing in for the data-dependent one), shows the guard."""
    gm = torch.fx.symbolic_trace(lambda i, w: F.linear(F.one_hot(i).float(), w))
    with FakeTensorMode():
        vals = [torch.empty(3, dtype=torch.long), torch.empty(5, 4), torch.empty(3, 4, dtype=torch.long),
                torch.empty(3, 4), torch.empty(3, 5)]
    for node, val in zip(gm.graph.nodes, vals):
        node.meta["val"] = val
    report = run_patterns(gm.graph, apply=False)
    assert not report.rewrites
    assert [s.reason for s in report.skipped] == ["num_classes=-1: the one-hot width depends on the data (max index + 1)"]


# --- forms of the linear ------------------------------------------------------------------

class Layer(nn.Module):
    def __init__(self, form, n=7, d=5, bias=True, dtype=torch.float32):
        super().__init__()
        self.n, self.form = n, form
        self.lin = nn.Linear(n, d, bias=bias, dtype=dtype)
        self.table = nn.Parameter(torch.randn(n, d, dtype=dtype))  # a [V, D] weight for oh @ table

    def forward(self, idx):
        return FORMS[self.form](self, idx)


FORMS = {
    "nn.Linear-float": lambda m, i: m.lin(F.one_hot(i, m.n).float()),
    "F.linear-to-dtype": lambda m, i: F.linear(F.one_hot(i, m.n).to(torch.float32), m.lin.weight),
    "at-T-to-W.dtype": lambda m, i: F.one_hot(i, m.n).to(m.lin.weight.dtype) @ m.lin.weight.T,
    "matmul-t-type_as": lambda m, i: torch.matmul(F.one_hot(i, m.n).type_as(m.lin.weight), m.lin.weight.t()),
    "mm-permute": lambda m, i: torch.mm(F.one_hot(i, num_classes=m.n).float(), m.lin.weight.permute(1, 0)),
    "method-matmul-transpose": lambda m, i: F.one_hot(i, m.n).float().matmul(m.lin.weight.transpose(0, 1)),
    "at-VxD-table": lambda m, i: F.one_hot(i, m.n).float() @ m.table,
    "half": lambda m, i: m.lin(F.one_hot(i, m.n).half()),
    "bfloat16": lambda m, i: m.lin(F.one_hot(i, m.n).bfloat16()),
}


@pytest.mark.parametrize("form, lead", [
    ("nn.Linear-float", (4, 3)),
    ("F.linear-to-dtype", (6,)),
    ("at-T-to-W.dtype", (2, 3, 2)),
    ("matmul-t-type_as", (5,)),
    ("mm-permute", (9,)),
    ("method-matmul-transpose", (3, 4)),
    ("at-VxD-table", (6,)),
])
def test_linear_forms(form, lead):
    idx = torch.randint(0, 7, lead)
    idx.view(-1)[0] = idx.view(-1)[1]  # a repeated index: gradients collide
    out = compare_with_eager(Layer(form), [idx])
    assert out.shape == (*lead, 5)
    assert rewrites(NAME) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_weights(dtype):
    form = "half" if dtype == torch.float16 else "bfloat16"
    out = compare_with_eager(Layer(form, n=11, d=6, dtype=dtype), [torch.randint(0, 11, (16,))],
                             dtype=dtype)
    assert out.dtype == dtype and rewrites(NAME) == 1


def test_frozen_weight_and_trainable_bias():
    model = Layer("nn.Linear-float")
    model.lin.weight.requires_grad_(False)
    model.table.requires_grad_(False)
    compare_with_eager(model, [torch.randint(0, 7, (8,))])
    assert rewrites(NAME) == 1


# --- several fields, dense neighbours, multi-hot -----------------------------------------

class Critic(nn.Module):
    """An RL critic Q(s, a) on one-hot actions: Linear(cat([state, one_hot(action)]))."""

    def __init__(self, state_dim=6, num_actions=5, hidden=8):
        super().__init__()
        self.num_actions = num_actions
        self.fc = nn.Linear(state_dim + num_actions, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, state, action):
        x = torch.cat([state, F.one_hot(action, self.num_actions).float()], dim=-1)
        return self.out(torch.relu(self.fc(x)))


def test_rl_critic_on_one_hot_actions_keeps_the_state_matmul():
    state = torch.randn(10, 6, requires_grad=True)
    action = torch.randint(0, 5, (10,))
    compare_with_eager(Critic(), [state, action], exact_forward=False)
    assert rewrites(NAME) == 1


class Tabular(nn.Module):
    """One-hot encoding of a table's categorical columns, fed to a first Linear."""

    def __init__(self, cards=(3, 6, 2), d=4, spelling="cat"):
        super().__init__()
        self.cards, self.spelling = cards, spelling
        self.fc = nn.Linear(sum(cards) + (1 if spelling == "column_stack" else 0), d)

    def forward(self, x, amount):
        ohs = [F.one_hot(x[:, k], n) for k, n in enumerate(self.cards)]
        if self.spelling == "cat":
            return self.fc(torch.cat(ohs, dim=1).float())  # cast after the cat
        # a 1-D dense column between the one-hot fields
        return self.fc(torch.column_stack([ohs[0].float(), amount, ohs[1].float(), ohs[2].float()]))


@pytest.mark.parametrize("spelling", ["cat", "column_stack"])
def test_multi_field_one_hot_table(spelling):
    x = torch.stack([torch.randint(0, n, (12,)) for n in (3, 6, 2)], dim=1)
    amount = torch.randn(12, requires_grad=True)
    compare_with_eager(Tabular(spelling=spelling), [x, amount], exact_forward=False)
    assert rewrites(NAME) == 1


class Bags(nn.Module):
    """Multi-hot bags: one_hot(...).sum(dim), cast after or before the sum."""

    def __init__(self, n=9, d=4):
        super().__init__()
        self.n = n
        self.a, self.b = nn.Linear(n, d), nn.Linear(n, d, bias=False)

    def forward(self, rows, cols):
        per_row = self.a(F.one_hot(rows, self.n).sum(1).float())  # rows [B, L]
        per_col = self.b(F.one_hot(cols, self.n).float().sum(0))  # cols [L, B]: bag dim first
        return per_row + per_col


def test_multi_hot_bags_become_pooled_gathers():
    rows = torch.randint(0, 9, (7, 3))
    rows[0] = 4  # a category three times in one bag
    cols = torch.randint(0, 9, (2, 7))
    compare_with_eager(Bags(), [rows, cols], exact_forward=False)
    assert rewrites(NAME) == 2


def test_multi_hot_counts_past_bf16_precision_are_skipped():
    lin = nn.Linear(3, 2, dtype=torch.bfloat16)
    report = inductor_embed.explain(lambda b: lin(F.one_hot(b, 3).sum(1).bfloat16()),
                                    torch.randint(0, 3, (2, 300)))
    assert not report.rewrites
    assert "bag of 300 categories" in report.skipped[0].reason and "bfloat16" in report.skipped[0].reason


# --- autocast ----------------------------------------------------------------------------

class AutocastModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(7, 5)
        self.critic = Critic()

    def forward(self, idx, state):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.lin(F.one_hot(idx, 7).float()), self.critic.fc(
                torch.cat([state, F.one_hot(idx % 5, 5).float()], -1))


def test_autocast_bf16_matches_eager_dtype_and_values():
    model = AutocastModel()
    compiled = torch.compile(model, backend="inductor_embed")
    idx, state = torch.randint(0, 7, (8,)), torch.randn(8, 6)
    eager, got = model(idx, state), compiled(idx, state)
    for e, c in zip(eager, got):
        assert c.dtype == e.dtype == torch.bfloat16
        torch.testing.assert_close(c, e, rtol=2e-2, atol=2e-2)
    grads = [torch.randn_like(e) for e in eager]
    eager_grads = torch.autograd.grad(eager, list(model.parameters())[:4], grads)
    got_grads = torch.autograd.grad(got, list(model.parameters())[:4], grads)
    for e, c in zip(eager_grads, got_grads):
        assert c.dtype == e.dtype == torch.float32  # autocast's cast back to the fp32 weight
        torch.testing.assert_close(c, e, rtol=2e-2, atol=2e-2)
    assert rewrites(NAME) == 2


# --- a one-hot scaled before the Linear --------------------------------------------------

class ScaledOneHot(nn.Module):
    """A feature-scaling layer (one learned scale per class) and an ensemble-style member
    scale (one learned value) on one-hot inputs, three sites in one model."""

    def __init__(self, n=7, d=5, dtype=torch.float32):
        super().__init__()
        self.n = n
        self.lin = nn.Linear(n, d, dtype=dtype)
        self.table = nn.Parameter(torch.randn(n, d, dtype=dtype))
        self.r = nn.Parameter(torch.randn(n, dtype=dtype))
        self.g = nn.Parameter(torch.randn(1, dtype=dtype))
        self.fields = nn.Linear(2 * n, d, bias=False, dtype=dtype)

    def forward(self, idx):
        oh = F.one_hot(idx, self.n)
        scaled = self.lin(oh.to(self.r.dtype) * self.r)  # bias added after the scale
        by_table = (self.r.unsqueeze(0) * oh.to(self.r.dtype)) @ self.table
        member = self.fields(torch.cat([oh, F.one_hot(idx.flip(0), self.n)], -1).to(self.g.dtype) * self.g)
        return scaled + by_table + member


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_scaled_one_hot(dtype):
    idx = torch.randint(0, 7, (10,))
    idx[:3] = 2  # repeated classes: gradients of W and r collide
    out = compare_with_eager(ScaledOneHot(dtype=dtype), [idx], dtype=dtype, exact_forward=False)
    assert out.dtype == dtype  # r's gradient is checked with W's and the bias's
    assert rewrites(NAME) == 3 and skips(NAME) == 0


def test_scaled_one_hot_out_of_range_raises_the_one_hot_error():
    model = ScaledOneHot()
    compiled = torch.compile(model, backend="inductor_embed")
    with torch.no_grad():
        compiled(torch.randint(0, 7, (4,)))
        with pytest.raises(RuntimeError, match="Class values"):
            compiled(torch.tensor([0, 7, 1, 2]))
    assert rewrites(NAME) == 3


def test_scales_that_are_not_per_class_are_left_with_a_reason():
    lin, lin2 = nn.Linear(6, 3), nn.Linear(12, 3)
    r, rows = torch.randn(6), torch.randn(4, 6)

    def fn(x, y, dense):
        oh, oh2 = F.one_hot(x, 6).float(), F.one_hot(y, 6).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = lin(oh * r)
        return (lin(oh * 0.5), lin(oh * rows), lin2(torch.cat([oh, oh2], -1) * torch.cat([r, r])),
                lin(F.one_hot(torch.stack([x, y], -1), 6).sum(-2).float() * r),
                lin2(torch.cat([oh, dense], -1) * torch.cat([r, r])), auto, lin(oh * r.expand(4, 6)))

    report = inductor_embed.explain(fn, torch.randint(0, 6, (4,)), torch.randint(0, 6, (4,)), torch.randn(4, 6))
    reasons = [s.reason for s in report.skipped if s.pattern == NAME]
    expected = ["by a Python number", "by a [4, 6] tensor: not a scale broadcast over the rows",
                "r scales 2 one-hot fields class by class", "a multi-hot bag is scaled",
                "the scaled cat has dense pieces", "under autocast", "by a [4, 6] tensor"]
    assert len(reasons) == len(expected) and all(any(e in r for r in reasons) for e in expected), reasons
    assert not report.rewrites


# --- other users, errors, NaN, hazards, switches ------------------------------------------

def test_one_hot_with_other_users_keeps_them():
    class Users(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(7, 3)

        def forward(self, idx):
            oh = F.one_hot(idx, 7).float()
            return self.lin(oh) + oh.sum(-1, keepdim=True)  # oh also feeds a reduction

    model = Users()
    idx = torch.randint(0, 7, (6,))
    code = rewritten_code(model, idx)
    assert "one_hot_linear" in code and "one_hot(" in code and "linear(" not in code.replace("one_hot_linear", "")
    torch._dynamo.reset()
    compare_with_eager(model, [idx])


def test_out_of_range_index_raises():
    model = Layer("nn.Linear-float")
    compiled = torch.compile(model, backend="inductor_embed")
    good = torch.randint(0, 7, (5,))
    compiled(good)
    for bad_value in (7, -1):
        bad = good.clone()
        bad[3] = bad_value
        with pytest.raises(RuntimeError, match="Class values"):
            model(bad)  # eager F.one_hot's own error
        with pytest.raises(RuntimeError, match="Class values"):
            compiled(bad)
    assert rewrites(NAME) == 1


def _inf_model():
    model = Layer("nn.Linear-float")
    with torch.no_grad():
        model.lin.weight[2, 4] = float("inf")  # output feature 2 of class 4
    return model


@pytest.mark.parametrize("enabled", [True, False], ids=["gather", "switched-off"])
def test_inf_in_weight_documented_deviation(enabled):
    """The dense matmul turns an inf weight into NaN (0 * inf) on every row that does not
    select its column; the gather leaves those rows finite. one_hot_linear=False restores
    the dense behaviour."""
    model = _inf_model()
    idx = torch.tensor([4, 0, 1, 4, 6])
    with inductor_embed.config.patch(one_hot_linear=enabled), torch.no_grad():
        out = torch.compile(model, backend="inductor_embed")(idx)
        eager = model(idx)
    # eager: 1 * inf = inf where the row selects class 4, 0 * inf = NaN everywhere else
    assert eager[idx == 4, 2].isinf().all() and eager[idx != 4, 2].isnan().all()
    if enabled:
        assert rewrites(NAME) == 1
        assert out[idx == 4, 2].isinf().all() and out[idx != 4, 2].isfinite().all()
        torch.testing.assert_close(out[:, [0, 1, 3, 4]], eager[:, [0, 1, 3, 4]], rtol=0, atol=0)
    else:
        assert rewrites(NAME) == 0
        torch.testing.assert_close(out, eager, equal_nan=True)


def test_one_hot_written_in_place_is_left():
    lin = nn.Linear(5, 2)

    def fn(idx):
        oh = F.one_hot(idx, 5).float()
        oh[:, 0] = 0.5  # the matmul reads the written value
        return lin(oh)

    report = inductor_embed.explain(fn, torch.randint(0, 5, (4,)))
    assert not report.rewrites
    assert "written in place" in report.skipped[0].reason


def test_config_switches_and_min_classes():
    model, idx = Layer("nn.Linear-float"), torch.randint(0, 7, (4,))
    assert len(inductor_embed.explain(model, idx).rewrites) == 1
    for patch in ({"one_hot_linear": False}, {"enabled": False}):
        with inductor_embed.config.patch(**patch):
            assert not inductor_embed.explain(model, idx).rewrites, patch
    with inductor_embed._internal.patch(one_hot_linear_min_classes=8):
        report = inductor_embed.explain(model, idx)
    assert not report.rewrites and "one_hot_linear_min_classes=8" in report.skipped[0].reason


def test_new_batch_sizes_do_not_recompile_once_dynamic():
    model = Layer("nn.Linear-float")
    compiled = torch.compile(model, backend="inductor_embed")
    with torch.no_grad():
        for n in (8, 16, 5, 33):
            idx = torch.randint(0, 7, (n,))
            torch.testing.assert_close(compiled(idx), model(idx), rtol=0, atol=0)
    assert rewrites(NAME) == 2  # one static compile, one dynamic recompile, then none


def test_rewrite_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="inductor_embed"):
        rewritten_code(Tabular(), torch.stack([torch.randint(0, n, (3,)) for n in (3, 6, 2)], 1), torch.randn(3))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("inductor_embed")]
    assert lines == [
        "one_hot_linear: 3 tables -> inductor_embed.one_hot_linear (dims=[4, 4, 4], dtype=fp32, index_shape=[3]) "
        "replacing [one_hot, one_hot_1, one_hot_2, cat, float_1, linear]; tables: fc.weight[:, 0:3][3x4 fp32], "
        "fc.weight[:, 3:9][6x4 fp32], fc.weight[:, 9:11][2x4 fp32]"
    ]
    assert skips(NAME) == 0


# --- the rewritten graphs, pinned ----------------------------------------------------------
# Regenerate after an intended change with EXPECTTEST_ACCEPT=1 python -m pytest <this file>.

class TestGraphPins(expecttest.TestCase):
    def setUp(self):
        torch._dynamo.reset()

    def test_linear_on_one_hot(self):
        code = rewritten_code(LinearOnOneHot(), torch.tensor([2, 3, 1]))
        self.assertExpectedInline(code, """\
def forward(self, L_idx_ : torch.Tensor, L_self_modules_linear_parameters_weight_ : torch.nn.parameter.Parameter):
    unsqueeze = torch.unsqueeze(l_idx_, -1);  l_idx_ = None
    one_hot_linear_default = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze], [4], [0], l_self_modules_linear_parameters_weight_);  unsqueeze = l_self_modules_linear_parameters_weight_ = None
    return (one_hot_linear_default,)""")

    def test_scaled_one_hot_with_bias(self):
        model = ScaledOneHot()
        code = rewritten_code(lambda i: model.lin(F.one_hot(i, 7).float() * model.r), torch.tensor([2, 3, 1]))
        self.assertExpectedInline(code, """\
def forward(self, L_i_ : torch.Tensor, L_model_parameters_r_ : torch.nn.parameter.Parameter, L_model_modules_lin_parameters_weight_ : torch.nn.parameter.Parameter, L_model_modules_lin_parameters_bias_ : torch.nn.parameter.Parameter):
    unsqueeze = torch.unsqueeze(l_i_, -1);  l_i_ = None
    one_hot_linear_default = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze], [7], [0], l_model_modules_lin_parameters_weight_);  l_model_modules_lin_parameters_weight_ = None
    reshape = torch.reshape(l_model_parameters_r_, (1, 7));  l_model_parameters_r_ = None
    one_hot_linear_default_1 = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze], [7], [0], reshape);  unsqueeze = reshape = None
    mul_1 = one_hot_linear_default * one_hot_linear_default_1;  one_hot_linear_default = one_hot_linear_default_1 = None
    add = mul_1 + l_model_modules_lin_parameters_bias_;  mul_1 = l_model_modules_lin_parameters_bias_ = None
    return (add,)""")

    def test_rl_critic_dense_state_beside_one_hot_action(self):
        code = rewritten_code(Critic(), torch.randn(3, 6), torch.randint(0, 5, (3,)))
        self.assertExpectedInline(code, """\
def forward(self, L_action_ : torch.Tensor, L_state_ : torch.Tensor, L_self_modules_fc_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_fc_parameters_bias_ : torch.nn.parameter.Parameter, L_self_modules_out_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_out_parameters_bias_ : torch.nn.parameter.Parameter):
    unsqueeze = torch.unsqueeze(l_action_, -1);  l_action_ = None
    one_hot_linear_default = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze], [5], [6], l_self_modules_fc_parameters_weight_, l_self_modules_fc_parameters_bias_);  unsqueeze = l_self_modules_fc_parameters_bias_ = None
    narrow = torch.narrow(l_self_modules_fc_parameters_weight_, 1, 0, 6);  l_self_modules_fc_parameters_weight_ = None
    linear_2 = torch._C._nn.linear(l_state_, narrow);  l_state_ = narrow = None
    add = one_hot_linear_default + linear_2;  one_hot_linear_default = linear_2 = None
    relu = torch.relu(add);  add = None
    linear_1 = torch._C._nn.linear(relu, l_self_modules_out_parameters_weight_, l_self_modules_out_parameters_bias_);  relu = l_self_modules_out_parameters_weight_ = l_self_modules_out_parameters_bias_ = None
    return (linear_1,)""")

    def test_multi_hot_bags(self):
        code = rewritten_code(Bags(), torch.randint(0, 9, (4, 3)), torch.randint(0, 9, (2, 4)))
        self.assertExpectedInline(code, """\
def forward(self, L_rows_ : torch.Tensor, L_self_modules_a_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_a_parameters_bias_ : torch.nn.parameter.Parameter, L_cols_ : torch.Tensor, L_self_modules_b_parameters_weight_ : torch.nn.parameter.Parameter):
    one_hot_linear_default = torch.ops.inductor_embed.one_hot_linear.default([l_rows_], [9], [0], l_self_modules_a_parameters_weight_, l_self_modules_a_parameters_bias_);  l_rows_ = l_self_modules_a_parameters_weight_ = l_self_modules_a_parameters_bias_ = None
    movedim = torch.movedim(l_cols_, [0], [1]);  l_cols_ = None
    one_hot_linear_default_1 = torch.ops.inductor_embed.one_hot_linear.default([movedim], [9], [0], l_self_modules_b_parameters_weight_);  movedim = l_self_modules_b_parameters_weight_ = None
    add = one_hot_linear_default + one_hot_linear_default_1;  one_hot_linear_default = one_hot_linear_default_1 = None
    return (add,)""")

    def test_autocast(self):
        code = rewritten_code(AutocastModel(), torch.randint(0, 7, (4,)), torch.randn(4, 6))
        self.assertExpectedInline(code, """\
def forward(self, L_idx_ : torch.Tensor, L_self_modules_lin_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_lin_parameters_bias_ : torch.nn.parameter.Parameter, L_state_ : torch.Tensor, L_self_modules_critic_modules_fc_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_critic_modules_fc_parameters_bias_ : torch.nn.parameter.Parameter):
    _enter_autocast = torch.amp.autocast_mode._enter_autocast('cpu', torch.bfloat16, True, None)
    unsqueeze = torch.unsqueeze(l_idx_, -1)
    one_hot_linear_default = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze], [7], [0], l_self_modules_lin_parameters_weight_, l_self_modules_lin_parameters_bias_, torch.bfloat16);  unsqueeze = l_self_modules_lin_parameters_weight_ = l_self_modules_lin_parameters_bias_ = None
    mod = l_idx_ % 5;  l_idx_ = None
    unsqueeze_1 = torch.unsqueeze(mod, -1);  mod = None
    one_hot_linear_default_1 = torch.ops.inductor_embed.one_hot_linear.default([unsqueeze_1], [5], [6], l_self_modules_critic_modules_fc_parameters_weight_, l_self_modules_critic_modules_fc_parameters_bias_, torch.bfloat16);  unsqueeze_1 = l_self_modules_critic_modules_fc_parameters_bias_ = None
    narrow = torch.narrow(l_self_modules_critic_modules_fc_parameters_weight_, 1, 0, 6);  l_self_modules_critic_modules_fc_parameters_weight_ = None
    to = l_state_.to(torch.bfloat16);  l_state_ = None
    to_1 = narrow.to(torch.bfloat16);  narrow = None
    linear_2 = torch._C._nn.linear(to, to_1);  to = to_1 = None
    add = one_hot_linear_default_1 + linear_2;  one_hot_linear_default_1 = linear_2 = None
    _exit_autocast = torch.amp.autocast_mode._exit_autocast(_enter_autocast);  _enter_autocast = _exit_autocast = None
    return (one_hot_linear_default, add)""")


@pytest.mark.parametrize("spelling", ["getattr-T", "getattr-mT", "aten.numpy_T", "aten.mT", "t", "transpose"])
def test_transpose_of_every_dynamo_spelling(spelling: str) -> None:
    """``w.T`` reaches the pass as ``getattr(w, "T")`` (torch <= 2.13) or as
    ``aten.numpy_T(w)`` / ``aten.mT(w)`` (torch >= 2.14's Dynamo): each is seen through, so
    ``one_hot(i, n) @ W.T`` hands the fused op ``W`` itself, not a transposed view of it."""
    from torch import fx

    from inductor_embed.patterns import _fx

    g = fx.Graph()
    w = g.placeholder("w")
    w.meta["val"] = torch.empty(3, 5)
    target = {"getattr-T": (getattr, (w, "T")), "getattr-mT": (getattr, (w, "mT")),
              "aten.numpy_T": (torch.ops.aten.numpy_T.default, (w,)), "aten.mT": (torch.ops.aten.mT, (w,)),
              "t": (torch.t, (w,)), "transpose": (torch.transpose, (w, 0, 1))}[spelling]
    node = g.call_function(*target)
    node.meta["val"] = torch.empty(5, 3)
    assert _fx.transpose_of(node) is w
    assert _fx.transpose_of(g.call_function(torch.ops.aten.numpy_T.default, (node,))) is node
    assert _fx.transpose_of(g.call_function(torch.ops.aten.relu.default, (w,))) is None


@pytest.mark.parametrize("form", ["einsum", "tensordot", "ensemble"])
def test_other_contractions_are_logged_never_silent(form: str) -> None:
    """A one-hot feeding a contraction the pattern does not take gets a reason naming the op
    and the steps on the way (never "0 rewrite(s), 0 skipped")."""
    w, wk = torch.randn(10, 4), torch.randn(3, 5, 4)
    x = torch.randint(0, 10, (6, 2))

    def fn(x):
        oh = F.one_hot(x[:, 0], 10).float()
        if form == "einsum":
            return torch.einsum("bn,nd->bd", oh, w)
        if form == "tensordot":
            return torch.tensordot(oh, w, dims=1)
        feats = torch.column_stack([F.one_hot(x[:, 0], 10), F.one_hot(x[:, 1] % 5, 5)]).float()
        # the features split into 3 groups of 5, not copied to each member: not the ensemble form
        return torch.einsum("bki,kio->bko", feats.view(-1, 3, 5), wk)

    report = inductor_embed.explain(fn, x)
    assert not report.rewrites and report.skipped
    op = {"einsum": "`einsum` (einsum)", "tensordot": "`tensordot` (tensordot)",
          "ensemble": "`view` (view), `einsum` (einsum)"}[form]
    for s in report.skipped:
        assert s.reason.startswith(f"{s.node} reaches a contraction through `") and op in s.reason, s.reason
    assert {s.node for s in report.skipped} == ({"one_hot"} if form != "ensemble" else {"one_hot_1", "one_hot_2"})
