"""multi_embedding_bag: N embedding_bag lookups -> cat/stack  ==>  one table-batched pooled op.

Forms matched (``b_k = F.embedding_bag(idx_k, W_k, offsets_k, ...)`` or ``nn.EmbeddingBag``,
each ``[B, D_k]``), exactly as ``multi_embedding_cat`` reads its sites (``_cat_site``):

* ``torch.cat([.., b_1, .., b_n, ..], dim=1)`` (DLRM's ``torch.cat([x] + ly, dim=1)``,
  torchrec's ``torch.cat([res, ...], dim=1)`` with ``res = b.float()``)
  -> ``multi_embedding_bag(...)[0]`` of shape ``[B, sum D_k]``;
* ``torch.stack([b_1..b_n], dim=1)`` or a cat of ``b_k.unsqueeze(1)`` with equal D
  -> the same op viewed as ``[B, n, D]``.

Each lookup may use sum / mean / max, a 2-D input (fixed bags) or a 1-D input with offsets
(with or without include_last_offset), per_sample_weights, padding_idx, sparse=True (sum
and mean), int32/int64 indices and offsets, any float dtype. Left untouched, with a logged
reason: max_norm (renormalises the table in place), scale_grad_by_freq, calls eager rejects
(2-D input with offsets, 1-D input without, per_sample_weights outside sum mode, max mode
with sparse=True, mismatched per_sample_weights), and sparse=True with padding_idx (eager's
sparse gradient drops the padding entries, a data-dependent size).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed import _internal
from inductor_embed.patterns import _cat_site, _fx
from inductor_embed.patterns._cat_site import Lookup
from inductor_embed.report import Recorder

NAME = "multi_embedding_bag"
_OP = "inductor_embed.multi_embedding_bag"
MODES = {"sum": 0, "mean": 1, "max": 2}

# F.embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
#                 per_sample_weights, include_last_offset, padding_idx), as Dynamo records it.
_NAMES = ("input", "weight", "offsets", "max_norm", "norm_type", "scale_grad_by_freq", "mode", "sparse",
          "per_sample_weights", "include_last_offset", "padding_idx")
_DEFAULTS = {"offsets": None, "max_norm": None, "norm_type": 2, "scale_grad_by_freq": False, "mode": "mean",
             "sparse": False, "per_sample_weights": None, "include_last_offset": False, "padding_idx": None}


def bag_args(node: object) -> dict | None:
    """F.embedding_bag arguments by name, or None if the node is not an F.embedding_bag call."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target is not F.embedding_bag:
        return None
    return _fx.bind(node, _NAMES, _DEFAULTS)


def is_bag(node: object) -> bool:
    return bag_args(node) is not None


def _cpu_policy(dtype: torch.dtype, sparse: bool) -> str | None:
    """Why a CPU lookup is left by the CPU rule (``_internal.bag_patterns_on_cpu``), or None to
    take it."""
    policy = _internal.bag_patterns_on_cpu
    if policy == "all":
        return None
    if policy == "none":
        return "bags on the CPU are forced off (_internal.bag_patterns_on_cpu='none')"
    if dtype == torch.float32:
        return None
    return (f"on the CPU only fp32 lookups are rewritten (their C kernels); a {dtype} one measured slower than "
            "torch.compile fused")


def analyse_bag(node: fx.Node, between: tuple = (), whole: bool = False) -> Lookup | str | None:
    """A Lookup (params: offsets, per_sample_weights, mode, padding_idx, include_last_offset,
    sparse) if ``node`` is a fusable F.embedding_bag call, a reason if it must stay, else None.
    ``whole``: the caller replaces the lookup itself (every user of it), so a sparse lookup
    may have any users (the tied pattern)."""
    args = bag_args(node)
    if args is None:
        return None
    weight, index, offsets, psw = args["weight"], args["input"], args["offsets"], args["per_sample_weights"]
    if not all(isinstance(v, fx.Node) for v in (weight, index)) or not all(
            v is None or isinstance(v, fx.Node) for v in (offsets, psw)):
        return "weight, indices, offsets or per_sample_weights are not graph values"
    w, i = _fx.tensor_meta(weight), _fx.tensor_meta(index)
    o = _fx.tensor_meta(offsets) if offsets is not None else None
    p = _fx.tensor_meta(psw) if psw is not None else None
    if w is None or i is None or (offsets is not None and o is None) or (psw is not None and p is None):
        return "no fake tensor metadata on the weight, indices, offsets or per_sample_weights"
    why = _fx.region_problem(node, weight) or _cat_site.float_checks(w, i)
    if why is not None:
        return why
    if w.device.type == "cpu":
        why = _cpu_policy(w.dtype, bool(args["sparse"]))
        if why is not None:
            return why
    mode = args["mode"]
    if mode not in MODES:
        return f"mode {mode!r} is not one of sum/mean/max (eager raises; left so it still does)"
    if args["max_norm"] is not None:
        return "max_norm renormalises the table in place during the lookup; left to eager semantics"
    if args["scale_grad_by_freq"]:
        return "scale_grad_by_freq is not implemented by the fused bag op"
    if i.dim() == 2 and offsets is not None:
        return "a 2-D input with offsets (eager raises ValueError; left so it still does)"
    if i.dim() == 1 and offsets is None:
        return "a 1-D input without offsets (eager raises ValueError; left so it still does)"
    if i.dim() not in (1, 2):
        return f"a {i.dim()}-D input (eager raises ValueError; left so it still does)"
    if o is not None and (o.dim() != 1 or o.dtype not in _fx.INDEX_DTYPES or o.device != w.device):
        return "offsets are not a 1-D int32/int64 tensor on the table's device (eager raises; left)"
    if p is not None and (mode != "sum" or p.shape != i.shape or p.dtype != w.dtype or p.device != w.device):
        return ("per_sample_weights outside mode='sum', or not of the indices' shape and the table's dtype "
                "(eager raises; left so it still does)")
    sparse = bool(args["sparse"])
    if sparse and mode == "max":
        return "max mode with sparse=True (eager raises ValueError; left so it still does)"
    if sparse and not whole and any(len(n.users) != 1 for n in (node, *between)):
        # The lookup would stay beside the fused op, and Inductor cannot add the two
        # sparse gradients (it assumes a strided sum).
        return "a sparse=True lookup with users besides the cat; left"
    num_rows, dim = w.shape
    pad = args["padding_idx"]
    if pad is None:
        pad = -1
    elif not isinstance(pad, int) or not -num_rows <= pad < num_rows:
        return "padding_idx is not a constant in [-V, V) (eager raises; left so it still does)"
    elif pad < 0:
        pad += num_rows
    if sparse and pad >= 0:
        return ("sparse=True with padding_idx: eager's sparse gradient drops padding entries (a data-dependent "
                "size); left")
    ilo = args["include_last_offset"]
    if not isinstance(ilo, bool):
        return "include_last_offset is not a constant"
    reads = tuple(v for v in (index, offsets, psw) if v is not None)
    return Lookup(node, between, weight, index, reads, num_rows, dim, w.dtype, w.device, tuple(i.shape),
                  {"offsets": offsets, "per_sample_weights": psw, "mode": MODES[mode], "padding_idx": pad,
                   "include_last_offset": ilo, "sparse": sparse})


def _emit(graph: fx.Graph, lookups: list[Lookup], like: fx.Node) -> fx.Node:
    psw: list = []
    if any(lk.params["per_sample_weights"] is not None for lk in lookups):
        # The op takes a list of tensors (custom-op autograd returns gradients only into
        # those); a 0-d tensor on the table's device stands for "none".
        psw = [lk.params["per_sample_weights"] if lk.params["per_sample_weights"] is not None
               else _fx.call_method(graph, "new_zeros", (lk.weight, ()), like) for lk in lookups]
    fused = _fx.call(graph, torch.ops.inductor_embed.multi_embedding_bag.default, (
        [lk.weight for lk in lookups],
        [lk.index for lk in lookups],
        [lk.params["offsets"] for lk in lookups],
        psw,
        [lk.params["mode"] for lk in lookups],
        [lk.params["padding_idx"] for lk in lookups],
        [lk.params["include_last_offset"] for lk in lookups],
        [lk.params["sparse"] for lk in lookups],
    ), like)
    return _fx.call(graph, operator.getitem, (fused, 0), like)


FAMILY = _cat_site.Family(NAME, _OP, is_bag, analyse_bag, _emit, eager_grad_fns=("EmbeddingBagBackward0",))


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every multi_embedding_bag site in ``graph``."""
    _cat_site.run_family(FAMILY, graph, rec, apply)
