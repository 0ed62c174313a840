"""inductor_embed's benchmark suite: every alternative side by side, on the same inputs.

    python -m bench --preset cpu-quick     # or: smoke, gpu; --list shows everything

Layout: ``config`` (frozen dataclasses for cases, presets and results),
``distributions`` (index distributions), ``workloads/`` (one module per study),
``providers`` (eager, torch.compile, combo kernels, inductor_embed, FBGEMM),
``runner`` (the timing loop), ``presets``, ``report`` (json, markdown, plots),
``cli`` (``python -m bench``). Results live in ``results/<device>/``.
"""
