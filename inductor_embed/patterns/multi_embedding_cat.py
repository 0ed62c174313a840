"""multi_embedding_cat: N embedding lookups -> cat/stack  ==>  one multi-table gather.

Forms matched (``e_k = F.embedding(idx_k, W_k)``, idx of any leading shape L):

* feature cat: ``torch.cat / concat / concatenate([.., e_1, .., e_n, ..], dim=-1)``
  -> ``multi_embedding([W..], [idx..])`` of shape [*L, sum D];
* stacked tokens: ``torch.stack([e_1..e_n], dim=-2)`` or
  ``torch.cat([e_1.unsqueeze(-2), ..], dim=-2)`` with equal D -> the same op viewed
  as [*L, n, D] (tabular transformers write it this way);
* field slices: ``torch.cat([emb_k(x[:, k:k+1]) ..], dim=1)`` with equal D, each lookup
  one [B, 1, D] token (FM-style CTR models, then an FM interaction over the fields) ->
  the op on the [B, 1] slices, its [B, 1, n*D] output squeezed and viewed as [B, n, D].
  Field slices and unsqueezed lookups in one cat form separate runs. Left: a lookup of
  more than one token per row (``x[:, 0:2]``), which the cat would place as 2 tokens;
* a bias before the cat, in any of the forms above: ``emb_k(x[:, k]) + b_k.unsqueeze(0)``,
  ``+ b_k``, ``+ torch.zeros(1, d)`` (a library's placeholder when bias is off), before or
  after the unsqueeze -> the op, then one add of the run's biases cat into a [sum D]
  vector (``_cat_site`` says why that is eager's arithmetic exactly). A run takes lookups
  that all have a bias of one dtype and result dtype, or none. Left, logged: an add of a
  tensor that is not broadcast over the rows (``+ x[:, k:k+1].float()``, a [B, D] tensor),
  of a Python number, ``alpha=``, and a bias written in place between the add and the cat;
* columns of a lookup written in place before the cat (shared-embedding schemes):
  ``o = emb_k(x[:, k]); o[:, :s] = shared_k.expand(B, -1)`` (or ``o[..., a:b] = v``,
  ``o[:, a:b].copy_(v)``) -> the same setitem on the fused output's columns, right after
  the op (``_cat_site`` says which writes qualify).

Consecutive lookups of one dtype and device form a run; each run of at least
``config.min_tables`` lookups becomes one op, and the cat keeps its other inputs in
order. A lookup with other users keeps them: users after the cat read a slice of
the fused output (a view, so gradients are eager's), users before it keep the
original lookup. Lookups read by several cats or stacks (DeepFM: a stack for the FM term,
a flat cat for the deep part) are fused once: a later site whose run is a run, or a part
of one, fused at an earlier site reads that op's output (a column slice of it) again, so
each row is gathered once and each table gets one gradient. ``sparse=True`` lookups are fused too: their tables get coalesced sparse
COO gradients (sorted unique rows, summed values). Left untouched, with a logged reason:
``max_norm`` (renormalises the table in place), ``sparse=True`` with
``scale_grad_by_freq`` (eager raises in the backward), non-float tables, non-integer indices, a cat along
another dimension, and an elementwise step other than a bias add (a scale, an
activation) between a lookup and the cat: Inductor already fuses that step into its own
cat kernel, and moving it into the gather would change rounding for half types. The graph is not functional yet, so
also left: a lookup whose output is written in place otherwise (``e.mul_(2)``, ``e[0] = 0``), one
whose indices or table are written between it and the cat, and a cat with ``out=``.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed.patterns import _cat_site, _fx
from inductor_embed.patterns._cat_site import Lookup
from inductor_embed.report import Recorder

NAME = "multi_embedding_cat"
_OP = "inductor_embed.multi_embedding"


def analyse_lookup(node: fx.Node, between: tuple = (), whole: bool = False) -> Lookup | str | None:
    """A Lookup if ``node`` is a fusable F.embedding call, a reason if it is one we must leave, else None.
    ``whole``: the caller replaces the lookup itself (every user of it), so a sparse lookup
    may have any users (the tied pattern)."""
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
    if args["sparse"] and args["scale_grad_by_freq"]:
        return "sparse=True with scale_grad_by_freq: eager raises in the backward; left so that it still does"
    if args["sparse"] and not whole and any(len(n.users) > 1 for n in (node, *between)):
        return ("a sparse=True lookup with other users than the cat: its table's gradient would be a sum of "
                "sparse tensors inside the compiled backward, which Inductor cannot compile (nor without the plugin)")
    why = _fx.region_problem(node, weight) or _cat_site.float_checks(w, i)
    if why is not None:
        return why
    num_rows, dim = w.shape
    pad = args["padding_idx"]
    if pad is None:
        pad = -1
    elif not isinstance(pad, int):
        return "padding_idx is not a constant"
    elif pad < 0:
        # F.embedding counts a negative padding_idx from the end; torch.embedding (the
        # ATen op, which F.embedding calls after normalising) reads any negative as none.
        pad = pad + num_rows if node.target is F.embedding else -1
    return Lookup(node, between, weight, index, (index,), num_rows, dim, w.dtype, w.device, tuple(i.shape),
                  {"padding_idx": pad, "scale_grad_by_freq": bool(args["scale_grad_by_freq"]),
                   "sparse": bool(args["sparse"])})


def _emit(graph: fx.Graph, lookups: list[Lookup], like: fx.Node) -> fx.Node:
    sparse = [lk.params["sparse"] for lk in lookups]
    args = ([lk.weight for lk in lookups], [lk.index for lk in lookups], [lk.params["padding_idx"] for lk in lookups],
            [lk.params["scale_grad_by_freq"] for lk in lookups])
    written = [lk for lk in lookups if lk.column_writes]
    if written and all(_cat_site.column_values_problem(lk) is None for lk in written):
        # The op writes the values itself: no write on its output, whose copy of the whole
        # output the CPU's slice_scatter made.
        spans, offset = [], 0
        for lk in lookups:
            spans += [(offset + cw.columns.start, offset + cw.columns.stop, cw.value) for cw in lk.column_writes]
            offset += lk.dim
        spans.sort(key=lambda s: s[0])
        node = _fx.call(graph, torch.ops.inductor_embed.multi_embedding_columns.default, (
            *args, sparse, [v for _, _, v in spans], [b for s, e, _ in spans for b in (s, e)]), like)
        node.meta[_cat_site.COLUMNS_IN_OP] = True
        return node
    return _fx.call(graph, torch.ops.inductor_embed.multi_embedding.default, (
        *args, *([sparse] if any(sparse) else []),  # dense-only ops keep the 4-argument form
    ), like)


FAMILY = _cat_site.Family(NAME, _OP, _fx.is_embedding, analyse_lookup, _emit, hoists_bias=True,
                          eager_grad_fns=("EmbeddingBackward0",), takes_column_writes=True)


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every multi_embedding_cat site in ``graph``."""
    _cat_site.run_family(FAMILY, graph, rec, apply)
