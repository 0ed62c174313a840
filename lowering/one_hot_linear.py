"""``torch.ops.inductor_embed.one_hot_linear``: a Linear on one-hot (or multi-hot) fields as
a gather of the weight's columns.

Forward: F fields of indices ``[*L, bag_k]`` and a ``[D, V]`` weight -> ``[*L, D]``,
``out = sum_k sum_j W[:, offsets[k] + idx_k[..., j]] + b``: what
``F.linear(cat_k(F.one_hot(idx_k, n_k).sum(bag)).float(), W, b)`` computes, without the
``[*L, V]`` one-hot and its ``L x V x D`` multiply-adds.
Backward: ``one_hot_linear_backward`` returns the weight's gradient (and the bias's)
packed into one flat buffer; the autograd formula views it (free).

Both ops are ``triton_op``s. On the CPU, fp32, their bodies call opaque ops
(``one_hot_linear_cpu``, ``one_hot_linear_backward_cpu``) on ``_cpu_native``'s C kernels,
so Inductor builds no C++ for them; otherwise (half types, autocast,
``config.cpu_native_kernels = False``) Inductor compiles their ATen reference bodies
(``one_hot_linear_ref.py``: a gather, and one scatter-add). On CUDA the bodies call opaque
ops (``one_hot_linear_triton``, ``one_hot_linear_backward_triton``) that launch
``kernels/one_hot_linear.py`` (opaque for the reason ``lowering/multi_embedding.py`` gives).

The optional ``dtype`` is the compute dtype under autocast: the weight stays in its own
dtype and each gathered element is rounded to ``dtype``, as autocast's cast of the whole
weight would round it, so an fp32 weight of a million columns is never copied to bf16.
"""

from __future__ import annotations

import math

import torch
from torch.library import triton_op

from inductor_embed.lowering import _checks, _cpu_host, _cpu_native
from inductor_embed.lowering._common import column_stride_1, first_order, twin_op, use_triton
from inductor_embed.lowering.one_hot_linear_ref import (
    one_hot_linear_backward_ref,
    one_hot_linear_ref,
)

# Eager's F.one_hot says "Class values must be non-negative." / "Class values must be
# smaller than num_classes."; this message matches the same "Class values" pattern.
_OOB_MSG = _checks.ONE_HOT_OOB


def _v_major(weight: torch.Tensor) -> bool:
    """Whether the weight is stored as a row-major [V, D] (``W2.t()`` for ``x @ W2``)."""
    d, v = weight.shape
    return d > 1 and v > 1 and weight.stride(0) == 1 and weight.stride(1) == d


@triton_op("inductor_embed::one_hot_linear", mutates_args=())
def one_hot_linear(
    indices: list[torch.Tensor],
    num_classes: list[int],
    offsets: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sum the weight columns that one-hot fields select, plus the bias.

    Args:
        indices: F index tensors ``[*L, bag_k]`` (one leading shape L), int32 or int64.
            A plain one-hot field has bag 1; a multi-hot one (``one_hot(...).sum(dim)``)
            has its summed dims flattened into the bag.
        num_classes: ``n_k`` per field; an index outside ``[0, n_k)`` raises.
        offsets: the weight column where each field's classes start.
        weight: ``[D, V]`` (F.linear's layout), fp32/fp16/bf16, any strides.
        bias: ``[D]`` in the weight's dtype, or None.
        dtype: compute and output dtype (default: the weight's); see the module doc.

    Returns:
        ``[*L, D]`` in ``dtype``, accumulated in fp32 and rounded once.
    """
    _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, dtype)
    out_dtype = weight.dtype if dtype is None else dtype
    if not use_triton(weight):
        if _native(weight, out_dtype, bias):
            return _cpu_host.op("one_hot_linear_cpu")(indices, num_classes, offsets, weight, bias)
        # Inductor's bounds check of the gather covers [0, V) only: an index of field k
        # past n_k would silently read field k+1's column (and torch < 2.13 wraps
        # negatives). Eager F.one_hot raises on both, so check each field explicitly.
        for i, n in zip(indices, num_classes):
            torch._assert_async(((i >= 0) & (i < n)).all(), _OOB_MSG)
        return one_hot_linear_ref(indices, offsets, weight, bias, out_dtype)
    out, err = torch.ops.inductor_embed.one_hot_linear_triton(indices, num_classes, offsets, weight, bias, out_dtype)
    # Device-side, asynchronous and CUDA-graph safe, like eager's device assert.
    torch._assert_async(err[0] == 0, _OOB_MSG)
    return out


@one_hot_linear.register_fake
def _one_hot_linear_fake(indices, num_classes, offsets, weight, bias=None, dtype=None):
    _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, dtype)
    return weight.new_empty((*indices[0].shape[:-1], weight.shape[0]), dtype=dtype or weight.dtype)


@triton_op("inductor_embed::one_hot_linear_backward", mutates_args=())
def one_hot_linear_backward(
    grad: torch.Tensor,
    indices: list[torch.Tensor],
    num_classes: list[int],
    offsets: list[int],
    num_columns: int,
    has_bias: bool,
    v_major: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The weight's gradient, then the bias's, in one flat buffer.

    Args:
        grad: ``[*L, D]``, the gradient of the forward output (any float dtype).
        indices, num_classes, offsets: as in ``one_hot_linear``.
        num_columns: V.
        has_bias: append the bias gradient (``grad`` summed over rows).
        v_major: the weight gradient's layout: row-major ``[V, D]`` (then viewed as its
            transpose) instead of row-major ``[D, V]``; the autograd formula picks the
            weight's own layout, so accumulating ``.grad`` needs no transposing copy.
        dtype: the returned dtype (the weight's).

    Returns:
        ``[D*V + (D if has_bias else 0)]`` in ``dtype``. On the GPU: one zero-fill,
        one atomic-add launch accumulating in fp32, and one cast unless ``dtype`` is
        fp32. Under ``torch.use_deterministic_algorithms(True)`` the deterministic ATen
        reference runs instead of the atomic kernel.
    """
    _checks.one_hot_linear_backward(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype,
                                    values=not use_triton(grad))
    if not use_triton(grad) and _native(grad, dtype):
        return _cpu_host.op("one_hot_linear_backward_cpu")(
            grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)
    if not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        return one_hot_linear_backward_ref(grad, indices, offsets, num_columns, has_bias, v_major, dtype)
    return torch.ops.inductor_embed.one_hot_linear_backward_triton(
        grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)


@one_hot_linear_backward.register_fake
def _one_hot_linear_backward_fake(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype):
    _checks.one_hot_linear_backward(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)
    d = grad.shape[-1]
    return grad.new_empty((d * num_columns + (d if has_bias else 0),), dtype=dtype)


# --- the CPU's C kernels, as opaque ops -----------------------------------------------------------


def _native(t: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None) -> bool:
    """Whether the CPU op on fp32 ``t`` runs ``_cpu_native``'s kernels: fp32 throughout, and the
    library built (``config.cpu_native_kernels``). Opaque to Inductor, they leave it no C++
    to build (a slower first compile) and run faster than Inductor's loops (both measured in
    docs/design.md, "Why the CPU path is what it is"). Read when the
    graph is traced, it picks code for speed only: the opaque ops check ``lib()`` again when
    they run and take the ATen reference without it, so a graph compiled (or cached) with
    the library runs where it is switched off or cannot be built."""
    return (t.device.type == "cpu" and t.dtype == dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32) and _cpu_native.lib() is not None)


@twin_op("inductor_embed::one_hot_linear_cpu", like="inductor_embed::one_hot_linear", returns="Tensor",
         drop=("dtype",))
def one_hot_linear_cpu(indices, num_classes, offsets, weight, bias=None):
    """The CPU's fp32 forward of ``one_hot_linear`` (``[*L, D]``), by ``_cpu_native``'s kernel:
    it checks every field's indices first and raises as the op's other paths do. Where the
    library is not there when the op runs (switched off since the graph was compiled, or a
    process without a C compiler that got this graph from a cache), the ATen reference. The
    kernel checks the index values itself (a host read per field cost more than the gather at
    a small batch); where it finds a bad one, the checks here raise the detailed error."""
    native = _cpu_native.lib() is not None
    _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, None, values=not native)
    if not native:
        return one_hot_linear_ref(indices, offsets, weight, bias)
    out, bad = _cpu_native.one_hot_linear(indices, num_classes, offsets, weight,
                                          None if bias is None else bias.contiguous())
    if bad is not None:
        _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, None, values=True)
        raise RuntimeError(_OOB_MSG)
    return out


@one_hot_linear_cpu.register_fake
def _one_hot_linear_cpu_fake(indices, num_classes, offsets, weight, bias=None):
    _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, None)
    return weight.new_empty((*indices[0].shape[:-1], weight.shape[0]))


@twin_op("inductor_embed::one_hot_linear_backward_cpu", like="inductor_embed::one_hot_linear_backward",
         returns="Tensor")
def one_hot_linear_backward_cpu(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype):
    """The CPU's fp32 backward of ``one_hot_linear`` (same contract as
    ``one_hot_linear_backward``), by ``_cpu_native``'s kernel: each column's positions added
    in order (deterministic). Without the library when it runs, the ATen reference (as the
    forward; the kernel checks the index values itself, as the forward's)."""
    native = _cpu_native.lib() is not None
    args = (grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)
    _checks.one_hot_linear_backward(*args, values=not native)
    if not native:
        return one_hot_linear_backward_ref(grad, indices, offsets, num_columns, has_bias, v_major, dtype)
    flat, bad = _cpu_native.one_hot_linear_backward(grad, indices, num_classes, offsets, num_columns, has_bias,
                                                    v_major)
    if bad is not None:
        _checks.one_hot_linear_backward(*args, values=True)
        raise RuntimeError(_OOB_MSG)
    return flat


one_hot_linear_backward_cpu.register_fake(_one_hot_linear_backward_fake)
_cpu_host.define_fast("one_hot_linear_cpu", "Tensor")
_cpu_host.define_fast("one_hot_linear_backward_cpu", "Tensor")


# --- the Triton launches, as opaque ops (see lowering/multi_embedding.py for why) ----------------


@torch.library.custom_op("inductor_embed::one_hot_linear_triton", mutates_args=())
def one_hot_linear_triton(
    indices: list[torch.Tensor],
    num_classes: list[int],
    offsets: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward of ``one_hot_linear``: ``(out [*L, D] in dtype, err int32 [2])``;
    ``err[0]`` becomes nonzero (asynchronously) if an index was out of range."""
    from inductor_embed.kernels.one_hot_linear import one_hot_linear_fwd

    _checks.one_hot_linear(indices, num_classes, offsets, weight, bias, dtype)  # the kernel flags bad classes
    lead = indices[0].shape[:-1]
    rows = math.prod(lead)
    d = weight.shape[0]
    out = weight.new_empty((rows, d), dtype=dtype)
    flat_idx = [i.reshape(rows, i.shape[-1]) for i in indices]
    err = one_hot_linear_fwd(flat_idx, num_classes, offsets, weight, bias, out)
    return out.view(*lead, d), err


@one_hot_linear_triton.register_fake
def _one_hot_linear_triton_fake(indices, num_classes, offsets, weight, bias, dtype):
    out = weight.new_empty((*indices[0].shape[:-1], weight.shape[0]), dtype=dtype)
    return out, weight.new_empty((2,), dtype=torch.int32)


@twin_op("inductor_embed::one_hot_linear_backward_triton", like="inductor_embed::one_hot_linear_backward",
         returns="Tensor")
def one_hot_linear_backward_triton(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype):
    """The Triton backward of ``one_hot_linear`` (same contract as ``one_hot_linear_backward``):
    one zero fill, one atomic-add launch accumulating in fp32, one cast unless fp32."""
    from inductor_embed.kernels.one_hot_linear import flat_size, one_hot_linear_bwd

    _checks.one_hot_linear_backward(grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)
    d = grad.shape[-1]
    rows = math.prod(grad.shape[:-1])
    g2 = column_stride_1(grad.reshape(rows, d))
    flat = torch.zeros(flat_size(d, num_columns, has_bias), dtype=torch.float32, device=grad.device)
    one_hot_linear_bwd(g2, [i.reshape(rows, i.shape[-1]) for i in indices], num_classes, offsets, flat,
                       num_columns=num_columns, v_major=v_major, has_bias=has_bias)
    return flat if dtype == torch.float32 else flat.to(dtype)


one_hot_linear_backward_triton.register_fake(_one_hot_linear_backward_fake)


def _setup_context(ctx, inputs, output):
    indices, num_classes, offsets, weight, bias, _dtype = inputs
    ctx.save_for_backward(*indices)
    ctx.num_classes = list(num_classes)
    ctx.offsets = list(offsets)
    ctx.shape = tuple(weight.shape)
    ctx.v_major = _v_major(weight)
    ctx.weight_dtype = weight.dtype
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    indices = list(ctx.saved_tensors)
    d, v = ctx.shape
    need_w = ctx.needs_input_grad[3]
    need_b = ctx.has_bias and ctx.needs_input_grad[4]
    grad_w = grad_b = None
    if need_w:
        flat = torch.ops.inductor_embed.one_hot_linear_backward(
            grad, indices, ctx.num_classes, ctx.offsets, v, need_b, ctx.v_major, ctx.weight_dtype
        )
        w = flat.narrow(0, 0, d * v)
        grad_w = w.view(v, d).t() if ctx.v_major else w.view(d, v)
        if need_b:
            grad_b = flat.narrow(0, d * v, d)
    elif need_b:  # frozen weight, trainable bias: no scatter at all
        grad_b = grad.reshape(-1, d).sum(0, dtype=torch.float32).to(ctx.weight_dtype)
    # The dispatcher drops trailing arguments equal to their defaults before autograd
    # sees the call; needs_input_grad has one entry per argument it kept.
    return ([None] * len(indices), None, None, grad_w, grad_b, None)[: len(ctx.needs_input_grad)]


one_hot_linear.register_autograd(first_order(_backward), setup_context=_setup_context)
