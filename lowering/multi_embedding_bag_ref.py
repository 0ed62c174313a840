"""Pure-torch reference twins of the pooled-gather (EmbeddingBag) kernels.

ATen ops only: the oracle of the kernel and op tests, the forward's CPU implementation
(``torch.embedding_bag`` per table), and the backward under deterministic algorithms on
CUDA (``torch.use_deterministic_algorithms(True)``). The CPU's fast backward, bit-equal to
eager's, is ``bag_backward_cpu``.

Shapes: a lookup's indices are ``[nnz]`` with ``offsets`` (``[B]``, or ``[B + 1]`` with
``include_last_offset``), or ``[B, L]`` without (fixed bags of L). ``mode`` is ATen's
numbering: 0 sum, 1 mean, 2 max. ``padding_idx`` is normalised: a row, or -1 for none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
                    out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(flat indices [nnz], rows [nnz, D] fp32)``: each index's share of ``grad [B, D]``
    (sum and mean modes). A padding index or an index past the last bag gets zeros.
    These rows are the values of eager's sparse gradient, and their scatter-add is the
    dense one. ``out``: an fp32 ``[nnz, D]`` tensor to write the rows into (a caller's reused
    buffer), else a new one."""
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
    rows = g.new_empty(shape) if out is None else out
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


def bag_weight_grad_ref(grad: Tensor, arg_max: Tensor, indices: Tensor, offsets: Tensor | None,
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


def table_columns(grad: Tensor, arg_max: Tensor, dims: Sequence[int],
                  modes: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    """Per table, ``(grad [B, D_k], arg_max)``: its columns of the packed gradient, and of the
    packed arg max for a max-mode table (the others get ``arg_max`` whole, never read)."""
    out, col, am_col = [], 0, 0
    for d, m in zip(dims, modes):
        out.append((grad[:, col:col + d], arg_max[:, am_col:am_col + d] if m == MAX else arg_max))
        col += d
        am_col += d if m == MAX else 0
    return out


def multi_embedding_bag_backward_ref(grad: Tensor, arg_max: Tensor, indices: Sequence[Tensor],
                                     offsets: Sequence[Tensor | None], per_sample_weights: Sequence[Tensor | None],
                                     num_rows: Sequence[int], dims: Sequence[int], modes: Sequence[int],
                                     padding_idx: Sequence[int], include_last_offset: Sequence[bool],
                                     sparse: Sequence[bool]) -> tuple[Tensor, Tensor]:
    """``(dense [sum V_k * D_k of dense tables], values [sum nnz_k * D_k of sparse tables])`` in
    grad's dtype: per table, its dense gradient (``bag_weight_grad_ref``), row-major, back to
    back, or the per-index rows of a sparse table's COO gradient (``index_grad_rows``; its
    indices are that table's flat indices, as eager's). Sums run in fp32, rounded once."""
    dense, values = [], []
    for (g, am), i, o, p, v, m, pad, ilo, sp in zip(table_columns(grad, arg_max, dims, modes), indices, offsets,
                                                     per_sample_weights, num_rows, modes, padding_idx,
                                                     include_last_offset, sparse):
        if sp:
            values.append(index_grad_rows(g, i, o, p, m, pad, ilo)[1].reshape(-1))
        else:
            dense.append(bag_weight_grad_ref(g, am, i, o, p, m, pad, ilo, v).reshape(-1))
    empty = grad.new_zeros((0,), dtype=torch.float32)
    return torch.cat(dense or [empty]).to(grad.dtype), torch.cat(values or [empty]).to(grad.dtype)
