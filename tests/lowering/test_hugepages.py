"""Huge pages under big CPU tables and gradient buffers (lowering/_hugepages.py): the ranges
advised are the whole 2 MiB pages inside a storage, values never change (also while the main
thread writes the table during its collapse), nothing is done below the size rule or where
THP is off, the worker waits for a compile to end, and a compiled model's big tables end up
on huge pages with eager's results. The checks that read /proc/self/smaps need Linux with
THP ``madvise`` or ``always`` and MADV_COLLAPSE (Linux 6.1+), as on the CI machines."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
import torch.nn as nn

import inductor_embed
from inductor_embed import _compat
from inductor_embed.lowering import _grad_cache, _hugepages

MiB = 1 << 20

needs_thp = pytest.mark.skipif(_hugepages.thp_mode() not in ("always", "madvise"),
                               reason="no transparent huge pages here (not Linux, or THP never)")


def _huge_kib(lo: int, hi: int) -> int:
    """AnonHugePages (KiB) of the mappings overlapping [lo, hi), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                a, b = (int(x, 16) for x in head.split("-"))
                inside = a < hi and b > lo
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1])
    return total


@pytest.fixture
def small_rule(monkeypatch):
    """The size rule lowered to 4 MiB, so that the tests' tables stay small; a fresh record
    of advised ranges."""
    monkeypatch.setattr(_hugepages, "MIN_TABLES", 4 * MiB)
    monkeypatch.setattr(_hugepages, "_seen", {})
    yield
    assert _hugepages.wait(60)


def test_the_range_is_the_whole_huge_pages_inside():
    t = torch.empty(9 * MiB, dtype=torch.uint8)
    lo, hi = _hugepages.huge_range(t.untyped_storage())
    start, end = t.data_ptr(), t.data_ptr() + t.numel()
    assert lo % _hugepages.HUGE == 0 and hi % _hugepages.HUGE == 0
    assert start <= lo < start + _hugepages.HUGE and end - _hugepages.HUGE < hi <= end
    assert _hugepages.huge_range(torch.empty(MiB, dtype=torch.uint8).untyped_storage()) is None


def test_nothing_below_the_size_rule(monkeypatch):
    monkeypatch.setattr(_hugepages, "_seen", {})
    tables = [torch.randn(4096, 256) for _ in range(4)]  # 16 MiB < MIN_TABLES
    assert _hugepages.advise_tables(tables, "test") == 0
    assert not _hugepages._seen


def test_nothing_where_thp_is_off(monkeypatch, small_rule):
    monkeypatch.setattr(_hugepages, "thp_mode", lambda: "never")
    assert _hugepages.advise_tables([torch.randn(8192, 256)], "test") == 0
    assert not _hugepages._seen
    s = torch.empty(8 * MiB, dtype=torch.uint8).untyped_storage()
    _hugepages.advise_fresh(s)  # no error, nothing asked


def test_sparse_tables_and_other_values_are_left(small_rule):
    sparse = torch.randn(8192, 256).to_sparse()
    assert _hugepages.advise_tables([sparse, "not a tensor"], "test") == 0


@needs_thp
def test_a_collapse_keeps_every_value_while_the_table_is_written(small_rule, caplog):
    t = torch.randn(64 * 1024, 256)  # 64 MiB: ~30 collapses
    want = t.clone()
    caplog.set_level(logging.INFO, logger="inductor_embed")
    marked = _hugepages.advise_tables([t], "test")
    lo, hi = _hugepages.huge_range(t.untyped_storage())
    assert marked == hi - lo
    assert "huge pages: test's tables (" in caplog.text
    rows = torch.randint(0, t.shape[0], (4096,))
    for _ in range(50):  # the main thread reads and writes rows meanwhile
        t[rows] += 1.0
        want[rows] += 1.0
    assert _hugepages.wait(60)
    assert torch.equal(t, want)
    assert _huge_kib(lo, hi) > 0  # (not every page: one may find no free huge page)
    assert _hugepages.advise_tables([t], "test") == 0  # advised once


@needs_thp
def test_a_new_gradient_buffer_gets_huge_pages():
    inductor_embed.empty_cache()
    junk = torch.ones(16384, 256)  # touched, then freed: glibc may hand its pages out again
    del junk
    g = _grad_cache.zeros((16384, 256), torch.float32)  # 16 MiB, from the cache
    lo, hi = _hugepages.huge_range(g.untyped_storage())
    assert not g.any()
    g[::7] = 1.0  # written while its collapse (recycled memory) may run
    assert _hugepages.wait(60)
    assert _huge_kib(lo, hi) > 0
    assert torch.equal(g, torch.zeros_like(g).index_fill_(0, torch.arange(0, 16384, 7), 1.0))
    del g
    inductor_embed.empty_cache()


@needs_thp
def test_the_worker_waits_for_a_compile_to_end(small_rule, monkeypatch):
    monkeypatch.setattr(_hugepages, "COMPILE_WAIT_S", 30.0)
    t = torch.randn(16 * 1024, 256)  # 16 MiB
    assert _hugepages.advise_tables([t], "test", in_compile=True) > 0
    time.sleep(0.3)
    assert not _hugepages.wait(0.01)  # still waiting for the compile
    _hugepages._compile_ended()
    assert _hugepages.wait(30)


@needs_thp
def test_a_compiled_model_puts_its_big_tables_on_huge_pages(small_rule, caplog):
    torch._dynamo.reset()
    caplog.set_level(logging.INFO, logger="inductor_embed")
    torch.manual_seed(0)
    # 3 x 5 MiB tables: at least one whole huge page each (>= the test's 4 MiB rule together)
    model = nn.ModuleList(nn.EmbeddingBag(4096, 320, mode="sum") for _ in range(3))

    def f(x):
        return torch.cat([bag(x[:, k]) for k, bag in enumerate(model)], dim=1)

    x = torch.randint(0, 4096, (16, 3, 4))
    want = f(x)
    got = torch.compile(f, backend="inductor_embed")(x)
    assert _hugepages.wait(60)
    assert torch.equal(got, want)
    assert "huge pages: multi_embedding_bag's tables (" in caplog.text
    for bag in model:
        assert _huge_kib(*_hugepages.huge_range(bag.weight.untyped_storage())) > 0
    torch._dynamo.reset()


def test_a_forked_child_starts_clean():
    assert _hugepages.wait(60)  # no worker of an earlier test left to miscount below
    held = threading.Lock()
    old = _hugepages._lock
    try:
        _hugepages._lock = held
        held.acquire()  # as if the worker held it at the fork
        _hugepages._after_fork_in_child()
        assert _hugepages._lock is not held and _hugepages._lock.acquire(timeout=1)
        _hugepages._lock.release()
        assert _hugepages.wait(1)
    finally:
        held.release()
        _hugepages._lock, _hugepages._busy = old, threading.Condition(old)
        _hugepages._queue.clear()
        _hugepages._pending, _hugepages._worker_running, _hugepages._compiling = 0, False, False


def test_a_view_is_advised_for_its_own_bytes_not_its_storages(small_rule):
    big = torch.empty(64 * MiB, dtype=torch.uint8)  # (never touched: no memory behind most of it)
    view = big[8 * MiB:16 * MiB].view(torch.float32)
    lo, hi = _hugepages.table_range(view)
    assert view.data_ptr() <= lo < hi <= view.data_ptr() + 8 * MiB
    assert _hugepages.advise_tables([view], "test") <= 8 * MiB


def test_a_tensor_subclass_table_is_left_and_compiles(small_rule):
    from torch.testing._internal.two_tensor import TwoTensor

    torch.manual_seed(0)
    bags = nn.ModuleList(nn.EmbeddingBag(4096, 256, mode="sum") for _ in range(3))  # 4 MiB each
    for b in bags:
        w = b.weight.detach()
        b.weight = nn.Parameter(TwoTensor(w, w.clone()), requires_grad=False)
    assert _hugepages.table_range(bags[0].weight) is None

    def f(x):
        return torch.cat([bag(x[:, k]) for k, bag in enumerate(bags)], dim=1)

    x = torch.randint(0, 4096, (16, 3, 4))
    torch._dynamo.reset()
    with torch.no_grad():
        want, got = f(x), torch.compile(f, backend="inductor_embed")(x)
    torch.testing.assert_close(got.a, want.a, rtol=0, atol=0)
    torch._dynamo.reset()


def test_no_collapse_thread_is_no_error(small_rule, monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    assert _hugepages.wait(60)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    monkeypatch.setattr(_hugepages, "_collapse_ok", True)
    s = torch.empty(8 * MiB, dtype=torch.uint8).untyped_storage()
    _hugepages.advise_fresh(s)  # a backward's buffer: no error
    assert _hugepages.advise_tables([torch.randn(8192, 256)], "test") > 0  # a compile's tables: none
    assert not _hugepages._worker_running and not _hugepages._queue and _hugepages.wait(1)
    monkeypatch.undo()
    monkeypatch.setattr(_hugepages, "MIN_TABLES", 4 * MiB)
    monkeypatch.setattr(_hugepages, "_seen", {})
    assert _hugepages.advise_tables([torch.randn(8192, 256)], "test") > 0  # a thread again
    assert _hugepages.wait(60)


def test_the_worker_leaves_a_freed_storage_and_holds_none(monkeypatch):
    # (holding one for the call would make a gradient buffer look busy to the cache)
    calls = []
    assert _hugepages.wait(60)
    from torch.multiprocessing.reductions import StorageWeakRef

    freed = torch.empty(8 * MiB, dtype=torch.uint8).untyped_storage()
    kept = torch.empty(8 * MiB, dtype=torch.uint8).untyped_storage()
    uses = []
    monkeypatch.setattr(_hugepages, "_madvise",
                        lambda lo, hi, advice: calls.append((lo, hi)) or uses.append(_compat.storage_use_count(kept)) or 0)
    monkeypatch.setattr(_hugepages, "_exclusive_runs", lambda lo, hi: [(lo, hi)])
    with _hugepages._lock:
        _hugepages._queue_spans(StorageWeakRef(freed), *_hugepages.huge_range(freed))
        _hugepages._queue_spans(StorageWeakRef(kept), *_hugepages.huge_range(kept))
    del freed
    worker = threading.Thread(target=_hugepages._work)  # (it lowers its own thread's priority)
    worker.start()
    worker.join(60)
    assert calls == [_hugepages.huge_range(kept)] and uses == [1] and _hugepages.wait(1)


@needs_thp
def test_pages_shared_with_a_forked_process_are_not_collapsed():
    import os

    t = torch.ones(8 * MiB // 4)
    lo, hi = _hugepages.huge_range(t.untyped_storage())
    if not _hugepages._exclusive_runs(lo, hi):
        pytest.skip("/proc/self/pagemap's flags cannot be read here")
    assert _hugepages._exclusive_runs(lo, hi) == [(lo, hi)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child holds the pages shared copy-on-write until it exits
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    try:
        assert _hugepages._exclusive_runs(lo, hi) == []  # a collapse would copy them
    finally:
        os.close(w)
        os.waitpid(pid, 0)
        os.close(r)
    assert _hugepages._exclusive_runs(lo, hi) == [(lo, hi)]


@needs_thp
def test_a_range_the_program_opted_out_is_left(small_rule):
    t = torch.randn(8192, 256)
    lo, hi = _hugepages.huge_range(t.untyped_storage())
    assert _hugepages._madvise(lo, hi, 15) == 0  # MADV_NOHUGEPAGE
    try:
        assert _hugepages.advise_tables([t], "test") == 0
        assert (lo, hi) not in _hugepages._seen
    finally:  # (the flag outlives the tensor: malloc hands the memory to the next test's tables)
        _hugepages._madvise(lo, hi, 14)


def test_freed_tables_are_forgotten(small_rule):
    t = torch.randn(8192, 256)
    assert _hugepages.advise_tables([t], "test") > 0
    assert _hugepages.wait(60)
    del t
    assert _hugepages.advise_tables([torch.randn(8192, 256)], "test") > 0
    assert len(_hugepages._seen) == 1


@needs_thp
def test_without_madv_collapse_the_tables_are_only_marked(small_rule, monkeypatch, caplog):
    monkeypatch.setattr(_hugepages, "_collapse_ok", False)
    caplog.set_level(logging.INFO, logger="inductor_embed")
    t = torch.randn(16 * 1024, 256)
    want = t.clone()
    lo, hi = _hugepages.huge_range(t.untyped_storage())
    assert _hugepages.advise_tables([t], "test", in_compile=True) == hi - lo
    assert "left to khugepaged (no MADV_COLLAPSE)" in caplog.text
    assert not _hugepages._queue and _hugepages.wait(0.01)
    assert torch.equal(t, want)


def test_kernel_version_rule(monkeypatch):
    class U:
        def __init__(self, release):
            self.release = release

    for release, want in (("6.18.44-fc-v1300", True), ("6.1.0", True), ("5.15.0-91-generic", False),
                          ("weird", False)):
        monkeypatch.setattr(_hugepages.os, "uname", lambda r=release: U(r))
        assert _hugepages._kernel_collapses() is want
