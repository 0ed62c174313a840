"""The CPU's native kernels: the EmbeddingBag backward (every table's dense gradient in one
call, below) and one_hot_linear's fp32 forward and backward (``one_hot_linear``: a column
gather, a scatter-add with each thread owning a range of columns; opaque ops in the graph,
so Inductor builds no C++ for that pattern).

Why: the ATen-op backward (``bag_backward_cpu._bag_grad_by_segment_sums``) zero-fills each
``[V, D]`` gradient, makes every distinct row's sum (FBGEMM's pooling kernel) and scatters
the sums with ``index_put_``: separate passes over memory no cache holds (a DLRM's tables'
gradients are hundreds of MB), and ``zero_()`` reads each line before writing it. This
kernel zeroes each table (by non-temporal stores where the call writes 8 MiB or more), then
adds each position's term into its row in position order where that is ATen's order
(``scatter_rows``), or writes each present row's sum, made in registers, in the order
ATen's sort gives.
Measured against the ATen ops and ``torch.compile``: docs/design.md, "Why the CPU path is
what it is".

Same additions as ATen, same order: a row's sum starts from +0.0 and adds ``w_p *
grad[bag_p]`` (a fused multiply-add, as FBGEMM and BLAS's axpy; a plain add with no
weight) over the row's positions in the order of ATen's own ``sort`` of the indices. That
sort is FBGEMM's stable radix sort from 32,768 indices (``stable_sort_from`` checks this
build's): position order; below, ``std::sort``, whose steps the kernel replays itself
(``aten_order``, checked against this build's by ``aten_sort_matches``; else the caller
passes ``indices.sort()``'s order). So it is bit-equal to eager's EmbeddingBag backward.

How it is built: ``cpu_kernels.c`` beside this module, plain C (no torch headers),
compiled on first use with the system's C compiler (``$CC``, else ``cc`` / ``gcc`` /
``clang``; Inductor needs one on the CPU anyway) into a per-user cache directory, as
``cpu_kernels_<key>.so`` keyed by the source's text, the flags, the compiler and the CPU,
and loaded with ctypes (which releases the GIL during the call). The ctypes structs below
mirror the C ones field for field; ``ie_struct_sizes`` lets the load check their sizes.
Threads: torch's own OpenMP pool (``-fopenmp`` links ``libgomp.so.1``, the library torch
has loaded), each thread a slice of every table's rows of about equal work; its own
threads where the compiler has no OpenMP. Without a compiler, or with
``config.cpu_native_kernels = False``, ``lib()`` is None and callers take the ATen ops; a
failed build is logged once.
"""


from __future__ import annotations

import array
import ctypes
import dataclasses
import getpass
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from inductor_embed import config

log = logging.getLogger("inductor_embed")

# The kernels' C source, shipped beside this module (package data of the wheel and sdist).
SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.c")

# No -ffast-math: the sums must round as ATen's do. -ffp-contract=off keeps the plain adds
# plain; the scaled path asks for its fused multiply-add by name (fmaf). -fopenmp links
# libgomp.so.1, which resolves to the copy torch has loaded already (one thread pool).
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-fopenmp"]
# A call whose gradients (every table's, together) are at least this large writes them with
# non-temporal stores: a quarter of the 2-core machine's 32 MiB L3, where a written line
# would be evicted before it is read. Smaller ones stay in the cache for the optimizer
# (cpu-quick's 2.5 MB gradients ran 1.2x slower streamed). The tables together, not each:
# 26 FM fields' gradients (25 MB, 3.2 MB at most a table) outgrow the cache as one 25 MB
# table does (a step from a cold cache, paired: 0.89x the time streamed, 0.94x with an SGD
# step reading them; 10 narrow tables, 3.7 MB, 1.02-1.04x: left in the cache).
STREAMING_BYTES = 8 << 20
# A call writing less than this runs on the calling thread only: cpu-quick's tied pair
# (B=512, 2.5 MB) took 2x longer on two threads (their own, then; see ie_bag_grad). A lone
# 100,000 x 32 table's gradient (12.8 MB) took 0.75-0.85x the time on two threads.
THREADED_BYTES = 4 << 20
_POINTERS = {"out", "grad", "idx", "order", "offsets", "weights", "weight", "bias", "flat"}


class _Table(ctypes.Structure):  # ie_table
    _fields_ = [(name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in (
        "rows", "dim", "out", "grad", "grad_stride", "num_bags", "nnz", "idx", "idx64", "idx_stride0",
        "idx_stride1", "order", "bag_len",
        "offsets", "offsets64", "weights", "mean", "padding_idx", "accumulate", "streaming", "scatter", "aten_sort",
        "bf16")]


# Where the streaming flag sits in a flat list of _Table fields (see _structs): entry
# _STREAMING + k * _TABLE_INTS of table k.
_TABLE_INTS = len(_Table._fields_)
_STREAMING = [name for name, _ in _Table._fields_].index("streaming")


def _stream(fields: list[int], written: int) -> None:
    """Set every table's streaming flag in ``fields`` (flat _Table structs) where the call
    writes at least STREAMING_BYTES of gradients in all (see there)."""
    if written >= STREAMING_BYTES:
        fields[_STREAMING::_TABLE_INTS] = [1] * (len(fields) // _TABLE_INTS)


class _Field(ctypes.Structure):  # ie_field
    _fields_ = [("idx", ctypes.c_void_p), ("idx64", ctypes.c_int64), ("bag", ctypes.c_int64),
                ("num_classes", ctypes.c_int64), ("offset", ctypes.c_int64)]


class _OneHot(ctypes.Structure):  # ie_one_hot
    _fields_ = [("fields", ctypes.POINTER(_Field))] + [
        (name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in (
            "n_fields", "rows", "dim", "weight", "w_row", "w_col", "bias", "out", "grad", "grad_stride", "flat",
            "num_columns", "v_major", "has_bias")]


class _Pool(ctypes.Structure):  # ie_pool
    _fields_ = [("t", _Table), ("weight", ctypes.c_void_p), ("w_stride", ctypes.c_int64),
                ("out", ctypes.c_void_p), ("out_stride", ctypes.c_int64), ("arg", ctypes.c_void_p),
                ("arg_stride", ctypes.c_int64), ("grad_w", ctypes.c_void_p), ("fma", ctypes.c_int64),
                ("n_offsets", ctypes.c_int64), ("last_is_end", ctypes.c_int64)]


class _BagCheck(ctypes.Structure):  # ie_bag_check
    _fields_ = [("rows", ctypes.c_int64), ("idx", ctypes.c_void_p)] + [
        (name, ctypes.c_int64) for name in ("idx64", "n_idx", "bag_len", "idx_stride0", "idx_stride1")] + [
        ("offsets", ctypes.c_void_p), ("offsets64", ctypes.c_int64), ("n_offsets", ctypes.c_int64),
        ("last_is_end", ctypes.c_int64)]


# The structs whose sizes ie_struct_sizes(k) returns, in its order: a library that disagrees
# is not this source's build.
_STRUCTS = (_Table, _Field, _OneHot, _Pool, _BagCheck)


_lock = threading.Lock()
# "lib": the loaded library (None after a failed build); "private": its directory;
# "forked": this process is a fork (of one whose OpenMP pool torch may have started).
_state: dict[str, object] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _state.__setitem__("forked", True))


def _cache_dir() -> str:
    """``$INDUCTOR_EMBED_CACHE_DIR``, else ``<tmp>/inductor_embed_<user>`` (as Inductor's
    ``torchinductor_<user>``)."""
    path = os.environ.get("INDUCTOR_EMBED_CACHE_DIR")
    if not path:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (some containers)
            user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        path = os.path.join(tempfile.gettempdir(), f"inductor_embed_{user}")
    return path


def _private_dir() -> str:
    """``_cache_dir()``, created if missing; a fresh private directory instead where it is
    not ours alone (another user could otherwise plant a library we would load)."""
    path = _cache_dir()
    if "private" in _state:
        return _state["private"]  # type: ignore[return-value]
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
            path = tempfile.mkdtemp(prefix="inductor_embed_")
    except OSError:
        path = tempfile.mkdtemp(prefix="inductor_embed_")
    _state["private"] = path
    return path


def _compilers() -> list[str]:
    names = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    return [p for p in dict.fromkeys(shutil.which(n) for n in names if n) if p]


def _cpu_key() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() + platform.machine()


def _bind(path: str, errors: list[str]) -> ctypes.CDLL | None:
    """Load ``path`` and declare its entry points; None (the reason in ``errors``) where it is
    not this source's build: it does not load, lacks a symbol, or its structs' sizes are not
    ctypes' (a foreign or stale file under the cache's name)."""
    try:
        library = ctypes.CDLL(path)
        sizes = library.ie_struct_sizes
        library.ie_bag_grad.restype = ctypes.c_int64
        library.ie_bag_grad.argtypes = [ctypes.POINTER(_Table), ctypes.c_int64, ctypes.c_int64]
        library.ie_one_hot_linear.restype = ctypes.c_int64
        library.ie_one_hot_linear.argtypes = [ctypes.POINTER(_OneHot), ctypes.c_int64, ctypes.c_int64]
        library.ie_bag_forward.restype = ctypes.c_int64
        library.ie_bag_forward.argtypes = [ctypes.POINTER(_Pool), ctypes.c_int64, ctypes.c_int64]
        library.ie_bag_max_backward.restype = ctypes.c_int64
        library.ie_bag_max_backward.argtypes = [ctypes.POINTER(_Pool), ctypes.c_int64, ctypes.c_int64]
        library.ie_bag_rows.restype = ctypes.c_int64
        library.ie_bag_rows.argtypes = [ctypes.POINTER(_Table), ctypes.c_int64, ctypes.c_int64]
        library.ie_check_bags.restype = ctypes.c_int64
        library.ie_check_bags.argtypes = [ctypes.POINTER(_BagCheck), ctypes.c_int64]
        library.ie_aten_order.restype = ctypes.c_int64
        library.ie_aten_order.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_int64]
    except (OSError, AttributeError) as e:  # AttributeError: an undefined symbol
        errors.append(f"loading {path}: {e}")
        return None
    sizes.restype, sizes.argtypes = ctypes.c_int64, [ctypes.c_int64]
    want = [ctypes.sizeof(s) for s in _STRUCTS]
    got = [sizes(k) for k in range(len(want))]
    if got != want:
        errors.append(f"loading {path}: struct sizes {got}, ctypes' {want}")
        return None
    return library


def _compile(cc: str, flags: list[str], directory: str, errors: list[str]) -> str | None:
    """Compile ``SOURCE_PATH`` into a new file of ``directory``; its path, or None (the
    compiler's error in ``errors``)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, SOURCE_PATH, "-o", tmp, "-lm"], check=True, capture_output=True, text=True,
                       timeout=120)
        return tmp
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        errors.append(f"{cc} {' '.join(flags)}: {detail.strip()[:300]}")
        if os.path.exists(tmp):
            os.remove(tmp)
        return None


def read_source(path: str, missing: str) -> str | None:
    """The text of a kernel source shipped beside these modules, or None, logged (``missing``,
    its %s the error), where the install lacks its package data."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        log.warning("inductor_embed: " + missing, e)
        return None


def _build() -> ctypes.CDLL | None:
    """Find in the cache (or compile) and load the kernel; None, logged, where it cannot. A
    cached file that is not this source's build is rebuilt and replaced. A new build is
    loaded from its own temporary name before it takes the cache's (dlopen would hand back
    an already-loaded library of the same name)."""
    if sys.platform == "win32":
        log.info("inductor_embed: no native CPU backward kernel on Windows; using ATen ops")
        return None
    errors: list[str] = []
    source = read_source(SOURCE_PATH, "the native CPU kernels' source is missing (%s); using ATen ops")
    if source is None:
        return None
    for cc in _compilers():
        # Without OpenMP (a compiler lacking it) the kernel starts its own threads; without
        # -march=native (a compiler that cannot tell) it is built for the baseline ISA.
        for flags in (_FLAGS, [f for f in _FLAGS if f != "-fopenmp"],
                      [f for f in _FLAGS if f not in ("-fopenmp", "-march=native")]):
            key = hashlib.sha256("\0".join([source, cc, *flags, _cpu_key()]).encode()).hexdigest()[:20]
            directory = _private_dir()
            path = os.path.join(directory, f"cpu_kernels_{key}.so")
            if os.path.exists(path):
                library = _bind(path, errors)
                if library is not None:
                    return library
                log.info("inductor_embed: %s is not this version's native kernel library; rebuilding it", path)
            try:
                tmp = _compile(cc, flags, directory, errors)
            except OSError as e:  # no temporary file in the directory
                errors.append(f"{cc} {' '.join(flags)}: {e}")
                continue
            if tmp is None:
                continue
            library = _bind(tmp, errors)
            try:
                if library is not None:
                    os.replace(tmp, path)  # atomic: another process may be building it too
                    return library
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    log.warning("inductor_embed: could not build the native CPU kernels (%s); the CPU "
                "EmbeddingBag backward uses ATen ops (slower), one_hot_linear Inductor's loops (a "
                "slower first compile). Set CC to a C compiler, or "
                "config.cpu_native_kernels = False to silence this.",
                "; ".join(errors) if errors else "no C compiler found: $CC, cc, gcc, clang")
    return None


def lib() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None where it is switched off
    (``config.cpu_native_kernels``) or cannot be built."""
    if not config.cpu_native_kernels:
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _build()
    return _state["lib"]  # type: ignore[return-value]


@dataclass
class BagTable:
    """One table's EmbeddingBag weight gradient (sum / mean mode), ATen's additions in ATen's
    order: for each row r, ``out[r]`` = the sum, over the positions p with ``indices[p] == r``
    (none for the padding row) in the order of ATen's sort of ``indices``, of
    ``w_p * grad[bag_p]`` (``w_p``: the per-sample weight, 1 / bag size in mean mode, else
    1). Written into every row of ``out``, or with ``accumulate`` added to the rows present.

    Shapes: ``out [V, D]`` fp32 contiguous; ``grad [B, D]`` fp32 with unit column stride;
    ``indices`` int32/int64, any strides: ``[B, L]`` fixed bags (2-D input; position
    ``b * L + l``), or ``[nnz]`` with ``offsets [B]`` int32/int64 bag starts (every position
    in a bag: include_last_offset's extra ones cut off); ``weights [nnz]`` fp32 or None.
    ``order [nnz]`` int64: ATen's ``indices.reshape(-1).sort()`` permutation; None where
    that sort is stable (``stable_sort_from``), and the kernel sorts by a stable counting
    sort itself.
    """

    out: Tensor
    grad: Tensor
    indices: Tensor
    offsets: Tensor | None
    weights: Tensor | None
    mean: bool
    padding_idx: int
    accumulate: bool
    order: Tensor | None
    aten_sort: bool = False  # (order None) the kernel makes ATen's order itself (see aten_sort_matches)


def _scatters() -> bool:
    """Whether a table's rows are made by ``scatter_rows`` (each position's term added into
    its zeroed row, in position order, no sort) rather than the counting sort (each row
    written once), where the table allows either (no given order, nothing to accumulate
    onto): always, as measured on 2 threads, the kernel alone: 10 lookup tables of D=1..8
    (3.5 MB of gradients) 0.23 against 1.8 ms a call at B=4,096; one 100,000 x 32 table
    (12.8 MB, streamed) 0.33 against 0.53 ms at B=16,384; 26 of 100,000 x 64 (666 MB) 10
    against 20 ms at B=4,096; 26 such bags of 20 (B=2,048, Zipf) 25 against 28 ms. Tests
    force either way."""
    return True


def _table_scatters(t: BagTable) -> bool:
    """Whether ``t`` is scattered: where nothing else fixes its order (see ``_scatters``)."""
    return t.order is None and not t.accumulate and not t.aten_sort and _scatters()


def _structs(struct: type[ctypes.Structure], fields: list[int]) -> ctypes._Pointer:
    """``fields``, ``struct`` after ``struct`` (every field of ``struct`` 8 bytes, nested
    structs' too), as a pointer to an array of them: one ``array.array`` of int64 made from
    Python ints (a ctypes array of them took 0.1 us an int, setting a ctypes object's fields one
    by one more: either cost more than the checks or the kernel at a small batch). The
    pointer keeps the array alive."""
    assert ctypes.sizeof(struct) % 8 == 0 and len(fields) * 8 % ctypes.sizeof(struct) == 0
    buffer = array.array("q", fields)
    pointer = ctypes.cast(buffer.buffer_info()[0], ctypes.POINTER(struct))
    pointer._keep = buffer  # type: ignore[attr-defined]
    return pointer


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bag_grad(tables: Sequence[BagTable]) -> None:
    """Run ``tables`` (all at once, across ``torch.get_num_threads()`` threads: each writes a
    slice of every table's rows). Requires ``lib()``. Raises IndexError for an index
    outside ``[0, V)``, as eager does."""
    library = lib()
    assert library is not None, "bag_grad needs the native kernel (check lib() first)"
    fields: list[int] = []  # the _Table structs, flat (see _structs)
    work = written = 0
    ints = (torch.int32, torch.int64)
    for t in tables:
        out, grad, idx, offs, w, order = t.out, t.grad, t.indices, t.offsets, t.weights, t.order
        rows, dim = out.shape
        nnz, istr, gstr = idx.numel(), idx.stride(), grad.stride()
        # (each tensor call costs ~0.2 us, and a small batch's step makes this for every table)
        assert out.dtype == grad.dtype == torch.float32 and out.is_contiguous() and (gstr[-1] == 1 or dim <= 1)
        assert idx.dtype in ints and len(istr) == (1 if offs is not None else 2) and max(nnz, grad.shape[0]) < 1 << 31
        assert offs is None or (offs.dtype in ints and offs.is_contiguous())
        assert w is None or (w.dtype == torch.float32 and w.is_contiguous())
        assert order is None or (order.dtype == torch.int64 and order.is_contiguous())
        nbytes = rows * dim * 4
        fields += (rows, dim, out.data_ptr(), grad.data_ptr(), gstr[0], grad.shape[0], nnz, idx.data_ptr(),
                   idx.dtype == torch.int64, 0 if offs is not None else istr[0], istr[-1],
                   0 if order is None else order.data_ptr(), 0 if offs is not None else idx.shape[1],
                   0 if offs is None else offs.data_ptr(), offs is not None and offs.dtype == torch.int64,
                   0 if w is None else w.data_ptr(), t.mean, t.padding_idx, t.accumulate, 0,
                   _table_scatters(t), t.aten_sort and order is None, 0)
        written += 0 if t.accumulate else nbytes
        work += nnz * dim * 4
    work += written
    _stream(fields, written)
    bailed = _run_bag_grad(fields, [t.out.shape[0] for t in tables], work)
    if bailed is not None:  # std::sort turned to its heap sort there: ATen's own order for it
        t = tables[bailed]
        flat = t.indices if t.offsets is not None else t.indices.reshape(-1)
        bag_grad([*tables[:bailed], dataclasses.replace(t, order=flat.sort()[1], aten_sort=False),
                  *tables[bailed + 1:]])


def _run_bag_grad(fields: list[int], rows: Sequence[int], work: int) -> int | None:
    """``ie_bag_grad`` on the ``_Table`` structs ``fields`` (flat, ``len(rows)`` of them; see
    ``_structs``); IndexError naming the table's row count for an index out of range. The
    table whose ATen order the kernel could not make (nothing written then), else None."""
    status = lib().ie_bag_grad(_structs(_Table, fields), len(rows), _threads(work))  # type: ignore[union-attr]
    if status <= -2:
        return -2 - status
    if status > 0:
        raise IndexError(f"index out of range in self: an index outside [0, {rows[status - 1]})")
    if status < 0:
        raise MemoryError("inductor_embed's CPU bag backward could not allocate its scratch memory")
    return None


# ie_table.half: the kernel's code of each half type it sums in fp32 (fp32 itself: 0).
_HALF = {torch.bfloat16: 1, torch.float16: 2}


def lookup_grad(grad: Tensor, outs: Sequence[Tensor], indices: Sequence[Tensor], columns: Sequence[int],
                padding_idx: Sequence[int]) -> None:
    """Every table's ``embedding_dense_backward`` in one ``ie_bag_grad`` call (bags of one
    position, position order: bit-equal to eager's for fp32), with no per-table tensor made:
    the lookups' backward at a small batch is mostly this host work (a BagTable and its
    checks per table cost ~8 us).

    Shapes: ``grad [N, C]`` fp32, bf16 or fp16, unit column stride; ``outs[k] [V_k, D_k]`` of
    grad's dtype, contiguous, every element written; ``indices[k] [N]`` int32/int64, any
    stride; table k reads grad's columns ``[columns[k], columns[k] + D_k)``. A half-type row
    is summed in fp32 in position order and rounded once (to nearest even):
    ``embedding_dense_backward(grad.float()).to(grad.dtype)``, bit for bit up to a NaN's
    payload (torch.compile's decomposition; eager adds in the half type, rounding at every
    add). Requires ``lib()``. Raises IndexError for an index outside ``[0, V_k)``, as eager
    does."""
    half = _HALF.get(grad.dtype, 0)
    assert (half or grad.dtype == torch.float32) and (grad.stride(1) == 1 or grad.shape[1] <= 1)
    n, g0, gs, size = grad.shape[0], grad.data_ptr(), grad.stride(0), grad.element_size()
    fields: list[int] = []
    work = written = 0
    # (a half-type table is always scattered: the counting sort's rows are fp32 only)
    scatter, int64, counts = _scatters() or half > 0, torch.int64, []
    for out, i, col, pad in zip(outs, indices, columns, padding_idx):
        rows, dim = out.shape
        nbytes = rows * dim * size
        counts.append(rows)
        # (rows, dim, out, grad, grad_stride, num_bags, nnz, idx, idx64, idx_stride0, idx_stride1, order,
        #  bag_len, offsets, offsets64, weights, mean, padding_idx, accumulate, streaming, scatter, aten_sort, half)
        fields += (rows, dim, out.data_ptr(), g0 + size * col, gs, n, n, i.data_ptr(), i.dtype == int64,
                   i.stride(0) if n > 1 else 1, 0, 0, 1, 0, 0, 0, 0, pad, 0, 0, scatter, 0, half)
        written += nbytes
        work += n * dim * size
    _stream(fields, written)
    _run_bag_grad(fields, counts, work + written)


@dataclass
class RowsTable:
    """One ``sparse=True`` lookup's COO values (``ie_bag_rows``): ``out [nnz, D]`` fp32
    contiguous gets, for each position p of ``indices`` (``[B, L]``: p = b * L + l; or
    ``[nnz]`` with ``offsets``, ``[B]`` or ``[B + 1]`` with ``include_last_offset``), its bag's
    row of ``grad [B, D]`` (fp32, unit column stride), times 1 / the bag's size (``mean``) or
    ``weights[p]`` (``[nnz]`` fp32 contiguous), as ATen's sparse backward makes them (a
    product each, rounded once); a position in no bag gets zeros. No padding row (the caller's
    ATen ops take those: their positions are dropped, not zeroed)."""

    out: Tensor
    grad: Tensor
    indices: Tensor
    offsets: Tensor | None
    include_last_offset: bool
    weights: Tensor | None
    mean: bool


def bag_rows(tables: Sequence[RowsTable]) -> None:
    """Run ``tables`` (see RowsTable) in one call, every table's bags split across threads;
    values of 8 MiB or more in all (``STREAMING_BYTES``) are written by non-temporal stores. The
    offsets must be well formed (the forward checked them). Requires ``lib()``."""
    library = lib()
    assert library is not None, "bag_rows needs the native kernel (check lib() first)"
    fields: list[int] = []
    work = sum(t.out.nbytes for t in tables)
    # streamed where all the tables' values together pass STREAMING_BYTES (8 x 5 MB of them
    # outgrow the cache as one 40 MB table does)
    streaming = work >= STREAMING_BYTES
    for t in tables:
        assert t.out.dtype == t.grad.dtype == torch.float32 and t.out.is_contiguous() and t.grad.stride(-1) == 1
        assert t.offsets is None or t.offsets.is_contiguous()
        assert t.weights is None or (t.weights.dtype == torch.float32 and t.weights.is_contiguous())
        i, o = t.indices, t.offsets
        total, dim = t.out.shape
        b = t.grad.shape[0]
        nnz = total if o is None or not t.include_last_offset or o.shape[0] == 0 else min(int(o[-1]), total)
        fields += (total, dim, t.out.data_ptr(), t.grad.data_ptr(), t.grad.stride(0), b, nnz, 0, 0, 0, 0, 0,
                   i.shape[1] if o is None else 0, 0 if o is None else o.data_ptr(),
                   o is not None and o.dtype == torch.int64, _ptr(t.weights) or 0, t.mean, -1, 0, streaming, 0, 0, 0)
    if library.ie_bag_rows(_structs(_Table, fields), len(tables), _threads(work)) < 0:
        raise MemoryError("inductor_embed's CPU sparse bag backward could not allocate its scratch memory")


@dataclass
class PoolTable:
    """One lookup's pooled forward (``ie_bag_forward``), as ATen's ``embedding_bag``: columns
    ``[col, col + D)`` of ``out [B, C]`` (the op's output, unit column stride) get each bag's
    pooling of ``weight``'s rows (``[V, D]`` fp32, unit column stride; the padding row
    skipped): max mode (``arg`` given: ``[B, C']`` int64, its columns from ``arg_col`` the row
    each element came from; an empty bag 0 and -1), else the sum (``mean``: divided by the
    bag's size, at least 1), each row times its ``weights`` entry if given (``[nnz]`` fp32
    contiguous, by position). ``fma``: a weighted term is added by a fused multiply-add (see
    ``weighted_fma``). ``indices``: ``[B, L]``, or ``[nnz]`` with ``offsets`` (``[B]``, or
    ``[B + 1]`` with ``include_last_offset``). Whole outputs and a column, not column views:
    a view per table cost more than the rest of its fields at a small batch."""

    weight: Tensor
    indices: Tensor
    offsets: Tensor | None
    include_last_offset: bool
    padding_idx: int
    out: Tensor
    arg: Tensor | None = None
    weights: Tensor | None = None
    mean: bool = False
    fma: bool = False
    col: int = 0
    arg_col: int = 0


def _pool_fields(t: PoolTable) -> tuple[int, ...]:
    """``t`` as the ints of one ``_Pool`` (see ``_structs``; a few tensor calls each, as a small
    batch's step makes this for every table)."""
    i, o, out, w, arg = t.indices, t.offsets, t.out, t.weight, t.arg
    two_d = o is None
    strides = i.stride()
    v, d = w.shape
    return (v, d, 0, 0, 0, out.shape[0], i.numel(), i.data_ptr(), i.dtype == torch.int64,
            strides[0] if two_d else 0, strides[-1], 0, i.shape[1] if two_d else 0,
            0 if two_d else o.data_ptr(), not two_d and o.dtype == torch.int64,
            0 if t.weights is None else t.weights.data_ptr(), t.mean, t.padding_idx, 0, 0, 0, 0, 0,
            w.data_ptr(), w.stride(0), out.data_ptr() + 4 * t.col, out.stride(0),
            0 if arg is None else arg.data_ptr() + 8 * t.arg_col, 0 if arg is None else arg.stride(0), 0, t.fma,
            0 if two_d else o.shape[0], not two_d and t.include_last_offset)


def bag_forward(tables: Sequence[PoolTable]) -> int | None:
    """Run the forward of ``tables`` (see PoolTable) in one call, after checking every table's
    inputs as ``first_bad_bag`` does (a sum table's indices as they are copied, the rest
    before any row is read). Returns the first bad table (then the outputs hold no result:
    the caller raises), else None. Requires ``lib()``; the tensors are the caller's shapes
    and dtypes (asserted cheaply: fp32, unit column strides, contiguous offsets)."""
    library = lib()
    assert library is not None, "bag_forward needs the native kernel (check lib() first)"
    fields: list[int] = []
    work = 0
    for t in tables:
        assert t.weight.dtype == t.out.dtype == torch.float32 and t.weight.stride(1) == 1 and t.out.stride(1) == 1
        assert t.offsets is None or t.offsets.is_contiguous()
        assert t.col + t.weight.shape[1] <= t.out.shape[1]
        assert t.arg is None or (t.arg.stride(1) == 1 and t.arg_col + t.weight.shape[1] <= t.arg.shape[1])
        fields += _pool_fields(t)
        work += t.indices.numel() * t.weight.shape[1] * 4
    status = library.ie_bag_forward(_structs(_Pool, fields), len(tables), _threads(work))
    if status < 0:
        raise MemoryError("inductor_embed's CPU bag forward could not allocate its scratch memory")
    return None if status == 0 else status - 1


_fma: dict[tuple[bool, bool], bool | None] = {}


def weighted_fma(padding: bool, strided: bool = False) -> bool | None:
    """How this build's ATen adds a weighted bag's terms (per_sample_weights, fp32, contiguous
    rows), with a padding row (``padding``) or without, the weights of unit stride or not
    (``strided``): by a fused multiply-add (True: FBGEMM's kernel, ATen's path without a padding
    row and with unit-stride weights where the build has FBGEMM) or a product then a sum
    (False: ATen's own loop); None where the native forward matches neither (then ATen runs
    such tables). Probed once per kind, on 64 bags of random rows and weights, where the two
    roundings differ in many elements."""
    kind = (padding, strided)
    if kind not in _fma:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(50, 24, generator=gen)
        indices = torch.randint(0, 50, (64 * 9,), generator=gen)
        offsets = torch.arange(0, 64 * 9, 9)
        weights = torch.rand(64 * 9 * 2, generator=gen)[::2] if strided else torch.rand(64 * 9, generator=gen)
        pad = 7 if padding else -1
        with torch.no_grad():
            want = torch.embedding_bag(weight, indices, offsets, False, 0, False, weights, False,
                                       pad if padding else None)[0]
        _fma[kind] = None
        for fma in (True, False):
            out = torch.empty_like(want)
            bag_forward([PoolTable(weight, indices, offsets, False, pad, out, weights=weights.contiguous(), fma=fma)])
            if torch.equal(out, want):
                _fma[kind] = fma
                break
    return _fma[kind]


def bag_max_backward(grad: Tensor, arg: Tensor, out: Tensor) -> None:
    """Add a max-mode lookup's pooled gradient ``grad [B, D]`` (fp32, unit column stride) into
    ``out [V, D]`` (fp32, contiguous) at the rows ``arg [B, D]`` (int64, -1: none) names, bag
    by bag (ATen's order). Requires ``lib()``."""
    library = lib()
    assert library is not None, "bag_max_backward needs the native kernel (check lib() first)"
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape[1] == grad.shape[1]
    assert grad.stride(1) == 1 and arg.stride(1) == 1 and arg.dtype == torch.int64 and arg.shape == grad.shape
    bags = _Table(out.shape[0], out.shape[1], None, None, 0, grad.shape[0], 0, None, 0, 0, 0, None, 0, None, 0, None,
                  0, -1, 0, 0, 0, 0, 0)
    call = _Pool(bags, None, 0, grad.data_ptr(), grad.stride(0), arg.data_ptr(), arg.stride(0), out.data_ptr(), 0, 0, 0)
    library.ie_bag_max_backward(ctypes.byref(call), 1, _threads(grad.numel() * 12))


def first_bad_bag(rows: Sequence[int], indices: Sequence[Tensor], offsets: Sequence[Tensor | None],
                  include_last_offset: Sequence[bool]) -> int | None:
    """The first table whose bag inputs are bad, else None, in one call for every table: its
    offsets (``[B]``, or ``[B + 1]`` with ``include_last_offset``) do not start at 0, decrease
    or pass its index count, or one of its indices in a bag (``[nnz]`` with offsets, ``[B, L]``
    without; any strides; int32 or int64) is outside ``[0, rows)``. The checks of
    ``_checks.bag_values``, without a host read per table. Requires ``lib()``, CPU tensors."""
    library = lib()
    assert library is not None, "first_bad_bag needs the native kernel (check lib() first)"
    fields: list[int] = []  # the _BagCheck structs, flat (see _structs)
    keep = []  # contiguous copies of strided offsets, alive through the call
    for v, i, o, ilo in zip(rows, indices, offsets, include_last_offset):
        two_d = i.dim() == 2
        fields += (v, i.data_ptr(), i.dtype == torch.int64, 0 if i.numel() == 0 else i.shape[0],  # [B, 0]: none
                   i.shape[1] if two_d else 0, i.stride(0), i.stride(1) if two_d else 1)
        if o is None:
            fields += (0, 0, 0, 0)
        else:
            o = o if o.is_contiguous() else o.contiguous()
            keep.append(o)
            fields += (o.data_ptr(), o.dtype == torch.int64, o.numel(), ilo)
    bad = library.ie_check_bags(_structs(_BagCheck, fields), len(indices))
    return None if bad == 0 else bad - 1


def _threads(work: int) -> int:
    """Threads for a call moving about ``work`` bytes: torch's count past THREADED_BYTES, else
    one; one in a forked child, where libgomp's pool is the parent's and may hang the first
    parallel region (ATen runs serially there too)."""
    return torch.get_num_threads() if work >= THREADED_BYTES and not _state.get("forked") else 1


def _one_hot_call(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int], dim: int,
                  backward: bool, **args: object) -> int | None:
    """Run ``ie_one_hot_linear``; the field with an index out of range (nothing written), or None."""
    library = lib()
    assert library is not None, "one-hot kernels need the native library (check lib() first)"
    rows = math.prod(indices[0].shape[:-1])
    flat = [i.reshape(rows, i.shape[-1]).contiguous() for i in indices]
    fields = (_Field * len(flat))(*[_Field(i.data_ptr(), i.dtype == torch.int64, i.shape[1], n, off)
                                    for i, n, off in zip(flat, num_classes, offsets)])
    call = _OneHot(fields, len(flat), rows, dim, **args)
    work = rows * dim * 4 * (1 + sum(i.shape[1] for i in flat))
    status = library.ie_one_hot_linear(ctypes.byref(call), backward, _threads(work))
    if status < 0:
        raise MemoryError("inductor_embed's CPU one-hot kernel could not allocate its scratch memory")
    return status - 1 if status > 0 else None


def one_hot_linear(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int], weight: Tensor,
                   bias: Tensor | None) -> tuple[Tensor, int | None]:
    """``one_hot_linear_ref`` for fp32: ``(out [*L, D], bad)``, ``bad`` the first field with an
    index outside ``[0, num_classes)`` (then nothing is computed), else None.

    Shapes: F index tensors ``[*L, bag_k]`` int32/int64 (field k's index i names column
    ``offsets[k] + i``); ``weight [D, V]`` fp32, any strides; ``bias [D]`` fp32 or None.
    Each row is the fp32 sum of its fields' sums of columns, plus the bias.
    """
    assert weight.dtype == torch.float32 and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
    d = weight.shape[0]
    out = torch.empty((*indices[0].shape[:-1], d), dtype=torch.float32)
    bad = _one_hot_call(indices, num_classes, offsets, d, False, weight=weight.data_ptr(), w_row=weight.stride(0),
                        w_col=weight.stride(1), bias=_ptr(bias), out=out.data_ptr())
    return out, bad


def one_hot_linear_backward(grad: Tensor, indices: Sequence[Tensor], num_classes: Sequence[int],
                            offsets: Sequence[int], num_columns: int, has_bias: bool,
                            v_major: bool) -> tuple[Tensor, int | None]:
    """``one_hot_linear_backward_ref`` for fp32: ``(flat, bad)`` as ``one_hot_linear``.

    ``grad [*L, D]`` fp32; ``flat [D * V (+ D)]``: the weight's gradient, laid out as a
    row-major ``[V, D]`` (``v_major``) or ``[D, V]``, then the bias's (grad's column sums).
    Each column's sum adds the positions in order, from +0.0 (deterministic).
    """
    d = grad.shape[-1]
    g = grad.reshape(math.prod(grad.shape[:-1]), d)
    if g.stride(-1) != 1:
        g = g.contiguous()
    flat = torch.empty(d * num_columns + (d if has_bias else 0), dtype=torch.float32)
    bad = _one_hot_call(indices, num_classes, offsets, d, True, grad=g.data_ptr(), grad_stride=g.stride(0),
                        flat=flat.data_ptr(), num_columns=num_columns, v_major=v_major, has_bias=has_bias)
    return flat, bad


_stable: dict[torch.dtype, int | None] = {}
_aten_sort: dict[torch.dtype, bool] = {}


def aten_order(indices: Tensor) -> Tensor | None:
    """The kernel's replica of ATen's (std::sort's) order of ``indices`` (``[n]`` int32/int64,
    contiguous, ``n < 2**31``, values in ``[0, 2**31)``): ``[n]`` int64 positions, or None
    where std::sort would have turned to its heap sort (not replicated). Requires ``lib()``."""
    assert indices.dtype in (torch.int32, torch.int64) and indices.dim() == 1 and indices.is_contiguous()
    order = torch.empty(indices.numel(), dtype=torch.int64)
    got = lib().ie_aten_order(indices.data_ptr(), indices.dtype == torch.int64,  # type: ignore[union-attr]
                              indices.numel(), order.data_ptr(), -1)
    if got < 0:
        raise MemoryError("inductor_embed's CPU sort could not allocate its scratch memory")
    return None if got else order


def aten_sort_matches(dtype: torch.dtype) -> bool:
    """Whether the kernel's replica of std::sort (``aten_order``) gives this build's ATen
    ``sort()`` order of 1-D ``dtype`` indices below its radix sort's length (libstdc++'s
    introsort; another C++ library's sort would differ): then the bag backward makes ATen's
    order in its own threads instead of a ``sort()`` per table here. Probed once per dtype on
    lengths from 2 to 20,000, keys from all equal to all distinct, sorted and reversed runs."""
    if dtype not in _aten_sort:
        gen = torch.Generator().manual_seed(0)
        ok = lib() is not None
        cases = [torch.randint(0, hi, (n,), generator=gen) for n in (2, 3, 16, 17, 40, 333, 4096)
                 for hi in (1, 3, 50, 10 ** 6)]
        cases += [torch.randint(0, 100, (20000,), generator=gen), torch.arange(5000) // 3,
                  (torch.arange(5000) // 7).flip(0), torch.arange(2000) % 9]
        for keys in cases if ok else []:
            keys = keys.to(dtype)
            order = aten_order(keys)
            if order is not None and not torch.equal(order, keys.sort()[1]):
                ok = False
                break
        _aten_sort[dtype] = ok
    return _aten_sort[dtype]


def stable_sort_from(dtype: torch.dtype) -> int | None:
    """The length from which ATen's ``sort()`` of a 1-D ``dtype`` tensor is stable (FBGEMM's
    parallel radix sort, used from ``at::internal::GRAIN_SIZE`` = 32,768 elements where the
    build has it; shorter ones take ``std::sort``), or None where this build's is not.
    Probed once per dtype: equal keys must come out in position order at that length and
    at 4x it."""
    if dtype not in _stable:
        start = 32768
        ok = True
        for n in (start, 4 * start):
            keys = (torch.arange(n, dtype=torch.int64) * 2654435761 % 7).to(dtype)
            order = keys.sort().indices
            ranked = keys[order]
            same = ranked[1:] == ranked[:-1]  # neighbours with one key: positions must ascend
            ok = ok and bool((order[1:] > order[:-1])[same].all())
        _stable[dtype] = start if ok else None
    return _stable[dtype]
