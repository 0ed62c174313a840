"""tied_embedding_bag: an Embedding and an EmbeddingBag reading one weight  ==>  one op.

``e = F.embedding(idx, W)`` and ``b = F.embedding_bag(seq, W2, offsets, ...)`` where W2 is W
(one Parameter assigned to both modules) or a second Parameter over W's memory
(``nn.EmbeddingBag.from_pretrained(emb.weight, freeze=False)``) become
``tied_embedding_bag(W, W2 or None, idx, seq, ...)``: one launch reads the memory once for
both lookups, and one backward launch writes the gradient: W's one gradient (the sum of both
contributions, as eager accumulates it), or, for two Parameters, each its own part, as eager
gives them. ``sparse=True`` lookups are fused too: a sparse part's gradient is a coalesced
sparse COO tensor (eager's after ``.coalesce()``); one Parameter read by two sparse lookups
gets one COO gradient over both (Inductor cannot add two sparse gradients in the compiled
backward), and one read by a sparse and a dense lookup one dense gradient, as eager's
accumulation gives it.

Runs after the cat patterns, on the lookups they left. One Embedding and one EmbeddingBag
per weight are paired (the first of each, in graph order); further lookups of that weight
keep their own ops (logged). The fused op goes after the last value either lookup reads
and before the first user of either output; where no such place exists, or an in-place
write could see the difference, the pair is left (logged). Also left: what either
single-lookup pattern leaves (max_norm, scale_grad_by_freq, calls eager rejects; a sparse
EmbeddingBag with padding_idx, whose COO gradient drops padding entries, a data-dependent
size). A sparse lookup's output may have several users here: the fused op replaces the
lookup, whose weight keeps one gradient.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from inductor_embed import _compat
from inductor_embed.patterns import _fx
from inductor_embed.patterns._cat_site import Lookup
from inductor_embed.patterns.multi_embedding_bag import analyse_bag, bag_args
from inductor_embed.patterns.multi_embedding_cat import analyse_lookup
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "tied_embedding_bag"
_OP = "inductor_embed.tied_embedding_bag"


def _collect(graph: fx.Graph, rec: Recorder) -> dict[fx.Node, tuple[list, list]]:
    """Per weight node: (embedding lookups, bag lookups), in graph order; reasons logged for
    lookups of a shared weight that cannot take part."""
    found: dict[Any, tuple[list, list]] = {}
    reasons: list[tuple[Any, fx.Node, str]] = []
    for node in graph.nodes:
        if _fx.is_erased(node) or node.op != "call_function":
            continue
        for k, analyse in ((0, analyse_lookup), (1, analyse_bag)):
            lk = analyse(node, (), whole=True)
            if isinstance(lk, Lookup):
                found.setdefault(_weight_key(lk.weight), ([], []))[k].append(lk)
            elif isinstance(lk, str):
                args = bag_args(node) if k else _fx.embedding_args(node)
                reasons.append((_weight_key(args.get("weight")), node, lk))
    for key, node, why in reasons:
        if key in found:  # a lookup of a weight that other lookups share
            rec.skip(Skip(NAME, node.name, why))
    return found


def _weight_key(weight: Any) -> Any:
    """What makes two weight values one table: the same graph value, or two values over the
    same memory (``EmbeddingBag.from_pretrained(emb.weight)`` makes a second Parameter sharing
    the first one's storage, which Dynamo passes as a second input)."""
    v = _fx.tensor_meta(weight)
    key = _compat.storage_key(v) if v is not None else None
    if key is None:
        return weight
    return key, tuple(v.shape), tuple(v.stride()), v.storage_offset(), v.dtype


def _placement(graph: fx.Graph, emb: Lookup, bag: Lookup, order: dict) -> fx.Node | None:
    """The node to insert the fused op before: after every value both lookups read, before
    every user of either output; None when there is no such place."""
    inputs = [emb.weight, bag.weight, *emb.reads, *bag.reads]
    lo = max(order[n] for n in inputs)
    users = [u for lk in (emb, bag) for u in lk.node.users]
    hi = min((order[u] for u in users), default=len(order))
    nodes = list(graph.nodes)
    k = lo + 1
    while k < len(nodes) and nodes[k].op == "placeholder":
        k += 1
    return nodes[k] if k < len(nodes) and k <= hi else None


def _hazard(emb: Lookup, bag: Lookup, at: fx.Node, writes: _fx.Writes, order: dict) -> str | None:
    for lk in (emb, bag):
        w = writes.writer(lk.node)
        if w is not None:
            return f"{lk.node.name}'s output is written in place by {w.name}"
    # Between the earliest of (the lookups, the new place) and the latest, nothing may
    # write what the op reads.
    span = sorted([emb.node, bag.node, at], key=order.__getitem__)
    for value in (emb.weight, bag.weight, *emb.reads, *bag.reads):
        w = writes.writer(value, after=span[0], before=span[-1])
        if w is not None:
            return f"{value.name} is written in place by {w.name} between the two lookups"
    return None


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every tied Embedding/EmbeddingBag pair in ``graph``."""
    order = {n: k for k, n in enumerate(graph.nodes)}
    writes = _fx.Writes(graph)
    for embs, bags in _collect(graph, rec).values():
        if not embs or not bags:
            continue
        emb, bag = embs[0], bags[0]
        weight = emb.weight
        for extra in embs[1:] + bags[1:]:
            rec.skip(Skip(NAME, extra.node.name, f"{_fx.table_name(weight)} already pairs {emb.node.name} with "
                                                 f"{bag.node.name}; further lookups keep their own ops"))
        pair = f"{emb.node.name}, {bag.node.name}"
        if emb.params["scale_grad_by_freq"]:
            rec.skip(Skip(NAME, pair, "the Embedding uses scale_grad_by_freq, which the tied op does not implement"))
            continue
        at = _placement(graph, emb, bag, order)
        if at is None:
            rec.skip(Skip(NAME, pair, "a user of one lookup comes before a value the other lookup reads; "
                                      "no single place for the fused op"))
            continue
        why = _hazard(emb, bag, at, writes, order)
        if why is not None:
            rec.skip(Skip(NAME, pair, why + "; left so the write still applies"))
            continue
        if apply:
            _rewrite(graph, emb, bag, at)
        rec.rewrite(Rewrite(NAME, (emb.node.name, bag.node.name), _OP,
                            (TableInfo(_fx.table_name(weight), emb.num_rows, emb.dim, emb.dtype),),
                            emb.index_shape, emb.dtype))


def _rewrite(graph: fx.Graph, emb: Lookup, bag: Lookup, at: fx.Node) -> None:
    p = bag.params
    with graph.inserting_before(at):
        fused = _fx.call(graph, torch.ops.inductor_embed.tied_embedding_bag.default, (
            emb.weight, None if bag.weight is emb.weight else bag.weight, emb.index, bag.index, p["offsets"], p["per_sample_weights"], p["mode"],
            emb.params["padding_idx"], p["padding_idx"], p["include_last_offset"],
            # dense-only pairs keep the 10-argument form
            *([[bool(emb.params["sparse"]), bool(p["sparse"])]] if emb.params["sparse"] or p["sparse"] else []),
        ), emb.node)
        e = _fx.call(graph, operator.getitem, (fused, 0), emb.node)
        b = _fx.call(graph, operator.getitem, (fused, 1), bag.node)
    emb.node.replace_all_uses_with(e)
    bag.node.replace_all_uses_with(b)
    graph.erase_node(emb.node)
    graph.erase_node(bag.node)
