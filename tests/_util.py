"""Helpers the test tiers share (the end-to-end tests' own are in tests/inductor_embed/_util.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Where the kernel tests run: CUDA, else the CPU under the Triton interpreter (conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block, off again after it."""
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def assert_device_assert(code: str, message: str) -> None:
    """Run ``code`` (CUDA; ``torch`` and ``inductor_embed`` imported, then a synchronize) in a
    fresh process, since a device-side assert poisons the CUDA context as eager's does, and
    check that it failed on the assert or with ``message``."""
    code = f"import torch, inductor_embed\n{code}\ntorch.cuda.synchronize()\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and ("device-side assert" in res.stderr or message in res.stderr), res.stderr
