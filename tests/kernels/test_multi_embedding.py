"""Tier 1: the multi-table gather launchers against their reference twins.

Runs on CUDA when available, else on the CPU under the Triton interpreter
(conftest.py). Shapes are small on purpose: the interpreter runs every program
in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from inductor_embed.kernels import multi_embedding as mg
from inductor_embed.lowering.multi_embedding_ref import (
    multi_embedding_backward_ref,
    multi_embedding_ref,
)
from tests._util import DEVICE, DTYPE_NAMES

# Backward tolerances vs the fp32-accumulating twin, which rounds half types once.
GRAD_TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


@dataclass(frozen=True)
class Case:
    n: int
    dims: tuple[int, ...]
    vocabs: tuple[int, ...]
    dtype: torch.dtype
    # i64 | i32 | mixed (per table) | strided (column of [N, T]) | same (one index for all rows)
    idx: str = "i64"
    # weights, out and grad_out are column slices of wider tensors (row stride > width)
    wide: bool = False

    @property
    def id(self) -> str:
        dims = ".".join(map(str, self.dims))
        extra = (f"-{self.idx}" if self.idx != "i64" else "") + ("-wide" if self.wide else "")
        return f"N{self.n}-T{len(self.dims)}-D{dims}-{DTYPE_NAMES[self.dtype]}{extra}"


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CASES = [
    Case(1, (1,), (1,), F32),
    Case(13, (130,), (7,), F32, "i32", wide=True),
    Case(13, (2, 17), (100, 7), F16, "mixed"),
    Case(13, (5, 1, 8), (7, 1, 100), BF16, "strided"),
    Case(13, (130, 5, 2), (100, 7, 7), F32, "same"),
    Case(13, (8, 8, 8, 8, 8), (7, 100, 1, 7, 100), F16, "strided"),
    Case(67, (3, 64, 130), (7, 100, 7), F32, "strided", wide=True),
    Case(67, (1, 2, 3, 5, 8), (100, 7, 100, 1, 7), F32, "same"),
    Case(67, (1, 2, 3, 5, 8), (7, 100, 7, 100, 7), BF16, "i32"),
    Case(67, (64, 130), (100, 7), F16, "same", wide=True),
    Case(67, (17,), (100,), BF16, "same"),
    Case(67, (1, 1), (1, 100), F32, "mixed"),
    Case(1, (17, 1, 130, 2, 3), (7, 100, 1, 7, 100), BF16),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _make(case: Case, seed: int = 0):
    """Tables and indices for a case (on DEVICE)."""
    g = _gen(seed)
    T = len(case.dims)
    weights = []
    for v, d in zip(case.vocabs, case.dims):
        w = torch.randn(v, d + (3 if case.wide else 0), generator=g).to(case.dtype)
        weights.append(w[:, 1 : 1 + d] if case.wide else w)
    if case.idx == "strided":
        cols = [torch.randint(0, v, (case.n, 1), generator=g) for v in case.vocabs]
        x = torch.cat(cols, dim=1)
        indices = [x[:, k] for k in range(T)]
    else:
        indices = []
        for k, v in enumerate(case.vocabs):
            i = torch.randint(0, v, (1 if case.idx == "same" else case.n,), generator=g)
            i = i.expand(case.n).contiguous()
            use_i32 = case.idx == "i32" or (case.idx == "mixed" and k % 2 == 0)
            indices.append(i.to(torch.int32) if use_i32 else i)
    weights = [w.to(DEVICE) for w in weights]
    indices = [i.to(DEVICE) for i in indices]
    return weights, indices


def _buffer(n: int, width: int, dtype: torch.dtype, wide: bool, fill: float) -> torch.Tensor:
    """[n, width] filled with `fill`, as a column slice of a wider tensor if `wide`."""
    full = torch.full((n, width + (5 if wide else 0)), fill, dtype=dtype, device=DEVICE)
    return full[:, 2 : 2 + width] if wide else full


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_matches_twin(case: Case) -> None:
    weights, indices = _make(case)
    out = _buffer(case.n, sum(case.dims), case.dtype, case.wide, float("nan"))
    err = mg.multi_embedding_fwd(weights, indices, out)
    assert err.tolist() == [0, 0]
    # A copy: bit-exact in every dtype, and NaN poison would fail torch.equal.
    assert torch.equal(out, multi_embedding_ref(weights, indices))
    if case.wide:
        base = out._base
        assert base[:, :2].isnan().all() and base[:, 2 + sum(case.dims) :].isnan().all()


def _bwd_options(case: Case, indices):
    """Per table: a padding row that occurs in the batch on even tables, freq on odd ones."""
    pads, scale = [], []
    for k, (i, v) in enumerate(zip(indices, case.vocabs)):
        pads.append(int(i[0]) if k % 2 == 0 and v > 1 else -1)
        scale.append(k % 2 == 1 or len(indices) == 1)
    return pads, scale


def _grad_flat(case: Case, scale) -> torch.Tensor:
    return torch.zeros(mg.grad_layout(case.vocabs, case.dims, scale)[2], device=DEVICE)


def _dense(flat: torch.Tensor, case: Case) -> torch.Tensor:
    return flat[: sum(v * d for v, d in zip(case.vocabs, case.dims))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_matches_twin(case: Case) -> None:
    weights, indices = _make(case)
    grad = _buffer(case.n, sum(case.dims), case.dtype, case.wide, 0.0)
    grad.copy_(torch.randn(grad.shape, generator=_gen(1)).to(case.dtype))
    pads, scale = _bwd_options(case, indices)
    grad_flat = _grad_flat(case, scale)
    mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, pads, scale, grad_flat)
    ref = multi_embedding_backward_ref(grad, indices, case.vocabs, case.dims, pads, scale)
    torch.testing.assert_close(_dense(grad_flat, case), ref.float(), **GRAD_TOL[case.dtype])


def test_backward_padding_and_freq_all_tables() -> None:
    case = Case(67, (3, 130, 1), (7, 7, 100), F32, "strided")
    weights, indices = _make(case, seed=3)
    grad = torch.randn(case.n, sum(case.dims), generator=_gen(4)).to(DEVICE)
    pads = [int(i[5]) for i in indices]
    grad_flat = _grad_flat(case, [True] * 3)
    mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, pads, [True] * 3, grad_flat)
    ref = multi_embedding_backward_ref(grad, indices, case.vocabs, case.dims, pads, [True] * 3)
    torch.testing.assert_close(_dense(grad_flat, case), ref, atol=1e-5, rtol=1e-5)
    # The padding rows really got nothing.
    off = 0
    for p, v, d in zip(pads, case.vocabs, case.dims):
        assert not grad_flat[off + p * d : off + (p + 1) * d].any()
        off += v * d


def test_out_of_range_sets_err_and_zero_fills() -> None:
    case = Case(13, (5, 130, 2), (7, 7, 100), F32, "mixed")
    weights, indices = _make(case)
    indices[0][0] = 7  # == V
    indices[1][4] = -1
    indices[2][12] = 10**6
    out = torch.full((case.n, sum(case.dims)), float("nan"), device=DEVICE)
    err = mg.multi_embedding_fwd(weights, indices, out)
    assert err[0].item() != 0 and err[1].item() == 0
    bad = [(i < 0) | (i >= v) for i, v in zip(indices, case.vocabs)]
    safe = [torch.where(m, torch.zeros_like(i), i) for i, m in zip(indices, bad)]
    ref = multi_embedding_ref(weights, safe)
    cols = [0, 5, 135, 137]
    for k in range(3):
        ref[bad[k], cols[k] : cols[k + 1]] = 0
    assert torch.equal(out, ref)

    # The backward skips those rows silently.
    grad = torch.randn(case.n, sum(case.dims), generator=_gen(2)).to(DEVICE)
    grad_flat = _grad_flat(case, [False] * 3)
    mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, [-1] * 3, [False] * 3, grad_flat)
    ref_grad = grad.clone()
    for k in range(3):
        ref_grad[bad[k], cols[k] : cols[k + 1]] = 0
    ref = multi_embedding_backward_ref(
        ref_grad, safe, case.vocabs, case.dims, [-1] * 3, [False] * 3
    )
    torch.testing.assert_close(grad_flat, ref, atol=1e-5, rtol=1e-5)


def test_launches_do_not_grow_with_tables(count_launches) -> None:
    launches = count_launches(mg)
    for T in (5, 40):
        case = Case(13, tuple(1 + k % 8 for k in range(T)), (7,) * T, F16, "mixed")
        weights, indices = _make(case)
        out = torch.empty(case.n, sum(case.dims), dtype=case.dtype, device=DEVICE)
        before = launches()
        mg.multi_embedding_fwd(weights, indices, out)
        assert launches() - before == 1
        scale = [False] * T
        mg.multi_embedding_bwd(out, indices, case.vocabs, case.dims, [-1] * T, scale, _grad_flat(case, scale))
        assert launches() - before == 2
        scale = [True] * T  # the counts take one more launch, not one per table
        mg.multi_embedding_bwd(out, indices, case.vocabs, case.dims, [-1] * T, scale, _grad_flat(case, scale))
        assert launches() - before == 4


def test_thousand_tables_tiny_batch() -> None:
    """T=1,000 (where the per-T generated kernels could not compile): one launch each way."""
    T, n = 1000, 3
    g = _gen(7)
    vocabs = [1 + k % 5 for k in range(T)]
    dims = [1 + k % 4 for k in range(T)]
    weights = [torch.randn(v, d, generator=g).to(DEVICE) for v, d in zip(vocabs, dims)]
    x = torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocabs], 1).to(DEVICE)
    indices = [x[:, k] for k in range(T)]
    out = torch.full((n, sum(dims)), float("nan"), device=DEVICE)
    assert mg.multi_embedding_fwd(weights, indices, out).tolist() == [0, 0]
    assert torch.equal(out, multi_embedding_ref(weights, indices))
    grad = torch.randn(n, sum(dims), generator=g).to(DEVICE)
    flat = torch.zeros(sum(v * d for v, d in zip(vocabs, dims)), device=DEVICE)
    mg.multi_embedding_bwd(grad, indices, vocabs, dims, [-1] * T, [False] * T, flat)
    ref = multi_embedding_backward_ref(grad, indices, vocabs, dims, [-1] * T, [False] * T)
    torch.testing.assert_close(flat, ref, atol=1e-5, rtol=1e-5)


def test_empty_batch_launches_nothing(count_launches) -> None:
    case = Case(0, (3, 130), (7, 1), BF16)
    weights, indices = _make(case)
    out = torch.empty(0, 133, dtype=case.dtype, device=DEVICE)
    launches = count_launches(mg)
    err = mg.multi_embedding_fwd(weights, indices, out)
    grad_flat = _grad_flat(case, [True, False])
    mg.multi_embedding_bwd(out, indices, case.vocabs, case.dims, [-1, 0], [True, False], grad_flat)
    assert launches() == 0 and err.tolist() == [0, 0] and not grad_flat.any()


def test_rejects_bad_layouts() -> None:
    weights, indices = _make(Case(13, (4, 4), (7, 7), F32))
    out = torch.empty(13, 8, device=DEVICE)
    with pytest.raises(ValueError, match="column stride"):
        mg.multi_embedding_fwd([weights[0].t().contiguous().t(), weights[1]], indices, out)
    with pytest.raises(ValueError, match="out must"):
        mg.multi_embedding_fwd(weights, indices, torch.empty(13, 7, device=DEVICE))
    with pytest.raises(ValueError, match="int32/int64"):
        mg.multi_embedding_fwd(weights, [indices[0], indices[1].float()], out)


@pytest.mark.parametrize("max_d,n,t", [(1, 4096, 26), (128, 4096, 26), (1024, 128, 1), (8, 128, 10)], ids=str)
def test_block_sizes(max_d: int, n: int, t: int) -> None:
    block_n, block_d, num_warps = mg.block_sizes(max_d, n, t)
    assert (block_d & (block_d - 1)) == 0 and (max_d <= block_d or block_d == 128)
    assert (block_n & (block_n - 1)) == 0 and 16 <= block_n <= 128 and block_n * block_d <= 2048
    assert num_warps in (2, 4, 8)
    # A small batch is spread out: halve the rows per program until the GPU has work.
    assert block_n == 16 or -(-n // block_n) * t >= mg.TARGET_PROGRAMS


# --- sums of lookups: every table reads the same gradient columns ----------------------------


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=lambda d: DTYPE_NAMES[d])
def test_backward_shared_columns_matches_twin(dtype: torch.dtype, count_launches) -> None:
    """``columns=[0] * T`` (``multi_embedding_sum``): every table scatters the whole [N, D]
    gradient, in one launch; padding rows and scale_grad_by_freq as per table."""
    from inductor_embed.lowering.multi_embedding_ref import multi_embedding_sum_backward_ref

    launches = count_launches(mg)
    case = Case(67, (24,) * 4, (7, 30, 3, 100), dtype, "mixed")
    _, indices = _make(case, seed=5)
    grad = torch.randn(case.n, 24, generator=_gen(6)).to(DEVICE, dtype)
    pads, scale = [-1, int(indices[1][3]), -1, -1], [False, False, True, False]
    grad_flat = _grad_flat(case, scale)
    before = launches()
    mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, pads, scale, grad_flat, columns=[0] * 4)
    assert launches() - before == 2  # the counts, then one atomic-add launch for all four tables
    ref = multi_embedding_sum_backward_ref(grad, indices, case.vocabs, case.dims, pads, scale)
    torch.testing.assert_close(_dense(grad_flat, case), ref.float(), **GRAD_TOL[dtype])


def test_backward_columns_offsets_and_width_check() -> None:
    """Any column offsets (a table may read columns another one reads); grad must be wide
    enough for the widest reach."""
    case = Case(13, (3, 5), (7, 9), F32)
    _, indices = _make(case, seed=7)
    grad = torch.randn(case.n, 6, generator=_gen(8)).to(DEVICE)
    grad_flat = _grad_flat(case, [False, False])
    mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, [-1, -1], [False, False], grad_flat, columns=[3, 1])
    want = [torch.ops.aten.embedding_dense_backward(grad[:, c:c + d], i, v, -1, False)
            for i, v, d, c in zip(indices, case.vocabs, case.dims, (3, 1))]
    torch.testing.assert_close(_dense(grad_flat, case), torch.cat([w.reshape(-1) for w in want]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"grad_out must be \[N, >= 7\]"):
        mg.multi_embedding_bwd(grad, indices, case.vocabs, case.dims, [-1, -1], [False, False], grad_flat, columns=[4, 0])
