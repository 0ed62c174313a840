"""One kernel source, pinned: a change to the multi_embedding forward kernel shows up in
review as a readable diff of this file (the kernel's Python source; its TTIR would need a
non-interpreted compile, which the CPU test run does not do).

Regenerate after an intended change with ``EXPECTTEST_ACCEPT=1 python -m pytest <this file>``.
"""

from __future__ import annotations

import inspect

import expecttest

from inductor_embed.kernels import multi_embedding


class TestKernelSource(expecttest.TestCase):
    def test_multi_embedding_fwd_kernel(self):
        # .fn: the Python function under both triton.jit and the interpreter's wrapper.
        self.assertExpectedInline(inspect.getsource(multi_embedding._multi_embedding_fwd_kernel.fn), """\
@triton.jit(do_not_specialize=["N"])
def _multi_embedding_fwd_kernel(
    meta_ptr,  # [T * META_COLS] int64 meta table (see the META fields above)
    err_ptr,  # [2] int32 error flags; [0] set on an index outside [0, V_k)
    out_ptr,  # [N, sum(D_k)] output, the tables' dtype, column stride 1
    out_row_stride,
    N,
    COLS: tl.constexpr,
    VEC: tl.constexpr,  # every row start is a multiple of VEC elements (16-byte vectors)
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    p_meta = meta_ptr + tl.program_id(1).to(tl.int64) * COLS
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    elem_ty = out_ptr.dtype.element_ty
    p_w = tl.load(p_meta + W_PTR).to(tl.pointer_type(elem_ty))
    if VEC > 1:
        # A pointer loaded from memory carries no alignment facts; the launcher checked them.
        p_w = tl.multiple_of(p_w, 16)
    w_stride = tl.load(p_meta + W_STRIDE)
    v = tl.load(p_meta + V)
    # Width and row starts are multiples of VEC (the launcher checked): with these hints
    # the column masks are uniform per vector and loads and stores go 16 bytes at a time.
    d = tl.multiple_of(tl.load(p_meta + D), VEC)
    col = tl.load(p_meta + COL)
    b_idx = load_index(tl.load(p_meta + I_PTR), tl.load(p_meta + I64), o_n * tl.load(p_meta + I_STRIDE), m_n, 0)
    m_ok = m_n & (b_idx >= 0) & (b_idx < v)
    # A predicated store of 1 from every bad row: all writers agree on the value, so no
    # atomic is needed, and it costs nothing when every index is valid.
    tl.store(err_ptr + o_n * 0, 1, mask=m_n & ~m_ok)
    # int64 before the multiply: idx * row stride passes 2**31 on large tables.
    o_w = tl.multiple_of(b_idx * w_stride, VEC)
    o_out = tl.multiple_of(o_n * out_row_stride + col, VEC)
    # A while loop over the table's own width (a loaded value): every table of the
    # launch shares BLOCK_D, and a wide one takes several chunks.
    i_d = d * 0
    while i_d < d:
        o_d = i_d + tl.arange(0, BLOCK_D)
        m_d = o_d < d
        # Bad rows load zeros instead of reading out of bounds and are still written,
        # so the output never holds stale memory.
        b_w = tl.load(p_w + o_w[:, None] + o_d[None, :], mask=m_ok[:, None] & m_d[None, :], other=0.0)
        tl.store(out_ptr + o_out[:, None] + o_d[None, :], b_w, mask=m_n[:, None] & m_d[None, :])
        i_d += BLOCK_D
""")
