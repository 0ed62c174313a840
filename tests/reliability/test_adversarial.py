"""Adversarial cases of the compiled CPU paths (issue 26): a compiled graph run where the
native library is gone, indices changed in place after the forward, non-reentrant
checkpointing around a first call, and malformed offsets. Each compares with eager (or
plain ``torch.compile``) and must raise where eager raises, never give another result."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inductor_embed import config
from inductor_embed.lowering import _cpu_native


class OneHot(nn.Module):
    def __init__(self, multi_hot: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(50, 4)
        self.multi_hot = multi_hot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.one_hot(x, 50)
        return self.lin((h.sum(1) if self.multi_hot else h).float())


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(_cpu_native.lib() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("how", ["switched_off", "cannot_build"])
def test_a_graph_compiled_with_the_native_library_runs_without_it(how, monkeypatch):
    """The one-hot graph compiled with the C kernels holds opaque ops on them; run where the
    library is switched off (``config.patch(cpu_native_kernels=False)`` around the compiled
    model) or cannot be built (a process without a compiler that got this graph from a
    cache), they take the ATen reference: eager's numbers, no AssertionError."""
    torch.manual_seed(0)
    model, eager = OneHot(), OneHot()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    x = torch.randint(0, 50, (16,))
    compiled(x)  # compiled with the library
    if how == "cannot_build":
        monkeypatch.setattr(_cpu_native, "_state", {"lib": None})
        patch = config.patch()
    else:
        patch = config.patch(cpu_native_kernels=False)
    with patch:
        assert _cpu_native.lib() is None
        out = compiled(x)
        out.square().sum().backward()
        bad = x.clone()
        bad[3] = 50
        with pytest.raises(RuntimeError, match="Class values"):
            compiled(bad)
    want = eager(x)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    for got, ref in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(got, ref)


class Lookups(nn.Module):
    """Two lookups in a cat and two bags in a cat: both cat patterns."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Embedding(60, 4), nn.Embedding(60, 4)
        self.c, self.d = nn.EmbeddingBag(60, 4), nn.EmbeddingBag(60, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, 0]), self.b(x[:, 1]), self.c(x), self.d(x)], 1)


@pytest.mark.parametrize("model_cls", [OneHot, Lookups])
def test_non_reentrant_checkpoint_around_a_first_call(model_cls):
    """Issue 26: the compile of a first call inside ``checkpoint(..., use_reentrant=False)``
    ran the fused ops' autograd set-up on fake tensors while the pass computed their meta
    values, under the checkpoint's saved-tensor hooks: the forward saved more tensors than the
    recomputation (CheckpointError). The pass now runs with those hooks off, as AOTAutograd's
    tracing does."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model, eager = model_cls(), model_cls()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    x = torch.randint(0, 50, (8,) if model_cls is OneHot else (8, 3))
    for _ in range(2):  # the first call compiles inside the checkpoint; the second reuses it
        checkpoint(compiled, x, use_reentrant=False).square().sum().backward()
        checkpoint(eager, x, use_reentrant=False).square().sum().backward()
    for got, ref in zip(_grads(model), _grads(eager)):
        torch.testing.assert_close(got, ref)
