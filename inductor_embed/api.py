"""The public functions: enable / disable (the config flag on the default backend) and explain."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch

from inductor_embed import _compat
from inductor_embed.graph_pass import InductorEmbedPass, run_patterns
from inductor_embed.report import Report

log = logging.getLogger("inductor_embed")


def enable() -> None:
    """Make plain ``torch.compile(model)`` (the inductor backend) apply inductor_embed's rewrites.

    Installs the pass as ``torch._inductor.config.pre_grad_custom_pass``, chained after
    any pass already there (which keeps running first), and sets the
    ``torch._functorch.config`` fields of ``_compat.aot_config_patches()`` (the partitioner
    saves no views: saved index views keep autograd's in-place check). Calling it twice is
    harmless.
    """
    cfg = _compat.inductor_config()
    current = cfg.pre_grad_custom_pass
    if isinstance(current, InductorEmbedPass):
        return
    functorch_config = _compat.functorch_config()
    patches = _compat.aot_config_patches()
    _previous_aot_config.clear()
    _previous_aot_config.update({name: getattr(functorch_config, name) for name in patches})
    for name, value in patches.items():
        setattr(functorch_config, name, value)
    cfg.pre_grad_custom_pass = InductorEmbedPass(previous=current)


# The torch._functorch.config values enable() replaced, which disable() puts back.
_previous_aot_config: dict[str, Any] = {}


def disable() -> None:
    """Undo ``enable()``: restore the pre-grad pass that was installed before it."""
    cfg = _compat.inductor_config()
    current = cfg.pre_grad_custom_pass
    if isinstance(current, InductorEmbedPass):
        cfg.pre_grad_custom_pass = current.previous
        functorch_config = _compat.functorch_config()
        for name, value in _previous_aot_config.items():
            setattr(functorch_config, name, value)
        _previous_aot_config.clear()
    elif current is not None:
        log.warning("inductor_embed.disable(): the pre-grad pass is %r, not ours; left as it is", current)


def is_enabled() -> bool:
    """Whether ``enable()`` is in effect for the default backend."""
    return isinstance(_compat.inductor_config().pre_grad_custom_pass, InductorEmbedPass)


def explain(model_or_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Report:
    """Which rewrites would fire on ``model_or_fn(*args, **kwargs)``, and why others would not.

    Captures the call with TorchDynamo (every graph, across graph breaks), runs the
    patterns on copies of the graphs without changing them or compiling anything,
    and returns a ``Report``: ``.rewrites`` (each with ``.pattern`` and ``.tables``),
    ``.skipped`` (each with ``.reason``); ``str(report)`` is a readable table.
    """
    report = Report()

    def _record(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graph_report = run_patterns(copy.deepcopy(gm).graph, apply=False)
        report.rewrites += graph_report.rewrites
        report.skipped += graph_report.skipped
        report.graphs += 1
        return gm.forward

    torch.compile(model_or_fn, backend=_record)(*args, **kwargs)
    return report
