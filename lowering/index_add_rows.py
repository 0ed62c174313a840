"""``torch.ops.inductor_embed.index_add_rows``: ``index_add`` along dim 0 as one opaque ATen call.

``index_add_rows(self, num_rows, index, source)`` is ``torch.index_add(self, 0, index, source)``,
and with ``self=None`` it is ``zeros([num_rows, *source.shape[1:]]).index_add_(0, index, source)``
(the zeros never materialised apart from the output): ``[E] index, [E, *R] source ->
[num_rows, *R]``. A graph's message passing (``zeros_like(h).index_add_(0, dst, msg)``) and
the transposed lookup it is.

Why an op at all: Inductor lowers ``index_add`` to its scatter-add, which on the CPU is one
atomic compare-and-swap per element (``atomic_add_vec``): 8,192 rows of 300 floats take ~6.5 ms
there against ~0.3 ms in ATen's ``index_add_``, which sorts the indices once and sums each
row's sources in their order (docs/design.md, "Message passing"). Opaque, the op is that ATen
call: the same values as eager, bit for bit, and eager's own errors. The pattern takes it on
the CPU only; on CUDA Inductor's atomic adds are native and fuse with their producer.

Backward (eager's formula): ``grad`` for ``self``, ``grad.index_select(0, index)`` for
``source`` (a gather, which Inductor compiles well).
"""

from __future__ import annotations

import torch


@torch.library.custom_op("inductor_embed::index_add_rows", mutates_args=())
def index_add_rows(self: torch.Tensor | None, num_rows: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``self.index_add(0, index, source)``; ``self=None`` adds into zeros of ``num_rows`` rows.

    self: ``[num_rows, *R]`` or None; index: ``[E]`` int32/int64; source: ``[E, *R]``.
    Returns ``[num_rows, *R]`` of ``source``'s dtype.
    """
    if self is None:
        return source.new_zeros((num_rows, *source.shape[1:])).index_add_(0, index, source)
    return torch.index_add(self, 0, index, source)


@index_add_rows.register_fake
def _(self: torch.Tensor | None, num_rows: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    # ATen's meta functions on fake tensors: eager's output layout and shape checks.
    if self is None:
        return source.new_empty((num_rows, *source.shape[1:])).index_add_(0, index, source)
    return torch.index_add(self, 0, index, source)


def _setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    self, _num_rows, index, _source = inputs
    ctx.has_self = self is not None
    ctx.save_for_backward(index)


def _backward(ctx, grad: torch.Tensor) -> tuple:
    (index,) = ctx.saved_tensors
    grad_source = grad.index_select(0, index) if ctx.needs_input_grad[3] else None
    grad_self = grad if ctx.has_self and ctx.needs_input_grad[0] else None
    return grad_self, None, None, grad_source


index_add_rows.register_autograd(_backward, setup_context=_setup)
