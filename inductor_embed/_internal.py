"""The internal choices: how the pass and the ops decide what to take on the CPU, and the
switches that force the other way. Not user configuration (``config`` is); the tests force
these to drive every code path on the CPU, and a benchmark can, to time the branch not
taken. docs/design.md ("How the CPU path is chosen") gives each rule's measurement.

    from inductor_embed import _internal
    with _internal.patch(bag_patterns_on_cpu="all"):
        ...

``patch`` changes a choice for a ``with`` block; the FX graph cache key sees every choice
(``snapshot``), as it sees the config.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

# Which EmbeddingBag lookups the two bag patterns take for CPU tensors. The rule ("fp32"):
# every fp32 lookup, dense or sparse=True gradient, whose fused CPU path is native (one C
# call pools every table; the backward writes dense gradients, or sparse ones' values, in
# one more); fp16 / bf16 ones are left (no faster CPU path: they take ATen's ops both ways).
# "all" takes those too, "none" none.
bag_patterns_on_cpu: str = "fp32"
# Take, for CPU tensors, lookups whose columns are written in place before the cat with a
# value the fused op cannot write itself (a Python number, another dtype, a strided slice,
# columns written twice). The rule (False): left, as the write would go onto the fused
# output, a copy of the whole output on the CPU.
column_writes_on_cpu: bool = False
# Coalesce sparse gradients in the backward for CPU tensors too. The rule (False): eager's
# own form on the CPU, one entry per index (SparseAdam and Adagrad coalesce it themselves;
# SGD never does, and pays for a coalesce it does not need). A GPU always coalesces.
sparse_coalesce_on_cpu: bool = False
# Fewest one-hot columns (summed over a site's fields) worth turning into a gather: 1, as the
# gather reads B x D values where the dense form multiplies a B x V one-hot by the weight.
one_hot_linear_min_classes: int = 1
# Run the Triton kernels for CPU tensors too (with TRITON_INTERPRET=1 the Triton interpreter
# runs them): the tests drive the kernel path through the ops this way.
triton_on_cpu: bool = False
# The lookups' CPU backward, the bags' and one_hot_linear's CPU forward and backward call
# their ops with the host side in C++ (lowering/_cpu_host.py: built on first use; at 26 tables
# 17-32 us a call against the Python ops' 84-214). False: the Python ops (tests of them,
# timing the branch).
cpp_host_on_cpu: bool = True

_CHOICES: tuple[str, ...] = ("bag_patterns_on_cpu", "column_writes_on_cpu", "sparse_coalesce_on_cpu",
                             "one_hot_linear_min_classes", "triton_on_cpu", "cpp_host_on_cpu")
_BAG_RULES = ("fp32", "all", "none")


def _check(name: str, value: Any) -> None:
    if name == "bag_patterns_on_cpu" and value not in _BAG_RULES:
        raise ValueError(f"_internal.bag_patterns_on_cpu={value!r}: expected one of {', '.join(map(repr, _BAG_RULES))}")
    if name == "one_hot_linear_min_classes" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"_internal.one_hot_linear_min_classes={value!r}: expected an integer")


def snapshot() -> dict[str, Any]:
    """Every choice's current value (part of the FX graph cache key)."""
    module = sys.modules[__name__]
    return {name: getattr(module, name) for name in _CHOICES}


@contextlib.contextmanager
def patch(**changes: Any) -> Iterator[None]:
    """Force choices for the duration of a ``with`` block, then restore them. Unknown names
    raise AttributeError, a value a choice cannot take ValueError."""
    from inductor_embed.config import patch_module

    for name, value in changes.items():
        if name in _CHOICES:
            _check(name, value)
    with patch_module(sys.modules[__name__], _CHOICES, changes):
        yield
