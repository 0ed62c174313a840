"""multi_embedding_sum: a sum of N embedding lookups  ==>  one multi-table op.

Forms matched (``e_k = F.embedding(idx_k, W_k)``, every W_k of one width D):

* BERT-style encoders: ``word(ids) + position(pos) + token_type(tt)``, then a LayerNorm,
  the position ids ``[S]`` or ``[1, S]`` broadcast against ``[B, S]`` token ids; also the
  ``embeddings += position(pos)`` spelling;
* GPT-style: ``wte(ids) + wpe(pos)`` with the output head tied to ``wte.weight`` (the head
  reads the table, not the lookup, so it is untouched);
* one lookup per feature column summed in a loop (graph atom / bond encoders):
  ``h = 0; for i: h = h + emb_i(x[:, i])`` or ``h += emb_i(x[:, i])``, h starting at 0 or
  at the first lookup;

-> ``multi_embedding_sum([W..], [idx..], ...)`` of shape ``[*L, D]`` (L: the broadcast of the
index shapes), then the sum's other terms added after it, in their order. A sum is a tree
of out-of-place ``+`` / ``torch.add`` / ``Tensor.add`` (alpha=1) whose inner nodes have no
other user, and ``h += e`` steps whose target is such an inner node or a lookup with no
other user (a fresh tensor nobody else sees, so writing it in place is the same as a new
add). Its leaves are the terms: lookups, other tensors, Python numbers.

The lookups of the (dtype, device, D) that most of them share become one op when there are
at least ``config.min_tables``; the rest stay terms, logged. The forward is eager's sum of
gathers (Inductor fuses it into the adds and the LayerNorm as before); the backward is one
multi-table launch on the GPU (see ``lowering/multi_embedding_sum.py``).

Numerics: the lookups are added left to right in the order the tree lists them, then the
other terms: a sum with no other term between its lookups is bit-equal to eager in fp32;
one with other terms between (``e_0 + x + e_1``) is reassociated (fp32 rounding, within
tolerance). The result dtype is eager's: a sum whose result dtype differs from the lookups'
(bf16 lookups plus an fp32 tensor) is left, since adding the lookups first would round
their partial sum to bf16 where eager promotes first; a ``+=`` chain that keeps a bf16
target over an fp32 term gets its cast back.

Left untouched, with a logged reason: lookups ``multi_embedding_cat`` leaves (max_norm,
sparse=True with other users, non-float tables, non-integer indices), fewer than ``min_tables`` fusable
lookups, a lookup whose output is written in place (other than by the sum's own ``+=``),
indices or a table written between a lookup and the end of the sum, and another term
written in place before the sum reads it. A lookup with other users keeps them (it is then
gathered twice: once for them, once in the fused op).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from inductor_embed import config
from inductor_embed.patterns import _cat_site, _fx
from inductor_embed.patterns._cat_site import Lookup
from inductor_embed.patterns.multi_embedding_cat import analyse_lookup
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "multi_embedding_sum"
_OP = "inductor_embed.multi_embedding_sum"


def _operands(node: Any) -> tuple[Any, Any, bool] | None:
    """``(a, b, in_place)`` of ``a + b`` / ``torch.add(a, b)`` / ``a.add(b)`` (alpha=1) or of
    ``a += b`` with a tensor result, else None."""
    if not isinstance(node, fx.Node) or _fx.tensor_meta(node) is None:
        return None
    ops = _cat_site._add_operands(node)
    if ops is not None:
        return ops[0], ops[1], False
    if node.op == "call_function" and node.target is operator.iadd and len(node.args) == 2 and not node.kwargs:
        return node.args[0], node.args[1], True
    return None


def _sum_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Every add of a sum tree in ``graph``. ``a += b`` counts only when ``a`` is fresh and
    seen by no one else: an inner add of the sum, or a lookup whose only user is this ``+=``.
    One pass in graph order (a node's inputs come first), so a chain of thousands of ``+=``
    needs no recursion."""
    nodes: set[fx.Node] = set()
    for node in graph.nodes:
        ops = _operands(node)
        if ops is None:
            continue
        a, _, in_place = ops
        if not in_place:
            nodes.add(node)
        elif isinstance(a, fx.Node) and len(a.users) == 1 and list(node.args).count(a) == 1 and (
                a in nodes or _fx.is_embedding(a)):
            nodes.add(node)
    return nodes


def _inner(x: Any, parent: fx.Node, sums: set[fx.Node]) -> bool:
    """Whether ``x``, an operand of the sum node ``parent``, is itself a node of the sum:
    an add whose only use is this one (so nothing else sees its value)."""
    return (x in sums and parent in sums and len(x.users) == 1 and parent in x.users
            and list(parent.args).count(x) == 1)


def _leaves(root: fx.Node, sums: set[fx.Node]) -> tuple[list[tuple[Any, fx.Node]], list[fx.Node]]:
    """``([(term, the add that reads it)], [the sum's add nodes])``, terms in source order
    (an explicit stack: a loop of a thousand ``h = h + e`` is a tree a thousand deep)."""
    terms: list[tuple[Any, fx.Node]] = []
    nodes: list[fx.Node] = []
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            terms.append(item)
            continue
        nodes.append(item)
        a, b, _ = _operands(item)
        for x in (b, a):  # pushed right first: the left operand's terms come out first
            stack.append(x if _inner(x, item, sums) else (x, item))
    return terms, nodes


def _roots(graph: fx.Graph, sums: set[fx.Node]) -> list[fx.Node]:
    """Sum nodes that are no inner node of a bigger sum."""
    out = []
    for node in graph.nodes:
        if node not in sums:
            continue
        users = list(node.users)
        if len(users) == 1 and _inner(node, users[0], sums):
            continue
        out.append(node)
    return out


def _hazard(lk: Lookup, root: fx.Node, writes: _fx.Writes, own: list[fx.Node]) -> str | None:
    """Why computing ``lk`` at the end of the sum (``root``) would change the result, or None
    (``_cat_site._hazard``'s checks, less the sum's own ``+=`` writes)."""
    for n in (lk.node, *lk.between):
        w = writes.writer(n, ignore=own)
        if w is not None:
            return f"the lookup's output is written in place by {w.name}; left so the write still applies"
    for what, value in (("indices", lk.index), ("table", lk.weight)):
        w = writes.writer(value, after=lk.node, before=root, ignore=own)
        if w is not None:
            return f"the {what} are written in place by {w.name} between the lookup and {root.name}"
    return None


def _key(lk: Lookup) -> tuple:
    return (lk.dtype, lk.device, lk.dim)


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every multi_embedding_sum site in ``graph``."""
    writes = _fx.Writes(graph)
    sums = _sum_nodes(graph)
    for root in _roots(graph, sums):
        terms, nodes = _leaves(root, sums)
        found = _analyse(root, terms, nodes, writes, rec)
        if found is None:
            continue
        lookups, others = found
        rewrite = Rewrite(
            pattern=NAME,
            replaced=tuple(dict.fromkeys([n.name for lk in lookups for n in (lk.node, *reversed(lk.between))]
                                         + [n.name for n in reversed(nodes)])),
            fused_op=_OP,
            tables=tuple(TableInfo(_fx.table_name(lk.weight), lk.num_rows, lk.dim, lk.dtype) for lk in lookups),
            index_shape=tuple(torch.broadcast_shapes(*(lk.index_shape for lk in lookups))),
            dtype=lookups[0].dtype,
        )
        if apply:
            _rewrite(graph, root, lookups, others, nodes)
        rec.rewrite(rewrite)


def _analyse(root: fx.Node, terms: list[tuple[Any, fx.Node]], nodes: list[fx.Node], writes: _fx.Writes,
             rec: Recorder) -> tuple[list[Lookup], list[Any]] | None:
    """``(the lookups to fuse, the other terms in order)`` of the sum ending at ``root``, or
    None (the reason logged when the sum has a lookup)."""
    lookups: list[Lookup] = []
    not_lookups: list[tuple[fx.Node, tuple]] = []  # terms that are no lookup, under their no-op steps
    for term, _ in terms:
        if not isinstance(term, fx.Node):
            continue
        inner, between = _cat_site.peel_noops(term)  # ``pos_emb.to(tok_emb.device)``
        if not _fx.is_embedding(inner):
            not_lookups.append((inner, between))
        got = analyse_lookup(inner, between)
        if isinstance(got, Lookup):
            got = _hazard(got, root, writes, nodes) or got
        if isinstance(got, str):
            rec.skip(Skip(NAME, term.name, got))
        elif got is not None:
            lookups.append(got)
    if not lookups:
        return None
    # A sum of at least one lookup that reads more through other steps: the steps are what
    # keeps them out. (A sum with no lookup term, ``(u * i).sum(-1) + ub.squeeze(-1)``, is
    # no candidate: logging it would flag every model that adds up anything computed from
    # a lookup; and every residual add of a model would be searched.)
    hidden = [(below[0], [*between, *below[1]]) for inner, between in not_lookups
              if (below := _fx.lookup_below(inner, _fx.is_embedding)) is not None]
    for lookup, steps in hidden:
        rec.skip(Skip(NAME, lookup.name, f"{lookup.name} reaches the sum ending at {root.name} through "
                                         f"{_fx.step_names(steps)}, not no-op steps alone: left as a term"))
    keys = [_key(lk) for lk in lookups]
    best = max(keys, key=keys.count)  # ties: the first lookup's
    fused = [lk for lk in lookups if _key(lk) == best]
    for lk in lookups:
        if _key(lk) != best:
            rec.skip(Skip(NAME, lk.node.name, f"its (dtype, device, D) {_key(lk)} differs from the fused lookups' "
                                              f"{best}; left as a term of the sum"))
    names = ", ".join(lk.node.name for lk in fused)
    if len(fused) < max(config.min_tables, 2):
        rec.skip(Skip(NAME, names, f"only {len(fused)} fusable lookup(s) in the sum ending at {root.name}; "
                                   f"min_tables={config.min_tables}"))
        return None
    out = _fx.tensor_meta(root)
    if out.dtype != best[0] or out.device != best[1]:
        rec.skip(Skip(NAME, names, f"the sum ending at {root.name} is {out.dtype} on {out.device}, its lookups "
                                   f"{best[0]} on {best[1]}: adding the lookups first would round their partial "
                                   "sum before eager's promotion; left"))
        return None
    chosen = {lk.consumer for lk in fused}  # a lookup listed twice (``e + e``) is fused twice
    others = []
    for term, parent in terms:
        if isinstance(term, fx.Node) and term in chosen:
            continue
        if isinstance(term, fx.Node):  # read where the sum ends now, not where it was added
            w = writes.writer(term, after=parent, before=root, ignore=nodes)
            if w is not None:
                rec.skip(Skip(NAME, names, f"the term {term.name} is written in place by {w.name} before the sum "
                                           f"ending at {root.name} reads it; left"))
                return None
        others.append(term)
    return fused, others


def _rewrite(graph: fx.Graph, root: fx.Node, lookups: list[Lookup], others: list[Any], nodes: list[fx.Node]) -> None:
    dtype = _fx.tensor_meta(root).dtype
    with graph.inserting_before(root):
        out = _fx.call(graph, torch.ops.inductor_embed.multi_embedding_sum.default, (
            [lk.weight for lk in lookups],
            [lk.index for lk in lookups],
            [lk.params["padding_idx"] for lk in lookups],
            [lk.params["scale_grad_by_freq"] for lk in lookups],
            *([[lk.params["sparse"] for lk in lookups]] if any(lk.params["sparse"] for lk in lookups) else []),
        ), root)
        for term in others:
            out = _fx.call(graph, operator.add, (out, term), root)
        if _fx.tensor_meta(out).dtype != dtype:  # a ``+=`` chain keeps its target's dtype
            out = _fx.call_method(graph, "to", (out, dtype), root)
    root.replace_all_uses_with(out)
    order = {n: k for k, n in enumerate(graph.nodes)}
    dead = sorted({*nodes, *(n for lk in lookups for n in (lk.node, *lk.between))}, key=lambda n: -order[n])
    for n in dead:  # users first; a lookup with other users stays for them
        if not _fx.is_erased(n) and not n.users:
            graph.erase_node(n)
