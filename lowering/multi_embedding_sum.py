"""``torch.ops.inductor_embed.multi_embedding_sum``: the sum of T embedding lookups as one op.

Forward: ``[V_k, D] x T tables, T indices broadcastable to [*L] -> [*L, D]``, the lookups
added left to right (BERT's word + position + token type, GPT's wte + wpe, a graph atom
encoder's one lookup per feature column).
Backward: the gradient of every term is the gradient of the sum, so every table reads the
same ``[*L, D]`` gradient (column offset 0 in the multi-table backward's meta table).

The forward is a ``triton_op`` whose body is the ATen reference on every device: Inductor
traces through it and fuses the gathers into the adds and whatever follows (a LayerNorm),
which a separate gather kernel writing ``[*L, D]`` to memory could only lose to.
The backward is where fusing pays:
- GPU: one opaque op, ``multi_embedding_sum_backward``: one zero fill, ONE launch of the
  multi-table atomic-add kernel (``kernels/multi_embedding.py``) for every table, one cast
  for half types. A broadcast index (``[S]`` position ids against ``[B, S]``) is expanded to
  ``[*L]`` first: the scatter over the expanded indices adds up the same rows eager's
  reduction over the broadcast dims does.
- CPU: per group of tables with one index shape, the gradient reduced first over the dims
  those indices broadcast along (as eager reduces it), then ``multi_embedding``'s CPU
  backward at column offset 0 (``_cpu_backward``'s rule: fp32 tables the native kernel at
  any width, other tables of 64 or more columns and a lone table ATen's row adds in the same
  opaque op, narrower ones Inductor's scatter loop).
"""

from __future__ import annotations

import math

import torch
from torch.library import triton_op

from inductor_embed import _compat
from inductor_embed.lowering import _checks
from inductor_embed.lowering._common import column_stride_1, first_order, twin_op, use_triton
from inductor_embed.lowering.multi_embedding import (
    _OOB_MSG,
    _cpu_backward,
    _first_positions,
    _sparse_grads,
)
from inductor_embed.lowering.multi_embedding_ref import (
    multi_embedding_sum_backward_ref,
    multi_embedding_sum_ref,
)


@triton_op("inductor_embed::multi_embedding_sum", mutates_args=())
def multi_embedding_sum(
    weights: list[torch.Tensor],
    indices: list[torch.Tensor],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
    sparse: list[bool] | None = None,
) -> torch.Tensor:
    """Gather T tables of one width and add the rows, left to right.

    Args:
        weights: T tables [V_k, D], one float dtype, one device, one D.
        indices: T index tensors whose shapes broadcast to [*L], int32 or int64.
        padding_idx: per table, the row that gets no gradient, or -1 (backward only).
        scale_grad_by_freq: per table, scale gradients by 1/count of the index in its own
            (unbroadcast) index tensor, as eager does (backward only).
        sparse: per table, a coalesced sparse COO gradient instead of a dense one (as in
            ``multi_embedding``); None: none.

    Returns:
        [*L, D] in the tables' dtype; an index outside [0, V_k) raises.
    """
    _checks.multi_embedding_sum(weights, indices, padding_idx, scale_grad_by_freq, sparse)
    if _compat.INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES:
        # Inductor < 2.13 lowers embedding with Python-style negative wrapping, so the
        # compiled reference would read row V-1 for -1 where eager raises.
        for i in indices:
            torch._assert_async((i >= 0).all(), _OOB_MSG)
    return multi_embedding_sum_ref(weights, indices)


@multi_embedding_sum.register_fake
def _multi_embedding_sum_fake(weights, indices, padding_idx, scale_grad_by_freq, sparse=None):
    lead = _checks.multi_embedding_sum(weights, indices, padding_idx, scale_grad_by_freq, sparse)
    return weights[0].new_empty((*lead, weights[0].shape[1]))


@twin_op("inductor_embed::multi_embedding_sum_backward", like="inductor_embed::multi_embedding_backward",
         returns="Tensor")
def multi_embedding_sum_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq) -> torch.Tensor:
    """Every table's dense gradient of the sum, packed into one flat buffer.

    Args:
        grad: [*L, D], the gradient of the sum.
        indices: T index tensors broadcastable to [*L].
        num_rows, dims: V_k and D (one D) per table.
        padding_idx, scale_grad_by_freq: as in ``multi_embedding_sum``.

    Returns:
        [sum(V_k * D)] in grad's dtype, table k row-major at offset sum(V_j * D, j < k).

    GPU: one zero fill, one atomic-add launch for all tables (after a counting launch with
    scale_grad_by_freq), one cast for half types; a copy per broadcast index tensor
    (expanded to [*L], N int64s). CPU and deterministic mode: the deterministic ATen
    reference (``multi_embedding_sum_backward_ref``).
    """
    _checks.multi_embedding_sum_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq,
                                         values=not use_triton(grad))
    if not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        return multi_embedding_sum_backward_ref(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
    from inductor_embed.kernels.multi_embedding import grad_layout, multi_embedding_bwd

    lead = grad.shape[:-1]
    n = math.prod(lead)
    g2 = column_stride_1(grad.reshape(n, grad.shape[-1]))
    # The kernel reads one index per gradient row: a broadcast index becomes a copy of N.
    flat_idx = [i.expand(lead).reshape(-1) for i in indices]
    goffs, _, size = grad_layout(num_rows, dims, scale_grad_by_freq)
    flat = torch.zeros(size, dtype=torch.float32, device=grad.device)
    multi_embedding_bwd(g2, flat_idx, num_rows, dims, padding_idx, scale_grad_by_freq, flat,
                        columns=[0] * len(indices))
    for k, (i, v, d, s) in enumerate(zip(indices, num_rows, dims, scale_grad_by_freq)):
        repeats = n // max(i.numel(), 1)
        if s and repeats > 1:
            # The kernel counted every index once per broadcast copy, eager counts it in the
            # unbroadcast tensor: each of the table's rows was divided by `repeats` too often.
            flat.narrow(0, goffs[k], v * d).mul_(repeats)
    dense = flat.narrow(0, 0, sum(v * d for v, d in zip(num_rows, dims)))
    return dense if grad.dtype == torch.float32 else dense.to(grad.dtype)


@multi_embedding_sum_backward.register_fake
def _multi_embedding_sum_backward_fake(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq):
    _checks.multi_embedding_sum_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
    return grad.new_empty((sum(v * d for v, d in zip(num_rows, dims)),))




def _cpu_backward_sum(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq) -> list[torch.Tensor]:
    """Per-table ``[V_k, D]`` gradients on the CPU: the tables whose indices share a shape
    share one gradient (grad reduced over the dims those indices broadcast along, as eager
    reduces it) and go through ``_cpu_backward`` together, every table at column 0."""
    groups: list[tuple[torch.Size, list[int]]] = []
    for k, i in enumerate(indices):
        for shape, ks in groups:
            if len(shape) == i.dim() and shape == i.shape:
                ks.append(k)
                break
        else:
            groups.append((i.shape, [k]))
    grads: list[torch.Tensor | None] = [None] * len(indices)
    for shape, ks in groups:
        g = grad if tuple(shape) == tuple(grad.shape[:-1]) else grad.sum_to_size(*shape, grad.shape[-1])
        pick = lambda xs, ks=ks: [xs[k] for k in ks]  # noqa: E731
        sub = _cpu_backward(g, pick(indices), pick(num_rows), pick(dims), pick(padding_idx),
                            pick(scale_grad_by_freq), columns=[0] * len(ks))
        for k, gk in zip(ks, sub):
            grads[k] = gk
    return grads


def _setup_context(ctx, inputs, output):
    weights, indices, padding_idx, scale_grad_by_freq, *rest = inputs
    ctx.save_for_backward(*indices)
    ctx.num_rows = [w.shape[0] for w in weights]
    ctx.dims = [w.shape[1] for w in weights]
    ctx.padding_idx = list(padding_idx)
    ctx.scale_grad_by_freq = list(scale_grad_by_freq)
    ctx.sparse = list(rest[0]) if rest and rest[0] is not None else [False] * len(weights)
    ctx.first = _first_positions(weights)
    ctx.lead = tuple(output.shape[:-1])


def _backward(ctx, grad):
    indices = list(ctx.saved_tensors)
    t = len(indices)
    grads: list[torch.Tensor | None] = [None] * t
    dense = [k for k in range(t) if not ctx.sparse[k]]
    sparse = [k for k in range(t) if ctx.sparse[k]]
    if sparse:
        # Every term's gradient is the whole [*L, D] gradient; a broadcast term's indices,
        # expanded to L, scatter it (summing over the broadcast dims as eager's add does).
        got = _sparse_grads(grad, [indices[k].expand(ctx.lead) for k in sparse], [ctx.num_rows[k] for k in sparse],
                            [ctx.dims[k] for k in sparse], [ctx.padding_idx[k] for k in sparse], [0] * len(sparse),
                            [ctx.first[k] for k in sparse])
        for k, g in zip(sparse, got):
            grads[k] = g
    if dense:
        pick = lambda xs: [xs[k] for k in dense]  # noqa: E731
        args = (grad, pick(indices), pick(ctx.num_rows), pick(ctx.dims), pick(ctx.padding_idx),
                pick(ctx.scale_grad_by_freq))
        if not use_triton(grad):
            got = _cpu_backward_sum(*args)
        else:
            # One flat buffer (one zero fill and one launch on the GPU), viewed per table for free.
            flat = torch.ops.inductor_embed.multi_embedding_sum_backward(*args)
            got, offset = [], 0
            for v, d in zip(pick(ctx.num_rows), pick(ctx.dims)):
                got.append(flat.narrow(0, offset, v * d).view(v, d))
                offset += v * d
        for k, g in zip(dense, got):
            grads[k] = g
    # One entry per argument the call gave (see multi_embedding's _backward).
    return (grads, [None] * t, None, None, None)[:len(ctx.needs_input_grad)]


multi_embedding_sum.register_autograd(first_order(_backward), setup_context=_setup_context)
