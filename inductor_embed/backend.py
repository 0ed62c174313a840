"""The ``inductor_embed`` torch.compile backend (registered by entry point).

    torch.compile(model, backend="inductor_embed")                       # no import needed
    torch.compile(model, backend="inductor_embed", mode="reduce-overhead")
    torch.compile(model, backend="inductor_embed", options={"max_autotune": True})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from inductor_embed import _compat
from inductor_embed.graph_pass import InductorEmbedPass


def inductor_embed_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Compile with Inductor, with the embedding patterns rewritten before autograd.

    The rewrite runs as Inductor's ``pre_grad_custom_pass`` (chained after any pass the
    user installed), not here, so that its ``uuid()`` (code + config) is part of every
    Inductor cache key. ``mode`` and ``options`` mean what they mean for the default backend.
    """
    patches = _compat.mode_options(mode)
    patches.update(options or {})
    current = patches.get("pre_grad_custom_pass", _compat.inductor_config().pre_grad_custom_pass)
    if not isinstance(current, InductorEmbedPass):  # enable() may already have installed it
        current = InductorEmbedPass(previous=current)
    patches["pre_grad_custom_pass"] = current
    patches["use_pre_grad_passes"] = True
    return _compat.compile_fx(gm, example_inputs, config_patches=patches)
