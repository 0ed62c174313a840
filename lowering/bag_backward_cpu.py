"""The CPU backward of EmbeddingBags: each table's gradient, bit-equal to eager's.

The fast path of ``multi_embedding_bag`` / ``tied_embedding_bag``'s backward on the CPU
(their autograd formulas' opaque ops call it eagerly): ``_cpu_native``'s kernel for fp32
sum and mean bags, its max kernel for max mode, else ATen ops in ATen's order. Its
plain-torch twin, the oracle of the tests, is
``multi_embedding_bag_ref.multi_embedding_bag_backward_ref``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inductor_embed.lowering import _cpu_native, _grad_cache
from inductor_embed.lowering.multi_embedding_bag_ref import (
    MAX,
    MEAN,
    bag_of_positions,
    bag_weight_grad_ref,
    index_grad_rows,
    table_columns,
)


def bag_weight_grad_cpu(grad: Tensor, arg_max: Tensor, indices: Tensor, offsets: Tensor | None,
                         per_sample_weights: Tensor | None, mode: int, padding_idx: int, include_last_offset: bool,
                         num_rows: int, out: Tensor | None = None, reuse: bool = False,
                         batch: list[_cpu_native.BagTable] | None = None) -> Tensor:
    """``bag_weight_grad_ref`` bit-equal to ATen's own EmbeddingBag backward, as eager runs it on
    the CPU: ``[V, D]`` fp32 for half types, else grad's dtype (the same additions in the
    same order, faster: ``_cpu_native``'s kernel, else ``_bag_grad_by_segment_sums``). ``out``: a
    ``[V, D]`` tensor of that dtype to add the gradient into (returned); else with
    ``reuse`` (the caller returns the gradient: not a temporary) an fp32 one is a reused
    buffer (``_grad_cache``). ``batch``: where the native kernel may leave its work for the
    caller to run with other tables' (``_cpu_native.bag_grad(batch)``; the returned tensor
    is written then); None runs it here.

    ATen's ``_embedding_bag_dense_backward`` sorts the indices and adds each one's scaled
    grad row (per-sample weight; 1 / bag size in mean mode, the bag's indices other than
    padding, as eager's forward counts them). Max mode, and every other device, take
    ``bag_weight_grad_ref``. Runs eagerly (an opaque op's body): include_last_offset reads
    ``offsets[B]`` on the host.
    """
    if mode == MAX and grad.device.type == "cpu":
        return _max_bag_grad(grad, arg_max, num_rows, out, reuse)
    if mode == MAX or grad.device.type != "cpu":
        got = bag_weight_grad_ref(grad, arg_max, indices, offsets, per_sample_weights, mode, padding_idx,
                              include_last_offset, num_rows)
        return got if out is None else out.add_(got)
    b = grad.shape[0]
    # lookup: the indices as the kernel reads them, any strides ([B, L], or [nnz] cut to
    # the bags); flat: the same, 1-D, made (copied where strided) only where needed.
    lookup, offs = indices, offsets
    if offs is not None and include_last_offset:  # indices past offsets[B] are in no bag
        lookup = lookup[:int(offs[b])] if b > 0 else lookup[:0]
        offs = offs[:b]
    nnz = lookup.numel()
    g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
    if nnz == 0 or b == 0:
        return g.new_zeros((num_rows, g.shape[1])) if out is None else out
    scale = None
    if per_sample_weights is not None:
        scale = per_sample_weights.reshape(-1)[:nnz].to(g.dtype)
    bag_len = indices.shape[-1] if offs is None else 0
    if g.dtype != torch.float32:  # fp64: FBGEMM's kernel is fp32; ATen's generic one rounds otherwise
        got = _aten_bag_backward(g, lookup.reshape(-1).long(), None if offs is None else offs.long(), bag_len, scale,
                             mode, padding_idx, num_rows)
        return got if out is None else out.add_(got)
    accumulate = out is not None
    native = _cpu_native.lib() is not None and nnz < 1 << 31 and b < 1 << 31
    if out is None:  # the native kernel writes every row; the ATen ops write only the sums
        shape = (num_rows, g.shape[1])
        if reuse and grad.dtype == torch.float32:
            out = _grad_cache.empty(shape, g.dtype) if native else _grad_cache.zeros(shape, g.dtype)
        else:
            out = torch.empty(shape, dtype=g.dtype) if native else torch.zeros(shape, dtype=g.dtype)
    if native:
        # ATen's sort order: from stable_sort_from on, a stable sort's (the kernel's own,
        # no [nnz] temporaries here); below it std::sort's: made by the kernel's replica in its
        # threads where the probe says it is this build's (aten_sort_matches), else ATen's
        # sort is run here.
        stable = _cpu_native.stable_sort_from(lookup.dtype)
        order, own_sort = None, False
        if stable is None or nnz < stable:
            own_sort = num_rows < 1 << 31 and _cpu_native.aten_sort_matches(lookup.dtype)
            order = None if own_sort else lookup.reshape(-1).sort()[1]
        table = _cpu_native.BagTable(out, g if g.stride(-1) == 1 else g.contiguous(), lookup,
                                     None if offs is None else offs.contiguous(),
                                     None if scale is None else scale.contiguous(), mode == MEAN, padding_idx,
                                     accumulate, order, aten_sort=own_sort)
        if batch is None:
            _cpu_native.bag_grad([table])
        else:
            batch.append(table)
        return out
    flat, offs = lookup.reshape(-1).long(), None if offs is None else offs.long()
    if mode == MEAN:  # ATen divides by the bag's size in double, then rounds to grad's dtype
        bag, bag_size = _mean_bag_sizes(flat, offs, bag_len, padding_idx, b)
        scale = (1.0 / bag_size.double().clamp(min=1))[bag].to(g.dtype)
    return _bag_grad_by_segment_sums(g, flat, offs, bag_len, scale, padding_idx, out, accumulate)


def _max_bag_grad(grad: Tensor, arg_max: Tensor, num_rows: int, out: Tensor | None, reuse: bool) -> Tensor:
    """Max mode's ``[V, D]`` gradient on the CPU, bit-equal to eager's: each bag's gradient
    element goes to the row its max came from (``arg_max [B, D]``, -1 for an empty bag), added
    bag by bag, as ATen's max backward adds them; into ``out`` if given, else into zeros (a
    reused buffer with ``reuse``: a fresh one faults in its pages every step)."""
    d = grad.shape[1]
    g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
    if out is None:
        shape = (num_rows, d)
        out = _grad_cache.zeros(shape, g.dtype) if reuse and grad.dtype == torch.float32 else g.new_zeros(shape)
    if g.dtype == torch.float32 and _cpu_native.lib() is not None and g.stride(-1) == 1:
        _cpu_native.bag_max_backward(g, arg_max if arg_max.stride(-1) == 1 else arg_max.contiguous(), out)
        return out
    valid = arg_max >= 0
    # one flat position per element: index_add_ on a 1-D tensor adds in index order
    pos = torch.where(valid, arg_max * d + torch.arange(d, device=grad.device), 0)
    out.view(-1).index_add_(0, pos.reshape(-1), torch.where(valid, g, torch.zeros((), dtype=g.dtype)).reshape(-1))
    return out


def _mean_bag_sizes(flat: Tensor, offsets: Tensor | None, bag_len: int, padding_idx: int,
                    num_bags: int) -> tuple[Tensor, Tensor]:
    """``(bag [nnz], size [B])``: each position's bag, and each bag's size as eager's forward
    counts it for mean mode (its indices other than padding). Arguments as in
    ``_bag_grad_by_segment_sums``."""
    if offsets is None:
        bag = torch.arange(flat.shape[0], device=flat.device) // max(bag_len, 1)
    else:
        bag = bag_of_positions(flat, offsets, False)[1]
    return bag, torch.bincount(bag if padding_idx < 0 else bag[flat != padding_idx], minlength=num_bags)


def _aten_bag_backward(grad: Tensor, flat: Tensor, offsets: Tensor | None, bag_len: int, psw: Tensor | None, mode: int,
                   padding_idx: int, num_rows: int) -> Tensor:
    """ATen's ``_embedding_bag_backward`` itself (arguments as in ``_bag_grad_by_segment_sums``).
    It takes eager's forward by-products: ``offset2bag`` is left empty, which ATen rebuilds
    from the offsets (as after eager's fast-path forward); mean mode's ``bag_size`` is
    counted here as eager's forward counts it."""
    offs = offsets if offsets is not None else torch.arange(0, flat.shape[0], max(bag_len, 1))
    empty = flat.new_empty((0,))
    bag_size = empty
    if mode == MEAN:
        bag_size = _mean_bag_sizes(flat, offsets, bag_len, padding_idx, grad.shape[0])[1]
    return torch.ops.aten._embedding_bag_backward(
        grad.contiguous(), flat.contiguous(), offs.contiguous(), empty, bag_size, empty, num_rows, False, mode, False,
        None if psw is None else psw.contiguous(), padding_idx)


def _bag_grad_by_segment_sums(grad: Tensor, flat: Tensor, offsets: Tensor | None, bag_len: int, scale: Tensor | None,
                      padding_idx: int, out: Tensor, accumulate: bool) -> Tensor:
    """``_embedding_bag_backward`` of sum / mean mode on the CPU by ATen ops (where the
    native kernel is off or cannot be built), bit-equal, written into ``out`` (zeros), or
    with ``accumulate`` added into it.

    ATen sorts the indices and, for each distinct index, adds ``scale_p * grad[bag_p]`` over
    its positions p in sorted order (an axpy; the padding index is skipped). That is an
    EmbeddingBag forward with ``grad`` as the table: one bag per distinct index, holding the
    bags of its positions, weighted by their scales. So ``F.embedding_bag`` (FBGEMM's
    vectorised, parallel kernel) makes every distinct row's sum with no ``[nnz, D]``
    intermediate, and ``index_put_`` writes them into the zeroed buffer: measured 2.2x
    faster than ATen's backward for 100,000 x 64, B=2,048, L=20 (1.4 vs 3.1 ms), before the
    fresh pages ATen's new gradient faults in.

    Args:
        grad: ``[B, D]`` fp32; flat ``[nnz]`` int64 (every position in a bag); offsets
            ``[B]`` int64 bag starts, or None with ``bag_len`` the fixed bag size of 2-D input;
        scale: ``[nnz]`` each position's factor (per-sample weight, 1/bag size), or None.
        out: ``[num_rows, D]`` fp32, contiguous.
    Returns:
        ``out``.
    """
    sorted_idx, perm = flat.sort()
    if scale is not None:
        scale = scale[perm]
    if offsets is None:
        bag = perm.div_(bag_len, rounding_mode="floor")
    else:
        bag = bag_of_positions(flat, offsets, False)[1][perm]
    del perm
    rows, counts = torch.unique_consecutive(sorted_idx, return_counts=True)
    del sorted_idx
    rows = rows.clone()  # unique_consecutive's outputs keep an [nnz] allocation each
    starts = counts.cumsum(0).sub_(counts)
    del counts
    # Distinct rows a chunk at a time (a chunk ends where a row's positions end). ATen's
    # backward holds four [nnz] index arrays (its sort's two, offset2bag, a resize); this one
    # holds one (bag) and two [U] ones (rows, starts), so [rows, D] sums of the rest keep
    # its temporaries, and the step's peak memory, within ATen's.
    nnz, d = flat.shape[0], grad.shape[1]
    step = max(1, (3 * nnz - 2 * rows.shape[0]) * 8 // (d * grad.element_size()))
    bounds = starts[::step].tolist() + [nnz]
    g = grad.contiguous()
    for c, (first, end) in enumerate(zip(bounds, bounds[1:])):
        chunk = slice(c * step, (c + 1) * step)
        sums = torch.nn.functional.embedding_bag(bag[first:end], g, starts[chunk] - first, mode="sum",
                                                 per_sample_weights=None if scale is None else scale[first:end])
        if padding_idx >= 0:  # ATen skips the padding row's positions: its row stays zero
            sums[rows[chunk] == padding_idx] = 0
        # A row's sum lands once: written into zeros, or added (x + s, as adding a gradient
        # is). index_put_ (rows are distinct): index_copy_ and index_add_ took 8-25x longer.
        r = rows[chunk]
        out.index_put_((r,), out.index_select(0, r).add_(sums) if accumulate else sums)
        del sums  # before the next chunk's
    return out


def bag_grads_cpu(grad: Tensor, arg_max: Tensor, indices: Sequence[Tensor], offsets: Sequence[Tensor | None],
                  per_sample_weights: Sequence[Tensor | None], num_rows: Sequence[int], dims: Sequence[int],
                  modes: Sequence[int], padding_idx: Sequence[int], include_last_offset: Sequence[bool],
                  sparse: Sequence[bool], reuse: bool = False) -> list[Tensor]:
    """The CPU backward (``multi_embedding_bag_backward_ref``'s results, bit-equal to eager's
    and faster): per table, in
    grad's dtype, its dense ``[V_k, D_k]`` gradient (``bag_weight_grad_cpu``: eager's own
    algorithm on the CPU; half types accumulate in fp32 and are rounded once), or for a
    sparse table the values ``[nnz_k * D_k]`` of its COO gradient. Each dense gradient is
    its own allocation, not a slice of one buffer for all tables (see
    ``embedding_backward_cpu.embedding_grads_cpu``)."""
    out = []
    # The native kernel's tables run together, after the loop: between the ATen ops of one
    # table and the next, torch's OpenMP workers spin on the cores the kernel's threads
    # need (measured in docs/design.md, "Bag backwards").
    batch: list[_cpu_native.BagTable] = []
    # sparse tables' values, all in one native call: fp32 without a padding row (whose
    # positions eager drops, where the ATen ops zero them for the caller to drop)
    values: list[_cpu_native.RowsTable] = []
    native = grad.dtype == torch.float32 and _cpu_native.lib() is not None
    for (g, am), i, o, p, v, d, m, pad, ilo, sp in zip(table_columns(grad, arg_max, dims, modes), indices,
                                                        offsets, per_sample_weights, num_rows, dims, modes,
                                                        padding_idx, include_last_offset, sparse):
        if sp:
            # the rows are the result (a sparse gradient's values): an fp32 one is a reused
            # buffer (fresh pages cost more than the copy)
            rows = _grad_cache.empty((i.numel(), d), torch.float32) if reuse else None
            if native and pad < 0 and g.stride(-1) == 1:
                rows = torch.empty((i.numel(), d), dtype=torch.float32) if rows is None else rows
                values.append(_cpu_native.RowsTable(rows, g, i, None if o is None else o.contiguous(), ilo,
                                                    None if p is None else p.reshape(-1).contiguous(), m == MEAN))
                out.append(rows.reshape(-1))
            else:
                out.append(index_grad_rows(g, i, o, p, m, pad, ilo, out=rows)[1].reshape(-1))
        else:
            out.append(bag_weight_grad_cpu(g, am, i, o, p, m, pad, ilo, v, reuse=reuse,
                                            batch=batch if grad.dtype == torch.float32 else None))
    if batch:
        _cpu_native.bag_grad(batch)
    if values:
        _cpu_native.bag_rows(values)
    return out if grad.dtype == torch.float32 else [t.to(grad.dtype) for t in out]
