"""Tier 1: the pooled-gather kernels against the ATen reference (``F.embedding_bag`` and
``multi_embedding_bag_ref``), run in the Triton interpreter on the CPU, or on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inductor_embed.kernels import multi_embedding_bag as bg
from inductor_embed.lowering import multi_embedding_bag_ref as ref
from tests._util import DEVICE

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 1e-2, "atol": 1e-2},
       torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}
MODES = {"sum": bg.SUM, "mean": bg.MEAN, "max": bg.MAX}


def _lookup(g, v, d, mode, form, dtype, idt, psw, pad, bags=5):
    """One random lookup: (weight, indices, offsets, per_sample_weights, padding_idx, ilo)."""
    w = torch.randn(v, d, generator=g).to(DEVICE, dtype)
    ilo = form == "offsets-last"
    if form == "2d":
        i = torch.randint(0, v, (bags, 3), generator=g).to(DEVICE, idt)
        o = None
    else:
        lengths = torch.randint(0, 5, (bags,), generator=g)
        lengths[1] = 0  # always one empty bag
        o = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        i = torch.randint(0, v, (int(o[-1]),), generator=g).to(DEVICE, idt)
        o = (o if ilo else o[:-1]).to(DEVICE, idt)
    if pad >= 0 and i.numel():
        i.view(-1)[0] = pad
    p = torch.randn(i.shape, generator=g).to(DEVICE, dtype) if psw else None
    return w, i, o, p, pad, ilo


def _segment(i, o, p, mode, pad, ilo, col, am_col):
    b = ref.num_bags(i, o, ilo)
    return bg.Segment(indices=i.reshape(-1).contiguous(), num_bags=b, mode=mode, offsets=o,
                      bag_size=i.shape[1] if o is None else 1,
                      per_sample_weights=None if p is None else p.reshape(-1), padding_idx=pad, col=col, am_col=am_col)


CASES = [
    # (modes, forms, dims, dtype, index dtype, psw, pads)
    (("sum", "mean", "max"), ("offsets", "2d", "offsets-last"), (5, 3, 7), torch.float32, torch.int64, (0, 0, 0), (-1, 1, -1)),
    (("sum", "sum"), ("offsets", "offsets-last"), (4, 130), torch.float32, torch.int32, (1, 0), (0, -1)),
    (("mean", "max"), ("2d", "offsets"), (16, 16), torch.float16, torch.int64, (0, 0), (2, 3)),
    (("sum", "max", "mean"), ("offsets", "offsets", "2d"), (8, 1, 33), torch.bfloat16, torch.int32, (1, 0, 0), (-1, 0, -1)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c[0]) + f"-{c[3]}".replace("torch.", ""))
def test_forward_backward_match_reference(case) -> None:
    modes, forms, dims, dtype, idt, psws, pads = case
    g = torch.Generator().manual_seed(0)
    lookups = [_lookup(g, 11 + k, d, m, f, dtype, idt, ps, pad)
               for k, (m, f, d, ps, pad) in enumerate(zip(modes, forms, dims, psws, pads))]
    expect, am_ref = ref.multi_embedding_bag_ref(
        [lk[0] for lk in lookups], [lk[1] for lk in lookups], [lk[2] for lk in lookups], [lk[3] for lk in lookups],
        [MODES[m] for m in modes], [lk[4] for lk in lookups], [lk[5] for lk in lookups])
    b = expect.shape[0]
    out = torch.full((b, sum(dims)), float("nan"), dtype=dtype, device=DEVICE)
    arg_max = torch.full((b, am_ref.shape[1]), -7, dtype=torch.int64, device=DEVICE)
    segs, col, am_col = [], 0, 0
    for (_w, i, o, p, pad, ilo), m, d in zip(lookups, modes, dims):
        segs.append(_segment(i, o, p, MODES[m], pad, ilo, col, am_col))
        col += d
        am_col += d if m == "max" else 0
    err = bg.multi_embedding_bag_fwd([lk[0] for lk in lookups], segs, [out] * len(segs),
                            [arg_max if m == "max" else None for m in modes])
    assert err.tolist() == [0, 0]
    torch.testing.assert_close(out, expect, **TOL[dtype])
    # The rows each max came from, as ATen reports them (ties aside: random data has none).
    assert torch.equal(arg_max, am_ref)

    grad = torch.randn(b, sum(dims), generator=g).to(DEVICE, dtype)
    num_rows = [lk[0].shape[0] for lk in lookups]
    goffs = [sum(v * d for v, d in zip(num_rows[:k], dims[:k])) for k in range(len(dims))]
    flat = torch.zeros(sum(v * d for v, d in zip(num_rows, dims)), dtype=torch.float32, device=DEVICE)
    bg.multi_embedding_bag_bwd([grad] * len(segs), segs, num_rows, dims, [arg_max if m == "max" else None for m in modes],
                      goffs, [None] * len(segs), flat)
    dense, _ = ref.multi_embedding_bag_backward_ref(
        grad, am_ref, [lk[1] for lk in lookups], [lk[2] for lk in lookups], [lk[3] for lk in lookups], num_rows,
        dims, [MODES[m] for m in modes], [lk[4] for lk in lookups], [lk[5] for lk in lookups], [False] * len(dims))
    torch.testing.assert_close(flat.to(dtype), dense, **TOL[dtype])


def test_reference_matches_eager_autograd() -> None:
    """The reference backward is eager's gradient (the oracle above is not circular)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(9, 4, generator=g, requires_grad=True)
    i = torch.randint(0, 9, (10,), generator=g)
    o = torch.tensor([0, 3, 3, 7])
    p = torch.randn(10, generator=g, requires_grad=True)
    for mode, psw in ((0, p), (1, None), (2, None)):
        name = ["sum", "mean", "max"][mode]
        out = F.embedding_bag(i, w, o, mode=name, per_sample_weights=psw, padding_idx=2)
        gout = torch.randn_like(out)
        gw, = torch.autograd.grad(out, [w], gout)
        _, am = ref.bag_forward(w.detach(), i, o, None if psw is None else psw.detach(), mode, 2, False)
        mine = ref.bag_weight_grad_ref(gout, am, i, o, None if psw is None else psw.detach(), mode, 2, False, 9)
        torch.testing.assert_close(mine, gw)


def test_sparse_values_are_eagers_coo_values() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(12, 6, generator=g, device=DEVICE, requires_grad=True)
    i = torch.randint(0, 12, (9,), generator=g).to(DEVICE)
    o = torch.tensor([0, 4, 4, 6], device=DEVICE)
    for mode in (bg.SUM, bg.MEAN):
        out = F.embedding_bag(i, w, o, mode=["sum", "mean"][mode], sparse=True)
        gout = torch.randn_like(out)
        (gw,) = torch.autograd.grad(out, [w], gout)
        seg = _segment(i, o, None, mode, -1, False, 0, 0)
        vals = torch.full((9 * 6,), float("nan"), device=DEVICE)  # fully written by the kernel
        flat = torch.zeros(0, device=DEVICE)
        bg.multi_embedding_bag_bwd([gout], [seg], [12], [6], [None], [0], [vals], flat)
        torch.testing.assert_close(vals.view(9, 6), gw.coalesce().to_dense()[i] * 0 + gw._values())


@pytest.mark.parametrize("bad", ["decreasing", "past-end", "first-not-0", "negative"])
def test_malformed_offsets_set_flag(bad: str) -> None:
    offsets = {"decreasing": [0, 5, 2], "past-end": [0, 5, 12], "first-not-0": [1, 2, 3], "negative": [0, -1, 4]}[bad]
    w = torch.randn(10, 4, device=DEVICE)
    i = torch.randint(0, 10, (8,), device=DEVICE)
    out = torch.full((3, 4), float("nan"), device=DEVICE)
    seg = bg.Segment(i, 3, bg.SUM, offsets=torch.tensor(offsets, device=DEVICE))
    err = bg.multi_embedding_bag_fwd([w], [seg], [out], [None])
    assert err.tolist() == [0, 1]
    assert not out.isnan().any()  # fully written: bad bags read as empty


@pytest.mark.parametrize("index", [10, -1, 2**40])
def test_out_of_range_index_sets_flag(index: int) -> None:
    w = torch.randn(10, 4, device=DEVICE)
    i = torch.tensor([1, index, 2], device=DEVICE)
    out = torch.empty(1, 4, device=DEVICE)
    err = bg.multi_embedding_bag_fwd([w], [bg.Segment(i, 1, bg.MAX, bag_size=3)], [out],
                            [torch.empty(1, 4, dtype=torch.int64, device=DEVICE)])
    assert err.tolist() == [1, 0]
    torch.testing.assert_close(out[0], torch.maximum(w[1], w[2]))


def test_tied_segments_share_one_gradient_block() -> None:
    """An Embedding segment (bags of one, padding gathered forward) and a bag segment over one
    table accumulate into one block."""
    w = torch.randn(10, 3, device=DEVICE, requires_grad=True)
    ei = torch.tensor([1, 2, 2, 0], device=DEVICE)
    bi = torch.tensor([2, 3, 0, 5], device=DEVICE)
    bo = torch.tensor([0, 2], device=DEVICE)
    e_ref, b_ref = F.embedding(ei, w, padding_idx=0), F.embedding_bag(bi, w, bo, mode="sum")
    ge, gb = torch.randn_like(e_ref), torch.randn_like(b_ref)
    (gw,) = torch.autograd.grad([e_ref, b_ref], [w], [ge, gb])
    segs = [bg.Segment(ei, 4, padding_idx=0, forward_padding=False), bg.Segment(bi, 2, offsets=bo)]
    e, b = torch.empty(4, 3, device=DEVICE), torch.empty(2, 3, device=DEVICE)
    err = bg.multi_embedding_bag_fwd([w.detach()] * 2, segs, [e, b], [None, None])
    assert torch.equal(e, e_ref) and torch.allclose(b, b_ref) and err.tolist() == [0, 0]
    flat = torch.zeros(30, device=DEVICE)
    bg.multi_embedding_bag_bwd([ge, gb], segs, [10, 10], [3, 3], [None, None], [0, 0], [None, None], flat)
    torch.testing.assert_close(flat.view(10, 3), gw)


def test_sparse_values_after_the_last_bag_are_zeros() -> None:
    """include_last_offset with offsets[B] < nnz: trailing indices belong to no bag, and their
    rows of the COO values are zeros (the values buffer is not zero-filled beforehand)."""
    i = torch.tensor([1, 2, 3, 4, 5, 6], device=DEVICE)
    o = torch.tensor([0, 2, 3], device=DEVICE)  # 2 bags over indices[0:3]; 3..5 in no bag
    gout = torch.randn(2, 5, device=DEVICE)
    seg = _segment(i, o, None, bg.SUM, -1, True, 0, 0)
    vals = torch.full((6 * 5,), float("nan"), device=DEVICE)
    bg.multi_embedding_bag_bwd([gout], [seg], [8], [5], [None], [0], [vals], torch.zeros(0, device=DEVICE))
    want = torch.cat([gout[0].expand(2, 5), gout[1:2], torch.zeros(3, 5, device=DEVICE)])
    torch.testing.assert_close(vals.view(6, 5), want)


def test_launches_do_not_grow_with_segments(count_launches) -> None:
    launches = count_launches(bg)
    g = torch.Generator().manual_seed(3)
    for S in (3, 30):
        lookups = [_lookup(g, 7, 1 + k % 5, "sum", "offsets", torch.float32, torch.int64, 0, -1) for k in range(S)]
        segs, col = [], 0
        for (_w, i, o, p, pad, ilo) in lookups:
            segs.append(_segment(i, o, p, bg.SUM, pad, ilo, col, 0))
            col += _w.shape[1]
        out = torch.empty(5, col, device=DEVICE)
        before = launches()
        bg.multi_embedding_bag_fwd([lk[0] for lk in lookups], segs, [out] * S, [None] * S)
        assert launches() - before == 1
        flat = torch.zeros(sum(lk[0].numel() for lk in lookups), device=DEVICE)
        goffs = [sum(lk[0].numel() for lk in lookups[:k]) for k in range(S)]
        bg.multi_embedding_bag_bwd([out] * S, segs, [7] * S, [lk[0].shape[1] for lk in lookups], [None] * S, goffs,
                          [None] * S, flat)
        assert launches() - before == 2


def test_thousand_segments_tiny_batch() -> None:
    """S=1,000 bag segments (the per-S generated kernels passed ptxas's parameter limit at
    about 372): one launch each way, against the reference."""
    g = torch.Generator().manual_seed(4)
    S = 1000
    modes = [(bg.SUM, bg.MEAN, bg.MAX)[k % 3] for k in range(S)]
    lookups = [_lookup(g, 3 + k % 4, 1 + k % 3, m, "2d" if k % 2 else "offsets", torch.float32, torch.int64, 0, -1,
                       bags=2) for k, m in enumerate(modes)]
    expect, am_ref = ref.multi_embedding_bag_ref(
        [lk[0] for lk in lookups], [lk[1] for lk in lookups], [lk[2] for lk in lookups], [None] * S, modes,
        [-1] * S, [False] * S)
    segs, col, am_col = [], 0, 0
    for (w, i, o, p, pad, ilo), m in zip(lookups, modes):
        segs.append(_segment(i, o, p, m, pad, ilo, col, am_col))
        col += w.shape[1]
        am_col += w.shape[1] if m == bg.MAX else 0
    out = torch.full(expect.shape, float("nan"), device=DEVICE)
    am = torch.full(am_ref.shape, -7, dtype=torch.int64, device=DEVICE)
    err = bg.multi_embedding_bag_fwd([lk[0] for lk in lookups], segs, [out] * S, [am if m == bg.MAX else None for m in modes])
    assert err.tolist() == [0, 0]
    torch.testing.assert_close(out, expect)
    assert torch.equal(am, am_ref)


def test_launcher_checks() -> None:
    w = torch.randn(10, 4, device=DEVICE)
    i = torch.randint(0, 10, (6,), device=DEVICE)
    with pytest.raises(ValueError, match="per_sample_weights need sum mode"):
        bg.multi_embedding_bag_fwd([w], [bg.Segment(i, 2, bg.MEAN, bag_size=3, per_sample_weights=torch.ones(6, device=DEVICE))],
                          [torch.empty(2, 4, device=DEVICE)], [None])
    with pytest.raises(ValueError, match="arg_max"):
        bg.multi_embedding_bag_fwd([w], [bg.Segment(i, 2, bg.MAX, bag_size=3)], [torch.empty(2, 4, device=DEVICE)], [None])
    with pytest.raises(ValueError, match="offsets for"):
        bg.multi_embedding_bag_fwd([w], [bg.Segment(i, 2, offsets=torch.tensor([0], device=DEVICE))],
                          [torch.empty(2, 4, device=DEVICE)], [None])


@pytest.mark.parametrize("dims", [(1,), (128,), (129, 2), (1024,)], ids=str)
def test_block_sizes(dims: tuple[int, ...]) -> None:
    block_b, block_d, num_warps = bg.block_sizes(dims)
    assert (block_d & (block_d - 1)) == 0 and (max(dims) <= block_d or block_d == 128)
    assert 8 <= block_b <= 128 and num_warps in (2, 4, 8)
