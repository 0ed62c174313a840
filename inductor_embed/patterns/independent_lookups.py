"""independent_lookups: embedding lookups that no cat takes  ==>  one multi-table gather.

Two-tower and matrix-factorisation models look their tables up independently and combine
the results by arithmetic, not by a cat::

    (self.u(uid) * self.i(iid)).sum(-1) + self.ub(uid).squeeze(-1) + self.ib(iid).squeeze(-1) + self.g

Every F.embedding the earlier patterns left (they run first: a lookup fused into a cat is
not taken twice) that ``multi_embedding_cat.analyse_lookup`` accepts is grouped by dtype,
device and index shape (a lookup with no other of its kind is taken alone on the CPU, see
``_lone_problem``); a group of at least ``config.min_tables`` lookups becomes one
``multi_embedding(weights, indices)`` of shape ``[*L, sum D]``, and each lookup's users read
``torch.narrow(fused, -1, offset_k, D_k)``: the same values, and through the view eager's
gradients. The op goes after every table and index the group reads and before the first
user of any of its lookups; lookups are taken in graph order as long as such a place
exists, and a lookup that would leave none starts the next group.

Left, with the reason logged: what ``analyse_lookup`` leaves (max_norm, ...), sparse=True;
a lookup whose output is written in place, or whose indices or table are written in place
anywhere in the graph (the op reads them at another place); a lookup whose output (or a
view of it) is a graph output, since a view of the fused output would then share memory
with the other lookups' outputs, which eager's never do; a lookup read by ``view`` (a
column slice has another layout than the lookup's contiguous output).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from inductor_embed import config
from inductor_embed.patterns import _fx, multi_embedding_cat
from inductor_embed.patterns._cat_site import Lookup
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "independent_lookups"
_OP = "inductor_embed.multi_embedding"
_VIEWS = ("view", "view_as")  # users that need the lookup's own (contiguous) strides


def _hazard(lk: Lookup, graph: fx.Graph, writes: _fx.Writes) -> str | None:
    """Why ``lk`` cannot become a slice of a fused output placed elsewhere, or None."""
    w = writes.writer(lk.node)
    if w is not None:
        return f"the lookup's output is written in place by {w.name}; left so the write still applies"
    for what, value in (("indices", lk.index), ("table", lk.weight)):
        w = writes.writer(value)
        if w is not None:
            return f"the {what} are written in place by {w.name}; left so the lookup reads them where it is"
    if _fx.escapes(lk.node, graph):
        return ("the lookup's output is a graph output: a slice of the fused output would share memory with "
                "the other lookups' outputs, which eager's never do")
    for u in lk.node.users:
        if u.op == "call_method" and u.target in _VIEWS:
            return f"`{u.target}` ({u.name}) needs the lookup's contiguous layout, which a column slice does not have"
    return None


def _shape_key(shape: tuple) -> tuple:
    return tuple(str(s) for s in shape)  # SymInts compare by their expression


def _place(group: list[Lookup], order: dict[fx.Node, int]) -> fx.Node | None:
    """The last value ``group`` reads, if the fused op can go right after it: before every
    user of every lookup of the group; else None."""
    last = max((n for lk in group for n in (lk.weight, *lk.reads)), key=order.__getitem__)
    first_user = min((order[u] for lk in group for u in lk.node.users), default=len(order))
    return last if order[last] < first_user else None


def _split(lookups: list[Lookup], order: dict[fx.Node, int]) -> list[list[Lookup]]:
    """Consecutive groups (graph order) that each have a place for the fused op."""
    groups: list[list[Lookup]] = []
    for lk in lookups:
        if groups and _place(groups[-1] + [lk], order) is not None:
            groups[-1].append(lk)
        else:
            groups.append([lk])
    return groups


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every group of independent lookups in ``graph``."""
    order = {n: k for k, n in enumerate(graph.nodes)}
    writes = _fx.Writes(graph)
    # What the earlier patterns replaced (erased when they rewrote, but still in the graph
    # for explain(), apply=False) is not taken twice; what they logged is not logged twice.
    taken = {name for r in rec.report.rewrites for name in r.replaced}
    told = {name for s in rec.report.skipped for name in s.node.split(", ")}
    found: dict[tuple, list[Lookup | tuple[fx.Node, str]]] = {}
    for node in graph.nodes:
        if _fx.is_erased(node) or node.op != "call_function" or node.name in taken:
            continue
        lk = multi_embedding_cat.analyse_lookup(node)
        if isinstance(lk, Lookup) and lk.params["sparse"]:
            # Each lookup would read a view of the op's output, and the view's backward makes
            # Inductor's re-inplacing re-check the sparse-gradient op's output, which it cannot.
            lk = "sparse=True: each lookup would read a view of the fused output, which the sparse backward cannot take"
        if isinstance(lk, str):
            if node.name not in told:
                rec.skip(Skip(NAME, node.name, lk))
        elif lk is not None:
            found.setdefault((lk.dtype, lk.device, _shape_key(lk.index_shape)), []).append(lk)
    fewest = max(config.min_tables, 2)
    for (dtype, _device, _), candidates in found.items():
        if len(candidates) < 2 or _fx.grad_mode_varies(candidates[0].node):
            # Where the graph turns gradients on or off inside, a group's op placed after its
            # last input might run in another grad mode than a lookup: each is taken in place.
            for lk in candidates:
                _lone(graph, lk, rec, apply, told)
            continue
        lookups = []
        for lk in candidates:
            why = _hazard(lk, graph, writes)
            if why is None:
                lookups.append(lk)
            elif _lone_problem(lk) is None:
                # Out of the group (its output cannot be a slice of a shared one), but alone the
                # op takes its place with a fresh output of its own: none of the hazards apply.
                _lone(graph, lk, rec, apply, told)
            elif lk.node.name not in told:
                rec.skip(Skip(NAME, lk.node.name, why))
        for group in _split(lookups, order):
            names = ", ".join(lk.node.name for lk in group)
            if len(group) == 1 and _lone_problem(group[0]) is None:
                _lone(graph, group[0], rec, apply, told)  # no place shared with another: alone
                continue
            if len(group) < fewest:
                rec.skip(Skip(NAME, names, f"only {len(group)} fusable lookup(s) of this dtype and index shape with one "
                                           f"place for a fused op (the others are left, or a user of one comes "
                                           f"before a value another reads); min_tables={config.min_tables}"))
                continue
            if apply:
                _rewrite(graph, group, _place(group, order))
            rec.rewrite(Rewrite(NAME, tuple(lk.node.name for lk in group), _OP,
                                tuple(TableInfo(_fx.table_name(lk.weight), lk.num_rows, lk.dim, lk.dtype)
                                      for lk in group),
                                group[0].index_shape, dtype))


def _lone_problem(lk: Lookup) -> str | None:
    """Why a lookup with no other to fuse with is left, or None to take it alone.

    Alone, only the backward changes: the op's forward is Inductor's own gather (the op
    decomposes on the CPU), and a lone table's gradient comes from the native row-sum kernel
    rather than Inductor's scatter-add, which is slower under collisions on the CPU
    (docs/design.md, "Why the CPU path is what it is"). On CUDA a lone lookup stays Inductor's
    until a GPU measurement says the fused op pays."""
    if lk.dim == 0:
        return "a lone lookup of a 0-column table is left: there is no gradient to compute"
    if lk.device.type != "cpu":
        return ("a lone lookup (no other of its dtype and index shape to fuse with) on CUDA is left to Inductor: "
                "no GPU measurement yet says the fused op pays for one table")
    if lk.params["scale_grad_by_freq"]:
        return "a lone lookup with scale_grad_by_freq=True is left to Inductor (the native CPU backward has no scaling)"
    return None


def _lone(graph: fx.Graph, lk: Lookup, rec: Recorder, apply: bool, told: set[str]) -> None:
    """Take (or log why not) a lookup that has no other of its dtype and index shape. The op
    takes the lookup's place and all of its uses: a fresh contiguous output, as the lookup's,
    so none of ``_hazard``'s reasons (which are about a slice of a shared output placed
    elsewhere) applies."""
    why = _lone_problem(lk)
    if why is not None:
        if lk.node.name not in told:
            rec.skip(Skip(NAME, lk.node.name, why))
        return
    if apply:
        with graph.inserting_before(lk.node):
            fused = multi_embedding_cat.FAMILY.emit(graph, [lk], lk.node)
        lk.node.replace_all_uses_with(fused)
        graph.erase_node(lk.node)
    rec.rewrite(Rewrite(NAME, (lk.node.name,), _OP,
                        (TableInfo(_fx.table_name(lk.weight), lk.num_rows, lk.dim, lk.dtype),), lk.index_shape,
                        lk.dtype))


def _rewrite(graph: fx.Graph, group: list[Lookup], after: fx.Node) -> None:
    at = after.next
    while at.op == "placeholder":  # the op may read graph inputs only: it goes after all of them
        at = at.next
    with graph.inserting_before(at):
        fused = multi_embedding_cat.FAMILY.emit(graph, group, group[0].node)
        offset = 0
        for lk in group:
            piece = _fx.call(graph, torch.narrow, (fused, -1, offset, lk.dim), lk.node)
            offset += lk.dim
            lk.node.replace_all_uses_with(piece)
    for lk in group:  # after the inserts: ``at`` may be one of them
        graph.erase_node(lk.node)
