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
from inductor_embed.graph_pass import InductorEmbedPass, run_patterns


def inductor_embed_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Rewrite the embedding patterns in Dynamo's graph, then compile it with Inductor.

    The rewrite runs here, before Inductor's caches are consulted, so every compile logs
    and counts its rewrites even when Inductor then serves the result from its cache. The
    plugin's ``uuid()`` (code + config) still enters Inductor's cache keys: the backend
    installs a key-only ``InductorEmbedPass`` as the pre-grad pass, chained after any pass
    the user installed. ``mode`` and ``options`` mean what they mean for the default backend.
    AOTAutograd's partitioner saves no views (``_compat.aot_config_patches``: saved index
    views keep autograd's in-place check).
    """
    run_patterns(gm.graph, apply=True)
    gm.recompile()
    patches = _compat.mode_options(mode)
    patches.update(options or {})
    current = patches.get("pre_grad_custom_pass", _compat.inductor_config().pre_grad_custom_pass)
    if isinstance(current, InductorEmbedPass):  # enable() installed it: keep the user's pass behind it
        current = current.previous
    patches["pre_grad_custom_pass"] = InductorEmbedPass(previous=current, rewrite=False)
    with _compat.functorch_config().patch(_compat.aot_config_patches()):
        return _compat.compile_fx(gm, example_inputs, config_patches=patches)
