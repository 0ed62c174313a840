"""Custom ops (installed as ``inductor_embed.lowering``): schemas, fake impls,
autograd, device dispatch, and the pure-torch reference twins of the kernels.

One file per op family. Which pattern, config switch, op, kernel module and reference twin
belong together: the table "Which is which" in docs/design.md."""

from inductor_embed.lowering import (  # noqa: F401  (registers the ops)
    index_add_rows,
    multi_embedding,
    multi_embedding_bag,
    multi_embedding_sum,
    one_hot_linear,
    tied_embedding_bag,
)
