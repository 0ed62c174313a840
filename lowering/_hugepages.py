"""Transparent huge pages under big CPU embedding tables and their gradient buffers.

Why: a lookup reads rows at random across its tables. With 4 KiB pages every row of a
table larger than the TLB's reach (3,072 entries x 4 KiB = 12 MiB on Zen 4, 8 MiB on
Sapphire Rapids) costs a page walk; 2 MiB pages cut those walks 512-fold. Measured on
the 2-core machine (docs/design.md, "Huge pages"): eager's bag forward over 8 tables
1.06x faster at 64 MiB of tables, 1.12x at 256 MiB, 1.01-1.02x at 8 to 32 MiB.

How: Linux backs memory with huge pages only where asked (THP ``enabled`` = ``madvise``, the
common default) or everywhere (``always``), and converts pages already in use only
slowly (khugepaged scans a few MB every 10 s). So:

- ``advise_tables``: the tables a fused op reads, when they total at least ``MIN_TABLES``
  bytes, are marked ``MADV_HUGEPAGE`` and then collapsed (``MADV_COLLAPSE``, Linux 6.1+)
  by one background thread at the lowest priority: a synchronous collapse took ~2.5 ms a
  2 MiB page (1.3 s for 26 tables of 100,000 x 64 fp32), longer than a compile. A collapse
  copies the pages and keeps every value (the kernel does it under its own locks, as
  khugepaged does on any running process), so the tables may be read and written meanwhile.
- ``advise_fresh``: a new gradient buffer (``_grad_cache``) is marked before its first
  write, so that its zero fill faults in huge pages directly (and queued for the collapse
  too, for memory that malloc recycled).

Nothing is done where the system or the process says no: THP ``never``, a process with
``prctl(PR_SET_THP_DISABLE)`` (the switch any user has), a range the program marked
``MADV_NOHUGEPAGE``, or no Linux. Only the whole 2 MiB pages inside a table's own bytes are
advised (not the rest of a view's storage), only plain tensors' (a wrapper subclass has no
memory of its own), and a span is collapsed only where its pages are this process's alone: a
page still shared copy-on-write with a forked process is left to khugepaged, which would not
copy it either. Anything failing here is logged at DEBUG and never fails a compile or a
backward (no thread to start: the ranges stay marked, for khugepaged).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from inductor_embed import _compat

log = logging.getLogger("inductor_embed")


def _pmd_size() -> int:
    """The system's transparent huge page size (``hpage_pmd_size``: 2 MiB on x86-64 and on
    arm64 with 4 KiB pages, 512 MiB with 64 KiB pages)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2 << 20


def _kernel_collapses() -> bool:
    """Whether this kernel has ``MADV_COLLAPSE`` (Linux 6.1+)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (6, 1)


HUGE = _pmd_size()
# A fused op's tables get huge pages from this many bytes together (the measured gains above:
# a collapse costs more than it saves below it).
MIN_TABLES = 64 << 20
# A background collapse call's span: the storage is looked up again between spans, so a table
# freed meanwhile is dropped.
SPAN = 32 << 20

_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_PR_GET_THP_DISABLE = 42

_lock = threading.Lock()
_queue: collections.deque = collections.deque()  # (StorageWeakRef, start, end) still to collapse
_busy = threading.Condition(_lock)
_worker_running = False  # set and cleared under _lock (a thread that has left its loop but
# not yet ended still reads as alive: is_alive() would leave a new queue to no one)
_pending = 0  # queued or in-flight spans
# (start, end) of the ranges advised already -> a weak reference to their storage (a range
# whose storage was freed may come back under a new table)
_seen: dict[tuple[int, int], object] = {}
# Without MADV_COLLAPSE (Linux < 6.1) the marked tables are left to khugepaged.
_collapse_ok = sys.platform.startswith("linux") and _kernel_collapses()
_compiling = False  # a torch.compile is running: the worker waits (it would slow the compile)
# How long the worker waits for a compile to end before it goes on anyway (a compile that
# Dynamo did not start, e.g. compile_fx called by hand, never reports its end).
COMPILE_WAIT_S = 60.0


@functools.lru_cache(maxsize=1)
def thp_mode() -> str | None:
    """The system's THP setting (``always``, ``madvise`` or ``never``), ``never`` for a process
    that disabled THP for itself, None where there is no THP (not Linux, no sysfs entry)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    mode = next((w[1:-1] for w in text.split() if w.startswith("[")), None)
    libc = _libc()
    if libc is None:
        return None
    if libc.prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1:
        return "never"
    return mode


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    return libc


def _enabled() -> bool:
    return thp_mode() in ("always", "madvise")


def _whole_pages(start: int, nbytes: int) -> tuple[int, int] | None:
    """``(lo, hi)``: the whole huge pages inside ``[start, start + nbytes)``, or None."""
    lo, hi = -(-start // HUGE) * HUGE, (start + nbytes) // HUGE * HUGE
    return (lo, hi) if start and hi > lo else None


def huge_range(storage: torch.UntypedStorage) -> tuple[int, int] | None:
    """``(start, end)``: the addresses of the whole huge pages inside ``storage``, or None when it
    holds none (or is not plain CPU memory)."""
    if storage.device.type != "cpu" or storage.nbytes() < HUGE:
        return None
    return _whole_pages(storage.data_ptr(), storage.nbytes())


def table_range(t: torch.Tensor) -> tuple[int, int] | None:
    """The whole huge pages inside the bytes ``t`` itself spans (a view's elements, not the rest
    of its storage: a collapse fills every 4 KiB page of a huge page, so advising a small view's
    whole storage could map hundreds of MB the program never touched). None for anything but a
    plain strided CPU tensor or parameter (a wrapper subclass has no memory of its own)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device.type != "cpu" or t.layout != torch.strided:
        return None
    if t.numel() * t.element_size() < HUGE:
        return None
    try:
        start = t.data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage behind it
        return None
    extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return _whole_pages(start, extent * t.element_size())


def _merged(ranges: dict[tuple[int, int], torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Overlapping ranges (views of one storage) as one, keyed by the merged range."""
    out: dict[tuple[int, int], torch.Tensor] = {}
    cur: list = []
    for (lo, hi), t in sorted(ranges.items()):
        if cur and lo <= cur[1]:
            cur[1] = max(cur[1], hi)
        else:
            if cur:
                out[(cur[0], cur[1])] = cur[2]
            cur = [lo, hi, t]
    if cur:
        out[(cur[0], cur[1])] = cur[2]
    return out


def _opted_out(ranges: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """The ranges that overlap a mapping the program marked ``MADV_NOHUGEPAGE`` (``nh`` in
    ``/proc/self/smaps``' VmFlags): its own say about its memory, which this module keeps."""
    ranges = list(ranges)
    out: set[tuple[int, int]] = set()
    try:
        with open("/proc/self/smaps") as f:
            span = None
            for line in f:
                if line.startswith("VmFlags:"):
                    if span is not None and " nh" in line:
                        out.update(r for r in ranges if r[0] < span[1] and span[0] < r[1])
                elif "-" in line and not line[0].isupper():  # a mapping's header: start-end perms ...
                    a, b = line.split(" ", 1)[0].split("-")
                    span = (int(a, 16), int(b, 16))
    except (OSError, ValueError):
        pass
    return out


def _madvise(lo: int, hi: int, advice: int) -> int:
    """0, or the errno of ``madvise(lo, hi - lo, advice)``."""
    libc = _libc()
    if libc.madvise(lo, hi - lo, advice) == 0:
        return 0
    return ctypes.get_errno()


def advise_tables(tables: Iterable[torch.Tensor], op: str, in_compile: bool = False) -> int:
    """Ask for huge pages under ``tables`` (a fused op's CPU tables, read at random) when they
    total at least ``MIN_TABLES`` bytes: marked now, collapsed in the background (after the
    compile that calls this ends, when ``in_compile``). Returns the bytes newly marked (0
    where nothing was done)."""
    if not _enabled():
        return 0
    ranges = {}
    for t in tables:
        r = table_range(t) if isinstance(t, torch.Tensor) else None
        if r is not None:
            ranges[r] = t
    ranges = _merged(ranges)  # (tables may share a storage)
    if sum(hi - lo for lo, hi in ranges) < MIN_TABLES:
        return 0
    skip = _opted_out(ranges)
    marked = 0
    with _lock:
        for key in [k for k, ref in _seen.items() if ref.expired()]:  # freed: forget them
            del _seen[key]
        for (lo, hi), t in ranges.items():
            ref = _seen.get((lo, hi))
            if (ref is not None and not ref.expired()) or (lo, hi) in skip:
                continue
            storage = t.untyped_storage()
            ref = _seen[(lo, hi)] = StorageWeakRef(storage)
            err = _madvise(lo, hi, _MADV_HUGEPAGE)
            if err:
                log.debug("huge pages: madvise(MADV_HUGEPAGE) of a %s table failed: %s", op, os.strerror(err))
                continue
            marked += hi - lo
            if _collapse_ok:
                _queue_spans(ref, lo, hi)
        if marked and _collapse_ok:
            if in_compile:
                _watch_compiles()
            _start_worker()
    if marked:
        log.info("huge pages: %s's tables (%d MiB) marked, %s (THP %s)", op, marked >> 20,
                 "queued for collapse" if _collapse_ok else "left to khugepaged (no MADV_COLLAPSE)", thp_mode())
    return marked


def _pending_add(k: int) -> None:
    global _pending
    _pending += k
    if _pending == 0:
        _busy.notify_all()


def advise_fresh(storage: torch.UntypedStorage) -> None:
    """Mark a new buffer's whole huge pages before anything writes it: where its memory is
    fresh from the kernel, its first write faults in huge pages. Memory that malloc recycled
    (pages mapped already) keeps its small pages, so its range is also queued for the
    background collapse (a no-op on pages that are huge already)."""
    if not _enabled():
        return
    r = huge_range(storage)
    if r is None:
        return
    lo, hi = r
    err = _madvise(lo, hi, _MADV_HUGEPAGE)
    if err:
        log.debug("huge pages: madvise(MADV_HUGEPAGE) of a gradient buffer failed: %s", os.strerror(err))
        return
    if _collapse_ok:
        with _lock:
            _queue_spans(StorageWeakRef(storage), lo, hi)
            _start_worker()


def _queue_spans(ref: StorageWeakRef, lo: int, hi: int) -> None:
    """Queue [lo, hi) of the storage ``ref`` for the worker, ``SPAN`` bytes a call (``_lock``
    held)."""
    for a in range(lo, hi, SPAN):
        _queue.append((ref, a, min(a + SPAN, hi)))
        _pending_add(1)


def _compile_started(*_: object) -> None:
    global _compiling
    with _lock:
        _compiling = True


def _compile_ended(*_: object) -> None:
    global _compiling
    with _lock:
        _compiling = False
        _busy.notify_all()


def _idle() -> bool:
    return not _compiling


def _watch_compiles() -> None:
    """Pause the worker while Dynamo compiles (``_lock`` held): on 2 cores a collapse running
    beside a compile took ~2 s more of its wall time. Called inside a compile (the graph
    pass), whose start Dynamo reported before these callbacks were registered."""
    global _compiling
    if _compat.watch_compiles(_compile_started, _compile_ended):
        _compiling = True


def _start_worker() -> None:
    """Start the collapsing thread if none runs (``_lock`` held)."""
    global _worker_running
    if _worker_running:
        return
    try:
        threading.Thread(target=_work, name="inductor_embed-hugepages", daemon=True).start()
    except RuntimeError as e:  # a thread limit, an interpreter shutting down: khugepaged's job then
        log.debug("huge pages: no collapse thread (%s); the marked ranges are left to khugepaged", e)
        _pending_add(-len(_queue))
        _queue.clear()
        return
    _worker_running = True  # (the thread waits for _lock, which the caller holds)


def _work() -> None:
    """Collapse the queued spans, one ``madvise`` call each, at the lowest CPU priority."""
    global _compiling, _worker_running
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    except OSError:
        pass
    while True:
        with _lock:
            if _compiling and not _busy.wait_for(_idle, COMPILE_WAIT_S):
                _compiling = False  # an end that will not come: go on
            if not _queue:
                _worker_running = False
                return
            ref, lo, hi = _queue.popleft()
        # The storage still alive (a freed table's range may hold other memory now; a collapse
        # would keep its values too, but it is not ours to spend time on). Not held for the
        # call: a reference here would make a gradient buffer look busy to _grad_cache, which
        # would then allocate another; a table freed during the call costs a wasted collapse.
        err = 0
        if not ref.expired():
            for a, b in _exclusive_runs(lo, hi):
                err = _madvise(a, b, _MADV_COLLAPSE) or err
        with _lock:
            # EAGAIN / ENOMEM: no huge page free now; EINVAL: memory that cannot be collapsed
            # (a file mapping): the marked range stays eligible for khugepaged
            if err:
                log.debug("huge pages: a collapse failed: %s", os.strerror(err))
            _pending_add(-1)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _exclusive_runs(lo: int, hi: int) -> list[tuple[int, int]]:
    """The runs of whole huge pages in [lo, hi) whose every present page is this process's
    alone (``/proc/self/pagemap``: bit 63 present, bit 56 exclusively mapped). A page still
    shared copy-on-write with a forked process (a server's workers, a DataLoader's) is left
    alone: ``MADV_COLLAPSE`` would copy it, one private copy of the table per process, where
    khugepaged would not (its ``max_ptes_shared``). Nothing where pagemap cannot be read."""
    per = HUGE // _PAGE
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            raw = os.pread(fd, (hi - lo) // _PAGE * 8, lo // _PAGE * 8)
        finally:
            os.close(fd)
    except OSError:
        return []
    entries = torch.frombuffer(bytearray(raw), dtype=torch.int64)
    if entries.numel() != (hi - lo) // _PAGE:
        return []
    shared = (entries < 0) & ((entries >> 56) & 1 == 0)  # present (the sign bit) and not exclusive
    ok = ~shared.view(-1, per).any(dim=1)
    runs: list[tuple[int, int]] = []
    for k, good in enumerate(ok.tolist()):
        a = lo + k * HUGE
        if not good:
            continue
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], a + HUGE)
        else:
            runs.append((a, a + HUGE))
    return runs


def wait(timeout: float | None = None) -> bool:
    """Block until every queued collapse is done (the benchmark's timing starts after it: the
    steady state). True if none is left."""
    with _lock:
        return _busy.wait_for(lambda: _pending == 0, timeout)


def _after_fork_in_child() -> None:
    """A forked child has no worker thread, and the lock may have been held at the fork."""
    global _lock, _busy, _worker_running, _pending, _compiling
    _lock = threading.Lock()
    _busy = threading.Condition(_lock)
    _worker_running = False
    _compiling = False
    _queue.clear()
    _pending = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
