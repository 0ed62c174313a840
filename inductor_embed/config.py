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
import warnings
from collections.abc import Iterator
from typing import Any

# --- master switch -------------------------------------------------------------
# False turns every rewrite off (the backend then behaves exactly like "inductor").
# INDUCTOR_EMBED_ENABLED=0 is the environment's kill switch.
enabled: bool = True

# --- one switch per pattern (names as in README.md) --------------------------------
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
# changes, to the native row-sum kernel.
independent_lookups: bool = True
# On the CPU, rows read by an index tensor (x[idx], x.index_select(0, idx) of a 2-D tensor
# that needs a gradient: a graph network's messages, a table indexed directly) become
# lookups for the patterns above, and sums of rows (index_add(0, idx, src), index_put with
# accumulate=True, PyG's scatter_add of an expanded row index; into a fresh zeros or
# functional) one ATen call: Inductor's CPU scatter-add is per-element atomics.
index_rows: bool = True

# Keep the dense CPU gradients of the fused ops' backward (buffers of 2 MiB or more) and
# reuse them in the next step once nothing references them, up to this many MiB; 0 turns
# it off. Freed gradients of tens of MB go back to the kernel (glibc's malloc), so each
# step would fault them in again, which costs several times zeroing them in place
# (docs/design.md, "Reused gradient buffers"). The buffers stay allocated between steps
# (inductor_embed.empty_cache() frees the idle ones). Read when the backward runs.
cpu_grad_cache_mb: int = 4096

# Build the CPU's native kernels (plain C, compiled on first use with the system's C
# compiler and cached per user, lowering/_cpu_native.py): the fp32 backward of lookups and
# bags, max-mode bags both ways and one_hot_linear's fp32 forward and backward, bit-equal
# to eager's. False, or no compiler (logged once), uses ATen ops instead (slower), and
# Inductor's own loops for one_hot_linear (a slower first compile). The escape hatch where
# the build or the kernels misbehave. Read when a graph is compiled (which code
# one_hot_linear's graph holds) and again whenever the ops run: a graph compiled (or cached)
# with the kernels runs ATen's ops where they are off or cannot be built.
cpu_native_kernels: bool = True

# --- pattern tuning ---------------------------------------------------------------
# Fewest lookups in one cat worth fusing. Below it the cat is left alone (logged):
# with one lookup there is nothing to save.
min_tables: int = 2

_FIELDS: tuple[str, ...] = (
    "enabled",
    "multi_embedding_cat",
    "multi_embedding_sum",
    "one_hot_linear",
    "multi_embedding_bag",
    "tied_embedding_bag",
    "independent_lookups",
    "index_rows",
    "cpu_grad_cache_mb",
    "cpu_native_kernels",
    "min_tables",
)
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


# Integer fields and the least value each takes (min_tables below 2 counts as 2: any
# integer is meaningful there).
_INT_MIN: dict[str, int | None] = {"cpu_grad_cache_mb": 0, "min_tables": None}


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
    return type(default)(raw)


# The package's other environment variables (not config fields).
_OTHER_VARS = {"INDUCTOR_EMBED_CACHE_DIR", "INDUCTOR_EMBED_ENV_CACHE"}


def _read_env() -> None:
    module = sys.modules[__name__]
    for name in _FIELDS:
        raw = os.environ.get(f"INDUCTOR_EMBED_{name.upper()}")
        if raw is not None:
            setattr(module, name, _parse(name, raw, getattr(module, name)))
    known = {f"INDUCTOR_EMBED_{name.upper()}" for name in _FIELDS} | _OTHER_VARS
    for var in sorted(k for k in os.environ if k.startswith("INDUCTOR_EMBED_") and k not in known):
        # A misspelt field, or one that is no longer user configuration (the CPU rules:
        # docs/design.md, "How the CPU path is chosen"): say so rather than ignore it.
        warnings.warn(f"{var} is not an inductor_embed config field and is ignored; the fields are "
                      f"{', '.join(_FIELDS)}", stacklevel=2)


def snapshot() -> dict[str, Any]:
    """Every field's current value (what the FX graph cache key sees)."""
    module = sys.modules[__name__]
    return {name: getattr(module, name) for name in _FIELDS}


@contextlib.contextmanager
def patch(**changes: Any) -> Iterator[None]:
    """Set config fields for the duration of a ``with`` block, then restore them. Unknown
    names raise AttributeError; an integer field given a non-integer or a value below its
    least (``cpu_grad_cache_mb`` < 0) raises ValueError."""
    for name, value in changes.items():
        _check(name, value, name)
    with patch_module(sys.modules[__name__], _FIELDS, changes):
        yield


@contextlib.contextmanager
def patch_module(module: Any, fields: tuple[str, ...], changes: dict[str, Any]) -> Iterator[None]:
    """Set ``changes`` (each one of ``fields``) on ``module`` for a ``with`` block, then restore
    them; an unknown name raises AttributeError."""
    unknown = set(changes) - set(fields)
    if unknown:
        raise AttributeError(f"{module.__name__} has no field(s) {sorted(unknown)}; fields: {list(fields)}")
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
