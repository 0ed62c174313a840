"""one_hot_linear: a Linear / matmul on one-hot inputs  ==>  a gather of weight columns.

``F.linear(F.one_hot(idx, n).float(), W, b)[r] == W[:, idx[r]] + b`` (an nn.Linear
without bias on one-hot inputs is an nn.Embedding of ``W.t()``). The dense
form reads a ``[*L, n]`` one-hot and does ``L x n x D`` multiply-adds; the fused op
``torch.ops.inductor_embed.one_hot_linear`` reads ``L x D`` weight elements.

Forms matched, on Dynamo's torch-level graph (``oh = F.one_hot(idx, n).<cast>``, where
the cast is ``.float()``, ``.half()``, ``.bfloat16()``, ``.to(dtype)``, ``.type_as(W)``,
...; idx of any leading shape L):

* ``F.linear(oh, W, b)`` and ``nn.Linear`` (Dynamo inlines it to ``F.linear``), with or
  without bias; ``oh @ W.T``, ``torch.matmul(oh, W.t())``, ``torch.mm(oh, W.permute(1, 0))``
  (the weight is ``W``); ``oh @ R`` with any other 2-D ``R`` of shape ``[n, D]`` (the op
  reads ``R.t()``, whose column stride is 1: the fast layout).
* several fields: the same on ``torch.cat / concat / concatenate / column_stack / hstack``
  of ``one_hot(idx_k, n_k)`` pieces along the feature dim, casts before or after the cat.
  Field k reads its own block of W's columns. A dense piece of the cat keeps its own
  matmul on its columns of W (``F.linear(dense, W[:, cols])``), added to the op's output.
* multi-hot: ``F.one_hot(idx, n).sum(dim)`` (a bag of categories per row, casts before
  or after the sum) -> the op sums the bag's columns (its summed dims become the op's
  bag dim).
* scaled: ``(F.one_hot(idx, n).float() * r) @ W`` (any of the forms above; ``r * oh``,
  ``torch.mul``, casts before or after the mul) with ``r`` broadcast over the rows: a
  per-class scale ``[n]`` / ``[1, .., 1, n]`` (feature-scaling and ensemble layers) on one
  plain one-hot field, or one scale ``[1, .., 1, 1]`` on any number of plain fields ->
  ``one_hot_linear(idx, W) * r[idx] (+ b)``, where ``r[idx]`` is the same op reading
  ``r`` as a ``[1, n]`` weight: its bounds check, and its backward gives r's gradient.
  Eager's product ``r[idx] * W[:, idx]`` is rounded once, as here (with a bias, eager's
  linear may round ``r*W + b`` once where this rounds the product and then the sum).
* ensemble: the features (a one-hot, or a cat of one-hot and dense pieces) copied to k
  members (``feats[:, None].expand(-1, k, -1)``, ``unsqueeze`` / ``expand`` in any axis
  order), optionally scaled per member and feature (``* r``, r broadcast to ``[k, V]``), and
  contracted with a per-member ``[k, V, O]`` weight by ``einsum`` (two 3-letter operands),
  ``bmm``, ``baddbmm`` (beta = alpha = 1) or a 3-D ``@`` -> the op gathers rows of the scaled
  weight laid out ``[V, k * O]`` (see "the ensemble form" below); the dense pieces keep an
  einsum on their rows of it.
* autocast: Dynamo records the linear as it is written and autocast casts at run time,
  so the result's meta dtype (bf16 under ``autocast("cpu", bfloat16)``) differs from the
  weight's. The op then gets ``dtype=``: it rounds each gathered weight and bias
  element to that dtype, as autocast's cast of the whole weight would, without
  materialising that cast.

Left as it is, with a logged reason: ``num_classes=-1`` or a symbolic one (width depends
on the data; Dynamo in fact breaks the graph at ``F.one_hot(idx)`` itself, so the pass
never sees it); a sum over the class dim or with keepdim; a bag whose counts a cast in
the chain cannot hold exactly (a multi-hot count of 300 in bf16); a weight that is not a
2-D fp32/fp16/bf16 CPU/CUDA tensor of static shape; fewer one-hot columns than
``_internal.one_hot_linear_min_classes``; and, as the graph is not functional, a one-hot
chain written in place before the matmul or indices written in place after the one-hot.
A scaled one-hot is also left (logged) when r is a Python number or 0-dim (a scalar's
rounding in half types is not the tensor's), varies over the rows (``[B, n]``), is not a
float tensor on the weight's device, is written in place before the matmul, or scales
several fields or a multi-hot bag class by class (one op call sums the fields), a cat
with dense pieces, or a linear under autocast.

A one-hot with other users keeps them: only the matmul is replaced, and dead nodes go
with the pass's dead-code elimination.

The one deviation from eager: with inf/NaN in W the dense matmul spreads NaN to every
row (``0 * inf``), the gather only to rows that select the bad column. The README says
so; ``config.one_hot_linear = False`` keeps the dense form.

One module, though long: every form above (plain, cat, multi-hot, scaled, ensemble) reads
its fields with the same helpers and is rewritten into the same op, so the forms' readers
and rewrites are kept beside each other, in the order the forms are listed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed import _internal
from inductor_embed.patterns import _fx
from inductor_embed.report import Recorder, Rewrite, Skip, TableInfo

NAME = "one_hot_linear"
_OP = "inductor_embed.one_hot_linear"

# The largest count each dtype holds exactly: a multi-hot bag of up to this many
# categories survives a cast to it (bf16 counts past 256 round, fp16 past 2048).
_MAX_EXACT = {
    torch.bool: 1, torch.uint8: 255, torch.int8: 127, torch.int16: 2**15 - 1,
    torch.int32: 2**31 - 1, torch.int64: 2**63 - 1, torch.float16: 2**11,
    torch.bfloat16: 2**8, torch.float32: 2**24, torch.float64: 2**53,
}
_STACKS = (torch.column_stack, torch.hstack)
_MUL_TARGETS = (operator.mul, torch.mul)
_MUL_METHODS = ("mul", "__mul__", "__rmul__")


@dataclasses.dataclass(frozen=True)
class Field:
    """One ``F.one_hot`` (optionally summed over bag dims) feeding the matmul."""

    one_hot: fx.Node
    index: fx.Node
    num_classes: int
    bag_dims: tuple[int, ...]  # index dims summed away (multi-hot), ascending; () for one-hot
    bag: int  # categories per output row
    chain: tuple[fx.Node, ...]  # the one-hot, sum and cast nodes of this piece
    dtypes: tuple[torch.dtype, ...]  # dtypes along the chain


@dataclasses.dataclass(frozen=True)
class Dense:
    """A cat piece that is not a one-hot: it keeps a matmul on its own weight columns."""

    node: fx.Node
    width: int
    unsqueeze: bool  # a 1-D column_stack piece, which column_stack makes a [N, 1] column


@dataclasses.dataclass
class _Site:
    node: fx.Node  # the linear / matmul
    weight: fx.Node  # [D, V] as the op reads it, or the [V, D] right operand if transpose
    transpose: bool
    bias: fx.Node | None
    items: list  # Field / Dense in column order
    cat: fx.Node | None
    post: list[fx.Node]  # casts between the cat (or the field) and the matmul, in order
    out_dtype: torch.dtype
    w_dtype: torch.dtype
    dim: int  # D
    lead: tuple
    scale: fx.Node | None = None  # r of ``(one_hot * r) @ W``
    scale_mul: fx.Node | None = None  # the mul node
    scale_chain: list[fx.Node] = dataclasses.field(default_factory=list)  # casts around the mul, and it
    per_class: bool = False  # r has one value per class ([.., n]), else one value ([.., 1])

    @property
    def fields(self) -> list[Field]:
        return [f for f in self.items if isinstance(f, Field)]

    def offsets(self) -> list[int]:
        out, col = [], 0
        for item in self.items:
            out.append(col)
            col += item.num_classes if isinstance(item, Field) else item.width
        return out


def _peel_casts(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """(innermost input, the cast nodes from ``node`` inwards)."""
    casts = []
    while (inner := _fx.cast_input(node)) is not None:
        casts.append(node)
        node = inner
    return node, casts


def _is_one_hot(node: fx.Node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in _fx.ONE_HOT_TARGETS


def _dtype(node: fx.Node) -> torch.dtype | None:
    val = _fx.tensor_meta(node)
    return None if val is None else val.dtype


def _field(piece: fx.Node) -> Field | str | None:
    """A Field if ``piece`` is a (summed, cast) one-hot we can gather, a reason if it is a
    one-hot we must leave, else None."""
    x, casts = _peel_casts(piece)
    chain: list[fx.Node] = list(casts)
    summed = _fx.sum_args(x)
    if summed is not None:
        chain.append(x)
        x, pre = _peel_casts(summed["input"])
        chain += pre
    if not _is_one_hot(x):
        return None
    chain.append(x)
    args = _fx.bind(x, ("input", "num_classes"), {"num_classes": -1}, {"self": "input", "tensor": "input"})
    idx, n = args.get("input"), args["num_classes"]
    if not isinstance(n, int):
        return "num_classes is symbolic; the gather needs the one-hot width at compile time"
    if n < 0:
        return "num_classes=-1: the one-hot width depends on the data (max index + 1)"
    if n == 0:
        return "num_classes=0: an empty one-hot"
    iv = _fx.tensor_meta(idx)
    if not isinstance(idx, fx.Node) or iv is None:
        return "the one-hot's indices have no fake tensor metadata"
    if iv.dtype not in _fx.INDEX_DTYPES:
        return f"index dtype {iv.dtype} is not int32/int64"
    rank = iv.dim()
    bag_dims: tuple[int, ...] = ()
    bag = 1
    if summed is not None:
        dim, keepdim = summed["dim"], summed["keepdim"]
        dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (list, tuple)) else None
        if not dims or not all(isinstance(d, int) for d in dims):
            return "the sum of the one-hot has no constant dims (it would sum over the classes)"
        if keepdim:
            return "the sum of the one-hot keeps its dims (keepdim=True)"
        norm = sorted({d % (rank + 1) for d in dims})
        if rank in norm:
            return "the sum runs over the one-hot's class dim: it counts indices, it is not a multi-hot"
        bag_dims = tuple(norm)
        sizes = [iv.shape[d] for d in bag_dims]
        if not all(isinstance(s, int) for s in sizes):
            return "the multi-hot bag size is symbolic; its counts cannot be proved exact in the casts"
        bag = math.prod(sizes)
    dtypes = tuple(dt for dt in map(_dtype, chain) if dt is not None)
    return Field(x, idx, n, bag_dims, bag, tuple(chain), dtypes)


def _inexact(fields: list[Field], dtypes: tuple) -> str | None:
    for f in fields:
        for dt in f.dtypes + dtypes:
            if _MAX_EXACT.get(dt, 0) < f.bag:
                return (f"a bag of {f.bag} categories from {f.one_hot.name} is not exact in {dt} "
                        f"(counts above {_MAX_EXACT.get(dt, 0)} round)")
    return None


def _operands(node: fx.Node) -> tuple | None:
    """(input, right operand, is_linear, bias) of a linear / matmul / mm / @ node, else None."""
    if node.op == "call_function" and node.target in _fx.LINEAR_TARGETS:
        args = _fx.bind(node, ("input", "weight", "bias"), {"bias": None})
        return args.get("input"), args.get("weight"), True, args["bias"]
    if (node.op == "call_function" and node.target in _fx.MATMUL_TARGETS) or (
        node.op == "call_method" and node.target in _fx.MATMUL_METHODS
    ):
        args = _fx.bind(node, ("input", "other"), {}, {"self": "input", "mat2": "other"})
        return args.get("input"), args.get("other"), False, None
    return None


def _cat_pieces(node: fx.Node) -> tuple[list, int, bool] | None:
    """(pieces, cat dim, column_stack) of a cat-like node, else None."""
    parsed = _fx.list_and_dim(node)
    if parsed is not None and node.target not in _fx.STACK_TARGETS:
        return parsed[0], parsed[1], False
    if node.op == "call_function" and node.target in _STACKS and node.args:
        pieces = node.args[0]
        if not isinstance(pieces, (list, tuple)):
            return None
        ranks = [getattr(_fx.tensor_meta(p), "ndim", -1) for p in pieces]
        if node.target is torch.column_stack:
            return list(pieces), 1, True
        return list(pieces), 0 if all(r == 1 for r in ranks) else 1, False
    return None


def _reaches_one_hot(x: Any) -> bool:
    """Whether ``x`` is a (cast, summed) one-hot, or a cat with one among its pieces."""
    if not isinstance(x, fx.Node):
        return False
    inner, _ = _peel_casts(x)
    parsed = _cat_pieces(inner)
    if parsed is not None:
        return any(isinstance(p, fx.Node) and _field(p) is not None for p in parsed[0])
    return _field(x) is not None


def _scale_of(node: fx.Node) -> tuple[fx.Node, Any] | None:
    """``(one-hot side, r)`` if ``node`` is ``oh * r`` / ``torch.mul(oh, r)`` / ``oh.mul(r)``."""
    if not ((node.op == "call_function" and node.target in _MUL_TARGETS) or
            (node.op == "call_method" and node.target in _MUL_METHODS)):
        return None
    if len(node.args) != 2 or node.kwargs:
        return None
    for a, b in (node.args, node.args[::-1]):
        if _reaches_one_hot(a):
            return a, b
    return None


def _scale_reason(mul: fx.Node, x: fx.Node, r: Any) -> str | None:
    """Why ``x * r`` (``x`` a one-hot) is no per-class scale broadcast over the rows, or None."""
    rv, xv, mv = _fx.tensor_meta(r), _fx.tensor_meta(x), _fx.tensor_meta(mul)
    if not isinstance(r, fx.Node) or rv is None:
        return f"{mul.name} scales the one-hot by a Python number (its rounding in half types is not a tensor's)"
    if xv is None or mv is None:
        return f"{mul.name} has no fake tensor metadata"
    if rv.dim() == 0:
        return f"{mul.name} scales the one-hot by a 0-dim tensor (it promotes like a Python number)"
    if tuple(mv.shape) != tuple(xv.shape) or any(n != 1 for n in rv.shape[:-1]):
        return (f"{mul.name} scales the {list(xv.shape)} one-hot by a {list(rv.shape)} tensor: not a scale "
                f"broadcast over the rows ([n] or [1, .., 1, n])")
    if rv.dtype not in _fx.FLOAT_DTYPES:
        return f"{mul.name} scales the one-hot by a {rv.dtype} tensor, not fp32/fp16/bf16"
    if rv.device != xv.device:
        return f"{mul.name} scales the one-hot by a tensor on {rv.device}, the one-hot is on {xv.device}"
    return None


def _read_site(node: fx.Node, rec: Recorder, writes: _fx.Writes) -> _Site | None:
    ops = _operands(node)
    if ops is None:
        return None
    x, right, is_linear, bias = ops
    if not isinstance(x, fx.Node) or not isinstance(right, fx.Node):
        return None
    inner, post = _peel_casts(x)
    scale = scale_mul = None
    scale_chain: list[fx.Node] = []
    scaled = _scale_of(inner)
    if scaled is not None:
        scale_mul, (x, scale) = inner, scaled
        reason = _scale_reason(scale_mul, x, scale)
        if reason is not None:
            return _skip(rec, scale_mul, reason)
        inner, pre = _peel_casts(x)
        # graph order; ``post`` stays for casts after a cat, which a scaled site has none
        # of to replay (it takes no dense pieces)
        scale_chain = [*reversed(pre), scale_mul, *reversed(post)]
        post = []
    out = _fx.tensor_meta(node)
    read = _read_features(x, inner, post, rec)
    if read is None:
        return None
    items, cat, post, lead, chain_dtypes = read
    fields = [f for f in items if isinstance(f, Field)]
    where = fields[0].one_hot.name if len(fields) == 1 else node.name
    reason = _inexact(fields, chain_dtypes)
    if reason is not None:
        return _skip(rec, where, reason)
    if node.kwargs.get("out") is not None:
        return _skip(rec, node, f"{node.name} writes into out=")
    if out is None:
        return _skip(rec, node, "no fake tensor metadata on the result")
    read_w = _read_weight(node, right, is_linear, bias, fields, out.dtype, rec)
    if read_w is None:
        return None
    weight, transpose, d, v, wv = read_w
    site = _Site(node, weight, transpose, bias, items, cat, post, out.dtype, wv.dtype, d, lead)
    if scale is not None:
        reason = _scale_site_reason(site, scale)
        if reason is not None:
            return _skip(rec, scale_mul, reason)
        site.scale, site.scale_mul, site.scale_chain = scale, scale_mul, scale_chain
        site.per_class = _fx.tensor_meta(scale).shape[-1] != 1
    if sum(it.num_classes if isinstance(it, Field) else it.width for it in items) != v:
        return _skip(rec, node, f"the one-hot widths do not add up to the weight's {v} columns")
    classes = sum(f.num_classes for f in fields)
    if classes < _internal.one_hot_linear_min_classes:
        return _skip(rec, where, f"{classes} one-hot columns < one_hot_linear_min_classes="
                                 f"{_internal.one_hot_linear_min_classes}")
    reason = _hazard(site, writes)
    if reason is not None:
        return _skip(rec, where, reason)
    return site


def _read_features(x: fx.Node, inner: fx.Node, post: list[fx.Node],
                   rec: Recorder) -> tuple[list, fx.Node | None, list[fx.Node], tuple, tuple] | None:
    """The matmul's input read as fields: ``(items, cat, post, lead, chain_dtypes)``, items the
    ``Field`` / ``Dense`` pieces (one field without a cat), ``inner`` what ``x`` is below its
    casts ``post``, ``lead`` the leading shape, ``chain_dtypes`` the dtypes the cat and casts
    round to. None (a skip recorded where it is a candidate) where it is not one."""
    cat = None
    parsed = _cat_pieces(inner)
    if parsed is not None:
        cat, (pieces, dim, col_stack) = inner, parsed
        items = []
        for p in pieces:
            f = _field(p) if isinstance(p, fx.Node) else None
            if isinstance(f, str):
                rec.skip(Skip(NAME, p.name, f))
            items.append(f if isinstance(f, Field) else p)
        if not any(isinstance(f, Field) for f in items):
            return None
        cv = _fx.tensor_meta(cat)
        if cv is None or dim % cv.dim() != cv.dim() - 1:
            return _skip(rec, cat, f"{cat.name} concatenates along dim {dim}, not the feature dim")
        if cat.kwargs.get("out") is not None:
            return _skip(rec, cat, f"{cat.name} writes into out=")
        for k, p in enumerate(items):
            if isinstance(p, Field):
                continue
            pv = _fx.tensor_meta(p)
            if pv is None:
                return _skip(rec, cat, f"the cat input {p} has no fake tensor metadata")
            unsq = col_stack and pv.dim() == 1
            width = 1 if unsq else pv.shape[-1]
            if not isinstance(width, int):
                return _skip(rec, cat, f"the dense input {p.name} has a symbolic width")
            items[k] = Dense(p, width, unsq)
        lead = tuple(cv.shape[:-1])
        chain_dtypes = tuple(d for d in map(_dtype, [cat, *post]) if d is not None)
    else:
        f = _field(x)
        if f is None:
            return None
        if isinstance(f, str):
            return _skip(rec, x, f)
        items, post, chain_dtypes = [f], [], ()
        lead = tuple(_fx.tensor_meta(x).shape[:-1]) if _fx.tensor_meta(x) is not None else ()
    return items, cat, post, lead, chain_dtypes


def _read_weight(node: fx.Node, right: fx.Node, is_linear: bool, bias: Any, fields: list[Field],
                 out_dtype: torch.dtype, rec: Recorder) -> tuple[fx.Node, bool, int, int, Any] | None:
    """The weight as the op reads it, ``[D, V]``: ``(weight, transpose, D, V, its metadata)``,
    or None with the skip recorded (a dtype, device or shape the op does not take, indices on
    another device, a bias that is not ``[D]`` of the weight's dtype)."""
    rv = _fx.tensor_meta(right)
    if rv is None:
        return _skip(rec, node, "no fake tensor metadata on the weight")
    if rv.dim() != 2:
        return _skip(rec, node, f"the weight operand is {rv.dim()}-D, expected 2-D")
    if is_linear:
        weight, transpose = right, False
    else:
        base = _fx.transpose_of(right)
        weight, transpose = (base, False) if base is not None else (right, True)
    wv = _fx.tensor_meta(weight)
    d, v = (wv.shape[1], wv.shape[0]) if transpose else (wv.shape[0], wv.shape[1])
    if wv.dtype not in _fx.FLOAT_DTYPES:
        return _skip(rec, node, f"weight dtype {wv.dtype} is not fp32/fp16/bf16")
    if out_dtype not in _fx.FLOAT_DTYPES:
        return _skip(rec, node, f"result dtype {out_dtype} is not fp32/fp16/bf16")
    if wv.device.type not in ("cpu", "cuda"):
        return _skip(rec, node, f"device {wv.device.type} has no fused kernel")
    if not isinstance(d, int) or not isinstance(v, int):
        return _skip(rec, node, "the weight's shape is symbolic (dynamic weight shape)")
    for f in fields:
        if _fx.tensor_meta(f.index).device != wv.device:
            return _skip(rec, node, f"indices of {f.one_hot.name} are on another device than the weight")
    if bias is not None:
        bv = _fx.tensor_meta(bias)
        if not isinstance(bias, fx.Node) or bv is None or tuple(bv.shape) != (d,) or bv.dtype != wv.dtype:
            return _skip(rec, node, f"the bias is not a [{d}] {wv.dtype} tensor")
    return weight, transpose, d, v, wv


def _scale_site_reason(site: _Site, r: fx.Node) -> str | None:
    """Why a scaled one-hot site cannot be one op times ``r[idx]``, or None."""
    per_class = _fx.tensor_meta(r).shape[-1] != 1
    if any(isinstance(it, Dense) for it in site.items):
        return "the scaled cat has dense pieces (their matmul would need r's columns too)"
    if any(f.bag_dims for f in site.fields):
        return "a multi-hot bag is scaled (eager rounds count * r before the matmul)"
    if per_class and len(site.fields) > 1:
        return f"r scales {len(site.fields)} one-hot fields class by class; one op call sums the fields"
    if site.out_dtype != site.w_dtype:
        return "a scaled one-hot under autocast (eager rounds r to the autocast dtype first)"
    return None


def _skip(rec: Recorder, where, reason: str) -> None:
    rec.skip(Skip(NAME, where if isinstance(where, str) else where.name, reason))
    return None


def _hazard(site: _Site, writes: _fx.Writes) -> str | None:
    """Why reading the indices (and dense pieces) at the matmul would change the result.

    The op replaces the matmul and reads its inputs where the matmul is: so the one-hot
    chain must not be written in place before it (``oh[:, 0] = 0``), and neither the
    indices after the one-hot nor a dense piece after the cat."""
    chain = [n for f in site.fields for n in f.chain] + ([site.cat] if site.cat is not None else []) + site.post
    chain += site.scale_chain
    for n in chain:
        w = writes.writer(n, before=site.node)
        if w is not None:
            return f"{n.name} is written in place by {w.name} before {site.node.name}; left so the write still applies"
    for f in site.fields:
        w = writes.writer(f.index, after=f.one_hot, before=site.node)
        if w is not None:
            return f"the indices of {f.one_hot.name} are written in place by {w.name} before {site.node.name}"
    for item in site.items:
        if isinstance(item, Dense):
            w = writes.writer(item.node, after=site.cat, before=site.node)
            if w is not None:
                return f"the dense input {item.node.name} is written in place by {w.name} after {site.cat.name}"
    if site.scale is not None:  # the op reads r at the matmul
        w = writes.writer(site.scale, after=site.scale_mul, before=site.node)
        if w is not None:
            return f"the scale {site.scale.name} is written in place by {w.name} before {site.node.name}"
    return None


def run(graph: fx.Graph, rec: Recorder, apply: bool) -> None:
    """Find (and, if ``apply``, rewrite) every one_hot_linear site in ``graph``."""
    writes = None
    if not any(_is_one_hot(n) for n in graph.nodes):
        return  # every site starts at a one-hot: nothing to read, nothing to explain
    told: set[fx.Node] = set()  # one-hots a rewrite or a logged skip accounts for
    for node in list(graph.nodes):
        if node.op not in ("call_function", "call_method") or _fx.is_erased(node):
            continue
        members = _contraction_axes(node)
        if members is None and _operands(node) is None:
            continue
        if writes is None:
            writes = _fx.Writes(graph)
        logged = len(rec.report.skipped)
        above = _one_hots_above(node)  # before a rewrite takes the chain away
        site = _read_site(node, rec, writes) if members is None else _read_ensemble(node, members, rec, writes)
        if site is not None or len(rec.report.skipped) > logged:
            told |= above
        if site is None:
            continue
        rewrite = _describe(site)
        if apply:
            (_rewrite_ensemble if isinstance(site, _Ensemble) else _rewrite)(graph, site)
            writes = None  # the graph changed: positions are recomputed for the next site
        rec.rewrite(rewrite)
    _note_other_contractions(graph, told, rec)


# Ops that contract a one-hot with a weight in forms the pattern does not take (yet): a
# one-hot that reaches one of them unexplained gets a logged reason, never silence.
_CONTRACTIONS = frozenset({torch.einsum, torch.bmm, torch.baddbmm, torch.tensordot, torch.addmm, torch.addbmm,
                           torch.inner, torch.mv, torch.dot, *_fx.LINEAR_TARGETS, *_fx.MATMUL_TARGETS})
_CONTRACTION_METHODS = frozenset({"bmm", "baddbmm", "addmm", "addbmm", "mv", "dot", "inner", *_fx.MATMUL_METHODS})


def _is_contraction(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _CONTRACTIONS)
            or (node.op == "call_method" and node.target in _CONTRACTION_METHODS))


def _one_hots_above(node: fx.Node, depth: int = 8) -> set[fx.Node]:
    """The one-hot nodes at most ``depth`` steps above ``node`` (each node visited once: a
    model's residual adds would otherwise make the walk grow with every level)."""
    seen, frontier = {node}, [node]
    for _ in range(depth):
        frontier = [i for n in frontier for i in n.all_input_nodes if i not in seen and not seen.add(i)]
    return {n for n in seen if _is_one_hot(n)}


def _note_other_contractions(graph: fx.Graph, told: set[fx.Node], rec: Recorder, depth: int = 8) -> None:
    """Log each one-hot that reaches a contraction (einsum, bmm, a matmul the pattern read
    and left silently, ...) within ``depth`` steps and that no rewrite or skip accounts for:
    which op, through which steps."""
    for oh in graph.nodes:
        if not _is_one_hot(oh) or oh in told:
            continue
        paths, seen = [[oh]], {oh}
        for _ in range(depth):
            hit = next((p for p in paths if len(p) > 1 and _is_contraction(p[-1])), None)
            if hit is not None:
                steps = _fx.step_names(list(reversed(hit[1:])))
                rec.skip(Skip(NAME, oh.name, f"{oh.name} reaches a contraction through {steps}: not a form "
                                             "one_hot_linear takes (F.linear / matmul / mm / @ of a cast, summed, "
                                             "scaled or concatenated one-hot, or einsum / bmm / baddbmm of per-member "
                                             "copies of one, see docs/patterns.md); left"))
                break
            paths = [[*p, u] for p in paths for u in p[-1].users if u not in seen and not seen.add(u)]
            if not paths:
                break


def _describe(site: _Site) -> Rewrite:
    name = _fx.table_name(site.weight)
    fields, offsets = site.fields, [o for o, it in zip(site.offsets(), site.items) if isinstance(it, Field)]
    whole = len(site.items) == 1
    replaced: list[str] = []
    for n in ([n for f in fields for n in reversed(f.chain)] + ([site.cat] if site.cat is not None else []) + site.post
              + site.scale_chain):
        if n.name not in replaced:
            replaced.append(n.name)
    replaced.append(site.node.name)
    return Rewrite(
        pattern=NAME,
        replaced=tuple(replaced),
        fused_op=_OP,
        tables=tuple(
            TableInfo(name if whole else f"{name}[:, {o}:{o + f.num_classes}]", f.num_classes, site.dim, site.w_dtype)
            for f, o in zip(fields, offsets)
        ),
        index_shape=site.lead,
        dtype=site.out_dtype,
    )


def _bag_index(graph: fx.Graph, f: Field, like: fx.Node) -> fx.Node:
    """The field's indices as the op takes them: ``[*L, bag]`` with the bag dims last."""
    if not f.bag_dims:
        return _fx.call(graph, torch.unsqueeze, (f.index, -1), like)
    rank = _fx.tensor_meta(f.index).dim()
    k = len(f.bag_dims)
    trailing = tuple(range(rank - k, rank))
    idx = f.index
    if f.bag_dims != trailing:
        idx = _fx.call(graph, torch.movedim, (idx, list(f.bag_dims), list(trailing)), like)
    if k > 1:
        idx = _fx.call(graph, torch.flatten, (idx, rank - k), like)
    return idx


def _rewrite(graph: fx.Graph, site: _Site) -> None:
    node = site.node
    autocast = site.out_dtype != site.w_dtype
    offsets = site.offsets()
    with graph.inserting_before(node):
        w = _fx.call(graph, torch.t, (site.weight,), node) if site.transpose else site.weight
        fields = [(it, off) for it, off in zip(site.items, offsets) if isinstance(it, Field)]
        indices = [_bag_index(graph, f, node) for f, _ in fields]
        args = [
            indices,
            [f.num_classes for f, _ in fields],
            [off for _, off in fields],
            w,
            site.bias if site.scale is None else None,  # a scaled site adds its bias after the scale
            site.out_dtype if autocast else None,
        ]
        while args[-1] is None:  # the graph reads better without trailing defaults
            args.pop()
        out = _fx.call(graph, torch.ops.inductor_embed.one_hot_linear.default, tuple(args), node)
        if site.scale is not None:
            out = _scaled(graph, site, out, indices, node)
        dense = [(it, off) for it, off in zip(site.items, offsets) if isinstance(it, Dense)]
        if dense:
            out = _fx.call(graph, operator.add, (out, _dense_matmul(graph, site, dense, w, autocast)), node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _scaled(graph: fx.Graph, site: _Site, out: fx.Node, indices: list[fx.Node], node: fx.Node) -> fx.Node:
    """``out * r[idx] (+ bias)``: ``r[idx]`` is the op again, on ``r`` as a ``[1, n]`` weight
    (one field), so an index out of range fails the op's check, and r's gradient is its
    backward's scatter; a one-value ``r`` multiplies as it is."""
    if site.per_class:
        n = site.fields[0].num_classes
        r = _fx.call(graph, torch.reshape, (site.scale, (1, n)), node)
        r = _fx.call(graph, torch.ops.inductor_embed.one_hot_linear.default, (indices, [n], [0], r), node)
    else:
        r = _fx.call(graph, torch.reshape, (site.scale, (1,)), node)
    out = _fx.call(graph, operator.mul, (out, r), node)
    if site.bias is not None:
        out = _fx.call(graph, operator.add, (out, site.bias), node)
    return out


def _dense_matmul(graph: fx.Graph, site: _Site, dense: list, w: fx.Node, autocast: bool) -> fx.Node:
    """``F.linear`` of the cat's dense pieces with their columns of the weight: the same
    cat, type promotion and casts as the original, minus the one-hot pieces."""
    node = site.node
    pieces = [_fx.call(graph, torch.unsqueeze, (d.node, -1), node) if d.unsqueeze else d.node for d, _ in dense]
    x = pieces[0] if len(pieces) == 1 else _fx.call(graph, torch.cat, (pieces, -1), node)
    cat_dtype = _dtype(site.cat)
    if _dtype(x) != cat_dtype:  # the original cat promoted its inputs together with the one-hots
        x = _fx.call_method(graph, "to", (x, cat_dtype), node)
    for c in site.post:
        x = _fx.copy_node(graph, c, {c.args[0]: x})
    cols = [_fx.call(graph, torch.narrow, (w, 1, off, d.width), node) for d, off in dense]
    wd = cols[0] if len(cols) == 1 else _fx.call(graph, torch.cat, (cols, 1), node)
    if autocast:  # what autocast does to the linear's inputs at run time, explicit for the meta
        x = _fx.call_method(graph, "to", (x, site.out_dtype), node)
        wd = _fx.call_method(graph, "to", (wd, site.out_dtype), node)
    return _fx.call(graph, F.linear, (x, wd), node)


# --- the ensemble form ------------------------------------------------------------------
# Tabular ensembles (TabM-style) put the features together once, give each of k members a
# copy, optionally scale it per member and multiply by a per-member weight:
#
#     feats = torch.column_stack([F.one_hot(x0, n0), ..., cont])            # [B, V]
#     h = feats[:, None].expand(-1, k, -1) * r                               # [B, k, V], r [k, V]
#     y = torch.einsum("bki,kio->bko", h, W)                                 # W [k, V, O]
#
# (or ``feats.unsqueeze(0).expand(k, -1, -1) * r[:, None]`` into ``torch.bmm`` / ``baddbmm`` /
# a 3-D ``@``). Member m's one-hot columns select rows of ``W'[m] = r[m, :, None] * W[m]``,
# so ``y[b] = sum_fields W'[:, off + idx[b], :] (+ the dense columns' einsum)``: the op
# gathers rows of W' laid out as ``[V, k * O]`` (one contiguous row per class), and the
# result is unflattened to ``[B, k, O]``. Building W' costs k x V x O, the dense einsum it
# replaces B x k x V x O.

_MEMBER_VIEWS = ("unsqueeze", "expand", "expand_as", "broadcast_to")


def _contraction_axes(node: fx.Node) -> tuple[fx.Node, fx.Node, Any, str, str, str] | None:
    """``(h, W, bias, h_axes, w_axes, out_axes)`` of a per-member contraction of 3-D operands,
    each axes string over "bkio" (rows, members, features, outputs), else None."""
    if node.op == "call_function" and node.target is torch.einsum and isinstance(node.args[0], str):
        ops = node.args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        eq = node.args[0].replace(" ", "")
        if len(ops) != 2 or node.kwargs or "." in eq or eq.count("->") != 1 or eq.count(",") != 1:
            return None
        lhs, out = eq.split("->")
        a, b = lhs.split(",")
        if any(len(s) != 3 or len(set(s)) != 3 for s in (a, b, out)):
            return None
        role = {(True, False, True): "b", (True, True, True): "k", (True, True, False): "i", (False, True, True): "o"}
        letters = {c: role.get((c in a, c in b, c in out)) for c in set(a + b + out)}
        if sorted(v or "" for v in letters.values()) != ["b", "i", "k", "o"]:
            return None
        h, w = ops
        return h, w, None, "".join(letters[c] for c in a), "".join(letters[c] for c in b), \
            "".join(letters[c] for c in out)
    bias = None
    if node.op == "call_function" and node.target is torch.baddbmm:
        args = _fx.bind(node, ("input", "batch1", "batch2", "beta", "alpha"), {"beta": 1, "alpha": 1})
        if args["beta"] != 1 or args["alpha"] != 1:
            return None
        bias, h, w = args.get("input"), args.get("batch1"), args.get("batch2")
    elif (node.op == "call_function" and node.target in (torch.bmm, *_fx.MATMUL_TARGETS)) or (
            node.op == "call_method" and node.target in ("bmm", *_fx.MATMUL_METHODS)):
        args = _fx.bind(node, ("input", "other"), {}, {"self": "input", "mat2": "other"})
        h, w = args.get("input"), args.get("other")
    else:
        return None
    if node.kwargs.get("out") is not None or any(getattr(_fx.tensor_meta(x), "ndim", 0) != 3 for x in (h, w)):
        return None
    return h, w, bias, "kbi", "kio", "kbo"


def _same_size(a: Any, b: Any) -> bool:
    # Symbolic sizes compare by their expression: no guard is added after Dynamo's.
    return a is b or str(a) == str(b)


def _member_view(node: fx.Node, labels: list) -> list | None:
    """The axis labels ("b"/"i" for the features' rows and columns, None for a new axis)
    after ``node``, a step that copies its input's values to new axes only (a cast,
    ``unsqueeze``, ``[:, None]``, ``expand``), given its input's ``labels``; else None."""
    inp, out = _fx.tensor_meta(node.args[0]) if node.args else None, _fx.tensor_meta(node)
    if inp is None or out is None or node.kwargs.get("out") is not None:
        return None
    if _fx.cast_input(node) is not None:
        return labels
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op == "call_function" and node.target is operator.getitem:
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(not (i is None or i is Ellipsis or i == slice(None)) for i in idx) or list(idx).count(Ellipsis) > 1:
            return None
        kept = len(labels) - sum(i == slice(None) for i in idx)
        new: list = []
        rest = list(labels)
        for i in idx:
            if i is None:
                new.append(None)
            elif i is Ellipsis:
                new += rest[:kept]
                rest = rest[kept:]
            else:
                new.append(rest.pop(0))
        return new + rest
    if node.op == "call_function" and node.target not in (torch.unsqueeze, torch.broadcast_to):
        return None
    if name == "unsqueeze" and len(node.args) == 2 and isinstance(node.args[1], int):
        d = node.args[1] % (len(labels) + 1)
        return labels[:d] + [None] + labels[d:]
    if name in ("expand", "expand_as", "broadcast_to"):
        new = [None] * (out.dim() - inp.dim()) + list(labels)
        lead = out.dim() - inp.dim()
        if lead < 0 or any(lab is not None and not _same_size(out.shape[lead + d], inp.shape[d])
                           for d, lab in enumerate(labels)):
            return None
        return new
    return None


@dataclasses.dataclass
class _Ensemble(_Site):
    """A per-member contraction: ``items`` are the features' pieces; ``post`` the steps from
    the features to the contraction's operand (views and casts; the scale's mul and the casts
    after it are ``scale_chain``); ``weight`` is the ``[k, V, O]`` weight as ``w_axes`` lays it
    out, ``bias`` baddbmm's input."""

    h_axes: str = "bki"
    w_axes: str = "kio"
    out_axes: str = "bko"
    members: int = 0
    outputs: int = 0


def _read_ensemble(node: fx.Node, parts: tuple, rec: Recorder, writes: _fx.Writes) -> _Ensemble | None:
    h, w, bias, h_axes, w_axes, out_axes = parts
    if not isinstance(h, fx.Node) or not isinstance(w, fx.Node):
        return None
    x, top = _peel_casts(h)
    scale = mul = None
    if (x.op == "call_function" and x.target in _MUL_TARGETS) or (x.op == "call_method" and x.target in _MUL_METHODS):
        if len(x.args) == 2 and not x.kwargs:
            for a, b in (x.args, x.args[::-1]):
                if isinstance(a, fx.Node) and _features_below(a) is not None:
                    mul, x, scale = x, a, b
                    break
    found = _features_below(x)
    if found is None:
        return None
    feats, steps = found
    fv = _fx.tensor_meta(feats)
    if fv is None or fv.dim() != 2:
        # each member must read the same [B, V] features (a [k, B] index would give each its own)
        return _skip(rec, mul if mul is not None else node, f"the one-hot features reaching {node.name} are "
                     f"{'?' if fv is None else list(fv.shape)}, not [B, V] rows copied to every member")
    labels: list | None = ["b", "i"]
    for s in steps:
        labels = _member_view(s, labels) if labels is not None else None
    hv, wv, out = _fx.tensor_meta(h), _fx.tensor_meta(w), _fx.tensor_meta(node)
    where = mul if mul is not None else steps[-1] if steps else feats
    if labels is None or hv is None or wv is None or out is None:
        return _skip(rec, where, f"the features reach {node.name} through steps other than casts, unsqueeze, "
                                 "[:, None] and expand (each member must read the same [B, V] features)")
    if mul is not None:
        labels = [None] * (hv.dim() - len(labels)) + labels
    if len(labels) != 3 or [lab or "k" for lab in labels] != list(h_axes):
        return _skip(rec, where, f"{node.name} contracts the features' axes as {h_axes!r}, not as rows x members "
                                 "x features with the members a new axis")
    if wv.dtype not in _fx.FLOAT_DTYPES or wv.device.type not in ("cpu", "cuda"):
        return _skip(rec, node, f"a {wv.dtype} weight on {wv.device.type}: no fused kernel")
    reason = None if mul is None else _member_scale_reason(mul, scale, hv, h_axes)
    if reason is not None:
        return _skip(rec, mul, reason)
    k, v, o = (wv.shape[w_axes.index(a)] for a in "kio")
    if not all(isinstance(s, int) for s in (k, v, o)):
        return _skip(rec, node, "the per-member weight's shape is symbolic (dynamic weight shape)")
    hk = hv.shape[h_axes.index("k")]
    want = {"b": fv.shape[0], "k": k, "o": o}
    if not isinstance(hk, int) or hk != k or any(not _same_size(out.shape[d], want[a]) for d, a in enumerate(out_axes)):
        # a member axis of size 1 on one side broadcasts in the contraction: not k members
        return _skip(rec, node, f"{node.name} broadcasts its member axis (features x{hk}, weight x{k}): "
                                "not one copy of the features per member")
    dtype = wv.dtype
    if (hv.dtype, out.dtype) != (dtype, dtype) or (mul is not None and _dtype(scale) != dtype):
        return _skip(rec, node, f"{node.name} mixes dtypes (features {hv.dtype}, weight {dtype}, result "
                                f"{out.dtype}; autocast?): the gather would round differently")
    if bias is not None:
        bv = _fx.tensor_meta(bias)
        if not isinstance(bias, fx.Node) or bv is None or bv.dtype != dtype:
            return _skip(rec, node, f"the baddbmm input is not a {dtype} tensor")
    read = _ensemble_items(feats, rec)
    if read is None:
        return None
    items, cat = read
    fields = [f for f in items if isinstance(f, Field)]
    site = _Ensemble(node, w, False, bias, items, cat, list(steps), dtype, dtype, k * o, tuple(fv.shape[:-1]),
                     scale=scale, scale_mul=mul, scale_chain=[mul, *reversed(top)] if mul is not None else [],
                     h_axes=h_axes, w_axes=w_axes, out_axes=out_axes, members=k, outputs=o)
    if mul is None:
        site.post += list(reversed(top))
    reason = _ensemble_reason(site, fields, steps, v, writes)
    if reason is not None:
        return _skip(rec, fields[0].one_hot.name if len(fields) == 1 else node.name, reason)
    return site


def _member_scale_reason(mul: fx.Node, scale: Any, hv: Any, h_axes: str) -> str | None:
    """Why ``mul``'s ``scale`` of an ensemble's features is not per member and feature, or
    None. Each member reads the same features, so the scale may not vary along the rows."""
    rv = _fx.tensor_meta(scale)
    if not isinstance(scale, fx.Node) or rv is None:
        return f"{mul.name} scales the features by a Python number (its rounding in half types is not a tensor's)"
    if rv.dim() > 3 or rv.dtype not in _fx.FLOAT_DTYPES or rv.device != hv.device:
        return (f"{mul.name} scales the features by a {list(rv.shape)} {rv.dtype} tensor on {rv.device}: not a "
                "per-member scale")
    if ((1,) * (3 - rv.dim()) + tuple(rv.shape))[h_axes.index("b")] != 1:
        return f"{mul.name} scales each row differently ({list(rv.shape)}): not a per-member scale"
    return None


def _ensemble_items(feats: fx.Node, rec: Recorder) -> tuple[list, fx.Node | None] | None:
    """An ensemble's features read as ``(items, cat)``: its ``Field`` / ``Dense`` pieces and the
    cat that joins them (None for one one-hot), or None with the skip recorded."""
    parsed = _cat_pieces(feats)
    cat = None
    if parsed is not None:
        cat, (pieces, dim, col_stack) = feats, parsed
        if dim % 2 != 1:
            return _skip(rec, cat, f"{cat.name} concatenates along dim {dim}, not the feature dim")
        items = []
        for p in pieces:
            f = _field(p) if isinstance(p, fx.Node) else None
            if isinstance(f, str):
                return _skip(rec, p, f)
            if f is None:
                pv = _fx.tensor_meta(p)
                if pv is None or not isinstance(pv.shape[-1], int):
                    return _skip(rec, cat, f"the dense input {p} has no static width")
                f = Dense(p, 1 if col_stack and pv.dim() == 1 else pv.shape[-1], col_stack and pv.dim() == 1)
            items.append(f)
    else:
        f = _field(feats)
        if isinstance(f, str):
            return _skip(rec, feats, f)
        items = [f]
    return items, cat


def _ensemble_reason(site: _Ensemble, fields: list[Field], steps: list[fx.Node], v: int,
                     writes: _fx.Writes) -> str | None:
    """Why an ensemble site read whole cannot be the op, or None: rounding the op would not
    match, widths that do not add up to the weight's ``v`` features, too few classes, or a
    write in the way."""
    reason = _inexact(fields, tuple(d for d in map(_dtype, [*([site.cat] if site.cat else []), *steps]) if d is not None))
    if reason is None and site.scale_mul is not None and any(f.bag_dims for f in fields):
        reason = "a multi-hot bag is scaled (eager rounds count * r before the contraction)"
    if reason is None and sum(it.num_classes if isinstance(it, Field) else it.width for it in site.items) != v:
        reason = f"the feature widths do not add up to the weight's {v} features"
    if reason is None and sum(f.num_classes for f in fields) < _internal.one_hot_linear_min_classes:
        reason = f"fewer one-hot columns than one_hot_linear_min_classes={_internal.one_hot_linear_min_classes}"
    if reason is None:
        reason = _hazard(site, writes)
    if reason is None and site.bias is not None and (w_ := writes.writer(site.bias, before=site.node)) is not None:
        reason = f"the baddbmm input {site.bias.name} is written in place by {w_.name}"
    return reason


def _features_below(x: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(features, steps)`` if ``x`` is a one-hot (or a cat with one-hot pieces) after at
    most a few casts and member views (``steps`` in graph order), else None."""
    steps: list[fx.Node] = []
    for _ in range(8):
        if _reaches_one_hot(x) and (_field(x) is not None or _cat_pieces(x) is not None):
            return x, steps[::-1]
        if not isinstance(x, fx.Node) or not x.args or not isinstance(x.args[0], fx.Node):
            return None
        name = x.target if x.op == "call_method" else getattr(x.target, "__name__", None)
        if _fx.cast_input(x) is None and name not in (*_MEMBER_VIEWS, "getitem"):
            return None
        steps.append(x)
        x = x.args[0]
    return None


def _rewrite_ensemble(graph: fx.Graph, site: _Ensemble) -> None:
    node, k, o = site.node, site.members, site.outputs
    offsets = site.offsets()
    with graph.inserting_before(node):
        w = site.weight  # as [k, V, O]
        if site.w_axes != "kio":
            w = _fx.call(graph, torch.permute, (w, [site.w_axes.index(a) for a in "kio"]), node)
        if site.scale is not None:
            # r as the mul broadcast it over the contraction's operand, then [k|1, V|1, 1]
            shape = tuple(_fx.tensor_meta(site.scale).shape)
            r = _fx.call(graph, torch.reshape, (site.scale, (1,) * (3 - len(shape)) + shape), node)
            r = _fx.call(graph, torch.permute, (r, [site.h_axes.index(a) for a in "kib"]), node)
            w = _fx.call(graph, operator.mul, (w, r), node)
        rows = _fx.call(graph, torch.reshape, (_fx.call(graph, torch.permute, (w, [1, 0, 2]), node),
                                               (-1, k * o)), node)  # [V, k * O], one row per feature
        fields = [(it, off) for it, off in zip(site.items, offsets) if isinstance(it, Field)]
        indices = [_bag_index(graph, f, node) for f, _ in fields]
        out = _fx.call(graph, torch.ops.inductor_embed.one_hot_linear.default,
                       (indices, [f.num_classes for f, _ in fields], [off for _, off in fields],
                        _fx.call(graph, torch.t, (rows,), node)), node)
        out = _fx.call(graph, torch.unflatten, (out, -1, (k, o)), node)  # [B, k, O]
        dense = [(it, off) for it, off in zip(site.items, offsets) if isinstance(it, Dense)]
        if dense:
            out = _fx.call(graph, operator.add, (out, _ensemble_dense(graph, site, dense, w)), node)
        if site.out_axes != "bko":
            out = _fx.call(graph, torch.permute, (out, ["bko".index(a) for a in site.out_axes]), node)
        if site.bias is not None:
            out = _fx.call(graph, operator.add, (site.bias, out), node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _ensemble_dense(graph: fx.Graph, site: _Ensemble, dense: list, w: fx.Node) -> fx.Node:
    """``einsum("bi,kio->bko")`` of the features' dense pieces (their cat's type promotion and
    the chain's casts replayed) with their features' rows of the (scaled) ``[k, V, O]`` weight."""
    node = site.node
    pieces = [_fx.call(graph, torch.unsqueeze, (d.node, -1), node) if d.unsqueeze else d.node for d, _ in dense]
    x = pieces[0] if len(pieces) == 1 else _fx.call(graph, torch.cat, (pieces, -1), node)
    if _dtype(x) != _dtype(site.cat):
        x = _fx.call_method(graph, "to", (x, _dtype(site.cat)), node)
    for c in [*site.post, *site.scale_chain]:
        if _fx.cast_input(c) is not None:
            x = _fx.copy_node(graph, c, {c.args[0]: x})
    cols = [_fx.call(graph, torch.narrow, (w, 1, off, d.width), node) for d, off in dense]
    wd = cols[0] if len(cols) == 1 else _fx.call(graph, torch.cat, (cols, 1), node)
    return _fx.call(graph, torch.einsum, ("bi,kio->bko", x, wd), node)
