"""Per-field Triton helpers of the one-hot column gather (inlined into generated kernels).

``one_hot_gather.py`` generates one forward and one backward kernel per field count
F; their bodies call these helpers once per field. Like ``_multi_gather_jit``, the
helpers must stay plain ``@triton.jit`` functions that reference nothing but ``tl``:
Inductor re-emits a user kernel together with the source of every jit function it
calls, decorated with a bare ``@triton.jit``.

Layout: the weight is ``[D, V]`` (F.linear's ``[out_features, in_features]``) with any
strides, and field k owns its columns ``off_k .. off_k + n_k - 1``. A program owns a
``[BLOCK_N, BLOCK_D]`` tile of the output ``[N, D]``; every row of the tile reads the
weight column its index names. With nn.Linear's row-major ``[D, V]`` weight those reads
are ``V`` elements apart (one 32-byte sector per element); with a weight stored as
``[V, D]`` (``x @ W`` with ``W`` of shape ``[V, D]``) the column stride is 1, Triton
specialises it, and the reads coalesce along D.
"""

import triton
import triton.language as tl


@triton.jit
def _gather_field(
    b_acc,  # [BLOCK_N, BLOCK_D] fp32 running sum of this program's output tile
    i_ptr,  # [N, bag] indices of this field, int32 or int64, strides (i_row_stride, i_bag_stride)
    i_row_stride,
    i_bag_stride,
    bag,
    n,
    off,
    w_ptr,  # [D, V] weight, strides (w_stride_d, w_stride_v)
    w_stride_d,
    w_stride_v,
    err_ptr,  # [1] int32 error flag, written only on an out-of-range index
    o_n,  # [BLOCK_N] int64 row offsets of this program
    m_n,  # [BLOCK_N] o_n < N
    o_d,  # [BLOCK_D] int64 output column offsets of this program
    m_d,  # [BLOCK_D] o_d < D
    CAST_TY: tl.constexpr,  # the output's element type (the kernel passes out_ptr's)
):
    """Add ``w[o_d, off + idx[o_n, j]]`` for every bag slot j of this field to ``b_acc``."""
    p_i = i_ptr + o_n * i_row_stride
    p_w_d = w_ptr + o_d * w_stride_d
    # A runtime loop, not static_range: a bag of 50 categories would otherwise
    # unroll 50 gathers. Triton specialises bag == 1 and folds the loop away.
    for j in range(bag):
        # int64 before any multiply: (off + idx) * w_stride_v passes 2**31 on wide layers.
        b_idx = tl.load(p_i + j * i_bag_stride, mask=m_n, other=0).to(tl.int64)
        m_ok = m_n & (b_idx >= 0) & (b_idx < n)
        # All writers store the same value: no atomic needed (as in _multi_gather_jit).
        tl.store(err_ptr + tl.zeros_like(o_n), 1, mask=m_n & ~m_ok)
        p_w = p_w_d[None, :] + ((b_idx + off) * w_stride_v)[:, None]
        b_w = tl.load(p_w, mask=m_ok[:, None] & m_d[None, :], other=0.0)
        # Round to the compute dtype first, as autocast's cast of the weight would,
        # then accumulate in fp32 (a no-op pair when the weight already has it).
        b_acc += b_w.to(CAST_TY).to(tl.float32)
    return b_acc


@triton.jit
def _scatter_field(
    b_g,  # [BLOCK_N, BLOCK_D] fp32 tile of the output gradient (zeros outside the masks)
    i_ptr,  # [N, bag] indices of this field, int32 or int64, strides (i_row_stride, i_bag_stride)
    i_row_stride,
    i_bag_stride,
    bag,
    n,
    off,
    gw_ptr,  # fp32 [D, V] weight gradient, strides (gw_stride_d, gw_stride_v), zero on entry
    gw_stride_d,
    gw_stride_v,
    o_n,  # [BLOCK_N] int64 row offsets of this program
    m_n,  # [BLOCK_N] o_n < N
    o_d,  # [BLOCK_D] int64 output column offsets of this program
    m_d,  # [BLOCK_D] o_d < D
):
    """Add row ``o_n`` of ``b_g`` into column ``off + idx[o_n, j]`` of ``gw`` for every slot j."""
    p_i = i_ptr + o_n * i_row_stride
    p_gw_d = gw_ptr + o_d * gw_stride_d
    for j in range(bag):
        b_idx = tl.load(p_i + j * i_bag_stride, mask=m_n, other=-1).to(tl.int64)
        # Out-of-range slots are only masked: the forward already flagged them.
        m_ok = m_n & (b_idx >= 0) & (b_idx < n)
        p_gw = p_gw_d[None, :] + ((b_idx + off) * gw_stride_v)[:, None]
        # Repeated indices collide here, hence atomics; fp32 whatever the gradient's
        # dtype, and relaxed order because nothing reads the buffer before the end.
        tl.atomic_add(p_gw, b_g, mask=m_ok[:, None] & m_d[None, :], sem="relaxed")
