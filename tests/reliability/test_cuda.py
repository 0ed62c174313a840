"""CUDA only: every pattern compiled for real (Triton kernels, not the interpreter), in the
ways users run it: fp32 and bf16, int32 and int64 indices, a dynamic batch, and
``mode="reduce-overhead"`` (CUDA graphs); plus the launch count of each fused op and an
out-of-range index raising through the device assert. ``scripts/gpu_check.sh`` runs this
file on a lent GPU; without CUDA every test here skips (the CPU suite covers the same
ops through the Triton interpreter and the ATen reference)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests._util import assert_device_assert
from tests.inductor_embed._util import TOL, rewrites

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = "cuda"


class Cat(nn.Module):
    """26 tables (widths 1..8 and 64), lookups + cat: multi_embedding_cat."""

    def __init__(self, t: int = 26, dtype=torch.float32) -> None:
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(50 + k, 64 if k % 5 == 0 else 1 + k % 8, dtype=dtype) for k in range(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(x[:, k]) for k, e in enumerate(self.emb)], dim=1)


class OneHot(nn.Module):
    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 50, 32, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh = torch.cat([F.one_hot(x[:, k], 50) for k in range(3)], 1).to(self.lin.weight.dtype)
        return self.lin(oh)


class Bags(nn.Module):
    """DLRM-style: 8 EmbeddingBags of fixed bags (2-D input) + cat: multi_embedding_bag."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(60 + k, 16, mode=("sum", "mean", "max")[k % 3], dtype=dtype)
                                  for k in range(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x[:, k]) for k, b in enumerate(self.bags)], dim=1)


class Tied(nn.Module):
    """A tied Embedding / EmbeddingBag: both modules share one weight."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16, dtype=dtype)
        self.bag = nn.EmbeddingBag(40, 16, mode="mean", dtype=dtype)
        self.bag.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x[:, 0]) + self.bag(x)


def _inputs(name: str, batch: int, idt: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if name == "cat":
        return torch.randint(0, 50, (batch, 26), generator=g).to(DEV, idt)
    if name == "onehot":
        return torch.randint(0, 50, (batch, 3), generator=g).to(DEV, torch.int64)  # one_hot needs int64
    if name == "bags":
        return torch.randint(0, 60, (batch, 8, 5), generator=g).to(DEV, idt)
    return torch.randint(0, 40, (batch, 6), generator=g).to(DEV, idt)


MODELS = {"cat": ("multi_embedding_cat", Cat), "onehot": ("one_hot_linear", OneHot),
          "bags": ("multi_embedding_bag", Bags), "tied": ("tied_embedding_bag", Tied)}


@pytest.mark.parametrize("idt", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pattern_matches_eager_with_dynamic_batch(name, dtype, idt):
    """Forward and every gradient against eager in fp32 on the same (rounded) weights: the
    kernels accumulate half types in fp32, and max mode then picks the same rows. Two batch
    sizes, no recompile."""
    pattern, cls = MODELS[name]
    model = cls().to(DEV, dtype)
    ref_model = copy.deepcopy(model).float()
    compiled = torch.compile(model, backend="inductor_embed", dynamic=True)
    tol = TOL[dtype]
    for batch in (64, 96):
        with torch._dynamo.config.patch(error_on_recompile=batch != 64):
            x = _inputs(name, batch, idt)
            out, ref = compiled(x), ref_model(x)
        torch.testing.assert_close(out.float(), ref, **tol)
        grad = torch.randn_like(ref)
        out.backward(grad.to(dtype))
        ref.backward(grad)
        for (n, p), q in zip(ref_model.named_parameters(), model.parameters()):
            torch.testing.assert_close(q.grad.float(), p.grad, **tol, msg=lambda m, n=n: f"grad of {n}: {m}")
            p.grad = q.grad = None
    assert rewrites(pattern) >= 1


@pytest.mark.parametrize("name", list(MODELS))
def test_pattern_under_cuda_graphs(name):
    pattern, cls = MODELS[name]
    model = cls().to(DEV)
    compiled = torch.compile(model, backend="inductor_embed", mode="reduce-overhead")
    for step, batch in enumerate((32, 32, 32, 48)):  # warm-up, record, replays; then a new shape
        x = _inputs(name, batch, torch.int64)
        out = compiled(x).clone()
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5, msg=f"step {step}")
    assert rewrites(pattern) >= 1


def _kernel_names(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("tables", [10, 300])
def test_launches_do_not_grow_with_tables(tables):
    """Forward <= 2 kernels (gather + assert), backward <= 4, for the fused op alone."""
    ws = [torch.randn(20, 1 + k % 8, device=DEV, requires_grad=True) for k in range(tables)]
    idx = [torch.randint(0, 20, (128,), device=DEV) for _ in range(tables)]
    op = torch.ops.inductor_embed.multi_embedding
    out = op(ws, idx, [-1] * tables, [False] * tables)  # warm: compile the kernels
    out.backward(torch.ones_like(out))
    fwd = _kernel_names(lambda: op(ws, idx, [-1] * tables, [False] * tables))
    out = op(ws, idx, [-1] * tables, [False] * tables)
    grad = torch.ones_like(out)
    for w in ws:
        w.grad = None  # else AccumulateGrad adds into each table's .grad: one kernel per table
    bwd = _kernel_names(lambda: out.backward(grad))
    # The eager op: the meta table's copy, the gather, and eq + assert on the flag (which
    # Inductor fuses into one kernel).
    assert len(fwd) <= 4, fwd
    assert sum("multi_embedding" in n for n in fwd) == 1, fwd
    assert sum("multi_embedding" in n for n in bwd) == 1 and len(bwd) <= 4 + 1, bwd  # + autograd's grad accumulate


def test_out_of_range_index_raises_device_assert():
    code = (
        "import torch.nn as nn\n"
        "m = nn.ModuleList(nn.Embedding(7, 4) for _ in range(3)).cuda()\n"
        "f = torch.compile(lambda x: torch.cat([e(x[:, k]) for k, e in enumerate(m)], 1), backend='inductor_embed')\n"
        "x = torch.randint(0, 7, (16, 3), device='cuda'); x[5, 1] = 7\n"
        "f(x)"
    )
    assert_device_assert(code, "out of range")
