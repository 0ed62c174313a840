"""Pure-torch reference twins of the multi-table gather kernels.

These are the CPU implementation of ``torch.ops.inductor_embed.multi_embedding``
and its backward, the oracle of the kernel tests, and the baseline of the
benchmarks. They are written with ATen ops only, so that Inductor, which traces
through the ``triton_op`` body, compiles them into one fused C++ loop on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from inductor_embed.lowering import _cpu_native, _grad_cache


def multi_embedding_ref(weights: Sequence[torch.Tensor], indices: Sequence[torch.Tensor],
                        column_values: Sequence[torch.Tensor] | None = None,
                        column_ranges: Sequence[int] | None = None) -> torch.Tensor:
    """Gather every table and concatenate along the feature dimension.

    Args:
        weights: T tables, table k of shape [V_k, D_k], all one dtype.
        indices: T index tensors of one shape [*L], int32 or int64.
        column_values, column_ranges: values written over output columns
            ``[column_ranges[2j], column_ranges[2j + 1])`` (ascending, apart), each
            broadcast to ``[*L, width]``: ``out[..., s:t] = v`` after the cat.

    Returns:
        [*L, sum(D_k)]: ``cat([F.embedding(indices[k], weights[k]) ...], -1)``, with the
        written columns' values. Each written range is its own piece of the cat, not a write
        after it: Inductor then makes the output in one pass, with no copy of it to write into.
    """
    ranges = list(column_ranges or ())
    pieces, col = [], 0
    for w, i in zip(weights, indices):
        e, d = F.embedding(i, w), w.shape[1]
        pos = 0
        for j in range(len(ranges) // 2):
            s, t = ranges[2 * j] - col, ranges[2 * j + 1] - col
            if 0 <= s < d:
                if s > pos:
                    pieces.append(e[..., pos:s])
                pieces.append(column_values[j].expand(*e.shape[:-1], t - s))
                pos = t
        if pos < d:
            pieces.append(e if pos == 0 else e[..., pos:])
        col += d
    if not pieces:  # every table 0 columns wide: [*L, 0]
        return weights[0].new_empty((*indices[0].shape, 0))
    return torch.cat(pieces, dim=-1)


def multi_embedding_backward_tables(
    grad: torch.Tensor,
    indices: Sequence[torch.Tensor],
    num_rows: Sequence[int],
    dims: Sequence[int],
    padding_idx: Sequence[int],
    scale_grad_by_freq: Sequence[bool],
    columns: Sequence[int] | None = None,
    reuse: bool = False,
) -> list[torch.Tensor]:
    """Every table's gradient, ``[V_k, D_k]`` each in grad's dtype, as eager computes it.

    Args:
        grad: ``[*L, C]``, the gradient of the forward output.
        columns: where table k's ``D_k`` columns start in grad (default: back to back
            from 0, so that the dims sum to C). The rest as in
            ``multi_embedding_backward_ref``.
        reuse: the gradients are the backward's results (not temporaries): take CPU
            buffers from ``_grad_cache``.

    The CPU backward of wide tables, run eagerly inside an opaque op, bit-equal to eager's
    ``embedding_dense_backward`` (vectorised row adds in index order, deterministic): on
    the CPU, fp32, one call of ``_cpu_native``'s kernel for every table (bags of one
    position; it writes every row), else ``index_add_`` into a zeroed buffer; ``reuse``
    takes the buffers from ``_grad_cache`` (fresh pages cost more than the work: ~150-175
    ms a step for 26 x 100,000 x 64 fp32, against ~22 ms to zero reused ones);
    ``embedding_dense_backward`` itself for half types
    (fed fp32) and with ``scale_grad_by_freq`` (it multiplies by 1 / count, where
    ``index_add_`` would divide). Each table gets its own buffer, not one flat buffer for
    all tables.

    Peak memory: the kernel reads grad's columns in place (its per-thread packed copy is
    outside torch's allocator). Without it, the row adds read a contiguous ``[N, D_k]``
    copy of grad's column slice (``embedding_dense_backward`` copies it too). Tables are taken largest slice first, and a slice is copied only
    while the gradients still to be allocated are at least as large; otherwise (always for
    the last table) the table is summed with ``index_add_`` straight from the strided slice
    (slower per row, no copy). So the op never holds more than the gradients it returns
    plus grad, as the unfused model's backward does.
    """
    if columns is None:
        columns = [sum(dims[:k]) for k in range(len(dims))]
    n = grad.numel() // grad.shape[-1] if grad.shape[-1] else 0
    half = grad.dtype in (torch.float16, torch.bfloat16)
    order = sorted(range(len(dims)), key=lambda k: -n * dims[k])
    remaining = sum(v * d for v, d in zip(num_rows, dims))
    out: list[torch.Tensor | None] = [None] * len(dims)
    native = grad.device.type == "cpu" and grad.dtype == torch.float32 and 0 < n < 1 << 31 and (
        _cpu_native.lib() is not None)
    batch: list[_cpu_native.BagTable] = []
    for k in order:
        i, v, d, p, s, c = indices[k], num_rows[k], dims[k], padding_idx[k], scale_grad_by_freq[k], columns[k]
        remaining -= v * d
        g = grad.narrow(-1, c, d)
        copy = n * d <= remaining or g.is_contiguous()
        if half:  # a contiguous fp32 copy either way
            out[k] = torch.ops.aten.embedding_dense_backward(g.float(), i, v, p, s).to(grad.dtype)
        elif g.device.type != "cpu" or (s and copy):  # CUDA: deterministic mode
            out[k] = torch.ops.aten.embedding_dense_backward(g, i, v, p, s)
        elif native and not s:
            # The bag kernel with one position a bag: embedding_dense_backward adds each
            # index's row in position order, as the kernel's stable counting sort orders them
            # (order=None whatever the count). It writes every row: no zero fill first, and
            # grad's columns are read in place (packed per thread inside the kernel).
            rows = g.reshape(n, d)
            out[k] = _grad_cache.empty((v, d), g.dtype) if reuse else torch.empty((v, d), dtype=g.dtype)
            batch.append(_cpu_native.BagTable(out[k], rows if rows.stride(-1) == 1 else rows.contiguous(),
                                              i.reshape(-1, 1), None, None, False, p, False, None))
        else:
            # index_add_ adds row by row in index order, as embedding_dense_backward does
            # (bit-equal), into a reused buffer (_grad_cache); contiguous rows take its fast path.
            rows = g.reshape(n, d)
            out[k] = _index_add_backward(rows.contiguous() if copy else rows, i.reshape(-1), v, p, s,
                                         _grad_cache.zeros((v, d), g.dtype) if reuse else None)
    if batch:  # every table in one call (see multi_embedding_bag_backward_tables)
        _cpu_native.bag_grad(batch)
    return out


def _index_add_backward(g: torch.Tensor, idx: torch.Tensor, num_rows: int, padding_idx: int,
                        scale_grad_by_freq: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """``embedding_dense_backward`` of ``g [N, D]`` (any strides, not copied) and ``idx [N]``
    by ``index_add_`` into ``out`` (zeros ``[num_rows, D]``; default a new one): serial per
    row, deterministic."""
    if scale_grad_by_freq:  # eager divides by the count of each index in the batch
        counts = torch.zeros(num_rows, dtype=g.dtype, device=g.device).index_add_(
            0, idx, torch.ones(idx.shape, dtype=g.dtype, device=g.device))
        g = g / counts[idx].unsqueeze(1)
    if padding_idx >= 0:  # where, not a multiply: an inf in a padding row must not become NaN
        g = torch.where((idx != padding_idx).unsqueeze(1), g, torch.zeros((), dtype=g.dtype, device=g.device))
    if out is None:
        out = torch.zeros((num_rows, g.shape[1]), dtype=g.dtype, device=g.device)
    return out.index_add_(0, idx, g)


def multi_embedding_backward_ref(grad: torch.Tensor, *args: Any) -> torch.Tensor:
    """Gradient of every table, packed into one flat buffer.

    Args (``args`` are the rest of ``multi_embedding_backward_tables``'s, in its order):
        grad: [*L, sum(D_k)], the gradient of the forward output.
        indices: T index tensors of shape [*L].
        num_rows: V_k for each table.
        dims: D_k for each table (they sum to grad.shape[-1]).
        padding_idx: the row of table k that gets no gradient, or -1 for none.
        scale_grad_by_freq: divide each row's gradient by its count in the batch.

    Returns:
        [sum(V_k * D_k)] in grad's dtype: table k's [V_k, D_k] gradient, row-major,
        starting at offset sum(V_j * D_j for j < k): ``multi_embedding_backward_tables``
        back to back. Half types accumulate in fp32 and are rounded once at the end, as
        the kernels do.
    """
    tables = multi_embedding_backward_tables(grad, *args)
    return torch.cat([t.reshape(-1) for t in tables]) if tables else grad.new_empty((0,))


def compress_indices(
    indices: Sequence[torch.Tensor], num_rows: Sequence[int], padding_idx: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """The rows each table's indices touch, for coalesced sparse gradients: one sort for all
    tables.

    Args:
        indices: T index tensors (any shapes), valid rows of their tables.
        num_rows: V_k per table.
        padding_idx: per table, the row that gets no gradient (left out), or -1.

    Returns:
        ``(rows, local, counts)``: ``rows[k]`` int64 ``[U_k]``, the sorted unique rows of table
        k other than its padding row; ``local[k]`` int64 ``[N_k]``, each index's position in
        ``rows[k]``, and ``U_k`` (an extra, dropped row) for a padding entry; ``counts[k] = U_k``.
        So table k's gradient values are the dense backward of ``U_k + 1`` rows with padding
        row ``U_k``, less that row. One host sync (the ``U_k``), as any sparse gradient needs.
    """
    bases = [sum(num_rows[:k]) for k in range(len(num_rows))]
    total = sum(num_rows)
    device = indices[0].device
    # Table k's row r is key base_k + r; padding entries take the key `total`, past every row.
    keys = torch.cat([torch.where(i.reshape(-1) == p, total, i.reshape(-1).long() + b)
                      for i, p, b in zip(indices, padding_idx, bases)])
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    bounds = torch.searchsorted(uniq, torch.tensor([*bases, total], device=device)).tolist()
    rows, local, counts, start = [], [], [], 0
    for k, i in enumerate(indices):
        lo, hi = bounds[k], bounds[k + 1]
        u = hi - lo
        pos = inv.narrow(0, start, i.numel())
        start += i.numel()
        rows.append(uniq[lo:hi] - bases[k])
        local.append(torch.where(pos >= hi, u, pos - lo))  # only padding keys sort past hi
        counts.append(u)
    return rows, local, counts


def coalesce_ref(index: torch.Tensor, values: torch.Tensor, num_rows: int, padding_idx: int,
                 coalesce: bool = True, owned: bool = False) -> torch.Tensor:
    """One table's sparse gradient as eager makes it, then (``coalesce``) ``.coalesce()``-d.

    Args:
        index: ``[N]`` (any shape of N elements), int32 or int64: the row each entry adds to.
        values: ``[N, D]`` (may be strided: a column slice of the output's gradient), the
            gradient each entry adds.
        num_rows: V.
        padding_idx: entries with this index are left out, as ``embedding_sparse_backward``
            leaves them (-1: none; it may be V, a value the caller put where entries take no
            gradient).
        coalesce: False: return eager's own gradient, one entry per (kept) index.
        owned: ``values`` are the caller's own (made in the same op), not an op input: the
            result may keep them (only an ``index`` shared with the op's inputs is copied).

    Returns:
        ``[V, D]`` sparse COO in values' dtype. Coalesced: sorted unique rows, summed values,
        bit-equal to eager's gradient after ``.coalesce()`` (the same ATen coalesce, which
        sums each row's entries in index order). The CPU (and deterministic) path of the
        sparse backwards: one ATen sort + segment sum per table was 1.5-2x faster on 2 cores
        than one sort of every table's keys followed by a dense backward of the unique rows.
    """
    d = values.shape[-1]
    index_in, values_in = index, values
    index, values = index.reshape(-1), values.reshape(-1, d)
    if padding_idx >= 0:
        keep = index != padding_idx
        index, values = index[keep], values[keep]
    out = torch.sparse_coo_tensor(index.long().unsqueeze(0), values, (num_rows, d), check_invariants=False)
    out = out.coalesce() if coalesce else out
    # An op's outputs must not share memory with its inputs (Inductor plans its buffers on
    # that): eager's form (and a coalesced one of nnz <= 1) still views them; copy.
    rows, vals = out._indices(), out._values()
    share_rows, share_vals = _shares_storage(rows, index_in), not owned and _shares_storage(vals, values_in)
    if share_rows or share_vals:
        out = torch.sparse_coo_tensor(rows.clone() if share_rows else rows, vals.clone() if share_vals else vals,
                                      (num_rows, d), is_coalesced=out.is_coalesced(), check_invariants=False)
    return out


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# --- sums of lookups (``multi_embedding_sum``) ----------------------------------------------------


def multi_embedding_sum_ref(weights: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of T lookups of one width D, in table order.

    Args:
        weights: T tables ``[V_k, D]``, all one dtype.
        indices: T index tensors whose shapes broadcast to one shape ``[*L]`` (BERT's
            ``[S]`` position ids against ``[B, S]`` token ids), int32 or int64.

    Returns:
        ``[*L, D]``: ``F.embedding(indices[0], weights[0]) + F.embedding(indices[1], ...) + ...``,
        left to right, as eager adds them (so an fp32 result is bit-equal to eager's).
    """
    out = F.embedding(indices[0], weights[0])
    for w, i in zip(weights[1:], indices[1:]):
        out = out + F.embedding(i, w)
    return out


def multi_embedding_sum_backward_tables(
    grad: torch.Tensor,
    indices: Sequence[torch.Tensor],
    num_rows: Sequence[int],
    dims: Sequence[int],
    padding_idx: Sequence[int],
    scale_grad_by_freq: Sequence[bool],
) -> list[torch.Tensor]:
    """Every table's gradient of the sum, ``[V_k, D]`` each in grad's dtype, as eager computes
    it: the gradient of a term is grad reduced over the dims its indices broadcast along
    (``sum_to_size``), then scattered by ``embedding_dense_backward`` (fed fp32 for half
    types, rounded once).

    Args:
        grad: ``[*L, D]``, the gradient of the sum.
        indices: T index tensors broadcastable to ``[*L]``.
        The rest as in ``multi_embedding_backward_ref``.
    """
    out = []
    half = grad.dtype in (torch.float16, torch.bfloat16)
    for i, v, d, p, s in zip(indices, num_rows, dims, padding_idx, scale_grad_by_freq):
        g = grad.float() if half else grad
        g = g.sum_to_size(*i.shape, d)
        out.append(torch.ops.aten.embedding_dense_backward(g, i, v, p, s).to(grad.dtype))
    return out


def multi_embedding_sum_backward_ref(grad: torch.Tensor, *args: Any) -> torch.Tensor:
    """``multi_embedding_sum_backward_tables`` back to back in one flat ``[sum(V_k * D)]``
    buffer (the layout of ``multi_embedding_backward_ref``)."""
    tables = multi_embedding_sum_backward_tables(grad, *args)
    return torch.cat([t.reshape(-1) for t in tables]) if tables else grad.new_empty((0,))
