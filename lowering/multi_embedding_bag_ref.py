"""Pure-torch reference twins of the pooled-gather (EmbeddingBag) kernels.

The CPU implementation of ``multi_embedding_bag`` / ``tied_embedding_bag`` and their
backwards, the oracle of the kernel tests, and the deterministic backward on CUDA
(under ``torch.use_deterministic_algorithms(True)``). ATen ops only.

Shapes: a lookup's indices are ``[nnz]`` with ``offsets`` (``[B]``, or ``[B + 1]`` with
``include_last_offset``), or ``[B, L]`` without (fixed bags of L). ``mode`` is ATen's
numbering: 0 sum, 1 mean, 2 max. ``padding_idx`` is normalised: a row, or -1 for none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inductor_embed.lowering import _cpu_native, _grad_cache

SUM, MEAN, MAX = 0, 1, 2


def num_bags(indices: Tensor, offsets: Tensor | None, include_last_offset: bool) -> int:
    """B: bags of one lookup (a SymInt under fake tensors)."""
    if offsets is None:
        return indices.shape[0]
    return offsets.shape[0] - int(include_last_offset)


def bag_forward(weight: Tensor, indices: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
                mode: int, padding_idx: int, include_last_offset: bool) -> tuple[Tensor, Tensor]:
    """One pooled lookup, as ``F.embedding_bag`` computes it: ``(out [B, D], arg_max [B, D])``.

    ``arg_max`` (int64) is the row each element of a max-mode output came from, -1 for an
    empty bag (ATen's ``max_indices``); other modes return it empty ``[B, 0]``.

    With ``include_last_offset``, indices past ``offsets[B]`` are in no bag (the backward's
    reading, and the kernels'): they are cut off first, so the result is eager's on the cut
    input. (Eager's CPU kernels count them into the last bag's mean size, and with a
    padding_idx into its sum, and leave the sum's gradient rows of them unwritten:
    docs/reliability.md.) Run eagerly (the CPU op's body): a host read of ``offsets[B]``.
    """
    if include_last_offset and offsets is not None and offsets.numel() and indices.dim() == 1:
        end = int(offsets[-1])
        if 0 <= end < indices.shape[0]:
            indices = indices[:end]
            per_sample_weights = None if per_sample_weights is None else per_sample_weights[:end]
    if offsets is None:  # F.embedding_bag's own rewriting of a 2-D input
        b, bag = indices.shape
        offsets = torch.arange(0, b * bag, bag, dtype=indices.dtype, device=indices.device)
        indices = indices.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    elif offsets.dtype != indices.dtype:
        # As eager: both int64 (int32 indices with int64 offsets past 2**31 must not wrap).
        indices, offsets = indices.long(), offsets.long()
    # torch.embedding_bag reads an int padding_idx of -1 as row V - 1; None is "no padding".
    out, _, bag_size, max_idx = torch.embedding_bag(weight, indices, offsets, False, mode, False, per_sample_weights,
                                                    include_last_offset, None if padding_idx < 0 else padding_idx)
    if mode != MAX:
        return out, out.new_empty((out.shape[0], 0), dtype=torch.int64)
    # ATen reports row 0 (or the padding row) for a bag with nothing to take the max of,
    # and its backward skips such bags by their size; -1 says so in the index itself.
    empty = (bag_size[:out.shape[0]] == 0).unsqueeze(1) | (max_idx == padding_idx)
    # int64 whatever the index dtype (ATen's max_indices take the indices' own, int32 for
    # int32 indices): the op's schema and fake impl say int64.
    return out, torch.where(empty, -1, max_idx).long()


def multi_embedding_bag_ref(weights: Sequence[Tensor], indices: Sequence[Tensor],
                            offsets: Sequence[Tensor | None], per_sample_weights: Sequence[Tensor | None],
                            modes: Sequence[int], padding_idx: Sequence[int],
                            include_last_offset: Sequence[bool]) -> tuple[Tensor, Tensor]:
    """Every table's bags, concatenated: ``(out [B, sum D_k], arg_max [B, sum D_k of max tables])``."""
    outs, maxes = [], []
    for w, i, o, p, m, pad, ilo in zip(weights, indices, offsets, per_sample_weights, modes, padding_idx,
                                       include_last_offset):
        out, am = bag_forward(w, i, o, p, m, pad, ilo)
        outs.append(out)
        maxes.append(am)
    return torch.cat(outs, dim=1), torch.cat(maxes, dim=1)


def bag_of_positions(indices: Tensor, offsets: Tensor | None, include_last_offset: bool) -> tuple[Tensor, Tensor]:
    """``(flat indices [nnz], bag [nnz])``: the bag each index belongs to, B for an index
    past the last bag (``include_last_offset`` with ``offsets[B] < nnz``)."""
    if offsets is None:
        b, bag = indices.shape
        flat = indices.reshape(-1)
        return flat, torch.arange(b * bag, device=indices.device) // max(bag, 1)
    nnz = indices.shape[0]
    bags = offsets.shape[0] - int(include_last_offset)
    ends = offsets[1:].long() if include_last_offset else torch.cat(
        [offsets[1:].long(), torch.full((1,), nnz, dtype=torch.long, device=offsets.device)])
    pos = torch.arange(nnz, device=indices.device)
    # The number of bag ends <= pos is the bag of pos; past the last end it is B.
    bag = torch.searchsorted(ends, pos, right=True) if bags > 0 else torch.zeros_like(pos)
    return indices, bag


def rows_in_bags(indices: Tensor, offsets: Tensor | None, include_last_offset: bool, fill: int) -> Tensor:
    """The flat indices ``[nnz]`` with ``fill`` at the positions in no bag (past ``offsets[B]``,
    include_last_offset): never read, so they may hold anything, even rows out of range."""
    if offsets is None or not include_last_offset:
        return indices.reshape(-1)
    flat, bag = bag_of_positions(indices, offsets, include_last_offset)
    return torch.where(bag < offsets.shape[0] - 1, flat, torch.full((), fill, dtype=flat.dtype, device=flat.device))


def index_grad_rows(grad: Tensor, indices: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
                    mode: int, padding_idx: int, include_last_offset: bool,
                    reuse: bool = False) -> tuple[Tensor, Tensor]:
    """``(flat indices [nnz], rows [nnz, D] fp32)``: each index's share of ``grad [B, D]``
    (sum and mean modes). A padding index or an index past the last bag gets zeros.
    These rows are the values of eager's sparse gradient, and their scatter-add is the
    dense one. ``reuse``: the rows are the caller's result (a sparse gradient's values), so an
    fp32 CPU one is a reused buffer (``_grad_cache``: fresh pages cost more than the copy)."""
    # Fixed bags of L ([B, L] input) need no position-to-bag map: each grad row L times.
    fixed = offsets is None and indices.dim() == 2 and indices.shape[1] > 0
    flat, bag = (indices.reshape(-1), None) if fixed else bag_of_positions(indices, offsets, include_last_offset)
    g = grad.float()
    outside = offsets is not None and include_last_offset  # positions past offsets[B] may exist
    if outside:
        g = torch.cat([g, g.new_zeros((1, g.shape[1]))])  # row B: positions outside every bag
        bag = bag.clamp(max=g.shape[0] - 1)
    # One gathered copy, then in-place steps (each was a new [nnz, D] tensor: a sparse
    # step's whole cost on the CPU).
    shape = (flat.shape[0], g.shape[1])
    cached = reuse and g.device.type == "cpu" and g.dtype == torch.float32
    rows = _grad_cache.empty(shape, g.dtype) if cached else g.new_empty(shape)
    keep = flat != padding_idx if padding_idx >= 0 else None
    inv = None
    if mode == MEAN:  # eager multiplies each row by 1 / its bag's size (its indices other than padding)
        if fixed:
            b, length = indices.shape
            counts = keep.view(b, length).sum(1).float() if keep is not None else g.new_full((b,), float(length))
        else:
            ones = keep.float() if keep is not None else torch.ones((), device=g.device).expand(flat.shape[0])
            counts = torch.zeros(g.shape[0], dtype=torch.float32, device=g.device).index_add_(0, bag, ones)
        inv = 1 / counts.clamp(min=1)
    if fixed:
        b, length = indices.shape
        src = g[:b] if inv is None else g[:b] * inv[:b].unsqueeze(1)  # the same products, B x D of them
        rows.view(b, length, g.shape[1]).copy_(src.unsqueeze(1).expand(b, length, g.shape[1]))
    else:
        torch.index_select(g, 0, bag, out=rows)
        if inv is not None:
            rows.mul_(inv[bag].unsqueeze(1))
    if per_sample_weights is not None:
        rows.mul_(per_sample_weights.reshape(-1).float().unsqueeze(1))
    if keep is not None:  # where, not a multiply: an inf in a padding row's gradient must not become NaN
        rows.masked_fill_(~keep.unsqueeze(1), 0.0)
    if outside:  # positions in no bag: row 0, whose share is 0
        flat = torch.where(bag < offsets.shape[0] - 1, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
    return flat, rows


def bag_weight_grad(grad: Tensor, arg_max: Tensor, indices: Tensor, offsets: Tensor | None,
                    per_sample_weights: Tensor | None, mode: int, padding_idx: int, include_last_offset: bool,
                    num_rows: int) -> Tensor:
    """The dense fp32 ``[V, D]`` gradient of one pooled lookup (deterministic: index_put_
    with accumulate sorts on CUDA under ``use_deterministic_algorithms``)."""
    d = grad.shape[1]
    out = torch.zeros((num_rows, d), dtype=torch.float32, device=grad.device)
    if mode == MAX:
        valid = arg_max >= 0
        rows = torch.where(valid, arg_max, 0)
        cols = torch.arange(d, device=grad.device).expand_as(rows)
        vals = torch.where(valid, grad.float(), torch.zeros((), dtype=torch.float32, device=grad.device))
        return out.index_put_((rows.reshape(-1), cols.reshape(-1)), vals.reshape(-1), accumulate=True)
    flat, rows = index_grad_rows(grad, indices, offsets, per_sample_weights, mode, padding_idx, include_last_offset)
    return out.index_put_((flat.long(),), rows, accumulate=True)


def bag_weight_grad_aten(grad: Tensor, arg_max: Tensor, indices: Tensor, offsets: Tensor | None,
                         per_sample_weights: Tensor | None, mode: int, padding_idx: int, include_last_offset: bool,
                         num_rows: int, out: Tensor | None = None, reuse: bool = False,
                         batch: list[_cpu_native.BagTable] | None = None) -> Tensor:
    """``bag_weight_grad`` bit-equal to ATen's own EmbeddingBag backward, as eager runs it on
    the CPU: ``[V, D]`` fp32 for half types, else grad's dtype (the same additions in the
    same order, faster: ``_cpu_native``'s kernel, else ``_segment_bag_grad``). ``out``: a
    ``[V, D]`` tensor of that dtype to add the gradient into (returned); else with
    ``reuse`` (the caller returns the gradient: not a temporary) an fp32 one is a reused
    buffer (``_grad_cache``). ``batch``: where the native kernel may leave its work for the
    caller to run with other tables' (``_cpu_native.bag_grad(batch)``; the returned tensor
    is written then); None runs it here.

    ATen's ``_embedding_bag_dense_backward`` sorts the indices and adds each one's scaled
    grad row (per-sample weight; 1 / bag size in mean mode, the bag's indices other than
    padding, as eager's forward counts them). Max mode, and every other device, take
    ``bag_weight_grad``. Runs eagerly (an opaque op's body): include_last_offset reads
    ``offsets[B]`` on the host.
    """
    if mode == MAX and grad.device.type == "cpu":
        return _max_bag_grad(grad, arg_max, num_rows, out, reuse)
    if mode == MAX or grad.device.type != "cpu":
        got = bag_weight_grad(grad, arg_max, indices, offsets, per_sample_weights, mode, padding_idx,
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
        got = _aten_bag_grad(g, lookup.reshape(-1).long(), None if offs is None else offs.long(), bag_len, scale,
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
        # no [nnz] temporaries here); below it std::sort's, so ATen's sort is run here.
        stable = _cpu_native.stable_sort_from(lookup.dtype)
        order = None if stable is not None and nnz >= stable else lookup.reshape(-1).sort()[1]
        table = _cpu_native.BagTable(out, g if g.stride(-1) == 1 else g.contiguous(), lookup,
                                     None if offs is None else offs.contiguous(),
                                     None if scale is None else scale.contiguous(), mode == MEAN, padding_idx,
                                     accumulate, order)
        if batch is None or order is not None:
            _cpu_native.bag_grad([table])
        else:
            batch.append(table)
        return out
    flat, offs = lookup.reshape(-1).long(), None if offs is None else offs.long()
    if mode == MEAN:  # ATen divides by the bag's size in double, then rounds to grad's dtype
        bag, bag_size = _mean_bag_sizes(flat, offs, bag_len, padding_idx, b)
        scale = (1.0 / bag_size.double().clamp(min=1))[bag].to(g.dtype)
    return _segment_bag_grad(g, flat, offs, bag_len, scale, padding_idx, out, accumulate)


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
    ``_segment_bag_grad``."""
    if offsets is None:
        bag = torch.arange(flat.shape[0], device=flat.device) // max(bag_len, 1)
    else:
        bag = bag_of_positions(flat, offsets, False)[1]
    return bag, torch.bincount(bag if padding_idx < 0 else bag[flat != padding_idx], minlength=num_bags)


def _aten_bag_grad(grad: Tensor, flat: Tensor, offsets: Tensor | None, bag_len: int, psw: Tensor | None, mode: int,
                   padding_idx: int, num_rows: int) -> Tensor:
    """ATen's ``_embedding_bag_backward`` itself (arguments as in ``_segment_bag_grad``).
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


def _segment_bag_grad(grad: Tensor, flat: Tensor, offsets: Tensor | None, bag_len: int, scale: Tensor | None,
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


def per_sample_weights_grad(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor | None,
                            padding_idx: int, include_last_offset: bool) -> Tensor:
    """``d out / d per_sample_weights`` of a sum-mode lookup: ``[nnz]``, ``<grad[bag_j], W[idx_j]>``
    (0 for a padding index or one outside every bag), in the weights' dtype."""
    flat, bag = bag_of_positions(indices, offsets, include_last_offset)
    g = torch.cat([grad, grad.new_zeros((1, grad.shape[1]))])
    # positions in no bag (bag B: a zero row of g) read row 0, not their index (never read)
    rows = torch.where(bag < grad.shape[0], flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
    dots = (g[bag].float() * weight[rows.long()].float()).sum(-1)
    return torch.where(flat != padding_idx, dots, torch.zeros((), dtype=dots.dtype, device=dots.device))


def multi_embedding_bag_backward_tables(grad: Tensor, arg_max: Tensor, indices: Sequence[Tensor],
                                        offsets: Sequence[Tensor | None],
                                        per_sample_weights: Sequence[Tensor | None], num_rows: Sequence[int],
                                        dims: Sequence[int], modes: Sequence[int], padding_idx: Sequence[int],
                                        include_last_offset: Sequence[bool], sparse: Sequence[bool],
                                        reuse: bool = False) -> list[Tensor]:
    """The CPU backward (and, packed, ``multi_embedding_bag_backward_ref``): per table, in
    grad's dtype, its dense ``[V_k, D_k]`` gradient (``bag_weight_grad_aten``: eager's own
    algorithm on the CPU; half types accumulate in fp32 and are rounded once), or for a
    sparse table the values ``[nnz_k * D_k]`` of its COO gradient. Each dense gradient is
    its own allocation, not a slice of one buffer for all tables (see
    ``multi_embedding_backward_tables``)."""
    out = []
    col = am_col = 0
    # The native kernel's tables run together, after the loop: between the ATen ops of one
    # table and the next, torch's OpenMP workers spin on the cores the kernel's threads
    # need (measured: 26 tables one at a time took 74-79 ms, the same work batched 44-52).
    batch: list[_cpu_native.BagTable] = []
    for i, o, p, v, d, m, pad, ilo, sp in zip(indices, offsets, per_sample_weights, num_rows, dims, modes,
                                             padding_idx, include_last_offset, sparse):
        g = grad[:, col:col + d]
        col += d
        am = arg_max[:, am_col:am_col + d] if m == MAX else arg_max
        am_col += d if m == MAX else 0
        if sp:
            out.append(index_grad_rows(g, i, o, p, m, pad, ilo, reuse=reuse)[1].reshape(-1))
        else:
            out.append(bag_weight_grad_aten(g, am, i, o, p, m, pad, ilo, v, reuse=reuse,
                                            batch=batch if grad.dtype == torch.float32 else None))
    if batch:
        _cpu_native.bag_grad(batch)
    return [t.to(grad.dtype) for t in out]


def multi_embedding_bag_backward_ref(grad: Tensor, arg_max: Tensor, indices: Sequence[Tensor],
                                     offsets: Sequence[Tensor | None], per_sample_weights: Sequence[Tensor | None],
                                     num_rows: Sequence[int], dims: Sequence[int], modes: Sequence[int],
                                     padding_idx: Sequence[int], include_last_offset: Sequence[bool],
                                     sparse: Sequence[bool]) -> tuple[Tensor, Tensor]:
    """``(dense [sum V_k * D_k of dense tables], values [sum nnz_k * D_k of sparse tables])`` in
    grad's dtype: ``multi_embedding_bag_backward_tables`` packed, the dense gradients
    row-major back to back, and the per-index rows of each sparse table's COO gradient
    (indices = that table's flat indices, as eager's)."""
    tables = multi_embedding_bag_backward_tables(grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims,
                                                 modes, padding_idx, include_last_offset, sparse)
    empty = grad.new_zeros((0,))
    dense = [t.reshape(-1) for t, sp in zip(tables, sparse) if not sp]
    values = [t for t, sp in zip(tables, sparse) if sp]
    return torch.cat(dense or [empty]), torch.cat(values or [empty])
