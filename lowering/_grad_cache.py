"""Dense CPU gradient buffers that the ops' backward reuses from step to step.

Why: a training step frees its dense embedding gradients (``zero_grad()`` sets them to None)
and the next backward allocates them again. A table's gradient is tens of MB (100,000 x 64
fp32 = 25.6 MB), so glibc's malloc takes it from the top of the heap or from a fresh mmap,
and gives it back to the kernel when it is freed (its trim threshold is 2x its adaptive
mmap threshold, at most 64 MB). The next step then faults every page in again: measured on
the 2-core machine, 26 such gradients cost 150-175 ms of page faults a step, against 22 ms
to zero the same bytes once they are mapped (docs/design.md, "Reused gradient buffers").
Eager and plain torch.compile pay it too; jemalloc, tcmalloc or ``MALLOC_TRIM_THRESHOLD_``
avoid it for the whole process.

How: ``zeros`` hands out a zeroed tensor on a storage this module keeps. A storage is
reused only when nothing else references it: its C++ use count is 1 (only our handle) and
no Python code holds our handle. So a gradient the user keeps (in ``param.grad``, a list, a
view, its storage object) is never written; it becomes reusable once it is dropped, as
``param.grad = None`` does; one moved into shared memory (sent to another process through a
``torch.multiprocessing`` queue) is dropped, never reused. The cache holds at most
``config.cpu_grad_cache_mb`` MiB; ``empty_cache()`` frees every idle buffer (like
``torch.cuda.empty_cache``).

Only CPU buffers of at least ``MIN_BYTES`` (2 MiB): below that glibc reuses its heap anyway.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import torch

from inductor_embed import _compat, config
from inductor_embed.lowering import _hugepages

# Smaller buffers come from torch.zeros: glibc keeps them on its heap (below its mmap
# threshold), so they are not faulted in again each step, and the C++ host takes their tables
# (a cached buffer sends its call to the Python op, ~40 us more a step: 10 narrow tables with
# two of 1.6 MB, B=512, ran 0.98x torch.compile at 1 MiB, 1.14-1.20x at 2 MiB; paired, one
# process). From 2 MiB a buffer also holds a whole huge page (_hugepages).
MIN_BYTES = 2 << 20

_lock = threading.Lock()
# Our one handle on each cached storage, least recently handed out first.
_storages: list[torch.UntypedStorage] = []


def _idle(k: int) -> bool:
    """Whether ``_storages[k]`` is referenced by nothing but the list: one C++ owner (the
    Python object) and, on that object, only the list's and getrefcount's references."""
    return sys.getrefcount(_storages[k]) == 2 and _compat.storage_use_count(_storages[k]) == 1


def _drop_shared() -> None:
    """Forget the storages moved into shared memory (``_lock`` held): a gradient sent through
    a ``torch.multiprocessing`` queue is moved in place, and the receiving process may still
    read it when nothing here references it any more."""
    _storages[:] = [s for s in _storages if not s.is_shared()]


def _after_fork_in_child() -> None:
    """A forked child gets a new lock: another thread may have held this one at the fork."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cacheable(nbytes: int) -> bool:
    """Whether a buffer of ``nbytes`` may come from the cache (big enough, cache on)."""
    return MIN_BYTES <= nbytes <= config.cpu_grad_cache_mb << 20 and _compat.can_count_storage_uses()


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed contiguous CPU tensor of ``shape``, on a reused storage where one of its size
    is idle (see the module doc); ``torch.zeros`` for small sizes, with the cache off
    (``cpu_grad_cache_mb = 0``) or full."""
    out = _take(shape, dtype)
    return torch.zeros(shape, dtype=dtype) if out is None else out.zero_()


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``zeros`` without the zero fill, for a caller that writes every element (a reused
    buffer holds an earlier step's gradient)."""
    out = _take(shape, dtype)
    return torch.empty(shape, dtype=dtype) if out is None else out


def _take(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A contiguous tensor of ``shape`` on a cached storage (reused or new), or None where
    the buffer may not come from the cache."""
    nbytes = math.prod(shape) * dtype.itemsize
    if not _cacheable(nbytes):
        return None
    limit = config.cpu_grad_cache_mb << 20
    with _lock:
        _drop_shared()
        storage = None
        for k in range(len(_storages)):
            if _storages[k].nbytes() == nbytes and _idle(k):
                storage = _storages.pop(k)
                break
        if storage is None:
            held = sum(s.nbytes() for s in _storages)
            k = 0
            while held + nbytes > limit and k < len(_storages):  # drop idle buffers, oldest first
                if _idle(k):
                    held -= _storages.pop(k).nbytes()
                else:
                    k += 1
            if held + nbytes > limit:
                return None
            storage = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
            _hugepages.advise_fresh(storage)  # before its first write: huge pages faulted in
        _storages.append(storage)
        return torch.empty((0,), dtype=dtype).set_(storage, 0, shape)


def empty_cache() -> None:
    """Free every cached gradient buffer that nothing references (those still in use stay
    until they are dropped and the next backward frees or reuses them)."""
    with _lock:
        _drop_shared()
        k = 0
        while k < len(_storages):
            if _idle(k):
                _storages.pop(k)
            else:
                k += 1


def cached_bytes() -> tuple[int, int]:
    """``(held, idle)``: the bytes of every cached buffer, and of those nothing references."""
    with _lock:
        held = sum(s.nbytes() for s in _storages)
        idle = sum(_storages[k].nbytes() for k in range(len(_storages)) if _idle(k))
    return held, idle
