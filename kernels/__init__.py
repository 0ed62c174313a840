"""Triton kernels and their launchers (installed as ``inductor_embed.kernels``).

Nothing here knows about torch.library or patterns: a launcher takes tensors, builds
the small meta table its kernel reads (``_meta.py``: one kernel source serves any number
of tables), allocates nothing else it does not document, and launches its kernel once
(twice for scale_grad_by_freq's counts).
"""
