"""Small FX helpers shared by the patterns: argument binding, meta values, names."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed import _compat

# The torch functions Dynamo records, and the ATen overloads of an exported program
# (AOTInductor runs the pre-grad pass that enable() installs on those).
CAT_TARGETS = (torch.cat, torch.concat, torch.concatenate, torch.ops.aten.cat.default)
STACK_TARGETS = (torch.stack, torch.ops.aten.stack.default)
EMBEDDING_ATEN = (torch.embedding, torch.ops.aten.embedding.default)
UNSQUEEZE_TARGETS = (torch.unsqueeze, torch.ops.aten.unsqueeze.default)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
# F.one_hot and F.linear are the C functions themselves (torch._C._nn.*), which Dynamo records.
ONE_HOT_TARGETS = (F.one_hot,)
LINEAR_TARGETS = (F.linear,)
MATMUL_TARGETS = (operator.matmul, torch.matmul, torch.mm)
MATMUL_METHODS = ("matmul", "mm", "__matmul__")
# Methods that only change a tensor's dtype (Dynamo keeps x.float() etc. as call_method).
CAST_METHODS = ("float", "half", "bfloat16", "double", "long", "int", "short", "char", "byte", "bool",
                "to", "type", "type_as")

# F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
_F_EMBEDDING = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")
# torch.embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse): the ATen order
_TORCH_EMBEDDING = ("weight", "input", "padding_idx", "scale_grad_by_freq", "sparse")
_EMBEDDING_DEFAULTS = {"padding_idx": None, "max_norm": None, "norm_type": 2.0, "scale_grad_by_freq": False, "sparse": False}


# FBGEMM's table-batched embedding (TBE) lookups, which torchrec's sharded modules call: the
# ops (``fbgemm.split_embedding_codegen_lookup_sgd_function_pt2``, ``..._forward_..._pt2_wrapper``,
# ``dense_embedding_codegen_lookup_function``, ``int_nbit_split_embedding_codegen_...``) and
# the autograd nodes of their outputs (``CppNode<SplitLookupFunction_sgd_Op_pt2>``). FBGEMM's
# sparse-data ops (``permute_2D_sparse_data``, ``bounds_check_indices``) are not lookups.
_TBE_OP = re.compile(r"embedding_codegen|embedding_bag|_tbe_|^tbe_")
_TBE_GRAD_FN = re.compile(r"LookupFunction|EmbeddingBagsCodegen|TableBatched")
TORCHREC_REASON = "torchrec/FBGEMM table-batched embedding (already fused): left to torchrec"


def table_batched_reason(node: fx.Node) -> str | None:
    """Why ``node`` is left to torchrec/FBGEMM: a TBE lookup op in the graph, or a graph input
    that a TBE lookup computed before the graph began (Dynamo breaks the graph at an FBGEMM op
    without a fake-tensor kernel, as fbgemm-gpu-cpu's forward ops are, and runs it eagerly).
    None for anything else."""
    if node.op == "call_function":
        ns, name = _compat.op_name(node.target) or ("", "")
        if ns == "fbgemm" and _TBE_OP.search(name):
            return f"{TORCHREC_REASON} ({node.target})"
    elif node.op == "placeholder":
        grad_fn = _compat.graph_input_grad_fn(node)
        if grad_fn is not None and _TBE_GRAD_FN.search(grad_fn):
            return f"{TORCHREC_REASON} (its output, made by {grad_fn} outside this graph, is an input here)"
    return None


def meta_val(node: Any) -> Any:
    """The fake tensor (or SymInt) a node produces, from Dynamo's or AOT's meta."""
    if not isinstance(node, fx.Node):
        return node
    val = node.meta.get("val")
    return node.meta.get("example_value") if val is None else val


def bind(node: fx.Node, names: Sequence[str], defaults: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """Positional + keyword arguments of a call node as one dict (defaults filled in)."""
    out = dict(defaults)
    out.update(zip(names, node.args))
    for key, value in node.kwargs.items():
        out[(aliases or {}).get(key, key)] = value
    return out


# Node meta key: where a node sits among the graph's regions (``mark_regions``).
_REGION = "inductor_embed_region"


def mark_regions(graph: fx.Graph) -> None:
    """Record in each node's meta whether it runs inside a torch.func transform (Dynamo's graph
    holds ``_grad_increment_nesting`` ... ``_grad_decrement_nesting``, and vmap's and jvp's alike)
    and whether the graph turns gradients on or off inside (``torch._C._set_grad_enabled``):
    ``region_problem`` reads it."""
    depth = 0
    varies = bool(graph.find_nodes(op="call_function", target=torch._C._set_grad_enabled))
    for n in graph.nodes:
        name = getattr(n.target, "__name__", "") if n.op == "call_function" else ""
        if name.endswith("_increment_nesting"):
            depth += 1
        elif name.endswith("_decrement_nesting"):
            depth = max(depth - 1, 0)
        n.meta[_REGION] = (depth > 0, varies)


def copy_region(src: fx.Node, dst: fx.Node) -> None:
    """``dst`` takes ``src``'s place: the same region."""
    if _REGION in src.meta:
        dst.meta[_REGION] = src.meta[_REGION]


def region_problem(node: fx.Node, table: Any) -> str | None:
    """Why a lookup ``node`` of ``table`` cannot become a fused op because of where it runs, or None.

    Inside a torch.func transform the fused ops, which have no functorch rules, would fail AOT's
    trace. Where the graph turns gradients off for a block, a lookup read there of a table that
    needs gradients would get them through a fused op placed outside the block."""
    in_transform, grad_mode_varies = node.meta.get(_REGION, (False, False))
    if in_transform:
        return "inside a torch.func transform (grad, vmap, jvp): the fused ops have no functorch rules"
    if grad_mode_varies:
        out, w = meta_val(node), meta_val(table)
        if isinstance(out, torch.Tensor) and isinstance(w, torch.Tensor) and out.requires_grad != w.requires_grad:
            return ("read where the graph turns gradients off (a torch.no_grad() block) from a table that needs "
                    "them: a fused op outside the block would give the table a gradient")
    return None


def grad_mode_varies(node: fx.Node) -> bool:
    """Whether ``node``'s graph turns gradients on or off inside (``mark_regions``)."""
    return node.meta.get(_REGION, (False, False))[1]


def embedding_args(node: fx.Node) -> dict[str, Any] | None:
    """F.embedding / torch.embedding / aten.embedding arguments by name, or None if the node is not one."""
    if node.op != "call_function":
        return None
    if node.target is F.embedding:
        return bind(node, _F_EMBEDDING, _EMBEDDING_DEFAULTS)
    if node.target in EMBEDDING_ATEN:
        return bind(node, _TORCH_EMBEDDING, _EMBEDDING_DEFAULTS, {"indices": "input"})
    return None


def is_erased(node: fx.Node) -> bool:
    """Whether a rewrite already removed this node from its graph."""
    return bool(getattr(node, "_erased", False))


def is_embedding(node: Any) -> bool:
    return isinstance(node, fx.Node) and embedding_args(node) is not None


def list_and_dim(node: fx.Node) -> tuple[list[Any], int] | None:
    """``(tensors, dim)`` of a torch.cat/concat/concatenate/stack call, else None."""
    if node.op != "call_function" or node.target not in CAT_TARGETS + STACK_TARGETS:
        return None
    args = bind(node, ("tensors", "dim"), {"dim": 0}, {"axis": "dim"})
    tensors, dim = args.get("tensors"), args["dim"]
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        return None
    return list(tensors), dim


def unsqueeze_of(node: Any) -> tuple[fx.Node, int] | None:
    """``(x, dim)`` if node is ``x.unsqueeze(dim)`` / ``torch.unsqueeze(x, dim)``."""
    if not isinstance(node, fx.Node):
        return None
    if (node.op == "call_method" and node.target == "unsqueeze") or (
        node.op == "call_function" and node.target in UNSQUEEZE_TARGETS
    ):
        args = bind(node, ("input", "dim"), {}, {"self": "input"})
        if isinstance(args.get("input"), fx.Node) and isinstance(args.get("dim"), int):
            return args["input"], args["dim"]
    return None


# Python's in-place operators as Dynamo records them (``x += y`` -> operator.iadd, ``x[i] = v``).
_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift, operator.imatmul,
})
_INPLACE_DUNDERS = frozenset(f"__{op.__name__.strip('_')}__" for op in _INPLACE_OPERATORS)


def written_args(node: fx.Node) -> list[Any]:
    """The values ``node`` may write in place, read conservatively off its target:
    ``x.mul_()``, ``torch.relu_(x)``, ``x += 1``, ``x[i] = v``, ``inplace=True``, ``out=``,
    and ``Tensor(a!)`` arguments of ATen overloads."""
    args, kwargs = node.args, node.kwargs
    first = args[0] if args else kwargs.get("input", kwargs.get("self"))
    written: list[Any] = []
    if node.op == "call_method":
        name = str(node.target)
        if (name.endswith("_") and not name.startswith("__")) or name in _INPLACE_DUNDERS:
            written.append(first)
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("_")):
            written.append(first)
        elif kwargs.get("inplace") is True:
            written.append(first)
        written += _compat.schema_written_args(node.target, args, kwargs)
    elif node.op == "call_module" and node.graph.owning_module is not None:
        try:
            module = node.graph.owning_module.get_submodule(str(node.target))
        except AttributeError:
            module = None
        if getattr(module, "inplace", False) is True:
            written.append(first)
    if node.op in ("call_function", "call_method") and "out" in kwargs:
        written += _flatten(kwargs["out"])
    return [w for w in written if isinstance(w, fx.Node)]


def storage_keys(value: Any) -> set | None:
    """Storage identities of a node's value (a tensor, or a tuple of them): empty for a
    value without storage (a SymInt), None when unknown (no metadata)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        key = _compat.storage_key(value)
        return None if key is None else {key}
    keys: set = set()
    if isinstance(value, (list, tuple)):
        for v in value:
            if v is not None:
                sub = storage_keys(v)
                if sub is None:
                    return None
                keys |= sub
    return keys


class Writes:
    """Every in-place write in a graph, to ask whether a value, or anything sharing its
    storage (a view, a base, an in-place result), is written, and where.

    An FX graph before autograd is not functional: ``e.mul_(2)`` between a lookup and
    its cat changes what the cat reads. A write whose target has no metadata counts as
    writing everything.
    """

    def __init__(self, graph: fx.Graph) -> None:
        self.order = {n: k for k, n in enumerate(graph.nodes)}
        self.writes: list[tuple[fx.Node, set | None]] = []
        for n in graph.nodes:
            targets = written_args(n)
            if targets:
                keys: set | None = set()
                for t in targets:
                    sub = storage_keys(meta_val(t))
                    keys = None if sub is None or keys is None else keys | sub
                self.writes.append((n, keys))

    def writer(self, node: fx.Node, after: fx.Node | None = None, before: fx.Node | None = None,
               ignore: Collection[fx.Node] = ()) -> fx.Node | None:
        """The first node that writes ``node``'s storage in place (strictly between
        ``after`` and ``before`` when given), or None; writes by ``ignore`` (a match's own
        ``h += e`` steps) do not count."""
        return next(iter(self.writers(node, after, before, ignore)), None)

    def writers(self, node: fx.Node, after: fx.Node | None = None, before: fx.Node | None = None,
                ignore: Collection[fx.Node] = ()) -> list[fx.Node]:
        """Every node that writes ``node``'s storage in place (strictly between ``after``
        and ``before`` when given, not in ``ignore``), in graph order."""
        keys = storage_keys(meta_val(node))
        lo = self.order.get(after, -1) if after is not None else -1
        hi = self.order.get(before, len(self.order)) if before is not None else len(self.order)
        return [w for w, wkeys in self.writes if lo < self.order.get(w, -1) < hi and w not in ignore
                and (keys is None or wkeys is None or bool(keys & wkeys) or w.args[:1] == (node,))]


def escapes(node: fx.Node, graph: fx.Graph) -> bool:
    """Whether ``node``'s storage is visible to the caller: it, or a view of it, is an output."""
    keys = storage_keys(meta_val(node))
    for out in graph.find_nodes(op="output"):
        for v in _flatten(out.args):
            if not isinstance(v, fx.Node):
                continue
            if v is node or keys is None:
                return True
            vkeys = storage_keys(meta_val(v))
            if vkeys is None or keys & vkeys:
                return True
    return False


def call(graph: fx.Graph, target: Callable, args: tuple, like: fx.Node) -> fx.Node:
    """Insert ``target(*args)`` (at the graph's insert point) with fake meta and ``like``'s debug meta."""
    node = graph.call_function(target, args)
    vals = [meta_val(a) for a in _flatten(args)]
    fake_mode = _compat.fake_mode_of([v for v in vals if isinstance(v, torch.Tensor)])
    if fake_mode is not None:
        with fake_mode:
            val = target(*_map_meta(args))
        node.meta["val"] = val
        node.meta["example_value"] = val
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    return node


def _flatten(args: Any) -> list[Any]:
    if isinstance(args, (list, tuple)):
        return [y for x in args for y in _flatten(x)]
    return [args]


def _map_meta(args: Any) -> Any:
    if isinstance(args, (list, tuple)):
        return type(args)(_map_meta(a) for a in args)
    return meta_val(args)


def table_name(weight: fx.Node) -> str:
    """A readable name for a table: the model's parameter path when Dynamo recorded it."""
    if weight.op == "get_attr":
        return str(weight.target)
    source = _compat.graph_arg_source_name(weight) if weight.op == "placeholder" else None
    if not source:
        return weight.name
    name = re.sub(r"\._(?:modules|parameters|buffers)\['([^']+)'\]", r".\1", source)
    name = re.sub(r"^L\['self'\]\.?", "", name)
    name = re.sub(r"^L\['([^']+)'\]", r"\1", name)
    return name or weight.name


def tensor_meta(node: Any) -> torch.Tensor | None:
    """The node's fake tensor, or None when it produces something else (or has no meta)."""
    val = meta_val(node)
    return val if isinstance(val, torch.Tensor) else None


def cast_input(node: Any) -> fx.Node | None:
    """``x`` if node is a dtype cast of ``x`` (``x.float()``, ``x.to(dtype)``, ``x.type_as(y)``,
    ...) that keeps its shape and device (from the meta values), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_method" or node.target not in CAST_METHODS:
        return None
    x = node.args[0] if node.args else None
    out, inp = tensor_meta(node), tensor_meta(x)
    if out is None or inp is None or out.shape != inp.shape or out.device != inp.device:
        return None
    return x


# Steps that return their input's values unchanged when the result keeps its shape, dtype
# and device (checked on the meta values): model code writes them out of habit or for
# another device or dtype than the one this graph has (``pos_emb.to(tok_emb.device)``).
_NOOP_METHODS = frozenset({*CAST_METHODS, "contiguous", "view", "reshape", "view_as", "reshape_as"})
_NOOP_FUNCTIONS = frozenset({torch.reshape})
_MUL_TARGETS = (operator.mul, torch.mul)


def noop_input(node: Any) -> fx.Node | None:
    """``x`` if ``node`` is a step that gives ``x``'s values as they are (same shape, dtype
    and device): a cast to the same dtype, ``.to(x.device)``, ``.contiguous()``, a view or
    reshape to the same shape, ``x * 1``; else None."""
    if not isinstance(node, fx.Node) or node.kwargs.get("out") is not None:
        return None
    x = None
    if node.op == "call_method" and node.target in _NOOP_METHODS and node.args:
        x = node.args[0]
    elif node.op == "call_function" and node.target in _NOOP_FUNCTIONS and node.args:
        x = node.args[0]
    elif ((node.op == "call_function" and node.target in _MUL_TARGETS) or
          (node.op == "call_method" and node.target in ("mul", "__mul__", "__rmul__"))) and not node.kwargs:
        if len(node.args) == 2:
            a, b = node.args
            x = a if _is_one(b) else b if _is_one(a) else None
    out, inp = tensor_meta(node), tensor_meta(x)
    if (not isinstance(x, fx.Node) or out is None or inp is None or out.shape != inp.shape
            or out.dtype != inp.dtype or out.device != inp.device):
        return None
    return x


def lookup_below(x: Any, is_lookup: Callable[[Any], bool], depth: int = 3) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(lookup, steps)`` if ``x`` is computed from a lookup by at most ``depth`` steps
    (``steps`` from ``x`` down, the lookup not included), else None: the node in the way
    when a pattern's candidate reads a lookup through something it does not take."""
    if not isinstance(x, fx.Node) or x.op != "call_function" and x.op != "call_method":
        return None
    for inp in x.all_input_nodes:
        if is_lookup(inp):
            return inp, [x]
        if depth > 1 and (got := lookup_below(inp, is_lookup, depth - 1)) is not None:
            return got[0], [x, *got[1]]
    return None


def step_names(steps: Sequence[fx.Node]) -> str:
    """Each step's op and node, the lookup's side first: "`float` (float_1), `mul` (mul)"."""
    return ", ".join(f"`{n.target if isinstance(n.target, str) else getattr(n.target, '__name__', n.target)}` "
                     f"({n.name})" for n in reversed(steps))


def _is_one(v: Any) -> bool:
    return type(v) in (int, float) and v == 1


def sum_args(node: Any) -> dict[str, Any] | None:
    """``{input, dim, keepdim, dtype}`` of ``x.sum(...)`` / ``torch.sum(x, ...)``, else None."""
    if not isinstance(node, fx.Node):
        return None
    if not ((node.op == "call_method" and node.target == "sum") or
            (node.op == "call_function" and node.target is torch.sum)):
        return None
    args = bind(node, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False, "dtype": None},
                {"self": "input", "axis": "dim"})
    return args if isinstance(args.get("input"), fx.Node) else None


_TRANSPOSE_OPS = (torch.ops.aten.numpy_T, torch.ops.aten.numpy_T.default, torch.ops.aten.mT,
                  torch.ops.aten.mT.default)


def transpose_of(node: Any) -> fx.Node | None:
    """``w`` if node is the transpose of a 2-D ``w`` (``w.t()``, ``w.T``, ``w.mT``,
    ``w.transpose(0, 1)``, ``w.permute(1, 0)`` and their torch.* spellings), else None."""
    if not isinstance(node, fx.Node) or not node.args:
        return None
    w = node.args[0]
    wv = tensor_meta(w)
    if wv is None or wv.dim() != 2:
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function"):
        return None
    if node.op == "call_function" and node.target is getattr:
        return w if node.args[1:] in (("T",), ("mT",)) else None
    # torch >= 2.14's Dynamo records ``w.T`` / ``w.mT`` as these ops, not as getattr.
    if node.op == "call_function" and node.target in _TRANSPOSE_OPS and len(node.args) == 1:
        return w
    if node.op == "call_function" and node.target not in (torch.t, torch.transpose, torch.permute):
        return None
    rest = list(node.args[1:])
    if name == "t" and not rest:
        return w
    if name == "transpose" and len(rest) == 2 and all(isinstance(d, int) for d in rest):
        return w if {d % 2 for d in rest} == {0, 1} else None
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        return w if [d % 2 if isinstance(d, int) else d for d in dims] == [1, 0] else None
    return None


def call_method(graph: fx.Graph, name: str, args: tuple, like: fx.Node) -> fx.Node:
    """Insert ``args[0].name(*args[1:])`` (at the graph's insert point) with fake meta and
    ``like``'s debug meta: ``call`` for methods (``x.to(dtype)`` reads better than
    ``torch.Tensor.to(x, dtype)`` in a pinned graph)."""
    node = graph.call_method(name, args)
    _recompute_meta(node)
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    return node


def copy_node(graph: fx.Graph, node: fx.Node, replace: dict[fx.Node, Any]) -> fx.Node:
    """Insert a copy of ``node`` with some inputs replaced, its fake meta recomputed."""
    new = graph.node_copy(node, lambda n: replace.get(n, n))
    _recompute_meta(new)
    return new


def _recompute_meta(node: fx.Node) -> None:
    """Set a call node's fake ``val`` by running its target on its inputs' fake values."""
    fake_mode = _compat.fake_mode_of([v for v in map(meta_val, node.all_input_nodes) if isinstance(v, torch.Tensor)])
    if fake_mode is None:
        return
    args, kwargs = _map_meta(node.args), {k: meta_val(v) for k, v in node.kwargs.items()}
    with fake_mode:
        if node.op == "call_method":
            val = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            val = node.target(*args, **kwargs)
    node.meta["val"] = val
    node.meta["example_value"] = val


# The arguments of the plugin's fused ops that are tables: their schemas' names.
TABLE_ARGS = ("weights", "weight", "bag_weight")


def plugin_op_calls(graph: fx.Graph) -> Iterator[tuple[fx.Node, dict[str, Any]]]:
    """Each call of a ``torch.ops.inductor_embed`` op in ``graph``, with its arguments by their
    schema names."""
    for node in graph.nodes:
        name = _compat.op_name(node.target) if node.op == "call_function" else None
        if name is None or name[0] != "inductor_embed":
            continue
        bound = dict(zip(_compat.op_argument_names(node.target), node.args))
        bound.update(node.kwargs)
        yield node, bound


def table_tensors(bound: dict[str, Any]) -> list[torch.Tensor]:
    """The real tensors behind a plugin op call's table arguments (``plugin_op_calls``): a
    placeholder Dynamo kept an example of, or a ``get_attr`` of the graph's module."""
    out = []
    for name in TABLE_ARGS:
        value = bound.get(name)
        for n in value if isinstance(value, (list, tuple)) else [value]:
            t = _real_tensor(n)
            if t is not None:
                out.append(t)
    return out


def _real_tensor(node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node):
        return None
    if node.op == "placeholder":
        return _compat.graph_input_tensor(node)
    if node.op == "get_attr" and node.graph.owning_module is not None:
        obj = node.graph.owning_module
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else None
    return None
