"""The reused CPU gradient buffers (lowering/_grad_cache.py) and the CPU backward that
writes into them: a buffer is handed out again only when nothing references it, the
gradients stay eager's bit for bit, and AccumulateGrad keeps the buffer as ``param.grad``
(no copy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import inductor_embed
from inductor_embed import config
from inductor_embed.lowering import _grad_cache
from inductor_embed.lowering.bag_backward_cpu import bag_weight_grad_cpu
from tests._util import eager_bag_backward

BIG = (8192, 64)  # 2 MiB of fp32: the smallest size the cache takes


@pytest.fixture(autouse=True)
def _empty_cache():
    inductor_embed.empty_cache()
    yield
    inductor_embed.empty_cache()


def test_a_dropped_buffer_is_reused_zeroed():
    a = _grad_cache.zeros(BIG, torch.float32)
    ptr = a.data_ptr()
    a.fill_(3.0)
    del a
    b = _grad_cache.zeros(BIG, torch.float32)
    assert b.data_ptr() == ptr and b.shape == BIG and b.is_contiguous()
    assert not b.any()
    assert inductor_embed.cached_bytes() == (8192 * 64 * 4, 0)


@pytest.mark.parametrize("hold", ["tensor", "view", "storage", "numpy"])
def test_a_referenced_buffer_is_never_handed_out(hold):
    a = _grad_cache.zeros(BIG, torch.float32)
    a.fill_(5.0)
    keep = (a if hold == "tensor" else a[1:, :3] if hold == "view" else
            a.untyped_storage() if hold == "storage" else a.numpy())
    ptr = a.data_ptr()
    del a
    b = _grad_cache.zeros(BIG, torch.float32)
    assert b.data_ptr() != ptr
    held = torch.empty(0).set_(keep) if hold == "storage" else torch.as_tensor(keep)
    assert (held == 5.0).all()
    assert inductor_embed.cached_bytes() == (2 * 8192 * 64 * 4, 0)
    del b
    assert inductor_embed.cached_bytes()[1] == 8192 * 64 * 4


def test_a_buffer_moved_into_shared_memory_is_never_reused():
    # as a torch.multiprocessing queue does to a gradient it sends: the receiving process may
    # still read it after the sender has dropped it
    a = _grad_cache.zeros(BIG, torch.float32)
    a.fill_(7.0)
    a.share_memory_()
    received = torch.empty(0).set_(a.untyped_storage().share_memory_(), 0, BIG)  # (the other side's view)
    ptr = a.data_ptr()
    del a
    b = _grad_cache.zeros(BIG, torch.float32)
    assert b.data_ptr() != ptr and (received == 7.0).all()
    del received
    assert inductor_embed.cached_bytes() == (8192 * 64 * 4, 0)  # b's only: the shared one was dropped


def test_a_forked_child_does_not_wait_for_a_lock_held_at_the_fork():
    import os
    import signal

    assert _grad_cache._lock.acquire(timeout=10)  # as if another thread was in _take at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: a fresh lock, so a buffer comes at once
            signal.alarm(20)
            torch.set_num_threads(1)  # (GNU OpenMP's pool does not survive a fork: no parallel zero fill)
            ok = _grad_cache.zeros(BIG, torch.float32).shape == BIG
            os._exit(0 if ok else 1)
    finally:
        _grad_cache._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (os.WIFSIGNALED(status) and os.WTERMSIG(status), status)


def test_small_buffers_and_the_switch_bypass_the_cache():
    small = _grad_cache.zeros((16, 8), torch.float32)
    assert not small.any() and inductor_embed.cached_bytes() == (0, 0)
    with config.patch(cpu_grad_cache_mb=0):
        a = _grad_cache.zeros(BIG, torch.float32)
        assert not a.any() and inductor_embed.cached_bytes() == (0, 0)


def test_the_limit_evicts_idle_buffers_then_bypasses():
    with config.patch(cpu_grad_cache_mb=4):
        a = _grad_cache.zeros(BIG, torch.float32)
        b = _grad_cache.zeros(BIG, torch.bfloat16)  # 1 MiB: not cached
        c = _grad_cache.zeros((8192, 64 * 2), torch.bfloat16)  # 2 MiB more: 4 MiB held
        assert inductor_embed.cached_bytes() == (4 << 20, 0)
        d = _grad_cache.zeros(BIG, torch.float32)  # full, nothing idle: plain torch.zeros
        assert inductor_embed.cached_bytes() == (4 << 20, 0)
        del a, d
        e = _grad_cache.zeros((4096, 64), torch.float64)  # 2 MiB, other shape: evicts the idle one
        assert inductor_embed.cached_bytes() == (4 << 20, 0)
        assert e.dtype == torch.float64 and not e.any() and not b.any() and not c.any()
        del c, e
        inductor_embed.empty_cache()
        assert inductor_embed.cached_bytes() == (0, 0)


class Tables(nn.Module):
    """Two 8192 x 64 fp32 tables (2 MiB gradients: cached), one with a padding row, cat."""

    def __init__(self, bags: bool) -> None:
        super().__init__()
        make = (lambda **kw: nn.EmbeddingBag(8192, 64, mode="sum", **kw)) if bags else (
            lambda **kw: nn.Embedding(8192, 64, **kw))
        self.tables = nn.ModuleList([make(), make(padding_idx=3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=-1)


@pytest.mark.parametrize("bags", [False, True], ids=["embedding", "embedding_bag"])
def test_training_steps_reuse_buffers_and_match_eager(bags):
    torch.manual_seed(0)
    eager = Tables(bags)
    model = Tables(bags)
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    shape = (64, 2, 5) if bags else (64, 2)
    steps = [torch.randint(0, 64, shape) for _ in range(3)]  # few rows: heavy collisions
    steps[0][0, 1] = 3  # the padding row
    held = []
    for k, x in enumerate(steps):
        for m in (eager, model):
            m.zero_grad(set_to_none=True)
            m(x).square().sum().backward() if m is eager else compiled(x).square().sum().backward()
        for pe, pm in zip(eager.parameters(), model.parameters()):
            assert torch.equal(pe.grad, pm.grad)
        if k == 0:  # a gradient the user keeps is never written again
            held = [(p.grad, p.grad.clone()) for p in model.parameters()]
    for g, copy in held:
        assert torch.equal(g, copy)
    # param.grad is the cached buffer itself (AccumulateGrad took it, no copy), and the
    # cache holds the two kept gradients plus the two of the last step.
    storages = {s.data_ptr() for s in _grad_cache._storages}
    assert all(p.grad.untyped_storage().data_ptr() in storages for p in model.parameters())
    assert inductor_embed.cached_bytes()[0] == 4 * 8192 * 64 * 4


def test_accumulated_gradients_match_eager():
    torch.manual_seed(0)
    eager, model = Tables(False), Tables(False)
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    for x in [torch.randint(0, 8192, (64, 2)) for _ in range(3)]:  # no zero_grad between
        eager(x).sum().backward()
        compiled(x).sum().backward()
    for pe, pm in zip(eager.parameters(), model.parameters()):
        assert torch.equal(pe.grad, pm.grad)


@pytest.mark.parametrize("num_rows", [50, 5000])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("padding_idx", [-1, 0, 7])
@pytest.mark.parametrize("form", ["2d", "offsets", "include_last_offset"])
def test_segment_bag_backward_is_atens_bit_for_bit(num_rows, mode, weighted, padding_idx, form):
    rng = np.random.default_rng(num_rows + 10 * mode + padding_idx)
    b, bag, d = 64, 9, 64
    idx = torch.from_numpy((rng.zipf(1.3, (b, bag)) - 1) % num_rows)
    idx[0, :] = max(padding_idx, 0)  # a bag of only padding (mean: size 0)
    grad = torch.randn(b, d)
    psw = torch.rand(b, bag) if weighted else None
    offsets, ilo = None, form == "include_last_offset"
    if form != "2d":
        idx = idx.reshape(-1)
        offsets = torch.sort(torch.randint(0, b * bag - 5, (b,))).values
        offsets[0] = 0
        offsets[1] = offsets[2]  # an empty bag
        if ilo:  # the last 5 indices are in no bag
            offsets = torch.cat([offsets, torch.tensor([b * bag - 5])])
        psw = None if psw is None else psw.reshape(-1)
    want = eager_bag_backward(grad, idx, offsets, psw, mode, padding_idx, ilo, num_rows)
    got = bag_weight_grad_cpu(grad, torch.empty(0), idx, offsets, psw, mode, padding_idx, ilo, num_rows)
    assert torch.equal(got, want)
