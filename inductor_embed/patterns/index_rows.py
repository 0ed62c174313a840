"""index_rows: rows read by an index tensor, and rows added to by one, on the CPU.

A graph network's message passing is the other half of embedding code::

    msg = F.relu(h[src] + e)                               # a lookup of h's rows
    h = mlp(h + torch.zeros_like(h).index_add_(0, dst, msg))   # their transpose

- **Row reads** ``x[idx]``, ``x[idx, :]``, ``x.index_select(0, idx)`` / ``torch.index_select``
  of a 2-D float tensor that requires grad (an activation, or a table indexed directly) become
  ``F.embedding(idx, x)`` (with ``idx + x.size(0)`` where ``idx < 0`` for ``x[idx]``, which
  counts negative indices from the end), so that the lookup patterns after this one take them:
  the lookups of a sum or a cat, else ``independent_lookups``, which takes a lone one on the
  CPU. Only the backward changes: Inductor's scatter-add for ``x[idx]``'s gradient (per-element
  atomics on the CPU) becomes the native row sum, each row summed in position order (eager's
  ``index_select`` gradient bit for bit; ``x[idx]``'s eager gradient sums in another order, so
  within fp32's rounding of it). The pattern records nothing for them itself; the pattern that
  takes the lookup does, under the row read's name. An index out of range raises what plain
  torch.compile raises: Inductor's bounds check in the forward's gather (eager: IndexError).
- **Row sums** ``torch.index_add(x, 0, idx, src)`` / ``x.index_add(0, idx, src)``,
  ``index_put((idx,), src, accumulate=True)`` in fp32 (negative indices counted from the end;
  eager's bf16 / fp16 ``index_put`` rounds after each add), and
  PyG's ``scatter_add(0, idx.view(-1, 1).expand_as(src), src)`` (an index that repeats one
  row index across each row), functional or in place into a fresh ``torch.zeros`` /
  ``zeros_like`` / ``new_zeros`` read only after them, become ``inductor_embed::index_add_rows``:
  ATen's ``index_add_``, opaque to Inductor, whose CPU lowering is per-element atomics
  (~20x slower here; for the scatter it writes the whole expanded index out first).

Left, with the reason logged: anything on CUDA (Inductor's atomic adds are native there and
fuse; no GPU measurement yet says otherwise) or inside a torch.func transform, ``alpha != 1``,
another dim than 0, rows of another shape than the sum's (eager raises), an ``index_add_`` into
a tensor that is not a fresh zeros read only after it (the write would have to stay visible); row
reads by a 0-d index (eager's result is a view), of a tensor with symbolic rows, or whose rows
need no gradient (a table without one, or a ``torch.no_grad()`` block).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed.patterns import _fx
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "index_rows"
_OP = "inductor_embed.index_add_rows"
_CUDA = "on CUDA Inductor's atomic adds are native and fuse with their producer; no GPU measurement yet says the op pays"
_ZEROS = (torch.zeros_like, torch.zeros)


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Turn row reads into lookups (always: ``explain`` runs on a copy, and the lookup patterns
    after this one decide and record), and row sums into ``index_add_rows`` when ``apply``."""
    for node in list(graph.nodes):
        if _fx.is_erased(node) or node.op not in ("call_function", "call_method"):
            continue
        read = _row_read(node)
        if read is not None and _is_rows(read[0]):
            x, idx, wraps = read
            why = _fx.region_problem(node, x) or _read_problem(node, x, idx)
            if why is not None:
                rec.skip(Skip(NAME, node.name, why))
            else:
                _as_lookup(graph, node, x, idx, wraps)
            continue
        add = _row_sum(node)
        if add is not None:
            why = add if isinstance(add, str) else _add_problem(*add[:3], put=add[4])
            if why is not None:
                rec.skip(Skip(NAME, node.name, why))
                continue
            base, index, source, inplace, wraps = add
            bv, src = _fx.meta_val(base), _fx.meta_val(source)
            # Into fresh contiguous zeros of a static size the op makes its own output (no
            # fill and copy), and the zeros go (a functional sum's only where nothing else reads them).
            fresh = inplace or (_fresh_zeros(base, node) is not None and len(base.users) == 1)
            own = fresh and isinstance(bv.shape[0], int) and bv.is_contiguous()
            width = 1
            for s in src.shape[1:]:
                width *= s
            relu_of = _relu_input(source, node, base if own else None)
            replaced = (node.name, base.name) if own else (node.name,)
            replaced += (source.name,) if relu_of is not None else ()
            if apply:
                _rewrite(graph, node, base, index, source, own, wraps, inplace, relu_of)
            rec.rewrite(Rewrite(NAME, replaced, _OP, (TableInfo(base.name, bv.shape[0], width, src.dtype),),
                                tuple(_fx.meta_val(index).shape), src.dtype))


def _row_read(node: fx.Node) -> tuple[fx.Node, fx.Node, bool] | None:
    """``(x, idx, wraps)`` if ``node`` reads rows of ``x`` by an index tensor: ``x[idx]`` /
    ``x[idx, :]`` (negative indices count from the end: ``wraps``) or ``index_select`` on dim 0."""
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        x, key = node.args
        if isinstance(key, tuple) and len(key) == 2 and key[1] == slice(None):
            key = key[0]
        if isinstance(x, fx.Node) and isinstance(key, fx.Node) and isinstance(_fx.meta_val(key), torch.Tensor):
            return x, key, True
        return None
    if (node.op == "call_method" and node.target == "index_select") or (
        node.op == "call_function" and node.target is torch.index_select
    ):
        args = _fx.bind(node, ("input", "dim", "index"), {}, {"self": "input"})
        x, dim, idx = args.get("input"), args.get("dim"), args.get("index")
        xv, iv = _fx.meta_val(x), _fx.meta_val(idx)
        if (isinstance(x, fx.Node) and isinstance(idx, fx.Node) and isinstance(xv, torch.Tensor)
                and isinstance(iv, torch.Tensor) and iv.dim() == 1 and dim in (0, -xv.dim())):
            return x, idx, False
    return None


def _is_rows(x: fx.Node) -> bool:
    """Whether ``x`` is a 2-D fp32/fp16/bf16 tensor: a table a lookup can read (anything else
    indexed is no candidate, and not logged)."""
    xv = _fx.meta_val(x)
    return isinstance(xv, torch.Tensor) and xv.dim() == 2 and xv.dtype in _fx.FLOAT_DTYPES


def _read_problem(node: fx.Node, x: fx.Node, idx: fx.Node) -> str | None:
    """Why a row read ``node`` of a 2-D float tensor is left as it is, or None to make it a lookup."""
    xv, iv, out = _fx.meta_val(x), _fx.meta_val(idx), _fx.meta_val(node)
    if iv.dim() == 0:
        return "a 0-d index selects one row: eager's result is a view of the tensor, a lookup's a copy"
    if iv.dtype not in _fx.INDEX_DTYPES:
        return f"index dtype {iv.dtype} is not int32/int64 (a mask or a cast): left as indexing"
    if xv.device.type != "cpu" or iv.device != xv.device:
        return f"a row read on {xv.device.type}: left to Inductor ({_CUDA})"
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        return "the rows read need no gradient (a table without one, or no_grad): only the backward would change"
    if not all(isinstance(s, int) for s in xv.shape):
        return "the tensor's shape is symbolic: a lookup's table has a static shape"
    return None


def _as_lookup(graph: fx.Graph, node: fx.Node, x: fx.Node, idx: fx.Node, wraps: bool) -> None:
    """Replace the row read ``node`` by ``F.embedding(idx, x)`` under the same name."""
    name = node.name
    with graph.inserting_before(node):
        if wraps:
            idx = _wrapped(graph, node, idx, _fx.meta_val(x).shape[0])
        lookup = _fx.call(graph, F.embedding, (idx, x), node)
    _fx.copy_region(node, lookup)
    node.replace_all_uses_with(lookup)
    graph.erase_node(node)
    lookup._rename(name)  # the records and logs name the user's node


_SUMS = ("index_add", "index_add_", "index_put", "index_put_", "scatter_add", "scatter_add_")
_SUM_FUNCTIONS = tuple(f for name in _SUMS for f in (getattr(torch, name, None), getattr(torch.Tensor, name))
                       if f is not None)
_VIEWS = ("view", "reshape", "unsqueeze")
_EXPANDS = ("expand", "expand_as", "broadcast_to")


def _broadcast_rows(index: Any, source: Any) -> fx.Node | None:
    """``idx`` if ``index`` is a 1-D ``idx`` viewed as ``[E, 1, ...]`` and expanded to
    ``source``'s shape (``idx.view(-1, 1).expand_as(src)``, ``idx.unsqueeze(1).expand(-1, D)``,
    ``torch.broadcast_to``): each row of ``source`` goes to one row. Else None."""
    if not (isinstance(index, fx.Node) and isinstance(source, fx.Node)):
        return None
    iv, sv = _fx.meta_val(index), _fx.meta_val(source)
    if not (isinstance(iv, torch.Tensor) and isinstance(sv, torch.Tensor)) or _shape(iv) != _shape(sv):
        return None
    inner = _only_input(index, _EXPANDS, torch.broadcast_to)
    if inner is None:
        return None
    ov = _fx.meta_val(inner)
    if not isinstance(ov, torch.Tensor) or ov.dim() != sv.dim() or any(str(d) != "1" for d in ov.shape[1:]):
        return None
    flat = _only_input(inner, _VIEWS, torch.reshape, torch.unsqueeze)
    fv = _fx.meta_val(flat) if flat is not None else None
    if not isinstance(fv, torch.Tensor) or fv.dim() != 1 or str(fv.shape[0]) != str(sv.shape[0]):
        return None
    return flat


def _only_input(node: fx.Node, methods: tuple[str, ...], *functions: Any) -> fx.Node | None:
    """The tensor a ``x.<method>(...)`` or ``function(x, ...)`` call reads, else None."""
    if (node.op == "call_method" and node.target in methods) or (node.op == "call_function" and node.target in functions):
        x = node.args[0] if node.args else None
        return x if isinstance(x, fx.Node) else None
    return None


def _shape(t: torch.Tensor) -> list[str]:
    return [str(d) for d in t.shape]


def _wrapped(graph: fx.Graph, like: fx.Node, idx: fx.Node, rows: int) -> fx.Node:
    """``torch.where(idx < 0, idx + rows, idx)`` (at the insert point): indexing's negative
    indices in range for a lookup or ``index_add``, which reject them."""
    negative = _fx.call(graph, operator.lt, (idx, 0), like)
    return _fx.call(graph, torch.where, (negative, _fx.call(graph, operator.add, (idx, rows), like), idx), like)


def _row_sum(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, bool, bool] | str | None:
    """``(self, index, source, in_place, wraps)`` of an ``index_add`` on dim 0 or an
    ``index_put`` with ``accumulate=True`` and one index tensor (whose negative indices count
    from the end: ``wraps``), a reason to leave one, or None for any other node."""
    if node.op == "call_method" and node.target in _SUMS:
        name = str(node.target)
    elif node.op == "call_function" and node.target in _SUM_FUNCTIONS:
        name = node.target.__name__
    else:
        return None
    inplace, put = name.endswith("_"), name.startswith("index_put")
    if name.startswith("scatter_add"):
        # PyG's ``scatter(src, index, reduce="sum")``: ``src.new_zeros(size).scatter_add_(0,
        # index.view(-1, 1).expand_as(src), src)``, an index_add whose index Inductor would
        # write out in full ([E, *R] int64) for ATen's scatter.
        args = _fx.bind(node, ("input", "dim", "index", "src"), {}, {"self": "input"})
        base, dim, source = args.get("input"), args.get("dim"), args.get("src")
        index = _broadcast_rows(args.get("index"), source)
        if index is None:
            return None  # a scatter whose index varies along the rows: no index_add
        alpha = 1
    elif put:
        args = _fx.bind(node, ("input", "indices", "values", "accumulate"), {"accumulate": False}, {"self": "input"})
        base, index, source = args.get("input"), args.get("indices"), args.get("values")
        if args["accumulate"] is not True:
            return None  # an assignment, not a sum
        if not (isinstance(index, (tuple, list)) and len(index) == 1):
            return "index_put with other than one index tensor: only rows (dim 0) are taken"
        index = index[0]
        dim, alpha = 0, 1
    else:
        args = _fx.bind(node, ("input", "dim", "index", "source"), {"alpha": 1}, {"self": "input"})
        base, dim, index, source, alpha = (args.get(k) for k in ("input", "dim", "index", "source", "alpha"))
    if not all(isinstance(v, fx.Node) for v in (base, index, source)) or not isinstance(dim, int):
        return "the arguments are not graph values and a constant dim"
    bv = _fx.meta_val(base)
    if not isinstance(bv, torch.Tensor) or dim not in (0, -max(bv.dim(), 1)):
        return f"{name} along dim {dim}: only rows (dim 0) are taken"
    if alpha != 1 or "out" in node.kwargs:
        return "alpha != 1 or out=: left to Inductor"
    why = _fx.region_problem(node, None)
    if why is not None:
        return why
    if inplace and _fresh_zeros(base, node) is None:
        return (f"{name} into a tensor that is not a fresh torch.zeros / zeros_like / new_zeros read only after "
                "it: the write must stay visible to its other readers")
    if put and not isinstance(bv.shape[0], int):
        return "index_put's negative indices count from the end of a symbolic number of rows"
    return base, index, source, inplace, put


def _add_problem(base: fx.Node, index: fx.Node, source: fx.Node, put: bool) -> str | None:
    """Why a sum of rows is left (metadata: dtypes, shapes, device), or None to take it;
    ``put``: an ``index_put`` with ``accumulate=True``."""
    bv, iv, sv = (_fx.meta_val(v) for v in (base, index, source))
    if not all(isinstance(v, torch.Tensor) for v in (bv, iv, sv)):
        return "no fake tensor metadata"
    if sv.dtype not in _fx.FLOAT_DTYPES or bv.dtype != sv.dtype:
        return f"dtype {sv.dtype} into {bv.dtype}: only fp32/fp16/bf16 sums are taken"
    if put and sv.dtype != torch.float32:
        return (f"index_put in {sv.dtype}: eager rounds the sum after each add, index_add sums wider "
                "(a long sum of one row would differ by more than the dtype's tolerance)")
    if iv.dtype not in _fx.INDEX_DTYPES or iv.dim() != 1 or bv.dim() == 0 or sv.dim() != bv.dim():
        return "not a 1-D index adding rows of the same rank"
    if [str(d) for d in bv.shape[1:]] != [str(d) for d in sv.shape[1:]]:
        return "the rows' shapes differ (eager raises; left so that it still does)"
    if str(sv.shape[0]) != str(iv.shape[0]):
        return "the index and the rows added differ in length (index_put broadcasts; index_add raises)"
    if bv.device.type != "cpu" or sv.device != bv.device or iv.device != bv.device:
        return f"an index_add on {sv.device.type}: left to Inductor ({_CUDA})"
    return None


def _fresh_zeros(base: fx.Node, node: fx.Node) -> fx.Node | None:
    """``base`` if it is a torch.zeros / zeros_like / x.new_zeros (no ``out=``) that nothing
    but ``node`` reads before ``node``: ``buf.index_add_(...)`` chained, or
    ``buf = torch.zeros(...); buf.index_add_(...); use(buf)``."""
    if base.kwargs.get("out") is not None:
        return None
    if not ((base.op == "call_function" and base.target in _ZEROS)
            or (base.op == "call_method" and base.target == "new_zeros")):
        return None
    later = _nodes_after(node)
    return base if all(u is node or u in later for u in base.users) else None


def _nodes_after(node: fx.Node) -> set[fx.Node]:
    out, n = set(), node.next
    while n.op != "root":
        out.add(n)
        n = n.next
    return out


def _relu_input(source: fx.Node, node: fx.Node, erased_base: fx.Node | None) -> fx.Node | None:
    """``x`` if ``source`` is ``F.relu(x)`` / ``torch.relu(x)`` / ``x.relu()`` read by the sum
    ``node`` alone (a GIN message's activation; also by PyG's broadcast index and
    ``source.new_zeros(...)``, ``erased_base``, which go with the sum): the op applies it, so
    that the backward saves ``x`` (a float tensor) where Inductor would store ReLU's mask as
    bools (docs/design.md, "Message passing"). Else None."""
    if source.kwargs.get("inplace") or any(u is not node and u is not erased_base and not _shape_only(u, source, node)
                                           for u in source.users):
        return None
    x = _only_input(source, ("relu",), F.relu, torch.relu)
    xv, sv = _fx.meta_val(x), _fx.meta_val(source)
    if not (isinstance(xv, torch.Tensor) and isinstance(sv, torch.Tensor)) or (
            _shape(xv) != _shape(sv) or xv.dtype != sv.dtype or xv.device != sv.device):
        return None
    # Without a gradient there is no mask to save, and Inductor fuses the ReLU into its producer.
    return x if sv.requires_grad else None


def _shape_only(user: fx.Node, source: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` is ``idx.expand_as(source)`` read by the sum ``node`` alone (PyG's
    broadcast index, which reads only ``source``'s shape and goes with the sum)."""
    return (user.op == "call_method" and user.target == "expand_as" and len(user.args) == 2
            and user.args[1] is source and set(user.users) == {node})


def _rewrite(graph: fx.Graph, node: fx.Node, base: fx.Node, index: fx.Node, source: fx.Node, own: bool,
             wraps: bool, inplace: bool, relu_of: fx.Node | None) -> None:
    """Replace the sum of rows ``node`` by ``index_add_rows``: ``self=None`` where it makes
    its own output (``own``: ``base`` is then erased), else ``base`` itself; ``wraps``:
    negative indices moved into range first, as ``index_put`` counts them; ``relu_of``: the
    source is ``relu(relu_of)``, which the op applies. In place, the fresh zeros' later
    readers read the op's output instead."""
    bv = _fx.meta_val(base)
    with graph.inserting_before(node):
        if wraps:
            index = _wrapped(graph, node, index, bv.shape[0])
        args = (None if own else base, bv.shape[0] if own else 0, index)
        args += (source,) if relu_of is None else (relu_of, True)
        op = _fx.call(graph, torch.ops.inductor_embed.index_add_rows.default, args, node)
    node.replace_all_uses_with(op)
    if inplace:  # the buffer's readers after the write (_fresh_zeros: there are no others)
        base.replace_all_uses_with(op, delete_user_cb=lambda user: user is not node and user is not op)
    graph.erase_node(node)
    if own:
        graph.erase_node(base)  # nothing reads it now
    if relu_of is not None:  # read by the sum and a broadcast of its index alone (_relu_input)
        for user in list(source.users):
            graph.erase_node(user)  # the broadcast index, which nothing reads now
        graph.erase_node(source)
