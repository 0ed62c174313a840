"""End to end: ``sparse=True`` lookups through the fused ops, vs eager.

Eager's sparse gradient is an uncoalesced COO tensor (one entry per index); the fused
op's is coalesced (sorted unique rows, summed values): equal after ``.coalesce()``.
Optimizer steps (SparseAdam, Adagrad, SGD) on them equal eager's.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn as nn

from inductor_embed import _internal
from tests.inductor_embed._util import TOL, assert_same_grad, rewrites, skips


class SparseTables(nn.Module):
    """Tables of a CTR model with sparse gradients (one with a padding row, one dense), cat,
    then a dense layer."""

    def __init__(self, dtype: torch.dtype = torch.float32, dense_table: bool = True) -> None:
        super().__init__()
        self.tables = nn.ModuleList([
            nn.Embedding(40, 8, sparse=True, padding_idx=0, dtype=dtype),
            nn.Embedding(30, 4, sparse=True, dtype=dtype),
            nn.Embedding(20, 4, sparse=not dense_table, dtype=dtype),
            nn.Embedding(50, 8, sparse=True, dtype=dtype),
        ])
        self.fc = nn.Linear(24, 3, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=-1))


def _inputs(batch: int = 32) -> torch.Tensor:
    x = torch.stack([torch.randint(0, v, (batch,)) for v in (40, 30, 20, 50)], dim=1)
    x[:3, 0] = 0  # padding entries: no gradient in eager's sparse gradient either
    x[3:9, 3] = 7  # a repeated row: coalescing sums its entries
    return x


def _compare(model: nn.Module, inputs: tuple, dtype: torch.dtype, pattern: str = "multi_embedding_cat") -> None:
    """Compile a copy with inductor_embed: one rewrite of ``pattern``, eager's output, and
    every gradient eager's (sparse ones after ``.coalesce()``)."""
    fused = copy.deepcopy(model)
    out_c = torch.compile(fused, backend="inductor_embed")(*inputs)
    out_e = model(*inputs)
    assert rewrites(pattern) == 1
    torch.testing.assert_close(out_c, out_e, **TOL[dtype])
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        assert_same_grad(q.grad, p.grad, dtype, name, flagged=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_tables_are_fused_with_coalesced_gradients(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    _compare(SparseTables(dtype), (_inputs(),), dtype)


@pytest.mark.parametrize("opt", ["SparseAdam", "Adagrad", "SGD"])
def test_optimizer_steps_match_eager(opt: str) -> None:
    torch.manual_seed(1)
    model = SparseTables(dense_table=False)
    fused = copy.deepcopy(model)
    compiled = torch.compile(fused, backend="inductor_embed")

    def optimizers(m: nn.Module) -> list[torch.optim.Optimizer]:
        tables, dense = list(m.tables.parameters()), list(m.fc.parameters())
        if opt == "SparseAdam":
            return [torch.optim.SparseAdam(tables, lr=0.05), torch.optim.Adam(dense, lr=0.05)]
        cls = getattr(torch.optim, opt)
        return [cls(tables + dense, lr=0.05)]

    opts_e, opts_c = optimizers(model), optimizers(fused)
    for _ in range(2):
        x = _inputs()
        for run, opts in ((model, opts_e), (compiled, opts_c)):
            for o in opts:
                o.zero_grad(set_to_none=True)
            run(x).square().mean().backward()
            for o in opts:
                o.step()
    assert rewrites() == 1
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n} after 2 {opt} steps: {m}")


def test_sparse_with_scale_grad_by_freq_is_left(caplog) -> None:
    class Freq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Embedding(10, 4, sparse=True)
            self.b = nn.Embedding(10, 4, sparse=True, scale_grad_by_freq=True)
            self.c = nn.Embedding(10, 4, sparse=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x), self.c(x)], dim=-1)

    # Inference: with gradients, tracing the backward raises eager's error (as plain
    # torch.compile does), which is what leaving the lookup keeps.
    with caplog.at_level(logging.DEBUG, logger="inductor_embed"), torch.no_grad():
        torch.compile(Freq(), backend="inductor_embed")(torch.randint(0, 10, (6,)))
    # b is left, which splits the cat into two runs of one lookup: nothing to fuse.
    assert rewrites() == 0 and skips() == 3
    assert "scale_grad_by_freq: eager raises in the backward" in caplog.text


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "eager-form"])
def test_sparse_table_looked_up_twice_gets_one_gradient(coalesce: bool) -> None:
    """One sparse table read by two lookups of one cat (two id fields sharing a vocabulary):
    plain torch.compile fails on it (it adds the two sparse gradients inside the compiled
    backward); the fused op makes the table's one gradient itself (coalesced, or on the CPU
    by default eager's form: both lookups' entries)."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ids = nn.Embedding(30, 4, sparse=True, padding_idx=1)
            self.other = nn.Embedding(10, 4)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.ids(a), self.other(b), self.ids(b)], dim=-1)

    torch.manual_seed(2)
    model = Shared()
    a, b = torch.randint(0, 30, (12,)), torch.randint(0, 10, (12,))
    a[0] = b[1] = 1
    fused = copy.deepcopy(model)
    with _internal.patch(sparse_coalesce_on_cpu=coalesce):
        out_c = torch.compile(fused, backend="inductor_embed")(a, b)
    out_e = model(a, b)
    assert rewrites() == 1
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    assert fused.ids.weight.grad.is_coalesced() == coalesce
    with _internal.patch(sparse_coalesce_on_cpu=coalesce):
        for (name, p), q in zip(model.named_parameters(), fused.parameters()):
            assert_same_grad(q.grad, p.grad, torch.float32, name, flagged=True)


def test_sparse_lookup_with_other_users_is_left(caplog) -> None:
    class Users(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Embedding(10, 4, sparse=True)
            self.b = nn.Embedding(10, 4)
            self.c = nn.Embedding(10, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            e = self.a(x)
            return torch.cat([self.b(x), self.c(x), e], dim=-1), e.sum(-1)

    with caplog.at_level(logging.DEBUG, logger="inductor_embed"), torch.no_grad():
        torch.compile(Users(), backend="inductor_embed")(torch.randint(0, 10, (6,)))
    assert rewrites() == 1  # b and c
    assert "a sparse=True lookup with other users than the cat" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_tables_in_a_sum(dtype: torch.dtype) -> None:
    """BERT-style word + position (broadcast [S] ids) + token type, the word table sparse."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(60, 8, sparse=True, padding_idx=0, dtype=dtype)
            self.pos = nn.Embedding(16, 8, sparse=True, dtype=dtype)
            self.types = nn.Embedding(2, 8, dtype=dtype)

        def forward(self, ids: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            return self.word(ids) + self.pos(torch.arange(ids.shape[1])) + self.types(tt)

    torch.manual_seed(3)
    model = Encoder()
    ids, tt = torch.randint(0, 60, (4, 10)), torch.randint(0, 2, (4, 10))
    ids[0, :3] = 0
    _compare(model, (ids, tt), dtype, "multi_embedding_sum")


def test_coalesced_flag_is_set_only_on_sorted_unique_rows() -> None:
    """The post-accumulate hook flags a gradient only when its rows are strictly increasing;
    it is installed once per parameter."""
    from inductor_embed.sparse_grads import keep_coalesced, mark_if_coalesced

    p = nn.Parameter(torch.zeros(10, 2))
    for rows, flagged in (([1, 3, 7], True), ([3, 1, 7], False), ([1, 3, 3], False), ([4], True)):
        p.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.ones(len(rows), 2), (10, 2),
                                         check_invariants=False)
        assert not p.grad.is_coalesced() or len(rows) == 1  # one row: coalesced by construction
        mark_if_coalesced(p)
        assert p.grad.is_coalesced() == flagged, rows
    p.grad = torch.ones(10, 2)
    mark_if_coalesced(p)  # dense: nothing to do
    assert keep_coalesced(p) and not keep_coalesced(p)
    assert not keep_coalesced(torch.zeros(3))  # not a parameter that takes gradients


def test_eager_gradient_is_not_flagged_by_the_hook() -> None:
    """A parameter the plugin hooked, then trained eagerly: eager's uncoalesced gradient (rows
    in batch order, repeats) stays unflagged, and the optimizer still coalesces it."""
    model = SparseTables()
    compiled = torch.compile(model, backend="inductor_embed")
    x = _inputs()
    compiled(x).sum().backward()
    assert model.tables[3].weight.grad.is_coalesced()
    model.zero_grad()
    model(x).sum().backward()
    g = model.tables[3].weight.grad
    assert not g.is_coalesced() and g._nnz() == x.shape[0]


@pytest.mark.parametrize("opt", ["SGD", "SparseAdam"])
def test_cpu_default_sparse_gradient_is_eagers(opt: str) -> None:
    """On the CPU the backward does not coalesce by default (_internal.sparse_coalesce_on_cpu):
    each sparse table's gradient is eager's own, entry for entry (one per index, padding
    entries left out, batch order), still fused; the optimizer steps equal eager's."""
    torch.manual_seed(0)
    model, x = SparseTables(dense_table=False), _inputs()
    ref = copy.deepcopy(model)
    with _internal.patch(sparse_coalesce_on_cpu=False):
        compiled = torch.compile(model, backend="inductor_embed")
        opts = [getattr(torch.optim, opt)([p for n, p in m.named_parameters() if "tables" in n], lr=0.1)
                for m in (model, ref)]
        for _ in range(2):
            for o in opts:
                o.zero_grad()
            compiled(x).sum().backward()
            ref(x).sum().backward()
            for k, (t, r) in enumerate(zip(model.tables, ref.tables)):
                g, want = t.weight.grad, r.weight.grad
                assert g.layout == want.layout, k
                if want.is_sparse:
                    assert not g.is_coalesced() and torch.equal(g._indices(), want._indices()), k
                    torch.testing.assert_close(g._values(), want._values(), **TOL[torch.float32])
            for o in opts:
                o.step()
    assert rewrites("multi_embedding_cat") == 1
    for t, r in zip(model.tables, ref.tables):
        torch.testing.assert_close(t.weight, r.weight, **TOL[torch.float32])


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_sparse_bags_of_an_empty_batch(mode: str) -> None:
    """Review finding: fixed ``[0, L]`` bags of sparse=True tables (conftest takes them on the
    CPU) give eager's empty gradients, not a reshape error in the backward."""
    import torch._dynamo

    class Bags(nn.Module):
        def __init__(self):
            super().__init__()
            self.bags = nn.ModuleList(nn.EmbeddingBag(10, 4, mode=mode, sparse=True) for _ in range(2))

        def forward(self, x):
            return torch.cat([b(x[:, k]) for k, b in enumerate(self.bags)], 1)

    torch._dynamo.reset()
    model = Bags()
    twin = copy.deepcopy(model)
    x = torch.randint(0, 10, (0, 2, 3))
    torch.compile(model, backend="inductor_embed")(x).sum().backward()
    twin(x).sum().backward()
    assert rewrites("multi_embedding_bag") == 1
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a.grad.to_dense(), b.grad.to_dense())
