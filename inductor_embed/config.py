"""inductor_embed's configuration: one module, read at compile time.

Every field can be overridden from the environment as ``INDUCTOR_EMBED_<FIELD>``
(upper case; booleans accept 1/0/true/false/on/off/yes/no). The overrides are read
once, here, at import; a value the field cannot take raises a ValueError naming the
variable. ``patch(**fields)`` changes fields for a ``with`` block (or as a
decorator). The FX graph cache sees every field: the pass's ``uuid()`` hashes
``snapshot()``, so changing a field changes the cache key.

    import inductor_embed
    with inductor_embed.config.patch(multi_embedding_cat=False):
        torch.compile(model, backend="inductor_embed")(x)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

# --- master switch -------------------------------------------------------------
# False turns every rewrite off (the backend then behaves exactly like "inductor").
# INDUCTOR_EMBED_ENABLED=0 is the environment's kill switch.
enabled: bool = True

# --- one switch per pattern (names as in ARCHITECTURE.md) -------------------------
# N embedding lookups -> torch.cat/concat/concatenate/stack -> one multi-table gather
# (also [B, 1] field slices cat along dim 1, a per-table bias added before the cat,
# which moves after the gather as one add, and columns of a lookup written in place
# before the cat, o[:, :k] = shared, which move onto the gather's columns).
multi_embedding_cat: bool = True
# A sum of N embedding lookups of one width (BERT's word + position + token type, GPT's
# wte + wpe, a loop of h = h + emb_i(x[:, i])), index shapes broadcast -> one op: the forward
# stays Inductor's fused gathers + adds, the backward of every table is one launch on the GPU.
multi_embedding_sum: bool = True
# F.linear / matmul / mm / @ on F.one_hot(idx, n).<float cast> (also a cat of several
# one-hot fields, multi-hot one_hot(...).sum(dim), and a one-hot times a per-class scale r
# broadcast over the rows, and an ensemble's per-member copies of one-hot features into
# einsum / bmm / baddbmm) -> a gather of weight columns (times the gathered r).
# The one deviation from eager: an inf/NaN weight makes NaN (0 * inf) on every row of
# the dense matmul, but reaches only the rows that select its column in the gather;
# set False to keep the dense form.
one_hot_linear: bool = True
# N F.embedding_bag / nn.EmbeddingBag lookups -> cat/stack (DLRM, torchrec's
# EmbeddingBagCollection) -> one table-batched pooled op (sum/mean/max, offsets or 2-D
# input, per_sample_weights, padding_idx, sparse=True gradients for sum/mean).
multi_embedding_bag: bool = True
# An F.embedding and an F.embedding_bag reading one weight -> one op reading the weight
# once for both, and one backward writing its one gradient.
tied_embedding_bag: bool = True
# F.embedding lookups that no cat takes (two-tower and matrix-factorisation models: user
# and item embeddings and per-id biases scored by a dot product) -> one multi-table
# gather per dtype, device and index shape; each lookup reads a column slice of it. On the
# CPU too: the wide tables' gradients come from one backward call into reused buffers. A
# lone fp32 lookup on the CPU (no other of its kind) is taken alone: only its backward
# changes, to the native row-sum kernel (bench/results/cpu/cpu-quick.md, mf and single_table).
independent_lookups: bool = True

# Which EmbeddingBag lookups the two bag patterns (multi_embedding_bag, tied_embedding_bag)
# take for CPU tensors: "fp32_dense" (default) every fp32 lookup with a dense gradient, whose
# fused CPU path is faster than eager's: sum/mean backward by a C kernel (ATen's additions in
# ATen's order, see cpu_native_kernels) into reused gradient buffers (cpu-quick 1.33x / 2.41x
# torch.compile for 8 / 26 tables, 1.07x / 1.96x for a tied pair), max mode by C kernels both
# ways (ATen's is a serial loop: cpu-quick 3.75x / 2.85x torch.compile); "all" sparse=True and
# half tables too (a sparse gradient is a copy of each index's gradient row, as eager's:
# nothing to save, and the op's host cost made cpu-quick's sparse rows 0.75-0.80x
# torch.compile); "none" none. True / False mean "all" / "none". Left lookups are logged with
# the reason.
bag_patterns_on_cpu: str = "fp32_dense"
# Also take, for CPU tensors, lookups whose columns are written in place before the cat with
# a value the fused op cannot write itself (a Python number, another dtype, a strided slice,
# columns written twice): multi_embedding_cat then moves the write onto the fused output,
# which on the CPU copies the whole output (cpu-quick "shared" measured 0.90-0.92x
# torch.compile that way). Off by default: such lookups are left, and the log says why. The
# writes the op takes (``o[:, :k] = shared``, a tensor of the table's dtype) are taken on
# every device (cpu-quick "shared": 1.07x / 1.28x torch.compile).
column_writes_on_cpu: bool = False

# Coalesce sparse gradients (sparse=True tables) in the backward for CPU tensors too. Off by
# default: on the CPU the coalesce in the backward is ATen's, the same sort and sum that
# SparseAdam and Adagrad run on eager's uncoalesced gradient, so it mostly moves that work
# (SparseAdam 1.05x torch.compile coalesced, 1.01x not), while SGD, which never coalesces,
# pays for it (0.91x coalesced, 1.14x not; paired runs, 4 x 2,000,000 x 64, batch 4,096).
# Off, a CPU table's gradient is eager's own (one entry per index, padding left out). On a
# GPU the gradients are always coalesced (one sort and one launch for all tables).
sparse_coalesce_on_cpu: bool = False

# Keep the dense CPU gradients of the fused ops' backward (buffers of 1 MiB or more) and
# reuse them in the next step once nothing references them, up to this many MiB; 0 turns
# it off. Freed gradients of tens of MB go back to the kernel (glibc's malloc), so each
# step would fault them in again: 26 x 100,000 x 64 fp32 gradients cost 150-175 ms of page
# faults a step on the 2-core machine, against ~22 ms to zero them in place. The buffers
# stay allocated between steps (inductor_embed.empty_cache() frees the idle ones). Read
# when the backward runs.
cpu_grad_cache_mb: int = 4096

# Build the CPU's native kernels (plain C, compiled on first use with the system's C
# compiler in ~0.3 s and cached per user, lowering/_cpu_native.py). The EmbeddingBag
# backward's writes every table's dense gradient in one call, bit-equal to eager's; False,
# or no compiler (logged once), uses ATen ops: a zero fill, FBGEMM's pooling and index_put_
# (slower: the 26-table bag step measured 1.4x torch.compile that way, 2.0-2.5x with the
# kernel, paired in one process). one_hot_linear's fp32 forward and backward run as opaque
# ops on them, so Inductor builds no C++ for the pattern (a first compile 0.2 s, against
# 1.1-1.3 s for its own gather and scatter loops); False compiles those loops. Read when a
# graph is compiled (which code one_hot_linear's graph holds) and again whenever the ops run:
# a graph compiled (or cached) with the kernels runs ATen's ops where they are off or cannot
# be built.
cpu_native_kernels: bool = True

# --- pattern tuning ---------------------------------------------------------------
# Fewest lookups in one cat worth fusing. Below it the cat is left alone (logged):
# with one lookup there is nothing to save.
min_tables: int = 2
# Fewest one-hot columns (summed over a site's fields) worth turning into a gather.
# 1 = always: the gather does B x D loads where the dense form reads a B x V one-hot
# and does B x V x D multiply-adds, so it does less work for every V >= 1, and it
# never materialises the one-hot. Raise it if a measurement on your device shows the
# dense GEMM winning for tiny V (no GPU measurement backs a higher default yet).
one_hot_linear_min_classes: int = 1

# --- kernels ----------------------------------------------------------------------
# Run the Triton kernels for CPU tensors too (only meaningful with TRITON_INTERPRET=1,
# which runs them in the Triton interpreter). Used by tests to drive the kernel path
# through the ops; off by default because the CPU's reference path is far faster.
triton_on_cpu: bool = False

_FIELDS: tuple[str, ...] = (
    "enabled",
    "multi_embedding_cat",
    "multi_embedding_sum",
    "one_hot_linear",
    "multi_embedding_bag",
    "tied_embedding_bag",
    "independent_lookups",
    "bag_patterns_on_cpu",
    "column_writes_on_cpu",
    "sparse_coalesce_on_cpu",
    "cpu_grad_cache_mb",
    "cpu_native_kernels",
    "min_tables",
    "one_hot_linear_min_classes",
    "triton_on_cpu",
)
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


_CPU_BAG_POLICIES = ("fp32_dense", "all", "none")


def cpu_bag_policy() -> str:
    """``bag_patterns_on_cpu`` as one of "fp32_dense", "all", "none" (True / False, and the
    environment's 1 / 0, mean "all" / "none")."""
    value = bag_patterns_on_cpu
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        value = value.strip().lower() in _TRUE
    if value is True or value is False:
        return "all" if value else "none"
    if value not in _CPU_BAG_POLICIES:
        raise ValueError(f"inductor_embed.config.bag_patterns_on_cpu={value!r}: expected one of "
                         f"{', '.join(map(repr, _CPU_BAG_POLICIES))} (or True / False)")
    return value


# Integer fields and the least value each takes (min_tables below 2 counts as 2, and
# one_hot_linear_min_classes below 1 as 1: any integer is meaningful there).
_INT_MIN: dict[str, int | None] = {"cpu_grad_cache_mb": 0, "min_tables": None, "one_hot_linear_min_classes": None}


def _check(name: str, value: Any, shown: str, raw: str | None = None) -> None:
    """Raise a ValueError, naming ``shown`` (the field or the environment variable) and the value
    (``raw``: the variable's text), where an integer field gets a value that is not an integer
    or is below its least value."""
    if name not in _INT_MIN:
        return
    least = _INT_MIN[name]
    if not isinstance(value, int) or isinstance(value, bool) or (least is not None and value < least):
        want = "an integer" if least is None else f"an integer >= {least}"
        raise ValueError(f"{shown}={value if raw is None else raw!r}: expected {want}")


def _parse(name: str, raw: str, default: Any) -> Any:
    """``INDUCTOR_EMBED_<NAME>``'s text as the field's type; a ValueError naming the variable
    where it is not one."""
    var = f"INDUCTOR_EMBED_{name.upper()}"
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{var}={raw!r}: expected one of 1/0/true/false/on/off/yes/no")
    if isinstance(default, int):
        try:
            value = int(raw.strip())
        except ValueError:
            least = _INT_MIN.get(name)
            raise ValueError(f"{var}={raw!r}: expected an integer"
                             + ("" if least is None else f" >= {least}")) from None
        _check(name, value, var, raw)
        return value
    if name == "bag_patterns_on_cpu":
        low = raw.strip().lower()
        if low not in _TRUE | _FALSE | set(_CPU_BAG_POLICIES):
            raise ValueError(f"{var}={raw!r}: expected one of {', '.join(_CPU_BAG_POLICIES)} (or 1/0)")
        return low
    return type(default)(raw)


def _read_env() -> None:
    module = sys.modules[__name__]
    for name in _FIELDS:
        raw = os.environ.get(f"INDUCTOR_EMBED_{name.upper()}")
        if raw is not None:
            setattr(module, name, _parse(name, raw, getattr(module, name)))


def snapshot() -> dict[str, Any]:
    """Every field's current value (what the FX graph cache key sees)."""
    module = sys.modules[__name__]
    return {name: getattr(module, name) for name in _FIELDS}


@contextlib.contextmanager
def patch(**changes: Any) -> Iterator[None]:
    """Set config fields for the duration of a ``with`` block, then restore them. Unknown
    names raise AttributeError; an integer field given a non-integer or a value below its
    least (``cpu_grad_cache_mb`` < 0) raises ValueError."""
    module = sys.modules[__name__]
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise AttributeError(f"inductor_embed.config has no field(s) {sorted(unknown)}; fields: {list(_FIELDS)}")
    for name, value in changes.items():
        _check(name, value, name)
    old = {name: getattr(module, name) for name in changes}
    for name, value in changes.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(module, name, value)


def pattern_enabled(pattern: str) -> bool:
    """Whether the master switch and this pattern's own switch are both on."""
    return bool(enabled and getattr(sys.modules[__name__], pattern))


_read_env()
