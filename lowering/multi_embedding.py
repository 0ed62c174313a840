"""``torch.ops.inductor_embed.multi_embedding``: T embedding lookups + cat as one op.

Forward: ``[*L] x T indices, [V_k, D_k] x T tables -> [*L, sum(D_k)]``.
Backward: on the GPU ``multi_embedding_backward`` returns every table's gradient packed
into one flat buffer (one zero fill), which the autograd formula splits into per-table
views (free); on the CPU each table gets its own gradient (``_cpu_backward``).

The forward is a ``triton_op``: on the CPU Inductor traces through its body and
compiles the ATen reference into its own fused C++ loop; on CUDA the body calls the
opaque ``multi_embedding_triton``, which launches the Triton kernel (see
``kernels/_meta.py`` for why the launch is opaque: the kernel reads every table through a
device table of pointers). The GPU backward is one opaque op; the CPU one is chosen per
table by width (``CPU_EAGER_MIN_DIM``).
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from inductor_embed import _compat
from inductor_embed.lowering._common import column_stride_1, twin_op, use_triton
from inductor_embed.lowering.multi_embedding_ref import (
    multi_embedding_backward_ref,
    multi_embedding_backward_tables,
    multi_embedding_ref,
)

_OOB_MSG = "inductor_embed.multi_embedding: index out of range (expected 0 <= index < num_embeddings of its table)"


def _check_inputs(weights: list[torch.Tensor], indices: list[torch.Tensor]) -> None:
    """Raise the errors eager's F.embedding would, before any output is written."""
    if not weights or len(weights) != len(indices):
        raise RuntimeError(f"multi_embedding: {len(weights)} tables but {len(indices)} index tensors")
    for k, (w, i) in enumerate(zip(weights, indices)):
        if w.dim() != 2:
            raise RuntimeError(f"multi_embedding: table {k} must be 2-D, got {w.dim()}-D")
        if w.dtype != weights[0].dtype:
            raise RuntimeError(f"multi_embedding: table {k} is {w.dtype}, table 0 is {weights[0].dtype}")
        if i.dtype not in (torch.int32, torch.int64):
            raise RuntimeError(
                f"multi_embedding: expected indices {k} to be int32 or int64 (Long or Int), got {i.dtype}"
            )
        if i.device != w.device:
            raise RuntimeError(f"multi_embedding: indices {k} are on {i.device}, table {k} on {w.device}")
        if i.dim() != indices[0].dim():
            raise RuntimeError(f"multi_embedding: indices {k} are {i.dim()}-D, indices 0 are {indices[0].dim()}-D")
        for a, b in zip(i.shape, indices[0].shape):
            # torch._check: with symbolic sizes (fake impl) this is a guard, not a bool.
            torch._check(a == b, lambda k=k, i=i: (
                f"multi_embedding: indices {k} have shape {list(i.shape)}, "
                f"indices 0 have shape {list(indices[0].shape)}"))


@triton_op("inductor_embed::multi_embedding", mutates_args=())
def multi_embedding(
    weights: list[torch.Tensor],
    indices: list[torch.Tensor],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
) -> torch.Tensor:
    """Gather T tables and concatenate along the feature dimension.

    Args:
        weights: T tables [V_k, D_k], one float dtype, one device.
        indices: T index tensors, all of shape [*L], int32 or int64.
        padding_idx: per table, the row that gets no gradient, or -1 (backward only).
        scale_grad_by_freq: per table, scale gradients by 1/count (backward only).

    Returns:
        [*L, sum(D_k)] in the tables' dtype; an index outside [0, V_k) raises.
    """
    _check_inputs(weights, indices)
    if not use_triton(weights[0]):
        if _compat.INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES:
            # Inductor < 2.13 lowers embedding with Python-style negative wrapping, so the
            # compiled reference would read row V-1 for -1 where eager raises.
            for i in indices:
                torch._assert_async((i >= 0).all(), _OOB_MSG)
        return multi_embedding_ref(weights, indices)
    out, err = torch.ops.inductor_embed.multi_embedding_triton(weights, indices)
    # Device-side, asynchronous and CUDA-graph safe, like eager's indexing assert.
    torch._assert_async(err[0] == 0, _OOB_MSG)
    return out


@multi_embedding.register_fake
def _multi_embedding_fake(weights, indices, padding_idx, scale_grad_by_freq):
    _check_inputs(weights, indices)
    total = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((*indices[0].shape, total))


# --- the Triton launches, as opaque ops -------------------------------------------------------
# The kernels read every table and index tensor through a device table of pointers
# (kernels/_meta.py), built from real data_ptr()s. So the launch is an opaque custom op:
# Inductor calls it with real tensors, and because the tensors are its arguments, keeps
# them alive until the launch is issued. One kernel launch whatever the table count.


@torch.library.custom_op("inductor_embed::multi_embedding_triton", mutates_args=())
def multi_embedding_triton(weights: list[torch.Tensor], indices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward of ``multi_embedding``: ``(out [*L, sum(D_k)], err int32 [2])``;
    ``err[0]`` becomes nonzero (asynchronously) if an index was out of range."""
    from inductor_embed.kernels.multi_embedding import multi_embedding_fwd

    lead = indices[0].shape
    total = sum(w.shape[1] for w in weights)
    out = weights[0].new_empty((indices[0].numel(), total))
    err = multi_embedding_fwd([column_stride_1(w) for w in weights], [i.reshape(-1) for i in indices], out)
    return out.view(*lead, total), err


@multi_embedding_triton.register_fake
def _multi_embedding_triton_fake(weights, indices):
    total = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((*indices[0].shape, total)), weights[0].new_empty((2,), dtype=torch.int32)


@torch.library.custom_op("inductor_embed::multi_embedding_backward", mutates_args=())
def multi_embedding_backward(
    grad: torch.Tensor,
    indices: list[torch.Tensor],
    num_rows: list[int],
    dims: list[int],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
) -> torch.Tensor:
    """Every table's dense gradient, packed into one flat buffer.

    Args:
        grad: [*L, sum(D_k)].
        indices: T index tensors of shape [*L].
        num_rows, dims: V_k and D_k per table.
        padding_idx, scale_grad_by_freq: as in ``multi_embedding``.

    Returns:
        [sum(V_k * D_k)] in grad's dtype, table k row-major at offset sum(V_j * D_j, j < k).

    An opaque op (an extern call under Inductor) on every path:
    - GPU: one zero fill, one atomic-add launch accumulating in fp32 (after a counting
      launch with scale_grad_by_freq), and one cast for half types.
    - CPU: eager ATen, deterministic (``multi_embedding_backward_ref``). The
      autograd formula does not use this path on the CPU (see ``_cpu_backward``).
    - Under ``torch.use_deterministic_algorithms(True)`` (checked when it runs) the
      deterministic ATen reference replaces the atomic kernel.
    """
    if not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        return multi_embedding_backward_ref(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
    from inductor_embed.kernels.multi_embedding import grad_layout, multi_embedding_bwd

    n = indices[0].numel()
    g2 = column_stride_1(grad.reshape(n, sum(dims)))
    _, _, size = grad_layout(num_rows, dims, scale_grad_by_freq)
    flat = torch.zeros(size, dtype=torch.float32, device=grad.device)
    multi_embedding_bwd(g2, [i.reshape(-1) for i in indices], num_rows, dims, padding_idx, scale_grad_by_freq, flat)
    dense = flat.narrow(0, 0, sum(v * d for v, d in zip(num_rows, dims)))
    # The counts (scale_grad_by_freq) sit after the gradients: a fp32 result is a view.
    return dense if grad.dtype == torch.float32 else dense.to(grad.dtype)


@multi_embedding_backward.register_fake
def _multi_embedding_backward_fake(grad, indices, num_rows, dims, *_):
    return grad.new_empty((sum(v * d for v, d in zip(num_rows, dims)),))


@twin_op("inductor_embed::multi_embedding_backward_cpu", like="inductor_embed::multi_embedding_backward",
         returns="Tensor[]", extra="SymInt[] columns")
def multi_embedding_backward_cpu(*args) -> list[torch.Tensor]:
    """The eager CPU backward of some of the tables: each one's ``[V_k, D_k]`` gradient as
    its own tensor, table k read from grad's columns ``[columns[k], columns[k] + D_k)``
    (``multi_embedding_backward_tables``: eager's ``embedding_dense_backward``,
    deterministic; not one flat buffer, see there)."""
    return multi_embedding_backward_tables(*args)


@multi_embedding_backward_cpu.register_fake
def _multi_embedding_backward_cpu_fake(grad, indices, num_rows, dims, *_):
    return [grad.new_empty((v, d)) for v, d in zip(num_rows, dims)]


# On the CPU each table's gradient is made where it is cheapest, chosen from its width when
# the backward is traced (paired runs on 2 cores, see bench/results/cpu/README.md):
# - D < CPU_EAGER_MIN_DIM: ``aten.embedding_dense_backward`` in the backward graph, which
#   Inductor lowers to its own C++ zero-fill + scatter-add loop, as plain torch.compile does
#   for an unfused model (eager's per-row add costs ~1-2 us a row, far more than a narrow
#   row's data);
# - D >= CPU_EAGER_MIN_DIM, one-row tables, and every table under
#   torch.use_deterministic_algorithms: eager's ``embedding_dense_backward`` in one opaque
#   op (vectorised row adds, no atomics; Inductor's element-wise atomic adds were 1.3-1.6x
#   slower than it at D >= 64, and are not deterministic).
CPU_EAGER_MIN_DIM = 64


def _cpu_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns=None,
                  eager_min_dim=None) -> list[torch.Tensor]:
    """Per-table ``[V_k, D_k]`` gradients on the CPU (see CPU_EAGER_MIN_DIM), table k read
    from grad's columns ``[columns[k], columns[k] + D_k)`` (default: back to back from 0;
    ``multi_embedding_sum`` passes 0 for every table, and its own ``eager_min_dim``)."""
    if columns is None:
        columns = [sum(dims[:k]) for k in range(len(dims))]
    if eager_min_dim is None:
        eager_min_dim = CPU_EAGER_MIN_DIM
    deterministic = torch.are_deterministic_algorithms_enabled()
    # One-row tables too: Inductor's CPU codegen (torch 2.13) fails on a scatter-add into a
    # one-row buffer (tests/reliability/test_bad_input.py::test_one_row_tables_match_eager).
    wide = [k for k, (v, d) in enumerate(zip(num_rows, dims)) if deterministic or d >= eager_min_dim or v <= 1]
    grads: list[torch.Tensor | None] = [None] * len(dims)
    if wide:
        pick = lambda xs: [xs[k] for k in wide]  # noqa: E731
        eager = torch.ops.inductor_embed.multi_embedding_backward_cpu(
            grad, pick(indices), pick(num_rows), pick(dims), pick(padding_idx), pick(scale_grad_by_freq),
            pick(columns))
        for k, g in zip(wide, eager):
            grads[k] = g
    half = grad.dtype in (torch.float16, torch.bfloat16)
    for k, g in enumerate(grads):
        if g is None:
            gk = grad.narrow(-1, columns[k], dims[k])
            gk = torch.ops.aten.embedding_dense_backward(
                gk.float() if half else gk, indices[k], num_rows[k], padding_idx[k], scale_grad_by_freq[k])
            grads[k] = gk.to(grad.dtype)
    return grads


def _setup_context(ctx, inputs, output):
    weights, indices, padding_idx, scale_grad_by_freq = inputs
    ctx.save_for_backward(*indices)
    ctx.num_rows = [w.shape[0] for w in weights]
    ctx.dims = [w.shape[1] for w in weights]
    ctx.padding_idx = list(padding_idx)
    ctx.scale_grad_by_freq = list(scale_grad_by_freq)


def _backward(ctx, grad):
    indices = list(ctx.saved_tensors)
    args = (grad, indices, ctx.num_rows, ctx.dims, ctx.padding_idx, ctx.scale_grad_by_freq)
    if not use_triton(grad):
        return _cpu_backward(*args), [None] * len(indices), None, None
    # One flat buffer (one zero fill on the GPU), viewed per table for free.
    flat = torch.ops.inductor_embed.multi_embedding_backward(*args)
    grads = []
    offset = 0
    for v, d in zip(ctx.num_rows, ctx.dims):
        grads.append(flat.narrow(0, offset, v * d).view(v, d))
        offset += v * d
    return grads, [None] * len(indices), None, None


multi_embedding.register_autograd(_backward, setup_context=_setup_context)
