"""One argument checker per op family, which every op of the family runs first: the public op,
its fake impl, its CPU body and its Triton launch, and its backward's.

A checker raises eager's kinds of errors (``RuntimeError``, ``IndexError`` for an index out of
range) naming the op and the problem, before any native or Triton code touches memory:

- always (symbolic sizes too: fake impls run them): argument counts, ranks, shapes that must
  agree (a gradient's rows and the indices', a bag count and the gradient's rows, a width sum
  and the gradient's columns), dtypes, devices, column ranges, padding rows, sizes >= 0;
- with ``values=True`` (the bodies that run eagerly on real tensors outside the kernel path:
  the CPU twins, and the backward ops' CPU path) where the tensors can be read on the host
  (plain CPU tensors): indices in range, offsets well formed (``offsets[0] == 0``,
  non-decreasing, ``offsets[-1] <= nnz``, compared in int64 whatever the index dtype, as
  eager promotes them), the max-mode rows saved for the backward. One ``aminmax`` per index
  tensor. On the kernel path the forward kernels' error flags check indices and offsets
  (device-side and asynchronous on CUDA, as eager's asserts: a host read would cost a sync
  and O(T) launches), and the backward kernels trust the indices the forward checked, as
  eager's CUDA backward does.

Decreasing offsets raise on every path and in every mode (the kernels always did; eager's
CPU kernels raise for most and accept some: docs/reliability.md).

Which checker an op runs:

=================================================  ======================================
op (and its twins)                                  checker
=================================================  ======================================
multi_embedding, multi_embedding_triton             ``multi_embedding``
multi_embedding_backward(_cpu), _sparse_backward     ``multi_embedding_backward``
multi_embedding_sum                                 ``multi_embedding_sum``
multi_embedding_sum_backward                        ``multi_embedding_sum_backward``
coalesce_rows                                       ``coalesce_rows``
one_hot_linear, _cpu, _triton                       ``one_hot_linear``
one_hot_linear_backward, _cpu, _triton              ``one_hot_linear_backward``
multi_embedding_bag, _cpu, _triton                  ``multi_embedding_bag``
multi_embedding_bag_backward(_cpu)                  ``multi_embedding_bag_backward``
tied_embedding_bag, _triton                         ``tied_embedding_bag``
tied_embedding_bag_backward                         ``tied_embedding_bag_backward``
=================================================  ======================================

One module, though long: every op's checks in one place, so that an op's fake, CPU and
Triton bodies (and the ops sharing a family) raise the same errors from the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inductor_embed.lowering import _cpu_native
from inductor_embed.lowering._common import FLOAT_DTYPES

INDEX_DTYPES = (torch.int32, torch.int64)
SUM, MEAN, MAX = 0, 1, 2

# The messages the ops' other paths (the kernels' flags, the ATen reference) raise too.
EMBEDDING_OOB = ("inductor_embed.multi_embedding: index out of range (expected 0 <= index < num_embeddings of its "
                 "table)")
BAG_OOB = "inductor_embed.multi_embedding_bag: index out of range (expected 0 <= index < num_embeddings of its table)"
OFFSETS = ("inductor_embed.multi_embedding_bag: malformed offsets (expected offsets[0] == 0, non-decreasing, and "
           "offsets[-1] <= number of indices)")
ONE_HOT_OOB = "inductor_embed.one_hot_linear: Class values must be non-negative and smaller than num_classes"


def _fail(op: str, message: str) -> None:
    raise RuntimeError(f"inductor_embed.{op}: {message}")


def _check(cond: object, op: str, message: str) -> None:
    """``cond`` may be a SymBool (fake impls): ``torch._check`` guards on it there. A plain
    True returns at once (torch._check costs ~2 us a call, ~10 of them an op call)."""
    if cond is not True:
        torch._check(cond, lambda: f"inductor_embed.{op}: {message}")


def readable(*tensors: Tensor | None) -> bool:
    """Whether these tensors' values can be read here, on the host: plain CPU tensors (not
    fake, functional or meta ones, not a subclass another mode traces)."""
    return all(t is None or (type(t) in (Tensor, torch.nn.Parameter) and t.device.type == "cpu") for t in tensors)


def _counts(op: str, **lists: Sequence | None) -> int:
    """Every list argument (None: absent) has one entry per table, and there is one at least."""
    sizes = {name: len(v) for name, v in lists.items() if v is not None}
    n = next(iter(sizes.values()))
    if n == 0 or any(s != n for s in sizes.values()):
        _fail(op, "need one entry per table in every list argument, got "
              + ", ".join(f"{s} {name}" for name, s in sizes.items()))
    return n


def _index(op: str, what: str, i: Tensor, device: torch.device) -> None:
    if not isinstance(i, Tensor) or i.dtype not in INDEX_DTYPES:
        _fail(op, f"expected {what} to be int32 or int64 (Long or Int), got "
              f"{i.dtype if isinstance(i, Tensor) else type(i).__name__}")
    if i.device != device:
        _fail(op, f"{what} are on {i.device}, expected {device} (same device)")


def _float(op: str, what: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
        _fail(op, f"{what} must be fp32/fp16/bf16, got {t.dtype if isinstance(t, Tensor) else type(t).__name__}")


def _padding(op: str, k: int, p: int, rows: object, allow_rows: bool = False) -> None:
    """``p`` is -1 (none) or a row of the table (``allow_rows``: also ``rows``, a value callers
    put where entries take no gradient)."""
    if p != -1:
        _check(p >= 0, op, f"padding_idx {p} of table {k} is neither -1 nor a row")
        _check(p <= rows if allow_rows else p < rows, op, f"padding_idx {p} of table {k} is past its {rows} rows")


def _rows(op: str, num_rows: Sequence[int], dims: Sequence[int]) -> None:
    for k, (v, d) in enumerate(zip(num_rows, dims)):
        _check(v >= 0, op, f"num_rows {v} of table {k} < 0")
        _check(d >= 0, op, f"dims {d} of table {k} < 0")


def in_range(op: str, t: Tensor, high: object, message: str, exc: type[Exception] = IndexError,
             low: int = 0) -> None:
    """Raise ``exc(message)`` where an element of ``t`` is outside ``[low, high)``."""
    if t.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(t.reshape(-1)))  # one host read each
    if lo < low or hi >= int(high):
        raise exc(f"{message}: got {lo if lo < low else hi} in {op}")


def offsets_ok(op: str, k: int, offsets: Tensor, nnz: int) -> None:
    """Eager's offsets checks, in int64 (eager promotes int32 indices with int64 offsets), and
    non-decreasing (see the module)."""
    if offsets.numel() == 0:
        return
    o = offsets.long()
    first, last = int(o[0]), int(o[-1])
    if first != 0:
        raise RuntimeError(f"{OFFSETS}: offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to "
                           f"start from position 0. However, got {first} (table {k}, {op})")
    if last > nnz:
        raise RuntimeError(f"{OFFSETS}: offsets[-1] can not be greater than input's length {nnz} but got "
                           f"offsets[-1] of {last} (table {k}, {op})")
    if o.numel() > 1 and not bool((o[1:] >= o[:-1]).all()):
        raise RuntimeError(f"{OFFSETS}: offsets of table {k} decrease ({op})")


# --- multi_embedding and multi_embedding_sum -------------------------------------------------------


def _tables(op: str, weights: Sequence[Tensor], indices: Sequence[Tensor], same_shape: bool) -> None:
    for k, (w, i) in enumerate(zip(weights, indices)):
        if not isinstance(w, Tensor) or w.dim() != 2:
            _fail(op, f"table {k} must be 2-D, got {w.dim() if isinstance(w, Tensor) else type(w).__name__}-D")
        _float(op, f"table {k}", w)
        if w.dtype != weights[0].dtype:
            _fail(op, f"table {k} is {w.dtype}, table 0 is {weights[0].dtype}")
        if w.device != weights[0].device:
            _fail(op, f"table {k} is on {w.device}, table 0 on {weights[0].device} (same device)")
        if not isinstance(i, Tensor) or i.dtype not in INDEX_DTYPES:
            _fail(op, f"expected indices {k} to be int32 or int64 (Long or Int), got "
                  f"{i.dtype if isinstance(i, Tensor) else type(i).__name__}")
        if i.device != w.device:
            _fail(op, f"indices {k} are on {i.device}, table {k} on {w.device}")
        if same_shape:
            if i.dim() != indices[0].dim():
                _fail(op, f"indices {k} are {i.dim()}-D, indices 0 are {indices[0].dim()}-D")
            for a, b in zip(i.shape, indices[0].shape):
                _check(a == b, op, f"indices {k} have shape {list(i.shape)}, indices 0 have shape "
                       f"{list(indices[0].shape)}")


def _sparse_flags(op: str, n: int, scale_grad_by_freq: Sequence[bool], sparse: Sequence[bool] | None) -> None:
    if sparse is None:
        return
    if len(sparse) != n:
        _fail(op, f"{n} tables but {len(sparse)} sparse flags")
    for k, (sp, freq) in enumerate(zip(sparse, scale_grad_by_freq)):
        if sp and freq:  # eager raises this in the backward; the op says it up front
            _fail(op, f"table {k}: embedding_backward: scale_grad_by_freq not supported with sparse gradients")


def multi_embedding(weights: Sequence[Tensor], indices: Sequence[Tensor], padding_idx: Sequence[int] | None = None,
                    scale_grad_by_freq: Sequence[bool] | None = None, sparse: Sequence[bool] | None = None,
                    op: str = "multi_embedding", same_shape: bool = True) -> None:
    """``multi_embedding`` (``same_shape``) and ``multi_embedding_sum`` (indices that broadcast)."""
    if not weights or len(weights) != len(indices):
        _fail(op, f"{len(weights)} tables but {len(indices)} index tensors")
    _counts(op, tables=weights, indices=indices, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq)
    _sparse_flags(op, len(weights), scale_grad_by_freq or [False] * len(weights), sparse)
    _tables(op, weights, indices, same_shape)
    for k, (w, p) in enumerate(zip(weights, padding_idx or ())):
        _padding(op, k, p, w.shape[0])


def column_values(weights: Sequence[Tensor], indices: Sequence[Tensor], values: Sequence[Tensor] | None,
                  ranges: Sequence[int] | None, op: str = "multi_embedding") -> None:
    """``multi_embedding``'s column writes: ``ranges`` ``[start_0, stop_0, ...]`` (output
    columns, ascending, apart, each inside one table's columns), one value per range in the
    tables' dtype and device that broadcasts to ``[*L, stop - start]``."""
    if values is None and ranges is None:
        return
    values, ranges = list(values or ()), list(ranges or ())
    _check(len(ranges) == 2 * len(values), op, f"{len(values)} column values but {len(ranges)} range bounds")
    ends, c = [], 0
    for w in weights:
        c += w.shape[1]
        ends.append(c)
    lead = list(indices[0].shape)
    prev = 0
    for j, v in enumerate(values):
        s, t = ranges[2 * j], ranges[2 * j + 1]
        table = next((k for k, e in enumerate(ends) if s < e), None)
        _check(prev <= s < t and table is not None and t <= ends[table], op,
               f"column range {j} [{s}, {t}) is not inside one table's columns after the previous range")
        prev = t
        _check(v.dtype == weights[0].dtype and v.device == weights[0].device, op,
               f"column value {j} is {v.dtype} on {v.device}, the tables {weights[0].dtype} on {weights[0].device}")
        try:
            torch.broadcast_shapes(tuple(v.shape), (*lead, t - s))
        except RuntimeError:
            _fail(op, f"column value {j} of shape {list(v.shape)} does not broadcast to {[*lead, t - s]}")


def multi_embedding_sum(weights: Sequence[Tensor], indices: Sequence[Tensor], padding_idx: Sequence[int],
                        scale_grad_by_freq: Sequence[bool], sparse: Sequence[bool] | None = None) -> torch.Size:
    """As ``multi_embedding``, one width, indices that broadcast; returns their shape ``[*L]``."""
    op = "multi_embedding_sum"
    multi_embedding(weights, indices, padding_idx, scale_grad_by_freq, sparse, op=op, same_shape=False)
    for k, w in enumerate(weights):
        _check(w.shape[1] == weights[0].shape[1], op, f"table {k} has width {w.shape[1]}, table 0 has "
               f"{weights[0].shape[1]}")
    try:
        return torch.broadcast_shapes(*(i.shape for i in indices))
    except RuntimeError as e:
        raise RuntimeError(f"inductor_embed.{op}: index shapes {[list(i.shape) for i in indices]} do not "
                           f"broadcast: {e}") from None


def zeroed_columns(zeroed: Sequence[int], dims: Sequence[object],
                   op: str = "multi_embedding_backward_cpu") -> None:
    """``zeroed``: triples ``(k, lo, hi)``, a column range ``0 <= lo <= hi <= D_k`` of table k."""
    if len(zeroed) % 3:
        _fail(op, f"zeroed holds (table, lo, hi) triples, got {len(zeroed)} values")
    for j in range(0, len(zeroed), 3):
        k, lo, hi = zeroed[j:j + 3]
        if not 0 <= k < len(dims):
            _fail(op, f"zeroed names table {k} of {len(dims)}")
        _check(0 <= lo, op, f"zeroed columns [{lo}, {hi}) of table {k} are not inside its {dims[k]} columns")
        _check(lo <= hi, op, f"zeroed columns [{lo}, {hi}) of table {k} are not inside its {dims[k]} columns")
        _check(hi <= dims[k], op, f"zeroed columns [{lo}, {hi}) of table {k} are not inside its {dims[k]} columns")


def multi_embedding_backward(grad: Tensor, indices: Sequence[Tensor], num_rows: Sequence[int],
                             dims: Sequence[int], padding_idx: Sequence[int],
                             scale_grad_by_freq: Sequence[bool] | None = None, columns: Sequence[int] | None = None,
                             op: str = "multi_embedding_backward", values: bool = False,
                             allow_padding_rows: bool = False) -> None:
    """The dense and sparse backwards: each table's indices shaped like grad's rows ``[*L]``,
    its columns inside grad's (back to back from 0 when ``columns`` is None)."""
    _counts(op, indices=indices, num_rows=num_rows, dims=dims, padding_idx=padding_idx,
            scale_grad_by_freq=scale_grad_by_freq, columns=columns)
    _float(op, "grad", grad)
    if grad.dim() < 1:
        _fail(op, "grad must have a feature dimension, got a 0-d tensor")
    _rows(op, num_rows, dims)
    lead = grad.shape[:-1]
    for k, (i, v, p) in enumerate(zip(indices, num_rows, padding_idx)):
        _index(op, f"indices {k}", i, grad.device)
        if i.dim() != len(lead):
            _fail(op, f"indices {k} are {list(i.shape)}, grad's rows {list(lead)}")
        for a, b in zip(i.shape, lead):
            _check(a == b, op, f"indices {k} are {list(i.shape)}, grad's rows {list(lead)}")
        _padding(op, k, p, v, allow_padding_rows)
    if columns is None:
        _check(sum(dims) == grad.shape[-1], op, f"dims {list(dims)} do not sum to grad's {grad.shape[-1]} columns")
    else:
        for k, (c, d) in enumerate(zip(columns, dims)):
            _check(c >= 0, op, f"columns {c} of table {k} < 0")
            _check(c + d <= grad.shape[-1], op, f"table {k}'s columns [{c}, {c + d}) outside grad's {grad.shape[-1]}")
    if values and readable(*indices):
        for i, v in zip(indices, num_rows):
            in_range(op, i, v, EMBEDDING_OOB)


def multi_embedding_sum_backward(grad: Tensor, indices: Sequence[Tensor], num_rows: Sequence[int],
                                 dims: Sequence[int], padding_idx: Sequence[int],
                                 scale_grad_by_freq: Sequence[bool], values: bool = False) -> None:
    """Each table's indices broadcast to grad's rows ``[*L]``, every width grad's."""
    op = "multi_embedding_sum_backward"
    _counts(op, indices=indices, num_rows=num_rows, dims=dims, padding_idx=padding_idx,
            scale_grad_by_freq=scale_grad_by_freq)
    _float(op, "grad", grad)
    if grad.dim() < 1:
        _fail(op, "grad must have a feature dimension, got a 0-d tensor")
    _rows(op, num_rows, dims)
    lead = tuple(grad.shape[:-1])
    for k, (i, v, d, p) in enumerate(zip(indices, num_rows, dims, padding_idx)):
        _index(op, f"indices {k}", i, grad.device)
        _check(d == grad.shape[-1], op, f"table {k} has width {d}, grad {grad.shape[-1]}")
        try:
            ok = tuple(torch.broadcast_shapes(i.shape, lead)) == lead
        except RuntimeError:
            ok = False
        if not ok:
            _fail(op, f"indices {k} {list(i.shape)} do not broadcast to grad's rows {list(lead)}")
        _padding(op, k, p, v)
    if values and readable(*indices):
        for i, v in zip(indices, num_rows):
            in_range(op, i, v, EMBEDDING_OOB)


def coalesce_rows(indices: Sequence[Tensor], values: Sequence[Tensor], num_rows: Sequence[int],
                  padding_idx: Sequence[int], check_values: bool = False) -> None:
    """``values[k]`` ``[N_k, D_k]`` for ``indices[k]``'s N_k elements; a padding index may be V."""
    op = "coalesce_rows"
    _counts(op, indices=indices, values=values, num_rows=num_rows, padding_idx=padding_idx)
    for k, (i, x, v, p) in enumerate(zip(indices, values, num_rows, padding_idx)):
        _float(op, f"values {k}", x)
        if x.dtype != values[0].dtype:
            _fail(op, f"values {k} are {x.dtype}, values 0 {values[0].dtype}")
        _index(op, f"indices {k}", i, x.device)
        if x.dim() != 2:
            _fail(op, f"values {k} must be 2-D [N, D], got {list(x.shape)}")
        _check(x.shape[0] == i.numel(), op, f"values {k} have {x.shape[0]} rows for {i.numel()} indices")
        _check(v >= 0, op, f"num_rows {v} of table {k} < 0")
        _padding(op, k, p, v, allow_rows=True)
    if check_values and readable(*indices):
        for i, v, p in zip(indices, num_rows, padding_idx):
            in_range(op, i, v + 1 if p == v else v, EMBEDDING_OOB)


# --- one_hot_linear --------------------------------------------------------------------------------


def _fields(op: str, indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int],
            lead: Sequence[object], num_columns: object, device: torch.device) -> None:
    _counts(op, indices=indices, num_classes=num_classes, offsets=offsets)
    for k, (i, n, off) in enumerate(zip(indices, num_classes, offsets)):
        _index(op, f"indices {k}", i, device)
        if i.dim() != len(lead) + 1:
            _fail(op, f"indices {k} are {list(i.shape)}, expected [{', '.join(map(str, lead))}, bag]")
        for a, b in zip(i.shape[:-1], lead):
            _check(a == b, op, f"indices {k} are {list(i.shape)}, expected [{', '.join(map(str, lead))}, bag]")
        _check(n >= 1, op, f"field {k} has {n} classes")
        _check(off >= 0, op, f"field {k} columns [{off}, {off + n}) outside the weight's {num_columns}")
        _check(off + n <= num_columns, op, f"field {k} columns [{off}, {off + n}) outside the weight's {num_columns}")


def _classes(indices: Sequence[Tensor], num_classes: Sequence[int]) -> None:
    if readable(*indices):
        for i, n in zip(indices, num_classes):
            in_range("one_hot_linear", i, n, ONE_HOT_OOB, RuntimeError)


def one_hot_linear(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int], weight: Tensor,
                   bias: Tensor | None, dtype: torch.dtype | None, values: bool = False) -> None:
    op = "one_hot_linear"
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
        _fail(op, f"weight must be 2-D fp32/fp16/bf16, got "
              f"{weight.dim() if isinstance(weight, Tensor) else type(weight).__name__}-D "
              f"{getattr(weight, 'dtype', '')}")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        _fail(op, f"dtype must be fp32/fp16/bf16, got {dtype}")
    if bias is not None and (bias.dim() != 1 or bias.dtype != weight.dtype or bias.device != weight.device):
        _fail(op, f"bias must be [{weight.shape[0]}] {weight.dtype} on {weight.device}")
    if bias is not None:
        _check(bias.shape[0] == weight.shape[0], op, f"bias must be [{weight.shape[0]}] {weight.dtype} on "
               f"{weight.device}, got [{bias.shape[0]}]")
    if not indices:
        _fail(op, "no index tensors")
    lead = indices[0].shape[:-1] if indices[0].dim() >= 1 else ()
    _fields(op, indices, num_classes, offsets, lead, weight.shape[1], weight.device)
    if values:
        _classes(indices, num_classes)


def one_hot_linear_backward(grad: Tensor, indices: Sequence[Tensor], num_classes: Sequence[int],
                            offsets: Sequence[int], num_columns: int, has_bias: bool, v_major: bool,
                            dtype: torch.dtype, values: bool = False) -> None:
    op = "one_hot_linear_backward"
    _float(op, "grad", grad)
    if grad.dim() < 1:
        _fail(op, "grad must be [*L, D], got a 0-d tensor")
    if dtype not in FLOAT_DTYPES:
        _fail(op, f"dtype must be fp32/fp16/bf16, got {dtype}")
    _check(num_columns >= 0, op, f"num_columns {num_columns} < 0")
    _fields(op, indices, num_classes, offsets, grad.shape[:-1], num_columns, grad.device)
    if values:
        _classes(indices, num_classes)


# --- multi_embedding_bag and tied_embedding_bag ------------------------------------------------------


def num_bags(indices: Tensor, offsets: Tensor | None, include_last_offset: bool) -> object:
    """B: bags of one lookup (a SymInt under fake tensors)."""
    if offsets is None:
        return indices.shape[0]
    return offsets.shape[0] - int(include_last_offset)


def lookup(op: str, k: int, i: Tensor, o: Tensor | None, p: Tensor | None, mode: int, ilo: bool,
           device: torch.device, dtype: torch.dtype | None) -> None:
    """One pooled lookup's arguments, what F.embedding_bag checks (``dtype``: the
    per-sample weights', the table's; None: any float)."""
    _index(op, f"indices {k}", i, device)
    if mode not in (SUM, MEAN, MAX):
        _fail(op, f"mode {mode} of lookup {k} is not 0 (sum), 1 (mean) or 2 (max)")
    if o is None:
        if i.dim() != 2:
            _fail(op, f"indices {k} without offsets must be 2-D [B, bag], got {i.dim()}-D")
    else:
        if i.dim() != 1 or not isinstance(o, Tensor) or o.dim() != 1:
            _fail(op, f"indices {k} with offsets must be 1-D and offsets 1-D")
        if o.dtype not in INDEX_DTYPES or o.device != device:
            _fail(op, f"offsets {k} must be int32/int64 on {device}")
        if ilo:
            _check(o.shape[0] >= 1, op, f"include_last_offset: offsets {k} need one entry at least (numBags should "
                   "be at least 1)")
    if p is not None:
        if mode != SUM:
            _fail(op, f"per_sample_weights are only supported for mode='sum' (lookup {k})")
        if p.dtype not in FLOAT_DTYPES or (dtype is not None and p.dtype != dtype) or p.device != device:
            _fail(op, f"per_sample_weights {k} must be {list(i.shape)} {dtype or 'float'} on {device}")
        if p.dim() != i.dim():
            _fail(op, f"per_sample_weights {k} must be {list(i.shape)}, got {list(p.shape)}")
        for a, b in zip(p.shape, i.shape):
            _check(a == b, op, f"per_sample_weights {k} must be {list(i.shape)}, got {list(p.shape)}")


def bag_values(op: str, k: int, i: Tensor, o: Tensor | None, rows: object, ilo: bool) -> None:
    """Well-formed offsets and indices in ``[0, rows)``, where they can be read. With
    ``include_last_offset`` the indices past ``offsets[B]`` are in no bag (never read, as in
    eager): not checked."""
    if not readable(i, o):
        return
    if o is not None:
        offsets_ok(op, k, o, i.numel())
        if ilo and o.numel():
            i = i[:int(o[-1])]
    in_range(op, i, rows, f"{BAG_OOB} (table {k}): not in the valid range [0, {rows})", RuntimeError)


def bags_values(op: str, rows: Sequence[object], indices: Sequence[Tensor], offsets: Sequence[Tensor | None],
                include_last_offset: Sequence[bool]) -> None:
    """``bag_values`` of every table. Where the values can be read and the native library is
    built, one call checks every table first (a host read per table cost about 10 us of a
    small batch's step); a table it finds bad is then checked here, to raise its error."""
    first = 0
    if _cpu_native.lib() is not None and readable(*indices, *offsets):
        bad = _cpu_native.first_bad_bag([int(v) for v in rows], indices, offsets, include_last_offset)
        if bad is None:
            return
        first = bad
    for k in range(first, len(indices)):
        bag_values(op, k, indices[k], offsets[k], rows[k], include_last_offset[k])


def psw_list(per_sample_weights: Sequence[Tensor], n: int, op: str = "multi_embedding_bag") -> list[Tensor | None]:
    """The op's per_sample_weights argument as one optional tensor per table."""
    if not per_sample_weights:
        return [None] * n
    if len(per_sample_weights) != n:
        _fail(op, f"{len(per_sample_weights)} per_sample_weights for {n} tables")
    return [None if p.dim() == 0 else p for p in per_sample_weights]


def multi_embedding_bag(weights: Sequence[Tensor], indices: Sequence[Tensor], offsets: Sequence[Tensor | None],
                        per_sample_weights: Sequence[Tensor], modes: Sequence[int], padding_idx: Sequence[int],
                        include_last_offset: Sequence[bool], sparse: Sequence[bool] | None = None,
                        values: bool = False) -> list[Tensor | None]:
    """Returns the per-sample weights as one optional tensor per table."""
    op = "multi_embedding_bag"
    _counts(op, tables=weights, indices=indices, offsets=offsets, modes=modes, padding_idx=padding_idx,
            include_last_offset=include_last_offset, sparse=sparse)
    psw = psw_list(per_sample_weights, len(weights), op)
    b0 = num_bags(indices[0], offsets[0], include_last_offset[0])
    for k, (w, i, o, p, m, pad, ilo) in enumerate(zip(weights, indices, offsets, psw, modes, padding_idx,
                                                       include_last_offset)):
        if not isinstance(w, Tensor) or w.dim() != 2 or w.dtype not in FLOAT_DTYPES:
            _fail(op, f"table {k} must be 2-D fp32/fp16/bf16, got "
                  f"{w.dim() if isinstance(w, Tensor) else type(w).__name__}-D {getattr(w, 'dtype', '')}")
        if w.dtype != weights[0].dtype:
            _fail(op, f"table {k} is {w.dtype}, table 0 is {weights[0].dtype}")
        if w.device != weights[0].device:
            _fail(op, f"table {k} is on {w.device}, table 0 on {weights[0].device} (same device)")
        lookup(op, k, i, o, p, m, ilo, w.device, w.dtype)
        _padding(op, k, pad, w.shape[0])
        if sparse is not None and sparse[k] and m == MAX:
            _fail(op, f"max mode does not support sparse weights (table {k})")
        if sparse is not None and sparse[k] and pad >= 0:
            _fail(op, f"sparse=True with a padding_idx is not supported (table {k}): eager's COO gradient drops "
                  "padding entries, a data-dependent size")
        b = num_bags(i, o, ilo)
        _check(b == b0, op, f"table {k} has {b} bags, table 0 has {b0}")
    if values:
        bags_values(op, [w.shape[0] for w in weights], indices, offsets, include_last_offset)
    return psw


def multi_embedding_bag_backward(grad: Tensor, arg_max: Tensor, indices: Sequence[Tensor],
                                 offsets: Sequence[Tensor | None], per_sample_weights: Sequence[Tensor | None],
                                 num_rows: Sequence[int], dims: Sequence[int], modes: Sequence[int],
                                 padding_idx: Sequence[int], include_last_offset: Sequence[bool],
                                 sparse: Sequence[bool], values: bool = False) -> None:
    """grad ``[B, sum D_k]`` for every table's B bags; arg_max ``[B, sum D_k of max tables]``."""
    op = "multi_embedding_bag_backward"
    _counts(op, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights, num_rows=num_rows,
            dims=dims, modes=modes, padding_idx=padding_idx, include_last_offset=include_last_offset, sparse=sparse)
    _float(op, "grad", grad)
    if grad.dim() != 2:
        _fail(op, f"grad must be 2-D [B, sum D_k], got {list(grad.shape)}")
    _rows(op, num_rows, dims)
    _check(sum(dims) == grad.shape[1], op, f"dims {list(dims)} do not sum to grad's {grad.shape[1]} columns")
    if not isinstance(arg_max, Tensor) or arg_max.dtype != torch.int64 or arg_max.dim() != 2 \
            or arg_max.device != grad.device:
        _fail(op, "arg_max must be a 2-D int64 tensor on grad's device")
    max_cols = sum(d for d, m in zip(dims, modes) if m == MAX)
    _check(arg_max.shape[1] == max_cols, op, f"arg_max has {arg_max.shape[1]} columns, the max-mode tables "
           f"{max_cols}")
    if max_cols:
        _check(arg_max.shape[0] == grad.shape[0], op, f"arg_max has {arg_max.shape[0]} rows, grad {grad.shape[0]}")
    for k, (i, o, p, v, m, pad, ilo) in enumerate(zip(indices, offsets, per_sample_weights, num_rows, modes,
                                                       padding_idx, include_last_offset)):
        lookup(op, k, i, o, p, m, ilo, grad.device, None)
        _padding(op, k, pad, v)
        b = num_bags(i, o, ilo)
        _check(b == grad.shape[0], op, f"table {k} has {b} bags, grad {grad.shape[0]} rows")
    if values:
        bags_values(op, num_rows, indices, offsets, include_last_offset)
        col = 0
        for k, (v, d, m) in enumerate(zip(num_rows, dims, modes)):
            if m == MAX:
                if readable(arg_max):
                    in_range(op, arg_max[:, col:col + d], v, f"arg_max of table {k} outside [-1, {v})", low=-1)
                col += d


def tied_embedding_bag(weight: Tensor, bag_weight: Tensor | None, emb_indices: Tensor, bag_indices: Tensor,
                       offsets: Tensor | None, per_sample_weights: Tensor | None, mode: int, emb_padding_idx: int,
                       bag_padding_idx: int, include_last_offset: bool, sparse: Sequence[bool] | None = None,
                       values: bool = False) -> None:
    op = "tied_embedding_bag"
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
        _fail(op, "weight must be a 2-D fp32/fp16/bf16 table")
    if sparse is not None:
        if len(sparse) != 2:
            _fail(op, f"sparse must be [embedding, bag], got {len(sparse)} flags")
        if sparse[1] and mode == MAX:
            _fail(op, "max mode does not support sparse weights")
        if sparse[1] and bag_padding_idx >= 0:
            _fail(op, "sparse=True with a padding_idx is not supported for the bag: eager's COO gradient drops "
                  "padding entries, a data-dependent size")
    if bag_weight is not None and (bag_weight.shape != weight.shape or bag_weight.dtype != weight.dtype
                                   or bag_weight.device != weight.device):
        _fail(op, f"bag_weight must be like weight {list(weight.shape)} {weight.dtype}")
    lookup(op, 1, bag_indices, offsets, per_sample_weights, mode, include_last_offset, weight.device, weight.dtype)
    _index(op, "indices 0", emb_indices, weight.device)
    _padding(op, 0, emb_padding_idx, weight.shape[0])
    _padding(op, 1, bag_padding_idx, weight.shape[0])
    if values and readable(emb_indices):
        in_range(op, emb_indices, weight.shape[0], f"inductor_embed.{op}: index out of range in self (the Embedding)")
        bag_values(op, 1, bag_indices, offsets, weight.shape[0], include_last_offset)


def tied_embedding_bag_backward(grad_emb: Tensor, grad_bag: Tensor, arg_max: Tensor, emb_indices: Tensor,
                                bag_indices: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
                                num_rows: int, mode: int, emb_padding_idx: int, bag_padding_idx: int,
                                include_last_offset: bool, separate: bool, values: bool = False) -> None:
    op = "tied_embedding_bag_backward"
    _float(op, "grad_bag", grad_bag)
    _float(op, "grad_emb", grad_emb)
    if grad_bag.dim() != 2:
        _fail(op, f"grad_bag must be 2-D [B, D], got {list(grad_bag.shape)}")
    d = grad_bag.shape[1]
    _check(num_rows >= 0, op, f"num_rows {num_rows} < 0")
    lookup(op, 1, bag_indices, offsets, per_sample_weights, mode, include_last_offset, grad_bag.device, None)
    _index(op, "indices 0", emb_indices, grad_bag.device)
    if grad_emb.device != grad_bag.device:
        _fail(op, f"grad_emb is on {grad_emb.device}, grad_bag on {grad_bag.device}")
    want = [*emb_indices.shape, d]
    if grad_emb.dim() != len(want):
        _fail(op, f"grad_emb must be {want}, got {list(grad_emb.shape)}")
    for a, b in zip(grad_emb.shape, want):
        _check(a == b, op, f"grad_emb must be {want}, got {list(grad_emb.shape)}")
    b = num_bags(bag_indices, offsets, include_last_offset)
    _check(b == grad_bag.shape[0], op, f"the bag has {b} bags, grad_bag {grad_bag.shape[0]} rows")
    if not isinstance(arg_max, Tensor) or arg_max.dtype != torch.int64 or arg_max.dim() != 2:
        _fail(op, "arg_max must be a 2-D int64 tensor")
    _check(arg_max.shape[1] == (d if mode == MAX else 0), op, f"arg_max has {arg_max.shape[1]} columns")
    if mode == MAX:
        _check(arg_max.shape[0] == grad_bag.shape[0], op, f"arg_max has {arg_max.shape[0]} rows, grad_bag "
               f"{grad_bag.shape[0]}")
    _padding(op, 0, emb_padding_idx, num_rows)
    _padding(op, 1, bag_padding_idx, num_rows)
    if values and readable(emb_indices):
        in_range(op, emb_indices, num_rows, f"inductor_embed.{op}: index out of range in self (the Embedding)")
        bag_values(op, 1, bag_indices, offsets, num_rows, include_last_offset)
        if mode == MAX and readable(arg_max):
            in_range(op, arg_max, num_rows, f"arg_max outside [-1, {num_rows})", low=-1)
