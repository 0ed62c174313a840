"""Random embedding models (hypothesis), compiled with inductor_embed against eager:
the forward and every gradient, and the number of fused ops the pass should make.

A model draws 2-5 lookups on tables of random sizes, widths (1 to 33, powers of two or
not), dtypes (fp32, bf16, fp16, sometimes mixed), padding_idx and scale_grad_by_freq;
a table may be looked up twice, and a third of the tables without
scale_grad_by_freq or padding_idx have sparse gradients. The indices have a random leading shape (0-d, empty,
1-D, 2-D, 3-D) and dtype (int32/int64). The lookups meet in one cat/concat/stack (or
a cat of unsqueezes) with dense tensors at random places, and some lookups have other
users before or after the cat (multi_embedding_cat). Half of the models also have a
Linear (random width, with or without bias) on one or two one-hot fields of 1-12
classes (one_hot_linear), and some have 2-3 more lookups that no cat takes, reduced and
summed into a score (independent_lookups, turned on for the CPU here; it also takes the
lookups the cat leaves alone). One compile per example; the test prints how many it tried.
``RELIABILITY_EXAMPLES=200 RELIABILITY_SEED=7 pytest tests/reliability/test_random_models.py``
runs more, or others.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.inductor_embed._util import rewrites

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "10"))
SEED = int(os.environ.get("RELIABILITY_SEED", "20261121"))
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LEADS = ((), (0,), (1,), (6,), (3, 4), (2, 1, 3))
FORMS = ("cat", "cat-positive-dim", "concat", "stack", "unsqueeze-cat")
# fp32 against eager exactly (forward) or to 1e-5 (gradients); half types against an fp32
# copy of the model, to the half type's resolution (eager's own half backward rounds on
# every add, so it is no better an oracle).
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
       torch.float16: {"rtol": 1e-2, "atol": 1e-2}}


@st.composite
def specs(draw):
    form = draw(st.sampled_from(FORMS))
    token = form in ("stack", "unsqueeze-cat")
    base = draw(st.sampled_from(DTYPES))
    mixed = draw(st.integers(0, 3)) == 0
    shared_d = draw(st.sampled_from((1, 3, 4, 8, 13)))
    tables = []
    for _ in range(draw(st.integers(2, 4))):
        d = shared_d if token else draw(st.sampled_from((1, 2, 3, 4, 5, 7, 8, 16, 33)))
        # not [1, 1]: Inductor's CPU codegen fails on that table's backward, with or
        # without the plugin (test_one_by_one_table_backward below)
        v = draw(st.integers(2 if d == 1 else 1, 40))
        freq = draw(st.booleans())
        pad = draw(st.one_of(st.none(), st.integers(-v, v - 1)))
        tables.append({
            "v": v,
            "d": d,
            "dtype": draw(st.sampled_from(DTYPES)) if mixed else base,
            "pad": pad,
            "freq": freq,
            # Sparse gradients (coalesced COO). Not with scale_grad_by_freq, which eager
            # rejects, nor with a padding_idx: a lookup left unfused (a user before the cat)
            # then has eager's sparse backward, whose data-dependent mask makes torch.compile
            # fall back to eager for the whole graph, with or without the plugin
            # (tests/inductor_embed/test_sparse.py fuses sparse tables with padding).
            "sparse": not freq and pad is None and draw(st.integers(0, 2)) == 0,
        })
    lookups = []
    for _ in range(draw(st.integers(2, 5))):
        lookups.append({
            "table": draw(st.integers(0, len(tables) - 1)),
            "index_dtype": draw(st.sampled_from((torch.int64, torch.int32))),
            "user": draw(st.sampled_from((None, None, "before", "after"))),
        })
    for k, t in enumerate(tables):
        # A sparse table read by one lookup only, with no other user: a gradient from two
        # places (a second lookup in a run too short to fuse, a user of the lookup besides
        # the cat) is a sum of sparse tensors in the compiled backward, which Inductor
        # cannot compile, with or without the plugin; the pass leaves a sparse lookup with
        # other users (so the runs would differ from expected_rewrites'), and its op makes
        # one gradient for a table it fuses twice (tests/inductor_embed/test_sparse.py).
        reads = [lk for lk in lookups if lk["table"] == k]
        t["sparse"] = t["sparse"] and len(reads) == 1 and reads[0]["user"] is None
    # where dense tensors go in the cat: a list of slots, True = dense, False = next lookup
    slots = [False] * len(lookups)
    for _ in range(draw(st.integers(0, 2))):
        slots.insert(draw(st.integers(0, len(slots))), True)
    one_hot = None
    if draw(st.booleans()):  # a Linear on one or two one-hot fields (one_hot_linear)
        one_hot = {"fields": draw(st.lists(st.integers(1, 12), min_size=1, max_size=2)),
                   "d": draw(st.sampled_from((1, 3, 8, 17))), "bias": draw(st.booleans())}
    scored = []
    if draw(st.booleans()):  # lookups that no cat takes, summed into a score (independent_lookups)
        scored = [{"table": draw(st.integers(0, len(tables) - 1)),
                   "index_dtype": draw(st.sampled_from((torch.int64, torch.int32)))}
                  for _ in range(draw(st.integers(2, 3)))]
    return {"form": form, "tables": tables, "lookups": lookups, "slots": slots, "one_hot": one_hot, "scored": scored,
            "lead": draw(st.sampled_from(LEADS)), "dense_dtype": base, "dense_d": shared_d if token else 3}


class RandomModel(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.tables = nn.ModuleList([
            nn.Embedding(t["v"], t["d"], padding_idx=t["pad"], scale_grad_by_freq=t["freq"],
                         sparse=t.get("sparse", False), dtype=t["dtype"])
            for t in spec["tables"]
        ])
        n_dense = sum(spec["slots"])
        self.dense = nn.ParameterList([
            nn.Parameter(torch.randn(spec["dense_d"], dtype=spec["dense_dtype"])) for _ in range(n_dense)
        ])
        oh = spec.get("one_hot")
        if oh:
            self.one_hot = nn.Linear(sum(oh["fields"]), oh["d"], bias=oh["bias"], dtype=spec["dense_dtype"])

    def forward(self, *indices):
        spec = self.spec
        n, m = len(spec["lookups"]), len(spec.get("scored", ()))
        indices, classes, scored = indices[:n], indices[n:len(indices) - m], indices[len(indices) - m:]
        lead = indices[0].shape
        es = [self.tables[lk["table"]](i) for lk, i in zip(spec["lookups"], indices)]
        extras = [e.float().sum(-1) * 2 for lk, e in zip(spec["lookups"], es) if lk["user"] == "before"]
        pieces, dense, k = [], iter(self.dense), 0
        for is_dense in spec["slots"]:
            if is_dense:
                pieces.append(next(dense).expand(*lead, spec["dense_d"]))
            else:
                pieces.append(es[k])
                k += 1
        form = spec["form"]
        if form == "cat":
            out = torch.cat(pieces, dim=-1)
        elif form == "cat-positive-dim":
            out = torch.cat(pieces, len(lead))
        elif form == "concat":
            out = torch.concat(pieces, dim=-1)
        elif form == "stack":
            out = torch.stack(pieces, dim=-2)
        else:
            out = torch.cat([p.unsqueeze(-2) for p in pieces], dim=-2)
        extras += [torch.tanh(e.float()) for lk, e in zip(spec["lookups"], es) if lk["user"] == "after"]
        if classes:
            hots = [F.one_hot(c, n) for c, n in zip(classes, spec["one_hot"]["fields"])]
            hot = hots[0] if len(hots) == 1 else torch.cat(hots, dim=-1)
            extras.append(self.one_hot(hot.to(self.one_hot.weight.dtype)))
        if scored:
            extras.append(sum(self.tables[lk["table"]](i).float().sum(-1) for lk, i in zip(spec["scored"], scored)))
        return (out, *extras)


def expected_rewrites(spec):
    """Runs of >= 2 consecutive lookups of one table dtype (cat promotes mixed dtypes;
    the pass fuses each run on its own)."""
    runs, length, last = 0, 0, None
    lookups = iter(spec["lookups"])
    for is_dense in spec["slots"] + [True]:
        dtype = None if is_dense else spec["tables"][next(lookups)["table"]]["dtype"]
        if dtype is not None and dtype == last:
            length += 1
        else:
            runs += length >= 2
            length = 0 if dtype is None else 1
        last = dtype
    return runs


def expected_independent(spec):
    """Groups (one per table dtype; every index has the leading shape) of at least 2 of the
    lookups that no cat run takes: the scored ones and those of the cat's runs of 1."""
    dtypes, run, lookups = [], [], iter(spec["lookups"])
    for is_dense in spec["slots"] + [True]:
        dtype = None if is_dense else spec["tables"][next(lookups)["table"]]["dtype"]
        if run and dtype != run[-1]:
            dtypes += run if len(run) == 1 else []
            run = []
        if dtype is not None:
            run.append(dtype)
    dtypes += [spec["tables"][lk["table"]]["dtype"] for lk in spec.get("scored", ())]
    return sum(dtypes.count(d) >= 2 for d in set(dtypes))


def _inputs(spec, gen):
    indices = [torch.randint(0, spec["tables"][lk["table"]]["v"], spec["lead"], generator=gen).to(lk["index_dtype"])
               for lk in spec["lookups"]]
    fields = (spec.get("one_hot") or {}).get("fields", [])
    scored = [torch.randint(0, spec["tables"][lk["table"]]["v"], spec["lead"], generator=gen).to(lk["index_dtype"])
              for lk in spec.get("scored", ())]
    return indices + [torch.randint(0, n, spec["lead"], generator=gen) for n in fields] + scored  # one_hot: int64


def _check(spec):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = RandomModel(spec)
    oracle = copy.deepcopy(model).float()  # fp32 twin: the reference for half-type numbers
    compiled_model = copy.deepcopy(model)
    inputs = _inputs(spec, gen)
    outs = torch.compile(compiled_model, backend="inductor_embed")(*inputs)
    eager = model(*inputs)
    refs = oracle(*inputs)
    assert rewrites() == expected_rewrites(spec), (rewrites(), spec)
    assert rewrites("one_hot_linear") == (spec.get("one_hot") is not None), spec
    assert rewrites("independent_lookups") == expected_independent(spec), (rewrites("independent_lookups"), spec)
    grads = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]
    for out, e, ref in zip(outs, eager, refs):
        assert out.dtype == e.dtype and out.shape == e.shape
        if out.dtype == torch.float32 and ref.dtype == torch.float32 and e is eager[0]:
            torch.testing.assert_close(out, e, rtol=0, atol=0)  # gathers and copies only
        torch.testing.assert_close(out.float(), ref.float(), **TOL[out.dtype])
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(refs, [g.float() for g in grads])
    for (name, p), q in zip(compiled_model.named_parameters(), oracle.parameters()):
        if q.grad is None:  # a table no lookup reads
            assert p.grad is None, name
            continue
        got, want = p.grad, q.grad
        if got.is_sparse:  # the op's is coalesced (unique rows), eager's one entry per index
            assert want.is_sparse and got._indices().unique().numel() == got._nnz(), name
            got, want = got.to_dense(), want.to_dense()
        torch.testing.assert_close(got.float(), want, **TOL[p.dtype],
                                   msg=lambda m, n=name: f"grad of {n}: {m}\nspec: {spec}")


TRIED: list = []


@seed(SEED)
# No shrinking: every shrink step is a compile (a failure shrank for minutes). A failing
# example is printed as drawn; these specs are small enough to read.
@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=specs())
def _random_models_match_eager(spec):
    TRIED.append(spec)
    _check(spec)


def test_random_embedding_models_match_eager(record_property):
    TRIED.clear()
    _random_models_match_eager()
    print(f"hypothesis tried {len(TRIED)} random embedding models")
    record_property("hypothesis_examples", len(TRIED))
    assert len(TRIED) >= EXAMPLES
    assert any(expected_rewrites(s) for s in TRIED) and any(expected_independent(s) for s in TRIED)


@pytest.mark.parametrize("spec", [
    pytest.param({"form": "stack", "lead": (2, 1, 3), "dense_dtype": torch.bfloat16, "dense_d": 4,
                  "tables": [{"v": 1, "d": 4, "dtype": torch.bfloat16, "pad": -1, "freq": True},
                             {"v": 9, "d": 4, "dtype": torch.bfloat16, "pad": None, "freq": False}],
                  "lookups": [{"table": 0, "index_dtype": torch.int32, "user": "after"},
                              {"table": 1, "index_dtype": torch.int64, "user": "before"},
                              {"table": 0, "index_dtype": torch.int64, "user": None}],
                  "slots": [False, True, False, False],
                  "one_hot": {"fields": [1, 12], "d": 1, "bias": True}}, id="stack-bf16-one-row-table-twice"),
    pytest.param({"form": "cat", "lead": (0,), "dense_dtype": torch.float32, "dense_d": 3,
                  "tables": [{"v": 5, "d": 33, "dtype": torch.float32, "pad": 2, "freq": True},
                             {"v": 3, "d": 1, "dtype": torch.float16, "pad": None, "freq": False},
                             {"v": 7, "d": 7, "dtype": torch.float16, "pad": None, "freq": False, "sparse": True}],
                  "lookups": [{"table": 0, "index_dtype": torch.int64, "user": None},
                              {"table": 1, "index_dtype": torch.int32, "user": "after"},
                              {"table": 2, "index_dtype": torch.int64, "user": None}],
                  "slots": [True, False, False, False]}, id="cat-empty-batch-mixed-dtypes"),
    # Scalar indices with scale_grad_by_freq: on torch 2.11 the backward's decomposition
    # read a 0-d index with .item(), and the whole graph fell back to eager.
    pytest.param({"form": "stack", "lead": (), "dense_dtype": torch.float16, "dense_d": 4,
                  "tables": [{"v": 29, "d": 4, "dtype": torch.float16, "pad": 9, "freq": False},
                             {"v": 38, "d": 4, "dtype": torch.float16, "pad": -35, "freq": True},
                             {"v": 2, "d": 4, "dtype": torch.float16, "pad": None, "freq": True},
                             {"v": 21, "d": 4, "dtype": torch.float16, "pad": 19, "freq": False}],
                  "lookups": [{"table": 0, "index_dtype": torch.int32, "user": "after"},
                              {"table": 1, "index_dtype": torch.int32, "user": "after"},
                              {"table": 1, "index_dtype": torch.int32, "user": None},
                              {"table": 0, "index_dtype": torch.int32, "user": None},
                              {"table": 3, "index_dtype": torch.int64, "user": "before"}],
                  "slots": [False, False, True, False, False, False],
                  "scored": [{"table": 0, "index_dtype": torch.int64}, {"table": 2, "index_dtype": torch.int64},
                             {"table": 1, "index_dtype": torch.int32}]}, id="stack-fp16-scalar-index-freq"),
])
def test_pinned_random_models(spec):
    """Shapes the generator drew, pinned so they run on every commit."""
    _check(spec)


def test_generator_counts_runs_like_the_pass():
    f32, b16 = torch.float32, torch.bfloat16
    spec = {"tables": [{"dtype": f32}, {"dtype": b16}], "slots": [True, False, False, True, False, False, False],
            "lookups": [{"table": t} for t in (0, 0, 1, 1, 0)]}
    assert expected_rewrites(spec) == 2  # [dense] f32 f32 [dense] b16 b16 | f32
    assert expected_independent(spec) == 0  # the lone f32 only
    spec["scored"] = [{"table": 0}, {"table": 1}]
    assert expected_independent(spec) == 1  # the lone f32 and a scored f32; one b16
    assert F.embedding  # the module's imports are used by the models above
