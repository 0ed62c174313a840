"""The thin seam between inductor_embed and private torch APIs.

Everything that reaches into ``torch._inductor``, ``torch._dynamo``,
``torch._logging``, ``torch._guards`` or ``torch._ops`` goes through this module,
so a torch upgrade is a change here and nowhere else. Tested on torch 2.11 and 2.13.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

try:  # torch >= 2.6
    from torch._inductor.custom_graph_pass import CustomGraphPass
except ImportError:  # pragma: no cover - older torch is not supported, but keep import-time errors clear
    raise ImportError("inductor_embed needs torch >= 2.11") from None


# torch < 2.13's Inductor lowers aten.embedding with indirect_indexing(..., wrap_neg=True):
# a negative index reads row V + i instead of raising as eager does (pytorch#151918,
# fixed in 2.13 by pytorch#183636). The CPU reference path adds its own check there.
INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES: bool = torch.torch_version.TorchVersion(torch.__version__) < (2, 13)


def inductor_config() -> Any:
    """``torch._inductor.config`` (the module object, so ``patch`` and fields work)."""
    import torch._inductor.config as cfg

    return cfg


def compile_fx(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config_patches: dict | None) -> Any:
    """Inductor's entry point, as the default torch.compile backend calls it."""
    from torch._inductor.compile_fx import compile_fx as _compile_fx

    return _compile_fx(gm, example_inputs, config_patches=config_patches or None)


def mode_options(mode: str | None) -> dict[str, Any]:
    """The Inductor config patches that ``torch.compile(mode=...)`` implies."""
    if mode is None or mode == "default":
        return {}
    return dict(torch._inductor.list_mode_options(mode))


def counters() -> collections.defaultdict:
    """``torch._dynamo.utils.counters``: tests assert on ``counters["inductor_embed"]``."""
    from torch._dynamo.utils import counters as _counters

    return _counters


def fake_mode_of(values: Sequence[Any]) -> Any:
    """The FakeTensorMode that produced these meta values, or None.

    Taken from the values themselves: inside a backend, the TracingContext may hold a
    different mode than the one Dynamo used for the graph's ``example_value``s.
    """
    for v in values:
        mode = getattr(v, "fake_mode", None)
        if mode is not None:
            return mode
    from torch._guards import detect_fake_mode

    return detect_fake_mode(list(values))


def functorch_config() -> Any:
    """``torch._functorch.config`` (the module object: ``patch`` and fields work)."""
    import torch._functorch.config as cfg

    return cfg


def aot_config_patches() -> dict[str, Any]:
    """The ``torch._functorch.config`` fields every inductor_embed compile sets.

    ``recompute_views``: the partitioner saves no view, it saves the view's base and replays
    the view in the backward. Inductor returns a saved view of a graph input as a fresh alias
    (``reinterpret_tensor``) with a version counter of its own, so an index view the fused
    ops save (a one-hot field's ``x.unsqueeze(-1)``, a bag's ``x[:, :3]``) would lose
    autograd's in-place check: ``out = m(x); x.fill_(7); out.sum().backward()`` would use the
    new indices. Saved as the input itself, it keeps the check. Views cost nothing to replay.
    """
    return {"recompute_views": True} if hasattr(functorch_config(), "recompute_views") else {}


def saved_tensors_hooks_off() -> contextlib.AbstractContextManager:
    """A block where autograd's saved-tensor hooks (``torch.utils.checkpoint``'s non-reentrant
    ones, ``save_on_cpu``) do not run, as AOTAutograd's tracing has it: the pass computes its
    fused ops' fake meta values, and with them their autograd set-up's ``save_for_backward``,
    which under a checkpoint's hooks would count as tensors the checkpointed forward saved
    (then "A different number of tensors was saved" in the recomputation)."""
    from torch._dynamo import utils

    off = getattr(utils, "_disable_saved_tensors_hooks_during_tracing", None)
    if off is not None:
        return off()
    set_tracing = getattr(torch._C._autograd, "_saved_tensors_hooks_set_tracing", None)
    if set_tracing is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _off() -> Iterator[None]:
        prior = set_tracing(True)
        try:
            yield
        finally:
            set_tracing(prior)

    return _off()


def register_torch_log(name: str) -> None:
    """Make ``TORCH_LOGS="name"`` / ``"+name"`` and ``torch._logging.set_logs`` know our logger.

    torch already resolves an unknown TORCH_LOGS entry as a module name (via
    ``find_spec``), so an installed package works even when TORCH_LOGS is parsed
    before we are imported; registering here covers ``set_logs`` and the case
    where the log was never named in the environment.
    """
    try:
        from torch._logging._internal import log_registry, register_log
    except ImportError:  # pragma: no cover
        logging.getLogger(name).debug("torch._logging has no register_log; TORCH_LOGS cannot name %s", name)
        return
    if not log_registry.is_log(name):
        register_log(name, name)


def storage_key(t: torch.Tensor) -> Any:
    """A hashable identity of a (fake) tensor's storage: a view and an in-place result share it
    with their base. None for a tensor without storage (sparse, nested)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    try:
        return StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def schema_written_args(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """The arguments an ``OpOverload`` call writes in place (``Tensor(a!)`` in its schema)."""
    schema = getattr(target, "_schema", None) if isinstance(target, torch._ops.OpOverload) else None
    if schema is None or not schema.is_mutable:
        return []
    out = []
    for k, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            if k < len(args) and not arg.kwarg_only:
                out.append(args[k])
            elif arg.name in kwargs:
                out.append(kwargs[arg.name])
    return out


def graph_arg_source_name(node: torch.fx.Node) -> str | None:
    """Dynamo's source name of a placeholder (e.g. ``L['self']._modules['emb']._parameters['weight']``)."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is None:
        return None
    name = getattr(source, "name", None)
    return name() if callable(name) else name


def op_name(target: Any) -> tuple[str, str] | None:
    """``(namespace, name)`` of an ``OpOverload`` / ``OpOverloadPacket`` call target
    (``("fbgemm", "bounds_check_indices.default")``), None for any other target."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        ns, _, name = str(target).partition(".")
        return ns, name
    return None


def graph_input_tensor(node: torch.fx.Node) -> torch.Tensor | None:
    """The real tensor Dynamo passes as placeholder ``node`` (a module's parameter, for a
    lifted one), or None when it is not a tensor, or Dynamo kept no example (an exported
    program, a graph built by hand, a freed example)."""
    grapharg = node.meta.get("grapharg")
    try:
        example = grapharg.example if grapharg is not None else None
    except Exception:  # noqa: BLE001 - a freed weak reference, or an example Dynamo dropped
        return None
    return example if isinstance(example, torch.Tensor) else None


def graph_input_grad_fn(node: torch.fx.Node) -> str | None:
    """The autograd node (``grad_fn.name()``, e.g. ``"EmbeddingBackward0"``) that produced the
    real tensor Dynamo passes as placeholder ``node``: what computed a graph input before the
    graph began (a lookup across a graph break). None when it is a leaf, is not a tensor, or
    Dynamo kept no example."""
    grad_fn = getattr(graph_input_tensor(node), "grad_fn", None)
    return grad_fn.name() if grad_fn is not None else None


def graph_input_from_fsdp2(node: torch.fx.Node) -> bool:
    """Whether the real tensor Dynamo passes as placeholder ``node`` is the output of an FSDP2
    module (``fully_shard``): FSDP2 registers its pre-backward hook (a method of its
    ``FSDPState``) on each grad-requiring output of a wrapped module's forward."""
    hooks = getattr(graph_input_tensor(node), "_backward_hooks", None) or {}
    for hook in hooks.values():
        owner = getattr(hook, "__self__", None)
        if owner is not None and ".fsdp." in type(owner).__module__:
            return True
    return False


def weak_id_key_dict() -> Any:
    """A dict keyed by tensor identity that does not keep its keys alive
    (``torch.utils.weak.WeakIdKeyDictionary``: a ``WeakKeyDictionary`` would compare tensor
    keys with ``==``, element-wise)."""
    from torch.utils.weak import WeakIdKeyDictionary

    return WeakIdKeyDictionary()


def mark_coalesced(t: torch.Tensor) -> None:
    """Set a sparse COO tensor's coalesced flag in place (``Tensor._coalesced_``): the caller
    has checked that its indices are sorted and unique."""
    t._coalesced_(True)


def can_count_storage_uses() -> bool:
    """Whether ``storage_use_count`` works on this torch (``torch._C._storage_Use_Count``)."""
    return hasattr(torch._C, "_storage_Use_Count")


def storage_use_count(storage: torch.UntypedStorage) -> int:
    """How many C++ owners share ``storage`` (tensors, views and the storage's Python object
    each count one): ``torch._C._storage_Use_Count``."""
    return torch._C._storage_Use_Count(storage._cdata)


def graph_transform_observer(graph: torch.fx.Graph, passname: str) -> contextlib.AbstractContextManager[Any]:
    """Inductor's ``GraphTransformObserver`` over ``graph``'s module, as a context manager:
    with ``torch._inductor.config.trace.log_url_for_graph_xform`` set (env
    ``INDUCTOR_LOG_URL_FOR_GRAPH_XFORM``; needs pydot) it writes
    ``pass_<n>_<passname>_input_graph.dot`` / ``_output_graph.dot`` there when the pass
    changed the graph, and with ``trace.provenance_tracking_level = 1`` it records
    ``node.meta["from_node"]`` provenance. A null context where torch lacks the class or
    the graph has no owning module. Only ``(gm, passname)`` is passed: later arguments
    (``subsystem``, ``log_url``) moved between torch versions."""
    gm = graph.owning_module
    try:
        from torch.fx.passes.graph_transform_observer import GraphTransformObserver
    except ImportError:  # pragma: no cover - torch without it
        return contextlib.nullcontext()
    if gm is None:
        return contextlib.nullcontext()
    return GraphTransformObserver(gm, passname)


__all__ = [
    "INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES",
    "CustomGraphPass",
    "aot_config_patches",
    "functorch_config",
    "can_count_storage_uses",
    "compile_debug_dir",
    "compile_fx",
    "counters",
    "fake_mode_of",
    "graph_arg_source_name",
    "graph_input_grad_fn",
    "graph_transform_observer",
    "inductor_config",
    "mode_options",
    "op_argument_names",
    "op_name",
    "op_schema",
    "register_torch_log",
    "saved_tensors_hooks_off",
    "schema_written_args",
    "storage_key",
    "storage_use_count",
    "watch_compiles",
]


def compile_debug_dir() -> str | None:
    """The directory of a ``TORCH_COMPILE_DEBUG=1`` run (``torch._inductor.config.trace.enabled``),
    ``<debug_dir_root>/run_<time>-pid_<pid>``; None when the debug trace is off."""
    if not inductor_config().trace.enabled:
        return None
    from torch._dynamo.utils import get_debug_dir

    return get_debug_dir()


def op_schema(qualname: str) -> str:
    """The schema string of a registered op's default overload, ``"ns::name(...) -> ..."``
    (``OpOverload._schema``)."""
    ns, name = qualname.split("::")
    return str(getattr(getattr(torch.ops, ns), name).default._schema)


def op_argument_names(target: Any) -> list[str]:
    """The argument names of an ``OpOverload``'s schema (``OpOverload._schema``), in order."""
    return [a.name for a in target._schema.arguments]


def watch_compiles(on_start: Any, on_end: Any) -> bool:
    """Have Dynamo call ``on_start()`` when a compile begins and ``on_end()`` when the last
    pending one ends (``torch._dynamo.callback.callback_handler``; ``torch._dynamo.reset()``
    clears its callbacks, so callers register again after one). Registering the same pair
    twice is a no-op. False where this torch has no such handler."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:
        return False
    starts = getattr(callback_handler, "start_callbacks", None)
    ends = getattr(callback_handler, "end_callbacks", None)
    if starts is None or ends is None:
        return False
    if on_start not in starts:
        callback_handler.register_start_callback(on_start)
    if on_end not in ends:
        callback_handler.register_end_callback(on_end)
    return True
