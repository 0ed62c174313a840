"""End to end: rows read by an index tensor and rows added to by one (a graph network's
message passing, a table indexed directly), compiled with inductor_embed vs eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters

import inductor_embed
from inductor_embed.lowering.index_add_rows import index_add_rows
from tests.inductor_embed._util import TOL, rewrites, skips

NAME = "index_rows"


class MessagePassing(nn.Module):
    """Atom features summed from two tables, then two GIN-style layers over the edges."""

    def __init__(self, dim: int = 12, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.a, self.b = nn.Embedding(7, dim, dtype=dtype), nn.Embedding(5, dim, dtype=dtype)
        self.lin = nn.ModuleList(nn.Linear(dim, dim, dtype=dtype) for _ in range(2))

    def forward(self, atoms: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        h = self.a(atoms[:, 0]) + self.b(atoms[:, 1])
        src, dst = edges[0], edges[1]
        for lin in self.lin:
            msg = F.relu(h[src])
            h = lin(h + torch.zeros_like(h).index_add_(0, dst, msg))
        return h


def _graph(nodes: int = 9, edges: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.stack([torch.randint(0, 7, (nodes,), generator=g), torch.randint(0, 5, (nodes,), generator=g)], 1)
    return atoms, torch.randint(0, nodes, (2, edges), generator=g)


def _run(model: nn.Module, inputs, **compile_kwargs):
    """Eager and compiled forward + backward: (eager's output, compiled output, the grads of each)."""
    twin = copy.deepcopy(model)
    outs = []
    for m in (model, torch.compile(twin, backend="inductor_embed", **compile_kwargs)):
        out = m(*inputs)
        out.backward(torch.ones_like(out))
        outs.append(out)
    return outs, [p.grad for p in model.parameters()], [p.grad for p in twin.parameters()]


def test_message_passing():
    torch.manual_seed(0)
    (want, got), grads_e, grads_c = _run(MessagePassing(), _graph())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for ge, gc in zip(grads_e[:2], grads_c[:2]):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)
    for ge, gc in zip(grads_e[2:], grads_c[2:]):
        torch.testing.assert_close(gc, ge, **TOL[torch.float32])
    assert rewrites(NAME) == 2 and rewrites("independent_lookups") == 2 and rewrites("multi_embedding_sum") == 1


def test_gather_scatter_bit_equal():
    # The lookup's native backward (each row in position order) and ATen's index_add sum each
    # row in the order eager's index_select backward and index_add do (many collisions here):
    # forward and gradient bit-equal to eager's. (x[idx]'s eager gradient, index_put with
    # accumulation, sums in another order: within rounding, test_row_reads_negative_indices.)
    torch.manual_seed(0)
    h = torch.randn(7, 33, requires_grad=True)
    hc = h.detach().clone().requires_grad_()
    src, dst = torch.randint(0, 7, (2000,)), torch.randint(0, 7, (2000,))

    def f(h, src, dst):
        return torch.zeros_like(h).index_add_(0, dst, h.index_select(0, src) * 3)

    want = f(h, src, dst)
    got = torch.compile(f, backend="inductor_embed")(hc, src, dst)
    assert torch.equal(got, want)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    assert torch.equal(hc.grad, h.grad)
    assert rewrites(NAME) == 1 and rewrites("independent_lookups") == 1


def test_explain_names_the_row_reads():
    report = inductor_embed.explain(MessagePassing(), *_graph())
    taken = {r.pattern: r for r in report.rewrites}
    assert [r.fused_op for r in report.rewrites if r.pattern == NAME] == ["inductor_embed.index_add_rows"] * 2
    # The lookups made of h[src] keep the row read's name in the records.
    lone = [r.replaced for r in report.rewrites if r.pattern == "independent_lookups"]
    assert all(name.startswith("getitem") for (name,) in lone), lone
    assert "index_rows" in taken


class Reads(nn.Module):
    """x[idx], x[idx, :], index_select, torch.index_select of an activation and of a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))

    def forward(self, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        return (y[i] * 2 + y[j, :] + y.index_select(0, j) + torch.index_select(self.table, 0, j)
                + self.table[i].sin())


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_row_reads_negative_indices(index_dtype):
    torch.manual_seed(0)
    x = torch.randn(10, 4, requires_grad=True)
    i = torch.tensor([0, -1, 3, -10, 3, 9], dtype=index_dtype)  # x[i] counts from the end
    j = torch.tensor([2, 2, 5, 0, 9, 1], dtype=index_dtype)
    model = Reads()
    twin = copy.deepcopy(model)
    xc = x.detach().clone().requires_grad_()
    want = model(x, i, j)
    got = torch.compile(twin, backend="inductor_embed")(xc, i, j)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # Inductor's own tanh and sin
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(xc.grad, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(twin.table.grad, model.table.grad, rtol=1e-5, atol=1e-6)
    # 2 lookups of the table, 3 of y: taken by the lookup patterns, none left.
    assert rewrites("independent_lookups") + rewrites("multi_embedding_sum") >= 2 and skips(NAME) == 0


def test_row_read_out_of_range_raises():
    # Eager: IndexError; compiled, with the plugin or without: Inductor's own bounds check in
    # the forward's gather (RuntimeError "index out of bounds"), and no gradient written.
    x = torch.randn(5, 3, requires_grad=True)

    def f(x, i):
        return torch.tanh(x)[i]

    bad = torch.tensor([0, 5])
    with pytest.raises(IndexError, match="out of bounds"):
        f(x, bad)
    for backend in ("inductor", "inductor_embed"):
        torch._dynamo.reset()
        with pytest.raises(RuntimeError, match="out of bounds"):
            torch.compile(f, backend=backend)(x, bad).sum().backward()
        assert x.grad is None
    assert rewrites("independent_lookups") == 1


def test_index_add_out_of_range_raises_eagers_error():
    def f(s, i):
        return torch.zeros(4, 3).index_add_(0, i, s)

    s = torch.randn(2, 3, requires_grad=True)
    bad = torch.tensor([0, 4])
    with pytest.raises(RuntimeError) as eager:
        f(s, bad)
    with pytest.raises(RuntimeError) as ours:
        torch.compile(f, backend="inductor_embed")(s, bad)
    assert str(ours.value) == str(eager.value)  # ATen's own index_add_ raised both
    assert rewrites(NAME) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_functional_index_add_grads(dtype):
    # torch.index_add(x, ...) and x.index_add(...): self's gradient is grad, source's grad[idx].
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=dtype, requires_grad=True)
    s = torch.randn(8, 5, dtype=dtype, requires_grad=True)
    i = torch.tensor([0, 5, 5, 1, 0, 0, 2, 5])

    def f(x, s, i):
        return torch.index_add(x * 2, 0, i, s).sin() + x.index_add(0, i, s * 3)

    want = f(x, s, i)
    want.sum().backward()
    gx, gs = x.grad, s.grad
    x.grad = s.grad = None
    got = torch.compile(f, backend="inductor_embed")(x, s, i)
    torch.testing.assert_close(got, want, **TOL[dtype])
    got.sum().backward()
    torch.testing.assert_close(x.grad, gx, **TOL[dtype])
    torch.testing.assert_close(s.grad, gs, **TOL[dtype])
    assert rewrites(NAME) == 2


def test_op_matches_aten_bit_for_bit():
    torch.manual_seed(0)
    s = torch.randn(1000, 7)
    i = torch.randint(0, 13, (1000,))
    x = torch.randn(13, 7)
    assert torch.equal(index_add_rows(None, 13, i, s), torch.zeros(13, 7).index_add_(0, i, s))
    assert torch.equal(index_add_rows(x, 0, i, s), torch.index_add(x, 0, i, s))
    torch.library.opcheck(torch.ops.inductor_embed.index_add_rows.default, (None, 13, i, s.requires_grad_()))
    torch.library.opcheck(torch.ops.inductor_embed.index_add_rows.default, (x.requires_grad_(), 0, i, s))
    torch.library.opcheck(torch.ops.inductor_embed.index_add_rows.default, (None, 13, i, s, True))
    g = torch.randn(13, 7)
    want = torch.ops.aten.threshold_backward(g.index_select(0, i), s, 0)
    assert torch.equal(torch.ops.inductor_embed.relu_rows_backward(g, i, s), want)
    torch.library.opcheck(torch.ops.inductor_embed.relu_rows_backward.default, (g, i, s.detach()))


def _left(f, *args) -> list[str]:
    report = inductor_embed.explain(f, *args)
    return [s.reason for s in report.skipped if s.pattern == NAME]


def test_left_with_reasons():
    s = torch.randn(4, 3, requires_grad=True)
    i = torch.tensor([0, 2, 2, 1])

    def dim1(s, i):
        return torch.zeros(3, 3).index_add(1, i[:3], s[:3])

    def alpha(s, i):
        return torch.zeros(3, 3).index_add(0, i, s, alpha=2.0)

    def not_fresh(s, i):
        buf = s[:3].detach().clone()
        buf.index_add_(0, i, s)
        return buf * 2

    def no_grad_rows(s, i):
        return torch.randn(5, 3)[i] + s

    assert "dim 1" in " ".join(_left(dim1, s, i))
    assert "alpha" in " ".join(_left(alpha, s, i))
    assert "fresh" in " ".join(_left(not_fresh, s, i))
    assert "need no gradient" in " ".join(_left(no_grad_rows, s, i))
    for f in (dim1, alpha, not_fresh):
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(f, backend="inductor_embed")(s, i), f(s, i))


def test_symbolic_rows_left():
    torch.manual_seed(0)
    (want, got), grads_e, grads_c = _run(MessagePassing(), _graph(), dynamic=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for ge, gc in zip(grads_e, grads_c):
        torch.testing.assert_close(gc, ge, **TOL[torch.float32])
    assert skips(NAME) >= 2  # the row reads of h: its rows are symbolic (index_add is taken)


def test_switch_off():
    with inductor_embed.config.patch(index_rows=False):
        torch.manual_seed(0)
        (want, got), _, _ = _run(MessagePassing(), _graph())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert rewrites(NAME) == 0 and rewrites("independent_lookups") == 0


def _eager_and_compiled(f, *args, **kwargs):
    """``f``'s result eagerly and compiled with the plugin (after a Dynamo reset)."""
    want = f(*args, **kwargs)
    torch._dynamo.reset()
    return want, torch.compile(f, backend="inductor_embed")(*args, **kwargs)


def test_zero_d_index_keeps_eagers_view():
    # h[i] with a 0-d i is a view of h (h.select): a write through it reaches h.
    a = torch.randn(4, 3, requires_grad=True)
    i = torch.tensor(1)

    def f(a, i):
        h = a * 2
        h[i].zero_()
        return h

    want, got = _eager_and_compiled(f, a, i)
    torch.testing.assert_close(got, want)
    assert bool((got[1] == 0).all())


def test_index_add_rows_of_another_shape_still_raises():
    # Dynamo's fake index_add_ does not compare the rows' shapes; eager raises, and so does the
    # compile (as plain torch.compile's does), instead of returning the source's shape.
    s = torch.randn(10, 1, requires_grad=True)
    i = torch.randint(0, 6, (10,))

    def f(s, i):
        return torch.zeros(6, 4).index_add_(0, i, s)

    with pytest.raises(RuntimeError):
        f(s, i)
    with pytest.raises(Exception, match="shape|expand"):
        torch.compile(f, backend="inductor_embed")(s, i)
    assert rewrites(NAME) == 0


def test_zeros_with_out_is_not_fresh():
    s, i = torch.randn(20, 6), torch.randint(0, 8, (20,))

    def f(s, i, buf):
        return torch.zeros(8, 6, out=buf).index_add_(0, i, s)

    buf_e, buf_c = torch.full((8, 6), 7.0), torch.full((8, 6), 7.0)
    want = f(s, i, buf_e)
    got = torch.compile(f, backend="inductor_embed")(s, i, buf_c)
    assert torch.equal(got, want) and torch.equal(buf_c, buf_e)


class NoGradTarget(nn.Module):
    """A frozen target read inside torch.no_grad(), next to a trained lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.user, self.target = nn.Parameter(torch.randn(8, 6)), nn.Parameter(torch.randn(8, 6))
        self.emb = nn.Embedding(8, 6)

    def forward(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.target[j]
            u = self.emb(j)
        return (self.user[i] * t * u).sum() + self.emb(i).sum()


def test_reads_inside_no_grad_get_no_gradient():
    torch.manual_seed(0)
    model = NoGradTarget()
    twin = copy.deepcopy(model)
    i, j = torch.randint(0, 8, (20,)), torch.randint(0, 8, (20,))
    model(i, j).backward()
    torch.compile(twin, backend="inductor_embed")(i, j).backward()
    assert twin.target.grad is None
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
    reasons = [s.reason for s in inductor_embed.explain(copy.deepcopy(model), i, j).skipped]
    assert sum("turns gradients off" in r for r in reasons) == 2  # target[j], emb(j)


@pytest.mark.parametrize("which", ["grad_read", "grad_index_add", "vmap_index_add", "grad_embedding", "grad_cat",
                                   "grad_bags"])
def test_inside_torch_func_transforms(which):
    # The fused ops have no functorch rules: what runs inside torch.func.grad / vmap is left,
    # by every lookup pattern.
    x, s = torch.randn(8, 6), torch.randn(20, 6)
    i = torch.randint(0, 8, (20,))
    w2, bags = torch.randn(12, 6), torch.randint(0, 8, (5, 3))
    fns = {
        "grad_cat": lambda x: torch.func.grad(
            lambda a: torch.cat([F.embedding(i, a), F.embedding(i, w2)], -1).pow(2).sum())(x),
        "grad_bags": lambda x: torch.func.grad(
            lambda a: torch.cat([F.embedding_bag(bags, a), F.embedding_bag(bags, w2)], 1).pow(2).sum())(x),
        "grad_read": lambda x: torch.func.grad(lambda x: x[i].pow(2).sum())(x),
        "grad_index_add": lambda x: torch.func.grad(lambda s: torch.zeros(8, 6).index_add_(0, i, s).pow(2).sum())(s),
        "vmap_index_add": lambda x: torch.vmap(lambda t: torch.zeros(8, 6).index_add(0, i, t))(s.expand(3, 20, 6)),
        "grad_embedding": lambda x: torch.func.grad(lambda x: F.embedding(i, x).pow(2).sum())(x),
    }
    want, got = _eager_and_compiled(fns[which], x)
    if which == "vmap_index_add":
        # Plain torch.compile's own result (torch 2.13's Inductor: not eager's here, upstream's
        # bug, not a rewrite's: the plugin leaves the op to it).
        torch._dynamo.reset()
        want = torch.compile(fns[which])(x)
    torch.testing.assert_close(got, want)
    assert sum(n for k, n in counters["inductor_embed"].items() if not k.endswith("_skipped")) == 0


@pytest.mark.parametrize("form", ["index_put_", "torch.index_put", "index_put"])
def test_index_put_accumulate(form):
    # index_put with accumulate=True and one index tensor is a sum of rows (negative indices
    # counted from the end, as indexing does).
    torch.manual_seed(0)
    h = torch.randn(9, 5, requires_grad=True)
    hc = h.detach().clone().requires_grad_()
    i = torch.tensor([0, -1, 3, 3, -9, 8, 2])
    fns = {
        "index_put_": lambda h, i: torch.zeros_like(h).index_put_((i,), h[:7] * 2, accumulate=True),
        "torch.index_put": lambda h, i: torch.index_put(h * 1.5, (i,), h[2:9].sin(), accumulate=True),
        "index_put": lambda h, i: (h * 2).index_put((i,), h[:7], True),
    }
    f = fns[form]
    want = f(h, i)
    got = torch.compile(f, backend="inductor_embed")(hc, i)
    torch.testing.assert_close(got, want)
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(hc.grad, h.grad)
    assert rewrites(NAME) == 1


def test_index_put_left():
    h = torch.randn(9, 5, requires_grad=True)
    i = torch.tensor([0, -1, 3])

    def broadcast(h, i):
        return torch.zeros_like(h).index_put_((i,), h[0], accumulate=True)

    def broadcast_rows(h, i):
        return torch.zeros_like(h).index_put_((i,), h[:1], accumulate=True)

    def assign(h, i):
        return torch.zeros_like(h).index_put_((i,), h[:3], accumulate=False)

    def two_indices(h, i):
        return torch.zeros_like(h).index_put_((i, i.abs()), h[:3, 0], accumulate=True)

    assert "same rank" in " ".join(_left(broadcast, h, i))  # values [5] broadcast over the rows
    assert "differ in length" in " ".join(_left(broadcast_rows, h, i))
    assert _left(assign, h, i) == []
    assert "one index tensor" in " ".join(_left(two_indices, h, i))
    for f in (broadcast, broadcast_rows, assign, two_indices):
        want, got = _eager_and_compiled(f, h, i)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("form", ["view_expand_as", "unsqueeze_expand", "broadcast_to"])
def test_scatter_add_of_broadcast_rows_bit_equal(form):
    # PyG's scatter(src, index, reduce="sum"): new_zeros(...).scatter_add_(0,
    # index.view(-1, 1).expand_as(src), src), an index_add whose index Inductor would write out.
    torch.manual_seed(0)
    s = torch.randn(300, 5, requires_grad=True)
    sc = s.detach().clone().requires_grad_()
    j = torch.randint(0, 9, (300,))
    fns = {
        "view_expand_as": lambda s, j: s.new_zeros(9, 5).scatter_add_(0, j.view(-1, 1).expand_as(s), s * 2),
        "unsqueeze_expand": lambda s, j: torch.scatter_add(torch.ones(9, 5), 0, j.unsqueeze(1).expand(-1, 5), s),
        "broadcast_to": lambda s, j: torch.zeros(9, 5).scatter_add(0, torch.broadcast_to(j.reshape(-1, 1), (300, 5)), s),
    }
    f = fns[form]
    want = f(s, j)
    got = torch.compile(f, backend="inductor_embed")(sc, j)
    assert torch.equal(got, want)
    want.sum().backward()
    got.sum().backward()
    assert torch.equal(sc.grad, s.grad)
    assert rewrites(NAME) == 1


def test_scatter_add_with_a_full_index_is_not_a_row_sum():
    # An index that varies along the columns scatters each element on its own: not taken.
    s = torch.randn(30, 5, requires_grad=True)
    j = torch.randint(0, 9, (30, 5))

    def f(s, j):
        return torch.zeros(9, 5).scatter_add_(0, j, s)

    want, got = _eager_and_compiled(f, s, j)
    torch.testing.assert_close(got, want)
    assert rewrites(NAME) == 0 and skips(NAME) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_index_put_left(dtype):
    # Eager's index_put_ rounds after each add (1000 x 0.01 in bf16 stops at 4.0), ATen's
    # index_add sums wider (10.0): an fp32-only rewrite.
    i = torch.zeros(1000, dtype=torch.long)
    v = torch.full((1000, 1), 0.01, dtype=dtype)

    def f(i, v):
        return torch.zeros(2, 1, dtype=v.dtype).index_put_((i,), v, accumulate=True)

    want, got = _eager_and_compiled(f, i, v)
    assert torch.equal(got, want)
    assert rewrites(NAME) == 0 and "rounds the sum" in " ".join(_left(f, i, v))


def _two_statements(h, s, i):
    agg = torch.zeros_like(h)
    agg.index_add_(0, i, s)
    return h + agg, agg * 2


def _two_writes(h, s, i):
    agg = torch.zeros_like(h)
    agg.index_add_(0, i, s)
    agg.index_add_(0, i.flip(0), s * 2)  # into the first sum's output: left, still in place
    return h + agg


def _read_before(h, s, i):
    agg = torch.zeros_like(h)
    before = agg.sum()  # a reader of the zeros before the write: left
    agg.index_add_(0, i, s)
    return h + agg + before


def _zeros_read_again(h, s, i):
    z = torch.zeros(9, 5)
    return torch.index_add(z, 0, i, s) + z.sum()  # functional: the zeros stay for their reader


def _scatter_two_statements(h, s, i):
    out = s.new_zeros(9, 5)
    out.scatter_add_(0, i.view(-1, 1).expand_as(s), s)
    return out * h


def _view_written_later(h, s, i):
    agg = torch.zeros(9, 5)
    agg.index_add_(0, i, s)
    agg.view(45).mul_(2)
    return agg + h


@pytest.mark.parametrize("f, taken, left", [
    (_two_statements, 1, 0), (_two_writes, 1, 1), (_read_before, 0, 1), (_zeros_read_again, 1, 0),
    (_scatter_two_statements, 1, 0), (_view_written_later, 1, 0)], ids=lambda v: getattr(v, "__name__", str(v)))
def test_sum_into_zeros_read_after(f, taken, left):
    # buf = torch.zeros(...); buf.index_add_(...); use(buf): the readers after the write read
    # the op's output.
    torch.manual_seed(0)
    h, s = torch.randn(9, 5, requires_grad=True), torch.randn(20, 5, requires_grad=True)
    hc, sc = h.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    i = torch.randint(0, 9, (20,))
    want, got = f(h, s, i), torch.compile(f, backend="inductor_embed")(hc, sc, i)
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    sum(w.sum() for w in want).backward()
    sum(g.sum() for g in got).backward()
    torch.testing.assert_close(hc.grad, h.grad)
    torch.testing.assert_close(sc.grad, s.grad)
    assert (rewrites(NAME), skips(NAME)) == (taken, left)


@pytest.mark.parametrize("form", ["F.relu", "torch.relu", "method", "read_again"])
def test_relu_messages_bit_equal(form):
    # A GIN message's ReLU read by the sum alone goes into the op (its backward saves the
    # pre-activation, not a bool mask): forward and gradients bit-equal to eager's. Read by
    # anything else too, it stays Inductor's.
    torch.manual_seed(0)
    h, e = torch.randn(7, 33, requires_grad=True), torch.randn(500, 33, requires_grad=True)
    hc, ec = h.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    src, dst = torch.randint(0, 7, (500,)), torch.randint(0, 7, (500,))
    act = {"F.relu": F.relu, "torch.relu": torch.relu, "method": lambda t: t.relu(), "read_again": F.relu}[form]

    def f(h, e):
        msg = act(h.index_select(0, src) + e)
        out = torch.zeros_like(h).index_add_(0, dst, msg)
        return out + msg.sum() if form == "read_again" else out

    want = f(h, e)
    got = torch.compile(f, backend="inductor_embed")(hc, ec)
    assert torch.equal(got, want) if form != "read_again" else torch.allclose(got, want)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    assert torch.equal(ec.grad, e.grad) and torch.equal(hc.grad, h.grad)
    report = inductor_embed.explain(f, h, e)
    fused = [r.replaced for r in report.rewrites if r.pattern == NAME][0]
    assert (len(fused) == 3) == (form != "read_again"), fused  # (the sum, the zeros, the ReLU)


def test_relu_stays_inductors_without_gradients():
    # Under no_grad there is no mask to save: Inductor keeps the ReLU fused into its producer.
    h, e = torch.randn(7, 5), torch.randn(40, 5)
    src, dst = torch.randint(0, 7, (40,)), torch.randint(0, 7, (40,))

    def f(h, e):
        return torch.zeros_like(h).index_add_(0, dst, F.relu(h.index_select(0, src) + e))

    with torch.no_grad():
        report = inductor_embed.explain(f, h, e)
        want, got = _eager_and_compiled(f, h, e)
    assert torch.equal(got, want)
    assert [r.replaced for r in report.rewrites if r.pattern == NAME] == [("index_add_", "zeros_like")]
