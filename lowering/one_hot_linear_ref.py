"""Pure-torch reference twins of the one-hot column gather kernels.

These are the CPU implementation of ``torch.ops.inductor_embed.one_hot_linear`` and its
backward where the native C kernels do not run (half types, autocast, no compiler),
the oracle of the kernel tests, and the baseline of the benchmark. They use
ATen ops only, so that Inductor, which traces through the ``triton_op`` body, compiles
them into its own loops on the CPU. They assume every index is in range: the op
checks that before calling them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def one_hot_linear_ref(indices: Sequence[torch.Tensor], offsets: Sequence[int], weight: torch.Tensor,
                       bias: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum of the weight columns the indices name, plus the bias.

    Args:
        indices: F index tensors ``[*L, bag_k]`` (one L), int32 or int64; field k's
            index ``i`` names weight column ``offsets[k] + i``.
        offsets: first weight column of each field.
        weight: ``[D, V]`` (F.linear's layout), any strides.
        bias: ``[D]`` or None.
        dtype: compute and output dtype (default: the weight's). Weight and bias
            elements are rounded to it first, as autocast's cast would.

    Returns:
        ``[*L, D]``: ``F.linear(cat_k(one_hot(i_k, n_k).sum(-2)), W, b)`` for in-range
        indices, summed in fp32 and rounded once.
    """
    dtype = weight.dtype if dtype is None else dtype
    wt = weight.t()  # [V, D]: a column gather of W is a row lookup of W.t()
    acc = None
    for i, off in zip(indices, offsets):
        part = F.embedding(i + off, wt).to(dtype).float().sum(-2)
        acc = part if acc is None else acc + part
    if bias is not None:
        acc = acc + bias.to(dtype).float()
    return acc.to(dtype)


def one_hot_linear_backward_ref(grad: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[int],
                                num_columns: int, has_bias: bool, v_major: bool, dtype: torch.dtype) -> torch.Tensor:
    """Weight (and bias) gradient of ``one_hot_linear_ref``, packed into one flat buffer.

    Args:
        grad: ``[*L, D]``, the gradient of the forward output.
        indices, offsets: as in ``one_hot_linear_ref``.
        num_columns: V, the weight's column count.
        has_bias: append the bias gradient ``grad.sum`` over rows.
        v_major: lay the weight gradient out as a row-major ``[V, D]`` (its transpose)
            instead of a row-major ``[D, V]``.
        dtype: the returned dtype (the weight's).

    Returns:
        ``[D*V + (D if has_bias else 0)]`` in ``dtype``; sums run in fp32 and are
        rounded once, as the kernel does.
    """
    d = grad.shape[-1]
    g = grad.reshape(-1, d).float()
    n = g.shape[0]
    cols = torch.cat([i.reshape(n, i.shape[-1]) + off for i, off in zip(indices, offsets)], dim=1)
    slots = cols.shape[1]
    # One scatter-add into a zeroed flat buffer, at flat positions computed for the final
    # layout (the bias's D slots included): no view is written, so Inductor neither
    # transposes nor concatenates a V x D gradient (V may be a million) after the scatter.
    d_ar = torch.arange(d, device=g.device)
    col = cols.reshape(-1, 1)
    pos = col * d + d_ar if v_major else d_ar * num_columns + col  # [N * slots, D]
    vals = g.unsqueeze(1).expand(n, slots, d).reshape(-1)
    pos = pos.reshape(-1)
    if has_bias:
        pos = torch.cat([pos, d * num_columns + d_ar])
        vals = torch.cat([vals, g.sum(0)])
    flat = g.new_zeros(d * num_columns + (d if has_bias else 0))
    return flat.index_put((pos,), vals, accumulate=True).to(dtype)
