"""Per-segment Triton helpers of the pooled (EmbeddingBag) gather, inlined into generated kernels.

``bag_gather.py`` generates one forward and one backward kernel per segment count S; a
program handles ``BLOCK_B`` bags of one segment. A segment is one pooled lookup: a table,
its flat indices, and either offsets (bag ``b`` is ``indices[off[b]:off[b + 1]]``, the last
bag ending at ``off[b + 1]`` or at ``nnz``) or a fixed bag size ``L`` (bag ``b`` is
``indices[b * L:(b + 1) * L]``, a 2-D input). A plain embedding lookup is a segment of
fixed bags of one index, summed.

Like ``_multi_gather_jit``, these must stay plain ``@triton.jit`` functions that reference
nothing but ``tl``. Bag lengths are data, so the loop over a bag's positions is a ``while``
on a loaded bound: Triton 3.6's interpreter cannot ``range()`` over a loaded value.
"""

import triton
import triton.language as tl


@triton.jit
def _bag_bounds(off_ptr, n_off, nnz, L, err_ptr, o_b, m_b, HAS_OFFSETS: tl.constexpr):
    """``(start, end)`` of bags ``o_b``; malformed offsets set ``err[1]`` and read as empty bags."""
    if HAS_OFFSETS:
        start = tl.load(off_ptr + o_b, mask=m_b, other=0).to(tl.int64)
        has_next = m_b & (o_b + 1 < n_off)
        end = tl.load(off_ptr + o_b + 1, mask=has_next, other=0).to(tl.int64)
        end = tl.where(has_next, end, nnz)
        # Decreasing, negative, past the end, or a first bag not starting at 0 (eager's
        # CPU check): every writer stores the same 1, so no atomic is needed.
        bad = m_b & ((start < 0) | (end < start) | (end > nnz) | ((o_b == 0) & (start != 0)))
        tl.store(err_ptr + 1 + tl.zeros_like(o_b), 1, mask=bad)
        start = tl.where(bad | ~m_b, 0, start)
        end = tl.where(bad | ~m_b, 0, end)
    else:
        start = o_b * L
        end = tl.where(m_b, start + L, start)
    return start, end


@triton.jit
def _pool_fwd(
    w_ptr,  # [V, D] table, column stride 1
    w_row_stride,
    V,
    i_ptr,  # [nnz] flat indices, int32/int64, contiguous
    off_ptr,  # [n_off] offsets (read only if HAS_OFFSETS)
    n_off,
    nnz,
    L,  # fixed bag size (used only without offsets)
    psw_ptr,  # [nnz] per-sample weights (read only if HAS_PSW)
    pad,  # row left out of every bag, or -1
    out_ptr,  # [B, >= COL + D] output, column stride 1
    out_row_stride,
    am_ptr,  # [B, >= AM_COL + D] arg-max rows (written only in max mode)
    am_row_stride,
    err_ptr,  # [2] int32: [0] index out of range, [1] malformed offsets
    B,
    pid,
    D: tl.constexpr,
    COL: tl.constexpr,
    AM_COL: tl.constexpr,
    MODE: tl.constexpr,  # 0 sum, 1 mean, 2 max (ATen's numbering)
    HAS_OFFSETS: tl.constexpr,
    HAS_PSW: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pool bags ``pid * BLOCK_B + [0, BLOCK_B)`` into ``out[:, COL:COL + D]`` (fp32 accumulation)."""
    o_b = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    start, end = _bag_bounds(off_ptr, n_off, nnz, L, err_ptr, o_b, m_b, HAS_OFFSETS)
    n = end - start
    n_max = tl.max(n, axis=0)
    p_out = out_ptr + o_b * out_row_stride + COL
    # Chunks of BLOCK_D bound the register tile for any D; each chunk re-reads the
    # bag's indices, which are small next to the rows.
    for i_d in tl.static_range(0, D, BLOCK_D):
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
        am = tl.full([BLOCK_B, BLOCK_D], -1, dtype=tl.int64)
        cnt = tl.zeros([BLOCK_B], dtype=tl.float32)
        j = 0
        while j < n_max:
            m_j = m_b & (j < n)
            b_idx = tl.load(i_ptr + start + j, mask=m_j, other=0).to(tl.int64)
            m_ok = m_j & (b_idx >= 0) & (b_idx < V)
            if i_d == 0:
                tl.store(err_ptr + tl.zeros_like(o_b), 1, mask=m_j & ~m_ok)
            m_use = m_ok & (b_idx != pad)
            m = m_use[:, None] & m_d[None, :]
            b_w = tl.load(w_ptr + b_idx[:, None] * w_row_stride + o_d[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_PSW:
                b_w = b_w * tl.load(psw_ptr + start + j, mask=m_use, other=0.0).to(tl.float32)[:, None]
            if MODE == 2:
                # The first maximum wins (am < 0: nothing seen yet), as in ATen; a NaN row
                # never wins a comparison, also as in ATen.
                better = m & ((b_w > acc) | (am < 0))
                acc = tl.where(better, b_w, acc)
                am = tl.where(better, b_idx[:, None], am)
            else:
                acc += b_w
            cnt += m_use.to(tl.float32)
            j += 1
        if MODE == 1:
            # Mean over the bag's non-padding entries; an empty bag stays 0.
            acc = acc / tl.maximum(cnt, 1.0)[:, None]
        m_out = m_b[:, None] & m_d[None, :]
        if MODE == 2:
            acc = tl.where(am < 0, 0.0, acc)
            tl.store(am_ptr + o_b[:, None] * am_row_stride + AM_COL + o_d[None, :], am, mask=m_out)
        tl.store(p_out[:, None] + o_d[None, :], acc, mask=m_out)


@triton.jit
def _pool_bwd(
    go_ptr,  # [B, >= COL + D] gradient of the output, column stride 1
    go_row_stride,
    am_ptr,  # [B, >= AM_COL + D] arg-max rows of the forward (max mode)
    am_row_stride,
    V,
    i_ptr,  # [nnz] flat indices
    off_ptr,
    n_off,
    nnz,
    L,
    psw_ptr,
    pad,
    gw_ptr,  # fp32 flat dense gradient of all dense segments, zero on entry
    goff,  # where this segment's [V, D] block starts in gw
    sv_ptr,  # [nnz, D] per-index gradient rows (SPARSE only), zero on entry
    err_ptr,  # [2] int32 scratch: the forward already raised on bad input
    B,
    pid,
    D: tl.constexpr,
    COL: tl.constexpr,
    AM_COL: tl.constexpr,
    MODE: tl.constexpr,
    HAS_OFFSETS: tl.constexpr,
    HAS_PSW: tl.constexpr,
    SPARSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Route ``go`` of bags ``pid * BLOCK_B + [0, BLOCK_B)`` to their rows: an fp32 atomic add
    into the dense gradient, or (SPARSE) a store of each index's row of the COO values."""
    o_b = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    start, end = _bag_bounds(off_ptr, n_off, nnz, L, err_ptr, o_b, m_b, HAS_OFFSETS)
    n = end - start
    n_max = tl.max(n, axis=0)
    p_go = go_ptr + o_b * go_row_stride + COL
    if MODE == 1:
        # The forward's divisor: the bag's count of valid non-padding entries.
        cnt = tl.zeros([BLOCK_B], dtype=tl.float32)
        j = 0
        while j < n_max:
            m_j = m_b & (j < n)
            b_idx = tl.load(i_ptr + start + j, mask=m_j, other=0).to(tl.int64)
            cnt += (m_j & (b_idx >= 0) & (b_idx < V) & (b_idx != pad)).to(tl.float32)
            j += 1
        scale = 1.0 / tl.maximum(cnt, 1.0)
    for i_d in tl.static_range(0, D, BLOCK_D):
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        m_g = m_b[:, None] & m_d[None, :]
        b_g = tl.load(p_go[:, None] + o_d[None, :], mask=m_g, other=0.0).to(tl.float32)
        if MODE == 2:
            b_am = tl.load(am_ptr + o_b[:, None] * am_row_stride + AM_COL + o_d[None, :], mask=m_g, other=-1).to(tl.int64)
            m = m_g & (b_am >= 0)
            tl.atomic_add(gw_ptr + goff + b_am * D + o_d[None, :], b_g, mask=m, sem="relaxed")
        else:
            if MODE == 1:
                b_g = b_g * scale[:, None]
            j = 0
            while j < n_max:
                m_j = m_b & (j < n)
                b_idx = tl.load(i_ptr + start + j, mask=m_j, other=0).to(tl.int64)
                m_use = m_j & (b_idx >= 0) & (b_idx < V) & (b_idx != pad)
                b_v = b_g
                if HAS_PSW:
                    b_v = b_v * tl.load(psw_ptr + start + j, mask=m_use, other=0.0).to(tl.float32)[:, None]
                m = m_use[:, None] & m_d[None, :]
                if SPARSE:
                    tl.store(sv_ptr + (start + j)[:, None] * D + o_d[None, :], b_v, mask=m)
                else:
                    # Repeated rows collide, hence atomics; fp32 whatever the dtype.
                    tl.atomic_add(gw_ptr + goff + b_idx[:, None] * D + o_d[None, :], b_v, mask=m, sem="relaxed")
                j += 1
