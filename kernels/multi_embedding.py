"""Multi-table embedding gather: ONE launch gathers T tables into one output, for any T.

One kernel source for every table count: per-table facts are rows of a meta table
(``_meta.py`` explains why and how it reaches the device). The grid is
``(cdiv(N, BLOCK_N), T)``: axis 1 picks the table, so a batch of 4,096 rows over 26
narrow tables is hundreds of programs, not the 16 that one program per row block over
all tables gave, and no program walks the tables serially.

Forward:  ``out[n, col_k : col_k + D_k] = W_k[idx_k[n]]``
Backward: ``grad_flat[goff_k + idx_k[n] * D_k + d] += grad_out[n, col_k + d]`` (fp32
atomics; ``/ count`` with scale_grad_by_freq, the counts coming from one more launch).

Reference twins: ``lowering/multi_embedding_ref.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _meta
from ._meta import check, load_index, pointer

__all__ = ["LAUNCHES", "META_COLS", "block_sizes", "multi_embedding_fwd", "multi_embedding_bwd", "kernel_specs"]

# Meta row of table k: where its weight and indices are, its shape and where it goes
# (constexprs, so the kernels name the fields they read).
FIELDS = _meta.MetaFields("W_PTR W_STRIDE V D COL I_PTR I_STRIDE I64 GOFF PAD CNT")
(W_PTR, W_STRIDE, V, D, COL, I_PTR, I_STRIDE, I64, GOFF, PAD, CNT) = FIELDS
FIELDS.check(globals())
META_COLS = FIELDS.cols
# Worst-case launches of the op: forward = gather + the index assert; backward = zero
# fill + counts (scale_grad_by_freq) + atomic adds + one cast for half-type tables.
LAUNCHES = (2, 4)

MAX_BLOCK_D = 128  # widest column chunk one program holds in registers at a time
TILE_ELEMS = 2048  # target elements of one [BLOCK_N, BLOCK_D] tile
MIN_BLOCK_N, MAX_BLOCK_N = 16, 128
# Programs that keep every SM of an H100 (132) busy a few times over; fewer, and the
# launcher halves BLOCK_N (down to 16) so a small batch still spreads out.
TARGET_PROGRAMS = 4 * 132


# The kernels read their meta row through at most one jit helper call per program: the
# Triton interpreter (CPU tests) re-patches triton.language on every nested jit call
# (docs/design.md), and one call per meta field made a 26-table launch several times slower.


@triton.jit
def _table_rows(meta_ptr, N, other, COLS: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's table and rows: ``(p_meta, o_n [BLOCK_N], m_n, b_idx int64)``, the
    indices of masked rows read as ``other``."""
    p_meta = meta_ptr + tl.program_id(1).to(tl.int64) * COLS
    o_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    b_idx = load_index(tl.load(p_meta + I_PTR), tl.load(p_meta + I64), o_n * tl.load(p_meta + I_STRIDE), m_n, other)
    return p_meta, o_n, m_n, b_idx


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
    p_meta, o_n, m_n, b_idx = _table_rows(meta_ptr, N, 0, COLS, BLOCK_N)
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


@triton.jit(do_not_specialize=["N"])
def _multi_embedding_count_kernel(
    meta_ptr,  # [T * META_COLS] int64 meta table
    gw_ptr,  # fp32 flat gradient; table k's [V_k] counts at CNT_k (if >= 0), zero on entry
    N,
    COLS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """scale_grad_by_freq: count each index of the tables that ask for it."""
    i_n = tl.program_id(0).to(tl.int64)
    p_meta = meta_ptr + tl.program_id(1).to(tl.int64) * COLS
    cnt = tl.load(p_meta + CNT)
    if cnt >= 0:
        o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        v = tl.load(p_meta + V)
        b_idx = load_index(tl.load(p_meta + I_PTR), tl.load(p_meta + I64), o_n * tl.load(p_meta + I_STRIDE), m_n, -1)
        m_ok = m_n & (b_idx >= 0) & (b_idx < v)
        tl.atomic_add(gw_ptr + cnt + b_idx, tl.full([BLOCK_N], 1.0, tl.float32), mask=m_ok, sem="relaxed")


@triton.jit(do_not_specialize=["N"])
def _multi_embedding_bwd_kernel(
    meta_ptr,  # [T * META_COLS] int64 meta table
    go_ptr,  # [N, sum(D_k)] gradient of the output, any float dtype, column stride 1
    go_row_stride,
    gw_ptr,  # fp32 flat gradient: table k's [V_k, D_k] block row-major at GOFF_k, zero on entry
    N, COLS: tl.constexpr, VEC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    p_meta, o_n, m_n, b_idx = _table_rows(meta_ptr, N, -1, COLS, BLOCK_N)
    v = tl.load(p_meta + V)
    d = tl.multiple_of(tl.load(p_meta + D), VEC)
    col = tl.load(p_meta + COL)
    goff = tl.load(p_meta + GOFF)
    pad = tl.load(p_meta + PAD)
    cnt = tl.load(p_meta + CNT)
    # Out-of-range rows are only masked: the forward already raised on them.
    m_row = m_n & (b_idx >= 0) & (b_idx < v) & (b_idx != pad)
    # Multiply by the reciprocal count, as ATen's embedding_dense_backward does.
    b_scale = tl.full([BLOCK_N], 1.0, tl.float32)
    if cnt >= 0:
        b_scale = 1.0 / tl.load(gw_ptr + cnt + b_idx, mask=m_row, other=1.0)
    o_go = tl.multiple_of(o_n * go_row_stride + col, VEC)
    o_gw = tl.multiple_of(goff + b_idx * d, VEC)
    i_d = d * 0
    while i_d < d:
        o_d = i_d + tl.arange(0, BLOCK_D)
        m = m_row[:, None] & (o_d < d)[None, :]
        # fp32 whatever the gradient's dtype: half-precision atomics would round on every
        # add of a repeated index.
        b_g = tl.load(go_ptr + o_go[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        b_g = b_g * b_scale[:, None]
        # Repeated indices collide, hence atomics; relaxed order is enough because
        # nothing reads the buffer until the kernel ends.
        tl.atomic_add(gw_ptr + o_gw[:, None] + o_d[None, :], b_g, mask=m, sem="relaxed")
        i_d += BLOCK_D


def block_sizes(max_d: int, n: int, t: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps) for T=t tables of widths up to ``max_d`` and N=n rows.

    BLOCK_D = min(next_pow2(max D), 128), so narrow tables do not pay for a wide tile
    (wider tables loop over 128-column chunks). BLOCK_N makes the tile about 2,048
    elements, clamped to [16, 128], then is halved (not below 16) while the grid has
    fewer than ~4 programs per SM: a batch of 128 rows over 10 tables still spreads out.
    num_warps gives each thread about 16 elements of the tile, clamped to [2, 8].
    Only powers of two come out, so a model compiles a handful of variants at most.
    """
    block_d = min(triton.next_power_of_2(max(int(max_d), 1)), MAX_BLOCK_D)
    block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, TILE_ELEMS // block_d))
    while block_n > MIN_BLOCK_N and triton.cdiv(n, block_n) * t < TARGET_PROGRAMS:
        block_n //= 2
    num_warps = max(2, min(8, block_n * block_d // 16 // 32))
    return block_n, block_d, num_warps


def _check_indices(indices: Sequence[Tensor], n: int) -> None:
    for k, i in enumerate(indices):
        check(i.dim() == 1 and i.shape[0] == n, f"indices[{k}] must be [N={n}], got {list(i.shape)}")
        check(i.dtype in _meta.INDEX_DTYPES, f"indices[{k}] must be int32/int64, got {i.dtype}")


def _col_stride_ok(t: Tensor) -> bool:
    return t.shape[1] <= 1 or t.stride(1) == 1


def _prefix(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for x in sizes:
        out.append(acc)
        acc += x
    return out


@_meta.launches_on("out")
def multi_embedding_fwd(weights: Sequence[Tensor], indices: Sequence[Tensor], out: Tensor) -> Tensor:
    """``out[:, C_k:C_k + D_k] = weights[k][indices[k]]`` for every table k, in one launch.

    Args:
        weights: T tables, table k ``[V_k, D_k]``, one float dtype (fp32/fp16/bf16),
            column stride 1, any row stride.
        indices: T tensors ``[N]``, int32 or int64 (may differ per table), any stride.
        out: ``[N, sum(D_k)]`` in the tables' dtype, column stride 1, any row stride;
            ``C_k = sum(D_j for j < k)``. Fully written: a row whose index is out of
            range gets zeros in that table's columns.

    Returns:
        int32 ``[2]`` error flags: ``[0]`` is nonzero once the kernel has seen an index
        outside ``[0, V_k)`` (the caller decides whether to raise; asynchronous on CUDA).
    """
    T = len(weights)
    check(T >= 1 and len(indices) == T, "need one index tensor per table, and a table")
    n = out.shape[0]
    dims = [int(w.shape[1]) for w in weights]
    for k, w in enumerate(weights):
        check(w.dim() == 2 and _col_stride_ok(w), f"weights[{k}] must be 2-D with column stride 1")
        check(w.dtype == weights[0].dtype, "all tables must have one dtype")
    check(weights[0].dtype in _meta.FLOAT_DTYPES, f"unsupported dtype {weights[0].dtype}")
    check(out.dim() == 2 and out.shape[1] == sum(dims) and _col_stride_ok(out),
           f"out must be [N, {sum(dims)}] with column stride 1, got {list(out.shape)}")
    check(out.dtype == weights[0].dtype, "out must have the tables' dtype")
    _check_indices(indices, n)
    cols = _prefix(dims)
    rows = [FIELDS.row(W_PTR=pointer(w), W_STRIDE=w.stride(0), V=w.shape[0], D=d, COL=c, I_PTR=pointer(i),
                       I_STRIDE=i.stride(0), I64=_meta.index_code(i), GOFF=0, PAD=-1, CNT=-1)
            for w, i, d, c in zip(weights, indices, dims, cols)]
    meta = _meta.pack(rows, out.device)
    err = _meta.error_flags(meta)
    if n == 0 or sum(dims) == 0:
        return err
    block_n, block_d, num_warps = block_sizes(max(dims), n, T)
    if out.device.type == "cpu":
        block_n = _meta.interpreter_rows(n, block_d)
    vec = _meta.vec_width(out.element_size(), [*dims, *cols, *(w.stride(0) for w in weights), out.stride(0)], [*weights, out])
    _multi_embedding_fwd_kernel[(triton.cdiv(n, block_n), T)](
        meta, err, out, out.stride(0), n,
        COLS=META_COLS, VEC=vec, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )
    return err


def grad_layout(num_rows: Sequence[int], dims: Sequence[int], freq: Sequence[bool]) -> tuple[list[int], list[int], int]:
    """Where each table's gradient and counts live in the backward's flat fp32 buffer:
    (offset of table k's ``[V_k, D_k]`` block, offset of its ``[V_k]`` counts or -1, size).
    The gradient blocks come first and back to back, so they can be viewed per table."""
    goffs = _prefix([v * d for v, d in zip(num_rows, dims)])
    pos = sum(v * d for v, d in zip(num_rows, dims))
    cnts = []
    for v, f in zip(num_rows, freq):
        cnts.append(pos if f else -1)
        pos += v if f else 0
    return goffs, cnts, pos


@_meta.launches_on("grad_out")
def multi_embedding_bwd(
    grad_out: Tensor,
    indices: Sequence[Tensor],
    num_rows: Sequence[int],
    dims: Sequence[int],
    padding_idx: Sequence[int],
    freq: Sequence[bool],
    grad_flat: Tensor,
    columns: Sequence[int] | None = None,
) -> None:
    """Accumulate every table's gradient into one flat fp32 buffer: one launch, two with
    scale_grad_by_freq (the counts first).

    ``grad_flat[goff_k + idx * D_k + d] += grad_out[n, C_k + d] / count_k(idx)`` for every
    row n with ``idx = indices[k][n]`` in ``[0, V_k)`` and ``!= padding_idx[k]``; the layout
    is ``grad_layout(num_rows, dims, freq)``.

    Args:
        grad_out: ``[N, C]``, any float dtype, column stride 1, any row stride; table k
            reads its columns ``[C_k, C_k + D_k)``.
        indices: T tensors ``[N]``, int32 or int64, any stride. Out-of-range indices are
            skipped silently (the forward flagged them).
        num_rows, dims: V_k and D_k per table.
        padding_idx: the row of table k that gets no gradient, -1 for none.
        freq: per table, divide each row's gradient by its index's count in the batch.
        grad_flat: fp32 ``[size]`` contiguous (``grad_layout``'s size), zero on entry.
        columns: ``C_k`` per table; default back to back from 0 (``C = sum(D_k)``, a cat's
            gradient). A sum of lookups passes 0 for every table: each term's gradient is
            the whole ``[N, D]`` gradient of the sum, so every table reads the same columns.
    """
    T = len(indices)
    check(T >= 1 and len(num_rows) == len(dims) == len(padding_idx) == len(freq) == T,
           "need T indices, num_rows, dims, padding_idx and freq")
    n = grad_out.shape[0]
    dims = [int(d) for d in dims]
    cols = _prefix(dims) if columns is None else [int(c) for c in columns]
    width = sum(dims) if columns is None else max((c + d for c, d in zip(cols, dims)), default=0)
    check(len(cols) == T and all(c >= 0 for c in cols), "need T column offsets >= 0")
    check(grad_out.dim() == 2 and grad_out.shape[1] >= width and _col_stride_ok(grad_out),
           f"grad_out must be [N, >= {width}] with column stride 1, got {list(grad_out.shape)}")
    check(grad_out.dtype.is_floating_point, "grad_out must be floating point")
    goffs, cnts, size = grad_layout(num_rows, dims, freq)
    check(grad_flat.dtype == torch.float32 and grad_flat.dim() == 1 and grad_flat.shape[0] == size
           and (size <= 1 or grad_flat.stride(0) == 1), f"grad_flat must be contiguous fp32 [{size}]")
    _check_indices(indices, n)
    if n == 0 or sum(dims) == 0:
        return
    rows = [FIELDS.row(W_PTR=0, W_STRIDE=0, V=v, D=d, COL=c, I_PTR=pointer(i), I_STRIDE=i.stride(0),
                       I64=_meta.index_code(i), GOFF=g, PAD=p, CNT=f)
            for i, v, d, c, g, p, f in zip(indices, num_rows, dims, cols, goffs, padding_idx, cnts)]
    meta = _meta.pack(rows, grad_out.device)
    block_n, block_d, num_warps = block_sizes(max(dims), n, T)
    if grad_out.device.type == "cpu":
        block_n = _meta.interpreter_rows(n, block_d)
    grid = (triton.cdiv(n, block_n), T)
    if any(freq):
        _multi_embedding_count_kernel[grid](meta, grad_flat, n, COLS=META_COLS, BLOCK_N=block_n, num_warps=num_warps)
    vec = _meta.vec_width(grad_out.element_size(), [*dims, *cols, grad_out.stride(0)], [grad_out])
    vec = min(vec, _meta.vec_width(4, [*dims, *goffs], [grad_flat]))
    _multi_embedding_bwd_kernel[grid](
        meta, grad_out, grad_out.stride(0), grad_flat, n,
        COLS=META_COLS, VEC=vec, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )


def kernel_specs(tables: int) -> list[dict[str, Any]]:
    """What ``bench.kernel_compile`` compiles for this family: every kernel a model of
    ``tables`` tables can launch (fp32, int64-indexed variants at D=64 and D=4), with the
    signature Triton's offline compiler needs. The source does not depend on ``tables``."""
    specs = []
    for d in (64, 4):
        block_n, block_d, nw = block_sizes(d, 4096, tables)
        vec = 16 // 4 if d % 4 == 0 else 1
        common = {"COLS": META_COLS, "BLOCK_N": block_n}
        specs.append({"name": f"fwd_D{d}", "fn": _multi_embedding_fwd_kernel, "num_warps": nw,
                      "signature": {"meta_ptr": "*i64", "err_ptr": "*i32", "out_ptr": "*fp32",
                                    "out_row_stride": "i64", "N": "i64"},
                      "constexprs": {**common, "VEC": vec, "BLOCK_D": block_d}})
        specs.append({"name": f"bwd_D{d}", "fn": _multi_embedding_bwd_kernel, "num_warps": nw,
                      "signature": {"meta_ptr": "*i64", "go_ptr": "*fp32", "go_row_stride": "i64",
                                    "gw_ptr": "*fp32", "N": "i64"},
                      "constexprs": {**common, "VEC": vec, "BLOCK_D": block_d}})
    block_n, _, nw = block_sizes(64, 4096, tables)
    specs.append({"name": "count", "fn": _multi_embedding_count_kernel, "num_warps": nw,
                  "signature": {"meta_ptr": "*i64", "gw_ptr": "*fp32", "N": "i64"},
                  "constexprs": {"COLS": META_COLS, "BLOCK_N": block_n}})
    return specs


def kernel_variants() -> list[dict[str, Any]]:
    """Every kernel the CUDA launchers can pick, for ``bench.kernel_compile --variants``:
    each width class (BLOCK_D 1..128, wider tables loop over 128), each BLOCK_N the
    grid rule can shrink to, each float dtype and both VEC choices. ``block_sizes``
    itself picks the block sizes, at a row count that lands on each BLOCK_N."""
    specs = []
    for block_d in _meta.pow2_range(1, MAX_BLOCK_D):
        for block_n in _meta.pow2_range(MIN_BLOCK_N, block_sizes(block_d, 1 << 40, 1)[0]):
            _, _, nw = block_sizes(block_d, block_n * TARGET_PROGRAMS, 1)
            common = {"COLS": META_COLS, "BLOCK_N": block_n}
            tag = f"N{block_n}_D{block_d}"
            for dtype, ty in _meta.TRITON_TYPES.items():
                size = dtype.itemsize
                for vec in _meta.variant_vecs(block_d, size):
                    specs.append({"name": f"fwd_{tag}_{ty}_v{vec}", "fn": _multi_embedding_fwd_kernel, "num_warps": nw,
                                  "signature": {"meta_ptr": "*i64", "err_ptr": "*i32", "out_ptr": f"*{ty}",
                                                "out_row_stride": "i64", "N": "i64"},
                                  "constexprs": {**common, "VEC": vec, "BLOCK_D": block_d}})
                for vec in _meta.variant_vecs(block_d, size, grad_fp32=True):
                    specs.append({"name": f"bwd_{tag}_{ty}_v{vec}", "fn": _multi_embedding_bwd_kernel, "num_warps": nw,
                                  "signature": {"meta_ptr": "*i64", "go_ptr": f"*{ty}", "go_row_stride": "i64",
                                                "gw_ptr": "*fp32", "N": "i64"},
                                  "constexprs": {**common, "VEC": vec, "BLOCK_D": block_d}})
            if block_d == 1:  # the count kernel has no width: once per BLOCK_N and warps
                specs.append({"name": f"count_N{block_n}", "fn": _multi_embedding_count_kernel, "num_warps": nw,
                              "signature": {"meta_ptr": "*i64", "gw_ptr": "*fp32", "N": "i64"},
                              "constexprs": common})
    return specs
