"""End to end: models that add up lookups (BERT-, GPT-style embeddings, graph atom encoders),
compiled with inductor_embed vs eager: outputs and every gradient, fp32 and bf16; the
counters say the rewrite fired, the logs say why a candidate was left."""

from __future__ import annotations

import copy
import logging
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters

import inductor_embed
from tests.inductor_embed._util import TOL, compare_with_eager, rewrites, skips

NAME = "multi_embedding_sum"
DTYPES = [torch.float32, torch.bfloat16]


# --- models of the three forms, written as the libraries write them ------------------------


class BertEmbeddings(nn.Module):
    """word + token type, then ``+=`` position, then LayerNorm. ``positions``: "buffer" reads
    a ``[1, S]`` slice of a registered arange (HF's position_ids), "arange" makes ``[S]``."""

    def __init__(self, vocab=50, max_pos=16, types=2, dim=8, positions="buffer"):
        super().__init__()
        self.word = nn.Embedding(vocab, dim, padding_idx=0)
        self.position = nn.Embedding(max_pos, dim)
        self.token_type = nn.Embedding(types, dim)
        self.norm = nn.LayerNorm(dim)
        self.positions = positions
        self.register_buffer("position_ids", torch.arange(max_pos).expand((1, -1)), persistent=False)

    def forward(self, ids, token_types):
        s = ids.shape[1]
        pos = self.position_ids[:, :s] if self.positions == "buffer" else torch.arange(s, device=ids.device)
        embeddings = self.word(ids) + self.token_type(token_types)
        embeddings += self.position(pos)
        return self.norm(embeddings)


class GPTEmbeddings(nn.Module):
    """wte + wpe, a LayerNorm, and the output head tied to wte.weight."""

    def __init__(self, vocab=40, ctx=12, dim=8, head="matmul"):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(ctx, dim)
        self.ln = nn.LayerNorm(dim)
        self.head = head

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.ln(self.wte(ids) + self.wpe(pos))
        return h @ self.wte.weight.T if self.head == "matmul" else F.linear(h, self.wte.weight)


ATOM_FEATURES = (119, 5, 12, 12, 10, 6, 6, 2, 2)  # the vocabularies of an OGB-style atom encoder


class AtomEncoder(nn.Module):
    """One lookup per feature column, summed in a loop: ``start`` "zero" (``h = 0; h += ...``)
    or "first" (``h = emb_0(x[:, 0]); h = h + ...``)."""

    def __init__(self, dim=8, start="zero"):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in ATOM_FEATURES)
        self.start = start

    def forward(self, x):
        if self.start == "zero":
            h = 0
            for i, emb in enumerate(self.embeddings):
                h += emb(x[:, i])
            return h
        h = self.embeddings[0](x[:, 0])
        for i in range(1, len(self.embeddings)):
            h = h + self.embeddings[i](x[:, i])
        return h


def _bert_inputs(b=3, s=7):
    return torch.randint(0, 50, (b, s)), torch.randint(0, 2, (b, s))


def _atoms(n=13):
    return torch.stack([torch.randint(0, v, (n,)) for v in ATOM_FEATURES], dim=1)


def _ids(text: str):
    return lambda v: text.format(str(v).replace("torch.", ""))


# --- the three forms -----------------------------------------------------------------------


def _compare(model: nn.Module, inputs: tuple, dtype: torch.dtype, exact_forward: bool = False) -> None:
    """``compare_with_eager``; for bf16 models with a LayerNorm the oracle is eager on an fp32
    copy of the model (the same bf16 values, upcast): eager's own bf16 LayerNorm backward
    rounds differently from Inductor's and strays past bf16 tolerance from plain
    torch.compile too (norm.weight's gradient, 0.035 off on 8 elements). The gradients'
    tolerance scales with their size (bf16 keeps 8 bits of any magnitude)."""
    if dtype == torch.float32 and exact_forward:
        compare_with_eager(model, inputs, exact_forward=True)
        return
    # fp32 with a LayerNorm: Inductor's LayerNorm backward reduces in another order than
    # eager's (with or without the plugin), a few 1e-6 off on its weight/bias gradients.
    tol = TOL[dtype] if dtype != torch.float32 else {"rtol": 1e-5, "atol": 1e-5}
    ref = copy.deepcopy(model).float()
    compiled_model = copy.deepcopy(model)
    out_c = torch.compile(compiled_model, backend="inductor_embed")(*inputs)
    out_e = ref(*inputs)
    torch.testing.assert_close(out_c.float(), out_e, **tol)
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad.to(dtype))
    for (name, p), q in zip(ref.named_parameters(), compiled_model.parameters()):
        # Relative to the gradient's scale: a tied table's gradient is the sum of two bf16
        # results (head and lookups) that may cancel to far less than either.
        atol = tol["atol"] * max(1.0, p.grad.abs().max().item())
        torch.testing.assert_close(q.grad.float(), p.grad, rtol=tol["rtol"], atol=atol,
                                   msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("positions", ["buffer", "arange"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids("{}"))
def test_bert_style(positions, dtype):
    model = BertEmbeddings(positions=positions).to(dtype)
    ids, tt = _bert_inputs()
    ids[0, 0] = 0  # a padding token: its row gets no gradient
    # LayerNorm: Inductor's reduction order differs from eager's, so the forward is not bit-equal.
    _compare(model, (ids, tt), dtype)
    assert rewrites(NAME) == 1


@pytest.mark.parametrize("head", ["matmul", "linear"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids("{}"))
def test_gpt_style_with_tied_head(head, dtype):
    model = GPTEmbeddings(head=head).to(dtype)
    _compare(model, (torch.randint(0, 40, (2, 9)),), dtype)
    assert rewrites(NAME) == 1


@pytest.mark.parametrize("start", ["zero", "first"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids("{}"))
def test_atom_encoder_nine_tables(start, dtype):
    model = AtomEncoder(start=start).to(dtype)
    # bf16: against eager on an fp32 copy. Eager rounds to bf16 after each of the 9 adds,
    # Inductor's fused sum once at the end (more precise; one element in ~100 strays past
    # 0.02 from eager's bf16 result).
    _compare(model, (_atoms(),), dtype, exact_forward=True)
    assert rewrites(NAME) == 1


def test_triton_backward_path(path):
    """BERT-style with a broadcast position table, its backward on the Triton kernel (the
    interpreter on the CPU) when ``path`` says so: one launch for all three tables."""
    compare_with_eager(BertEmbeddings(positions="arange"), _bert_inputs(), exact_forward=False)
    assert rewrites(NAME) == 1


def test_dynamic_batch_does_not_recompile():
    model = BertEmbeddings()
    compiled = torch.compile(model, backend="inductor_embed", dynamic=True)
    for b in (3, 5, 6):
        inputs = _bert_inputs(b)
        torch.testing.assert_close(compiled(*inputs), model(*inputs))
    # One graph for every batch size (the pass runs twice on it: Dynamo restarts its analysis
    # once under dynamic=True, to tensorify Python scalars).
    assert counters["stats"]["unique_graphs"] == 1 and rewrites(NAME) >= 1


# --- other terms, other users ----------------------------------------------------------------


class WithTerms(nn.Module):
    """Lookups with a dense tensor and a Python number between them, and a lookup that is also
    returned on its own."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Embedding(7, 4), nn.Embedding(5, 4), nn.Embedding(9, 4)

    def forward(self, i, x):
        ea = self.a(i)
        return torch.add(ea + x, self.b(i).add(self.c(i))) + 1.5, ea * 2


def test_other_terms_follow_the_fused_op_and_lookups_keep_other_users():
    model, i, x = WithTerms(), torch.randint(0, 5, (6,)), torch.randn(6, 4)
    out = compare_with_eager(lambda_module(model), (i, x), exact_forward=False)
    assert out.shape == (6, 4)
    assert rewrites(NAME) == 1


def lambda_module(model: nn.Module) -> nn.Module:
    """``model`` with both of its outputs folded into one tensor (compare_with_eager takes one)."""

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *args):
            s, e = self.inner(*args)
            return s + e.flip(0)

    return Both()


def test_switch_off_leaves_sums():
    with inductor_embed.config.patch(multi_embedding_sum=False):
        compare_with_eager(AtomEncoder(), (_atoms(),))
    assert rewrites(NAME) == 0


# --- what is left, and why -------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Embedding(7, 4)

    def forward(self, i, x):
        return x + self.a(i)


class Mixed(nn.Module):
    """Three fp32 lookups of D=4, one of D=2 broadcast over them, one bf16 table."""

    def __init__(self):
        super().__init__()
        self.t = nn.ModuleList(nn.Embedding(7, 4) for _ in range(3))
        self.narrow = nn.Embedding(7, 1)
        self.bf16 = nn.Embedding(7, 4).to(torch.bfloat16)

    def forward(self, i):
        h = self.t[0](i) + self.narrow(i) + self.t[1](i) + self.t[2](i)
        return h + self.bf16(i)


class Promoted(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(7, 4).to(torch.bfloat16), nn.Embedding(7, 4).to(torch.bfloat16)

    def forward(self, i, x):
        return self.a(i) + self.b(i) + x


class WrittenLookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Embedding(7, 4), nn.Embedding(7, 4), nn.Embedding(7, 4)

    def forward(self, i):
        ea = self.a(i)
        ea.mul_(2)
        return ea + self.b(i) + self.c(i)


class MaxNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(7, 4, max_norm=1.0), nn.Embedding(7, 4)

    def forward(self, i):
        return self.a(i) + self.b(i)


class WrittenTerm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(7, 4), nn.Embedding(7, 4)

    def forward(self, i, x):
        h = self.a(i) + x
        x.mul_(2)
        return h + self.b(i)


def _skipped(model, inputs, caplog):
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        torch.compile(model, backend="inductor_embed")(*inputs)
    return caplog.text


def test_single_lookup_is_logged(caplog):
    text = _skipped(Residual(), (torch.randint(0, 7, (5,)), torch.randn(5, 4)), caplog)
    assert "only 1 fusable lookup(s) in the sum" in text
    assert rewrites(NAME) == 0 and skips(NAME) == 1


def test_other_widths_and_dtypes_stay_terms(caplog):
    model, i = Mixed(), torch.randint(0, 7, (5,))
    text = _skipped(model, (i,), caplog)
    assert "differs from the fused lookups' (torch.float32, device(type='cpu'), 4)" in text
    assert rewrites(NAME) == 1 and skips(NAME) == 2
    torch._dynamo.reset()
    compare_with_eager(model, (i,), exact_forward=False)


def test_promoted_result_is_left(caplog):
    text = _skipped(Promoted(), (torch.randint(0, 7, (5,)), torch.randn(5, 4)), caplog)
    assert "adding the lookups first would round their partial sum" in text
    assert rewrites(NAME) == 0


def test_written_lookup_is_left(caplog):
    model, i = WrittenLookup(), torch.randint(0, 7, (5,))
    text = _skipped(model, (i,), caplog)
    assert "the lookup's output is written in place by mul_" in text
    assert rewrites(NAME) == 1  # b + c still fuse
    torch._dynamo.reset()
    compare_with_eager(model, (i,), exact_forward=False)


def test_max_norm_lookup_is_left(caplog):
    text = _skipped(MaxNorm(), (torch.randint(0, 7, (5,)),), caplog)
    assert "max_norm renormalises the table" in text
    assert rewrites(NAME) == 0


def test_term_written_before_the_sum_reads_it(caplog):
    text = _skipped(WrittenTerm(), (torch.randint(0, 7, (5,)), torch.randn(5, 4)), caplog)
    assert "is written in place by mul_ before the sum" in text
    assert rewrites(NAME) == 0


def test_explain_lists_the_sum():
    report = inductor_embed.explain(AtomEncoder(), _atoms())
    assert [r.pattern for r in report.rewrites] == [NAME]
    assert "embeddings.{0..8}.weight" in str(report)


def test_sum_trees_deeper_than_the_recursion_limit():
    """``h += emb_i(x)`` 3,000 times (a tree 3,000 deep, past Python's recursion limit) is
    read with explicit stacks: one root, every term in order."""
    from inductor_embed.patterns import multi_embedding_sum as pattern

    graph = torch.fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    lookups = [graph.call_function(F.embedding, (x, w))]
    h = lookups[0]
    for _ in range(3000):
        lookups.append(graph.call_function(F.embedding, (x, w)))
        h = graph.call_function(operator.iadd, (h, lookups[-1]))
    for node in graph.nodes:
        node.meta["val"] = torch.empty(1)  # only "is a tensor" matters for the tree walk
    graph.output(h)
    sums = pattern._sum_nodes(graph)
    assert len(sums) == 3000 and pattern._roots(graph, sums) == [h]
    terms, nodes = pattern._leaves(h, sums)
    assert [t for t, _ in terms] == lookups and len(nodes) == 3000
