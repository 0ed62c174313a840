"""What every op module of ``lowering/`` shares: the device dispatch and small checks."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from inductor_embed import _compat, _internal

# The table / weight dtypes every op accepts.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def use_triton(t: Tensor) -> bool:
    """Whether an op on ``t``'s device runs the Triton kernels: always on CUDA, on the CPU
    only with ``_internal.triton_on_cpu`` (the Triton interpreter, for tests)."""
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and _internal.triton_on_cpu


def coalesce_sparse_grads(t: Tensor) -> bool:
    """Whether the backward coalesces the sparse gradients of tables on ``t``'s device (read when
    the backward is traced): always where the kernels run, on the CPU only with
    ``_internal.sparse_coalesce_on_cpu`` (else a CPU table's gradient is eager's own form)."""
    return use_triton(t) or _internal.sparse_coalesce_on_cpu


def column_stride_1(t: Tensor) -> Tensor:
    """``t`` itself when its last dimension is contiguous (what the kernels read), else a
    contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


# The library the twin ops are defined in (the public ops are ``torch.library.custom_op``s).
_TWINS = torch.library.Library("inductor_embed", "FRAGMENT")


class TwinOp:
    """An op defined straight on the dispatcher: its function is the kernel for every device
    (``CompositeExplicitAutograd``), with a fake for tracing and no autograd formula. A
    ``custom_op`` adds an autograd wrapper and a TorchDynamo guard around each call, ~35 us
    of Python a call on the 2-core machine; a twin runs inside a compiled graph's forward or
    backward (or inside its public op's autograd formula), where neither is needed."""

    def __init__(self, name: str, schema: str, fn: Callable) -> None:
        ns, self._op = name.split("::")
        assert ns == "inductor_embed", name
        self._name = name
        _TWINS.define(f"{self._op}{schema}")
        _TWINS.impl(self._op, fn, "CompositeExplicitAutograd")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def register_fake(self, fn: Callable) -> Callable:
        torch.library.register_fake(self._name, fn, lib=_TWINS)
        return fn

    def __call__(self, *args):
        return getattr(torch.ops.inductor_embed, self._op).default(*args)


def first_order(backward: Callable) -> Callable:
    """An op's backward formula that refuses to be differentiated itself (``create_graph=True``
    with a gradient that requires grad): the twins it calls have no autograd formula, and
    the default autograd fallback would only warn and return no gradient."""

    @functools.wraps(backward)
    def run(ctx, *grads):
        if torch.is_grad_enabled() and any(isinstance(g, Tensor) and g.requires_grad for g in grads):
            raise RuntimeError("inductor_embed: a double backward through this op is not supported (its backward "
                               "is not differentiable); run the model without torch.compile's inductor_embed "
                               "backend for higher-order gradients")
        return backward(ctx, *grads)

    return run


def twin_op(name: str, like: str, returns: str, extra: str = "",
            drop: tuple[str, ...] = ()) -> Callable[[Callable], TwinOp]:
    """Decorator: define a function as the op ``name`` (a ``TwinOp``, mutating nothing) whose
    arguments are those of the op ``like`` (its schema's) less the ones named in ``drop``,
    then ``extra`` (schema syntax), and whose result is ``returns`` (schema syntax:
    ``"Tensor[]"``). A twin of an op (its CPU path, its Triton launch) so takes the
    arguments its op declares once, by annotations; the function receives them
    positionally."""
    schema = _compat.op_schema(like)
    args = schema[schema.index("(") + 1:schema.rindex(") -> ")]
    if drop:  # an argument is "<type> <name>[=default]"; types have no top-level commas
        args = ", ".join(a for a in args.split(", ") if a.split("=")[0].split()[-1] not in drop)
    args = f"{args}, {extra}" if extra else args
    return lambda fn: TwinOp(name, f"({args}) -> {returns}", fn)
