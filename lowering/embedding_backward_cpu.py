"""The CPU backward of embedding lookups: each table's dense gradient, bit-equal to eager's.

The fast path of ``multi_embedding`` / ``multi_embedding_sum`` / ``tied_embedding_bag``'s
backward on the CPU (their autograd formulas' opaque ops call it eagerly). Its plain-torch
twin, the oracle of the tests, is ``multi_embedding_ref.multi_embedding_backward_ref``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from inductor_embed.lowering import _cpu_native, _grad_cache

# The gradients' dtypes the native kernel makes (_cpu_native.lookup_grad).
NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    for every table (bags of one position: each position's row added into its zeroed
    buffer, in position order, ``_cpu_native._scatters``), else
    ``index_add_`` into a zeroed buffer; ``embedding_dense_backward`` itself with
    ``scale_grad_by_freq`` (it multiplies by 1 / count, where ``index_add_`` would divide).
    Half types are summed in fp32 and rounded once, as torch.compile's decomposition does
    (eager rounds at every add): by the same kernel, or without it
    by ``embedding_dense_backward`` fed fp32. Each table gets its own buffer, not one flat
    buffer for all tables.

    Peak memory: the kernel reads grad's columns in place (its per-thread packed copy, and a
    half-type table's fp32 sums, one table a thread at a time, are outside torch's allocator). Without it, the row adds read a contiguous ``[N, D_k]``
    copy of grad's column slice (``embedding_dense_backward`` copies it too). Tables are
    taken largest slice first, and a slice is copied only while the gradients still to be
    allocated are at least as large; otherwise (always for the last table) the table is
    summed with ``index_add_`` straight from the strided slice (slower per row, no copy).
    So the op never holds more than the gradients it returns plus grad, as the unfused
    model's backward does.
    """
    if columns is None:
        columns = [sum(dims[:k]) for k in range(len(dims))]
    n = math.prod(grad.shape[:-1])  # (not numel / C: every table may be 0 columns wide)
    native = grad.device.type == "cpu" and grad.dtype in NATIVE_DTYPES and 0 < n < 1 << 31 and (
        _cpu_native.lib() is not None)
    if native and not any(scale_grad_by_freq):  # every table in one native call
        return _native_grads(grad.reshape(n, grad.shape[-1]), indices, num_rows, dims, padding_idx, columns, reuse)
    out: list[torch.Tensor | None] = [None] * len(dims)
    mine = [k for k in range(len(dims)) if native and not scale_grad_by_freq[k]]
    if mine:
        got = _native_grads(grad.reshape(n, grad.shape[-1]), [indices[k] for k in mine], [num_rows[k] for k in mine],
                            [dims[k] for k in mine], [padding_idx[k] for k in mine], [columns[k] for k in mine], reuse)
        for k, g in zip(mine, got):
            out[k] = g
    half = grad.dtype in (torch.float16, torch.bfloat16)
    rest = [k for k in range(len(dims)) if out[k] is None]
    order = sorted(rest, key=lambda k: -n * dims[k])
    remaining = sum(num_rows[k] * dims[k] for k in rest)
    for k in order:
        i, v, d, p, s, c = indices[k], num_rows[k], dims[k], padding_idx[k], scale_grad_by_freq[k], columns[k]
        remaining -= v * d
        g = grad.narrow(-1, c, d)
        copy = n * d <= remaining or g.is_contiguous()
        if half:  # a contiguous fp32 copy either way
            out[k] = torch.ops.aten.embedding_dense_backward(g.float(), i, v, p, s).to(grad.dtype)
        elif g.device.type != "cpu" or (s and copy):  # CUDA: deterministic mode
            out[k] = torch.ops.aten.embedding_dense_backward(g, i, v, p, s)
        else:
            # index_add_ adds row by row in index order, as embedding_dense_backward does
            # (bit-equal), into a reused buffer (_grad_cache); contiguous rows take its fast path.
            rows = g.reshape(n, d)
            out[k] = index_add_backward(rows.contiguous() if copy else rows, i.reshape(-1), v, p, s,
                                         _grad_cache.zeros((v, d), g.dtype) if reuse else None)
    return out


def _native_grads(grad: torch.Tensor, indices: Sequence[torch.Tensor], num_rows: Sequence[int],
                  dims: Sequence[int], padding_idx: Sequence[int], columns: Sequence[int],
                  reuse: bool) -> list[torch.Tensor]:
    """``embedding_grads_cpu``'s native path (fp32, bf16, fp16) without scale_grad_by_freq, ``grad [N, C]``: one
    ``_cpu_native.lookup_grad`` call for every table, each gradient a new (or, with ``reuse``,
    a cached) buffer the kernel writes whole. Per table only its buffer and its index's
    flattening are tensor calls (the host cost of a small batch's step)."""
    if grad.stride(-1) != 1 and grad.shape[-1] > 1:
        grad = grad.contiguous()
    outs = []
    dtype, size = grad.dtype, grad.element_size()
    for v, d in zip(num_rows, dims):
        big = reuse and v * d * size >= _grad_cache.MIN_BYTES
        outs.append(_grad_cache.empty((v, d), dtype) if big else torch.empty((v, d), dtype=dtype))
    flat = [i if i.dim() == 1 else i.reshape(-1) for i in indices]
    _cpu_native.lookup_grad(grad, outs, flat, columns, padding_idx)
    return outs


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
