"""Tier 2: the one_hot_linear ops. opcheck (schema, fake impl, autograd registration, AOT
with dynamic shapes), forward and gradients vs the dense eager form, errors; on both the
ATen reference path and the Triton path (run in the Triton interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from inductor_embed.lowering.one_hot_linear_ref import one_hot_linear_backward_ref
from tests._util import assert_device_assert, deterministic

OP = torch.ops.inductor_embed.one_hot_linear.default
BWD = torch.ops.inductor_embed.one_hot_linear_backward.default

CASES = {
    # id: (lead, classes, bags, D, weight dtype, weight layout, bias, index dtype, compute dtype)
    "B13-F1-D5-fp32": ((13,), (7,), (1,), 5, torch.float32, "row", True, torch.int64, None),
    "B4x3-F2-D17-bf16-bags": ((4, 3), (5, 3), (2, 1), 17, torch.bfloat16, "row", True, torch.int64, None),
    "B9-F3-D8-fp16-int32-vmajor-nobias": ((9,), (2, 6, 3), (1, 3, 1), 8, torch.float16, "vmajor", False, torch.int32, None),
    "B6-F1-D4-fp32-to-bf16": ((6,), (9,), (2,), 4, torch.float32, "row", True, torch.int64, torch.bfloat16),
    "B0-F2-D3-fp32-empty": ((0,), (4, 2), (1, 1), 3, torch.float32, "row", True, torch.int64, None),
}


def _make(case, requires_grad=True, device="cpu"):
    lead, classes, bags, d, dtype, layout, bias, idt, compute = CASES[case]
    g = torch.Generator().manual_seed(0)
    v = sum(classes)
    w = torch.randn(v, d, generator=g).t() if layout == "vmajor" else torch.randn(d, v, generator=g)
    w = w.to(device, dtype).requires_grad_(requires_grad)
    b = torch.randn(d, generator=g).to(device, dtype).requires_grad_(requires_grad) if bias else None
    indices = [torch.randint(0, c, (*lead, bag), generator=g, dtype=idt).to(device) for c, bag in zip(classes, bags)]
    offsets = [sum(classes[:k]) for k in range(len(classes))]
    return indices, list(classes), offsets, w, b, compute


def _dense(indices, classes, w, b, compute):
    """The eager form the op replaces: F.linear on the cat of summed one-hots (fp32 here)."""
    oh = torch.cat([F.one_hot(i.long(), c).sum(-2) for i, c in zip(indices, classes)], -1)
    dtype = compute or w.dtype
    # autocast rounds the weight and bias to the compute dtype first
    wr = w.to(dtype).float()
    br = None if b is None else b.to(dtype).float()
    return F.linear(oh.float(), wr, br)


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_forward(case):
    indices, classes, offsets, w, b, compute = _make(case)
    opcheck(OP, (indices, classes, offsets, w, b, compute))


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_backward(case):
    indices, classes, offsets, w, b, compute = _make(case, requires_grad=False)
    grad = torch.randn(*indices[0].shape[:-1], w.shape[0]).to(compute or w.dtype)
    v_major = CASES[case][5] == "vmajor"
    opcheck(BWD, (grad, indices, classes, offsets, w.shape[1], b is not None, v_major, w.dtype))


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_dense(case, path):
    indices, classes, offsets, w, b, compute = _make(case, device=path)
    # fp32 oracle: the op sums in fp32 and rounds once, as the kernels do.
    ref_w = w.detach().float().requires_grad_()
    ref_b = None if b is None else b.detach().float().requires_grad_()
    out = OP(indices, classes, offsets, w, b, compute)
    ref = _dense(indices, classes, ref_w, ref_b, compute)
    dtype = compute or w.dtype
    assert out.dtype == dtype and out.shape == ref.shape
    fwd_tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1.6e-2}
    torch.testing.assert_close(out, ref.to(dtype), **fwd_tol)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.float())
    # With a half compute dtype the oracle's gradient passes a bf16 cast (autocast's);
    # the op's stays fp32 to the end.
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(w.grad, ref_w.grad.to(w.dtype), **tol)
    assert w.grad.stride() == w.stride()  # the gradient comes in the weight's own layout
    if b is not None:
        torch.testing.assert_close(b.grad, ref_b.grad.to(b.dtype), **tol)


def test_frozen_weight_trainable_bias(path):
    indices, classes, offsets, w, b, _ = _make("B13-F1-D5-fp32", device=path)
    w.requires_grad_(False)
    out = OP(indices, classes, offsets, w, b)
    out.backward(torch.ones_like(out))
    assert w.grad is None
    torch.testing.assert_close(b.grad, torch.full_like(b, 13.0))


def test_backward_accumulates_half_types_in_fp32(path):
    # 4096 bf16 contributions of 1/64 to one column: bf16 accumulation would stall far below 64.
    idx = [torch.zeros(4096, 1, dtype=torch.int64, device=path)]
    grad = torch.full((4096, 2), 1 / 64, dtype=torch.bfloat16, device=path)
    flat = BWD(grad, idx, [3], [0], 3, True, False, torch.bfloat16)
    assert flat.dtype == torch.bfloat16
    torch.testing.assert_close(flat.view(-1)[[0, 3, 6, 7]].float().cpu(), torch.full((4,), 64.0))


def test_deterministic_backward_is_the_reference(path):
    indices, classes, offsets, w, b, _ = _make("B4x3-F2-D17-bf16-bags", requires_grad=False, device=path)
    grad = torch.randn(4, 3, 17, device=path).to(torch.bfloat16)
    args = (grad, indices, classes, offsets, 8, True, False, torch.bfloat16)
    with deterministic():
        first, second = BWD(*args), BWD(*args)
    assert torch.equal(first, second)
    assert torch.equal(first, one_hot_linear_backward_ref(grad, indices, offsets, 8, True, False, torch.bfloat16))


@pytest.mark.parametrize("bad", [7, -1, 100])
def test_out_of_range_index_raises(path, bad):
    # 7 is inside the weight's 9 columns but outside the field's 7 classes: no spill either.
    call = "torch.ops.inductor_embed.one_hot_linear([torch.tensor([[1], [{}], [2]]{d})], [7], [0], torch.randn(5, 9{d}))"
    if path == "cuda":  # a device-side assert, checked in a fresh process
        return assert_device_assert(call.format(bad, d=", device='cuda'"), "Class values")
    with pytest.raises(RuntimeError, match="Class values"):
        OP([torch.tensor([[1], [bad], [2]])], [7], [0], torch.randn(5, 9))


def test_bad_arguments_raise():
    indices, classes, offsets, w, b, _ = _make("B13-F1-D5-fp32", requires_grad=False)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        OP([indices[0].float()], classes, offsets, w, b)
    with pytest.raises(RuntimeError, match="outside the weight"):
        OP(indices, [8], offsets, w, b)
    with pytest.raises(RuntimeError, match="bias must be"):
        OP(indices, classes, offsets, w, b.double())
