"""One-hot column gather: ``F.linear(one_hot(idx), W, b)`` as ONE launch that reads
the weight's columns, and its backward as ONE atomic-add launch into them.

Forward, for F fields (field k: indices ``[N, bag_k]``, ``n_k`` classes, first column
``off_k`` of the ``[D, V]`` weight)::

    out[r, :] = sum_k sum_j W[:, off_k + idx_k[r, j]]  (+ b)        accumulated in fp32

which is ``F.linear(cat_k(one_hot(idx_k, n_k).sum(bag)), W, b)`` without the ``N x V``
one-hot or the ``N x V x D`` multiply-adds. Backward::

    gW[:, off_k + idx_k[r, j]] += grad[r, :]        gb += grad.sum(0)

One kernel source for any field count: each field's indices, bag, class count and
column offset are a row of a meta table (``_meta.py``), and a program loops over the
fields at run time (a sum over fields needs no atomics when one program owns an output
tile). The unrolled per-F kernels this replaces spilled at 100 fields.

The grid is 2-D, ``(cdiv(N, BLOCK_N), cdiv(D, BLOCK_D))``: a batch of one row with
D = 1024 still spreads over 8 programs, and indices are reloaded per column block
(a few bytes, from cache).

Layout: the weight is ``[D, V]`` (F.linear's ``[out_features, in_features]``) with any
strides. With nn.Linear's row-major ``[D, V]`` weight the column reads are ``V``
elements apart (one 32-byte sector per element); with a weight stored as ``[V, D]``
(``x @ W`` with ``W`` of shape ``[V, D]``) the column stride is 1 and reads coalesce.

Reference twins: ``lowering/one_hot_linear_ref.py``.
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

__all__ = [
    "LAUNCHES",
    "block_sizes",
    "flat_size",
    "grad_strides",
    "kernel_specs",
    "kernel_variants",
    "one_hot_linear_bwd",
    "one_hot_linear_fwd",
]

# Meta row of field k: its indices [N, bag] (address, strides, dtype), bag size, class
# count and first weight column.
FIELDS = _meta.MetaFields("I_PTR I_ROW_STRIDE I_BAG_STRIDE I64 BAG NCLS OFF")
I_PTR, I_ROW_STRIDE, I_BAG_STRIDE, I64, BAG, NCLS, OFF = FIELDS
FIELDS.check(globals())
META_COLS = FIELDS.cols
# Worst-case launches of the op: forward = gather + the index assert; backward = zero
# fill + atomic adds + one cast for a half-type weight.
LAUNCHES = (2, 3)

# Widest column block of one program.
MAX_BLOCK_D = 128
# Target elements of one [BLOCK_N, BLOCK_D] tile; BLOCK_N is clamped to this range.
TILE_ELEMS = 2048
MIN_BLOCK_N, MAX_BLOCK_N = 16, 128


@triton.jit
def _tile(N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's ``[BLOCK_N, BLOCK_D]`` tile: ``(o_n, o_d, m_n, m_d)``."""
    o_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    return o_n, o_d, o_n < N, o_d < D


@triton.jit
def _field(meta_ptr, f, o_n, COLS: tl.constexpr):
    """Field f's meta row: ``(i_addr, i64, n_cls, off, o_i, i_bag_stride, bag)``, with
    ``o_i`` the offsets of rows ``o_n`` in its index tensor. One call per field and program:
    cheap for the interpreter, where one per bag slot was not."""
    p_meta = meta_ptr + f * COLS
    return (tl.load(p_meta + I_PTR), tl.load(p_meta + I64), tl.load(p_meta + NCLS), tl.load(p_meta + OFF),
            o_n * tl.load(p_meta + I_ROW_STRIDE), tl.load(p_meta + I_BAG_STRIDE), tl.load(p_meta + BAG))


@triton.jit(do_not_specialize=["N", "D"])
def _one_hot_linear_fwd_kernel(
    meta_ptr,  # [F * META_COLS] int64 meta table, one row per field
    err_ptr,  # [2] int32 error flags; [0] set on an index outside [0, n_k)
    out_ptr,  # [N, D] output in the compute dtype, contiguous
    w_ptr,  # [D, V] weight, any float dtype, strides (w_stride_d, w_stride_v)
    w_stride_d,
    w_stride_v,
    b_ptr,  # [D] bias, the weight's dtype, stride b_stride; read only if HAS_BIAS
    b_stride,
    N,
    D,
    F,
    COLS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    o_n, o_d, m_n, m_d = _tile(N, D, BLOCK_N, BLOCK_D)
    cast_ty = out_ptr.dtype.element_ty
    p_w_d = w_ptr + o_d * w_stride_d
    b_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # While loops on run-time bounds (the field count, each field's bag).
    f = F * 0
    while f < F:
        i_addr, i64, n_cls, off, o_i, i_bag_stride, bag = _field(meta_ptr, f, o_n, COLS)
        j = bag * 0
        while j < bag:
            b_idx = load_index(i_addr, i64, o_i + j * i_bag_stride, m_n, 0)
            m_ok = m_n & (b_idx >= 0) & (b_idx < n_cls)
            b_col = b_idx + off
            # All writers store the same value: no atomic needed.
            tl.store(err_ptr + o_n * 0, 1, mask=m_n & ~m_ok)
            # int64 before the multiply: a column times its stride passes 2**31 on wide layers.
            b_w = tl.load(p_w_d[None, :] + (b_col * w_stride_v)[:, None],
                          mask=m_ok[:, None] & m_d[None, :], other=0.0)
            # Round to the compute dtype first, as autocast's cast of the weight would,
            # then accumulate in fp32 (a no-op pair when the weight already has it).
            b_acc += b_w.to(cast_ty).to(tl.float32)
            j += 1
        f += 1
    if HAS_BIAS:
        b_b = tl.load(b_ptr + o_d * b_stride, mask=m_d, other=0.0)
        b_acc += b_b.to(cast_ty).to(tl.float32)[None, :]
    # Every element of the tile is written, so the output never holds stale memory.
    p_out = out_ptr + o_n[:, None] * D + o_d[None, :]
    tl.store(p_out, b_acc.to(cast_ty), mask=m_n[:, None] & m_d[None, :])


@triton.jit(do_not_specialize=["N", "D"])
def _one_hot_linear_bwd_kernel(
    meta_ptr,  # [F * META_COLS] int64 meta table, one row per field
    go_ptr,  # [N, D] gradient of the output, any float dtype, row stride go_row_stride, column stride 1
    go_row_stride,
    gw_ptr,  # fp32 flat gradient, zero on entry: [D, V] with strides (gw_stride_d, gw_stride_v), then [D] bias
    gw_stride_d,
    gw_stride_v,
    gb_off,
    N,
    D,
    F,
    COLS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    o_n, o_d, m_n, m_d = _tile(N, D, BLOCK_N, BLOCK_D)
    p_go = go_ptr + o_n[:, None] * go_row_stride + o_d[None, :]
    b_g = tl.load(p_go, mask=m_n[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    p_gw_d = gw_ptr + o_d * gw_stride_d
    f = F * 0
    while f < F:
        i_addr, i64, n_cls, off, o_i, i_bag_stride, bag = _field(meta_ptr, f, o_n, COLS)
        j = bag * 0
        while j < bag:
            # Out-of-range slots are only masked: the forward already raised on them.
            b_idx = load_index(i_addr, i64, o_i + j * i_bag_stride, m_n, -1)
            m_ok = m_n & (b_idx >= 0) & (b_idx < n_cls)
            b_col = b_idx + off
            # Repeated indices collide, hence atomics; fp32 whatever the gradient's
            # dtype, and relaxed order because nothing reads the buffer before the end.
            tl.atomic_add(p_gw_d[None, :] + (b_col * gw_stride_v)[:, None], b_g,
                          mask=m_ok[:, None] & m_d[None, :], sem="relaxed")
            j += 1
        f += 1
    if HAS_BIAS:
        # One atomic per column and program: the bias gradient needs no second launch.
        tl.atomic_add(gw_ptr + gb_off + o_d, tl.sum(b_g, axis=0), mask=m_d, sem="relaxed")


def block_sizes(d: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps) for an output of width ``d``.

    BLOCK_D = min(next_pow2(d), 128) so a narrow layer does not pay for a wide tile;
    BLOCK_N makes the tile about 2048 elements (clamped to [16, 128]). Every element
    of a tile is an independent load from a random column (the gather has no reuse
    to stage in shared memory), so the tile is sized for loads in flight, and
    num_warps gives each thread about 16 of them, clamped to [4, 8]: narrow tiles on two
    warps spill a few bytes in ptxas (``python -m bench.kernel_compile --variants``).
    """
    block_d = min(triton.next_power_of_2(max(int(d), 1)), MAX_BLOCK_D)
    block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, TILE_ELEMS // block_d))
    num_warps = max(4, min(8, block_n * block_d // 16 // 32))
    return block_n, block_d, num_warps


def _check_fields(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int],
                  n: int, v: int) -> None:
    check(len(indices) >= 1 and len(num_classes) == len(offsets) == len(indices),
           "need one num_classes and one offset per index tensor, and a field")
    for k, (i, c, o) in enumerate(zip(indices, num_classes, offsets)):
        check(i.dim() == 2 and i.shape[0] == n, f"indices[{k}] must be [N={n}, bag], got {list(i.shape)}")
        check(i.dtype in _meta.INDEX_DTYPES, f"indices[{k}] must be int32/int64, got {i.dtype}")
        check(c >= 1 and 0 <= o and o + c <= v, f"field {k}: columns [{o}, {o + c}) not inside [0, {v})")


def _field_meta(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int],
                device: torch.device) -> Tensor:
    rows = [FIELDS.row(I_PTR=pointer(i), I_ROW_STRIDE=i.stride(0), I_BAG_STRIDE=i.stride(1),
                       I64=_meta.index_code(i), BAG=i.shape[1], NCLS=c, OFF=o)
            for i, c, o in zip(indices, num_classes, offsets)]
    return _meta.pack(rows, device)


@_meta.launches_on("out")
def one_hot_linear_fwd(
    indices: Sequence[Tensor],
    num_classes: Sequence[int],
    offsets: Sequence[int],
    weight: Tensor,
    bias: Tensor | None,
    out: Tensor,
) -> Tensor:
    """``out[r] = sum_k sum_j weight[:, offsets[k] + indices[k][r, j]] (+ bias)``, one launch.

    Args:
        indices: F tensors ``[N, bag_k]``, int32 or int64 (may differ per field), any strides.
        num_classes: ``n_k`` per field; an index outside ``[0, n_k)`` sets ``err``.
        offsets: the first weight column of each field (fields may interleave with
            columns no field reads: those belong to dense inputs).
        weight: ``[D, V]``, fp32/fp16/bf16, any strides (F.linear's layout).
        bias: ``[D]`` in the weight's dtype, any stride, or None.
        out: ``[N, D]`` contiguous, fp32/fp16/bf16: the compute dtype. Weight and bias
            elements are rounded to it before the fp32 sum (autocast's rounding).
            Fully written; a row with a bad index misses that slot's column.

    Returns:
        int32 ``[2]`` error flags: ``[0]`` becomes nonzero (asynchronously on CUDA) if any
        index was out of range.
    """
    check(weight.dim() == 2 and weight.dtype in _meta.FLOAT_DTYPES, "weight must be 2-D fp32/fp16/bf16")
    d, v = int(weight.shape[0]), int(weight.shape[1])
    n = out.shape[0]
    check(out.dim() == 2 and out.shape[1] == d and out.is_contiguous(),
           f"out must be contiguous [N, {d}], got {list(out.shape)}")
    check(out.dtype in _meta.FLOAT_DTYPES, f"unsupported out dtype {out.dtype}")
    check(bias is None or (bias.dim() == 1 and bias.shape[0] == d and bias.dtype == weight.dtype),
           f"bias must be [{d}] in the weight's dtype")
    _check_fields(indices, num_classes, offsets, n, v)
    meta = _field_meta(indices, num_classes, offsets, out.device)
    err = _meta.error_flags(meta)
    if n == 0 or d == 0:
        return err
    block_n, block_d, num_warps = block_sizes(d)
    if out.device.type == "cpu":
        block_n = _meta.interpreter_rows(n, block_d)
    grid = (triton.cdiv(n, block_n), triton.cdiv(d, block_d))
    _one_hot_linear_fwd_kernel[grid](
        meta, err, out, weight, weight.stride(0), weight.stride(1),
        # Without a bias the pointer is never read; the weight stands in.
        weight if bias is None else bias, 0 if bias is None else bias.stride(0),
        n, d, len(indices),
        COLS=META_COLS, HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )
    return err


def grad_strides(d: int, v: int, v_major: bool) -> tuple[int, int]:
    """Strides (d, v) of the weight gradient inside the flat buffer: ``[D, V]`` row-major,
    or, when ``v_major``, the transpose of a row-major ``[V, D]`` (the weight's own layout
    when it is stored as ``[V, D]``: its gradient then needs no transposing copy)."""
    return (1, d) if v_major else (v, 1)


@_meta.launches_on("grad_out")
def one_hot_linear_bwd(
    grad_out: Tensor,
    indices: Sequence[Tensor],
    num_classes: Sequence[int],
    offsets: Sequence[int],
    grad_flat: Tensor,
    *,
    num_columns: int,
    v_major: bool,
    has_bias: bool,
) -> None:
    """Accumulate the weight (and bias) gradient into one flat fp32 buffer, in one launch.

    ``gW[:, offsets[k] + indices[k][r, j]] += grad_out[r]`` for every in-range slot and
    ``gb += grad_out.sum(0)``, where ``gW`` is the ``[D, V]`` view of ``grad_flat[:D*V]``
    with ``grad_strides(D, V, v_major)`` and ``gb`` is ``grad_flat[D*V:]``.

    Args:
        grad_out: ``[N, D]``, any float dtype, column stride 1, any row stride.
        indices, num_classes, offsets: as in ``one_hot_linear_fwd``; out-of-range
            slots are skipped silently (the forward flagged them).
        grad_flat: fp32, contiguous, ``[D*V + (D if has_bias else 0)]``, zero on entry.
        num_columns: V.
        v_major: layout of the weight gradient (see ``grad_strides``).
        has_bias: also accumulate the bias gradient.
    """
    n, d, v = grad_out.shape[0], int(grad_out.shape[1]), int(num_columns)
    check(grad_out.dim() == 2 and (d <= 1 or grad_out.stride(1) == 1),
           f"grad_out must be [N, D] with column stride 1, got {list(grad_out.shape)}")
    check(grad_out.dtype.is_floating_point, "grad_out must be floating point")
    size = flat_size(d, v, has_bias)
    check(grad_flat.dtype == torch.float32 and grad_flat.dim() == 1 and grad_flat.shape[0] == size
           and grad_flat.is_contiguous(), f"grad_flat must be contiguous fp32 [{size}]")
    _check_fields(indices, num_classes, offsets, n, v)
    if n == 0 or d == 0:
        return
    meta = _field_meta(indices, num_classes, offsets, grad_out.device)
    block_n, block_d, num_warps = block_sizes(d)
    if grad_out.device.type == "cpu":
        block_n = _meta.interpreter_rows(n, block_d)
    sd, sv = grad_strides(d, v, v_major)
    grid = (triton.cdiv(n, block_n), triton.cdiv(d, block_d))
    _one_hot_linear_bwd_kernel[grid](
        meta, grad_out, grad_out.stride(0), grad_flat, sd, sv, d * v, n, d, len(indices),
        COLS=META_COLS, HAS_BIAS=has_bias, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )


def flat_size(d: Any, v: Any, has_bias: bool) -> Any:
    """Elements of the backward's flat buffer: the ``[D, V]`` weight gradient, then the bias's."""
    return d * v + (d if has_bias else 0)


def kernel_specs(fields: int) -> list[dict[str, Any]]:
    """What ``bench.kernel_compile`` compiles for this family (fp32, D=64 with a bias, and
    D=1024): the source does not depend on ``fields``, which only sets the loop's trip count."""
    specs = []
    for d in (64, 1024):
        block_n, block_d, nw = block_sizes(d)
        consts = {"COLS": META_COLS, "HAS_BIAS": True, "BLOCK_N": block_n, "BLOCK_D": block_d}
        specs.append({"name": f"fwd_D{d}", "fn": _one_hot_linear_fwd_kernel, "num_warps": nw,
                      "signature": {"meta_ptr": "*i64", "err_ptr": "*i32", "out_ptr": "*fp32", "w_ptr": "*fp32",
                                    "w_stride_d": "i64", "w_stride_v": "i64", "b_ptr": "*fp32", "b_stride": "i64",
                                    "N": "i64", "D": "i64", "F": "i32"},
                      "constexprs": consts})
        specs.append({"name": f"bwd_D{d}", "fn": _one_hot_linear_bwd_kernel, "num_warps": nw,
                      "signature": {"meta_ptr": "*i64", "go_ptr": "*fp32", "go_row_stride": "i64", "gw_ptr": "*fp32",
                                    "gw_stride_d": "i64", "gw_stride_v": "i64", "gb_off": "i64",
                                    "N": "i64", "D": "i64", "F": "i32"},
                      "constexprs": consts})
    return specs


def kernel_variants() -> list[dict[str, Any]]:
    """Every kernel the CUDA launchers can pick, for ``bench.kernel_compile --variants``:
    each width class (BLOCK_D 1..128), with and without a bias, each weight and compute
    dtype, and both weight layouts. A stride of 1 is a constexpr to Triton's launcher
    (it specializes integer arguments equal to 1), so ``[D, V]`` and ``[V, D]`` weights,
    and their gradients, compile apart."""
    specs = []
    for block_d in _meta.pow2_range(1, MAX_BLOCK_D):
        block_n, _, nw = block_sizes(block_d)
        for has_bias in (False, True):
            consts = {"COLS": META_COLS, "HAS_BIAS": has_bias, "BLOCK_N": block_n, "BLOCK_D": block_d}
            tag = f"D{block_d}" + ("_bias" if has_bias else "")
            bias = {"b_stride": 1} if has_bias else {}
            for unit in ("w_stride_v", "w_stride_d"):  # a [D, V] weight, or the transpose of [V, D]
                other = "w_stride_d" if unit == "w_stride_v" else "w_stride_v"
                # The output is the weight's dtype, or autocast's half type over an fp32 weight.
                for w_ty, o_ty in (("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp16"),
                                   ("fp32", "bf16")):
                    sig = {"meta_ptr": "*i64", "err_ptr": "*i32", "out_ptr": f"*{o_ty}", "w_ptr": f"*{w_ty}",
                           other: "i64", "b_ptr": f"*{w_ty}", "N": "i64", "D": "i64", "F": "i32"}
                    if not has_bias:
                        sig["b_stride"] = "i64"
                    specs.append({"name": f"fwd_{tag}_{unit}1_w{w_ty}_o{o_ty}", "fn": _one_hot_linear_fwd_kernel,
                                  "num_warps": nw, "signature": sig, "constexprs": {**consts, unit: 1, **bias}})
            for v_major in (False, True):
                unit, other = ("gw_stride_d", "gw_stride_v") if grad_strides(8, 8, v_major)[0] == 1 else ("gw_stride_v", "gw_stride_d")
                for g_ty in _meta.TRITON_TYPES.values():
                    specs.append({"name": f"bwd_{tag}_{unit}1_g{g_ty}", "fn": _one_hot_linear_bwd_kernel,
                                  "num_warps": nw,
                                  "signature": {"meta_ptr": "*i64", "go_ptr": f"*{g_ty}", "go_row_stride": "i64",
                                                "gw_ptr": "*fp32", other: "i64", "gb_off": "i64", "N": "i64",
                                                "D": "i64", "F": "i32"},
                                  "constexprs": {**consts, unit: 1}})
    return specs
