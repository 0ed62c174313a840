"""Triton kernels and their launchers (installed as ``inductor_embed.kernels``).

Nothing here knows about torch.library or patterns: a launcher takes tensors,
allocates nothing it does not document, and launches its kernel once.
"""
