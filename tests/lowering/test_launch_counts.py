"""The fused ops do a fixed amount of work per call whatever the table count: the ATen ops
each op dispatches (allocations, fills, casts, the meta table) are the same for 3 and for
30 tables, and indices sliced from one input are read in place, never copied per table.
Run on the kernel path (the Triton interpreter on the CPU, or CUDA)."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F

import inductor_embed

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OPS = torch.ops.inductor_embed


# Ops that only make views or bookkeeping: free, and allowed once per table.
_VIEWS = {"aten::reshape", "aten::_reshape_alias", "aten::view", "aten::slice", "aten::as_strided", "aten::narrow",
          "aten::select", "aten::detach", "aten::detach_", "aten::alias", "aten::lift_fresh", "aten::set_"}


def _ops(fn) -> collections.Counter[str]:
    """The ATen ops ``fn`` runs that do work (allocations, fills, copies, casts), nested ones
    included: the profiler records what runs inside the opaque ops."""
    with inductor_embed._internal.patch(triton_on_cpu=True), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in _VIEWS)


def _cat_case(t: int):
    g = torch.Generator().manual_seed(t)
    ws = [torch.randn(9, 1 + k % 4, generator=g).to(DEV) for k in range(t)]
    x = torch.randint(0, 9, (5, t), generator=g).to(DEV)
    idx = [x[:, k] for k in range(t)]  # strided columns of one input
    out = OPS.multi_embedding_triton(ws, idx)[0]
    grad = torch.randn(out.shape, generator=g).to(DEV)
    return (lambda: OPS.multi_embedding_triton(ws, idx),
            lambda: OPS.multi_embedding_backward(grad, idx, [9] * t, [w.shape[1] for w in ws], [-1] * t, [True] * t))


def _bag_case(t: int):
    g = torch.Generator().manual_seed(t)
    ws = [torch.randn(9, 4, generator=g).to(DEV) for _ in range(t)]
    x = torch.randint(0, 9, (5, t, 3), generator=g).to(DEV)
    psw = torch.randn(5, t, 3, generator=g).to(DEV)
    idx, ps = [x[:, k] for k in range(t)], [psw[:, k] for k in range(t)]  # [B, L] slices, not contiguous
    args = (ws, idx, [None] * t, ps, [0] * t, [-1] * t, [False] * t)
    out, am, _ = OPS.multi_embedding_bag_triton(*args)
    grad = torch.randn(out.shape, generator=g).to(DEV)
    return (lambda: OPS.multi_embedding_bag_triton(*args),
            lambda: OPS.multi_embedding_bag_backward(grad, am, idx, [None] * t, ps, [9] * t, [4] * t, [0] * t,
                                                     [-1] * t, [False] * t, [False] * t))


def _one_hot_case(t: int):
    g = torch.Generator().manual_seed(t)
    w = torch.randn(6, 4 * t, generator=g).to(DEV)
    x = torch.randint(0, 4, (5, t), generator=g).to(DEV)
    idx = [x[:, k:k + 1] for k in range(t)]
    offs = [4 * k for k in range(t)]
    grad = torch.randn(5, 6, generator=g).to(DEV)
    return (lambda: OPS.one_hot_linear_triton(idx, [4] * t, offs, w, None, torch.float32),
            lambda: OPS.one_hot_linear_backward_triton(grad, idx, [4] * t, offs, 4 * t, False, False, torch.float32))


@pytest.mark.parametrize("case", [_cat_case, _bag_case, _one_hot_case], ids=["cat", "bag", "one_hot"])
def test_aten_ops_per_call_do_not_grow_with_tables(case) -> None:
    with inductor_embed._internal.patch(triton_on_cpu=True):
        few_fwd, few_bwd = case(3)
        many_fwd, many_bwd = case(30)
    assert _ops(few_fwd) == _ops(many_fwd)
    assert _ops(few_bwd) == _ops(many_bwd)
    # Nothing is copied per table (strided indices are read in place).
    ops = _ops(many_fwd)
    assert ops["aten::empty"] >= 1  # the output: the profiler does see inside the op
    assert not any(name in ops for name in ("aten::clone", "aten::contiguous"))


def test_strided_fixed_bags_match_eager() -> None:
    """[B, L] slices of a [B, T, L] input with per-sample weights, read in place."""
    g = torch.Generator().manual_seed(0)
    t = 4
    ws = [torch.randn(9, 4, generator=g).to(DEV) for _ in range(t)]
    x = torch.randint(0, 9, (5, t, 3), generator=g).to(DEV)
    psw = torch.randn(5, t, 3, generator=g).to(DEV)
    with inductor_embed._internal.patch(triton_on_cpu=True):
        out, _, err = OPS.multi_embedding_bag_triton(ws, [x[:, k] for k in range(t)], [None] * t,
                                                     [psw[:, k] for k in range(t)], [0] * t, [-1] * t, [False] * t)
    want = torch.cat([F.embedding_bag(x[:, k].contiguous(), w, mode="sum", per_sample_weights=psw[:, k].contiguous())
                      for k, w in enumerate(ws)], 1)
    assert err.tolist() == [0, 0]
    torch.testing.assert_close(out, want)
