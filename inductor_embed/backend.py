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
from inductor_embed.graph_pass import run_patterns


def inductor_embed_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Rewrite the embedding patterns in Dynamo's graph, then compile it with Inductor.

    ``mode`` and ``options`` mean what they mean for the default backend.
    """
    patches = _compat.mode_options(mode)
    patches.update(options or {})
    run_patterns(gm.graph, apply=True)
    gm.recompile()
    return _compat.compile_fx(gm, example_inputs, config_patches=patches)
