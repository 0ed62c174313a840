"""The machinery shared by the "N lookups -> cat/stack -> one fused op" patterns.

``multi_embedding_cat`` (F.embedding) and ``multi_embedding_bag`` (F.embedding_bag) read a
cat/stack site the same way: a list of items, some of them lookups; consecutive fusable
lookups of one dtype and device form a run; each run of at least ``config.min_tables``
becomes one op; the cat keeps its other inputs in order; a lookup's other users after the
cat read a slice of the fused output. A ``Family`` supplies what differs: which nodes are
its lookups, how one is analysed, and how the fused op is emitted.

Between a lookup and the cat there may be an unsqueeze (stacked tokens) and no-op steps
(``_fx.noop_input``: a cast that keeps the dtype, ``res = embedding_bag(...).float()`` in
torchrec; ``.to(same device)``, ``.contiguous()``, a same-shape view or reshape, ``* 1``):
all are replaced.
A token cat also takes lookups whose indices end in a size-1 dim (``emb_k(x[:, k:k+1])``,
the field slices of FM-style CTR models): each is already one ``[*L, 1, D]`` token, so the
fused op reads the ``[*L, 1]`` indices as they are and its ``[*L, 1, n*D]`` output is
squeezed and viewed as ``[*L, n, D]``.

A family with ``hoists_bias`` (``multi_embedding_cat``) also takes a lookup plus a bias
broadcast over its rows, ``emb_k(x[:, k]) + b_k`` with ``b_k`` of shape ``[D_k]``,
``[1, .., 1, D_k]`` or ``[.., 1]`` (``b.unsqueeze(0)``, a library's ``torch.zeros(1, d)``
placeholder), before or after the unsqueeze: the add moves after the fused op as one add
of ``cat([b_1.flatten(), ..])``. Every element is the same add of the same two values in the
same promoted dtype as in eager, and autograd reduces each bias's gradient over its rows.
A run takes lookups that all have a bias of one dtype (and result dtype), or none. One
difference in half types: when an upcast follows (``.float()``), Inductor fuses it with the
hoisted add and skips the fp16/bf16 rounding in between (its ``emulate_precision_casts`` is
off by default), where the original cat kernel rounded first: within bf16 tolerance, and
more precise, not bit-equal. A half-type result that is stored as such is bit-equal.

A family with ``takes_column_writes`` (``multi_embedding_cat``) also takes a lookup whose
output has columns written in place before the cat, ``o[:, :k] = shared.expand(B, -1)``,
``o[..., a:b] = v``, ``o[:, :k].copy_(v)`` (shared-embedding schemes): a write to a slice of
the last dim only, every leading dim a full slice, between the lookup and everything else
that reads it. The write moves onto the fused output's column range, right after the op
(and before a hoisted bias add, as in eager): the same setitem of the same value, so the
overwritten columns get no gradient and the value gets eager's. Any other write to a
lookup's output is left, logged.

One module, though long: the patterns that read a cat of lookups share this one reading of
the site (pieces, column writes, hazards); split, each part would need the others' types.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from inductor_embed import _compat, _internal, config
from inductor_embed.patterns import _fx
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo


@dataclasses.dataclass(frozen=True)
class Bias:
    """``lookup + bias`` between a lookup and the cat, the bias broadcast over the rows."""

    node: fx.Node  # the bias value ([D], [1, .., 1, D], or its last dim 1)
    add: fx.Node  # the add node
    width: int  # the bias's last dim: D or 1
    dtype: torch.dtype  # the bias's dtype
    out_dtype: torch.dtype  # the add's result dtype (the promotion of table and bias)


@dataclasses.dataclass(frozen=True)
class ColumnWrite:
    """``out[..., a:b] = value`` written into a lookup's output before the cat."""

    nodes: tuple[fx.Node, ...]  # the write (setitem or copy_), then the view it writes (copy_ only)
    columns: slice  # of the lookup's own columns: start, stop, step >= 1, from slice.indices
    value: Any  # the written value: a graph value or a Python number


@dataclasses.dataclass(frozen=True)
class Lookup:
    """One lookup call that a fused op can take over."""

    node: fx.Node  # the lookup call
    between: tuple[fx.Node, ...]  # nodes from the lookup to the cat input, cat side first (may be empty)
    weight: fx.Node
    index: fx.Node
    reads: tuple[fx.Node, ...]  # every graph value the lookup reads besides the weight (indices, offsets, ...)
    num_rows: int
    dim: int
    dtype: torch.dtype
    device: torch.device
    index_shape: tuple
    params: dict  # the family's own arguments (padding_idx, mode, ...)
    # In a token cat: the indices end in a size-1 dim (``x[:, k:k+1]``), so the lookup's
    # output is already one [*L, 1, D] token (no unsqueeze between it and the cat).
    one_token: bool = False
    bias: Bias | None = None  # a bias added to the lookup's output before the cat
    column_writes: tuple[ColumnWrite, ...] = ()  # in graph order

    @property
    def consumer(self) -> fx.Node:
        """The node the cat reads: the lookup itself or the last node between."""
        return self.between[0] if self.between else self.node


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # the pattern name (config switch, counter key)
    op: str  # the fused op's name, for the records
    is_lookup: Callable[[Any], bool]
    analyse: Callable[[fx.Node, tuple], Lookup | str | None]  # (lookup node, between) -> ...
    emit: Callable[[fx.Graph, list, fx.Node], fx.Node]  # inserts the op; returns its [*L, sum D] output
    hoists_bias: bool = False  # take ``lookup + bias`` inputs (the add moves after the op)
    # ``grad_fn`` names of the family's lookup in eager autograd: a cat input made by one of
    # these outside the graph is a lookup a graph break took away (``_note_outside_lookups``).
    eager_grad_fns: tuple[str, ...] = ()
    takes_column_writes: bool = False  # take lookups with columns written before the cat


@dataclasses.dataclass
class _Site:
    """A cat or stack node, read as a list of items, some of which are lookups."""

    node: fx.Node
    dim: int  # normalised
    token: bool  # output [*L, n, D] (stack or cat of unsqueezes), else [*L, sum D]
    stack: bool
    items: list  # each a Lookup or the original input node


def float_checks(w: torch.Tensor, i: torch.Tensor) -> str | None:
    """Why a table / index pair cannot be fused (dtype, device), or None."""
    if w.dim() != 2:
        return f"weight is {w.dim()}-D, expected 2-D"
    if w.dtype not in _fx.FLOAT_DTYPES:
        return f"table dtype {w.dtype} is not fp32/fp16/bf16"
    if i.dtype not in _fx.INDEX_DTYPES:
        return f"index dtype {i.dtype} is not int32/int64 (eager raises; left so it still does)"
    if w.device != i.device:
        return f"indices on {i.device}, table on {w.device} (eager raises; left so it still does)"
    if w.device.type not in ("cpu", "cuda"):
        return f"device {w.device.type} has no fused kernel"
    if not isinstance(w.shape[1], int):
        return "embedding dim is symbolic (dynamic weight shape); the kernel specialises on it"
    if not isinstance(w.shape[0], int):
        return "number of rows is symbolic (dynamic weight shape)"
    return None


def _hazard(fam: Family, lk: Lookup, site: fx.Node, writes: _fx.Writes) -> Lookup | str:
    """``lk`` (with the column writes the fused output takes over), or why moving it to
    ``site`` would change what the graph computes.

    The fused op reads the indices and the table where the cat is, and replaces the
    lookup's output: so neither may be written in place in between, and the output
    never (``e.mul_(2)`` before the cat, ``e[0] = 0`` after it), except for column
    writes the family takes (see ``_column_writes``)."""
    written = list(dict.fromkeys(w for n in (lk.node, *lk.between) for w in writes.writers(n)))
    if written:
        found = _column_writes(lk, written, site, writes) if fam.takes_column_writes else None
        if found is None:
            return f"the lookup's output is written in place by {written[0].name}; left so the write still applies"
        if isinstance(found, str):
            return found
        lk = dataclasses.replace(lk, column_writes=found)
        why = column_values_problem(lk)
        if why is not None and lk.device.type == "cpu" and not _internal.column_writes_on_cpu:
            # Such writes go onto the fused output: on the CPU they become slice_scatters of
            # the whole [B, sum D] buffer, where the unfused model's touch one [B, D] lookup
            # each (measured slower than torch.compile: docs/design.md).
            return (f"the lookup's columns are written in place ({written[0].name}) with {why}: on the CPU "
                    "that write on the fused output copies the whole output (slower than torch.compile); left")
    for what, value in [("indices" if k == 0 else f"input {v.name}", v) for k, v in enumerate(lk.reads)] + [
            ("table", lk.weight)]:
        w = writes.writer(value, after=lk.node, before=site)
        if w is not None:
            return f"the {what} are written in place by {w.name} between the lookup and {site.name}"
    if lk.bias is not None:  # the hoisted add reads the bias at the cat
        w = writes.writer(lk.bias.node, after=lk.bias.add, before=site)
        if w is not None:
            return f"the bias {lk.bias.node.name} is written in place by {w.name} between {lk.bias.add.name} and {site.name}"
    return lk


def _column_writes(lk: Lookup, written: list[fx.Node], site: fx.Node,
                   writes: _fx.Writes) -> tuple[ColumnWrite, ...] | str | None:
    """The writes into ``lk``'s output as column writes the fused output can take over, a
    reason if they are column writes it cannot, or None if some write is no column write."""
    found = []
    for w in written:
        cw = _column_write(w, lk)
        if cw is None:
            return None
        found.append(cw)
    order = writes.order
    nodes = {n for cw in found for n in cw.nodes}
    last = max(order[cw.nodes[0]] for cw in found)
    what = f"the column write {found[-1].nodes[0].name}"
    if any(order[b] < last for b in lk.between) or last > order[site]:
        return f"{what} comes after the lookup's output is read on its way to {site.name}; left"
    for u in lk.node.users:
        if u is site or u in lk.between or u in nodes:
            continue
        if order.get(u, -1) < order[site]:  # a node an earlier rewrite made counts as before
            return f"{u.name} reads the lookup's output before {site.name}, around {what}; left"
        if _fx.list_and_dim(u) is not None or _fx.escapes(lk.node, lk.node.graph) or writes.writer(site) is not None:
            return (f"{u.name} reads the written lookup output after {site.name} where a column slice of the "
                    f"fused output cannot stand in for it; left")
    for cw in found:
        if isinstance(cw.value, fx.Node):
            w = writes.writer(cw.value, after=cw.nodes[0], before=site)
            if w is not None:
                return f"the value {cw.nodes[0].name} writes is written in place by {w.name} before {site.name}; left"
    return tuple(found)


# Set on a fused op's node that writes its lookups' column writes itself.
COLUMNS_IN_OP = "inductor_embed_columns_in_op"


def column_values_problem(lk: Lookup) -> str | None:
    """Why ``lk``'s column writes cannot be values the fused op writes itself
    (``multi_embedding_columns``: tensors of the table's dtype and device that broadcast to
    the written columns, one write per column), or None."""
    spans = []
    for cw in lk.column_writes:
        v, c = _fx.tensor_meta(cw.value), cw.columns
        if v is None:
            return f"a Python number or a non-tensor ({cw.nodes[0].name})"
        if v.dtype != lk.dtype or v.device != lk.device:
            return f"a {v.dtype} value on {v.device} ({cw.nodes[0].name}), not the table's {lk.dtype}"
        if c.step != 1 or c.stop <= c.start:
            return f"a strided or empty column slice ({cw.nodes[0].name})"
        lead = (*lk.index_shape, c.stop - c.start)
        if v.dim() > len(lead) or any(not (isinstance(a, int) and a == 1) and str(a) != str(b)
                                      for a, b in zip(reversed(v.shape), reversed(lead))):
            return f"a {list(v.shape)} value that does not broadcast to the columns' {list(lead)} ({cw.nodes[0].name})"
        spans.append((c.start, c.stop))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return "writes over the same columns twice"
    return None


def _column_write(w: fx.Node, lk: Lookup) -> ColumnWrite | None:
    """``w`` as a write into a column slice of ``lk``'s output (``o[:, a:b] = v``,
    ``o[..., a:b] = v``, ``o[:, a:b].copy_(v)``), or None."""
    if w.op == "call_function" and w.target is operator.setitem and len(w.args) == 3 and not w.kwargs:
        target, index, value, nodes = w.args[0], w.args[1], w.args[2], (w,)
    elif (w.op == "call_method" and w.target == "copy_" and len(w.args) == 2 and not w.kwargs and not w.users
          and isinstance(w.args[0], fx.Node) and w.args[0].op == "call_function"
          and w.args[0].target is operator.getitem and len(w.args[0].users) == 1):
        view = w.args[0]
        target, index, value, nodes = view.args[0], view.args[1], w.args[1], (w, view)
    else:
        return None
    out = _fx.tensor_meta(lk.node)
    if target is not lk.node or out is None:
        return None
    columns = _last_dim_slice(index, out.dim(), lk.dim)
    if columns is None or not isinstance(value, (fx.Node, int, float, bool)):
        return None
    return ColumnWrite(nodes, columns, value)


def _last_dim_slice(index: Any, rank: int, dim: int) -> slice | None:
    """The normalised slice of an index that slices the last of ``rank`` dims (size ``dim``)
    and takes every leading dim whole (``[:, a:b]``, ``[..., a:b]``), else None."""
    items = index if isinstance(index, tuple) else (index,)
    if not items or not isinstance(items[-1], slice):
        return None
    lead = items[:-1]
    if lead[:1] == (Ellipsis,):
        lead = lead[1:]
    elif len(items) != rank:
        return None
    if any(not isinstance(x, slice) or x != slice(None) for x in lead):
        return None
    s = items[-1]
    if not all(v is None or type(v) is int for v in (s.start, s.stop, s.step)) or (s.step or 1) < 1:
        return None
    return slice(*s.indices(dim))


_ADD_METHODS = ("add", "__add__", "__radd__")


def _add_operands(node: fx.Node) -> tuple[Any, Any] | None:
    """``(a, b)`` of an out-of-place ``a + b`` / ``torch.add(a, b)`` / ``a.add(b)``, else None."""
    if not isinstance(node, fx.Node):
        return None
    if not ((node.op == "call_function" and node.target in (operator.add, torch.add)) or
            (node.op == "call_method" and node.target in _ADD_METHODS)):
        return None
    if len(node.args) != 2 or set(node.kwargs) - {"alpha"} or node.kwargs.get("alpha", 1) != 1:
        return None  # alpha scales the bias; out= writes: neither is a plain bias add
    return node.args[0], node.args[1]


def _lookup_of(fam: Family, x: Any) -> fx.Node | None:
    """The lookup ``x`` is, maybe under an unsqueeze and no-op steps (``_fx.noop_input``), or None."""
    x = peel_noops(x)[0]
    unsq = _fx.unsqueeze_of(x)
    if unsq is not None:
        x = peel_noops(unsq[0])[0]
    return x if fam.is_lookup(x) else None


def peel_noops(x: Any, between: tuple = ()) -> tuple[Any, tuple]:
    """``(y, between + steps)``: ``x`` under its chain of no-op steps (``x = y.to(dev).contiguous()``
    gives ``y`` and the two steps, outermost first; ``_fx.noop_input`` says which qualify)."""
    while (y := _fx.noop_input(x)) is not None:
        between, x = (*between, x), y
    return x, between


def _bias_add(fam: Family, node: fx.Node) -> tuple[fx.Node, Bias | str] | None:
    """``(x, bias)`` if ``node`` is ``x + bias`` with ``x`` reaching a lookup and a bias the
    fused op can take after it; ``(x, reason)`` if it adds something else to a lookup; else None."""
    ops = _add_operands(node)
    if not fam.hoists_bias or ops is None:
        return None
    for x, b in (ops, ops[::-1]):
        if _lookup_of(fam, x) is None:
            continue
        xv, bv, out = _fx.tensor_meta(x), _fx.tensor_meta(b), _fx.tensor_meta(node)
        what = f"`{node.target if isinstance(node.target, str) else 'add'}` ({node.name})"
        if not isinstance(b, fx.Node) or bv is None or xv is None or out is None:
            return x, f"{what} adds a value without fake tensor metadata (a Python number?) to the lookup; left"
        d = xv.shape[-1]
        if (bv.dim() == 0 or bv.dim() > xv.dim() or any(n != 1 for n in bv.shape[:-1])
                or bv.shape[-1] not in (1, d) or tuple(out.shape) != tuple(xv.shape)):
            return x, (f"{what} adds a {list(bv.shape)} tensor to the {list(xv.shape)} lookup: not a bias "
                       f"broadcast over its rows ([{d}] or [1, .., 1, {d}], or 1 for {d}); left")
        if bv.device != xv.device:
            return x, f"{what} adds a bias on {bv.device} to a lookup on {xv.device}; left"
        return x, Bias(b, node, int(bv.shape[-1]), bv.dtype, out.dtype)
    return None


def _read_site(fam: Family, node: fx.Node, rec: Recorder, writes: _fx.Writes) -> _Site | None:
    parsed = _fx.list_and_dim(node)
    if parsed is None:
        return None
    tensors, dim = parsed
    if node.kwargs.get("out") is not None:
        if any(fam.is_lookup(t) for t in tensors):
            rec.skip(Skip(fam.name, node.name, f"{node.name} writes into out=; left so that it still does"))
        return None
    out = _fx.meta_val(node)
    if not isinstance(out, torch.Tensor) or not all(isinstance(t, fx.Node) for t in tensors):
        return None
    stack = node.target in _fx.STACK_TARGETS
    rank = out.dim()
    dim %= rank
    token = stack or dim == rank - 2
    if not stack and dim != rank - 1 and dim != rank - 2:
        if any(fam.is_lookup(t) for t in tensors):
            rec.skip(Skip(fam.name, node.name, f"{node.target.__name__} along dim {dim} of a rank-{rank} result is not the feature dim"))
        return None
    if stack and dim != rank - 2:
        if any(fam.is_lookup(t) for t in tensors):
            rec.skip(Skip(fam.name, node.name, f"stack along dim {dim} of a rank-{rank} result does not make [..., tables, dim] tokens"))
        return None
    items: list = []
    for t in tensors:
        # From the cat input down to the lookup: [no-ops] [+ bias] [no-ops] [unsqueeze] [+ bias] [no-ops].
        inner, between, one_token = *peel_noops(t), False
        peeled = _peel_bias(fam, inner, between, rec)
        if peeled is None:
            items.append(t)
            continue
        inner, between, bias = peeled
        if token and not stack:
            inner, between = peel_noops(inner, between)
            unsq = _fx.unsqueeze_of(inner)
            if unsq is not None and unsq[1] % rank == rank - 2:
                inner, between = unsq[0], (*between, inner)
            elif _is_one_token(inner, rank):
                one_token = True  # a field slice: emb(x[:, k:k+1]) is [*L, 1, D] already
            else:
                if fam.is_lookup(peel_noops(inner)[0]):
                    tv = _fx.tensor_meta(inner)
                    shape = list(tv.shape) if tv is not None else "?"
                    rec.skip(Skip(fam.name, inner.name, f"{node.name} concatenates along dim {dim}, not the feature "
                                                        f"dim {rank - 1}, and the lookup's {shape} output is neither "
                                                        "unsqueezed into a token nor one token (indices [..., 1])"))
                items.append(t)
                continue
        if bias is None:
            peeled = _peel_bias(fam, inner, between, rec)
            if peeled is None:
                items.append(t)
                continue
            inner, between, bias = peeled
        if fam.is_lookup(peel_noops(inner)[0]):
            inner, between = peel_noops(inner, between)
        found = fam.analyse(inner, between)
        if isinstance(found, Lookup):
            if one_token or bias is not None:
                found = dataclasses.replace(found, one_token=one_token, bias=bias)
            found = _hazard(fam, found, node, writes)
        if isinstance(found, str):
            rec.skip(Skip(fam.name, inner.name, found))
            items.append(t)
        elif found is None:
            _note_elementwise_step(fam, inner, rec)
            items.append(t)
        else:
            items.append(found)
    return _Site(node, dim, token, stack, items)


def _peel_bias(fam: Family, inner: Any, between: tuple, rec: Recorder) -> tuple[Any, tuple, Bias | None] | None:
    """``(x, between + (inner,), bias)`` if ``inner`` is ``x + bias`` on a lookup, ``(inner,
    between, None)`` if it is no add on a lookup, None (the skip logged) if it adds
    something else to one."""
    got = _bias_add(fam, inner)
    if got is None:
        return inner, between, None
    if isinstance(got[1], str):
        rec.skip(Skip(fam.name, _lookup_of(fam, got[0]).name, got[1]))
        return None
    return got[0], (*between, inner), got[1]


def _is_one_token(t: fx.Node, rank: int) -> bool:
    """Whether a cat input is one ``[*L, 1, D]`` token of a rank-``rank`` token cat."""
    tv = _fx.tensor_meta(t)
    return tv is not None and tv.dim() == rank and rank >= 2 and tv.shape[-2] == 1


def _note_elementwise_step(fam: Family, t: fx.Node, rec: Recorder) -> None:
    """Log a cat input that is a lookup plus a per-lookup step we deliberately do not fuse.
    A cat or stack of lookups is no such step: it is a site of its own."""
    if not isinstance(t, fx.Node) or _fx.list_and_dim(t) is not None:
        return
    for arg in t.all_input_nodes:
        if fam.is_lookup(arg):
            what = t.target if isinstance(t.target, str) else getattr(t.target, "__name__", str(t.target))
            rec.skip(Skip(fam.name, arg.name, f"`{what}` ({t.name}) sits between the lookup and the cat; "
                                              "Inductor fuses that step into its cat kernel, so it is left"))
            return


def _note_outside_lookups(fam: Family, site: _Site, rec: Recorder) -> None:
    """Log a cat whose inputs are lookups that ran before the graph began.

    Dynamo hands a value computed across a graph break to the next graph as an input, so
    the lookups are gone from the graph the pass sees: only the cat of their outputs is
    left. The real tensors Dynamo passes in tell which autograd node made them, and whether
    an FSDP2 module did (its hooks are ``torch._dynamo.disable``-d, so every call of a table
    wrapped on its own, ``fully_shard(emb)``, breaks the graph and runs eagerly)."""
    outside = [t for t in site.items if isinstance(t, fx.Node) and t.op == "placeholder"
               and _compat.graph_input_grad_fn(t) in fam.eager_grad_fns]
    if len(outside) < max(config.min_tables, 2):
        return
    names = ", ".join(t.name for t in outside)
    head = f"{len(outside)} inputs of {site.node.name} are lookups that ran outside this graph, across a graph break"
    if any(_compat.graph_input_from_fsdp2(t) for t in outside):
        why = ("; they are outputs of FSDP2 modules, whose calls break the graph (each table wrapped on its "
               "own, fully_shard(emb)): wrap the module that holds the tables and the cat as one unit")
    else:
        why = ("; TORCH_LOGS=graph_breaks shows where the graph breaks: with the lookups and the cat in one "
               "graph they are fused")
    rec.skip(Skip(fam.name, names, head + why))


def _runs(site: _Site) -> list[tuple[int, int]]:
    """Maximal [start, end) ranges of consecutive lookups sharing dtype, device (and D for tokens)."""
    runs, start = [], None
    for k, item in enumerate(site.items + [None]):
        if start is not None:
            first = site.items[start]
            same = isinstance(item, Lookup) and item.dtype == first.dtype and item.device == first.device
            if same and site.token:  # one index shape: field slices and unsqueezed lookups do not mix
                same = item.dim == first.dim and item.one_token == first.one_token
            if same:  # one hoisted add: all with a bias of one dtype and result dtype, or none
                same = _bias_key(item) == _bias_key(first)
            if not same:
                runs.append((start, k))
                start = None
        if start is None and isinstance(item, Lookup):
            start = k
    return runs


def _bias_key(lk: Lookup) -> tuple | None:
    return None if lk.bias is None else (lk.bias.dtype, lk.bias.out_dtype)


@dataclasses.dataclass(frozen=True)
class _Fused:
    """A run fused at an earlier site, which a later cat or stack of the same lookups reads again."""

    lookups: tuple[fx.Node, ...]  # the lookup nodes, in the fused output's column order
    dims: tuple[int, ...]
    site: str  # the earlier site's name
    node: fx.Node | None  # the op's [*L, sum D] output (None when the pass only looks)
    sparse: bool


def _fused_before(fused: list[_Fused], lookups: list[Lookup]) -> tuple[_Fused, int] | None:
    """An earlier fused run whose columns hold ``lookups`` side by side, and their first
    column, or None. DeepFM-style models look each field up once and read the lookups
    twice (a stack for the FM term, a flat cat for the deep part): the second site reads
    the first one's output again, so the rows are gathered once and each table gets one
    gradient. Not for lookups with column writes (the first site moved them onto its
    output; a second reader of the written lookup is refused there already), and a
    sparse run only whole (a view of it would break its gradient, see ``_rewrite``)."""
    key = tuple(lk.node for lk in lookups)
    if any(lk.column_writes for lk in lookups):
        return None
    for f in fused:
        for off in range(len(f.lookups) - len(key) + 1):
            if f.lookups[off:off + len(key)] == key and not (f.sparse and len(key) != len(f.lookups)):
                return f, sum(f.dims[:off])
    return None


def run_family(fam: Family, graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every site of ``fam`` in ``graph``."""
    order = {n: k for k, n in enumerate(graph.nodes)}
    writes = _fx.Writes(graph)
    fused: list[_Fused] = []  # the runs fused so far, in graph order
    for node in list(graph.nodes):
        if _fx.is_erased(node) or node.op != "call_function":
            continue  # erased by an earlier rewrite
        site = _read_site(fam, node, rec, writes)
        if site is None:
            continue
        _note_outside_lookups(fam, site, rec)
        runs = []
        for start, end in _runs(site):
            if end - start < max(config.min_tables, 2):
                names = ", ".join(site.items[k].node.name for k in range(start, end))
                rec.skip(Skip(fam.name, names, f"only {end - start} fusable lookup(s) in a row in {node.name}; "
                                               f"min_tables={config.min_tables}"))
            else:
                runs.append((start, end))
        if not runs:
            continue
        # A site whose result is written in place, or is (a view of) a graph output, may
        # hold the fused buffer itself: it neither reads an earlier site's output nor lends
        # its own to a later one (a write would reach the other site's readers; two outputs
        # would share memory where eager's never do).
        unwritten = writes.writer(node) is None and not _fx.escapes(node, graph)
        shared = {s: got for s, e in runs if unwritten and (got := _fused_before(fused, site.items[s:e]))}
        rewrites = [_describe(fam, site, s, e, shared[s][0].site if s in shared else "") for s, e in runs]
        made = _rewrite(fam, graph, site, runs, order, writes, shared) if apply else {}
        if unwritten:
            fused += [_Fused(tuple(lk.node for lk in site.items[s:e]), tuple(lk.dim for lk in site.items[s:e]),
                             node.name, made.get(s), any(lk.params.get("sparse") for lk in site.items[s:e]))
                      for s, e in runs if s not in shared]
        for r in rewrites:
            rec.rewrite(r)


def _describe(fam: Family, site: _Site, start: int, end: int, shares: str = "") -> Rewrite:
    lookups = site.items[start:end]
    replaced = []
    for lk in lookups:
        for n in (lk.node, *(cw.nodes[0] for cw in lk.column_writes), *reversed(lk.between)):
            if n.name not in replaced:
                replaced.append(n.name)
    replaced.append(site.node.name)
    return Rewrite(
        pattern=fam.name,
        replaced=tuple(replaced),
        fused_op=fam.op,
        tables=tuple(TableInfo(_fx.table_name(lk.weight), lk.num_rows, lk.dim, lk.dtype) for lk in lookups),
        index_shape=lookups[0].index_shape,
        dtype=lookups[0].dtype,
        shares=shares,
    )


def _rewrite(fam: Family, graph: fx.Graph, site: _Site, runs: list[tuple[int, int]], order: dict[fx.Node, int],
             writes: _fx.Writes, shared: dict[int, tuple[_Fused, int]]) -> dict[int, fx.Node]:
    """Replace ``site`` by its runs' fused ops (or, for a run in ``shared``, a column slice
    of an earlier site's op) and its other inputs; return each new op's output by run start."""
    node = site.node
    made: dict[int, fx.Node] = {}
    # Other users may read a view of the fused output only if nothing writes the cat's
    # result (which may be that same buffer) in place.
    reroute = writes.writer(node) is None
    fused_at = {start: end for start, end in runs}
    new_items: list[fx.Node] = []
    dead: list[fx.Node] = []
    k = 0
    with graph.inserting_before(node):
        while k < len(site.items):
            item = site.items[k]
            if k not in fused_at:
                if isinstance(item, Lookup):  # a lookup in a run too short to fuse stays as it was
                    item = item.consumer
                if site.stack:  # stack's other inputs become [.., 1, D] pieces of a cat
                    item = _fx.call(graph, torch.unsqueeze, (item, site.dim), node)
                new_items.append(item)
                k += 1
                continue
            end = fused_at[k]
            lookups = site.items[k:end]
            if k in shared:
                earlier, column = shared[k]
                fused = earlier.node
                width = sum(lk.dim for lk in lookups)
                if width != sum(earlier.dims):
                    fused = _fx.call(graph, torch.narrow, (fused, -1, column, width), node)
            else:
                fused = made[k] = fam.emit(graph, lookups, node)
                _column_writes_on(graph, lookups, fused)
            # Not with sparse gradients: the view's backward writes into the fused output's
            # gradient, and Inductor's re-inplacing then re-checks the sparse-gradient op's
            # outputs, which it cannot (it reads their storage). The users keep the lookups.
            if reroute and not any(lk.params.get("sparse") for lk in lookups):
                _reroute_other_users(graph, lookups, fused, node, order)
            if site.token and lookups[0].one_token:  # [*L, 1, n*D] from [*L, 1] indices
                fused = _fx.call(graph, torch.squeeze, (fused, -2), node)
            if lookups[0].bias is not None:
                fused = _fx.call(graph, operator.add, (fused, _bias_vector(graph, lookups, node)), node)
            if site.token:
                fused = _fx.call(graph, torch.unflatten, (fused, -1, (end - k, lookups[0].dim)), node)
            new_items.append(fused)
            dead += [n for lk in lookups for n in (*lk.between, *(n for cw in lk.column_writes for n in cw.nodes), lk.node)]
            k = end
        if len(new_items) == 1:
            replacement = new_items[0]
        else:
            replacement = _fx.call(graph, torch.cat, (new_items, site.dim), node)
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)
    for n in dead:  # consumers first, then lookups; keep whatever still has users
        if not _fx.is_erased(n) and not n.users:
            graph.erase_node(n)
    return made


def _column_writes_on(graph: fx.Graph, lookups: list[Lookup], fused: fx.Node) -> None:
    """Each lookup's column writes, in order, as the same setitem on the fused output's
    columns (``fused[..., off + a:off + b] = v``): autograd then gives the overwritten
    columns no gradient and the value its own, as in eager. Nothing where the op writes
    them itself (``COLUMNS_IN_OP``)."""
    if fused.meta.get(COLUMNS_IN_OP):
        return
    offset = 0
    for lk in lookups:
        for cw in lk.column_writes:
            c = cw.columns
            columns = slice(offset + c.start, offset + max(c.stop, c.start), None if c.step == 1 else c.step)
            _fx.call(graph, operator.setitem, (fused, (Ellipsis, columns), cw.value), cw.nodes[0])
        offset += lk.dim


def _bias_vector(graph: fx.Graph, lookups: list[Lookup], like: fx.Node) -> fx.Node:
    """The run's biases as one ``[sum D]`` vector, in the fused output's column order."""
    pieces = []
    for lk in lookups:
        b = lk.bias.node
        if _fx.tensor_meta(b).dim() != 1:
            b = _fx.call(graph, torch.flatten, (b,), like)
        if lk.bias.width != lk.dim:  # a [.., 1] bias broadcast over the lookup's D columns
            b = _fx.call_method(graph, "expand", (b, lk.dim), like)
        pieces.append(b)
    return pieces[0] if len(pieces) == 1 else _fx.call(graph, torch.cat, (pieces, -1), like)


def _feeds_site(u: fx.Node) -> bool:
    """Whether ``u`` is a cat or stack, or reaches one through steps ``_read_site`` looks
    through (no-ops, an unsqueeze, a bias add), each read by the next alone: that site
    fuses the lookup itself, or reads this op again (``_fused_before``)."""
    for _ in range(8):  # the steps _read_site peels: a few at most
        if _fx.list_and_dim(u) is not None:
            return True
        if len(u.users) != 1 or (_fx.noop_input(u) is None and _fx.unsqueeze_of(u) is None
                                 and _add_operands(u) is None):
            return False
        u = next(iter(u.users))
    return False


def _reroute_other_users(graph: fx.Graph, lookups: list[Lookup], fused: fx.Node, site: fx.Node,
                         order: dict[fx.Node, int]) -> None:
    """Users of a lookup other than this site read a slice of the fused output when they
    come after the site (where the fused op is defined). Earlier users, and other cat/stack
    sites (which may fuse the lookup themselves), keep the original lookup. So do all users
    of a lookup that is (or has a view that is) a graph output: a slice would make that
    output share memory with the cat's, which eager's outputs never do."""
    col = 0
    done: set[fx.Node] = set()
    for lk in lookups:
        offset, col = col, col + lk.dim
        if lk.node in done:
            continue
        done.add(lk.node)
        if _fx.escapes(lk.node, graph):
            continue
        movable = [
            u for u in lk.node.users
            if u is not site and u not in lk.between and order.get(u, -1) > order[site]
            and not _feeds_site(u)
        ]
        if movable:
            piece = _fx.call(graph, torch.narrow, (fused, -1, offset, lk.dim), lk.node)
            for u in movable:
                u.replace_input_with(lk.node, piece)
