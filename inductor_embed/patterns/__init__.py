"""The pattern passes, in the order they run. Each module has ``NAME`` (its config
switch and counter key, as named in ARCHITECTURE.md) and ``run(graph, recorder, apply)``."""

from inductor_embed.patterns import multi_embedding_cat, one_hot_linear

PATTERNS = (multi_embedding_cat, one_hot_linear)

__all__ = ["PATTERNS"]
