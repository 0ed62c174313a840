"""Shared helpers of the end-to-end tests: compile, compare with eager, read the rewritten graph."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch._dynamo.utils import counters

from inductor_embed import _internal
from inductor_embed.graph_pass import run_patterns

TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}


def assert_same_grad(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, name: str,
                     flagged: bool = False) -> None:
    """A fused model's gradient vs eager's. Sparse ones: on the CPU by default
    (``_internal.sparse_coalesce_on_cpu`` off) eager's own form, one entry per index (where two
    lookups add up, their entries may come in another order), then compared coalesced;
    otherwise coalesced (sorted unique rows) and, with ``flagged``, flagged so in param.grad
    (autograd's accumulation drops the flag; the plugin's post-accumulate hook sets it again,
    so that the optimizer's coalesce() is free). Either way equal to eager's after coalesce()."""
    assert got.layout == want.layout, name
    if not want.is_sparse:
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{name}: {m}")
        return
    if not _internal.sparse_coalesce_on_cpu and got.device.type == "cpu" and not _internal.triton_on_cpu:
        assert not got.is_coalesced() and got._nnz() == want._nnz(), f"{name}: not eager's form"
        got = got.coalesce()
    want = want.coalesce()
    rows = got._indices()
    assert rows.shape[0] == 1 and bool((rows[0, 1:] > rows[0, :-1]).all()), f"{name}: rows not sorted unique"
    assert not flagged or got.is_coalesced(), f"{name}: not flagged coalesced"
    assert torch.equal(rows, want.indices()), name
    torch.testing.assert_close(got._values(), want.values(), **TOL[dtype], msg=lambda m: f"{name}: {m}")


def rewrites(pattern: str = "multi_embedding_cat") -> int:
    return counters["inductor_embed"][pattern]


def skips(pattern: str = "multi_embedding_cat") -> int:
    return counters["inductor_embed"][f"{pattern}_skipped"]


def compare_with_eager(
    model: torch.nn.Module,
    inputs: Sequence[Any],
    *,
    backend: Any = "inductor_embed",
    dtype: torch.dtype = torch.float32,
    exact_forward: bool = True,
    **compile_kwargs: Any,
) -> torch.Tensor:
    """Run eager and compiled forward+backward; assert outputs and every gradient agree.

    The compiled model is a deep copy, so the two runs share no .grad state.
    """
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=backend, **compile_kwargs)
    out_e = model(*inputs)
    out_c = compiled(*inputs)
    tol = {"rtol": 0, "atol": 0} if exact_forward and dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(out_c, out_e, **tol)
    grad = torch.randn_like(out_e)
    out_e.backward(grad)
    out_c.backward(grad)
    named_c = dict(compiled_model.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        q = named_c[name]
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        torch.testing.assert_close(q.grad, p.grad, **TOL[p.dtype], msg=lambda m, n=name: f"grad of {n}: {m}")
        checked += 1
    assert checked or not any(p.requires_grad for p in model.parameters())
    return out_c


def rewritten_code(fn: Callable[..., Any], *inputs: Any) -> str:
    """The Python code of Dynamo's graph after inductor_embed's pass (what Inductor receives)."""
    codes: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        gm = copy.deepcopy(gm)
        run_patterns(gm.graph, apply=True)
        gm.recompile()
        # Dynamo's lines binding each input to a local (``l_x_ = L_x_``) say nothing about
        # the rewrite: left out, so the pins show what the pass did.
        code = gm.code.strip().splitlines()
        codes.append("\n".join(ln for ln in code if not re.fullmatch(r"\s+l_\w+ = L_\w+", ln)))
        return gm.forward

    torch.compile(fn, backend=backend)(*inputs)
    return "\n\n".join(codes)
