"""Pooled lookups (EmbeddingBag) as fused ops.

``torch.ops.inductor_embed.multi_embedding_bag``: T ``F.embedding_bag`` lookups + cat as one
table-batched op (FBGEMM's TBE, written for Inductor). Forward ``[B, sum D_k]`` in one
launch; backward one zero fill + one atomic-add launch (fp32) + one cast for half types,
packing the dense gradients into one flat buffer (split into per-table views for free) and
the per-index rows of ``sparse=True`` tables' COO gradients into another.

The forward is a ``triton_op`` layered like ``multi_embedding``: its body calls an opaque op,
on the CPU the ATen reference run eagerly (``multi_embedding_bag_cpu``: ``embedding_bag`` per
table; traced, its index reshapes would be one C++ kernel per table to compile), on CUDA the
launch of ``kernels/multi_embedding_bag.py``. The backward is an opaque op: ATen ops on
the CPU (``multi_embedding_bag_backward_cpu``), the kernels on CUDA.
The tied op (``tied_embedding_bag.py``) reuses this file's checks and segments.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from inductor_embed.lowering import _checks, _cpu_host, _cpu_native
from inductor_embed.lowering._common import (
    coalesce_sparse_grads,
    column_stride_1,
    first_order,
    twin_op,
    use_triton,
)
from inductor_embed.lowering.bag_backward_cpu import bag_grads_cpu
from inductor_embed.lowering.multi_embedding_bag_ref import (
    MAX,
    MEAN,
    bag_forward,
    multi_embedding_bag_backward_ref,
    multi_embedding_bag_ref,
    num_bags,
    per_sample_weights_grad,
    rows_in_bags,
)
from inductor_embed.lowering.multi_embedding_ref import coalesce_ref, shares_storage

_OOB_MSG = _checks.BAG_OOB
_OFFSETS_MSG = _checks.OFFSETS


def _segments(indices, offsets, psw, modes, padding_idx, ilo, dims, shared_out: bool):
    """The kernels' segments for these lookups (flat contiguous indices, columns)."""
    from inductor_embed.kernels.multi_embedding_bag import Segment

    segs, col, am_col = [], 0, 0
    for i, o, p, m, pad, last, d in zip(indices, offsets, psw, modes, padding_idx, ilo, dims):
        b = num_bags(i, o, last)
        # Indices and per-sample weights are read in place, whatever their strides (a [B, L]
        # slice of a [B, T, L] input costs no copy per table).
        segs.append(Segment(
            indices=i, num_bags=b, mode=m, offsets=None if o is None else o.contiguous(),
            per_sample_weights=p, padding_idx=pad, col=col if shared_out else 0, am_col=am_col if shared_out else 0))
        if shared_out:
            col += d
            am_col += d if m == MAX else 0
    return segs


def _raise_on_flags(err: Tensor) -> None:
    # Device-side, asynchronous and CUDA-graph safe, like eager's indexing assert.
    torch._assert_async(err[0] == 0, _OOB_MSG)
    torch._assert_async(err[1] == 0, _OFFSETS_MSG)


def _psw_list(per_sample_weights: list[Tensor], n: int) -> list[Tensor | None]:
    """The op's per_sample_weights argument as one optional tensor per table."""
    return _checks.psw_list(per_sample_weights, n)


def _no_grads(arg: list) -> list | None:
    """The gradient of a non-differentiable list argument, in the structure custom-op
    autograd expects: a list of None for a list of tensors, None for a list holding None."""
    return [None] * len(arg) if all(isinstance(a, Tensor) for a in arg) else None


def _arg_max_cols(weights, modes) -> int:
    return sum(w.shape[1] for w, m in zip(weights, modes) if m == MAX)


@triton_op("inductor_embed::multi_embedding_bag", mutates_args=())
def multi_embedding_bag(
    weights: list[Tensor],
    indices: list[Tensor],
    offsets: list[Tensor | None],
    per_sample_weights: list[Tensor],
    modes: list[int],
    padding_idx: list[int],
    include_last_offset: list[bool],
    sparse: list[bool],
) -> tuple[Tensor, Tensor]:
    """Pool T tables' bags and concatenate along the feature dimension.

    Args:
        weights: T tables ``[V_k, D_k]``, one float dtype, one device.
        indices: per table ``[nnz_k]`` (with offsets) or ``[B, L_k]`` (fixed bags), int32/int64.
        offsets: per table ``[B]`` / ``[B + 1]`` (include_last_offset), or None for 2-D indices.
        per_sample_weights: ``[]`` when no table has any; else per table a tensor like its
            indices (sum mode) or a 0-d placeholder for none. (A list of tensors, not
            ``Tensor?[]``: custom-op autograd returns gradients only into tensor lists.)
        modes: per table 0 sum, 1 mean, 2 max.
        padding_idx: per table the row left out of every bag, or -1.
        include_last_offset: per table, as in ``F.embedding_bag``.
        sparse: per table, whether its gradient is a sparse COO tensor (backward only).

    Returns:
        ``out [B, sum D_k]`` in the tables' dtype (an empty bag gives zeros), and
        ``arg_max [B, sum D_k over max tables]`` int64: the row each max-mode element came
        from (-1 for an empty bag), saved for the backward. Bad indices or offsets raise.
    """
    _checks.multi_embedding_bag(weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset,
                                sparse)
    if not use_triton(weights[0]):
        # One opaque call: traced, the reference's per-table index reshapes and offsets
        # would become one C++ kernel per table for Inductor to compile (seconds of a cold
        # compile: docs/design.md), for the same work ATen's embedding_bag does.
        # checked: the arguments' structure was checked just above (on fake tensors when
        # compiled, where Dynamo's guards then hold it), so the CPU body checks values only.
        # Where the native kernels are built, the op with its host side in C++ (_cpu_host).
        cpu = _cpu_host.op("multi_embedding_bag_cpu") if _cpu_native.lib() is not None else (
            torch.ops.inductor_embed.multi_embedding_bag_cpu)
        return cpu(weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset,
                   checked=True)
    out, arg_max, err = torch.ops.inductor_embed.multi_embedding_bag_triton(
        weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset)
    _raise_on_flags(err)
    return out, arg_max


@multi_embedding_bag.register_fake
def _multi_embedding_bag_fake(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                              include_last_offset, sparse):
    _checks.multi_embedding_bag(weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset,
                                sparse)
    b = num_bags(indices[0], offsets[0], include_last_offset[0])
    out = weights[0].new_empty((b, sum(w.shape[1] for w in weights)))
    return out, out.new_empty((b, _arg_max_cols(weights, modes)), dtype=torch.int64)


def _backward_sizes(num_rows, dims, indices, sparse) -> tuple[int, int]:
    dense = sum(v * d for v, d, s in zip(num_rows, dims, sparse) if not s)
    values = sum(i.numel() * d for i, d, s in zip(indices, dims, sparse) if s)
    return dense, values


@torch.library.custom_op("inductor_embed::multi_embedding_bag_backward", mutates_args=())
def multi_embedding_bag_backward(
    grad: Tensor, arg_max: Tensor,  # the forward's two outputs' gradient / second output
    indices: list[Tensor], offsets: list[Tensor | None], per_sample_weights: list[Tensor | None],
    num_rows: list[int], dims: list[int],  # the tables' shapes
    modes: list[int], padding_idx: list[int], include_last_offset: list[bool], sparse: list[bool],
) -> tuple[Tensor, Tensor]:
    """Every table's weight gradient: ``(dense, values)`` in grad's dtype.

    Args:
        grad: ``[B, sum D_k]``; arg_max: the forward's second output.
        The rest as in ``multi_embedding_bag``; num_rows/dims are V_k/D_k.

    Returns:
        ``dense [sum V_k * D_k over dense tables]``: their gradients row-major, back to back;
        ``values [sum nnz_k * D_k over sparse tables]``: each index's gradient row, the
        values of that table's COO gradient.

    An opaque op (an extern call under Inductor). GPU: one zero fill of the dense
    gradients (the kernel writes every row of the sparse values), one launch, one cast per
    output for half types. The CPU: ``bag_grads_cpu`` (bit-equal to eager's, deterministic;
    the autograd formula calls ``multi_embedding_bag_backward_cpu`` instead: one tensor per
    table). Deterministic mode on the GPU (checked when it runs): the ATen reference
    (``multi_embedding_bag_backward_ref``).
    """
    args = (grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, modes, padding_idx,
            include_last_offset, sparse)
    _checks.multi_embedding_bag_backward(*args, values=not use_triton(grad))
    if not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        if grad.device.type != "cpu":
            return multi_embedding_bag_backward_ref(*args)
        tables = bag_grads_cpu(*args)
        empty = grad.new_zeros((0,))
        dense = [t.reshape(-1) for t, sp in zip(tables, sparse) if not sp]
        return torch.cat(dense or [empty]), torch.cat([t for t, sp in zip(tables, sparse) if sp] or [empty])
    from inductor_embed.kernels.multi_embedding_bag import multi_embedding_bag_bwd

    n_dense, n_values = _backward_sizes(num_rows, dims, indices, sparse)
    # Two buffers, not views of one: a custom op's outputs may not alias each other.
    flat = torch.zeros(n_dense, dtype=torch.float32, device=grad.device)
    vals = torch.empty(n_values, dtype=torch.float32, device=grad.device)
    segs = _segments(indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset, dims, True)
    goffs, values, gpos, vpos = [], [], 0, 0
    for i, v, d, s in zip(indices, num_rows, dims, sparse):
        goffs.append(gpos if not s else 0)
        values.append(vals.narrow(0, vpos, i.numel() * d) if s else None)
        gpos += 0 if s else v * d
        vpos += i.numel() * d if s else 0
    am_list = [arg_max if m == MAX else None for m in modes]
    multi_embedding_bag_bwd([column_stride_1(grad)] * len(segs), segs, num_rows, dims, am_list, goffs, values, flat)
    if grad.dtype != torch.float32:
        flat, vals = flat.to(grad.dtype), vals.to(grad.dtype)
    return flat, vals


@multi_embedding_bag_backward.register_fake
def _multi_embedding_bag_backward_fake(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, *rest):
    _checks.multi_embedding_bag_backward(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, *rest)
    sparse = rest[-1]
    n_dense, n_values = _backward_sizes(num_rows, dims, indices, sparse)
    return grad.new_empty((n_dense,)), grad.new_empty((n_values,))


@twin_op("inductor_embed::multi_embedding_bag_backward_cpu", like="inductor_embed::multi_embedding_bag_backward",
         returns="Tensor[]", extra="bool coalesce=False, bool as_values=False, bool checked=False")
def multi_embedding_bag_backward_cpu(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, modes,
                                     padding_idx, include_last_offset, sparse, coalesce: bool = False,
                                     as_values: bool = False, checked: bool = False) -> list[Tensor]:
    """The CPU backward the autograd formula uses: per table its dense ``[V_k, D_k]``
    gradient (fp32: a reused buffer, ``_grad_cache``), or a sparse table's ``[V_k, D_k]``
    COO gradient (eager's own, one entry per position in a bag; with ``coalesce``,
    ``.coalesce()``-d), each its own tensor, in grad's dtype
    (``bag_grads_cpu``: bit-equal to eager's EmbeddingBag backward,
    deterministic). Arguments as in ``multi_embedding_bag_backward``, then ``coalesce``, and
    ``as_values``: a sparse table's COO values ``[nnz_k * D_k]`` instead (the tied op makes
    its COO gradient of them and the Embedding's rows). The sparse gradients are made here,
    from values no other op sees: a separate op (``coalesce_rows``) would have to copy them
    (its outputs may not share its inputs'). ``checked``: called by an autograd formula, whose
    arguments autograd keeps consistent with the forward's, checked there (the native kernel
    still checks every index): no checks here."""
    args = (grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, modes, padding_idx,
            include_last_offset, sparse)
    if not checked:
        _checks.multi_embedding_bag_backward(*args, values=True)
    tables = bag_grads_cpu(*args, reuse=not as_values)
    if as_values:
        return tables
    ilo = include_last_offset
    for k in (k for k, s in enumerate(sparse) if s):
        # Positions in no bag (past offsets[B]) take row V, which coalesce_ref leaves out.
        cut = offsets[k] is not None and ilo[k]
        rows = rows_in_bags(indices[k], offsets[k], ilo[k], num_rows[k])  # a copy unless a view of the input
        tables[k] = coalesce_ref(rows, tables[k].view(-1, dims[k]), num_rows[k], num_rows[k] if cut else -1, coalesce,
                                 owned=True, index_owned=not shares_storage(rows, indices[k]))
    return tables


@multi_embedding_bag_backward_cpu.register_fake
def _multi_embedding_bag_backward_cpu_fake(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims,
                                           modes, padding_idx, include_last_offset, sparse, coalesce=False,
                                           as_values=False, checked=False):
    _checks.multi_embedding_bag_backward(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, modes,
                                         padding_idx, include_last_offset, sparse)
    if as_values:
        return [grad.new_empty((i.numel() * d,)) if s else grad.new_empty((v, d))
                for i, v, d, s in zip(indices, num_rows, dims, sparse)]
    # A sparse gradient's nnz is data-dependent; its shape is its dense one.
    return [grad.new_empty((v, d), layout=torch.sparse_coo) if s else grad.new_empty((v, d))
            for v, d, s in zip(num_rows, dims, sparse)]


_cpu_host.define_fast("multi_embedding_bag_backward_cpu", "Tensor[]")


def _setup_context(ctx, inputs, output):
    weights, indices, offsets, psw_arg, modes, padding_idx, ilo, sparse = inputs
    psw = _psw_list(psw_arg, len(weights))
    ctx.has_psw_arg = bool(psw_arg)
    ctx.offsets_grads = _no_grads(offsets)
    ctx.psw_grad = [p is not None and p.requires_grad for p in psw]
    saved_w = [w if need else None for w, need in zip(weights, ctx.psw_grad)]
    ctx.n = len(weights)
    ctx.save_for_backward(output[1], *indices, *[o for o in offsets], *psw, *saved_w)
    ctx.num_rows = [w.shape[0] for w in weights]
    ctx.dims = [w.shape[1] for w in weights]
    ctx.modes, ctx.padding_idx, ctx.ilo, ctx.sparse = list(modes), list(padding_idx), list(ilo), list(sparse)


def _backward(ctx, grad, _grad_arg_max):
    n = ctx.n
    saved = list(ctx.saved_tensors)
    arg_max, indices = saved[0], saved[1:1 + n]
    offsets, psw, weights = saved[1 + n:1 + 2 * n], saved[1 + 2 * n:1 + 3 * n], saved[1 + 3 * n:]
    args = (grad, arg_max, indices, offsets, psw, ctx.num_rows, ctx.dims, ctx.modes, ctx.padding_idx, ctx.ilo,
            ctx.sparse)
    cpu = not use_triton(grad)
    if cpu:
        # The CPU: one tensor per table (a 26 x 100,000 x 64 packed buffer cost fresh pages
        # every step; see embedding_grads_cpu), sparse ones made sparse there.
        # Where the native kernels are built, the op with its host side in C++ (_cpu_host).
        op = _cpu_host.op("multi_embedding_bag_backward_cpu") if _cpu_native.lib() is not None else (
            torch.ops.inductor_embed.multi_embedding_bag_backward_cpu)
        tables = op(*args, coalesce_sparse_grads(grad), checked=True)
    else:
        dense, values = torch.ops.inductor_embed.multi_embedding_bag_backward(*args)
        tables, dpos, vpos = [], 0, 0
        for i, v, d, sp in zip(indices, ctx.num_rows, ctx.dims, ctx.sparse):
            size = i.numel() * d if sp else v * d
            tables.append((values if sp else dense).narrow(0, vpos if sp else dpos, size))
            vpos, dpos = (vpos + size, dpos) if sp else (vpos, dpos + size)
    # Sparse tables: eager's gradient has one entry per index; the op's is coalesced (one
    # sort and one segment sum for all of them, ``coalesce_rows``).
    sp = [k for k in range(n) if ctx.sparse[k] and not cpu]
    # Positions in no bag (past offsets[B]) take row V, which coalesce_rows leaves out.
    coalesced = dict(zip(sp, torch.ops.inductor_embed.coalesce_rows(
        [rows_in_bags(indices[k], offsets[k], ctx.ilo[k], ctx.num_rows[k]) for k in sp],
        [tables[k].view(-1, ctx.dims[k]) for k in sp], [ctx.num_rows[k] for k in sp],
        [ctx.num_rows[k] for k in sp], coalesce_sparse_grads(grad)))) if sp else {}
    grads, psw_grads = [], []
    col = 0
    for k, (i, v, d) in enumerate(zip(indices, ctx.num_rows, ctx.dims)):
        grads.append(coalesced[k] if k in coalesced else tables[k] if ctx.sparse[k] else tables[k].view(v, d))
        psw_grads.append(per_sample_weights_grad(grad[:, col:col + d], weights[k], i, offsets[k], ctx.padding_idx[k],
                                                 ctx.ilo[k]).to(psw[k].dtype).reshape(psw[k].shape) if ctx.psw_grad[k] else None)
        col += d
    return grads, [None] * n, ctx.offsets_grads, psw_grads if ctx.has_psw_arg else [], None, None, None, None


multi_embedding_bag.register_autograd(first_order(_backward), setup_context=_setup_context)


@twin_op("inductor_embed::multi_embedding_bag_cpu", like="inductor_embed::multi_embedding_bag",
         returns="(Tensor, Tensor)", drop=("sparse",), extra="bool checked=False")
def multi_embedding_bag_cpu(weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset,
                            checked: bool = False):
    """The CPU forward of ``multi_embedding_bag``, run eagerly: ``(out, arg_max)``, after the
    op's checks: bad input raises eager's errors, and decreasing offsets raise (as on the
    kernel path). fp32 tables go to ``_cpu_native``'s forward, all in one call that also
    checks every table's offsets and indices (its results are ATen's, bit for bit: see
    ``_native_tables``); the rest take ATen's ``embedding_bag`` per table
    (``_sum_bags`` / ``multi_embedding_bag_ref``). Why native: one call for every table where
    ATen makes one per table (a small batch's step was mostly their host cost), and ATen's
    max mode is a serial loop of one element at a time (docs/patterns.md, max-mode bags).
    ``checked``: the caller (the public op's body) has just checked the arguments'
    structure, so only their values (offsets, indices) are checked here."""
    if checked:  # the public op checked the structure (``_checks.multi_embedding_bag``) already
        psw = _checks.psw_list(per_sample_weights, len(weights))
    else:
        psw = _checks.multi_embedding_bag(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                          include_last_offset)
    native = _native_tables(weights, indices, psw, padding_idx)
    if all(f is None for f in native):
        _checks.bags_values("multi_embedding_bag", [w.shape[0] for w in weights], indices, offsets,
                            include_last_offset)
        if MAX not in modes:
            return _sum_bags(weights, indices, offsets, psw, modes, padding_idx, include_last_offset)
        return multi_embedding_bag_ref(weights, indices, offsets, psw, modes, padding_idx, include_last_offset)
    b = num_bags(indices[0], offsets[0], include_last_offset[0])
    out = weights[0].new_empty((b, sum(w.shape[1] for w in weights)))
    arg_max = torch.empty((b, _arg_max_cols(weights, modes)), dtype=torch.int64)
    jobs, keep, col, am = [], [], 0, 0  # keep: ATen's tables, (k, col, am)
    for k, (w, i, o, p, m, pad, ilo, fma) in enumerate(zip(weights, indices, offsets, psw, modes, padding_idx,
                                                            include_last_offset, native)):
        d = w.shape[1]
        if fma is not None:
            if o is not None and not o.is_contiguous():
                o = o.contiguous()
            if p is not None:  # by position: [B, L] bags' weights flattened
                p = p.reshape(-1).contiguous()
            jobs.append(_cpu_native.PoolTable(w, i, o, ilo, pad, out, arg_max if m == MAX else None, p, m == MEAN,
                                              fma, col, am))
        else:
            keep.append((k, col, am))
        col += d
        am += d if m == MAX else 0
    bad = _cpu_native.bag_forward(jobs)
    if bad is not None:  # raises that table's error (the same checks, in Python)
        k = [k for k, f in enumerate(native) if f is not None][bad]
        _checks.bag_values("multi_embedding_bag", k, indices[k], offsets[k], weights[k].shape[0],
                           include_last_offset[k])
        raise AssertionError(f"the native check and _checks.bag_values disagree on table {k}")
    if keep:
        ks = [k for k, _, _ in keep]
        _checks.bags_values("multi_embedding_bag", [weights[k].shape[0] for k in ks], [indices[k] for k in ks],
                            [offsets[k] for k in ks], [include_last_offset[k] for k in ks])
    for k, col, am in keep:
        d = weights[k].shape[1]
        got, got_am = bag_forward(weights[k], indices[k], offsets[k], psw[k], modes[k], padding_idx[k],
                                  include_last_offset[k])
        out[:, col:col + d] = got
        if modes[k] == MAX:
            arg_max[:, am:am + d] = got_am
    return out, arg_max


def _native_tables(weights, indices, psw, padding_idx) -> list[bool | None]:
    """Per table, None where ATen's ``embedding_bag`` runs it, else whether the native forward
    adds its weighted terms by a fused multiply-add: fp32 rows of unit column stride, not
    ``[B, 0]`` input (ATen raises for it, as eager does), and, for a weighted table, fp32
    weights, contiguous rows and ATen's arithmetic for its kind known
    (``_cpu_native.weighted_fma``, probed once per kind: ATen's fused path needs no padding row
    and weights of unit stride as ``F.embedding_bag`` hands them over, flattened)."""
    if _cpu_native.lib() is None:
        return [None] * len(weights)
    out: list[bool | None] = []
    for w, i, p, pad in zip(weights, indices, psw, padding_idx):
        # Unweighted rows may be strided: ATen's two paths make the same additions for them.
        ok = (w.dtype == torch.float32 and w.stride(1) == 1 and (i.dim() == 1 or i.shape[1] > 0)
              and (p is None or (p.dtype == torch.float32 and w.is_contiguous())))
        fma = _cpu_native.weighted_fma(pad >= 0, p.reshape(-1).stride(0) != 1) if ok and p is not None else False
        out.append(fma if ok else None)
    return out


def _sum_bags(weights, indices, offsets, psw, modes, padding_idx, include_last_offset) -> tuple[Tensor, Tensor]:
    """``multi_embedding_bag_ref`` of sum and mean tables: ATen's ``embedding_bag`` per table,
    called directly in its common forms (1-D indices with offsets of their dtype and no
    include_last_offset; fixed ``[B, L]`` bags flattened, one offsets tensor shared by the
    tables of one shape; ``bag_forward`` otherwise), then one cat. ``bag_forward``'s general
    handling cost a few microseconds a table, most of a small batch's step."""
    outs = []
    fixed: dict[tuple, Tensor] = {}  # (B, L, dtype): the offsets of fixed bags
    for w, i, o, p, m, pad, ilo in zip(weights, indices, offsets, psw, modes, padding_idx, include_last_offset):
        if o is None and i.dim() == 2 and i.shape[1] > 0:  # as F.embedding_bag rewrites [B, L]
            b, length = i.shape
            o = fixed.get((b, length, i.dtype))
            if o is None:
                o = fixed[(b, length, i.dtype)] = torch.arange(0, b * length, length, dtype=i.dtype)
            i, p = i.reshape(-1), None if p is None else p.reshape(-1)
        if o is None or ilo or o.dtype != i.dtype:
            outs.append(bag_forward(w, i, o, p, m, pad, ilo)[0])
        else:
            outs.append(torch.embedding_bag(w, i, o, False, m, False, p, False, None if pad < 0 else pad)[0])
    out = torch.cat(outs, dim=1)
    return out, out.new_empty((out.shape[0], 0), dtype=torch.int64)


@multi_embedding_bag_cpu.register_fake
def _multi_embedding_bag_cpu_fake(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                  include_last_offset, checked=False):
    _checks.multi_embedding_bag(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                include_last_offset)
    b = num_bags(indices[0], offsets[0], include_last_offset[0])
    out = weights[0].new_empty((b, sum(w.shape[1] for w in weights)))
    return out, out.new_empty((b, _arg_max_cols(weights, modes)), dtype=torch.int64)


_cpu_host.define_fast("multi_embedding_bag_cpu", "(Tensor, Tensor)")


# --- the Triton launches, as opaque ops (see lowering/multi_embedding.py for why) ----------------


@twin_op("inductor_embed::multi_embedding_bag_triton", like="inductor_embed::multi_embedding_bag",
         returns="(Tensor, Tensor, Tensor)", drop=("sparse",))
def multi_embedding_bag_triton(weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset):
    """The Triton forward of ``multi_embedding_bag``: ``(out, arg_max, err int32 [2])``, one launch."""
    from inductor_embed.kernels.multi_embedding_bag import multi_embedding_bag_fwd

    psw = _checks.multi_embedding_bag(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                      include_last_offset)  # the kernel flags bad values
    dims = [w.shape[1] for w in weights]
    b = num_bags(indices[0], offsets[0], include_last_offset[0])
    out = weights[0].new_empty((b, sum(dims)))
    arg_max = out.new_empty((b, _arg_max_cols(weights, modes)), dtype=torch.int64)
    segs = _segments(indices, offsets, psw, modes, padding_idx, include_last_offset, dims, True)
    err = multi_embedding_bag_fwd([column_stride_1(w) for w in weights], segs, [out] * len(segs),
                         [arg_max if m == MAX else None for m in modes])
    return out, arg_max, err


@multi_embedding_bag_triton.register_fake
def _multi_embedding_bag_triton_fake(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                     include_last_offset):
    out, am = _multi_embedding_bag_cpu_fake(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                            include_last_offset)
    return out, am, out.new_empty((2,), dtype=torch.int32)
