"""Per-table Triton helpers of the multi-table gather (inlined into generated kernels).

``multi_gather.py`` generates one forward and one backward kernel per table count
T; their bodies call these helpers once per table. The helpers must stay plain
``@triton.jit`` functions that reference nothing but ``tl``: Inductor re-emits a
user kernel together with the source of every jit function it calls, decorated
with a bare ``@triton.jit``, so module constants or decorator options here would
be lost.
"""

import triton
import triton.language as tl


@triton.jit
def _gather_table(
    w_ptr,  # [V, D] table, column stride 1, row stride w_row_stride
    w_row_stride,
    i_ptr,  # [N] indices of this table, int32 or int64, stride i_stride
    i_stride,
    V,
    out_ptr,  # [N, >= COL + D] output, w's dtype, column stride 1
    out_row_stride,
    err_ptr,  # [1] int32 error flag, written only on an out-of-range index
    o_n,  # [BLOCK_N] int64 row offsets of this program
    m_n,  # [BLOCK_N] o_n < N
    D: tl.constexpr,
    COL: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy rows ``w[idx[o_n]]`` into ``out[o_n, COL:COL + D]``."""
    # int64 before any multiply: idx * w_row_stride passes 2**31 on large tables.
    b_idx = tl.load(i_ptr + o_n * i_stride, mask=m_n, other=0).to(tl.int64)
    m_ok = m_n & (b_idx >= 0) & (b_idx < V)
    # A predicated store of 1 from every bad row: all writers agree on the
    # value, so no atomic is needed, and unlike a block reduction it costs no
    # shared memory or barrier when every index is valid.
    tl.store(err_ptr + tl.zeros_like(o_n), 1, mask=m_n & ~m_ok)
    p_w_row = w_ptr + b_idx * w_row_stride
    p_out_row = out_ptr + o_n * out_row_stride + COL
    # Chunks of BLOCK_D keep the register tile bounded for any D; static_range
    # unrolls them so each chunk's mask folds away when D % BLOCK_D == 0.
    for i_d in tl.static_range(0, D, BLOCK_D):
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        # Bad rows load zeros instead of reading out of bounds, and still get
        # written so the output never holds stale memory.
        b_w = tl.load(p_w_row[:, None] + o_d[None, :], mask=m_ok[:, None] & m_d[None, :], other=0.0)
        tl.store(p_out_row[:, None] + o_d[None, :], b_w, mask=m_n[:, None] & m_d[None, :])


@triton.jit
def _scatter_table(
    go_ptr,  # [N, >= COL + D] gradient of the output, any float dtype, column stride 1
    go_row_stride,
    i_ptr,  # [N] indices of this table, int32 or int64, stride i_stride
    i_stride,
    V,
    pad,
    f_ptr,  # [N] fp32 count of each row's index in the batch; read only if HAS_FREQ
    gw_ptr,  # [sum(V_k * D_k)] fp32 flat weight gradient of all tables
    goff,
    o_n,  # [BLOCK_N] int64 row offsets of this program
    m_n,  # [BLOCK_N] o_n < N
    D: tl.constexpr,
    COL: tl.constexpr,
    HAS_FREQ: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Add ``go[o_n, COL:COL + D]`` (fp32) into rows ``idx[o_n]`` of table block ``goff``."""
    b_idx = tl.load(i_ptr + o_n * i_stride, mask=m_n, other=-1).to(tl.int64)
    # Out-of-range rows are only masked: the forward already flagged them.
    m_row = m_n & (b_idx >= 0) & (b_idx < V) & (b_idx != pad)
    if HAS_FREQ:
        # Multiply by the reciprocal, as ATen's embedding_dense_backward does.
        b_scale = 1.0 / tl.load(f_ptr + o_n, mask=m_row, other=1.0).to(tl.float32)
    p_go_row = go_ptr + o_n * go_row_stride + COL
    p_gw_row = gw_ptr + goff + b_idx * D
    for i_d in tl.static_range(0, D, BLOCK_D):
        o_d = i_d + tl.arange(0, BLOCK_D)
        m = m_row[:, None] & (o_d < D)[None, :]
        # Accumulate in fp32 whatever the gradient dtype: half-precision atomics
        # would round on every add of a repeated index.
        b_g = tl.load(p_go_row[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_FREQ:
            b_g = b_g * b_scale[:, None]
        # Repeated indices in a batch collide here, hence atomics; relaxed order
        # is enough because nothing reads the buffer until the kernel ends.
        tl.atomic_add(p_gw_row[:, None] + o_d[None, :], b_g, mask=m, sem="relaxed")
