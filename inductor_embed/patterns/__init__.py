"""The pattern passes, in the order they run. Each module has ``NAME`` (its config
switch and counter key, as named in README.md) and ``run(graph, recorder, apply)``."""

from inductor_embed.patterns import (
    independent_lookups,
    multi_embedding_bag,
    multi_embedding_cat,
    multi_embedding_sum,
    one_hot_linear,
    tied_embedding_bag,
)

# Table-batched bags first, then embedding cats, then sums of lookups; the tied pair takes
# what they leave, and independent_lookups the embedding lookups left after that (none is
# taken twice).
PATTERNS = (multi_embedding_bag, multi_embedding_cat, multi_embedding_sum, one_hot_linear, tied_embedding_bag,
            independent_lookups)

__all__ = ["PATTERNS"]
