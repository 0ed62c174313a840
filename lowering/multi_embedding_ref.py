"""Pure-torch reference twins of the multi-table gather kernels.

These are the CPU implementation of ``torch.ops.inductor_embed.multi_embedding``
and its backward, the oracle of the kernel tests, and the baseline of the
benchmarks. They are written with ATen ops only, so that Inductor, which traces
through the ``triton_op`` body, compiles them into one fused C++ loop on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def multi_embedding_ref(weights: Sequence[torch.Tensor], indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gather every table and concatenate along the feature dimension.

    Args:
        weights: T tables, table k of shape [V_k, D_k], all one dtype.
        indices: T index tensors of one shape [*L], int32 or int64.

    Returns:
        [*L, sum(D_k)]: ``cat([F.embedding(indices[k], weights[k]) ...], -1)``.
    """
    return torch.cat([F.embedding(i, w) for w, i in zip(weights, indices)], dim=-1)


def multi_embedding_backward_ref(
    grad: torch.Tensor,
    indices: Sequence[torch.Tensor],
    num_rows: Sequence[int],
    dims: Sequence[int],
    padding_idx: Sequence[int],
    scale_grad_by_freq: Sequence[bool],
) -> torch.Tensor:
    """Gradient of every table, packed into one flat buffer.

    Args:
        grad: [*L, sum(D_k)], the gradient of the forward output.
        indices: T index tensors of shape [*L].
        num_rows: V_k for each table.
        dims: D_k for each table (they sum to grad.shape[-1]).
        padding_idx: the row of table k that gets no gradient, or -1 for none.
        scale_grad_by_freq: divide each row's gradient by its count in the batch.

    Returns:
        [sum(V_k * D_k)] in grad's dtype: table k's [V_k, D_k] gradient, row-major,
        starting at offset sum(V_j * D_j for j < k). Half types accumulate in fp32
        and are rounded once at the end, as the kernels do.
    """
    parts = []
    col = 0
    for i, v, d, p, s in zip(indices, num_rows, dims, padding_idx, scale_grad_by_freq):
        g = grad.narrow(-1, col, d)
        col += d
        if g.dtype in (torch.float16, torch.bfloat16):
            g = g.float()
        parts.append(torch.ops.aten.embedding_dense_backward(g, i, v, p, s).reshape(-1))
    return torch.cat(parts).to(grad.dtype)


def multi_embedding_backward_flat(
    grad: torch.Tensor,
    indices: Sequence[torch.Tensor],
    num_rows: Sequence[int],
    dims: Sequence[int],
    padding_idx: Sequence[int],
    scale_grad_by_freq: Sequence[bool],
) -> torch.Tensor:
    """The same result as ``multi_embedding_backward_ref``, as ONE scatter-add (the CPU path).

    The per-table twin builds every table's dense gradient and then concatenates them,
    which writes and reads the whole gradient (sum V_k * D_k elements) a second time;
    for wide tables that copy costs more than the lookups. Here every gradient element
    goes straight to its final flat position ``off_k + idx * D_k + d`` in one zeroed
    buffer, which Inductor compiles into one zero fill and one scatter-add loop. The
    summation order of repeated indices differs from the twin's, so it is not used
    under ``torch.use_deterministic_algorithms(True)``.
    """
    acc = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
    total_d = sum(dims)
    g = grad.reshape(-1, total_d).to(acc)
    positions, values = [], []
    offset = col = 0
    for i, v, d, p, s in zip(indices, num_rows, dims, padding_idx, scale_grad_by_freq):
        idx = i.reshape(-1).long()
        gk = g[:, col:col + d]
        if s:  # eager divides by the count of each index in the batch
            counts = torch.zeros(v, dtype=acc, device=g.device).index_add(0, idx, torch.ones_like(idx, dtype=acc))
            gk = gk / counts[idx].unsqueeze(1)
        if p >= 0:  # where, not a multiply: an inf in a padding row must not become NaN
            gk = torch.where((idx != p).unsqueeze(1), gk, torch.zeros((), dtype=acc, device=g.device))
        positions.append(offset + idx.unsqueeze(1) * d + torch.arange(d, device=g.device))
        values.append(gk)
        offset += v * d
        col += d
    flat = torch.zeros(offset, dtype=acc, device=g.device)
    flat = flat.index_add(0, torch.cat(positions, 1).reshape(-1), torch.cat(values, 1).reshape(-1))
    return flat.to(grad.dtype)
