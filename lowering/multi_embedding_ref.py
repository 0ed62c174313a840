"""Pure-torch reference twins of the multi-table gather kernels.

ATen ops only, short: the oracle of the kernel and op tests, the forward's CPU
implementation (Inductor, which traces through the ``triton_op`` body, compiles it into
one fused C++ loop on the CPU), the backward under deterministic algorithms on CUDA, and
the baseline of the benchmarks. The CPU's fast backward is ``embedding_backward_cpu``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def multi_embedding_backward_ref(grad: torch.Tensor, indices: Sequence[torch.Tensor], num_rows: Sequence[int],
                                 dims: Sequence[int], padding_idx: Sequence[int],
                                 scale_grad_by_freq: Sequence[bool]) -> torch.Tensor:
    """Gradient of every table, packed into one flat buffer: ``embedding_dense_backward`` of
    each table's columns of grad.

    Args:
        grad: [*L, sum(D_k)], the gradient of the forward output.
        indices: T index tensors of shape [*L].
        num_rows: V_k for each table.
        dims: D_k for each table (they sum to grad.shape[-1]).
        padding_idx: the row of table k that gets no gradient, or -1 for none.
        scale_grad_by_freq: divide each row's gradient by its count in the batch.

    Returns:
        [sum(V_k * D_k)] in grad's dtype: table k's [V_k, D_k] gradient, row-major,
        starting at offset sum(V_j * D_j for j < k). Half types accumulate in fp32 and are
        rounded once at the end, as the kernels do.
    """
    tables, col = [], 0
    half = grad.dtype in (torch.float16, torch.bfloat16)
    for i, v, d, p, s in zip(indices, num_rows, dims, padding_idx, scale_grad_by_freq):
        g = grad.narrow(-1, col, d)
        g = g.float() if half else g
        col += d
        tables.append(torch.ops.aten.embedding_dense_backward(g, i, v, p, s).to(grad.dtype).reshape(-1))
    return torch.cat(tables) if tables else grad.new_empty((0,))


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
                 coalesce: bool = True, owned: bool = False, index_owned: bool = False) -> torch.Tensor:
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
            result may keep them.
        index_owned: the same of ``index`` (else an index the result shares is copied).

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
    share_rows = not index_owned and shares_storage(rows, index_in)
    share_vals = not owned and shares_storage(vals, values_in)
    if share_rows or share_vals:
        out = torch.sparse_coo_tensor(rows.clone() if share_rows else rows, vals.clone() if share_vals else vals,
                                      (num_rows, d), is_coalesced=out.is_coalesced(), check_invariants=False)
    return out


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` lie on one storage (a view of the other, or both of a third)."""
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


def multi_embedding_sum_backward_ref(grad: torch.Tensor, indices: Sequence[torch.Tensor], num_rows: Sequence[int],
                                     dims: Sequence[int], padding_idx: Sequence[int],
                                     scale_grad_by_freq: Sequence[bool]) -> torch.Tensor:
    """Every table's gradient of the sum, back to back in one flat ``[sum(V_k * D)]`` buffer
    (the layout of ``multi_embedding_backward_ref``), as eager computes it: the gradient of a
    term is grad reduced over the dims its indices broadcast along (``sum_to_size``), then
    scattered by ``embedding_dense_backward`` (fed fp32 for half types, rounded once).

    Args:
        grad: ``[*L, D]``, the gradient of the sum.
        indices: T index tensors broadcastable to ``[*L]``.
        The rest as in ``multi_embedding_backward_ref``.
    """
    half = grad.dtype in (torch.float16, torch.bfloat16)
    g = grad.float() if half else grad
    tables = [torch.ops.aten.embedding_dense_backward(g.sum_to_size(*i.shape, d), i, v, p, s).to(grad.dtype)
              for i, v, d, p, s in zip(indices, num_rows, dims, padding_idx, scale_grad_by_freq)]
    return torch.cat([t.reshape(-1) for t in tables]) if tables else grad.new_empty((0,))
