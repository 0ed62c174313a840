"""Tier 1: the one-hot column gather launchers against their reference twins.

Runs on CUDA when available, else on the CPU under the Triton interpreter
(conftest.py). Shapes are small on purpose: the interpreter runs every program
in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from inductor_embed.kernels import one_hot_linear as ohg
from inductor_embed.lowering.one_hot_linear_ref import (
    one_hot_linear_backward_ref,
    one_hot_linear_ref,
)
from tests._util import DEVICE, DTYPE_NAMES

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# Forward vs the twin: both sum in fp32 and round once; only the order of a bag's
# adds differs. Backward: atomics add in any order. The Triton interpreter casts
# fp32 -> bf16 by truncation (the GPU rounds to nearest even), so a bf16 result can
# be 2 ulps off there: bf16 gets 2 ulps.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
FWD_TOL = {F32: {"atol": 1e-6, "rtol": 1e-6}, F16: {"atol": 1e-3, "rtol": 1e-3}, BF16: {"atol": 1.6e-2, "rtol": 1.6e-2}}
GRAD_TOL = {F32: {"atol": 1e-5, "rtol": 1e-5}, F16: {"atol": 2e-3, "rtol": 2e-3}, BF16: {"atol": 1.6e-2, "rtol": 1.6e-2}}


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    classes: tuple[int, ...]  # n_k per field
    bags: tuple[int, ...]  # bag_k per field
    dtype: torch.dtype  # the weight's
    # i64 | i32 | mixed (per field) | strided (columns of one [N, S] tensor) | same (one index for all rows)
    idx: str = "i64"
    # row: [D, V] row-major (nn.Linear) | vmajor: a [V, D] row-major tensor's .t() | wide: a column slice
    layout: str = "row"
    bias: bool = True
    gap: int = 0  # weight columns between fields (a dense input's)
    out_dtype: torch.dtype | None = None  # autocast's compute dtype

    @property
    def v(self) -> int:
        return sum(self.classes) + self.gap * len(self.classes)

    def offsets(self) -> list[int]:
        out, col = [], 0
        for c in self.classes:
            col += self.gap
            out.append(col)
            col += c
        return out

    @property
    def id(self) -> str:
        f = ".".join(f"{c}x{b}" for c, b in zip(self.classes, self.bags))
        extra = "".join([
            f"-{self.idx}" if self.idx != "i64" else "",
            f"-{self.layout}" if self.layout != "row" else "",
            "" if self.bias else "-nobias",
            f"-gap{self.gap}" if self.gap else "",
            f"-to{DTYPE_NAMES[self.out_dtype]}" if self.out_dtype else "",
        ])
        return f"N{self.n}-D{self.d}-F{f}-{DTYPE_NAMES[self.dtype]}{extra}"


CASES = [
    Case(1, 1, (1,), (1,), F32),
    Case(13, 5, (7,), (1,), F32, "i32", "vmajor"),
    Case(13, 130, (3, 11), (1, 2), F16, "mixed", "wide"),
    Case(13, 17, (5, 1, 9), (3, 1, 2), BF16, "strided", bias=False),
    Case(67, 3, (100,), (4,), F32, "same", "vmajor", gap=2),
    Case(67, 64, (7, 7), (1, 1), BF16, "i32", "row", gap=1),
    Case(67, 8, (4, 6, 2), (2, 1, 3), F16, "strided", "vmajor", bias=False),
    Case(13, 33, (9,), (5,), F32, "same", "wide"),
    Case(13, 6, (5, 4), (2, 1), F32, "mixed", out_dtype=BF16),
    Case(1, 130, (3, 2), (1, 1), F16, layout="vmajor", out_dtype=F32),
    Case(13, 9, (6,), (1,), BF16, "i32", "wide"),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weight(case: Case, g: torch.Generator) -> torch.Tensor:
    d, v = case.d, case.v
    if case.layout == "vmajor":
        return torch.randn(v, d, generator=g).to(case.dtype).t()
    if case.layout == "wide":
        return torch.randn(d, v + 5, generator=g).to(case.dtype)[:, 2 : 2 + v]
    return torch.randn(d, v, generator=g).to(case.dtype)


def _make(case: Case, seed: int = 0):
    """Weight, bias and per-field [N, bag] indices for a case (on DEVICE)."""
    g = _gen(seed)
    w = _weight(case, g)
    b = torch.randn(case.d, generator=g).to(case.dtype) if case.bias else None
    if case.idx == "strided":
        cols = [torch.randint(0, c, (case.n, bag), generator=g) for c, bag in zip(case.classes, case.bags)]
        x = torch.cat(cols, dim=1)  # [N, S]: each field a column slice, row stride S
        starts = [0]
        for bag in case.bags:
            starts.append(starts[-1] + bag)
        indices = [x[:, s:e] for s, e in zip(starts, starts[1:])]
    else:
        indices = []
        for k, (c, bag) in enumerate(zip(case.classes, case.bags)):
            i = torch.randint(0, c, (1 if case.idx == "same" else case.n, bag), generator=g)
            i = i.expand(case.n, bag).contiguous()
            use_i32 = case.idx == "i32" or (case.idx == "mixed" and k % 2 == 0)
            indices.append(i.to(torch.int32) if use_i32 else i)
    w, b = w.to(DEVICE), None if b is None else b.to(DEVICE)
    return w, b, [i.to(DEVICE) for i in indices]


def _out_dtype(case: Case) -> torch.dtype:
    return case.out_dtype or case.dtype


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_matches_twin(case: Case) -> None:
    w, b, indices = _make(case)
    out = torch.full((case.n, case.d), float("nan"), dtype=_out_dtype(case), device=DEVICE)
    err = ohg.one_hot_linear_fwd(indices, case.classes, case.offsets(), w, b, out)
    assert err.tolist() == [0, 0]
    ref = one_hot_linear_ref(indices, case.offsets(), w, b, _out_dtype(case))
    assert not out.isnan().any()  # the NaN poison was overwritten everywhere
    if sum(case.bags) == 1 and not (INTERPRETED and _out_dtype(case) == BF16):
        assert torch.equal(out, ref)  # one column (+ bias): one rounding on both sides
    else:
        torch.testing.assert_close(out, ref, **FWD_TOL[_out_dtype(case)])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_matches_twin(case: Case) -> None:
    w, b, indices = _make(case)
    grad = torch.randn(case.n, case.d, generator=_gen(1)).to(_out_dtype(case)).to(DEVICE)
    v_major = case.layout == "vmajor"
    flat = torch.zeros(ohg.flat_size(case.d, case.v, case.bias), device=DEVICE)
    ohg.one_hot_linear_bwd(grad, indices, case.classes, case.offsets(), flat,
                           num_columns=case.v, v_major=v_major, has_bias=case.bias)
    ref = one_hot_linear_backward_ref(grad, indices, case.offsets(), case.v, case.bias, v_major, torch.float32)
    torch.testing.assert_close(flat, ref, **GRAD_TOL[_out_dtype(case)])


def test_backward_layouts_agree_with_autograd() -> None:
    """The flat buffer, viewed as the op's autograd formula views it, is dense autograd's gradient."""
    case = Case(13, 5, (4, 3), (2, 1), F32, "i32", gap=1)
    for v_major in (False, True):
        w, b, indices = _make(case, seed=2)
        grad = torch.randn(case.n, case.d, generator=_gen(3)).to(DEVICE)
        flat = torch.zeros(ohg.flat_size(case.d, case.v, True), device=DEVICE)
        ohg.one_hot_linear_bwd(grad, indices, case.classes, case.offsets(), flat,
                               num_columns=case.v, v_major=v_major, has_bias=True)
        sd, sv = ohg.grad_strides(case.d, case.v, v_major)
        gw = flat[: case.d * case.v].as_strided((case.d, case.v), (sd, sv))
        wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
        dense = torch.zeros(case.n, case.v, device=DEVICE)
        for i, o in zip(indices, case.offsets()):
            dense.scatter_add_(1, i.long() + o, torch.ones(i.shape, device=DEVICE))
        torch.nn.functional.linear(dense, wr, br).backward(grad)
        torch.testing.assert_close(gw, wr.grad, **GRAD_TOL[F32])
        torch.testing.assert_close(flat[case.d * case.v :], br.grad, **GRAD_TOL[F32])


def test_backward_accumulates_half_types_in_fp32() -> None:
    # 4096 rows of 1/64 into one column: bf16 accumulation would stall far below 64.
    n = 4096
    indices = [torch.zeros(n, 1, dtype=torch.int64, device=DEVICE)]
    grad = torch.full((n, 2), 1 / 64, dtype=BF16, device=DEVICE)
    flat = torch.zeros(ohg.flat_size(2, 3, True), device=DEVICE)
    ohg.one_hot_linear_bwd(grad, indices, [3], [0], flat, num_columns=3, v_major=False, has_bias=True)
    gw = flat[:6].view(2, 3)
    torch.testing.assert_close(gw[:, 0].cpu(), torch.full((2,), 64.0))
    assert not gw[:, 1:].any()
    torch.testing.assert_close(flat[6:].cpu(), torch.full((2,), 64.0))


def test_out_of_range_sets_err_and_backward_skips() -> None:
    case = Case(13, 5, (3, 4), (1, 2), F32, "mixed", bias=False)
    w, b, indices = _make(case)
    indices[0][0, 0] = 3  # == n_0: inside the weight (field 1's first column), outside field 0
    indices[1][4, 1] = -1
    indices[1][12, 0] = 10**6
    out = torch.full((case.n, case.d), float("nan"), device=DEVICE)
    err = ohg.one_hot_linear_fwd(indices, case.classes, case.offsets(), w, None, out)
    assert err[0].item() != 0
    # The bad slots read nothing; every other slot is summed as usual.
    bad = [(i < 0) | (i >= c) for i, c in zip(indices, case.classes)]
    safe = [torch.where(m, torch.zeros_like(i), i) for i, m in zip(indices, bad)]
    per_slot = [w.t()[s.long() + o] * (~m).unsqueeze(-1) for s, o, m in zip(safe, case.offsets(), bad)]
    ref = sum(p.sum(1) for p in per_slot)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)

    grad = torch.randn(case.n, case.d, generator=_gen(2)).to(DEVICE)
    flat = torch.zeros(case.d * case.v, device=DEVICE)
    ohg.one_hot_linear_bwd(grad, indices, case.classes, case.offsets(), flat,
                           num_columns=case.v, v_major=False, has_bias=False)
    ref = torch.zeros(case.v, case.d, device=DEVICE)
    for s, o, m in zip(safe, case.offsets(), bad):
        for j in range(s.shape[1]):
            keep = ~m[:, j]
            ref.index_add_(0, s[keep, j].long() + o, grad[keep])
    torch.testing.assert_close(flat.view(case.d, case.v), ref.t(), atol=1e-5, rtol=1e-5)


def test_launches_do_not_grow_with_fields(count_launches) -> None:
    launches = count_launches(ohg)
    for fields in (3, 40):
        case = Case(13, 130, tuple(2 + k % 3 for k in range(fields)), tuple(1 + k % 2 for k in range(fields)), F16)
        w, b, indices = _make(case)
        out = torch.empty(case.n, case.d, dtype=case.dtype, device=DEVICE)
        before = launches()
        ohg.one_hot_linear_fwd(indices, case.classes, case.offsets(), w, b, out)
        assert launches() - before == 1
        flat = torch.zeros(ohg.flat_size(case.d, case.v, True), device=DEVICE)
        ohg.one_hot_linear_bwd(out, indices, case.classes, case.offsets(), flat, num_columns=case.v,
                               v_major=False, has_bias=True)
        assert launches() - before == 2


def test_thousand_fields_tiny_batch() -> None:
    """F=1,000 one-hot fields (the unrolled per-F kernels spilled from 100): one launch each way."""
    fields, n, d = 1000, 2, 3
    case = Case(n, d, tuple(1 + k % 3 for k in range(fields)), (1,) * fields, F32, bias=False)
    w, b, indices = _make(case, seed=5)
    out = torch.full((n, d), float("nan"), device=DEVICE)
    assert ohg.one_hot_linear_fwd(indices, case.classes, case.offsets(), w, None, out).tolist() == [0, 0]
    cols = torch.cat([i.long() + o for i, o in zip(indices, case.offsets())], 1)  # [N, F]
    torch.testing.assert_close(out, w.t()[cols].sum(1), atol=1e-4, rtol=1e-5)
    grad = torch.randn(n, d, generator=_gen(6)).to(DEVICE)
    flat = torch.zeros(ohg.flat_size(d, case.v, False), device=DEVICE)
    ohg.one_hot_linear_bwd(grad, indices, case.classes, case.offsets(), flat, num_columns=case.v,
                           v_major=False, has_bias=False)
    ref = torch.zeros(case.v, d, device=DEVICE).index_add_(0, cols.reshape(-1), grad.repeat_interleave(fields, 0))
    torch.testing.assert_close(flat.view(d, case.v), ref.t(), atol=1e-5, rtol=1e-5)


def test_empty_batch_launches_nothing(count_launches) -> None:
    case = Case(0, 3, (4,), (2,), BF16)
    w, b, indices = _make(case)
    out = torch.empty(0, 3, dtype=case.dtype, device=DEVICE)
    launches = count_launches(ohg)
    err = ohg.one_hot_linear_fwd(indices, case.classes, case.offsets(), w, b, out)
    flat = torch.zeros(ohg.flat_size(3, 4, True), device=DEVICE)
    ohg.one_hot_linear_bwd(out, indices, case.classes, case.offsets(), flat, num_columns=4,
                           v_major=False, has_bias=True)
    assert launches() == 0 and err.tolist() == [0, 0] and not flat.any()


def test_rejects_bad_arguments() -> None:
    case = Case(13, 4, (7,), (1,), F32)
    w, b, indices = _make(case)
    out = torch.empty(13, 4, device=DEVICE)
    with pytest.raises(ValueError, match="out must"):
        ohg.one_hot_linear_fwd(indices, [7], [0], w, b, torch.empty(13, 4, device=DEVICE).t())
    with pytest.raises(ValueError, match="int32/int64"):
        ohg.one_hot_linear_fwd([indices[0].float()], [7], [0], w, b, out)
    with pytest.raises(ValueError, match="not inside"):
        ohg.one_hot_linear_fwd(indices, [7], [1], w, b, out)
    with pytest.raises(ValueError, match=r"\[N=13, bag\]"):
        ohg.one_hot_linear_fwd([indices[0][:, 0]], [7], [0], w, b, out)


@pytest.mark.parametrize("d", [1, 5, 128, 1024])
def test_block_sizes(d: int) -> None:
    block_n, block_d, num_warps = ohg.block_sizes(d)
    assert block_d & (block_d - 1) == 0 and (d <= block_d or block_d == 128)
    assert 16 <= block_n <= 128 and block_n * block_d <= 2048
    assert num_warps in (2, 4, 8)
