"""End to end: the multi_embedding_bag and tied_embedding_bag patterns on unmodified models
(DLRM's embedding layer as dlrm_s_pytorch.py writes it, the three tied Embedding /
EmbeddingBag examples of the Q&A "How do I tie embeddings between torch.nn.Embedding and
torch.nn.EmbeddingBag?", torchrec's EmbeddingBagCollection), compiled with
backend="inductor_embed"."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import inductor_embed
from inductor_embed import _internal
from tests._util import deterministic
from tests.inductor_embed._util import TOL, assert_same_grad, compare_with_eager, rewrites, skips

BAG, TIED = "multi_embedding_bag", "tied_embedding_bag"


class DLRMEmbeddings(nn.Module):
    """facebookresearch/dlrm's create_emb / apply_emb / interact_features("dot"), as written."""

    def __init__(self, m: int, ln: list[int], sparse: bool = True) -> None:
        super().__init__()
        self.emb_l = nn.ModuleList()
        for n in ln:
            W = torch.empty(n, m).uniform_(-(1 / n) ** 0.5, (1 / n) ** 0.5)
            self.emb_l.append(nn.EmbeddingBag(n, m, mode="sum", sparse=sparse, _weight=W.clone().requires_grad_()))

    def apply_emb(self, lS_o, lS_i, emb_l):
        ly = []
        for k, sparse_index_group_batch in enumerate(lS_i):
            sparse_offset_group_batch = lS_o[k]
            E = emb_l[k]
            V = E(sparse_index_group_batch, sparse_offset_group_batch)
            ly.append(V)
        return ly

    def forward(self, x, lS_o, lS_i):
        ly = self.apply_emb(lS_o, lS_i, self.emb_l)
        (batch_size, d) = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        li = torch.tensor([i for i in range(ni) for j in range(i)])
        lj = torch.tensor([j for i in range(nj) for j in range(i)])
        Zflat = Z[:, li, lj]
        return torch.cat([x] + [Zflat], dim=1)


def _dlrm_inputs(ln, batch=6, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lS_o, lS_i = [], []
    for n in ln:
        lengths = torch.randint(0, 4, (batch,), generator=g)
        lS_o.append(torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]))
        lS_i.append(torch.randint(0, n, (int(lengths.sum()),), generator=g))
    return torch.randn(batch, m, generator=g, requires_grad=True), lS_o, lS_i


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_dlrm_as_written_is_rewritten(sparse: bool) -> None:
    ln = [10, 20, 30, 15]
    model = DLRMEmbeddings(4, ln, sparse)
    x, lS_o, lS_i = _dlrm_inputs(ln)
    eager_model = copy.deepcopy(model)
    out_e = eager_model(x, lS_o, lS_i)
    out_c = torch.compile(model, backend="inductor_embed")(x, lS_o, lS_i)
    torch.testing.assert_close(out_c, out_e)
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    assert rewrites(BAG) == 1
    for a, b in zip(model.emb_l, eager_model.emb_l):
        assert a.weight.grad.layout == b.weight.grad.layout
        torch.testing.assert_close(a.weight.grad.to_dense(), b.weight.grad.to_dense())


class Bags(nn.Module):
    """Every knob at once: modes, 2-D and offsets inputs, include_last_offset, per-sample
    weights, padding, int32 indices; then a stack (tokens) and a cat with a dense piece."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.a = nn.EmbeddingBag(10, 4, mode="sum", padding_idx=0, dtype=dtype)
        self.b = nn.EmbeddingBag(12, 4, mode="mean", dtype=dtype)
        self.c = nn.EmbeddingBag(14, 4, mode="max", dtype=dtype)
        self.d = nn.EmbeddingBag(9, 4, mode="sum", include_last_offset=True, dtype=dtype)

    def forward(self, i2d, i1d, o1d, psw, dense):
        ys = [self.a(i2d), self.b(i1d, o1d), self.c(i2d.int()),
              self.d(i1d, torch.cat([o1d, o1d.new_full((1,), i1d.shape[0])]), per_sample_weights=psw)]
        return torch.cat([dense, torch.stack(ys, dim=1).flatten(1)], dim=1)


def _bag_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    i2d = torch.randint(0, 9, (5, 3), generator=g)
    i2d[0, 0] = 0
    i1d = torch.randint(0, 9, (11,), generator=g)
    o1d = torch.tensor([0, 2, 2, 6, 9])
    return i2d, i1d, o1d, torch.randn(11, generator=g).to(dtype), torch.randn(5, 2, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_knob_matches_eager(dtype: torch.dtype) -> None:
    compare_with_eager(Bags(dtype), _bag_inputs(dtype), dtype=dtype, exact_forward=False)
    assert rewrites(BAG) == 1 and skips(BAG) == 0


def test_skips_are_logged_and_left_to_eager() -> None:
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.EmbeddingBag(10, 4, max_norm=1.0)
            self.b = nn.EmbeddingBag(10, 4, scale_grad_by_freq=True)
            self.c = nn.EmbeddingBag(10, 4)

        def forward(self, i):
            return torch.cat([self.a(i), self.b(i), self.c(i)], 1)

    report = inductor_embed.explain(Odd(), torch.randint(0, 10, (3, 2)))
    reasons = " | ".join(s.reason for s in report.skipped if s.pattern == BAG)
    assert "max_norm" in reasons and "scale_grad_by_freq" in reasons and "only 1 fusable" in reasons
    compare_with_eager(Odd(), (torch.randint(0, 10, (3, 2)),))
    assert rewrites(BAG) == 0


class _Tied(nn.Module):
    def __init__(self, mode: str = "mean"):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mode = mode

    def forward(self, x, bag):
        return self.emb(x) + nn.functional.embedding_bag(bag, self.emb.weight, mode=self.mode)


def _tied_inputs() -> list[torch.Tensor]:
    return [torch.randint(0, 10, (3,)), torch.randint(0, 10, (3, 2))]


class _MaxBags(nn.Module):
    def __init__(self, dtype=torch.float32, sparse=False):
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(10, 4, mode=m, dtype=dtype, sparse=sparse and k == 2)
                                  for k, m in enumerate(("max", "sum", "sum")))

    def forward(self, x):
        return torch.cat([b(x[:, k]) for k, b in enumerate(self.bags)], dim=1)


def test_cpu_default_takes_fp32_bags() -> None:
    """On the CPU by default (``bag_patterns_on_cpu="fp32"``) every fp32 lookup is rewritten:
    sum, max and ``sparse=True`` ones (their C kernels are faster than eager's); a half one is
    left, with the reason logged."""
    with inductor_embed._internal.patch(bag_patterns_on_cpu="fp32"):
        x = torch.randint(0, 10, (5, 3, 2))
        report = inductor_embed.explain(_MaxBags(), x)
        assert [len(r.tables) for r in report.rewrites if r.pattern == BAG] == [3]
        report = inductor_embed.explain(_MaxBags(sparse=True), x)  # the last one sparse=True
        assert [len(r.tables) for r in report.rewrites if r.pattern == BAG] == [3]
        compare_with_eager(_MaxBags(), (x,))
        with inductor_embed._internal.patch(sparse_coalesce_on_cpu=False):  # eager's COO form, as shipped
            compare_with_eager(_MaxBags(sparse=True), (x,))
        assert rewrites(BAG) == 2
        report = inductor_embed.explain(_MaxBags(torch.bfloat16), x)
        assert not report.rewrites
        assert any("only fp32 lookups are rewritten" in s.reason and "bfloat16" in s.reason
                   for s in report.skipped if s.pattern == BAG), str(report)
        assert [r.pattern for r in inductor_embed.explain(_Tied(), *_tied_inputs()).rewrites] == ["tied_embedding_bag"]
        assert [r.pattern for r in inductor_embed.explain(_Tied("max"), *_tied_inputs()).rewrites] == \
            ["tied_embedding_bag"]


def test_cpu_none_leaves_bags() -> None:
    """``bag_patterns_on_cpu="none"`` leaves every CPU lookup, with the reason logged."""
    for value in ("none",):
        with inductor_embed._internal.patch(bag_patterns_on_cpu=value):
            report = inductor_embed.explain(Bags(), *_bag_inputs())
            assert not [r for r in report.rewrites if r.pattern == BAG]
            assert any("bag_patterns_on_cpu='none'" in s.reason for s in report.skipped if s.pattern == BAG)
            report = inductor_embed.explain(_Tied(), *_tied_inputs())
            # the bag left, its tied token lookup is a lone lookup: taken alone
            assert [r.pattern for r in report.rewrites] == ["independent_lookups"]
    with inductor_embed._internal.patch(bag_patterns_on_cpu="none"):
        compare_with_eager(_Tied(), _tied_inputs())
    assert rewrites(BAG) == 0 and rewrites("tied_embedding_bag") == 0
    with pytest.raises(ValueError, match="'fp32'"), inductor_embed._internal.patch(bag_patterns_on_cpu="some"):
        pass


def test_switch_off_keeps_eager_graph() -> None:
    with inductor_embed.config.patch(multi_embedding_bag=False):
        compare_with_eager(Bags(), _bag_inputs())
    assert rewrites(BAG) == 0


@pytest.mark.parametrize("bad", ["index", "decreasing-offsets", "offsets-past-end"])
def test_bad_input_raises_like_eager(bad: str) -> None:
    model = DLRMEmbeddings(4, [10, 20], sparse=False)
    x, lS_o, lS_i = _dlrm_inputs([10, 20], batch=3)
    torch.compile(model, backend="inductor_embed")(x, lS_o, lS_i)  # compiled on good input first
    lS_i = [t.clone() for t in lS_i]
    if bad == "index":
        lS_i[1] = torch.full_like(lS_i[1], 20)
    elif bad == "decreasing-offsets":
        lS_o = [torch.tensor([0, 3, 1]), lS_o[1]]
        lS_i[0] = torch.randint(0, 10, (5,))
    else:
        lS_o = [lS_o[0], torch.tensor([0, 1, 99])]
    for fn in (model, torch.compile(model, backend="inductor_embed")):
        with pytest.raises((RuntimeError, IndexError)):
            fn(x, lS_o, lS_i)


def test_deterministic_mode_matches_eager() -> None:
    with deterministic():
        compare_with_eager(Bags(), _bag_inputs())
    assert rewrites(BAG) == 1


# --- tied Embedding / EmbeddingBag ----------------------------------------------------------


class Direct(nn.Module):
    """Examples 1 and 2: from_pretrained on the Embedding's weight (custom init for example 2)."""

    def __init__(self, custom_init: bool = False) -> None:
        super().__init__()
        self.shared_embedding = nn.Embedding(100, 32)
        if custom_init:
            nn.init.uniform_(self.shared_embedding.weight, -0.1, 0.1)
        self.embedding_bag = nn.EmbeddingBag.from_pretrained(embeddings=self.shared_embedding.weight, freeze=False)

    def forward(self, indices, sequences, offsets):
        return self.shared_embedding(indices), self.embedding_bag(sequences, offsets)


class SharedEmbeddingLayer(nn.Module):
    """Example 3, verbatim."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.shared_embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding_bag = nn.EmbeddingBag.from_pretrained(embeddings=self.shared_embedding.weight, freeze=False)

    def forward(self, indices, sequences, offsets):
        single_embedding = self.shared_embedding(indices)
        seq_embedding = self.embedding_bag(sequences, offsets)
        return single_embedding, seq_embedding


class OneParameter(nn.Module):
    """The same Parameter assigned to both modules: one gradient, the sum of both parts."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, padding_idx=3)
        self.bag = nn.EmbeddingBag(50, 8, mode="mean")
        self.bag.weight = self.emb.weight

    def forward(self, indices, sequences, offsets):
        return torch.cat([self.emb(indices).sum(1), self.bag(sequences, offsets)], 1)


def _example_inputs():
    indices = torch.randint(0, 100, (5,))
    sequences = torch.randint(0, 100, (3, 4))
    return indices, sequences, torch.tensor([0, 4, 8])


@pytest.mark.parametrize("make", [lambda: Direct(), lambda: Direct(True), lambda: SharedEmbeddingLayer(100, 32)],
                         ids=["example1", "example2", "example3"])
def test_tied_embedding_bag_examples(make) -> None:
    model = make()
    indices, sequences, offsets = _example_inputs()
    # As written, the examples pass a 2-D `sequences` with offsets: eager raises, and so
    # does the compiled model (Dynamo raises while tracing; nothing is rewritten).
    with pytest.raises(ValueError, match="offsets has to be None"):
        model(indices, sequences, offsets)
    with pytest.raises(Exception, match="offsets has to be None"):
        torch.compile(copy.deepcopy(model), backend="inductor_embed")(indices, sequences, offsets)
    torch._dynamo.reset()
    # The sequences the offsets describe (3 bags of 4): rewritten, equal to eager,
    # both Parameters' gradients included.
    eager = copy.deepcopy(model)
    args = (indices, sequences.reshape(-1), offsets)
    out_e = eager(*args)
    out_c = torch.compile(model, backend="inductor_embed")(*args)
    assert rewrites(TIED) == 1
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grads = [torch.randn_like(o) for o in out_e]
    torch.autograd.backward(out_e, grads)
    torch.autograd.backward(out_c, grads)
    for (name, p), q in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_tied_one_parameter() -> None:
    g = torch.Generator().manual_seed(0)
    compare_with_eager(OneParameter(), (torch.randint(0, 50, (4, 3), generator=g),
                                        torch.randint(0, 50, (10,), generator=g), torch.tensor([0, 3, 3, 7])))
    assert rewrites(TIED) == 1


class SparseTied(nn.Module):
    """A tied Embedding/EmbeddingBag pair with sparse flags: one Parameter (assigned to both)
    or two (``from_pretrained``). The Embedding's padding row is dropped from its sparse
    gradient; its output has two users (a sparse lookup here may: the op replaces it)."""

    def __init__(self, emb_sparse: bool, bag_sparse: bool, two: bool, dtype=torch.float32, device="cpu") -> None:
        super().__init__()
        # Built on its device: Module.to would copy from_pretrained's two Parameters apart.
        self.emb = nn.Embedding(50, 8, padding_idx=3, sparse=emb_sparse, dtype=dtype, device=device)
        if two:
            self.bag = nn.EmbeddingBag.from_pretrained(self.emb.weight, freeze=False, mode="mean", sparse=bag_sparse)
        else:
            self.bag = nn.EmbeddingBag(50, 8, mode="mean", sparse=bag_sparse, dtype=dtype, device=device)
            self.bag.weight = self.emb.weight

    def forward(self, indices, sequences, offsets):
        e = self.emb(indices)
        return torch.cat([e.sum(1), e.amax(1), self.bag(sequences, offsets)], 1)


def _sparse_tied_inputs():
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 50, (4, 3), generator=g)
    indices[0, :2] = 3  # padding entries: no gradient
    sequences = torch.randint(0, 50, (10,), generator=g)
    sequences[:4] = indices[1, 0]  # a row both lookups read, four times
    return indices, sequences, torch.tensor([0, 3, 3, 7])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sparse", [(True, True), (True, False), (False, True)], ids=["both", "emb", "bag"])
@pytest.mark.parametrize("two", [False, True], ids=["one-parameter", "two-parameters"])
def test_tied_sparse_is_fused(two: bool, sparse: tuple[bool, bool], dtype: torch.dtype) -> None:
    """Sparse lookups of a tied weight are fused. Eager's gradients: one Parameter read by
    two sparse lookups gets the sum of two uncoalesced COO tensors, read by a sparse and a
    dense lookup a dense one; two Parameters each their own, of their own layout. The
    fused op's sparse gradients are coalesced: equal to eager's after ``.coalesce()``.
    (Plain torch.compile cannot compile these backwards: it fails to add the one-Parameter
    pair's two sparse gradients, and falls back to eager at a sparse Embedding with
    padding_idx, whose COO gradient drops padding entries by a data-dependent nonzero.)"""
    # Two models built alike, not a deep copy: that would give from_pretrained's two
    # Parameters two storages (no longer tied).
    model, fused = (torch.manual_seed(0) and SparseTied(*sparse, two, dtype) for _ in range(2))
    args = _sparse_tied_inputs()
    out_c = torch.compile(fused, backend="inductor_embed")(*args)
    out_e = model(*args)
    assert rewrites(TIED) == 1 and skips(TIED) == 0
    torch.testing.assert_close(out_c, out_e, **TOL[dtype])
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    named = dict(fused.named_parameters())
    for name, p in model.named_parameters():
        assert_same_grad(named[name].grad, p.grad, dtype, name)


@pytest.mark.parametrize("two", [False, True], ids=["one-parameter", "two-parameters"])
def test_tied_sparse_in_eager_form_on_the_cpu(two: bool) -> None:
    """The CPU default (_internal.sparse_coalesce_on_cpu off): both sparse parts in eager's own
    form; one Parameter gets one COO tensor with both lookups' entries."""
    with _internal.patch(sparse_coalesce_on_cpu=False):
        test_tied_sparse_is_fused(two, (True, True), torch.float32)


@pytest.mark.parametrize("two, sparse", [(False, (True, True)), (True, (True, False)), (True, (False, True))],
                         ids=["one-parameter-both", "two-parameters-emb", "two-parameters-bag"])
def test_tied_sparse_on_both_paths(path: str, two: bool, sparse: tuple[bool, bool]) -> None:
    """The compiled backward on the ATen path and the kernel path (CUDA, or the Triton
    interpreter): every part of the sparse backward, dense parts included."""
    model, fused = (torch.manual_seed(0) and SparseTied(*sparse, two, device=path) for _ in range(2))
    args = [a.to(path) for a in _sparse_tied_inputs()]
    out_c = torch.compile(fused, backend="inductor_embed")(*args)
    out_e = model(*args)
    assert rewrites(TIED) == 1
    torch.testing.assert_close(out_c, out_e)
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    named = dict(fused.named_parameters())
    for name, p in model.named_parameters():
        assert_same_grad(named[name].grad, p.grad, torch.float32, name)


@pytest.mark.parametrize("opt", ["SGD", "SparseAdam"])
def test_tied_sparse_optimizer_steps_match_eager(opt: str) -> None:
    # The two Parameters share one storage: each step applies both gradients to it.
    model, fused = (torch.manual_seed(1) and SparseTied(True, True, two=True) for _ in range(2))
    compiled = torch.compile(fused, backend="inductor_embed")
    opt_e, opt_c = (getattr(torch.optim, opt)(m.parameters(), lr=0.05) for m in (model, fused))
    for _ in range(2):
        args = _sparse_tied_inputs()
        for run, o in ((model, opt_e), (compiled, opt_c)):
            o.zero_grad(set_to_none=True)
            run(*args).square().mean().backward()
            o.step()
    assert rewrites(TIED) == 1
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n} after 2 {opt} steps: {m}")


def test_tied_sparse_bag_with_padding_idx_is_left(caplog) -> None:
    """A sparse EmbeddingBag with padding_idx: its COO gradient drops padding entries (a
    data-dependent size), which the op does not make; the pair is left (logged)."""
    import logging

    model = SparseTied(True, True, two=False)
    model.bag.padding_idx = 5
    # Inference: with gradients, plain torch.compile fails to trace the left lookups'
    # sparse backward (the Embedding's padding entries: a data-dependent nonzero).
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"), torch.no_grad():
        torch.compile(model, backend="inductor_embed")(*_sparse_tied_inputs())
    assert rewrites(TIED) == 0
    assert "sparse=True with padding_idx" in caplog.text


def test_torchrec_embedding_bag_collection() -> None:
    torchrec = pytest.importorskip("torchrec", reason="torchrec is installed by scripts/setup.sh where it installs")
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

    tables = [EmbeddingBagConfig(name=f"t{k}", embedding_dim=d, num_embeddings=n, feature_names=[f"f{k}"],
                                 pooling=torchrec.PoolingType.SUM) for k, (d, n) in enumerate(((8, 100), (8, 200), (16, 300)))]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.ebc = ebc

        def forward(self, kjt):
            return self.ebc(kjt).values()

    def kjt():
        return KeyedJaggedTensor.from_lengths_sync(
            keys=["f0", "f1", "f2"], values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            lengths=torch.tensor([2, 1, 3, 0, 4, 2]))

    compare_with_eager(Model(), (kjt(),))
    assert rewrites(BAG) == 1


def test_2d_input_with_per_sample_weights() -> None:
    """Column slices of one [B, T, L] batch, weighted (the bench's table_batched_bags model)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bags = nn.ModuleList([nn.EmbeddingBag(30, 8, mode="sum") for _ in range(2)])

        def forward(self, x, psw):
            return torch.cat([bag(x[:, k], per_sample_weights=psw[:, k]) for k, bag in enumerate(self.bags)], dim=1)

    compare_with_eager(M(), (torch.randint(0, 30, (6, 2, 4)), torch.randn(6, 2, 4)), exact_forward=False)
    assert rewrites(BAG) == 1


def test_cpu_bag_op_compiles_no_kernel() -> None:
    """On the CPU the fused bag op is opaque both ways (ATen's embedding_bag per table, the
    segment-sum backward): Inductor compiles no C++ kernel for it, where the unfused model's
    graph has per-table index kernels (26 tables: ~9 s of a cold compile)."""
    from torch._inductor import metrics

    x = torch.randint(0, 10, (5, 3, 2))
    for backend in ("inductor", "inductor_embed"):
        torch._dynamo.reset()
        metrics.reset()
        torch.compile(_MaxBags(), backend=backend)(x).sum().backward()
        kernels = metrics.generated_kernel_count
        assert (kernels > 0) if backend == "inductor" else (kernels == 0), (backend, kernels)
    assert rewrites(BAG) == 1
