"""multi_embedding_cat: N embedding lookups -> cat/stack  ==>  one multi-table gather.

Forms matched (``e_k = F.embedding(idx_k, W_k)``, idx of any leading shape L):

* feature cat: ``torch.cat / concat / concatenate([.., e_1, .., e_n, ..], dim=-1)``
  -> ``multi_embedding([W..], [idx..])`` of shape [*L, sum D];
* stacked tokens: ``torch.stack([e_1..e_n], dim=-2)`` or
  ``torch.cat([e_1.unsqueeze(-2), ..], dim=-2)`` with equal D -> the same op viewed
  as [*L, n, D] (tabular transformers write it this way).

Consecutive lookups of one dtype and device form a run; each run of at least
``config.min_tables`` lookups becomes one op, and the cat keeps its other inputs in
order. A lookup with other users keeps them: users after the cat read a slice of
the fused output (a view, so gradients are eager's), users before it keep the
original lookup. Left untouched, with a logged reason: ``max_norm`` (renormalises the
table in place), ``sparse=True``, non-float tables, non-integer indices, a cat along
another dimension, and an elementwise step (bias add, scale) between a lookup and
the cat: Inductor already fuses that step into its own cat kernel, and moving it into
the gather would change rounding for half types. The graph is not functional yet, so
also left: a lookup whose output is written in place (``e.mul_(2)``, ``e[0] = 0``), one
whose indices or table are written between it and the cat, and a cat with ``out=``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed import config
from inductor_embed.patterns import _fx
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "multi_embedding_cat"
_OP = "inductor_embed.multi_embedding"


@dataclasses.dataclass(frozen=True)
class Lookup:
    """One F.embedding call that a fused op can take over."""

    node: fx.Node  # the F.embedding call
    consumer: fx.Node  # the node that feeds the cat/stack: ``node`` itself, or its unsqueeze
    weight: fx.Node
    index: fx.Node
    num_rows: int
    dim: int
    dtype: torch.dtype
    device: torch.device
    padding_idx: int  # normalised to [0, V), or -1 for none
    scale_grad_by_freq: bool
    index_shape: tuple


def analyse_lookup(node: fx.Node, consumer: fx.Node) -> Lookup | str | None:
    """A Lookup if ``node`` is a fusable F.embedding call, a reason if it is one we must leave, else None."""
    args = _fx.embedding_args(node)
    if args is None:
        return None
    weight, index = args.get("weight"), args.get("input")
    w, i = _fx.meta_val(weight), _fx.meta_val(index)
    if not isinstance(weight, fx.Node) or not isinstance(index, fx.Node):
        return "weight or indices are not graph values"
    if not isinstance(w, torch.Tensor) or not isinstance(i, torch.Tensor):
        return "no fake tensor metadata on the weight or indices"
    if args["max_norm"] is not None:
        return "max_norm renormalises the table in place during the lookup; left to eager semantics"
    if args["sparse"]:
        return "sparse=True asks for a sparse gradient, which the fused op does not produce"
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
    num_rows, dim = w.shape
    if not isinstance(dim, int):
        return "embedding dim is symbolic (dynamic weight shape); the kernel specialises on it"
    if not isinstance(num_rows, int):
        return "number of rows is symbolic (dynamic weight shape)"
    pad = args["padding_idx"]
    if pad is None:
        pad = -1
    elif not isinstance(pad, int):
        return "padding_idx is not a constant"
    elif pad < 0:
        # F.embedding counts a negative padding_idx from the end; torch.embedding (the
        # ATen op, which F.embedding calls after normalising) reads any negative as none.
        pad = pad + num_rows if node.target is F.embedding else -1
    return Lookup(node, consumer, weight, index, num_rows, dim, w.dtype, w.device, pad,
                  bool(args["scale_grad_by_freq"]), tuple(i.shape))


@dataclasses.dataclass
class _Site:
    """A cat or stack node, read as a list of items, some of which are lookups."""

    node: fx.Node
    dim: int  # normalised
    token: bool  # output [*L, n, D] (stack or cat of unsqueezes), else [*L, sum D]
    stack: bool
    items: list  # each a Lookup or the original input node


def _hazard(lk: Lookup, site: fx.Node, writes: _fx.Writes) -> str | None:
    """Why moving ``lk`` to ``site`` would change what the graph computes, or None.

    The fused op reads the indices and the table where the cat is, and replaces the
    lookup's output: so neither may be written in place in between, and the output
    never (``e.mul_(2)`` before the cat, ``e[0] = 0`` after it)."""
    w = writes.writer(lk.node)
    if w is not None:
        return f"the lookup's output is written in place by {w.name}; left so the write still applies"
    for what, value in (("indices", lk.index), ("table", lk.weight)):
        w = writes.writer(value, after=lk.node, before=site)
        if w is not None:
            return f"the {what} are written in place by {w.name} between the lookup and {site.name}"
    return None


def _read_site(node: fx.Node, rec: Recorder, writes: _fx.Writes) -> _Site | None:
    parsed = _fx.list_and_dim(node)
    if parsed is None:
        return None
    tensors, dim = parsed
    if node.kwargs.get("out") is not None:
        if any(_fx.is_embedding(t) for t in tensors):
            rec.skip(Skip(NAME, node.name, f"{node.name} writes into out=; left so that it still does"))
        return None
    out = _fx.meta_val(node)
    if not isinstance(out, torch.Tensor) or not all(isinstance(t, fx.Node) for t in tensors):
        return None
    stack = node.target in _fx.STACK_TARGETS
    rank = out.dim()
    dim %= rank
    token = stack or dim == rank - 2
    if not stack and dim != rank - 1 and dim != rank - 2:
        if any(_fx.is_embedding(t) for t in tensors):
            rec.skip(Skip(NAME, node.name, f"{node.target.__name__} along dim {dim} of a rank-{rank} result is not the feature dim"))
        return None
    if stack and dim != rank - 2:
        if any(_fx.is_embedding(t) for t in tensors):
            rec.skip(Skip(NAME, node.name, f"stack along dim {dim} of a rank-{rank} result does not make [..., tables, dim] tokens"))
        return None
    items: list = []
    for t in tensors:
        inner, consumer = t, t
        if token and not stack:
            unsq = _fx.unsqueeze_of(t)
            if unsq is None or unsq[1] % rank != rank - 2:
                if _fx.is_embedding(t):
                    rec.skip(Skip(NAME, t.name, f"{node.name} concatenates along dim {dim}, not the feature dim "
                                                f"{rank - 1}, and the lookup is not unsqueezed into a token"))
                items.append(t)
                continue
            inner = unsq[0]
        found = analyse_lookup(inner, consumer)
        if isinstance(found, Lookup):
            found = _hazard(found, node, writes) or found
        if isinstance(found, str):
            rec.skip(Skip(NAME, inner.name, found))
            items.append(t)
        elif found is None:
            _note_elementwise_step(t, rec)
            items.append(t)
        else:
            items.append(found)
    return _Site(node, dim, token, stack, items)


def _note_elementwise_step(t: fx.Node, rec: Recorder) -> None:
    """Log a cat input that is a lookup plus a per-lookup step we deliberately do not fuse."""
    for arg in t.all_input_nodes:
        if _fx.is_embedding(arg):
            what = t.target if isinstance(t.target, str) else getattr(t.target, "__name__", str(t.target))
            rec.skip(Skip(NAME, arg.name, f"`{what}` ({t.name}) sits between the lookup and the cat; "
                                          "Inductor fuses that step into its cat kernel, so it is left"))
            return


def _runs(site: _Site) -> list[tuple[int, int]]:
    """Maximal [start, end) ranges of consecutive lookups sharing dtype, device (and D for tokens)."""
    runs, start = [], None
    for k, item in enumerate(site.items + [None]):
        if start is not None:
            first = site.items[start]
            same = isinstance(item, Lookup) and item.dtype == first.dtype and item.device == first.device
            if same and site.token:
                same = item.dim == first.dim
            if not same:
                runs.append((start, k))
                start = None
        if start is None and isinstance(item, Lookup):
            start = k
    return runs


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every multi_embedding_cat site in ``graph``."""
    order = {n: k for k, n in enumerate(graph.nodes)}
    writes = _fx.Writes(graph)
    for node in list(graph.nodes):
        if _fx.is_erased(node) or node.op != "call_function":
            continue  # erased by an earlier rewrite
        site = _read_site(node, rec, writes)
        if site is None:
            continue
        runs = []
        for start, end in _runs(site):
            if end - start < max(config.min_tables, 2):
                names = ", ".join(site.items[k].node.name for k in range(start, end))
                rec.skip(Skip(NAME, names, f"only {end - start} fusable lookup(s) in a row in {node.name}; "
                                           f"min_tables={config.min_tables}"))
            else:
                runs.append((start, end))
        if not runs:
            continue
        rewrites = [_describe(site, s, e) for s, e in runs]
        if apply:
            _rewrite(graph, site, runs, order, writes)
        for r in rewrites:
            rec.rewrite(r)


def _describe(site: _Site, start: int, end: int) -> Rewrite:
    lookups = site.items[start:end]
    replaced = []
    for lk in lookups:
        for n in (lk.node, lk.consumer):
            if n.name not in replaced:
                replaced.append(n.name)
    replaced.append(site.node.name)
    return Rewrite(
        pattern=NAME,
        replaced=tuple(replaced),
        fused_op=_OP,
        tables=tuple(TableInfo(_fx.table_name(lk.weight), lk.num_rows, lk.dim, lk.dtype) for lk in lookups),
        index_shape=lookups[0].index_shape,
        dtype=lookups[0].dtype,
    )


def _rewrite(graph: fx.Graph, site: _Site, runs: list[tuple[int, int]], order: dict[fx.Node, int],
             writes: _fx.Writes) -> None:
    node = site.node
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
            fused = _fx.call(graph, torch.ops.inductor_embed.multi_embedding.default, (
                [lk.weight for lk in lookups],
                [lk.index for lk in lookups],
                [lk.padding_idx for lk in lookups],
                [lk.scale_grad_by_freq for lk in lookups],
            ), node)
            if reroute:
                _reroute_other_users(graph, lookups, fused, node, order)
            if site.token:
                fused = _fx.call(graph, torch.unflatten, (fused, -1, (end - k, lookups[0].dim)), node)
            new_items.append(fused)
            dead += [n for lk in lookups for n in (lk.consumer, lk.node)]
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
            if u is not site and u is not lk.consumer and order.get(u, -1) > order[site]
            and _fx.list_and_dim(u) is None
        ]
        if movable:
            piece = _fx.call(graph, torch.narrow, (fused, -1, offset, lk.dim), lk.node)
            for u in movable:
                u.replace_input_with(lk.node, piece)
