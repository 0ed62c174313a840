"""Small FX helpers shared by the patterns: argument binding, meta values, names."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from inductor_embed import _compat

CAT_TARGETS = (torch.cat, torch.concat, torch.concatenate)
STACK_TARGETS = (torch.stack,)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)

# F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
_F_EMBEDDING = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")
# torch.embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse): the ATen order
_TORCH_EMBEDDING = ("weight", "input", "padding_idx", "scale_grad_by_freq", "sparse")
_EMBEDDING_DEFAULTS = {"padding_idx": None, "max_norm": None, "norm_type": 2.0, "scale_grad_by_freq": False, "sparse": False}


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


def embedding_args(node: fx.Node) -> dict[str, Any] | None:
    """F.embedding / torch.embedding arguments by name, or None if the node is not one."""
    if node.op != "call_function":
        return None
    if node.target is F.embedding:
        return bind(node, _F_EMBEDDING, _EMBEDDING_DEFAULTS)
    if node.target is torch.embedding:
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
        node.op == "call_function" and node.target is torch.unsqueeze
    ):
        args = bind(node, ("input", "dim"), {}, {"self": "input"})
        if isinstance(args.get("input"), fx.Node) and isinstance(args.get("dim"), int):
            return args["input"], args["dim"]
    return None


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
