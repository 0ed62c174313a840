"""Tier 2: the pooled ops. opcheck (schema, fake impl, autograd registration, AOT dispatch),
gradients (tables, per-sample weights, sparse COO) vs eager F.embedding_bag, and errors;
on the ATen reference path and the Triton path (interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import inductor_embed

OP = torch.ops.inductor_embed.multi_embedding_bag.default
TIED = torch.ops.inductor_embed.tied_embedding_bag.default
PATHS = ["reference", "triton"]


def _tables(sparse=(False, False, False), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(v, d, generator=g).to(dtype).requires_grad_() for v, d in ((20, 5), (30, 3), (20, 7))]
    i0 = torch.randint(0, 20, (11,), generator=g)
    o0 = torch.tensor([0, 3, 3, 8])
    i1 = torch.randint(0, 30, (4, 2), generator=g)
    i2 = torch.randint(0, 20, (9,), generator=g, dtype=torch.int32)
    i2[0] = 0
    o2 = torch.tensor([0, 2, 2, 5, 9], dtype=torch.int32)
    p2 = torch.randn(9, generator=g).to(dtype).requires_grad_()
    pad0 = -1 if sparse[0] else 1  # eager's sparse gradient drops padding entries: not fused
    args = (w, [i0, i1, i2], [o0, None, o2], [torch.ones(()), torch.ones(()), p2], [1, 2, 0], [pad0, -1, 0],
            [False, False, True], list(sparse))
    eager = torch.cat([
        F.embedding_bag(i0, w[0], o0, mode="mean", padding_idx=None if sparse[0] else 1, sparse=sparse[0]),
        F.embedding_bag(i1, w[1], mode="max"),
        F.embedding_bag(i2, w[2], o2, mode="sum", include_last_offset=True, per_sample_weights=p2, padding_idx=0),
    ], 1)
    return args, eager, [*w, p2]


@pytest.mark.parametrize("path", PATHS)
def test_matches_eager_forward_and_backward(path: str) -> None:
    args, eager, leaves = _tables()
    grad = torch.randn_like(eager)
    want = torch.autograd.grad(eager, leaves, grad)
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        out, _ = OP(*args)
        got = torch.autograd.grad(out, leaves, grad)
    torch.testing.assert_close(out, eager)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_sparse_table_gets_eagers_coalesced_coo_gradient(path: str) -> None:
    args, eager, leaves = _tables(sparse=(True, False, False))
    grad = torch.randn_like(eager)
    (want,) = torch.autograd.grad(eager, leaves[:1], grad)
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        out, _ = OP(*args)
        (got,) = torch.autograd.grad(out, leaves[:1], grad)
    # Eager's has one entry per index; the op's is coalesced: sorted unique rows, summed.
    assert got.layout == torch.sparse_coo
    want = want.coalesce()
    assert torch.equal(got._indices(), want.indices())
    torch.testing.assert_close(got._values(), want.values())


@pytest.mark.parametrize("path", PATHS)
def test_opcheck(path: str) -> None:
    """On both paths: the ATen reference (on the CPU), and the kernels (on CUDA, or in the
    Triton interpreter on the CPU: they run inside opaque ops, on real tensors)."""
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        _opcheck_all()


def _opcheck_all() -> None:
    args, eager, _ = _tables()
    detached = ([w.detach().requires_grad_() for w in args[0]], *args[1:3],
                [p.detach().requires_grad_() if p.dim() else p for p in args[3]], *args[4:])
    opcheck(OP, detached)
    out, arg_max = OP(*[a for a in detached])
    grad = torch.randn_like(out)
    bwd_args = (grad, arg_max.detach(), args[1], args[2], [p.detach() if p.dim() else None for p in args[3]],
                [w.shape[0] for w in args[0]], [w.shape[1] for w in args[0]], *args[4:])
    opcheck(torch.ops.inductor_embed.multi_embedding_bag_backward.default, bwd_args)
    opcheck(torch.ops.inductor_embed.multi_embedding_bag_backward_cpu.default, bwd_args)
    sparse_args = (*bwd_args[:-1], [False, True, True])
    opcheck(torch.ops.inductor_embed.multi_embedding_bag_backward_cpu.default, sparse_args)
    w = torch.randn(20, 5, requires_grad=True)
    opcheck(TIED, (w, None, torch.randint(0, 20, (3, 2)), torch.randint(0, 20, (7,)), torch.tensor([0, 3]), None,
                   2, 1, -1, False))
    opcheck(TIED, (w, torch.randn(20, 5, requires_grad=True), torch.randint(0, 20, (3,)),
                   torch.randint(0, 20, (2, 4)), None, None, 0, -1, 3, False))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("separate", [False, True], ids=["one-parameter", "two-parameters"])
def test_tied_matches_eager(path: str, separate: bool) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 6, generator=g, requires_grad=True)
    # from_pretrained makes a second Parameter over the same memory.
    w2 = torch.nn.Parameter(w.detach()) if separate else w
    ei = torch.randint(0, 20, (3, 4), generator=g)
    bi = torch.randint(0, 20, (10,), generator=g)
    bo = torch.tensor([0, 4, 4])
    leaves = [w, w2] if separate else [w]
    e_ref, b_ref = F.embedding(ei, w, padding_idx=2), F.embedding_bag(bi, w2, bo, mode="max")
    ge, gb = torch.randn_like(e_ref), torch.randn_like(b_ref)
    want = torch.autograd.grad([e_ref, b_ref], leaves, [ge, gb])
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        e, b, _ = TIED(w, w2 if separate else None, ei, bi, bo, None, 2, 2, -1, False)
        got = torch.autograd.grad([e, b], leaves, [ge, gb])
    assert torch.equal(e, e_ref)
    torch.testing.assert_close(b, b_ref)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c)


def _tied_sparse_case(separate: bool, emb_pad: int, dtype: torch.dtype):
    """Mixed int32/int64 indices, a row both lookups read, padding entries of the Embedding,
    mean bags with include_last_offset and an empty bag."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(20, 6, generator=g).to(dtype).requires_grad_()
    w2 = torch.nn.Parameter(w.detach()) if separate else w
    ei = torch.randint(0, 20, (3, 4), generator=g)
    ei[0, :2] = 2
    bi = torch.randint(0, 20, (11,), generator=g, dtype=torch.int32)
    bi[:3] = int(ei[1, 1])
    bo = torch.tensor([0, 4, 4, 11], dtype=torch.int32)
    return w, w2, ei, bi, bo


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("sparse", [(True, True), (True, False), (False, True)], ids=["both", "emb", "bag"])
@pytest.mark.parametrize("separate", [False, True], ids=["one-parameter", "two-parameters"])
@pytest.mark.parametrize("emb_pad", [-1, 2], ids=["no-pad", "pad"])
def test_tied_sparse_matches_eager(path: str, separate: bool, sparse, dtype, emb_pad: int) -> None:
    """Eager's gradients: one Parameter read by two sparse lookups, the sum of two
    uncoalesced COO tensors; by a sparse and a dense one, dense; two Parameters, each its
    own. The op's sparse ones are coalesced, one COO tensor per Parameter."""
    w, w2, ei, bi, bo = _tied_sparse_case(separate, emb_pad, dtype)
    leaves = [w, w2] if separate else [w]
    e_ref = F.embedding(ei, w, padding_idx=None if emb_pad < 0 else emb_pad, sparse=sparse[0])
    b_ref = F.embedding_bag(bi, w2, bo, mode="mean", include_last_offset=True, sparse=sparse[1])
    ge, gb = torch.randn_like(e_ref), torch.randn_like(b_ref)
    want = torch.autograd.grad([e_ref, b_ref], leaves, [ge, gb])
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        e, b, _ = TIED(w, w2 if separate else None, ei, bi, bo, None, 1, emb_pad, -1, True, list(sparse))
        got = torch.autograd.grad([e, b], leaves, [ge, gb])
    tol = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    assert torch.equal(e, e_ref)
    torch.testing.assert_close(b, b_ref, **tol)
    for k, (a, c) in enumerate(zip(got, want)):
        assert a.layout == c.layout and a.dtype == c.dtype, k
        if c.is_sparse:
            c = c.coalesce()
            rows = a._indices()
            assert bool((rows[0, 1:] > rows[0, :-1]).all()), f"gradient {k}: rows not sorted unique"
            assert torch.equal(rows, c.indices()), k
            a, c = a._values(), c.values()
        torch.testing.assert_close(a, c, **tol, msg=lambda m, k=k: f"gradient {k}: {m}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sparse", [(True, True), (True, False), (False, True)], ids=["both", "emb", "bag"])
@pytest.mark.parametrize("separate", [False, True], ids=["one-parameter", "two-parameters"])
@pytest.mark.parametrize("unused", ["emb", "bag"])
def test_tied_sparse_output_without_gradient(path: str, separate: bool, sparse, unused: str) -> None:
    """One output gets no gradient: its lookup adds nothing, as in eager (a sparse part no
    rows, not rows of zeros, which SparseAdam would step; one Parameter read by a sparse
    lookup and an unused dense one gets a sparse gradient)."""
    w, w2, ei, bi, bo = _tied_sparse_case(separate, 2, torch.float32)
    leaves = [w, w2] if separate else [w]
    e_ref = F.embedding(ei, w, padding_idx=2, sparse=sparse[0])
    b_ref = F.embedding_bag(bi, w2, bo, mode="mean", include_last_offset=True, sparse=sparse[1])
    k = 1 if unused == "emb" else 0
    g = torch.randn_like([e_ref, b_ref][k])
    want = torch.autograd.grad([e_ref, b_ref][k], leaves, g, allow_unused=True)
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        outs = TIED(w, w2 if separate else None, ei, bi, bo, None, 1, 2, -1, True, list(sparse))
        got = torch.autograd.grad(outs[k], leaves, g, allow_unused=True)
    for j, (a, c) in enumerate(zip(got, want)):
        if c is None:  # a dense part of an unused output: zeros (or None)
            assert a is None or (a.layout == torch.strided and not a.any()), j
            continue
        assert a.layout == c.layout, j
        if c.is_sparse:
            c = c.coalesce()
            assert torch.equal(a._indices(), c.indices()), j
            a, c = a._values(), c.values()
        torch.testing.assert_close(a, c, msg=lambda m, j=j: f"gradient {j}: {m}")


@pytest.mark.parametrize("path", PATHS)
def test_tied_sparse_opcheck(path: str) -> None:
    """opcheck (schema, autograd registration, fake impl, AOT dispatch with its sparse
    gradients) with the sparse argument, and the per-sample weights' gradient beside a
    sparse bag."""
    w, w2, ei, bi, bo = _tied_sparse_case(True, 2, torch.float32)
    psw = torch.randn(bi.shape, requires_grad=True)
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"):
        for args in ((w, None, ei, bi, bo, psw, 0, 2, -1, False, [True, True]),
                     (w, w2, ei, bi, bo, psw, 0, 2, -1, False, [True, False])):
            opcheck(TIED, args)
            e, b, _ = TIED(*args)
            (gp,) = torch.autograd.grad(b, [psw], torch.ones_like(b))
            want = torch.autograd.grad(F.embedding_bag(bi, w, bo, mode="sum", per_sample_weights=psw), [psw],
                                       torch.ones_like(b))[0]
            torch.testing.assert_close(gp, want)


def test_tied_sparse_rejects_what_the_op_cannot_do() -> None:
    w, _, ei, bi, bo = _tied_sparse_case(False, -1, torch.float32)
    with pytest.raises(RuntimeError, match="max mode does not support sparse weights"):
        TIED(w, None, ei, bi, bo, None, 2, -1, -1, False, [False, True])
    with pytest.raises(RuntimeError, match="sparse=True with a padding_idx is not supported"):
        TIED(w, None, ei, bi, bo, None, 0, -1, 3, False, [False, True])
    with pytest.raises(RuntimeError, match="sparse must be"):
        TIED(w, None, ei, bi, bo, None, 0, -1, -1, False, [True])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", ["index", "decreasing", "past-end"])
def test_bad_input_raises(path: str, bad: str) -> None:
    w = torch.randn(10, 4)
    i = torch.tensor([1, 2, 3, 4, 5])
    o = torch.tensor([0, 2])
    if bad == "index":
        i = torch.tensor([1, 2, 10, 4, 5])
    elif bad == "decreasing":
        o = torch.tensor([0, 4, 2])
    else:
        o = torch.tensor([0, 7])
    with inductor_embed._internal.patch(triton_on_cpu=path == "triton"), pytest.raises(RuntimeError):
        OP([w], [i], [o], [], [0], [-1], [False], [False])


@pytest.mark.parametrize("sparse", [(False, False, False), (False, True, True)], ids=["dense", "sparse"])
def test_cpu_backward_op_matches_the_reference(sparse) -> None:
    """The CPU backward autograd uses (eager's ATen EmbeddingBag backward, one tensor per
    table) against the reference's packed buffers."""
    from inductor_embed.lowering.multi_embedding_bag_ref import (
        multi_embedding_bag_backward_ref,
        rows_in_bags,
    )

    args, _, _ = _tables()
    out, arg_max = OP(*args)
    grad = torch.randn_like(out)
    bwd = (grad, arg_max, args[1], args[2], [p.detach() if p.dim() else None for p in args[3]],
           [w.shape[0] for w in args[0]], [w.shape[1] for w in args[0]], *args[4:7], list(sparse))
    tables = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu(*bwd)
    dense, values = multi_embedding_bag_backward_ref(*bwd)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t, s in zip(tables, sparse) if not s]), dense)
    # as_values: a sparse table's per-position rows (the tied op's); else its COO gradient,
    # whose entries are those rows at the positions in a bag.
    as_values = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu(*bwd, as_values=True)
    if any(sparse):
        torch.testing.assert_close(torch.cat([t for t, s in zip(as_values, sparse) if s]), values)
    for k, s in enumerate(sparse):
        if s:
            want = torch.zeros(bwd[5][k], bwd[6][k]).index_add_(0, rows_in_bags(bwd[2][k], bwd[3][k], bwd[9][k], 0),
                                                                 as_values[k].view(-1, bwd[6][k]))
            assert tables[k].is_sparse and not tables[k].is_coalesced()
            torch.testing.assert_close(tables[k].to_dense(), want)
    dense_tables = [t._values() if t.is_sparse else t for t in tables]
    assert len({t.untyped_storage().data_ptr() for t in dense_tables}) == len(tables)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_bag_backward_matches_the_reference(dtype) -> None:
    """``bag_weight_grad_cpu`` (the CPU's: ATen's _embedding_bag_dense_backward fed the
    offset2bag and bag sizes eager's forward would make) equals ``bag_weight_grad_ref`` for
    sum/mean, padding, per-sample weights, include_last_offset with indices past the last
    bag, empty bags, fixed [B, L] bags, and int32/int64."""
    import itertools

    from inductor_embed.lowering.bag_backward_cpu import bag_weight_grad_cpu
    from inductor_embed.lowering.multi_embedding_bag_ref import bag_weight_grad_ref

    g = torch.Generator().manual_seed(0)
    v, d, b = 30, 4, 6
    for mode, ilo, fixed, pad, psw_on, itype in itertools.product(
            (0, 1), (False, True), (False, True), (-1, 3), (False, True), (torch.int32, torch.int64)):
        if (psw_on and mode != 0) or (fixed and ilo):
            continue
        if fixed:
            idx, offs = torch.randint(0, v, (b, 3), generator=g, dtype=itype), None
        else:
            idx = torch.randint(0, v, (20,), generator=g, dtype=itype)
            cuts = sorted(torch.randint(0, 16 if ilo else 20, (b - 1,), generator=g).tolist())
            offs = torch.tensor([0, *cuts] + ([16] if ilo else []), dtype=itype)
        idx[idx % 4 == 0] = 3
        psw = torch.rand(idx.shape, generator=g).to(dtype) if psw_on else None
        grad = torch.randn(b, d, generator=g).to(dtype)
        am = torch.empty(b, 0, dtype=torch.long)
        want = bag_weight_grad_ref(grad, am, idx, offs, psw, mode, pad, ilo, v)
        got = bag_weight_grad_cpu(grad, am, idx, offs, psw, mode, pad, ilo, v)
        assert got.dtype == torch.float32
        case = f"{mode=} {ilo=} {fixed=} {pad=} {psw_on=} {itype}"
        torch.testing.assert_close(got, want, msg=lambda m, case=case: f"{case}: {m}")


def test_the_cpu_body_checks_the_structure_once_and_the_values_always(monkeypatch) -> None:
    """The public op checks its arguments' structure, then its CPU body (``checked=True``)
    checks only the values: one structural check a call, and a bad offset still raises."""
    from inductor_embed.lowering import _checks

    args, _, _ = _tables()
    calls = []
    real = _checks.multi_embedding_bag
    monkeypatch.setattr(_checks, "multi_embedding_bag", lambda *a, **k: calls.append(k) or real(*a, **k))
    OP(*args)
    assert calls == [{}]  # the public op's own check; the CPU body's would pass values=True
    offsets = [None if o is None else o.clone() for o in args[2]]
    k = next(j for j, o in enumerate(offsets) if o is not None and o.numel() > 2)
    offsets[k][2] = offsets[k][1] - 1  # decreasing
    with pytest.raises(RuntimeError, match="decrease"):
        OP(args[0], args[1], offsets, *args[3:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("separate", [False, True])
def test_tied_backward_reference_matches_the_cpu_backward(dtype, mode: int, separate: bool) -> None:
    """``_tied_backward_ref`` (ATen ops only: what deterministic mode runs on CUDA) gives the
    CPU backward's gradient (eager's, bit-equal) up to the order of additions."""
    from inductor_embed.lowering.multi_embedding_bag_ref import bag_forward
    from inductor_embed.lowering.tied_embedding_bag import _tied_backward_cpu, _tied_backward_ref

    g = torch.Generator().manual_seed(mode)
    v, d = 20, 6
    w = torch.randn(v, d, generator=g).to(dtype)
    ei, bi = torch.randint(0, v, (3, 4), generator=g), torch.randint(0, v, (12,), generator=g)
    bo = torch.tensor([0, 4, 4, 9])
    psw = torch.rand(12, generator=g).to(dtype) if mode == 0 else None
    _, am = bag_forward(w, bi, bo, psw, mode, -1, False)
    grad_emb, grad_bag = torch.randn(3, 4, d, generator=g).to(dtype), torch.randn(4, d, generator=g).to(dtype)
    args = (grad_emb, grad_bag, am, ei, bi, bo, psw, v, mode, 2, -1, False, separate)
    want, got = _tied_backward_cpu(*args), _tied_backward_ref(*args)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want)
