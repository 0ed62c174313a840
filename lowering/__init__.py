"""Custom ops (installed as ``inductor_embed.lowering``): schemas, fake impls,
autograd, device dispatch, and the pure-torch reference twins of the kernels."""

from inductor_embed.lowering import (  # noqa: F401  (registers the ops)
    multi_embedding,
    multi_embedding_bag,
    one_hot_linear,
    tied_embedding_bag,
)
