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
``source`` (a gather, which Inductor compiles well); with ``relu`` (a message's ReLU taken into
the op), ReLU's own formula after it, in the opaque ``relu_rows_backward``.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("inductor_embed::index_add_rows", mutates_args=())
def index_add_rows(self: torch.Tensor | None, num_rows: int, index: torch.Tensor, source: torch.Tensor,
                   relu: bool = False) -> torch.Tensor:
    """``self.index_add(0, index, source)``; ``self=None`` adds into zeros of ``num_rows`` rows;
    ``relu``: adds ``torch.relu(source)`` (a GIN message's activation, see ``_backward``).

    self: ``[num_rows, *R]`` or None; index: ``[E]`` int32/int64; source: ``[E, *R]``.
    Returns ``[num_rows, *R]`` of ``source``'s dtype.
    """
    if relu:
        source = torch.relu(source)
    if self is None:
        return source.new_zeros((num_rows, *source.shape[1:])).index_add_(0, index, source)
    return torch.index_add(self, 0, index, source)


@index_add_rows.register_fake
def _(self: torch.Tensor | None, num_rows: int, index: torch.Tensor, source: torch.Tensor,
      relu: bool = False) -> torch.Tensor:
    # ATen's meta functions on fake tensors: eager's output layout and shape checks.
    if self is None:
        return source.new_empty((num_rows, *source.shape[1:])).index_add_(0, index, source)
    return torch.index_add(self, 0, index, source)


@torch.library.custom_op("inductor_embed::relu_rows_backward", mutates_args=())
def relu_rows_backward(grad: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The gradient of ``relu(source)`` summed into rows by ``index``: ``grad [R, *C]``,
    ``index [E]``, ``source [E, *C]`` (the pre-activation) -> ``[E, *C]``, ReLU's own formula
    (``threshold_backward``) on ``grad.index_select(0, index)``. Opaque, so that the forward
    saves ``source`` itself: traced, the partitioner would save ``source <= 0`` instead, a bool
    tensor, whose stores from Inductor's CPU kernels run ~15x slower than eager's (docs/design.md,
    "Message passing")."""
    return torch.ops.aten.threshold_backward(grad.index_select(0, index), source, 0)


@relu_rows_backward.register_fake
def _(grad: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(source)


def _setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    self, _num_rows, index, source, relu = inputs
    ctx.has_self, ctx.relu = self is not None, relu
    ctx.save_for_backward(index, source if relu else None)


def _backward(ctx, grad: torch.Tensor) -> tuple:
    """Eager's formulas: ``grad`` for ``self``, ``grad.index_select(0, index)`` for ``source``,
    and with ``relu`` ReLU's own (``threshold_backward`` on the pre-activation, which is <= 0
    exactly where ReLU's output is) in ``relu_rows_backward``. The saved pre-activation is a
    float tensor, as eager's saved ReLU output."""
    index, source = ctx.saved_tensors
    grad_source = None
    if ctx.needs_input_grad[3]:
        grad_source = relu_rows_backward(grad, index, source) if ctx.relu else grad.index_select(0, index)
    grad_self = grad if ctx.has_self and ctx.needs_input_grad[0] else None
    return grad_self, None, None, grad_source, None


index_add_rows.register_autograd(_backward, setup_context=_setup)
