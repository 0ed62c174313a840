"""What every op module of ``lowering/`` shares: the device dispatch and small checks."""

from __future__ import annotations

import torch
from torch import Tensor

from inductor_embed import config

# The table / weight dtypes every op accepts.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def use_triton(t: Tensor) -> bool:
    """Whether an op on ``t``'s device runs the Triton kernels: always on CUDA, on the CPU
    only with ``config.triton_on_cpu`` (the Triton interpreter, for tests)."""
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and config.triton_on_cpu


def column_stride_1(t: Tensor) -> Tensor:
    """``t`` itself when its last dimension is contiguous (what the kernels read), else a
    contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()
