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


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count again after it."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_device_assert(code: str, message: str) -> None:
    """Run ``code`` (CUDA; ``torch`` and ``inductor_embed`` imported, then a synchronize) in a
    fresh process, since a device-side assert poisons the CUDA context as eager's does, and
    check that it failed on the assert or with ``message``."""
    code = f"import torch, inductor_embed\n{code}\ntorch.cuda.synchronize()\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and ("device-side assert" in res.stderr or message in res.stderr), res.stderr


def eager_bag_backward(grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor | None,
                       psw: torch.Tensor | None, mode: int, padding_idx: int, ilo: bool,
                       num_rows: int) -> torch.Tensor:
    """Eager's CPU EmbeddingBag weight gradient ``[num_rows, D]``: ATen's
    ``_embedding_bag_backward`` given what eager's forward gives it. ``grad [B, D]``;
    ``indices [B, L]`` (fixed bags) or ``[nnz]`` with ``offsets [B]`` (``[B + 1]`` with
    ``ilo``, include_last_offset), int32 or int64; ``psw`` per-sample weights or None;
    ``mode`` 0 sum, 1 mean."""
    b = grad.shape[0]
    if offsets is None:
        flat = indices.reshape(-1)
        offs = torch.arange(0, indices.numel(), indices.shape[1], dtype=flat.dtype)
    else:
        flat, offs = indices, offsets
        if ilo:
            flat, offs = flat[:int(offs[b])], offs[:b]
    empty = flat.new_empty((0,))
    size = empty
    if mode == 1:  # each bag's size, without the padding index
        ends = torch.cat([offs[1:].long(), torch.tensor([flat.numel()])])
        bag = torch.searchsorted(ends, torch.arange(flat.numel()), right=True)
        size = torch.bincount(bag if padding_idx < 0 else bag[flat != padding_idx], minlength=b).to(flat.dtype)
    p = None if psw is None else psw.reshape(-1)[:flat.numel()].contiguous()
    return torch.ops.aten._embedding_bag_backward(grad, flat.contiguous(), offs, empty, size, empty, num_rows, False,
                                                  mode, False, p, padding_idx)
