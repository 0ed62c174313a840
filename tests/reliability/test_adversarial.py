"""Adversarial cases of the compiled CPU paths: a compiled graph run where the
native library is gone, indices changed in place after the forward, non-reentrant
checkpointing around a first call, and malformed offsets. Each compares with eager (or
plain ``torch.compile``) and must raise where eager raises, never give another result."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inductor_embed import config
from inductor_embed.lowering import _cpu_native


class OneHot(nn.Module):
    def __init__(self, multi_hot: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(50, 4)
        self.multi_hot = multi_hot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.one_hot(x, 50)
        return self.lin((h.sum(1) if self.multi_hot else h).float())


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(_cpu_native.lib() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("how", ["switched_off", "cannot_build"])
def test_a_graph_compiled_with_the_native_library_runs_without_it(how, monkeypatch):
    """The one-hot graph compiled with the C kernels holds opaque ops on them; run where the
    library is switched off (``config.patch(cpu_native_kernels=False)`` around the compiled
    model) or cannot be built (a process without a compiler that got this graph from a
    cache), they take the ATen reference: eager's numbers, no AssertionError."""
    torch.manual_seed(0)
    model, eager = OneHot(), OneHot()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    x = torch.randint(0, 50, (16,))
    compiled(x)  # compiled with the library
    if how == "cannot_build":
        monkeypatch.setattr(_cpu_native, "_state", {"lib": None})
        patch = config.patch()
    else:
        patch = config.patch(cpu_native_kernels=False)
    with patch:
        assert _cpu_native.lib() is None
        out = compiled(x)
        out.square().sum().backward()
        bad = x.clone()
        bad[3] = 50
        with pytest.raises(RuntimeError, match="Class values"):
            compiled(bad)
    want = eager(x)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    for got, ref in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(got, ref)


class Lookups(nn.Module):
    """Two lookups in a cat and two bags in a cat: both cat patterns."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Embedding(60, 4), nn.Embedding(60, 4)
        self.c, self.d = nn.EmbeddingBag(60, 4), nn.EmbeddingBag(60, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, 0]), self.b(x[:, 1]), self.c(x), self.d(x)], 1)


@pytest.mark.parametrize("model_cls", [OneHot, Lookups])
def test_non_reentrant_checkpoint_around_a_first_call(model_cls):
    """The compile of a first call inside ``checkpoint(..., use_reentrant=False)``
    ran the fused ops' autograd set-up on fake tensors while the pass computed their meta
    values, under the checkpoint's saved-tensor hooks: the forward saved more tensors than the
    recomputation (CheckpointError). The pass now runs with those hooks off, as AOTAutograd's
    tracing does."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model, eager = model_cls(), model_cls()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    x = torch.randint(0, 50, (8,) if model_cls is OneHot else (8, 3))
    for _ in range(2):  # the first call compiles inside the checkpoint; the second reuses it
        checkpoint(compiled, x, use_reentrant=False).square().sum().backward()
        checkpoint(eager, x, use_reentrant=False).square().sum().backward()
    for got, ref in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(got, ref)


class SlicedBags(nn.Module):
    """Bags of column slices of one input (views eager copies: they are not contiguous)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(60, 4), nn.EmbeddingBag(60, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, :3]), self.b(x[:, 3:])], 1)


class WholeBags(nn.Module):
    """Bags of the input itself (eager saves a view of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(60, 4), nn.EmbeddingBag(60, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class FieldLookups(nn.Module):
    """Lookups of an input's columns, in a cat."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Embedding(60, 4), nn.Embedding(60, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, 0]), self.b(x[:, 1])], -1)


_INPLACE = "modified by an inplace operation"


def _after_inplace_change(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | str:
    """``out = model(x); x.fill_(7); out.backward``: the gradients, or autograd's error."""
    out = model(x)
    x.fill_(7)
    try:
        out.square().sum().backward()
    except RuntimeError as e:
        assert _INPLACE in str(e)
        return "raised"
    return _grads(model.__dict__.get("_orig_mod", model))


@pytest.mark.parametrize("model_cls,shape", [
    (OneHot, (8,)), (lambda: OneHot(multi_hot=True), (8, 3)), (SlicedBags, (8, 6)), (WholeBags, (8, 3)),
    (FieldLookups, (8, 2)), (Lookups, (8, 3))], ids=["one_hot", "multi_hot", "sliced_bags", "whole_bags",
                                                    "field_lookups", "lookups_and_bags"])
@pytest.mark.parametrize("mode", ["backend", "enable"])
def test_indices_changed_in_place_after_the_forward(model_cls, shape, mode):
    """``out = m(x); x.fill_(7); out.sum().backward()`` must give the gradient of the
    original indices (eager's, where eager saved a copy) or autograd's in-place error, never
    the gradient of the new indices. Inductor returns a saved view of a graph input as a fresh
    alias with its own version counter, so the compile keeps the partitioner from saving views
    (``torch._functorch.config.recompute_views``): the input itself is saved, with its check."""
    import inductor_embed

    torch.manual_seed(0)
    model, eager = model_cls(), model_cls()
    eager.load_state_dict(model.state_dict())
    x = torch.randint(0, 50, shape)
    want = _after_inplace_change(eager, x.clone())
    if mode == "backend":
        got = _after_inplace_change(torch.compile(model, backend="inductor_embed"), x.clone())
    else:
        inductor_embed.enable()
        try:
            got = _after_inplace_change(torch.compile(model), x.clone())
        finally:
            inductor_embed.disable()
    if got != "raised":  # the original indices' gradient, which is eager's where eager has one
        assert want != "raised"
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


def test_a_direct_op_call_keeps_autograd_version_check():
    """Called eagerly, every fused op saves its indices by ``save_for_backward``: an in-place
    change before the backward raises, as eager's lookups do."""
    ops = torch.ops.inductor_embed
    w = torch.randn(10, 4, requires_grad=True)
    lin = torch.randn(4, 10, requires_grad=True)
    calls = {
        "multi_embedding": lambda i: ops.multi_embedding([w, w], [i, i], [-1, -1], [False, False]),
        "multi_embedding_sum": lambda i: ops.multi_embedding_sum([w, w], [i, i], [-1, -1], [False, False]),
        "one_hot_linear": lambda i: ops.one_hot_linear([i.unsqueeze(-1)], [10], [0], lin),
        "multi_embedding_bag": lambda i: ops.multi_embedding_bag(
            [w, w], [i.view(2, 3), i.view(2, 3)], [None, None], [], [0, 0], [-1, -1], [False, False],
            [False, False])[0],
        "tied_embedding_bag": lambda i: ops.tied_embedding_bag(w, None, i, i.view(2, 3), None, None, 0, -1, -1,
                                                               False)[1],
    }
    for call in calls.values():
        i = torch.randint(0, 10, (6,))
        out = call(i)
        i.fill_(3)
        with pytest.raises(RuntimeError, match=_INPLACE):
            out.sum().backward()


def test_enable_sets_and_disable_restores_the_partitioner_field():
    import torch._functorch.config as functorch_config

    import inductor_embed
    from inductor_embed import _compat

    before = functorch_config.recompute_views
    inductor_embed.enable()
    try:
        assert all(getattr(functorch_config, k) == v for k, v in _compat.aot_config_patches().items())
    finally:
        inductor_embed.disable()
    assert functorch_config.recompute_views == before


@pytest.mark.parametrize("name,value,message", [
    ("MIN_TABLES", "abc", "INDUCTOR_EMBED_MIN_TABLES='abc': expected an integer"),
    ("CPU_GRAD_CACHE_MB", "-5", "INDUCTOR_EMBED_CPU_GRAD_CACHE_MB='-5': expected an integer >= 0"),
])
def test_a_bad_environment_value_names_its_variable(name, value, message):
    """``INDUCTOR_EMBED_MIN_TABLES=abc`` raised a bare ``invalid literal for int()``,
    and ``INDUCTOR_EMBED_CPU_GRAD_CACHE_MB=-5`` was taken. The import raises a ValueError
    naming the variable and what it takes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, f"INDUCTOR_EMBED_{name}": value}
    run = subprocess.run([sys.executable, "-c", "import inductor_embed"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "ValueError" in run.stderr and message in run.stderr, run.stderr[-2000:]


def test_an_unknown_environment_variable_is_named_and_ignored():
    """A variable that is no config field (misspelt, or a CPU rule that is no longer
    configuration) warns at import, naming it, and changes nothing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INDUCTOR_EMBED_BAG_PATTERNS_ON_CPU": "all"}
    code = "import inductor_embed, inductor_embed._internal as i; print(i.bag_patterns_on_cpu)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "INDUCTOR_EMBED_BAG_PATTERNS_ON_CPU is not an inductor_embed config field" in run.stderr
    assert run.stdout.strip() == "fp32"


def test_config_patch_rejects_a_bad_value():
    with pytest.raises(ValueError, match="cpu_grad_cache_mb=-5: expected an integer >= 0"):
        with config.patch(cpu_grad_cache_mb=-5):
            pass
    with pytest.raises(ValueError, match="min_tables='3': expected an integer"):
        with config.patch(min_tables="3"):
            pass
    assert config.cpu_grad_cache_mb >= 0 and isinstance(config.min_tables, int)


def test_config_applies_to_the_compiles_inside_the_block():
    """What the README says of ``config.patch``: a graph compiled before the block keeps its
    code (the config is read when compiling, and Dynamo does not guard on it); one compiled
    inside the block has the pattern off."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    x = torch.randint(0, 50, (8,))
    before = torch.compile(OneHot(), backend="inductor_embed")
    before(x)
    assert counters["inductor_embed"]["one_hot_linear"] == 1
    with config.patch(one_hot_linear=False):
        before(x)  # no recompile: still the rewritten graph
        assert counters["inductor_embed"]["one_hot_linear"] == 1
        inside = OneHot()
        torch.testing.assert_close(torch.compile(inside, backend="inductor_embed")(x), inside(x))
    assert counters["inductor_embed"]["one_hot_linear"] == 1  # the compile inside did not rewrite


class TwoBags(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(60, 4, mode=mode), nn.EmbeddingBag(60, 4, mode=mode)

    def forward(self, i: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(i, o), self.b(i, o)], 1)


class TiedPair(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(60, 4)
        self.mode = mode

    def forward(self, i: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.emb(i), F.embedding_bag(i, self.emb.weight, o, mode=self.mode)


@pytest.mark.parametrize("model_cls", [TwoBags, TiedPair])
def test_int32_indices_with_int64_offsets_past_2_31_raise_as_eager(model_cls):
    """Eager promotes both to int64 and raises "offsets[-1] can not be greater than
    input's length"; the fused op cast the offsets to int32 (2**32 + 7 became 7)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = model_cls("sum")
    i, o = torch.randint(0, 60, (8,), dtype=torch.int32), torch.tensor([0, 3, 5, 2**32 + 7])
    with pytest.raises(RuntimeError, match="offsets\\[-1\\] can not be greater than input's length"):
        model(i, o)
    compiled = torch.compile(model, backend="inductor_embed")
    good = torch.tensor([0, 3, 5, 7])
    torch.testing.assert_close(compiled(i, good), model(i, good))
    assert sum(counters["inductor_embed"][p] for p in ("multi_embedding_bag", "tied_embedding_bag")) == 1
    with pytest.raises(RuntimeError, match="offsets\\[-1\\] can not be greater than input's length"):
        compiled(i, o)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("model_cls", [TwoBags, TiedPair])
def test_decreasing_offsets_raise_in_every_mode(model_cls, mode):
    """Decreasing offsets: eager's CPU kernels raise for most ("Expected i < index_size", sum
    and mean) and accept the others (max mode; sum and mean with a padding_idx), on paths
    whose results do not agree. The fused ops raise for all, in every mode and on every path
    (the kernels' "malformed offsets" flag; the CPU checks), forward first (docs/reliability.md)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = model_cls(mode)
    i = torch.randint(0, 60, (8,))
    compiled = torch.compile(model, backend="inductor_embed", dynamic=False)
    good = torch.tensor([0, 3, 5, 7])
    torch.testing.assert_close(compiled(i, good), model(i, good))
    assert sum(counters["inductor_embed"][p] for p in ("multi_embedding_bag", "tied_embedding_bag")) == 1
    with pytest.raises(RuntimeError, match="malformed offsets|offsets"):
        compiled(i, torch.tensor([0, 5, 3, 7]))


class LastOffsetBags(nn.Module):
    def __init__(self, mode: str, padding_idx: int | None, tied: bool) -> None:
        super().__init__()
        self.a = nn.EmbeddingBag(20, 3, mode=mode, padding_idx=padding_idx, include_last_offset=True)
        self.b = nn.EmbeddingBag(20, 3, mode=mode, padding_idx=padding_idx, include_last_offset=True)
        self.emb = nn.Embedding(20, 3)
        self.mode, self.padding_idx, self.tied = mode, padding_idx, tied

    def forward(self, i: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        if self.tied:
            bag = F.embedding_bag(i, self.emb.weight, o, mode=self.mode, padding_idx=self.padding_idx,
                                  include_last_offset=True)
            return torch.cat([self.emb(i[:2]).reshape(1, -1).expand(bag.shape[0], -1), bag], 1)
        return torch.cat([self.a(i, o), self.b(i, o)], 1)


@pytest.mark.parametrize("tied", [False, True], ids=["bags", "tied"])
@pytest.mark.parametrize("mode,padding_idx", [("sum", None), ("sum", 1), ("mean", None), ("max", None)])
def test_indices_past_the_last_offset_are_in_no_bag(mode, padding_idx, tied):
    """include_last_offset with offsets[B] < nnz (found by tests/reliability/test_fuzz_ops.py):
    the fused ops read the indices past offsets[B] as in no bag, forward and backward, which
    is eager on the input cut at offsets[B]. Eager's CPU kernels on the uncut input count
    them into the last bag's mean size, and with a padding_idx into its sum, and leave their
    rows of the sum's gradient unwritten; the fused forward used to be eager's and its
    backward the cut input's."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model, eager = LastOffsetBags(mode, padding_idx, tied), LastOffsetBags(mode, padding_idx, tied)
    eager.load_state_dict(model.state_dict())
    i = torch.tensor([2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 15])
    o = torch.tensor([0, 2, 4, 7, 9])  # indices 9 and 10 (13, 15) are in no bag
    out = torch.compile(model, backend="inductor_embed")(i, o)
    assert sum(counters["inductor_embed"][p] for p in ("multi_embedding_bag", "tied_embedding_bag")) == 1
    want = eager(i[:9], o)
    torch.testing.assert_close(out, want)
    g = torch.randn(out.shape)
    out.backward(g)
    want.backward(g)
    _assert_grads_like(model, eager)


def _assert_grads_like(model: nn.Module, eager: nn.Module) -> None:
    """Every parameter's gradient equal to eager's (dense or sparse); none, or all zeros, where
    eager's is None."""
    for (name, q), r in zip(model.named_parameters(), eager.parameters()):
        if r.grad is None:
            assert q.grad is None or not q.grad.to_dense().any(), name
        else:
            torch.testing.assert_close(q.grad.to_dense(), r.grad.to_dense(), msg=lambda m, n=name: f"{n}: {m}")


class TailBags(nn.Module):
    def __init__(self, sparse: bool, tied: bool) -> None:
        super().__init__()
        self.a = nn.EmbeddingBag(20, 3, mode="sum", include_last_offset=True, sparse=sparse)
        self.b = nn.EmbeddingBag(20, 3, mode="sum", include_last_offset=True, sparse=sparse)
        self.emb = nn.Embedding(20, 3, sparse=sparse)
        self.tied = tied

    def forward(self, i: torch.Tensor, o: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.tied:
            bag = F.embedding_bag(i, self.emb.weight, o, mode="sum", per_sample_weights=p, include_last_offset=True,
                                  sparse=self.emb.sparse)
            return torch.cat([self.emb(i[:bag.shape[0]]), bag], 1)
        return torch.cat([self.a(i, o, per_sample_weights=p), self.b(i, o, per_sample_weights=p)], 1)


@pytest.mark.parametrize("tied", [False, True], ids=["bags", "tied"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_indices_past_the_last_offset_may_be_out_of_range(sparse, tied):
    """Indices in no bag are never read (found by the fuzzer: eager accepts an out-of-range
    index there; the op's check raised): not checked, no gradient entry, per-sample weights'
    gradient 0."""
    torch.manual_seed(0)
    model, eager = TailBags(sparse, tied), TailBags(sparse, tied)
    eager.load_state_dict(model.state_dict())
    i = torch.tensor([2, 3, 4, 5, 6, 7, 99, -1])
    o = torch.tensor([0, 2, 4, 6])  # 99 and -1 are in no bag
    p = torch.rand(8, requires_grad=True)
    out = torch.compile(model, backend="inductor_embed")(i, o, p)
    pe = p.detach()[:6].clone().requires_grad_()
    want = eager(i[:6], o, pe)
    torch.testing.assert_close(out, want)
    g = torch.randn(out.shape)
    out.backward(g)
    want.backward(g)
    _assert_grads_like(model, eager)
    torch.testing.assert_close(p.grad[:6], pe.grad)
    assert not p.grad[6:].any()


@pytest.mark.parametrize("itype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_max_mode_rows_are_int64_for_int32_indices(itype):
    """The bag op's saved max rows are int64 as its schema and fake impl say (found by the
    fuzzer: ATen gave them the indices' int32, which the backward's checks then refused);
    compiled max-mode bags of int32 indices train as eager."""
    torch.manual_seed(0)
    w = torch.randn(10, 3)
    i, o = torch.randint(0, 10, (8,), dtype=itype), torch.tensor([0, 3, 5], dtype=itype)
    _, arg_max = torch.ops.inductor_embed.multi_embedding_bag([w], [i], [o], [], [2], [-1], [False], [False])
    assert arg_max.dtype == torch.int64
    model, eager = TwoBags("max"), TwoBags("max")
    eager.load_state_dict(model.state_dict())
    out = torch.compile(model, backend="inductor_embed")(i, o)
    want = eager(i, o)
    torch.testing.assert_close(out, want)
    out.square().sum().backward()
    want.square().sum().backward()
    for got, ref in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(got, ref)
