"""``torch.ops.inductor_embed.tied_embedding_bag``: an ``F.embedding`` and an
``F.embedding_bag`` reading one weight as one op.

One launch reads the weight for both lookups, one backward writes one gradient (the sum of
both contributions, or the two parts when the bag reads a second tensor over the same
memory). With ``sparse``, a lookup's part is a coalesced sparse COO gradient, as eager's
``sparse=True`` gives it after ``.coalesce()`` (``_sparse_backward``). Layered like
``multi_embedding_bag`` (whose argument checks, kernel segments and error flags it
reuses): the forward is a ``triton_op`` whose CPU body Inductor compiles
(``F.embedding`` + the bag op's opaque CPU body, ``multi_embedding_bag_cpu``); on CUDA it calls ``tied_embedding_bag_triton``, which
launches ``kernels/multi_embedding_bag.py`` with the Embedding as a second segment. The backward is
an opaque op: eager ATen on the CPU and in deterministic mode, the kernels on CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from inductor_embed import _compat
from inductor_embed.lowering import _checks, _cpu_native, _grad_cache
from inductor_embed.lowering._common import (
    coalesce_sparse_grads,
    column_stride_1,
    first_order,
    twin_op,
    use_triton,
)
from inductor_embed.lowering.bag_backward_cpu import bag_weight_grad_cpu
from inductor_embed.lowering.embedding_backward_cpu import index_add_backward
from inductor_embed.lowering.multi_embedding_bag import (
    _OOB_MSG,
    _raise_on_flags,
    _segments,
)
from inductor_embed.lowering.multi_embedding_bag_ref import (
    MAX,
    bag_forward,
    bag_weight_grad_ref,
    num_bags,
    per_sample_weights_grad,
    rows_in_bags,
)


@triton_op("inductor_embed::tied_embedding_bag", mutates_args=())
def tied_embedding_bag(
    weight: Tensor,
    bag_weight: Tensor | None,
    emb_indices: Tensor,
    bag_indices: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    mode: int,
    emb_padding_idx: int,
    bag_padding_idx: int,
    include_last_offset: bool,
    sparse: list[bool] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``F.embedding(emb_indices, weight)`` and ``F.embedding_bag(bag_indices, weight, offsets, ...)``
    in one launch.

    Args:
        weight: ``[V, D]`` fp32/fp16/bf16.
        bag_weight: None when the bag reads ``weight`` itself; else a second tensor over the
            same memory (``EmbeddingBag.from_pretrained(emb.weight)``), which gets its own
            gradient (the bag's part) while ``weight`` gets the Embedding's part.
        emb_indices: ``[*L]`` int32/int64.
        bag_indices, offsets, per_sample_weights, mode, include_last_offset: the bag lookup,
            as in ``multi_embedding_bag`` (one table).
        emb_padding_idx: the Embedding's padding row (no gradient; still gathered), or -1.
        bag_padding_idx: the EmbeddingBag's padding row (left out of the bags), or -1.
        sparse: ``[embedding, bag]``, whether that lookup's part of the gradient is sparse
            (backward only; None: both dense). Each sparse part is a coalesced ``[V, D]`` COO
            tensor. One weight read by a sparse and a dense lookup gets one dense gradient (as
            eager accumulates them); one read by two sparse lookups one COO gradient over both.
            A sparse bag takes no max mode and no padding_idx.

    Returns:
        ``(emb_out [*L, D], bag_out [B, D], arg_max [B, D or 0] int64)``.
    """
    _checks.tied_embedding_bag(weight, bag_weight, emb_indices, bag_indices, offsets, per_sample_weights, mode,
                               emb_padding_idx, bag_padding_idx, include_last_offset, sparse)
    if not use_triton(weight):
        if _compat.INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES:
            torch._assert_async((emb_indices >= 0).all(), _OOB_MSG)
        emb = torch.nn.functional.embedding(emb_indices, weight)
        if offsets is None:
            # Fixed-size bags ([B, L] indices): nothing to read on the host, and ATen's
            # embedding_bag (an extern call for Inductor) raises on a bad index as eager
            # does. Traced, so no opaque-op call: cpu-quick's tied row at B=512 was 0.91x
            # torch.compile through the opaque op (its dispatch and checks, ~0.3 ms a step).
            bag, arg_max = bag_forward(weight, bag_indices, None, per_sample_weights, mode, bag_padding_idx,
                                       include_last_offset)
            return emb, bag, arg_max
        # 1-D indices with offsets: the bag op's CPU body (opaque, run eagerly): its checks
        # read offsets and indices on the host (decreasing offsets raise in every mode), and
        # it cuts indices past offsets[B] (include_last_offset) as the backward reads them.
        bag, arg_max = torch.ops.inductor_embed.multi_embedding_bag_cpu(
            [weight], [bag_indices], [offsets], [] if per_sample_weights is None else [per_sample_weights], [mode],
            [bag_padding_idx], [include_last_offset])
        return emb, bag, arg_max
    emb, bag, arg_max, err = torch.ops.inductor_embed.tied_embedding_bag_triton(
        weight, emb_indices, bag_indices, offsets, per_sample_weights, mode, emb_padding_idx, bag_padding_idx,
        include_last_offset)
    _raise_on_flags(err)
    return emb, bag, arg_max


@tied_embedding_bag.register_fake
def _tied_embedding_bag_fake(weight, bag_weight, emb_indices, bag_indices, offsets, per_sample_weights, mode,
                             emb_padding_idx, bag_padding_idx, include_last_offset, sparse=None):
    _checks.tied_embedding_bag(weight, bag_weight, emb_indices, bag_indices, offsets, per_sample_weights, mode,
                               emb_padding_idx, bag_padding_idx, include_last_offset, sparse)
    d = weight.shape[1]
    b = num_bags(bag_indices, offsets, include_last_offset)
    return (weight.new_empty((*emb_indices.shape, d)), weight.new_empty((b, d)),
            weight.new_empty((b, d if mode == MAX else 0), dtype=torch.int64))


def _tied_segments(emb_indices, bag_indices, offsets, psw, mode, emb_pad, bag_pad, ilo):
    from inductor_embed.kernels.multi_embedding_bag import Segment

    flat = emb_indices.reshape(-1)  # a view unless the lookup's indices cannot be flattened in place
    # The Embedding lookup: fixed bags of one index, summed; its padding row is gathered
    # in the forward and only left out of the gradient.
    emb = Segment(indices=flat, num_bags=flat.shape[0], padding_idx=emb_pad, forward_padding=False)
    bag = _segments([bag_indices], [offsets], [psw], [mode], [bag_pad], [ilo], [0], False)[0]
    return [emb, bag]


@torch.library.custom_op("inductor_embed::tied_embedding_bag_backward", mutates_args=())
def tied_embedding_bag_backward(
    grad_emb: Tensor,
    grad_bag: Tensor,
    arg_max: Tensor,
    emb_indices: Tensor,
    bag_indices: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    num_rows: int,
    mode: int,
    emb_padding_idx: int,
    bag_padding_idx: int,
    include_last_offset: bool,
    separate: bool,
) -> Tensor:
    """The weight's gradient (grad's dtype): ``[V, D]``, both lookups' contributions summed;
    with ``separate`` ``[2, V, D]``, the Embedding's part then the bag's.

    An opaque op (an extern call under Inductor). GPU: one zero fill, one atomic-add
    launch over both lookups, one cast for half types. CPU: ``_tied_backward_cpu``, bit-equal
    to eager, deterministic. Deterministic mode on the GPU (checked when it runs): the ATen
    reference ``_tied_backward_ref``."""
    args = (grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, per_sample_weights, num_rows, mode,
            emb_padding_idx, bag_padding_idx, include_last_offset, separate)
    _checks.tied_embedding_bag_backward(*args, values=not use_triton(grad_bag))
    if not use_triton(grad_bag) or torch.are_deterministic_algorithms_enabled():
        return _tied_backward_cpu(*args) if grad_bag.device.type == "cpu" else _tied_backward_ref(*args)
    return _tied_backward_kernels(*args)


@tied_embedding_bag_backward.register_fake
def _tied_embedding_bag_backward_fake(grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets,
                                      per_sample_weights, num_rows, *rest):
    _checks.tied_embedding_bag_backward(grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets,
                                        per_sample_weights, num_rows, *rest)
    separate = rest[-1]
    return grad_bag.new_empty((2, num_rows, grad_bag.shape[1]) if separate else (num_rows, grad_bag.shape[1]))


def _tied_backward_ref(grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw, num_rows, mode,
                       emb_pad, bag_pad, ilo, separate) -> Tensor:
    """The op's result by ATen ops only: ``embedding_dense_backward`` and
    ``bag_weight_grad_ref``, summed in fp32 (half types) and rounded once."""
    g = grad_emb.reshape(-1, grad_bag.shape[1])
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
    emb = torch.ops.aten.embedding_dense_backward(g, emb_indices.reshape(-1), num_rows, emb_pad, False)
    bag = bag_weight_grad_ref(grad_bag, arg_max, bag_indices, offsets, psw, mode, bag_pad, ilo, num_rows).to(g.dtype)
    return (torch.stack([emb, bag]) if separate else emb + bag).to(grad_bag.dtype)


def _tied_backward_cpu(grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw, num_rows, mode,
                       emb_pad, bag_pad, ilo, separate) -> Tensor:
    """The op's result on the CPU, bit-equal to eager's two backwards and their sum."""
    d = grad_bag.shape[1]
    g = grad_emb.reshape(-1, d)
    if g.dtype in (torch.float16, torch.bfloat16):
        g = g.float()
    if not separate and grad_bag.dtype == torch.float32:
        # The one gradient, in a reused buffer (_grad_cache): the embedding's (the C kernel
        # with bags of one position, else index_add_: both bit-equal to
        # embedding_dense_backward), then the bag's added in place, as eager's AccumulateGrad
        # adds the second gradient to the first.
        if _cpu_native.lib() is not None and 0 < g.shape[0] < 1 << 31:  # the embedding's: bags of one
            emb = _grad_cache.empty((num_rows, d), g.dtype)
            _cpu_native.bag_grad([_cpu_native.BagTable(emb, g if g.stride(-1) == 1 else g.contiguous(),
                                                       emb_indices.reshape(-1, 1), None, None, False, emb_pad,
                                                       False, None)])
        else:
            emb = index_add_backward(g.contiguous(), emb_indices.reshape(-1), num_rows, emb_pad, False,
                                     _grad_cache.zeros((num_rows, d), g.dtype))
        return bag_weight_grad_cpu(grad_bag, arg_max, bag_indices, offsets, psw, mode, bag_pad, ilo, num_rows,
                                   out=emb)
    emb = torch.ops.aten.embedding_dense_backward(g, emb_indices.reshape(-1), num_rows, emb_pad, False)
    # eager's own EmbeddingBag backward; a temporary
    bag = bag_weight_grad_cpu(grad_bag, arg_max, bag_indices, offsets, psw, mode, bag_pad, ilo, num_rows,
                              out=torch.zeros_like(emb))
    if separate:
        return torch.stack([emb, bag]).to(grad_bag.dtype)
    return emb.add_(bag).to(grad_bag.dtype)


def _tied_setup_context(ctx, inputs, output):
    weight, bag_weight, emb_indices, bag_indices, offsets, psw, mode, emb_pad, bag_pad, ilo, *rest = inputs
    ctx.separate = bag_weight is not None
    ctx.sparse = tuple(rest[0]) if rest and rest[0] is not None else (False, False)
    # An output that gets no gradient comes as None, not zeros: a sparse part then has no
    # rows, as eager's (zeros would add explicit zero rows, which SparseAdam would step).
    ctx.set_materialize_grads(False)
    ctx.psw_grad = psw is not None and psw.requires_grad
    ctx.save_for_backward(output[2], emb_indices, bag_indices, offsets, psw, weight if ctx.psw_grad else None)
    ctx.num_rows = weight.shape[0]
    ctx.mode, ctx.emb_pad, ctx.bag_pad, ctx.ilo = mode, emb_pad, bag_pad, ilo


def _tied_backward(ctx, grad_emb, grad_bag, _grad_arg_max):
    arg_max, emb_indices, bag_indices, offsets, psw, weight = ctx.saved_tensors
    # A sparse part has no rows for an output that got no gradient, as in eager.
    used = (grad_emb is not None, grad_bag is not None)
    if grad_emb is None:
        grad_emb = grad_bag.new_zeros((*emb_indices.shape, grad_bag.shape[1]))
    if grad_bag is None:
        grad_bag = grad_emb.new_zeros((num_bags(bag_indices, offsets, ctx.ilo), grad_emb.shape[-1]))
    # One weight read by a sparse and a dense lookup: eager's sparse + dense accumulation is
    # dense, which the dense backward writes at once (sparse when the dense lookup's output
    # got no gradient: it adds nothing).
    if any(ctx.sparse) and (ctx.separate or all(sp for sp, u in zip(ctx.sparse, used) if u)):
        gw, gbw = _sparse_backward(ctx, grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw, used)
    else:
        gw = torch.ops.inductor_embed.tied_embedding_bag_backward(
            grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw, ctx.num_rows, ctx.mode,
            ctx.emb_pad, ctx.bag_pad, ctx.ilo, ctx.separate)
        gw, gbw = (gw[0], gw[1]) if ctx.separate else (gw, None)
    gp = None
    if ctx.psw_grad:
        gp = per_sample_weights_grad(grad_bag, weight, bag_indices, offsets, ctx.bag_pad, ctx.ilo)
        gp = gp.to(psw.dtype).reshape(psw.shape)
    # One entry per argument the call gave (``sparse`` may be left out; needs_input_grad
    # has the call's structure, where the inputs above have the default filled in).
    return (gw, gbw, None, None, None, gp, None, None, None, None, None)[:len(ctx.needs_input_grad)]


def _sparse_backward(ctx, grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw,
                     used: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """The weight gradients when a lookup is sparse: ``(weight's, bag_weight's or None)``;
    ``used``: whether each output got a gradient (a sparse part of one that did not has no
    rows: None for its own Parameter).

    A sparse part's per-index rows: the Embedding's are ``grad_emb``'s rows themselves (its
    padding entries moved to row V, which ``coalesce_rows`` leaves out: a ``where``, not a
    mask, whose size would be data-dependent); the bag's are written by the bag op's
    backward for one table (``multi_embedding_bag_backward``). One ``coalesce_rows`` call
    makes every sparse gradient: one Parameter read by both lookups gets ONE COO tensor over
    both parts' rows (Inductor cannot compile a sum of two sparse tensors in the backward).
    A dense part (two Parameters only) comes from the same ops as a lone lookup's."""
    v, d = ctx.num_rows, grad_bag.shape[1]
    emb_sp, bag_sp = ctx.sparse
    bag_part = None
    if (bag_sp and used[1]) or (not bag_sp and ctx.separate):
        bag_part = _bag_grad(grad_bag, arg_max, bag_indices, offsets, psw, v, ctx.mode, ctx.bag_pad, ctx.ilo,
                             bag_sp)
    emb_part = None
    if not emb_sp and ctx.separate:
        from inductor_embed.lowering.multi_embedding import _cpu_backward, _gpu_backward

        g = grad_emb.reshape(-1, d)
        backward = _gpu_backward if use_triton(g) else _cpu_backward
        emb_part = backward(g, [emb_indices.reshape(-1)], [v], [d], [ctx.emb_pad], [False], [0])[0]
    rows, values, parts = [], [], []
    if emb_sp and used[0]:
        flat = emb_indices.reshape(-1)
        rows.append(flat if ctx.emb_pad < 0 else torch.where(flat == ctx.emb_pad, v, flat))
        values.append(grad_emb.reshape(-1, d))
        parts.append(0)
    if bag_sp and used[1]:
        rows.append(rows_in_bags(bag_indices, offsets, ctx.ilo, v))  # in no bag: row V, left out
        values.append(bag_part)
        parts.append(1)
    if not ctx.separate and len(rows) == 2:  # one Parameter, both sparse: one table over both parts' rows
        if rows[0].dtype != rows[1].dtype:
            rows = [r.long() for r in rows]
        rows, values, parts = [torch.cat(rows)], [torch.cat(values)], [0]
    got = torch.ops.inductor_embed.coalesce_rows(rows, values, [v] * len(rows), [v] * len(rows),
                                                 coalesce_sparse_grads(values[0])) if rows else []
    sparse_grads = dict(zip(parts, got))
    if not ctx.separate:
        return next(iter(sparse_grads.values())), None
    emb_grad = sparse_grads.get(0) if emb_sp else emb_part
    bag_grad = sparse_grads.get(1) if bag_sp else bag_part
    return emb_grad, bag_grad


def _bag_grad(grad_bag, arg_max, bag_indices, offsets, psw, num_rows, mode, pad, ilo, sparse) -> Tensor:
    """The bag's part alone, by ``multi_embedding_bag``'s backward for one table: the dense
    ``[V, D]`` gradient, or with ``sparse`` each index's row ``[nnz, D]`` (the values of
    eager's COO gradient), in grad's dtype."""
    d = grad_bag.shape[1]
    args = (grad_bag, arg_max, [bag_indices], [offsets], [psw], [num_rows], [d], [mode], [pad], [ilo], [sparse])
    if not use_triton(grad_bag):
        got = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu(*args, as_values=True, checked=True)[0]
    else:
        dense, values = torch.ops.inductor_embed.multi_embedding_bag_backward(*args)
        got = values if sparse else dense
    return got.view(-1, d) if sparse else got.view(num_rows, d)


tied_embedding_bag.register_autograd(first_order(_tied_backward), setup_context=_tied_setup_context)


# --- the Triton launches, as opaque ops (see lowering/multi_embedding.py for why) ----------------


@twin_op("inductor_embed::tied_embedding_bag_triton", like="inductor_embed::tied_embedding_bag",
         returns="(Tensor, Tensor, Tensor, Tensor)", drop=("bag_weight", "sparse"))
def tied_embedding_bag_triton(weight, emb_indices, bag_indices, offsets, per_sample_weights, mode, emb_padding_idx,
                              bag_padding_idx, include_last_offset):
    """The Triton forward of ``tied_embedding_bag``: ``(emb, bag, arg_max, err int32 [2])``,
    one launch reading the weight for both lookups."""
    from inductor_embed.kernels.multi_embedding_bag import multi_embedding_bag_fwd

    _checks.tied_embedding_bag(weight, None, emb_indices, bag_indices, offsets, per_sample_weights, mode,
                               emb_padding_idx, bag_padding_idx, include_last_offset)
    d = weight.shape[1]
    segs = _tied_segments(emb_indices, bag_indices, offsets, per_sample_weights, mode, emb_padding_idx,
                          bag_padding_idx, include_last_offset)
    emb = weight.new_empty((segs[0].num_bags, d))
    bag = weight.new_empty((segs[1].num_bags, d))
    arg_max = bag.new_empty((segs[1].num_bags, d if mode == MAX else 0), dtype=torch.int64)
    w = column_stride_1(weight)
    err = multi_embedding_bag_fwd([w, w], segs, [emb, bag], [None, arg_max if mode == MAX else None])
    return emb.view(*emb_indices.shape, d), bag, arg_max, err


@tied_embedding_bag_triton.register_fake
def _tied_embedding_bag_triton_fake(weight, emb_indices, bag_indices, offsets, per_sample_weights, mode,
                                    emb_padding_idx, bag_padding_idx, include_last_offset):
    emb, bag, am = _tied_embedding_bag_fake(weight, None, emb_indices, bag_indices, offsets, per_sample_weights,
                                            mode, emb_padding_idx, bag_padding_idx, include_last_offset)
    return emb, bag, am, weight.new_empty((2,), dtype=torch.int32)


def _tied_backward_kernels(grad_emb, grad_bag, arg_max, emb_indices, bag_indices, offsets, psw, num_rows, mode,
                           emb_pad, bag_pad, ilo, separate) -> Tensor:
    """The GPU path of ``tied_embedding_bag_backward``."""
    from inductor_embed.kernels.multi_embedding_bag import multi_embedding_bag_bwd

    d = grad_bag.shape[1]
    segs = _tied_segments(emb_indices, bag_indices, offsets, psw, mode, emb_pad, bag_pad, ilo)
    blocks = 2 if separate else 1
    flat = torch.zeros(blocks * num_rows * d, dtype=torch.float32, device=grad_bag.device)
    ge = column_stride_1(grad_emb.reshape(-1, d).to(grad_bag.dtype))
    multi_embedding_bag_bwd([ge, column_stride_1(grad_bag)], segs, [num_rows, num_rows], [d, d],
                   [None, arg_max if mode == MAX else None], [0, num_rows * d if separate else 0], [None, None], flat)
    out = flat.view(2, num_rows, d) if separate else flat.view(num_rows, d)
    return out if grad_bag.dtype == torch.float32 else out.to(grad_bag.dtype)
