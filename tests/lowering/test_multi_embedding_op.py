"""Tier 2: the custom ops. opcheck (schema, fake impl, autograd registration, AOT with
dynamic shapes), gradients vs eager, errors; on both the ATen reference path and the
Triton path (run in the Triton interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from inductor_embed.lowering.multi_embedding_ref import multi_embedding_backward_ref
from tests._util import assert_device_assert, deterministic

OP = torch.ops.inductor_embed.multi_embedding.default
BWD = torch.ops.inductor_embed.multi_embedding_backward.default

CASES = {
    # id: (dims, vocabs, lead shape, dtype, index dtype, padding_idx, scale_grad_by_freq)
    "B13-T3-D5-fp32": ((5, 1, 3), (7, 4, 9), (13,), torch.float32, torch.int64, (-1, -1, -1), (False,) * 3),
    "B4x3-T2-D17-bf16": ((17, 2), (5, 3), (4, 3), torch.bfloat16, torch.int64, (-1, 0), (False, False)),
    "B9-T2-D8-fp16-int32-pad-freq": ((8, 3), (6, 11), (9,), torch.float16, torch.int32, (2, -1), (True, True)),
    "B0-T2-D3-fp32-empty": ((3, 2), (5, 5), (0,), torch.float32, torch.int64, (-1, -1), (False, False)),
}


def _make(case, requires_grad=True, device="cpu"):
    dims, vocabs, lead, dtype, idt, pad, freq = CASES[case]
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(v, d, generator=g).to(device, dtype).requires_grad_(requires_grad) for v, d in zip(vocabs, dims)]
    indices = [torch.randint(0, v, lead, generator=g, dtype=idt).to(device) for v in vocabs]
    return weights, indices, list(pad), list(freq)


def _eager(weights, indices, pad, freq):
    return torch.cat([
        F.embedding(i, w, padding_idx=None if p < 0 else p, scale_grad_by_freq=s)
        for w, i, p, s in zip(weights, indices, pad, freq)
    ], -1)


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_forward(case):
    weights, indices, pad, freq = _make(case)
    opcheck(OP, (weights, indices, pad, freq))


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_backward(case, path):
    weights, indices, pad, freq = _make(case, requires_grad=False, device=path)
    grad = torch.randn(*indices[0].shape, sum(w.shape[1] for w in weights)).to(path, weights[0].dtype)
    opcheck(BWD, (grad, indices, [w.shape[0] for w in weights], [w.shape[1] for w in weights], pad, freq))


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_eager(case, path):
    weights, indices, pad, freq = _make(case, device=path)
    # fp32 oracle: the op accumulates half-type gradients in fp32 and rounds once; eager's
    # half-type backward rounds on every add and strays past 1e-2 on ~3% of random grads.
    ref_w = [w.detach().float().requires_grad_() for w in weights]
    out = OP(weights, indices, pad, freq)
    ref = _eager(ref_w, indices, pad, freq)
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=0, atol=0)  # a gather is a copy: exact in every dtype
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.float())
    tol = {"rtol": 0, "atol": 1e-5} if weights[0].dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for w, r in zip(weights, ref_w):
        torch.testing.assert_close(w.grad, r.grad.to(w.dtype), **tol)


def test_backward_accumulates_half_types_in_fp32(path):
    # 4096 equal bf16 contributions of 1/64 to one row: bf16 accumulation would stall at 2**(7+...)
    idx = [torch.zeros(4096, dtype=torch.int64, device=path)]
    grad = torch.full((4096, 2), 1 / 64, dtype=torch.bfloat16, device=path)
    flat = BWD(grad, idx, [3], [2], [-1], [False])
    torch.testing.assert_close(flat[:2].float().cpu(), torch.full((2,), 64.0))
    assert flat.dtype == torch.bfloat16


def test_deterministic_backward_is_the_reference(path):
    weights, indices, pad, freq = _make("B13-T3-D5-fp32", requires_grad=False, device=path)
    grad = torch.randn(13, 9, device=path)
    args = (grad, indices, [7, 4, 9], [5, 1, 3], pad, freq)
    with deterministic():
        first, second = BWD(*args), BWD(*args)
    assert torch.equal(first, second)
    assert torch.equal(first, multi_embedding_backward_ref(*args))


@pytest.mark.parametrize("bad", [7, -1, 100])
def test_out_of_range_index_raises(path, bad):
    if path == "cuda":  # a device-side assert, checked in a fresh process
        return assert_device_assert(f"torch.ops.inductor_embed.multi_embedding([torch.randn(7, 5, device='cuda')], "
                                    f"[torch.tensor([1, {bad}, 2], device='cuda')], [-1], [False])", "out of range")
    weights, indices, pad, freq = _make("B13-T3-D5-fp32", requires_grad=False)
    indices[0][5] = bad
    with pytest.raises((IndexError, RuntimeError), match="out of range"):
        OP(weights, indices, pad, freq)


def test_bad_index_dtype_raises():
    weights, indices, pad, freq = _make("B13-T3-D5-fp32", requires_grad=False)
    indices[1] = indices[1].float()
    with pytest.raises(RuntimeError, match="int32 or int64"):
        OP(weights, indices, pad, freq)


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_per_table_backward_matches_the_twin(case):
    """The eager CPU backward of wide tables: one separately allocated tensor per table."""
    weights, indices, pad, freq = _make(case, requires_grad=False)
    grad = torch.randn(*indices[0].shape, sum(w.shape[1] for w in weights)).to(weights[0].dtype)
    dims = [w.shape[1] for w in weights]
    args = (grad, indices, [w.shape[0] for w in weights], dims, pad, freq)
    columns = [sum(dims[:k]) for k in range(len(dims))]
    tol = {"rtol": 1e-6, "atol": 1e-6} if grad.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    tables = torch.ops.inductor_embed.multi_embedding_backward_cpu(*args, columns)
    assert [tuple(t.shape) for t in tables] == [tuple(w.shape) for w in weights]
    assert len({t.untyped_storage().data_ptr() for t in tables if t.numel()}) == sum(1 for t in tables if t.numel())
    flat = torch.cat([t.reshape(-1) for t in tables])
    torch.testing.assert_close(flat, multi_embedding_backward_ref(*args), **tol)
    opcheck(torch.ops.inductor_embed.multi_embedding_backward_cpu.default, (*args, columns))
    # A subset of the tables, each read from its own columns of grad.
    last = len(weights) - 1
    sub = torch.ops.inductor_embed.multi_embedding_backward_cpu(
        grad, [indices[last]], [weights[last].shape[0]], [dims[last]], [pad[last]], [freq[last]], [columns[last]])
    torch.testing.assert_close(sub[0], tables[last], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_backward_splits_tables_by_width(dtype):
    """Tables of every float dtype without scale_grad_by_freq go to one eager op (the native
    kernel) at any width. Other narrow tables' gradients (scale_grad_by_freq) are left to
    Inductor (aten.embedding_dense_backward in the backward graph); wide ones, and every
    table in deterministic mode, go to the op."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from inductor_embed.lowering import _cpu_native
    from inductor_embed.lowering.multi_embedding import CPU_EAGER_MIN_DIM, _cpu_backward

    dims = [4, CPU_EAGER_MIN_DIM, 8, 2 * CPU_EAGER_MIN_DIM]
    pads, freq = [-1, 3, -1, -1], [False, True, True, False]
    indices = [torch.randint(0, 10, (6,)) for _ in dims]
    grad = torch.randn(6, sum(dims)).to(dtype)
    columns = [sum(dims[:k]) for k in range(len(dims))]

    def targets():
        gm = make_fx(lambda g, i: _cpu_backward(g, i, [10] * 4, dims, pads, freq, columns))(grad, indices)
        return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]

    ops = targets()
    # the op: the wide tables, and the narrow table without scale_grad_by_freq
    native = _cpu_native.lib() is not None
    assert ops.count("aten.embedding_dense_backward.default") == (1 if native else 2)
    assert _cpu_ops(ops) == 1
    with deterministic():
        ops = targets()
    assert "aten.embedding_dense_backward.default" not in ops
    want = [torch.ops.aten.embedding_dense_backward(grad[:, sum(dims[:k]):sum(dims[:k + 1])].float(), indices[k],
                                                    10, p, s).to(dtype)
            for k, (p, s) in enumerate(zip(pads, freq))]
    got = _cpu_backward(grad, indices, [10] * 4, dims, pads, freq, columns)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for g, w in zip(got, want):
        # index_add_ (a table summed from its strided slice) adds a row's entries in batch
        # order, eager's kernel in sorted order: equal up to fp32 rounding.
        torch.testing.assert_close(g, w, **tol)


# --- sparse gradients ------------------------------------------------------------------------

SPARSE_BWD = torch.ops.inductor_embed.multi_embedding_sparse_backward.default


def _sparse_case(dtype=torch.float32, device="cpu"):
    """Three tables, the middle one dense; a padding row in the first; repeated rows."""
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(v, d, generator=g).to(device, dtype).requires_grad_() for v, d in ((9, 5), (4, 3), (30, 8))]
    indices = [torch.randint(0, v, (6, 5), generator=g).to(device) for v in (9, 4, 30)]
    indices[0][0] = 2  # the padding row
    indices[2][1] = 3  # one row many times
    return weights, indices, [2, -1, -1], [False] * 3, [True, False, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sparse_gradients_are_eagers_coalesced(path, dtype):
    weights, indices, pad, freq, sparse = _sparse_case(dtype, path)
    ref_w = [w.detach().float().requires_grad_() for w in weights]
    out = OP(weights, indices, pad, freq, sparse)
    ref = torch.cat([F.embedding(i, w, padding_idx=None if p < 0 else p, sparse=s)
                     for w, i, p, s in zip(ref_w, indices, pad, sparse)], -1)
    torch.testing.assert_close(out, ref.to(dtype), rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.float())
    tol = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for k, (w, r, s) in enumerate(zip(weights, ref_w, sparse)):
        assert w.grad.is_sparse == s
        if not s:
            torch.testing.assert_close(w.grad, r.grad.to(dtype), **tol)
            continue
        want = r.grad.coalesce()
        assert torch.equal(w.grad._indices(), want.indices())  # sorted unique rows, padding row left out
        assert k != 0 or 2 not in w.grad._indices()
        torch.testing.assert_close(w.grad._values(), want.values().to(dtype), **tol)


def test_opcheck_sparse_backward(path):
    weights, indices, pad, _, _ = _sparse_case(device=path)
    grad = torch.randn(6, 5, 16, device=path)
    # tables 0 and 2 of the case, reading their columns of the 3-table output
    args = (grad, [indices[0], indices[2]], [9, 30], [5, 8], [pad[0], pad[2]], [0, 8])
    got = SPARSE_BWD(*args)
    assert [g.layout for g in got] == [torch.sparse_coo] * 2 and got[1].shape == (30, 8)
    # The fake tensor's sparse output has no rows (its number is data-dependent): opcheck's
    # fake-vs-real comparison of nnz does not apply, the schema and AOT tests do.
    opcheck(SPARSE_BWD, args, test_utils=("test_schema", "test_autograd_registration"))


def test_sparse_with_scale_grad_by_freq_raises_like_eager():
    weights, indices, pad, _, sparse = _sparse_case()
    with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse gradients"):
        OP(weights, indices, pad, [True, False, False], sparse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_coalesce_rows_sums_each_row_once(path, dtype):
    """Tables of two widths (two sums), with repeated rows and a table of one index."""
    g = torch.Generator().manual_seed(2)
    shapes = [(7, 4), (12, 3), (5, 4), (9, 4)]
    indices = [torch.randint(0, v, (n,), generator=g).to(path) for (v, _), n in zip(shapes, (20, 15, 1, 30))]
    values = [torch.randn(i.numel(), d, generator=g).to(path, dtype) for i, (_, d) in zip(indices, shapes)]
    indices[1][:4] = 12  # entries the caller marks as padding (row V): left out
    got = torch.ops.inductor_embed.coalesce_rows(indices, values, [v for v, _ in shapes], [-1, 12, -1, -1])
    tol = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for i, x, (v, d), s in zip(indices, values, shapes, got):
        keep = i < v
        want = torch.sparse_coo_tensor(i[keep].unsqueeze(0), x[keep].float(), (v, d)).coalesce()
        assert s.shape == (v, d) and s.dtype == dtype
        assert torch.equal(s._indices(), want.indices())
        torch.testing.assert_close(s._values(), want.values().to(dtype), **tol)
    opcheck(torch.ops.inductor_embed.coalesce_rows.default, (indices, values, [v for v, _ in shapes], [-1, 12, -1, -1]),
            test_utils=("test_schema", "test_autograd_registration"))


def test_uncoalesced_sparse_gradients_are_eagers_form(path):
    """coalesce=False (the CPU default, _internal.sparse_coalesce_on_cpu): eager's own sparse
    gradient, entry for entry (padding entries left out, index order), on either path."""
    weights, indices, pad, _, _ = _sparse_case(device=path)
    grad = torch.randn(6, 5, 16, device=path)
    got = SPARSE_BWD(grad, [indices[0], indices[2]], [9, 30], [5, 8], [pad[0], pad[2]], [0, 8], False)
    for s, i, p, cols in zip(got, (indices[0], indices[2]), (pad[0], pad[2]), ((0, 5), (8, 16))):
        w = torch.zeros(s.shape, device=path, requires_grad=True)
        F.embedding(i, w, padding_idx=None if p < 0 else p, sparse=True).backward(grad[..., cols[0]:cols[1]])
        assert not s.is_coalesced() and torch.equal(s._indices(), w.grad._indices())
        torch.testing.assert_close(s._values(), w.grad._values(), rtol=0, atol=0)
    rows = [torch.tensor([3, 1, 3, 7], device=path)]
    vals = [torch.randn(4, 2, device=path)]
    s = torch.ops.inductor_embed.coalesce_rows(rows, vals, [7], [7], False)[0]  # row 7 = V: left out
    assert torch.equal(s._indices(), torch.tensor([[3, 1, 3]], device=path))
    assert torch.equal(s._values(), vals[0][:3])
    # Outputs never alias inputs (Inductor plans buffers on it), though eager's form views them.
    args = (grad, [indices[0], indices[2]], [9, 30], [5, 8], [-1, -1], [0, 8], False)
    for g in SPARSE_BWD(*args):
        for t in (g._indices(), g._values()):
            assert t.untyped_storage().data_ptr() not in {x.untyped_storage().data_ptr() for x in (grad, *args[1])}
    opcheck(SPARSE_BWD, args, test_utils=("test_schema",))


# --- multi_embedding_columns: columns written over after the gather -----------------------

COLUMNS = torch.ops.inductor_embed.multi_embedding_columns.default


def _written(dtype, device, requires_grad=True):
    """Two tables (6 and 4 columns), writes at table 0's columns [1, 3) ([2] broadcast), table 1's
    [0, 1) ([5, 1]) and [2, 4) ([5, 2]: its last columns); and eager's lookups with those writes."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(v, d, generator=g).to(device, dtype).requires_grad_(requires_grad)
               for v, d in ((10, 6), (7, 4))]
    indices = [torch.randint(0, v, (5,), generator=g).to(device) for v in (10, 7)]
    values = [torch.randn(shape, generator=g).to(device, dtype).requires_grad_(requires_grad)
              for shape in ((2,), (5, 1), (5, 2))]
    return weights, indices, values, [1, 3, 6, 7, 8, 10]


def _eager_written(weights, indices, values):
    a, b = F.embedding(indices[0], weights[0]), F.embedding(indices[1], weights[1])
    a[:, 1:3] = values[0]
    b[:, 0:1] = values[1]
    b[:, 2:4] = values[2]
    return torch.cat([a, b], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_writes_match_eager(dtype, path):
    weights, indices, values, ranges = _written(dtype, path)
    want = _eager_written(weights, indices, values)
    got = COLUMNS(weights, indices, [-1, -1], [False, False], [False, False], values, ranges)
    assert torch.equal(got, want)
    grad = torch.randn_like(want)
    inputs = [*weights, *values]
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, **({} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}))


def test_opcheck_column_writes():
    weights, indices, values, ranges = _written(torch.float32, "cpu")
    opcheck(COLUMNS, (weights, indices, [-1, -1], [False, False], [False, False], values, ranges))


@pytest.mark.parametrize("ranges, values, match", [
    ([1, 3, 2, 4], [(2,), (2,)], "not inside one table's columns after the previous range"),  # overlapping
    ([5, 7], [(2,)], "not inside one table's columns"),  # across tables 0 and 1
    ([1, 3], [(3,)], "does not broadcast"),
    ([1, 3], [], "range bounds"),
])
def test_bad_column_writes_raise(ranges, values, match):
    weights, indices, _, _ = _written(torch.float32, "cpu", requires_grad=False)
    with pytest.raises(RuntimeError, match=match):
        COLUMNS(weights, indices, [-1, -1], [False, False], [False, False], [torch.zeros(s) for s in values], ranges)


def test_a_double_backward_raises_rather_than_dropping_the_gradient():
    """Review finding: the backward's ops have no autograd formula; differentiating the
    backward (create_graph=True) must raise, not warn and return no gradient."""
    w = torch.randn(10, 80, requires_grad=True)
    i = torch.tensor([1, 2, 2, 3])
    out = torch.ops.inductor_embed.multi_embedding([w], [i], [-1], [False])
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, w, torch.randn_like(out, requires_grad=True), create_graph=True)
    (gw,) = torch.autograd.grad(out, w, torch.ones_like(out), create_graph=True)  # first order is fine
    assert torch.equal(gw, torch.ops.aten.embedding_dense_backward(torch.ones(4, 80), i, 10, -1, False))


def test_written_columns_get_no_gradient_without_a_copy_of_grad(path):
    """The CPU backward zeroes the written-over columns of each table's gradient itself
    (``zeroed``; masking grad was a copy of all of it, the step's peak memory); the kernels
    read a masked grad. Three tables (a narrow one, Inductor's path on the CPU, and a 64-wide
    one, the op's), writes in two of them: equal to eager."""
    g = torch.Generator().manual_seed(1)
    shapes = ((9, 6), (7, 64), (5, 8))
    weights = [torch.randn(v, d, generator=g).to(path).requires_grad_() for v, d in shapes]
    indices = [torch.randint(0, v, (5,), generator=g).to(path) for v, _ in shapes]
    values = [torch.randn(5, 2, generator=g).to(path).requires_grad_(),
              torch.randn(3, generator=g).to(path).requires_grad_()]
    got = COLUMNS(weights, indices, [-1] * 3, [False] * 3, [False] * 3, values, [1, 3, 10, 13])
    looked = [F.embedding(i, w) for i, w in zip(indices, weights)]
    looked[0][:, 1:3] = values[0]
    looked[1][:, 4:7] = values[1]
    want = torch.cat(looked, -1)
    assert torch.equal(got, want)
    out_grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, [*weights, *values], out_grad),
                    torch.autograd.grad(want, [*weights, *values], out_grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [6, 2])  # zeroed in the result (6 rows of grad), in a copy of grad (2)
def test_the_cpu_backward_zeroes_the_columns_it_is_told(n):
    op = torch.ops.inductor_embed.multi_embedding_backward_cpu
    grad = torch.randn(n, 70)
    idx = [torch.randint(0, 9, (n,)), torch.randint(0, 4, (n,))]
    args = (grad, idx, [9, 4], [64, 6], [-1, -1], [False, False], [0, 64])
    plain = op(*args)
    masked = grad.clone()
    masked[:, 10:20] = 0
    masked[:, 64:65] = 0
    want = op(masked, *args[1:])
    before = grad.clone()
    got = op(*args, [0, 10, 20, 1, 0, 1])
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and not torch.equal(got[0], plain[0])
    assert torch.equal(grad, before)  # the op's input is not written
    for bad, match in (([0, 1], "triples"), ([2, 0, 1], "names table 2"), ([1, 3, 7], "not inside")):
        with pytest.raises(RuntimeError, match=match):
            op(*args, bad)


def _cpu_ops(targets: list[str]) -> int:
    """Calls of the CPU backward op among a graph's targets, either form (the C++ host's
    where the native kernels are built, the Python op's where not)."""
    return sum(targets.count(f"inductor_embed.multi_embedding_backward_cpu{s}.default") for s in ("", "_fast"))
