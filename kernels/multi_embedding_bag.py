"""Table-batched pooled gather (EmbeddingBag): ONE launch pools every segment, for any
segment count. The kernels of two ops: ``multi_embedding_bag`` and ``tied_embedding_bag``.

A *segment* is one pooled lookup: a table, flat indices, offsets or a fixed bag size,
optional per-sample weights, a mode (sum, mean, max) and a padding row.
``multi_embedding_bag`` passes one segment per table, all writing column blocks of one
``[B, sum D_k]`` output; ``tied_embedding_bag`` passes an Embedding lookup (fixed bags of
one index) and an EmbeddingBag lookup reading the same table, each with its own output
and one shared gradient block.

One kernel source for any segment count: every per-segment fact (pointers, sizes, mode,
flags) is a row of a meta table (``_meta.py``), so modes and options are run-time
branches on per-segment scalars instead of constexprs of a generated kernel. The grid is
``(cdiv(max_k B_k, BLOCK_B), S)``: axis 1 picks the segment, so every (bag block,
segment) pair runs in parallel, as FBGEMM's table-batched kernels assign a warp per
(table, bag). Bag lengths are data, so the loops over a bag's positions are ``while``
loops on loaded bounds.

Reference twins: ``lowering/multi_embedding_bag_ref.py``.

One module, though long: one kernel source per op family (docs/design.md), the forward,
backward and their launchers sharing the meta fields and the segment type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _meta
from ._meta import check, load_index, pointer

__all__ = ["LAUNCHES", "Segment", "multi_embedding_bag_fwd", "multi_embedding_bag_bwd", "block_sizes", "kernel_specs",
           "kernel_variants"]

SUM, MEAN, MAX = 0, 1, 2  # ATen's mode numbering
# Worst-case launches of an op: forward = pool + one fused check of both error flags
# (two asserts on one tiny input); backward = zero fill(s) + routing + one cast for
# half-type tables.
LAUNCHES = (2, 4)
MAX_BLOCK_D = 128
# Target elements of one [BLOCK_B, BLOCK_D] tile (max mode also holds an int64 arg-max tile).
TILE_ELEMS = 2048
MIN_BLOCK_B, MAX_BLOCK_B = 8, 128

# Meta row of one segment (constexprs, so the kernels name the fields they read). FPAD is
# the row left out of the forward's bags, BPAD the one left out of the gradient; I_RS/I_CS
# and PSW_RS/PSW_CS the row and element strides of the indices and per-sample weights.
FIELDS = _meta.MetaFields("""W_PTR W_STRIDE V D I_PTR I64 OFF_PTR OFF64 N_OFF NNZ L PSW_PTR FPAD BPAD O_PTR
    O_STRIDE COL AM_PTR AM_STRIDE AM_COL B MODE HAS_OFF HAS_PSW GOFF SV_PTR GO_PTR GO_STRIDE I_RS I_CS PSW_RS PSW_CS""")
(W_PTR, W_STRIDE, V, D, I_PTR, I64, OFF_PTR, OFF64, N_OFF, NNZ, L, PSW_PTR, FPAD, BPAD, O_PTR, O_STRIDE,
 COL, AM_PTR, AM_STRIDE, AM_COL, B, MODE, HAS_OFF, HAS_PSW, GOFF, SV_PTR, GO_PTR, GO_STRIDE,
 I_RS, I_CS, PSW_RS, PSW_CS) = FIELDS
FIELDS.check(globals())
META_COLS = FIELDS.cols


@triton.jit
def _bag_bounds(p_meta, err_ptr, o_b, m_b):
    """``(start, end)`` of bags ``o_b``; malformed offsets set ``err[1]`` and read as empty bags."""
    nnz = tl.load(p_meta + NNZ)
    if tl.load(p_meta + HAS_OFF) != 0:
        off_addr = tl.load(p_meta + OFF_PTR)
        off64 = tl.load(p_meta + OFF64)
        n_off = tl.load(p_meta + N_OFF)
        start = load_index(off_addr, off64, o_b, m_b, 0)
        has_next = m_b & (o_b + 1 < n_off)
        end = load_index(off_addr, off64, o_b + 1, has_next, 0)
        end = tl.where(has_next, end, nnz)
        # Decreasing, negative, past the end, or a first bag not starting at 0 (eager's
        # CPU check): every writer stores the same 1, so no atomic is needed.
        bad = m_b & ((start < 0) | (end < start) | (end > nnz) | ((o_b == 0) & (start != 0)))
        tl.store(err_ptr + 1 + o_b * 0, 1, mask=bad)
        start = tl.where(bad | ~m_b, 0, start)
        end = tl.where(bad | ~m_b, 0, end)
    else:
        bag = tl.load(p_meta + L)
        start = o_b * bag
        end = tl.where(m_b, start + bag, start)
    return start, end


@triton.jit
def _bag_bases(p_meta, start, o_b):
    """Where bag ``o_b``'s indices and per-sample weights start in memory (elements): the
    position ``start`` times the element stride with offsets, ``o_b`` times the row stride
    for fixed bags (a ``[B, L]`` input of any strides, e.g. a slice of ``[B, T, L]``, read
    in place). Position j of the bag is then ``base + j * element stride``."""
    has_off = tl.load(p_meta + HAS_OFF) != 0
    i_base = tl.where(has_off, start * tl.load(p_meta + I_CS), o_b * tl.load(p_meta + I_RS))
    p_base = tl.where(has_off, start * tl.load(p_meta + PSW_CS), o_b * tl.load(p_meta + PSW_RS))
    return i_base, p_base


@triton.jit
def _segment(meta_ptr, err_ptr, COLS: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's segment and bags: ``(p_meta, o_b, m_b, start, end, i_base, p_base)``
    (see ``_bag_bounds``, ``_bag_bases``)."""
    p_meta = meta_ptr + tl.program_id(1).to(tl.int64) * COLS
    o_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < tl.load(p_meta + B)
    start, end = _bag_bounds(p_meta, err_ptr, o_b, m_b)
    i_base, p_base = _bag_bases(p_meta, start, o_b)
    return p_meta, o_b, m_b, start, end, i_base, p_base


@triton.jit
def _segment_fields(p_meta):
    """The meta fields both kernels read: ``(v, i_addr, i64, psw_addr, am_addr, am_stride,
    am_col, mode, has_psw, i_cs, p_cs)``."""
    return (tl.load(p_meta + V), tl.load(p_meta + I_PTR), tl.load(p_meta + I64), tl.load(p_meta + PSW_PTR),
            tl.load(p_meta + AM_PTR), tl.load(p_meta + AM_STRIDE), tl.load(p_meta + AM_COL), tl.load(p_meta + MODE),
            tl.load(p_meta + HAS_PSW), tl.load(p_meta + I_CS), tl.load(p_meta + PSW_CS))


@triton.jit
def _zero_tail(p_meta, p_sv, d, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Zero the sparse values' rows ``[offsets[B], nnz)`` (only with include_last_offset)."""
    nnz = tl.load(p_meta + NNZ)
    n_off = tl.load(p_meta + N_OFF)
    if (tl.load(p_meta + HAS_OFF) != 0) & (n_off == tl.load(p_meta + B) + 1) & (n_off > 0):
        last = load_index(tl.load(p_meta + OFF_PTR), tl.load(p_meta + OFF64), n_off - 1, True, 0)
        pos = tl.minimum(tl.maximum(last, 0), nnz)
        while pos < nnz:
            o_p = pos + tl.arange(0, BLOCK_B)
            i_d = d * 0
            while i_d < d:
                o_d = i_d + tl.arange(0, BLOCK_D)
                tl.store(p_sv + o_p[:, None] * d + o_d[None, :], tl.zeros([BLOCK_B, BLOCK_D], tl.float32),
                         mask=(o_p < nnz)[:, None] & (o_d < d)[None, :])
                i_d += BLOCK_D
            pos += BLOCK_B


@triton.jit
def _multi_embedding_bag_fwd_kernel(
    meta_ptr,  # [S * META_COLS] int64 meta table, one row per segment
    err_ptr,  # [2] int32 error flags: [0] index out of range, [1] malformed offsets
    ty_ptr,  # any tensor of the tables' dtype: types the table, output and psw pointers
    COLS: tl.constexpr,
    HAS_MAX: tl.constexpr,  # some segment is in max mode: only then carry an arg-max tile
    VEC: tl.constexpr,  # every row start is a multiple of VEC elements (16-byte vectors)
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pool bags ``pid * BLOCK_B + [0, BLOCK_B)`` of segment ``program_id(1)`` into its output
    columns (fp32 accumulation)."""
    p_meta, o_b, m_b, start, end, i_base, p_base = _segment(meta_ptr, err_ptr, COLS, BLOCK_B)
    v, i_addr, i64, psw_addr, am_addr, am_stride, am_col, mode, has_psw, i_cs, p_cs = _segment_fields(p_meta)
    elem_ty = ty_ptr.dtype.element_ty
    p_psw = psw_addr.to(tl.pointer_type(elem_ty))
    p_am = am_addr.to(tl.pointer_type(tl.int64))
    p_w = tl.load(p_meta + W_PTR).to(tl.pointer_type(elem_ty))
    w_stride = tl.load(p_meta + W_STRIDE)
    # Widths, row strides and column offsets are multiples of VEC and the tensors 16-byte
    # aligned (the launcher checked): with these hints rows move 16 bytes at a time.
    d = tl.multiple_of(tl.load(p_meta + D), VEC)
    pad = tl.load(p_meta + FPAD)
    p_out = tl.load(p_meta + O_PTR).to(tl.pointer_type(elem_ty))
    if VEC > 1:
        p_w = tl.multiple_of(p_w, 16)
        p_out = tl.multiple_of(p_out, 16)
    o_stride = tl.load(p_meta + O_STRIDE)
    col = tl.load(p_meta + COL)
    n = end - start
    n_max = tl.max(n, axis=0)
    # Chunks of BLOCK_D bound the register tile for any D; each chunk re-reads the bag's
    # indices, which are small next to the rows.
    i_d = d * 0
    while i_d < d:
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < d
        acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
        if HAS_MAX:
            am = tl.full([BLOCK_B, BLOCK_D], -1, dtype=tl.int64)
        cnt = tl.zeros([BLOCK_B], dtype=tl.float32)
        j = n_max * 0
        while j < n_max:
            m_j = m_b & (j < n)
            b_idx = load_index(i_addr, i64, i_base + j * i_cs, m_j, 0)
            m_ok = m_j & (b_idx >= 0) & (b_idx < v)
            tl.store(err_ptr + o_b * 0, 1, mask=m_j & ~m_ok)
            m_use = m_ok & (b_idx != pad)
            m = m_use[:, None] & m_d[None, :]
            o_w = tl.multiple_of(b_idx * w_stride, VEC)
            b_w = tl.load(p_w + o_w[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
            if has_psw != 0:
                b_w = b_w * tl.load(p_psw + p_base + j * p_cs, mask=m_use, other=0.0).to(tl.float32)[:, None]
            if HAS_MAX and mode == 2:
                # The first maximum wins (am < 0: nothing seen yet), as in ATen; a NaN row
                # never wins a comparison, also as in ATen.
                better = m & ((b_w > acc) | (am < 0))
                acc = tl.where(better, b_w, acc)
                am = tl.where(better, b_idx[:, None], am)
            else:
                acc += b_w
            cnt += m_use.to(tl.float32)
            j += 1
        if mode == 1:
            # Mean over the bag's non-padding entries; an empty bag stays 0.
            acc = acc / tl.maximum(cnt, 1.0)[:, None]
        m_out = m_b[:, None] & m_d[None, :]
        if HAS_MAX and mode == 2:
            acc = tl.where(am < 0, 0.0, acc)
            tl.store(p_am + o_b[:, None] * am_stride + am_col + o_d[None, :], am, mask=m_out)
        o_out = tl.multiple_of(o_b * o_stride + col, VEC)
        tl.store(p_out + o_out[:, None] + o_d[None, :], acc.to(elem_ty), mask=m_out)
        i_d += BLOCK_D


@triton.jit
def _multi_embedding_bag_bwd_kernel(
    meta_ptr,  # [S * META_COLS] int64 meta table, one row per segment
    err_ptr,  # [2] int32 scratch (the forward already raised on bad input)
    gw_ptr,  # fp32 flat dense gradient of all dense segments, zero on entry
    ty_ptr,  # any tensor of the gradients' dtype: types the gradient and psw pointers
    COLS: tl.constexpr,
    HAS_MAX: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Route the output gradient of bags ``pid * BLOCK_B + [0, BLOCK_B)`` to their rows: an
    fp32 atomic add into the dense gradient, or (a sparse segment) a store of each index's
    row of its COO values."""
    p_meta, o_b, m_b, start, end, i_base, p_base = _segment(meta_ptr, err_ptr, COLS, BLOCK_B)
    v, i_addr, i64, psw_addr, am_addr, am_stride, am_col, mode, has_psw, i_cs, p_cs = _segment_fields(p_meta)
    elem_ty = ty_ptr.dtype.element_ty
    p_psw = psw_addr.to(tl.pointer_type(elem_ty))
    p_am = am_addr.to(tl.pointer_type(tl.int64))
    d = tl.multiple_of(tl.load(p_meta + D), VEC)
    pad = tl.load(p_meta + BPAD)
    goff = tl.load(p_meta + GOFF)
    sv_addr = tl.load(p_meta + SV_PTR)  # 0 for a dense segment
    p_sv = sv_addr.to(tl.pointer_type(tl.float32))
    p_go = tl.load(p_meta + GO_PTR).to(tl.pointer_type(elem_ty))
    if VEC > 1:
        p_go = tl.multiple_of(p_go, 16)
    go_stride = tl.load(p_meta + GO_STRIDE)
    col = tl.load(p_meta + COL)
    n = end - start
    n_max = tl.max(n, axis=0)
    if (sv_addr != 0) & (tl.program_id(0) == 0):
        # Positions after the last bag (include_last_offset with offsets[B] < nnz) are in
        # no bag: their rows of the values are zeros, as in eager's gradient.
        _zero_tail(p_meta, p_sv, d, BLOCK_B, BLOCK_D)
    scale = tl.full([BLOCK_B], 1.0, tl.float32)
    if mode == 1:
        # The forward's divisor: the bag's count of valid non-padding entries.
        cnt = tl.zeros([BLOCK_B], dtype=tl.float32)
        j = n_max * 0
        while j < n_max:
            m_j = m_b & (j < n)
            b_idx = load_index(i_addr, i64, i_base + j * i_cs, m_j, 0)
            cnt += (m_j & (b_idx >= 0) & (b_idx < v) & (b_idx != pad)).to(tl.float32)
            j += 1
        scale = 1.0 / tl.maximum(cnt, 1.0)
    i_d = d * 0
    while i_d < d:
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < d
        m_g = m_b[:, None] & m_d[None, :]
        o_go = tl.multiple_of(o_b * go_stride + col, VEC)
        b_g = tl.load(p_go + o_go[:, None] + o_d[None, :], mask=m_g, other=0.0).to(tl.float32)
        if HAS_MAX and mode == 2:
            b_am = tl.load(p_am + o_b[:, None] * am_stride + am_col + o_d[None, :], mask=m_g, other=-1)
            m = m_g & (b_am >= 0)
            tl.atomic_add(gw_ptr + goff + b_am * d + o_d[None, :], b_g, mask=m, sem="relaxed")
        else:
            b_g = b_g * scale[:, None]
            j = n_max * 0
            while j < n_max:
                m_j = (m_b & (j < n))[:, None]
                b_idx = load_index(i_addr, i64, (i_base + j * i_cs)[:, None], m_j, 0)
                m_use = m_j & (b_idx >= 0) & (b_idx < v) & (b_idx != pad)
                b_v = b_g
                if has_psw != 0:
                    b_v = b_v * tl.load(p_psw + (p_base + j * p_cs)[:, None], mask=m_use, other=0.0).to(tl.float32)
                m = m_use & m_d[None, :]
                if sv_addr != 0:
                    # Every position of the bag is written (zeros where unused), so the
                    # values need no zero fill of their own.
                    tl.store(p_sv + (start + j)[:, None] * d + o_d[None, :], tl.where(m, b_v, 0.0),
                             mask=m_j & m_d[None, :])
                else:
                    # Repeated rows collide, hence atomics; fp32 whatever the dtype.
                    o_gw = tl.multiple_of(goff + b_idx * d, [VEC, 1])
                    tl.atomic_add(gw_ptr + o_gw + o_d[None, :], b_v, mask=m, sem="relaxed")
                j += 1
        i_d += BLOCK_D


@dataclasses.dataclass
class Segment:
    """One pooled lookup, as the launchers take it.

    indices: int32/int64, any strides: ``[nnz]``, or ``[B, L]`` fixed bags (no offsets; read
    in place, so a column slice of a ``[B, T, L]`` input costs no copy). With ``offsets``
    (``[n_off]``, contiguous, int32/int64) bag b is ``indices[offsets[b]:offsets[b + 1]]``,
    the last bag ending at ``nnz`` when ``n_off == num_bags``, at ``offsets[num_bags]``
    when ``n_off == num_bags + 1`` (include_last_offset). Without offsets a 1-D input
    holds bags of ``bag_size``; a 2-D one bags of ``L``.
    per_sample_weights: None, or like indices (same shape, any strides), float (sum mode).
    padding_idx: the row left out of the bags (and of the gradient), or -1.
    forward_padding: False for an Embedding lookup (a bag of one), whose padding row
    is still gathered in the forward and only left out of the gradient.
    col / am_col: first column of this segment in the output / the arg-max buffer.
    """

    indices: Tensor
    num_bags: int
    mode: int = SUM
    offsets: Tensor | None = None
    bag_size: int = 1
    per_sample_weights: Tensor | None = None
    padding_idx: int = -1
    forward_padding: bool = True
    col: int = 0
    am_col: int = 0


def block_sizes(dims: Sequence[int], backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_D, num_warps) for segments of widths ``dims``.

    BLOCK_D = min(next_pow2(max D), 128) (wider segments loop over chunks); BLOCK_B makes
    the forward's tile about 2048 elements, clamped to [8, 128] bags; num_warps gives each
    thread about 8 elements of it, clamped to [2, 8]: the run-time mode branches keep more
    tiles live than one mode would. From BLOCK_D 16 up the backward keeps those warps over
    half the bags: its atomics, weights and mode branches hold more live values per
    element, and with the forward's tile its half-type variants reach the 255-register cap
    at 8 warps and spill on Triton 3.6 (``python -m bench.kernel_compile --variants``
    shows it); half the tile also takes a third off its registers on the newest Triton.
    """
    block_d = min(triton.next_power_of_2(max(max(int(d) for d in dims), 1)), MAX_BLOCK_D)
    block_b = max(MIN_BLOCK_B, min(MAX_BLOCK_B, TILE_ELEMS // block_d))
    num_warps = max(2, min(8, block_b * block_d // 8 // 32))
    if backward and block_d >= 16:
        block_b = max(MIN_BLOCK_B, block_b // 2)
    return block_b, block_d, num_warps


def _check_segment(k: int, s: Segment, v: int, d: int, dtype: torch.dtype) -> None:
    i = s.indices
    check(i.dim() == 1 or (i.dim() == 2 and s.offsets is None),
           f"segment {k}: indices must be 1-D, or 2-D [B, L] without offsets")
    check(i.dtype in _meta.INDEX_DTYPES, f"segment {k}: indices must be int32/int64, got {i.dtype}")
    check(s.mode in (SUM, MEAN, MAX), f"segment {k}: mode must be 0 (sum), 1 (mean) or 2 (max)")
    if s.offsets is not None:
        o = s.offsets
        check(o.dim() == 1 and (o.numel() <= 1 or o.stride(0) == 1) and o.dtype in _meta.INDEX_DTYPES,
               f"segment {k}: offsets must be 1-D contiguous int32/int64")
        check(o.shape[0] in (s.num_bags, s.num_bags + 1), f"segment {k}: {o.shape[0]} offsets for {s.num_bags} bags")
    else:
        check(i.numel() == s.num_bags * _bag_size(s), f"segment {k}: {i.numel()} indices, not {s.num_bags} x {_bag_size(s)}")
    p = s.per_sample_weights
    if p is not None:
        check(s.mode == SUM, f"segment {k}: per_sample_weights need sum mode")
        check(p.shape == i.shape and p.dtype == dtype,
               f"segment {k}: per_sample_weights must match indices, in the tables' dtype")


def _bag_size(s: Segment) -> int:
    return s.indices.shape[1] if s.indices.dim() == 2 else s.bag_size


def _strides(t: Tensor | None, bag: int) -> tuple[int, int]:
    """(row stride, element stride) of a segment's indices or per-sample weights: a 2-D
    ``[B, L]`` tensor's own strides; a 1-D one's stride, times the bag for a row."""
    if t is None:
        return 0, 0
    if t.dim() == 2:
        return t.stride(0), t.stride(1)
    return bag * t.stride(0), t.stride(0)


def _row(s: Segment, w: Tensor | None, v: int, d: int, out: Tensor | None = None, am: Tensor | None = None,
         goff: int = 0, sv: Tensor | None = None, go: Tensor | None = None) -> list[int]:
    """Segment s's meta row (``FIELDS``); absent tensors are address 0, never read."""
    bag = _bag_size(s)
    i_rs, i_cs = _strides(s.indices, bag)
    psw_rs, psw_cs = _strides(s.per_sample_weights, bag)
    return FIELDS.row(
        W_PTR=pointer(w), W_STRIDE=0 if w is None else w.stride(0), V=v, D=d,
        I_PTR=pointer(s.indices), I64=_meta.index_code(s.indices),
        OFF_PTR=pointer(s.offsets), OFF64=_meta.index_code(s.offsets),
        N_OFF=0 if s.offsets is None else s.offsets.shape[0], NNZ=s.indices.numel(), L=bag,
        PSW_PTR=pointer(s.per_sample_weights),
        FPAD=s.padding_idx if s.forward_padding else -1, BPAD=s.padding_idx,
        O_PTR=pointer(out), O_STRIDE=0 if out is None else out.stride(0), COL=s.col,
        AM_PTR=pointer(am), AM_STRIDE=0 if am is None else am.stride(0), AM_COL=s.am_col,
        B=s.num_bags, MODE=s.mode, HAS_OFF=int(s.offsets is not None), HAS_PSW=int(s.per_sample_weights is not None),
        GOFF=goff, SV_PTR=pointer(sv), GO_PTR=pointer(go), GO_STRIDE=0 if go is None else go.stride(0),
        I_RS=i_rs, I_CS=i_cs, PSW_RS=psw_rs, PSW_CS=psw_cs)


@_meta.launches_on("weights")
def multi_embedding_bag_fwd(
    weights: Sequence[Tensor],
    segments: Sequence[Segment],
    outs: Sequence[Tensor],
    arg_max: Sequence[Tensor | None],
) -> Tensor:
    """Pool every segment into its output columns, in one launch.

    Args:
        weights: per segment its table ``[V_k, D_k]`` (column stride 1; segments may share
            one tensor), one float dtype.
        segments: S segments (see ``Segment``).
        outs: per segment ``[B_k, >= col_k + D_k]`` in the tables' dtype, column stride 1
            (several segments may write column blocks of one tensor). Fully written.
        arg_max: per segment, for max mode an int64 ``[B_k, >= am_col_k + D_k]`` that
            receives the row each output element came from (-1 for an empty bag), else None.

    Returns:
        int32 ``[2]`` error flags, set asynchronously: ``[0]`` on an index outside
        ``[0, V_k)``, ``[1]`` on malformed offsets (decreasing, negative, past ``nnz``, or
        not starting at 0). The caller decides whether to raise.
    """
    S = len(segments)
    check(S >= 1 and len(weights) == len(outs) == len(arg_max) == S, "need a table, an output and an arg_max per segment")
    check(weights[0].dtype in _meta.FLOAT_DTYPES, f"unsupported dtype {weights[0].dtype}")
    dims = [int(w.shape[1]) for w in weights]
    for k, (w, s, o, am) in enumerate(zip(weights, segments, outs, arg_max)):
        check(w.dim() == 2 and (w.shape[1] <= 1 or w.stride(1) == 1), f"weights[{k}] must be 2-D with column stride 1")
        check(w.dtype == weights[0].dtype, "all tables must have one dtype")
        _check_segment(k, s, w.shape[0], dims[k], w.dtype)
        check(o.dim() == 2 and o.shape[0] == s.num_bags and o.shape[1] >= s.col + dims[k] and o.dtype == w.dtype
               and (o.shape[1] <= 1 or o.stride(1) == 1),
               f"outs[{k}] must be [{s.num_bags}, >= {s.col + dims[k]}] {w.dtype} with column stride 1")
        if s.mode == MAX:
            check(am is not None and am.dim() == 2 and am.shape[0] == s.num_bags and am.shape[1] >= s.am_col + dims[k]
                   and am.dtype == torch.int64 and (am.shape[1] <= 1 or am.stride(1) == 1),
                   f"arg_max[{k}] must be int64 [{s.num_bags}, >= {s.am_col + dims[k]}]")
    rows = [_row(s, w, w.shape[0], d, out=o, am=am if s.mode == MAX else None)
            for w, s, o, am, d in zip(weights, segments, outs, arg_max, dims)]
    meta = _meta.pack(rows, weights[0].device)
    err = _meta.error_flags(meta)
    max_b = max(s.num_bags for s in segments)
    if max_b == 0 or max(dims) == 0:
        return err
    block_b, block_d, num_warps = block_sizes(dims)
    if weights[0].device.type == "cpu":
        block_b = _meta.interpreter_rows(max_b, block_d)
    vec = _meta.vec_width(weights[0].element_size(), [*dims, *(w.stride(0) for w in weights), *(o.stride(0) for o in outs),
                                           *(s.col for s in segments)], [*weights, *outs])
    _multi_embedding_bag_fwd_kernel[(triton.cdiv(max_b, block_b), S)](
        meta, err, weights[0], COLS=META_COLS, HAS_MAX=any(s.mode == MAX for s in segments), VEC=vec,
        BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps)
    return err


@_meta.launches_on("grad_flat")
def multi_embedding_bag_bwd(
    grads: Sequence[Tensor],
    segments: Sequence[Segment],
    num_rows: Sequence[int],
    dims: Sequence[int],
    arg_max: Sequence[Tensor | None],
    grad_offsets: Sequence[int],
    sparse_values: Sequence[Tensor | None],
    grad_flat: Tensor,
) -> None:
    """Route every segment's output gradient to its table rows, in one launch.

    Args:
        grads: per segment the gradient of its output, ``[B_k, >= col_k + D_k]``, one float
            dtype, column stride 1.
        segments: as in the forward.
        num_rows, dims: V_k and D_k per segment.
        arg_max: per segment the forward's arg-max buffer (max mode), else None.
        grad_offsets: where segment k's ``[V_k, D_k]`` block starts in ``grad_flat``
            (segments of one table share a block).
        sparse_values: per segment None (dense: atomic adds into ``grad_flat``), or fp32
            ``[nnz_k * D_k]`` (any content: fully written) that receives each index's gradient
            row, the values of a sparse COO gradient (sum and mean modes).
        grad_flat: fp32 contiguous, zero on entry.
    """
    S = len(segments)
    check(S >= 1 and len(grads) == len(num_rows) == len(dims) == len(arg_max) == len(grad_offsets)
           == len(sparse_values) == S, "need a gradient, size, arg_max, offset and values slot per segment")
    check(grad_flat.dtype == torch.float32 and grad_flat.dim() == 1, "grad_flat must be fp32 1-D")
    dims = [int(d) for d in dims]
    for k, (g, s, v, d, sv) in enumerate(zip(grads, segments, num_rows, dims, sparse_values)):
        _check_segment(k, s, v, d, grads[0].dtype)
        check(g.dim() == 2 and g.shape[0] == s.num_bags and g.shape[1] >= s.col + d and (d <= 1 or g.stride(1) == 1)
               and g.dtype == grads[0].dtype and g.dtype.is_floating_point,
               f"grads[{k}] must be [{s.num_bags}, >= {s.col + d}] with column stride 1, one float dtype")
        check(sv is None or (sv.dtype == torch.float32 and sv.numel() == s.indices.numel() * d and s.mode != MAX),
               f"sparse_values[{k}] must be fp32 [nnz * D] (sum/mean mode)")
        check(s.mode != MAX or arg_max[k] is not None, f"arg_max[{k}] is needed in max mode")
    rows = [_row(s, None, v, d, am=am if s.mode == MAX else None, goff=goff, sv=sv, go=g)
            for g, s, v, d, am, goff, sv in zip(grads, segments, num_rows, dims, arg_max, grad_offsets, sparse_values)]
    meta = _meta.pack(rows, grad_flat.device)
    max_b = max(s.num_bags for s in segments)
    if max_b == 0 or max(dims) == 0:
        return
    block_b, block_d, num_warps = block_sizes(dims, backward=True)
    if grad_flat.device.type == "cpu":
        block_b = _meta.interpreter_rows(max_b, block_d)
    vec = min(_meta.vec_width(grads[0].element_size(), [*dims, *(g.stride(0) for g in grads), *(s.col for s in segments)], grads),
              _meta.vec_width(4, [*dims, *grad_offsets], [grad_flat]))
    _multi_embedding_bag_bwd_kernel[(triton.cdiv(max_b, block_b), S)](
        meta, _meta.error_flags(meta), grad_flat, grads[0], COLS=META_COLS, HAS_MAX=any(s.mode == MAX for s in segments),
        VEC=vec, BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps)


def kernel_specs(segments: int) -> list[dict[str, Any]]:
    """What ``bench.kernel_compile`` compiles for this family (fp32; D=128 with and without a
    max-mode segment, D=8): the source does not depend on ``segments``, only the grid does."""
    specs = []
    for d, has_max in ((128, False), (128, True), (8, False)):
        tag = f"D{d}" + ("_max" if has_max else "")
        for which, fn, sig, backward in (
                ("fwd", _multi_embedding_bag_fwd_kernel, {"meta_ptr": "*i64", "err_ptr": "*i32", "ty_ptr": "*fp32"}, False),
                ("bwd", _multi_embedding_bag_bwd_kernel,
                 {"meta_ptr": "*i64", "err_ptr": "*i32", "gw_ptr": "*fp32", "ty_ptr": "*fp32"}, True)):
            block_b, block_d, nw = block_sizes([d], backward)
            specs.append({"name": f"{which}_{tag}", "fn": fn, "num_warps": nw, "signature": sig,
                          "constexprs": {"COLS": META_COLS, "HAS_MAX": has_max, "VEC": 4 if d % 4 == 0 else 1,
                                         "BLOCK_B": block_b, "BLOCK_D": block_d}})
    return specs


def kernel_variants() -> list[dict[str, Any]]:
    """Every kernel the CUDA launchers can pick, for ``bench.kernel_compile --variants``:
    each width class (``block_sizes`` of BLOCK_D 1..128), with and without a max-mode
    segment, each float dtype and each VEC. Weighted, mean and sparse segments are
    run-time branches of the same kernels."""
    specs = []
    for block_d in _meta.pow2_range(1, MAX_BLOCK_D):
        for has_max in (False, True):
            tag = f"D{block_d}" + ("_max" if has_max else "")
            for dtype, ty in _meta.TRITON_TYPES.items():
                for which, fn, sig, grad in (
                        ("fwd", _multi_embedding_bag_fwd_kernel,
                         {"meta_ptr": "*i64", "err_ptr": "*i32", "ty_ptr": f"*{ty}"}, False),
                        ("bwd", _multi_embedding_bag_bwd_kernel,
                         {"meta_ptr": "*i64", "err_ptr": "*i32", "gw_ptr": "*fp32", "ty_ptr": f"*{ty}"}, True)):
                    block_b, _, nw = block_sizes([block_d], backward=grad)
                    for vec in _meta.variant_vecs(block_d, dtype.itemsize, grad_fp32=grad):
                        specs.append({"name": f"{which}_{tag}_{ty}_v{vec}", "fn": fn, "num_warps": nw, "signature": sig,
                                      "constexprs": {"COLS": META_COLS, "HAS_MAX": has_max, "VEC": vec,
                                                     "BLOCK_B": block_b, "BLOCK_D": block_d}})
    return specs
