"""The pattern passes, in the order they run. Each module has ``NAME`` (its config
switch and counter key, as named in README.md) and ``run(graph, recorder, apply)``."""

from inductor_embed.patterns import (
    independent_lookups,
    index_rows,
    multi_embedding_bag,
    multi_embedding_cat,
    multi_embedding_sum,
    one_hot_linear,
    tied_embedding_bag,
)

# Row reads become lookups first (index_rows), for the lookup patterns to take; then
# table-batched bags, embedding cats, sums of lookups; the tied pair takes what they leave,
# and independent_lookups the embedding lookups left after that (none is taken twice).
PATTERNS = (index_rows, multi_embedding_bag, multi_embedding_cat, multi_embedding_sum, one_hot_linear, tied_embedding_bag,
            independent_lookups)

__all__ = ["PATTERNS"]
