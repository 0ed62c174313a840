"""The CPU backward of embedding lookups: each table's dense gradient, bit-equal to eager's.

The fast path of ``multi_embedding`` / ``multi_embedding_sum`` / ``tied_embedding_bag``'s
backward on the CPU (their autograd formulas' opaque ops call it eagerly). Its plain-torch
twin, the oracle of the tests, is ``multi_embedding_ref.multi_embedding_backward_ref``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inductor_embed.lowering import _cpu_native, _grad_cache


def embedding_grads_cpu(
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
            ``multi_embedding_ref.multi_embedding_backward_ref``.
        reuse: the gradients are the backward's results (not temporaries): take CPU
            buffers from ``_grad_cache``.

    Run eagerly inside an opaque op, bit-equal to eager's ``embedding_dense_backward``
    (row adds in index order, deterministic): for fp32, one call of ``_cpu_native``'s kernel
    for every table (bags of one position; it writes every row, so no zero fill), else
    ``index_add_`` into a zeroed buffer; ``embedding_dense_backward`` itself for half types
    (fed fp32) and with ``scale_grad_by_freq`` (it multiplies by 1 / count, where
    ``index_add_`` would divide). Each table gets its own buffer, not one flat buffer for
    all tables.

    Peak memory: the kernel reads grad's columns in place (its per-thread packed copy is
    outside torch's allocator). Without it, the row adds read a contiguous ``[N, D_k]``
    copy of grad's column slice (``embedding_dense_backward`` copies it too). Tables are
    taken largest slice first, and a slice is copied only while the gradients still to be
    allocated are at least as large; otherwise (always for the last table) the table is
    summed with ``index_add_`` straight from the strided slice (slower per row, no copy).
    So the op never holds more than the gradients it returns plus grad, as the unfused
    model's backward does.
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
            out[k] = index_add_backward(rows.contiguous() if copy else rows, i.reshape(-1), v, p, s,
                                         _grad_cache.zeros((v, d), g.dtype) if reuse else None)
    if batch:  # every table in one call (see bag_backward_cpu.bag_grads_cpu)
        _cpu_native.bag_grad(batch)
    return out


def index_add_backward(g: torch.Tensor, idx: torch.Tensor, num_rows: int, padding_idx: int,
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
