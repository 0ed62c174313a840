"""Per-table metadata tables: how one kernel source serves any number of tables.

Design (why not one kernel argument per table, and why not one weights buffer)
-----------------------------------------------------------------------------
A Triton kernel takes a fixed list of arguments. Generated per table count, with
arguments per table, a kernel's source, compile time and parameter bytes grow with T
(measured in docs/design.md, "Why not one kernel argument per table"). FBGEMM's TBE avoids that by owning one weights buffer for all
tables plus small per-table offset tensors; we cannot: the tables are the user's own
Parameters, and copying them into one buffer every step would cost their whole size.

So every per-table fact lives in one small int64 tensor, the *meta table*, one row of
``C`` int64 fields per table (a data pointer, a row stride, V, D, a column offset, a
padding row, ...), and the kernels read their row with ``tl.load(meta + t * C + f)``,
turning pointer fields back into typed pointers (``.to(tl.pointer_type(...))``). The
kernel's own arguments are a handful, whatever T.

How the meta table reaches the device (CUDA-graph safe, no host sync)
---------------------------------------------------------------------
The rows are built on the host from real ``data_ptr()``s, so the ops that launch these
kernels are opaque custom ops (``lowering/``): they run with real tensors, and they take
every tensor the kernel reads through a pointer as an argument, so Inductor keeps those
tensors alive until the launch has been issued. The host rows go into a *pinned* buffer
that is cached by content (parameters do not move, and the caching allocator hands a
training loop the same activation addresses step after step), and reach the device with
one asynchronous host-to-device copy into a fresh device tensor. A pinned, non-blocking
copy is legal inside CUDA-graph capture, where it is recorded as a memcpy node that
re-reads the pinned buffer on every replay: buffers used while capturing are therefore
never evicted, and a table first seen during capture (activations move between warm-up
and capture) takes a slice of pinned memory set aside outside capture, since pinned
memory cannot be allocated while capturing (the arena is set aside by the first call
outside a capture, so a first call inside one raises). Two int32 error-flag slots ride at the end of the same copy, so they
arrive zeroed without a fill kernel.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["ERR_SLOTS", "FLOAT_DTYPES", "INDEX_DTYPES", "TRITON_TYPES", "MetaFields", "check", "error_flags", "index_code",
           "interpreter_rows", "launches_on", "load_index", "pack", "pointer", "pow2_range", "variant_vecs",
           "vec_width"]

# Two int32 flags (index out of range, malformed offsets) = one int64 slot at the end.
ERR_SLOTS = 1
# Pinned buffers kept for reuse (by content). Each is a few KB at most for T <= 4,096.
_CACHE_SIZE = 512

# What every launcher accepts: table / output dtypes, and index / offset dtypes.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)

_lock = threading.Lock()
_cache: collections.OrderedDict[tuple, Tensor] = collections.OrderedDict()
# Pinned buffers a captured CUDA graph reads on every replay: never freed or reused.
_graph_owned: dict[tuple, Tensor] = {}


class MetaFields:
    """The fields of one kernel family's meta rows, declared once, in column order.

    ``FIELDS = MetaFields("W_PTR W_STRIDE ...")``; then ``W_PTR, W_STRIDE, ... = FIELDS``
    gives the kernels each field's column as a ``tl.constexpr`` (``tl.load(meta + W_PTR)``),
    ``FIELDS.check(globals())`` verifies at import that those names are the declared columns,
    and ``FIELDS.row(W_PTR=..., ...)`` builds a table's row by field name. So the launcher's
    rows and the kernels' reads cannot drift apart.
    """

    def __init__(self, names: str) -> None:
        self.names = tuple(names.split())
        self.cols = len(self.names)

    def __iter__(self) -> Iterator[tl.constexpr]:
        return (tl.constexpr(i) for i in range(self.cols))

    def check(self, namespace: dict[str, Any]) -> None:
        """Every declared field is bound in ``namespace`` to its own column."""
        wrong = [n for i, n in enumerate(self.names) if getattr(namespace.get(n), "value", None) != i]
        if wrong:
            raise AssertionError(f"meta fields bound to the wrong columns: {wrong}")

    def row(self, **values: int) -> list[int]:
        """One row: a value for every field, by name (a missing or unknown field raises)."""
        try:
            row = [values[n] for n in self.names]
        except KeyError as e:
            raise TypeError(f"meta row: no value for field {e.args[0]}") from None
        if len(values) != self.cols:
            raise TypeError(f"meta row: unknown fields {sorted(set(values) - set(self.names))}")
        return row


def check(cond: Any, msg: str) -> None:
    """A launcher's argument check: ``ValueError(msg)`` unless ``cond`` (before any launch)."""
    if not cond:
        raise ValueError(msg)


_F = TypeVar("_F", bound=Callable[..., Any])


def _tensors(obj: Any) -> Iterator[Tensor]:
    """The tensors in a launcher's arguments: in sequences, dicts and dataclasses
    (``Segment``), at any depth."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def launches_on(param: str) -> Callable[[_F], _F]:
    """Decorate a launcher so that it runs on the CUDA device of its argument ``param``
    (a tensor, or a sequence of tensors: the first one's).

    Triton launches on the *current* device and that device's current stream, and the
    meta table's copy goes there too: an op called with tensors on cuda:1 while cuda:0
    is current would otherwise launch on the wrong device. ATen's kernels enter a device
    guard for the same reason. CPU tensors (the Triton interpreter) need none."""

    def wrap(fn: _F) -> _F:
        pos = list(inspect.signature(fn).parameters).index(param)

        @functools.wraps(fn)
        def launcher(*args: Any, **kwargs: Any) -> Any:
            t = kwargs[param] if param in kwargs else args[pos]
            if isinstance(t, (list, tuple)):
                t = t[0] if t else None
            if t is None:
                return fn(*args, **kwargs)
            # Kernels read every tensor through a raw address: one on another device
            # would be read as garbage (or fault), not moved.
            for x in _tensors((args, kwargs)):
                check(x.device == t.device, f"{fn.__name__}: every tensor must be on {t.device}, got one on {x.device}")
            if t.device.type != "cuda":
                return fn(*args, **kwargs)
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)

        launcher.launch_device_param = param  # type: ignore[attr-defined]
        return launcher  # type: ignore[return-value]

    return wrap


# Elements of one program's tile under the Triton interpreter (CPU tensors).
_INTERPRETER_TILE = 1 << 16


def interpreter_rows(n: int, block_d: int) -> int:
    """Rows per program when the kernel runs in the Triton interpreter (CPU tensors): as
    many as fit a 64K-element tile. The interpreter pays a fixed Python cost per program
    and runs each tile as one numpy operation, so few large programs are fastest there,
    where a GPU wants many small ones."""
    return max(16, min(triton.next_power_of_2(max(int(n), 1)), _INTERPRETER_TILE // max(int(block_d), 1)))


def vec_width(elem_bytes: int, values: Sequence[int], tensors: Sequence[Tensor]) -> int:
    """Elements per 16-byte vector when every row start is aligned to one (all ``values``,
    the widths, row strides and column offsets, are multiples of it, and every tensor
    starts 16-byte aligned), else 1. Kernels turn it into ``tl.multiple_of`` hints, which
    pointers read from a meta table cannot otherwise carry."""
    vec = 16 // elem_bytes
    if all(int(x) % vec == 0 for x in values) and all(t.data_ptr() % 16 == 0 for t in tensors):
        return vec
    return 1


# Triton signature names of FLOAT_DTYPES (for the offline compile's kernel variants).
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def pow2_range(lo: int, hi: int) -> list[int]:
    """The powers of two in ``[lo, hi]`` (both powers of two): the block sizes a launcher's
    rule can pick between its clamps."""
    out, x = [], lo
    while x <= hi:
        out.append(x)
        x *= 2
    return out


def variant_vecs(block_d: int, elem_bytes: int, grad_fp32: bool = False) -> list[int]:
    """Every VEC ``vec_width`` can return for tables of width class ``block_d``: 1, and a
    16-byte vector where a width of that class can be a multiple of it (capped at 4 fp32
    lanes when the kernel also writes an fp32 gradient, as the backward launchers take
    the smaller of both widths)."""
    vec = 16 // elem_bytes
    full = min(vec, 4) if grad_fp32 else vec
    return [1, full] if block_d >= vec and full > 1 else [1]


def pointer(t: Tensor | None) -> int:
    """The address a kernel reads ``t`` at (0 for None, never dereferenced then)."""
    return 0 if t is None else t.data_ptr()


def index_code(t: Tensor | None) -> int:
    """1 for int64 indices, 0 for int32 (or none): kernels branch on it to type a pointer."""
    return int(t is not None and t.dtype == torch.int64)


def pack(rows: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """The meta table of ``rows`` on ``device``: int64 ``[T * C + ERR_SLOTS]``, row t at
    ``t * C``, then the zeroed error flags (viewed as int32 ``[2]`` by ``error_flags``).

    Every row must have the same length C. On the CPU (the Triton interpreter) the table
    is a plain tensor; on CUDA it is one pinned, asynchronous copy (see the module doc).
    """
    flat = [int(x) for row in rows for x in row]
    flat.extend([0] * ERR_SLOTS)
    if device.type != "cuda":
        return torch.tensor(flat, dtype=torch.int64, device=device)
    out = torch.empty(len(flat), dtype=torch.int64, device=device)
    out.copy_(_host_buffer(flat, device), non_blocking=True)
    return out


class _CaptureArena:
    """Pinned memory set aside outside any capture, handed out during CUDA-graph capture,
    where allocating pinned memory is not allowed. Slices are never returned: a captured
    graph re-reads its slice on every replay, for as long as the graph lives."""

    SIZE = 1 << 19  # int64 slots: 4 MiB, ~700 meta tables of 26 bag segments

    def __init__(self) -> None:
        self.buf = torch.empty(self.SIZE, dtype=torch.int64).pin_memory()
        self.used = 0

    def take(self, flat: list[int]) -> Tensor:
        if self.used + len(flat) > self.SIZE:
            raise RuntimeError(
                "inductor_embed: the pinned memory reserved for meta tables inside CUDA-graph capture "
                f"({self.SIZE * 8 >> 20} MiB) is used up; each captured shape takes a few KB, so this "
                "means thousands of recorded graphs")
        out = self.buf[self.used:self.used + len(flat)]
        out.copy_(torch.tensor(flat, dtype=torch.int64))
        self.used += len(flat)
        return out


_arenas: dict[int | None, _CaptureArena] = {}


def _host_buffer(flat: list[int], device: torch.device) -> Tensor:
    """A pinned CPU tensor holding ``flat``, reused by content (see the module doc)."""
    key = (device.index, tuple(flat))
    capturing = torch.cuda.is_current_stream_capturing()
    with _lock:
        host = _graph_owned.get(key)
        if host is not None:
            return host
        host = _cache.get(key)
        if capturing:
            if host is None:
                if device.index not in _arenas:
                    # Pinned memory cannot be allocated while capturing, and the arena is
                    # set aside on the first call outside a capture.
                    raise RuntimeError(
                        f"inductor_embed: the first call of an inductor_embed op on {device} is inside CUDA-graph "
                        "capture; run the model once before capturing (torch.cuda.graph asks for warm-up "
                        "iterations on a side stream, and torch.compile(mode='reduce-overhead') makes them)")
                host = _arenas[device.index].take(flat)
            _cache.pop(key, None)
            _graph_owned[key] = host
            return host
        if device.index not in _arenas:
            _arenas[device.index] = _CaptureArena()
        if host is not None:
            _cache.move_to_end(key)
            return host
        host = torch.tensor(flat, dtype=torch.int64).pin_memory()
        _cache[key] = host
        if len(_cache) > _CACHE_SIZE:
            # The caching host allocator records an event on every copy from a pinned
            # block, so an evicted buffer is not reused while a copy may still read it.
            _cache.popitem(last=False)
        return host


def error_flags(meta: Tensor) -> Tensor:
    """The int32 ``[2]`` error flags at the end of a meta table: [0] an index out of range,
    [1] malformed offsets (a view: the kernels set them, the op asserts on them)."""
    return meta[-ERR_SLOTS:].view(torch.int32)


@triton.jit
def load_index(addr, is64, offs, mask, other):
    """Load ``indices[offs]`` as int64 from the address ``addr`` (an int64 meta field), whose
    storage is int64 when ``is64`` (``index_code``) else int32: one kernel serves tables
    whose index dtypes differ, with a branch on a per-table scalar."""
    if is64 != 0:
        b_idx = tl.load(addr.to(tl.pointer_type(tl.int64)) + offs, mask=mask, other=other)
    else:
        b_idx = tl.load(addr.to(tl.pointer_type(tl.int32)) + offs, mask=mask, other=other).to(tl.int64)
    return b_idx
