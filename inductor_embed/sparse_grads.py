"""Keeping the plugin's coalesced sparse gradients marked coalesced in ``param.grad``.

Where the sparse backwards coalesce (always on a GPU; on the CPU with
the CPU rule's switch ``_internal.sparse_coalesce_on_cpu``), each table's gradient is returned coalesced (sorted
unique rows, summed values), flagged so. But when autograd stores a fresh sparse gradient in ``param.grad``
(``AccumulateGrad``, a parameter without a gradient yet: every step after ``zero_grad()``)
it rebuilds the tensor around the same indices and values and drops the flag. SparseAdam
and Adagrad then call ``grad.coalesce()``, which sorts the rows again: measured on 2 cores
(4 x 2,000,000 x 64, batch 4,096, SparseAdam) that second sort made the step ~12% slower.

So every parameter whose table the rewrite gives a coalesced sparse gradient gets one
``register_post_accumulate_grad_hook`` (public API; once per parameter, kept for the
parameter's life): after each accumulation it sets the flag again, but only when
``param.grad``'s indices are strictly increasing, that is, when the gradient is coalesced
by definition. The check reads the ``nnz`` indices once (and syncs once on a GPU); a
gradient it does not flag is left as it is, so the hook is harmless on any gradient,
whoever made it.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from inductor_embed import _compat
from inductor_embed.patterns._fx import plugin_op_calls, table_tensors

_HOOKED = _compat.weak_id_key_dict()


def mark_if_coalesced(param: torch.Tensor) -> None:
    """The hook: flag ``param.grad`` coalesced when it is a 1-sparse-dim COO tensor whose
    ``[1, nnz]`` indices are strictly increasing."""
    g = param.grad
    if g is None or g.layout != torch.sparse_coo or g.sparse_dim() != 1 or g.is_coalesced():
        return
    if torch.compiler.is_compiling():  # traced by compiled autograd: leave the flag alone
        return
    idx = g._indices()[0]
    if idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        _compat.mark_coalesced(g)


def keep_coalesced(param: torch.Tensor) -> bool:
    """Install ``mark_if_coalesced`` on a leaf parameter, once. True when it was installed now."""
    if not (isinstance(param, torch.Tensor) and param.is_leaf and param.requires_grad) or param in _HOOKED:
        return False
    param.register_post_accumulate_grad_hook(mark_if_coalesced)
    _HOOKED[param] = True
    return True


def sparse_weights(graph: fx.Graph) -> list[torch.Tensor]:
    """The real weights of every plugin op call in ``graph`` that has a sparse lookup: every
    weight argument of a call whose ``sparse`` list has a True."""
    out = []
    for _, bound in plugin_op_calls(graph):
        if any(bound.get("sparse") or ()):
            out.extend(table_tensors(bound))
    return out
