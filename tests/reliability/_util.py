"""Helpers of the reliability tests: run a model eager and compiled on separate copies of
everything it may touch (parameters, buffers, input tensors) and compare all of it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from inductor_embed.graph_pass import run_patterns
from tests.inductor_embed._util import TOL


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _flat(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return []


def check_like_eager(
    model: torch.nn.Module,
    inputs: Sequence[Any],
    *,
    backend: Any = "inductor_embed",
    backward: bool = True,
    tol: dict | None = None,
    **compile_kwargs: Any,
) -> Any:
    """Eager vs compiled on copies: outputs, inputs written in place, buffers and every
    parameter gradient must agree. ``tol`` defaults to exact for fp32 outputs and to the
    parameter's dtype tolerance for gradients. Returns the compiled outputs."""
    compiled_model = copy.deepcopy(model)
    in_e, in_c = _clone(list(inputs)), _clone(list(inputs))
    out_e = model(*in_e)
    out_c = torch.compile(compiled_model, backend=backend, **compile_kwargs)(*in_c)
    flat_e, flat_c = _flat(out_e), _flat(out_c)
    assert len(flat_e) == len(flat_c)
    for c, e in zip(flat_c, flat_e):
        t = tol or ({"rtol": 0, "atol": 0} if e.dtype == torch.float32 else TOL.get(e.dtype, {}))
        torch.testing.assert_close(c, e, **t)
    for c, e in zip(_flat(in_c), _flat(in_e)):  # in-place writes to inputs happened in both
        torch.testing.assert_close(c, e, rtol=0, atol=0)
    state_c = compiled_model.state_dict()
    for name, e in model.state_dict().items():  # parameters and buffers written in place
        torch.testing.assert_close(state_c[name], e, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    if backward:
        diff = [(c, e) for c, e in zip(flat_c, flat_e) if e.requires_grad]
        if diff:
            grads = [torch.randn_like(e) for _, e in diff]
            torch.autograd.backward([e for _, e in diff], grads)
            torch.autograd.backward([c for c, _ in diff], grads)
        named_c = dict(compiled_model.named_parameters())
        for name, p in model.named_parameters():
            q = named_c[name]
            if p.grad is None:
                assert q.grad is None or not q.grad.any(), name
                continue
            t = tol or TOL[p.dtype]
            torch.testing.assert_close(q.grad, p.grad, **t, msg=lambda m, n=name: f"grad of {n}: {m}")
    return out_c


def dynamo_graphs(fn: Callable[..., Any], *inputs: Any) -> list[fx.GraphModule]:
    """Dynamo's graphs of ``fn(*inputs)``, untouched (compiled with a backend that runs them as they are)."""
    graphs: list[fx.GraphModule] = []

    def backend(gm: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(copy.deepcopy(gm))
        return gm.forward

    torch.compile(fn, backend=backend)(*inputs)
    return graphs


def code_before_and_after(gm: fx.GraphModule) -> tuple[str, str]:
    """The graph's code, and its code after run_patterns (on a copy)."""
    after = copy.deepcopy(gm)
    run_patterns(after.graph, apply=True)
    after.recompile()
    return gm.code, after.code
