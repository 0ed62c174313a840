"""A fuzzer (hypothesis) for the kinds of input that broke the CPU paths in the adversarial
pass (tests/reliability/test_adversarial.py), compiled with
``backend="inductor_embed"`` against eager: forward, every gradient, and errors against errors.

- **EmbeddingBag models**: 2-3 ``nn.EmbeddingBag`` lookups in a cat, each in a random mode
  (sum, mean, max), ``padding_idx``, ``include_last_offset``, per-sample weights (sum mode),
  ``sparse`` gradients; input as fixed bags ``[B, L]`` (contiguous, or a strided view of a
  larger tensor) or 1-D with offsets (empty bags, no bags, indices past the last offset);
  int32 and int64 indices and offsets, mixed.
- **One-hot models**: a Linear on a cat of 1-3 one-hot fields, plain (``one_hot(x, n)``) or
  multi-hot (``one_hot(x, n).sum(-2)``, empty bags too), with or without bias, weight frozen
  or not, over 1-D and 2-D leading shapes.
- Both: bad input (an index out of range, offsets decreasing, past the end, not starting at
  0, int64 offsets past ``2**31`` with int32 indices, per-sample weights outside sum mode)
  must raise where eager raises, and the indices may be changed in place between forward
  and backward: the compiled model must then give the original indices' gradient or
  autograd's in-place error, never another gradient.
- **Direct op calls with inconsistent arguments** (a gradient's rows, widths, lists, offsets,
  per-sample weights, max rows, indices out of range...): drawn in the test process, run in
  a child (``tests/_isolated.py``); each must raise RuntimeError / IndexError / ValueError,
  never crash, and its consistent original must run.

The one deviation allowed: decreasing offsets raise in the fused ops where eager's CPU kernels
accept some (docs/reliability.md). One ``torch._dynamo.reset()`` per example; no shrinking
(each step is a compile). ``RELIABILITY_EXAMPLES`` sets the budget (default 4 models of each
kind and 40 direct calls), ``RELIABILITY_SEED`` the seed.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import inductor_embed  # noqa: F401  (registers the ops the direct calls are drawn from)
from tests._isolated import run_calls

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "4"))
SEED = int(os.environ.get("RELIABILITY_SEED", "20261206"))
DIRECT = max(40, 2 * EXAMPLES)
MODES = ("sum", "mean", "max")
ITYPES = (torch.int64, torch.int32)
ERRORS = (RuntimeError, IndexError, ValueError)
INPLACE = "modified by an inplace operation"
TOL = {"rtol": 1e-5, "atol": 1e-5}
SETTINGS = {"deadline": None, "database": None, "phases": (Phase.explicit, Phase.generate),
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


# --- running a model eager and compiled ------------------------------------------------------------


def _run(model: nn.Module, inputs: list[torch.Tensor], grad_seed: int, inplace: int | None) -> tuple:
    """``("ok", outputs, grads)``, ``("forward", error)`` or ``("backward", error)``;
    ``inplace``: the input to change in place between forward and backward."""
    try:
        out = model(*inputs)
    except ERRORS as e:
        return "forward", e
    if inplace is not None:
        inputs[inplace].fill_(0)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    try:
        if out.requires_grad:  # (a frozen Linear without bias: nothing to differentiate)
            out.backward(g)
    except ERRORS as e:
        return "backward", e
    params = getattr(model, "_orig_mod", model)
    grads = {}
    for name, p in params.named_parameters():
        grads[name] = None if p.grad is None else (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
    for k, x in enumerate(inputs):
        if x.requires_grad:
            grads[f"input {k}"] = None if x.grad is None else x.grad.clone()
    return "ok", out.detach(), grads


def _copies(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Independent copies of the inputs, views kept as views of a copied base."""
    out, bases = [], {}
    for x in inputs:
        base = x._base if x._base is not None else x
        key = id(base)
        if key not in bases:
            bases[key] = base.detach().clone()
        view = bases[key].as_strided(x.shape, x.stride(), x.storage_offset()) if x._base is not None else bases[key]
        out.append(view.detach().requires_grad_(x.requires_grad) if x.is_floating_point() else view)
    return out


def _compare(spec: dict, model: nn.Module, inputs: list[torch.Tensor], inplace: int | None,
             decreasing: bool, eager_inputs: list[torch.Tensor] | None = None) -> str:
    """Eager (on ``eager_inputs`` where given) and compiled on copies: the outcome's name (for
    the statistics)."""
    torch._dynamo.reset()
    eager_inputs = inputs if eager_inputs is None else eager_inputs
    eager = _run(copy.deepcopy(model), _copies(eager_inputs), 1, inplace)
    reference = eager if inplace is None else _run(copy.deepcopy(model), _copies(eager_inputs), 1, None)
    compiled = _run(torch.compile(copy.deepcopy(model), backend="inductor_embed"), _copies(inputs), 1, inplace)
    where = f"\nspec: {spec}\neager: {eager[:2]}\ncompiled: {compiled[:2]}"
    if eager[0] == "forward":  # bad input: the compiled model raises too
        assert compiled[0] != "ok", "eager raised, compiled did not" + where
        return "raised"
    if compiled[0] == "forward":
        assert decreasing, "compiled raised, eager did not" + where
        return "decreasing offsets raised"
    if compiled[0] == "backward":
        # only autograd's in-place error, for a changed input (eager may have saved a copy)
        assert inplace is not None and INPLACE in str(compiled[1]), "compiled backward raised" + where
        return "in-place error"
    if reference[0] != "ok":
        assert decreasing, "the reference raised, compiled did not" + where
        return "decreasing offsets accepted"
    # compiled gave gradients: the original indices' (eager's, where eager saved a copy)
    torch.testing.assert_close(compiled[1], reference[1], **TOL, msg=lambda m: f"forward: {m}{where}")
    for name, want in reference[2].items():
        got = compiled[2][name]
        if want is None:
            assert got is None or not got.any(), f"{name}: a gradient where eager has none{where}"
        elif got is not None and got.shape != want.shape:  # per-sample weights past offsets[B]: in no bag
            torch.testing.assert_close(got[:want.shape[0]], want, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}{where}")
            assert not got[want.shape[0]:].any(), f"{name}: a gradient for weights in no bag{where}"
        else:
            torch.testing.assert_close(got, want, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}{where}")
    return "matched"


# --- EmbeddingBag models ---------------------------------------------------------------------------


@st.composite
def bag_specs(draw):
    b = draw(st.integers(0, 5))
    tables = []
    for _ in range(draw(st.integers(2, 3))):
        v, mode = draw(st.integers(1, 12)), draw(st.sampled_from(MODES))
        pad = draw(st.one_of(st.none(), st.none(), st.integers(-v, v - 1)))
        form = draw(st.sampled_from(("2d", "2d_view", "1d", "1d")))
        tables.append({
            "v": v, "d": draw(st.sampled_from((1, 2, 3, 4, 8))), "mode": mode, "pad": pad, "form": form,
            "ilo": form == "1d" and draw(st.booleans()),
            "psw": mode == "sum" and draw(st.booleans()),
            "sparse": mode != "max" and pad is None and draw(st.integers(0, 3)) == 0,
            "itype": draw(st.sampled_from(ITYPES)), "otype": draw(st.sampled_from(ITYPES)),
            "bag": draw(st.integers(1, 4)),  # fixed bags
            "sizes": [draw(st.integers(0, 3)) for _ in range(b)],  # 1-d bags; empty ones too
            "tail": draw(st.integers(0, 2)),  # 1-d with include_last_offset: indices in no bag
        })
    error = draw(st.sampled_from((None,) * 6 + ("oob", "negative", "decreasing", "past_end", "first",
                                                 "past_2_31", "psw_mode")))
    return {"b": b, "tables": tables, "error": error, "error_table": draw(st.integers(0, len(tables) - 1)),
            "inplace": draw(st.integers(0, 5)) == 0, "data": draw(st.integers(0, 2**31 - 1))}


class BagModel(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        self.bags = nn.ModuleList([nn.EmbeddingBag(t["v"], t["d"], mode=t["mode"], padding_idx=t["pad"],
                                                   include_last_offset=t["ilo"], sparse=t["sparse"])
                                   for t in spec["tables"]])

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        outs, it = [], iter(xs)
        for bag, t in zip(self.bags, self.spec["tables"]):
            i = next(it)
            o = next(it) if t["form"] == "1d" else None
            p = next(it) if t["psw"] else None
            outs.append(bag(i, o, per_sample_weights=p))
        return torch.cat(outs, 1)


def eager_bag_inputs(spec: dict, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """What eager is given: with include_last_offset, the indices (and per-sample weights) past
    ``offsets[B]`` cut off. The fused ops read them as in no bag; eager's CPU kernels count
    them into the last bag's mean size (and its sum, with a padding_idx) and leave their sum
    gradient rows unwritten (docs/reliability.md), so eager on the cut input is the oracle."""
    out, it = [], iter(inputs)
    for t in spec["tables"]:
        i = next(it)
        o = next(it) if t["form"] == "1d" else None
        p = next(it) if t["psw"] else None
        end = int(o[-1]) if o is not None and t["ilo"] and o.numel() else None
        cut = end is not None and 0 <= end < i.shape[0]
        out.append(i[:end].clone() if cut else i)
        if o is not None:
            out.append(o)
        if p is not None:
            out.append(p.detach()[:end].clone().requires_grad_() if cut else p)
    return out


def bag_inputs(spec: dict) -> tuple[list[torch.Tensor], int | None, bool]:
    """``(inputs, the input to change in place or None, whether offsets decrease)``, with the
    spec's error applied where it can be."""
    g = torch.Generator().manual_seed(spec["data"])
    b, inputs, first_index = spec["b"], [], None
    decreasing = False
    for k, t in enumerate(spec["tables"]):
        bad = spec["error"] if k == spec["error_table"] else None
        itype, otype = (torch.int32, torch.int64) if bad == "past_2_31" else (t["itype"], t["otype"])
        o = None
        if t["form"] == "1d":
            sizes = t["sizes"]
            nnz = sum(sizes)
            offsets = [sum(sizes[:j]) for j in range(b)] + ([nnz] if t["ilo"] else [])
            nnz += t["tail"] if t["ilo"] else 0
            i = torch.randint(0, t["v"], (nnz,), generator=g, dtype=itype)
            if bad == "decreasing" and len(offsets) >= 3 and offsets[2] + 1 <= nnz:
                offsets[1] = offsets[2] + 1
                decreasing = True
            elif bad == "past_end" and offsets:
                offsets[-1] = nnz + 1
            elif bad == "first" and offsets and nnz >= 1:
                offsets[0] = 1
            elif bad == "past_2_31" and offsets:
                offsets[-1] = 2**32 + 7
            o = torch.tensor(offsets, dtype=otype)
        elif t["form"] == "2d_view":  # a column slice of a wider input: strided, a view
            i = torch.randint(0, t["v"], (b, t["bag"] + 2), generator=g, dtype=itype)[:, 1:1 + t["bag"]]
        else:
            i = torch.randint(0, t["v"], (b, t["bag"]), generator=g, dtype=itype)
        if bad in ("oob", "negative") and i.numel():
            i[(0,) * i.dim()] = t["v"] if bad == "oob" else -1
        if first_index is None:
            first_index = len(inputs)
        inputs.append(i)
        if o is not None:
            inputs.append(o)
        if t["psw"]:
            inputs.append(torch.rand(i.shape, generator=g).requires_grad_())
    return inputs, first_index if spec["inplace"] else None, decreasing


def _psw_mode(spec: dict) -> dict:
    """The ``psw_mode`` error: per-sample weights on a lookup that is not in sum mode."""
    if spec["error"] != "psw_mode":
        return spec
    tables = [dict(t) for t in spec["tables"]]
    k = spec["error_table"]
    if tables[k]["mode"] == "sum":
        tables[k]["mode"] = "mean"
    tables[k]["psw"], tables[k]["sparse"] = True, False
    return {**spec, "tables": tables}


BAG_OUTCOMES: list[str] = []


@seed(SEED)
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(spec=bag_specs())
def _bag_models_match_eager(spec):
    spec = _psw_mode(spec)
    torch.manual_seed(spec["data"])
    model = BagModel(spec)
    inputs, inplace, decreasing = bag_inputs(spec)
    BAG_OUTCOMES.append(_compare(spec, model, inputs, inplace, decreasing, eager_bag_inputs(spec, inputs)))


def test_random_bag_models_match_eager(record_property):
    from torch._dynamo.utils import counters

    BAG_OUTCOMES.clear()
    _bag_models_match_eager()
    fused = counters["inductor_embed"]["multi_embedding_bag"]  # over all examples (reset() keeps counters)
    print(f"hypothesis tried {len(BAG_OUTCOMES)} EmbeddingBag models: "
          f"{ {o: BAG_OUTCOMES.count(o) for o in sorted(set(BAG_OUTCOMES))} }, {fused} fused ops")
    record_property("hypothesis_examples", len(BAG_OUTCOMES))
    assert len(BAG_OUTCOMES) >= EXAMPLES and fused >= 1


# --- one-hot models --------------------------------------------------------------------------------


@st.composite
def one_hot_specs(draw):
    fields = [{"n": draw(st.integers(1, 12)), "multi": draw(st.booleans()), "bag": draw(st.integers(0, 3))}
              for _ in range(draw(st.integers(1, 3)))]
    return {"fields": fields, "lead": draw(st.sampled_from(((0,), (1,), (5,), (2, 3)))),
            "d": draw(st.sampled_from((1, 3, 8))), "bias": draw(st.booleans()), "frozen": draw(st.integers(0, 4)) == 0,
            "error": draw(st.sampled_from((None,) * 5 + ("oob", "negative"))),
            "error_field": draw(st.integers(0, len(fields) - 1)), "inplace": draw(st.integers(0, 4)) == 0,
            "data": draw(st.integers(0, 2**31 - 1))}


class OneHotModel(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        self.lin = nn.Linear(sum(f["n"] for f in spec["fields"]), spec["d"], bias=spec["bias"])
        self.lin.weight.requires_grad_(not spec["frozen"])

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        hots = [F.one_hot(x, f["n"]).sum(-2) if f["multi"] else F.one_hot(x, f["n"])
                for x, f in zip(xs, self.spec["fields"])]
        return self.lin((hots[0] if len(hots) == 1 else torch.cat(hots, -1)).float())


def one_hot_inputs(spec: dict) -> tuple[list[torch.Tensor], int | None]:
    g = torch.Generator().manual_seed(spec["data"])
    inputs = []
    for k, f in enumerate(spec["fields"]):
        x = torch.randint(0, f["n"], (*spec["lead"], f["bag"]) if f["multi"] else spec["lead"], generator=g)
        if k == spec["error_field"] and spec["error"] and x.numel():
            x.view(-1)[x.numel() // 2] = f["n"] if spec["error"] == "oob" else -1
        inputs.append(x)
    return inputs, 0 if spec["inplace"] else None


ONE_HOT_OUTCOMES: list[str] = []


@seed(SEED)
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(spec=one_hot_specs())
def _one_hot_models_match_eager(spec):
    torch.manual_seed(spec["data"])
    inputs, inplace = one_hot_inputs(spec)
    ONE_HOT_OUTCOMES.append(_compare(spec, OneHotModel(spec), inputs, inplace, False))


def test_random_one_hot_models_match_eager(record_property):
    ONE_HOT_OUTCOMES.clear()
    _one_hot_models_match_eager()
    print(f"hypothesis tried {len(ONE_HOT_OUTCOMES)} one-hot models: "
          f"{ {o: ONE_HOT_OUTCOMES.count(o) for o in sorted(set(ONE_HOT_OUTCOMES))} }")
    record_property("hypothesis_examples", len(ONE_HOT_OUTCOMES))
    assert len(ONE_HOT_OUTCOMES) >= EXAMPLES


# --- direct op calls with inconsistent arguments ----------------------------------------------------


def _bag_call(draw, g: torch.Generator) -> dict:
    """A consistent ``multi_embedding_bag`` call on 1-2 tables, with its forward's outputs."""
    b = draw(st.integers(1, 4))
    tables, indices, offsets, psw, modes, pads, ilos = [], [], [], [], [], [], []
    for _ in range(draw(st.integers(1, 2))):
        v, d, mode = draw(st.integers(2, 9)), draw(st.integers(1, 5)), draw(st.integers(0, 2))
        itype = draw(st.sampled_from(ITYPES))
        if draw(st.booleans()):
            i, o, ilo = torch.randint(0, v, (b, draw(st.integers(1, 3))), generator=g, dtype=itype), None, False
        else:
            sizes = [draw(st.integers(0, 3)) for _ in range(b)]
            ilo = draw(st.booleans())
            starts = [sum(sizes[:j]) for j in range(b)] + ([sum(sizes)] if ilo else [])
            i = torch.randint(0, v, (sum(sizes),), generator=g, dtype=itype)
            o = torch.tensor(starts, dtype=draw(st.sampled_from(ITYPES)))
        tables.append(torch.randn(v, d, generator=g))
        indices.append(i)
        offsets.append(o)
        psw.append(torch.rand(i.shape, generator=g) if mode == 0 and draw(st.booleans()) else torch.tensor(0.0))
        modes.append(mode)
        pads.append(draw(st.sampled_from((-1, 0))))
        ilos.append(ilo)
    if all(p.dim() == 0 for p in psw):
        psw = []
    out, arg_max = torch.ops.inductor_embed.multi_embedding_bag(tables, indices, offsets, psw, modes, pads, ilos,
                                                                [False] * len(tables))
    return {"tables": tables, "indices": indices, "offsets": offsets, "psw": psw, "modes": modes, "pads": pads,
            "ilo": ilos, "out": out, "arg_max": arg_max, "b": b}


def _first_1d(c: dict) -> int | None:
    return next((k for k, o in enumerate(c["offsets"]) if o is not None), None)


@st.composite
def direct_calls(draw):
    """``(label, op, consistent args, inconsistent args)``."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    family = draw(st.sampled_from(("one_hot_bwd", "one_hot_fwd", "emb_bwd", "emb_sum_bwd", "coalesce", "bag_fwd",
                                   "bag_bwd", "tied_bwd")))
    bad = draw(st.integers(0, 99))
    if family in ("one_hot_bwd", "one_hot_fwd"):
        b, d = draw(st.integers(1, 5)), draw(st.integers(1, 6))
        ns = [draw(st.integers(1, 6)) for _ in range(draw(st.integers(1, 3)))]
        offs = [sum(ns[:k]) for k in range(len(ns))]
        idx = [torch.randint(0, n, (b, draw(st.integers(0, 3))), generator=g) for n in ns]
        v = sum(ns) + draw(st.integers(0, 2))
        if family == "one_hot_bwd":
            op = draw(st.sampled_from(("one_hot_linear_backward", "one_hot_linear_backward_cpu")))
            args = [torch.randn(b, d, generator=g), idx, ns, offs, v, draw(st.booleans()), False, torch.float32]
            choices = {"grad rows": lambda a: a.__setitem__(0, torch.randn(b + 1 + bad % 1000, d)),
                       "index rows": lambda a: a[1].__setitem__(0, torch.zeros((b + 2 + bad * 1000, 1), dtype=torch.long)),
                       "columns past": lambda a: a.__setitem__(4, sum(ns) - 1),
                       "class out of range": lambda a: a[1].__setitem__(0, torch.full((b, 1), ns[0])),
                       "lists": lambda a: a.__setitem__(2, ns[:-1] or [1, 1]),
                       "float indices": lambda a: a[1].__setitem__(0, a[1][0].float())}
        else:
            op = draw(st.sampled_from(("one_hot_linear", "one_hot_linear_cpu")))
            args = [idx, ns, offs, torch.randn(d, v, generator=g), torch.randn(d, generator=g)]
            if op == "one_hot_linear":
                args.append(None)
            choices = {"bias size": lambda a: a.__setitem__(4, torch.randn(d + 1 + bad)),
                       "columns past": lambda a: a.__setitem__(3, torch.randn(d, sum(ns) - 1)),
                       "class out of range": lambda a: a[0].__setitem__(0, torch.full((b, 1), -1))}
            if len(ns) >= 2:  # one field's rows unlike the others'
                choices["lead shapes"] = lambda a: a[0].__setitem__(0, torch.zeros((b + 1, 1), dtype=torch.long))
    elif family in ("emb_bwd", "emb_sum_bwd"):
        n, t = draw(st.integers(1, 6)), draw(st.integers(1, 3))
        vs = [draw(st.integers(1, 9)) for _ in range(t)]
        ds = [draw(st.integers(1, 5)) for _ in range(t)]
        idx = [torch.randint(0, v, (n,), generator=g) for v in vs]
        if family == "emb_sum_bwd":
            ds = [ds[0]] * t
            op, args = "multi_embedding_sum_backward", [torch.randn(n, ds[0], generator=g), idx, vs, ds, [-1] * t,
                                                        [False] * t]
        else:
            op = draw(st.sampled_from(("multi_embedding_backward", "multi_embedding_backward_cpu",
                                       "multi_embedding_sparse_backward")))
            cols = [sum(ds[:k]) for k in range(t)]
            args = [torch.randn(n, sum(ds), generator=g), idx, vs, ds, [-1] * t]
            args += {"multi_embedding_backward": [[False] * t], "multi_embedding_backward_cpu": [[False] * t, cols],
                     "multi_embedding_sparse_backward": [cols]}[op]
        choices = {"index out of range": lambda a: a[1].__setitem__(0, torch.full((n,), vs[0])),
                   "negative index": lambda a: a[1].__setitem__(0, torch.full((n,), -1)),
                   "lists": lambda a: a.__setitem__(2, vs + [3]),
                   "padding past": lambda a: a.__setitem__(4, [vs[0] + bad] + [-1] * (t - 1))}
        if op != "multi_embedding_sum_backward" or n >= 2:  # (one index broadcasts to any rows)
            choices["grad rows"] = lambda a: a.__setitem__(0, torch.randn(n + 1 + bad, a[0].shape[1]))
        if op in ("multi_embedding_backward", "multi_embedding_sum_backward"):  # widths add up to grad's
            choices["width"] = lambda a: a.__setitem__(0, torch.randn(n, a[0].shape[1] + 1 + bad % 7))
        else:  # the columns [c, c + d) inside grad's
            choices["columns past"] = lambda a: a[-1].__setitem__(0, a[0].shape[1])
    elif family == "coalesce":
        n, v = draw(st.integers(1, 6)), draw(st.integers(1, 9))
        op, args = "coalesce_rows", [[torch.randint(0, v, (n,), generator=g)], [torch.randn(n, 3, generator=g)], [v],
                                     [-1]]
        choices = {"value rows": lambda a: a.__setitem__(1, [torch.randn(n + 1 + bad, 3)]),
                   "index out of range": lambda a: a.__setitem__(0, [torch.full((n,), v + 1)]),
                   "lists": lambda a: a.__setitem__(2, [v, v])}
    elif family == "bag_fwd":
        c = _bag_call(draw, g)
        op = draw(st.sampled_from(("multi_embedding_bag", "multi_embedding_bag_cpu")))
        args = [c["tables"], c["indices"], c["offsets"], c["psw"], c["modes"], c["pads"], c["ilo"]]
        if op == "multi_embedding_bag":
            args.append([False] * len(c["tables"]))
        choices = {"padding past": lambda a: a.__setitem__(5, [99] + a[5][1:]),
                   "lists": lambda a: a.__setitem__(4, a[4] + [0]),
                   "table rank": lambda a: a[0].__setitem__(0, a[0][0].reshape(-1))}
        if c["indices"][0].numel():
            choices["index out of range"] = lambda a: a[1].__setitem__(0, torch.full_like(a[1][0], 99))
        k1 = _first_1d(c)
        if k1 is not None and len(c["offsets"][k1]) >= 2:
            nnz = c["indices"][k1].numel()

            def offsets(edit):
                def apply(a):
                    o = a[2][k1].tolist()
                    edit(o)
                    a[2][k1] = torch.tensor(o, dtype=torch.int64)  # int64 offsets, int32 indices
                    a[1][k1] = a[1][k1].int()
                return apply
            choices["offsets past 2**31"] = offsets(lambda o: o.__setitem__(-1, 2**32 + 7))
            choices["offsets past the end"] = offsets(lambda o: o.__setitem__(-1, nnz + 1))
            # o[-2] > o[-1] (o[0] > 0 when there are two)
            choices["offsets decreasing"] = offsets(lambda o: o.__setitem__(-2, o[-1] + 1))
    elif family == "bag_bwd":
        c = _bag_call(draw, g)
        op = draw(st.sampled_from(("multi_embedding_bag_backward", "multi_embedding_bag_backward_cpu")))
        t = len(c["tables"])
        psw = [None if p.dim() == 0 else p for p in c["psw"]] if c["psw"] else [None] * t
        args = [torch.randn(c["out"].shape, generator=g), c["arg_max"], c["indices"], c["offsets"], psw,
                [w.shape[0] for w in c["tables"]], [w.shape[1] for w in c["tables"]], c["modes"], c["pads"], c["ilo"],
                [False] * t]
        choices = {"grad rows": lambda a: a.__setitem__(0, torch.randn(c["b"] + 1 + bad, a[0].shape[1])),
                   "width": lambda a: a[6].__setitem__(0, a[6][0] + 50 + bad),
                   "negative rows": lambda a: a[5].__setitem__(0, -1 - bad),
                   "lists": lambda a: a.__setitem__(7, a[7] + [0])}
        if c["indices"][0].numel():
            choices["index out of range"] = lambda a: a[2].__setitem__(0, torch.full_like(a[2][0], 99))
        k1 = _first_1d(c)
        if k1 is not None:  # one bag fewer than grad's rows
            choices["offsets count"] = lambda a: a[3].__setitem__(k1, a[3][k1][:-1])
        if any(p is not None for p in psw):
            kp = next(k for k, p in enumerate(psw) if p is not None)
            choices["weights length"] = lambda a: a[4].__setitem__(kp, torch.rand(a[2][kp].numel() + 1 + bad))
        if 2 in c["modes"]:
            choices["arg_max shape"] = lambda a: a.__setitem__(1, torch.zeros(c["b"] + 1, a[1].shape[1] + 1,
                                                                              dtype=torch.long))
            choices["arg_max out of range"] = lambda a: a.__setitem__(1, torch.full_like(a[1], 99))
    else:  # tied_bwd
        b, v, d, n = draw(st.integers(1, 4)), draw(st.integers(2, 9)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
        bag = torch.randint(0, v, (b, draw(st.integers(1, 3))), generator=g)
        op = "tied_embedding_bag_backward"
        args = [torch.randn(n, d, generator=g), torch.randn(b, d, generator=g), torch.empty(b, 0, dtype=torch.long),
                torch.randint(0, v, (n,), generator=g), bag, None, None, v, 0, -1, -1, False, draw(st.booleans())]
        choices = {"grad_emb shape": lambda a: a.__setitem__(0, torch.randn(n + 1 + bad, d)),
                   "grad_bag rows": lambda a: a.__setitem__(1, torch.randn(b + 1 + bad, d)),
                   "index out of range": lambda a: a.__setitem__(3, torch.full((n,), v)),
                   "bag index out of range": lambda a: a.__setitem__(4, torch.full_like(bag, -1)),
                   "padding past": lambda a: a.__setitem__(10, v + bad)}
    what = draw(st.sampled_from(sorted(choices)))
    broken = copy.deepcopy(args)
    choices[what](broken)
    return f"{op}: {what}", op, tuple(args), tuple(broken)


DRAWN: list[tuple] = []


@seed(SEED)
@settings(max_examples=DIRECT, **SETTINGS)
@given(call=direct_calls())
def _draw_direct_calls(call):
    DRAWN.append(call)


def test_inconsistent_direct_op_calls_raise(record_property):
    """Each drawn call, consistent then broken, in a child process: the consistent one runs,
    the broken one raises (never crashes, never returns)."""
    DRAWN.clear()
    _draw_direct_calls()
    calls, consistent = [], set()
    for n, (label, op, good, broken) in enumerate(DRAWN):
        calls += [(f"{n} consistent {label}", op, good), (f"{n} broken {label}", op, broken)]
        consistent.add(calls[-2][0])
    got = run_calls(calls)
    raised = lambda outcome: outcome.split(":")[0] in ("RuntimeError", "IndexError", "ValueError")  # noqa: E731
    wrong = [(label, got[label]) for label, _, _ in calls
             if (got[label] != "ok" if label in consistent else not raised(got[label]))]
    print(f"hypothesis drew {len(DRAWN)} direct op calls, each run consistent and broken")
    record_property("hypothesis_examples", len(DRAWN))
    assert not wrong, "\n".join(f"{label}: {outcome}" for label, outcome in wrong)
    assert len(DRAWN) >= DIRECT
