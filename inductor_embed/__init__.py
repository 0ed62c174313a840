"""inductor_embed: a torch.compile plugin that fuses embedding patterns.

    model = torch.compile(model, backend="inductor_embed")   # entry point, no import needed
    import inductor_embed; inductor_embed.enable()          # or: same rewrites in plain torch.compile
    print(inductor_embed.explain(model, *example_inputs))   # which rewrites fire, and why not

See README.md for the patterns, the config fields and how to read the logs.
"""

from __future__ import annotations

from inductor_embed import _compat, config
from inductor_embed import lowering as _lowering  # noqa: F401  (registers torch.ops.inductor_embed.*)
from inductor_embed._version import __version__
from inductor_embed.api import disable, enable, explain, is_enabled
from inductor_embed.backend import inductor_embed_backend
from inductor_embed.lowering._grad_cache import cached_bytes, empty_cache
from inductor_embed.report import Report, Rewrite, Skip, TableInfo

_compat.register_torch_log("inductor_embed")

__all__ = [
    "Report",
    "Rewrite",
    "Skip",
    "TableInfo",
    "__version__",
    "cached_bytes",
    "config",
    "disable",
    "empty_cache",
    "enable",
    "explain",
    "inductor_embed_backend",
    "is_enabled",
]
