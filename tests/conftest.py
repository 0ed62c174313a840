"""Test-wide set-up. On a CPU-only machine the Triton kernels run in the Triton
interpreter, which must be switched on before any kernel is imported; on a GPU
machine real Triton compilation is used."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """One compile per case: no graph, guard or counter leaks from one test into the next."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # Inductor's FX graph and AOTAutograd caches outlive a test run: a hit skips the pre-grad
    # pass that enable() installs, and a test's counters would then depend on earlier runs.
    # Its C++ kernel cache stays on: a hit only skips the C compiler's build of an identical
    # kernel source (force_disable_caches would give every compile a fresh directory, and
    # the suite spent most of its time in gcc rebuilding the same small kernels).
    # On the CPU the EmbeddingBag patterns take only fp32 lookups (the CPU rule,
    # inductor_embed/_internal.py); the tests check the fused op on the CPU in every form,
    # so they force all (test_multi_embedding_bag.py::test_cpu_default_takes_fp32_bags
    # checks the rule). Likewise column writes before a cat
    # (test_column_writes_left_on_the_cpu_by_default) and coalesced sparse gradients
    # (test_cpu_default_sparse_gradient_is_eagers).
    from inductor_embed import _internal

    no_graph_caches = {"fx_graph_cache": False, "fx_graph_remote_cache": False, "autotune_local_cache": False}
    with torch._inductor.config.patch(no_graph_caches), torch._functorch.config.patch(
            enable_autograd_cache=False), _internal.patch(
            bag_patterns_on_cpu="all", column_writes_on_cpu=True, sparse_coalesce_on_cpu=True):
        yield
    torch._dynamo.reset()


@pytest.fixture(params=["aten", "triton"])
def path(request):
    """The device whose code path an op runs: the ATen reference on the CPU, or the Triton
    kernels (on CUDA when there is a GPU, else on CPU tensors through the Triton interpreter)."""
    import inductor_embed

    if request.param == "aten":
        yield "cpu"
    elif torch.cuda.is_available():
        yield "cuda"
    else:
        with inductor_embed._internal.patch(triton_on_cpu=True):
            yield "cpu"
