"""``torch.ops.inductor_embed.multi_embedding``: T embedding lookups + cat as one op.

Forward: ``[*L] x T indices, [V_k, D_k] x T tables -> [*L, sum(D_k)]``.
Backward: on the GPU ``multi_embedding_backward`` returns every table's gradient packed
into one flat buffer (one zero fill), which the autograd formula splits into per-table
views (free); on the CPU each table gets its own gradient (``_cpu_backward``).

The forward is a ``triton_op``: on the CPU Inductor traces through its body and
compiles the ATen reference into its own fused C++ loop; on CUDA the body calls the
opaque ``multi_embedding_triton``, which launches the Triton kernel (see
``kernels/_meta.py`` for why the launch is opaque: the kernel reads every table through a
device table of pointers). The GPU backward is one opaque op; the CPU one is chosen per
table by width (``CPU_EAGER_MIN_DIM``).

One module, though long: the family's registered ops (forward, column writes, backwards,
sparse gradients) and their autograd formula are registered together, as torch.library
wants an op's fake and autograd registrations beside its definition.
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from inductor_embed import _compat
from inductor_embed.lowering import _checks, _cpu_host, _cpu_native, embedding_backward_cpu
from inductor_embed.lowering._common import (
    coalesce_sparse_grads,
    column_stride_1,
    first_order,
    twin_op,
    use_triton,
)
from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu
from inductor_embed.lowering.multi_embedding_ref import (
    coalesce_ref,
    compress_indices,
    multi_embedding_backward_ref,
    multi_embedding_ref,
)

_OOB_MSG = _checks.EMBEDDING_OOB


def _first_positions(weights: list[torch.Tensor]) -> list[int]:
    """The first position of each table among ``weights`` (a table may be looked up more than
    once): a sparse table's gradient is made once, for all its lookups, at its first position."""
    return [next(j for j in range(len(weights)) if weights[j] is w) for w in weights]


@triton_op("inductor_embed::multi_embedding", mutates_args=())
def multi_embedding(
    weights: list[torch.Tensor],
    indices: list[torch.Tensor],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
    sparse: list[bool] | None = None,
) -> torch.Tensor:
    """Gather T tables and concatenate along the feature dimension.

    Args:
        weights: T tables [V_k, D_k], one float dtype, one device.
        indices: T index tensors, all of shape [*L], int32 or int64.
        padding_idx: per table, the row that gets no gradient, or -1 (backward only).
        scale_grad_by_freq: per table, scale gradients by 1/count (backward only).
        sparse: per table, whether its gradient is a coalesced sparse COO tensor (the
            rows the batch touches, sorted, each once) instead of a dense one; None: none.
            Not with scale_grad_by_freq (eager raises; so does the op).

    Returns:
        [*L, sum(D_k)] in the tables' dtype; an index outside [0, V_k) raises.
    """
    _checks.multi_embedding(weights, indices, padding_idx, scale_grad_by_freq, sparse)
    return _forward(weights, indices, None, None)


@triton_op("inductor_embed::multi_embedding_columns", mutates_args=())
def multi_embedding_columns(
    weights: list[torch.Tensor],
    indices: list[torch.Tensor],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
    sparse: list[bool],
    column_values: list[torch.Tensor],
    column_ranges: list[int],
) -> torch.Tensor:
    """``multi_embedding`` with columns written over after the gather (a model's
    ``o[:, :k] = shared`` on a lookup's output, before the cat): value j, broadcast to
    ``[*L, t - s]``, replaces output columns ``[s, t) = column_ranges[2j : 2j + 2]``
    (ascending, apart, each inside one table's columns). Those columns give their table no
    gradient and the value its own, as eager's write does. On the CPU each written range is
    a piece of the reference's cat (one pass over the output, where a write after the op
    copied the whole output); on CUDA a write into the kernel's fresh output."""
    _checks.multi_embedding(weights, indices, padding_idx, scale_grad_by_freq, sparse)
    _checks.column_values(weights, indices, column_values, column_ranges)
    return _forward(weights, indices, column_values, column_ranges)


def _forward(weights, indices, column_values, column_ranges) -> torch.Tensor:
    if not use_triton(weights[0]):
        if _compat.INDUCTOR_EMBEDDING_WRAPS_NEGATIVE_INDICES:
            # Inductor < 2.13 lowers embedding with Python-style negative wrapping, so the
            # compiled reference would read row V-1 for -1 where eager raises.
            for i in indices:
                torch._assert_async((i >= 0).all(), _OOB_MSG)
        return multi_embedding_ref(weights, indices, column_values, column_ranges)
    out, err = torch.ops.inductor_embed.multi_embedding_triton(weights, indices)
    # Device-side, asynchronous and CUDA-graph safe, like eager's indexing assert.
    torch._assert_async(err[0] == 0, _OOB_MSG)
    ranges = column_ranges or []
    for j, v in enumerate(column_values or []):  # a [*L, width] write into the kernel's fresh output
        out[..., ranges[2 * j]:ranges[2 * j + 1]] = v
    return out


@multi_embedding.register_fake
def _multi_embedding_fake(weights, indices, padding_idx, scale_grad_by_freq, sparse=None):
    _checks.multi_embedding(weights, indices, padding_idx, scale_grad_by_freq, sparse)
    total = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((*indices[0].shape, total))


@multi_embedding_columns.register_fake
def _multi_embedding_columns_fake(weights, indices, padding_idx, scale_grad_by_freq, sparse, column_values,
                                  column_ranges):
    _checks.column_values(weights, indices, column_values, column_ranges)
    return _multi_embedding_fake(weights, indices, padding_idx, scale_grad_by_freq, sparse)


# --- the Triton launches, as opaque ops -------------------------------------------------------
# The kernels read every table and index tensor through a device table of pointers
# (kernels/_meta.py), built from real data_ptr()s. So the launch is an opaque custom op:
# Inductor calls it with real tensors, and because the tensors are its arguments, keeps
# them alive until the launch is issued. One kernel launch whatever the table count.


@torch.library.custom_op("inductor_embed::multi_embedding_triton", mutates_args=())
def multi_embedding_triton(weights: list[torch.Tensor], indices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward of ``multi_embedding``: ``(out [*L, sum(D_k)], err int32 [2])``;
    ``err[0]`` becomes nonzero (asynchronously) if an index was out of range."""
    from inductor_embed.kernels.multi_embedding import multi_embedding_fwd

    _checks.multi_embedding(weights, indices, op="multi_embedding_triton")
    lead = indices[0].shape
    total = sum(w.shape[1] for w in weights)
    out = weights[0].new_empty((indices[0].numel(), total))
    err = multi_embedding_fwd([column_stride_1(w) for w in weights], [i.reshape(-1) for i in indices], out)
    return out.view(*lead, total), err


@multi_embedding_triton.register_fake
def _multi_embedding_triton_fake(weights, indices):
    total = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((*indices[0].shape, total)), weights[0].new_empty((2,), dtype=torch.int32)


@torch.library.custom_op("inductor_embed::multi_embedding_backward", mutates_args=())
def multi_embedding_backward(
    grad: torch.Tensor,
    indices: list[torch.Tensor],
    num_rows: list[int],
    dims: list[int],
    padding_idx: list[int],
    scale_grad_by_freq: list[bool],
) -> torch.Tensor:
    """Every table's dense gradient, packed into one flat buffer.

    Args:
        grad: [*L, sum(D_k)].
        indices: T index tensors of shape [*L].
        num_rows, dims: V_k and D_k per table.
        padding_idx, scale_grad_by_freq: as in ``multi_embedding``.

    Returns:
        [sum(V_k * D_k)] in grad's dtype, table k row-major at offset sum(V_j * D_j, j < k).

    An opaque op (an extern call under Inductor) on every path:
    - GPU: one zero fill, one atomic-add launch accumulating in fp32 (after a counting
      launch with scale_grad_by_freq), and one cast for half types.
    - CPU: ``embedding_grads_cpu``, bit-equal to eager, deterministic. The autograd
      formula does not use this path on the CPU (see ``_cpu_backward``).
    - Under ``torch.use_deterministic_algorithms(True)`` (checked when it runs) the
      deterministic ATen reference (``multi_embedding_backward_ref``) replaces the atomic
      kernel.
    """
    _checks.multi_embedding_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq,
                                     values=not use_triton(grad))
    if not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        if grad.device.type != "cpu":
            return multi_embedding_backward_ref(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
        tables = embedding_grads_cpu(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
        return torch.cat([t.reshape(-1) for t in tables]) if tables else grad.new_empty((0,))
    from inductor_embed.kernels.multi_embedding import grad_layout, multi_embedding_bwd

    n = indices[0].numel()
    g2 = column_stride_1(grad.reshape(n, sum(dims)))
    _, _, size = grad_layout(num_rows, dims, scale_grad_by_freq)
    flat = torch.zeros(size, dtype=torch.float32, device=grad.device)
    multi_embedding_bwd(g2, [i.reshape(-1) for i in indices], num_rows, dims, padding_idx, scale_grad_by_freq, flat)
    dense = flat.narrow(0, 0, sum(v * d for v, d in zip(num_rows, dims)))
    # The counts (scale_grad_by_freq) sit after the gradients: a fp32 result is a view.
    return dense if grad.dtype == torch.float32 else dense.to(grad.dtype)


@multi_embedding_backward.register_fake
def _multi_embedding_backward_fake(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq):
    _checks.multi_embedding_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
    return grad.new_empty((sum(v * d for v, d in zip(num_rows, dims)),))


@twin_op("inductor_embed::multi_embedding_backward_cpu", like="inductor_embed::multi_embedding_backward",
         returns="Tensor[]", extra="SymInt[] columns, int[] zeroed=[], bool checked=False")
def multi_embedding_backward_cpu(*args) -> list[torch.Tensor]:
    """The eager CPU backward of some of the tables: each one's ``[V_k, D_k]`` gradient as
    its own tensor (a reused buffer, ``_grad_cache``), table k read from grad's columns
    ``[columns[k], columns[k] + D_k)`` (``embedding_grads_cpu``: bit-equal to
    eager's ``embedding_dense_backward``, deterministic). ``zeroed``: triples ``(k, lo, hi)``,
    table k's gradient columns ``[lo, hi)`` are zero (columns its lookup's output had written
    over, so no gradient reached them): zeroed in the result, in place, or in a copy of grad
    where that copy is smaller than the rows the zeroing would touch. ``checked``: called by the
    autograd formula, whose arguments autograd keeps consistent with the forward's, checked
    there (the native kernel still checks every index): no checks here."""
    grad, scale_grad_by_freq = args[0], args[5]
    zeroed = args[7] if len(args) > 7 else []
    checked = len(args) > 8 and args[8]
    # The native kernel checks every index itself (nothing written if one is out of range):
    # a host read of each index tensor's min and max here too cost ~10 us a table.
    native = (grad.dtype in embedding_backward_cpu.NATIVE_DTYPES and not any(scale_grad_by_freq)
              and _cpu_native.lib() is not None)
    if not checked:
        _checks.multi_embedding_backward(*args[:7], op="multi_embedding_backward_cpu", values=not native)
        _checks.zeroed_columns(zeroed, args[3])
    triples = [zeroed[j:j + 3] for j in range(0, len(zeroed), 3)]
    # Zeroing the columns in the result touches every row of the table (a cache line each at
    # least); masking a copy of grad costs its N x C. Whichever moves less.
    touched = sum(args[2][k] * max(64, 4 * (hi - lo)) for k, lo, hi in triples)
    if triples and grad.numel() * grad.element_size() <= touched:
        grad, columns = grad.clone(), args[6]
        for k, lo, hi in triples:
            grad[..., columns[k] + lo:columns[k] + hi] = 0
        triples = []
    tables = embedding_grads_cpu(grad, *args[1:7], reuse=True)
    for k, lo, hi in triples:
        tables[k][:, lo:hi] = 0
    return tables


@multi_embedding_backward_cpu.register_fake
def _multi_embedding_backward_cpu_fake(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns,
                                       zeroed=(), checked=False):
    _checks.multi_embedding_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns,
                                     op="multi_embedding_backward_cpu")
    _checks.zeroed_columns(zeroed, dims)
    return [grad.new_empty((v, d)) for v, d in zip(num_rows, dims)]


@twin_op("inductor_embed::multi_embedding_sparse_backward", like="inductor_embed::multi_embedding_backward",
         returns="Tensor[]", extra="SymInt[] columns, bool coalesce=True", drop=("scale_grad_by_freq",))
def multi_embedding_sparse_backward(grad, indices, num_rows, dims, padding_idx, columns,
                                    coalesce=True) -> list[torch.Tensor]:
    """Some tables' gradients as coalesced sparse COO tensors, one launch for all of them.

    Args:
        grad: ``[*L, C]``; table k reads its columns ``[columns[k], columns[k] + D_k)``.
        indices, num_rows, dims, padding_idx: as in ``multi_embedding_backward``, for the
            sparse tables only (no scale_grad_by_freq: eager has none for sparse gradients).
        coalesce: False: eager's own gradients instead, one entry per index (padding
            entries left out), on any device (``coalesce_sparse_grads`` picks).

    Returns:
        Per table a ``[V_k, D_k]`` sparse COO tensor in grad's dtype: the sorted unique rows
        its indices touch (padding row left out) and their summed gradients, what eager's
        sparse gradient is after ``.coalesce()``.

    On the GPU: one sort of every table's indices (``compress_indices``), then one
    atomic-add launch of the multi-table backward kernel over the ``U_k + 1`` compressed
    rows of every table (the extra row takes padding entries) into one fp32 buffer. On the
    CPU and under deterministic algorithms: ``coalesce_ref`` per table (ATen's own sort and
    segment sum, what eager's optimizer runs on eager's gradient). Memory is ``O(N * D)``,
    never ``O(V * D)``. The op returns the sparse tensors themselves: their number of rows
    is data-dependent, which Dynamo's fake tensors cannot express as an op output (without
    ``capture_dynamic_output_shape_ops``), but a sparse tensor's shape is its dense one.
    """
    _checks.multi_embedding_backward(grad, indices, num_rows, dims, padding_idx, columns=columns,
                                     op="multi_embedding_sparse_backward", values=not use_triton(grad))
    if not coalesce or not use_triton(grad) or torch.are_deterministic_algorithms_enabled():
        g2 = grad.reshape(-1, grad.shape[-1])
        return [coalesce_ref(i, g2.narrow(1, c, d), v, p, coalesce)
                for i, v, d, p, c in zip(indices, num_rows, dims, padding_idx, columns)]
    from inductor_embed.kernels.multi_embedding import grad_layout, multi_embedding_bwd

    rows, local, counts = compress_indices(indices, num_rows, padding_idx)
    rows_plus = [u + 1 for u in counts]
    no_freq = [False] * len(dims)
    g2 = column_stride_1(grad.reshape(-1, grad.shape[-1]))
    offsets, _, size = grad_layout(rows_plus, dims, no_freq)
    flat = torch.zeros(size, dtype=torch.float32, device=grad.device)
    multi_embedding_bwd(g2, local, rows_plus, dims, counts, no_freq, flat, columns)
    flat = flat.to(grad.dtype)
    return [torch.sparse_coo_tensor(r.unsqueeze(0), flat.narrow(0, o, u * d).view(u, d), (v, d), is_coalesced=True,
                                    check_invariants=False)
            for r, o, u, v, d in zip(rows, offsets, counts, num_rows, dims)]


@multi_embedding_sparse_backward.register_fake
def _multi_embedding_sparse_backward_fake(grad, indices, num_rows, dims, padding_idx, columns, coalesce=True):
    _checks.multi_embedding_backward(grad, indices, num_rows, dims, padding_idx, columns=columns,
                                     op="multi_embedding_sparse_backward")
    return [torch.empty((v, d), dtype=grad.dtype, device=grad.device, layout=torch.sparse_coo)
            for v, d in zip(num_rows, dims)]


@torch.library.custom_op("inductor_embed::coalesce_rows", mutates_args=())
def coalesce_rows(indices: list[torch.Tensor], values: list[torch.Tensor], num_rows: list[int],
                  padding_idx: list[int], coalesce: bool = True) -> list[torch.Tensor]:
    """Per-index gradient rows summed per row, as coalesced sparse COO tensors.

    Args:
        indices: T int tensors ``[N_k]`` (any shape of N_k elements), rows of table k.
        values: T tensors ``[N_k, D_k]``, one float dtype: the gradient each index adds to its row
            (an EmbeddingBag's backward writes these; eager makes them its sparse gradient
            as they are, one entry per index).
        num_rows: V_k per table.
        padding_idx: per table, an index whose entries are left out (-1: none); it may be
            V_k, a value the caller put where entries take no gradient.
        coalesce: False: eager's own form instead, one entry per (kept) index.

    Returns:
        Per table a ``[V_k, D_k]`` sparse COO tensor: sorted unique rows, summed values,
        what eager's gradient is after ``.coalesce()``.

    On the GPU: one sort of every table's indices (``compress_indices``), then one sum per
    distinct ``D_k`` (usually one): the tables of one width are read as one table of
    ``sum(U_k + 1)`` rows by the multi-table backward kernel (one launch, fp32
    accumulation). On the CPU and under deterministic algorithms: ``coalesce_ref`` per
    table (ATen's own sort and segment sum, bit-equal to eager's coalesced gradient).
    """
    _checks.coalesce_rows(indices, values, num_rows, padding_idx, check_values=not use_triton(values[0]))
    if not coalesce or not use_triton(values[0]) or torch.are_deterministic_algorithms_enabled():
        return [coalesce_ref(i, x, v, p, coalesce) for i, x, v, p in zip(indices, values, num_rows, padding_idx)]
    rows, local, counts = compress_indices(indices, num_rows, padding_idx)
    out: list[torch.Tensor | None] = [None] * len(indices)
    for d in sorted({v.shape[-1] for v in values}):
        # The tables of width d as one table: table k's U_k rows, then a dump row that its
        # padding entries (local index U_k) add to, then the next table's.
        ks = [k for k, v in enumerate(values) if v.shape[-1] == d]
        starts = [sum(counts[j] + 1 for j in ks[:n]) for n in range(len(ks))]
        total = sum(counts[k] + 1 for k in ks)
        idx = torch.cat([local[k] + s for k, s in zip(ks, starts)]) if len(ks) > 1 else local[ks[0]]
        g = torch.cat([values[k].reshape(-1, d) for k in ks]) if len(ks) > 1 else values[ks[0]].reshape(-1, d)
        summed = _triton_row_sums(g, idx, total).view(total, d)
        for k, s in zip(ks, starts):
            out[k] = torch.sparse_coo_tensor(rows[k].unsqueeze(0), summed.narrow(0, s, counts[k]),
                                             (num_rows[k], d), is_coalesced=True, check_invariants=False)
    return out


def _triton_row_sums(g: torch.Tensor, idx: torch.Tensor, total: int) -> torch.Tensor:
    """``[total * D]`` in g's dtype: row r is the sum of ``g[n]`` over ``idx[n] == r`` (one launch)."""
    from inductor_embed.kernels.multi_embedding import multi_embedding_bwd

    flat = torch.zeros(total * g.shape[-1], dtype=torch.float32, device=g.device)
    multi_embedding_bwd(column_stride_1(g), [idx], [total], [g.shape[-1]], [-1], [False], flat)
    return flat.to(g.dtype)


@coalesce_rows.register_fake
def _coalesce_rows_fake(indices, values, num_rows, padding_idx, coalesce=True):
    _checks.coalesce_rows(indices, values, num_rows, padding_idx)
    # The number of unique rows is data-dependent; a sparse tensor's shape is its dense one.
    return [torch.empty((v, x.shape[-1]), dtype=x.dtype, device=x.device, layout=torch.sparse_coo)
            for v, x in zip(num_rows, values)]


# On the CPU each table's gradient is made where it is cheapest, chosen when the backward is
# traced (paired runs on 2 cores, see bench/results/cpu/README.md):
# - tables of any float dtype without scale_grad_by_freq, where the native kernels build: one
#   opaque op for all of them (``multi_embedding_backward_cpu_fast``, its host side in C++:
#   ``_cpu_host``), the native kernel's one call
#   (each position's row added into its table's zeroed buffer, whole tables to a thread, all
#   its tables' positions in blocks; bf16 / fp16 rows summed in fp32 and rounded once, as
#   torch.compile's decomposition). Bit-equal to eager (fp32) and deterministic; from a few thousand
#   positions on faster than Inductor's zero-fill + element-wise atomic scatter-add, at every
#   width (10 tables D=1..8: 0.2 ms against 0.65 ms a backward at B=4,096, 0.6 ms against 2.2
#   ms at 16,384; at B=512 ~40 us slower, the opaque op's host cost: bench/results/cpu);
# - other tables of D >= CPU_EAGER_MIN_DIM, one-row tables, an op of one table (a lone
#   lookup), and every table under torch.use_deterministic_algorithms: the same opaque op by
#   ATen's ops (``embedding_dense_backward`` / ``index_add_``, bit-equal, deterministic);
# - the rest (scale_grad_by_freq, narrow): ``aten.embedding_dense_backward``
#   in the backward graph, which Inductor lowers to its own C++ zero-fill + scatter-add loop,
#   as plain torch.compile does for an unfused model (eager's per-row add costs ~1-2 us a
#   row, far more than a narrow row's data).
CPU_EAGER_MIN_DIM = 64


def _cpu_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns=None,
                  eager_min_dim=None, zeroed=None) -> list[torch.Tensor]:
    """Per-table ``[V_k, D_k]`` gradients on the CPU (see CPU_EAGER_MIN_DIM), table k read
    from grad's columns ``[columns[k], columns[k] + D_k)`` (default: back to back from 0;
    ``multi_embedding_sum`` passes 0 for every table). ``eager_min_dim`` given (tests): that
    width rule alone, no lone-table or native rule. ``zeroed[k]``: table k's ``(lo, hi)``
    column ranges that take no gradient (written over in the forward)."""
    if columns is None:
        columns = [sum(dims[:k]) for k in range(len(dims))]
    deterministic = torch.are_deterministic_algorithms_enabled()
    # One-row tables too: Inductor's CPU codegen (torch 2.13) fails on a scatter-add into a
    # one-row buffer (tests/reliability/test_bad_input.py::test_one_row_tables_match_eager).
    # A lone table at any width: alone, Inductor's scatter-add was slower than the row adds
    # (collisions: docs/design.md).
    alone = len(dims) == 1 and eager_min_dim is None
    # (not with scale_grad_by_freq: the native kernel does not scale, and index_add_ divides
    # where eager multiplies by the reciprocal)
    native = (eager_min_dim is None and grad.dtype in embedding_backward_cpu.NATIVE_DTYPES and grad.device.type == "cpu"
              and _cpu_native.lib() is not None)
    if eager_min_dim is None:
        eager_min_dim = CPU_EAGER_MIN_DIM
    wide = [k for k, (v, d, s) in enumerate(zip(num_rows, dims, scale_grad_by_freq))
            if deterministic or ((alone or native) and not s) or d >= eager_min_dim or v <= 1]
    grads: list[torch.Tensor | None] = [None] * len(dims)
    zeroed = zeroed or [[] for _ in dims]
    if wide:
        pick = lambda xs: [xs[k] for k in wide]  # noqa: E731
        triples = [x for j, k in enumerate(wide) for lo, hi in zeroed[k] for x in (j, lo, hi)]
        op = _cpu_host.op("multi_embedding_backward_cpu") if native else (
            torch.ops.inductor_embed.multi_embedding_backward_cpu)
        eager = op(
            grad, pick(indices), pick(num_rows), pick(dims), pick(padding_idx), pick(scale_grad_by_freq),
            pick(columns), triples, checked=True)
        for k, g in zip(wide, eager):
            grads[k] = g
    half = grad.dtype in (torch.float16, torch.bfloat16)
    for k, g in enumerate(grads):
        if g is None:
            gk, ik = grad.narrow(-1, columns[k], dims[k]), indices[k]
            if zeroed[k]:  # a copy of this table's columns only, the written ones zero
                written = torch.zeros(dims[k], dtype=torch.bool, device=grad.device)
                for lo, hi in zeroed[k]:
                    written[lo:hi] = True
                gk = torch.where(written, torch.zeros((), dtype=gk.dtype, device=gk.device), gk)
            if ik.dim() == 0:
                # torch 2.11's decomposition of this op (scale_grad_by_freq) indexes its counts
                # with the 0-d index tensor as a Python int: .item(), data-dependent under
                # tracing, and the whole graph fell back to eager. [1] and [1, D] are the same.
                gk, ik = gk.reshape(1, dims[k]), ik.reshape(1)
            gk = torch.ops.aten.embedding_dense_backward(
                gk.float() if half else gk, ik, num_rows[k], padding_idx[k], scale_grad_by_freq[k])
            grads[k] = gk.to(grad.dtype)
    return grads


def _setup_context(ctx, inputs, output):
    weights, indices, padding_idx, scale_grad_by_freq, *rest = inputs
    ctx.save_for_backward(*indices)
    ctx.num_rows = [w.shape[0] for w in weights]
    ctx.dims = [w.shape[1] for w in weights]
    ctx.padding_idx = list(padding_idx)
    ctx.scale_grad_by_freq = list(scale_grad_by_freq)
    sparse = rest[0] if rest else None
    ctx.sparse = list(sparse) if sparse is not None else [False] * len(weights)
    ctx.first = _first_positions(weights)
    values = rest[1] if len(rest) > 1 and rest[1] is not None else []
    ctx.column_ranges = list(rest[2]) if values else []
    ctx.column_shapes = [tuple(v.shape) for v in values]


def _backward(ctx, grad):
    indices = list(ctx.saved_tensors)
    t = len(indices)
    columns = [sum(ctx.dims[:k]) for k in range(t)]
    value_grads = []
    zeroed: list[list[tuple[int, int]]] = [[] for _ in range(t)]
    if ctx.column_shapes:
        # Each written value gets its columns' gradient, summed over where it was broadcast;
        # the tables get none there (eager's write cut those columns from the lookup's graph).
        ranges = ctx.column_ranges
        spans = [(ranges[2 * j], ranges[2 * j + 1]) for j in range(len(ctx.column_shapes))]
        for (s, e), shape in zip(spans, ctx.column_shapes):
            value_grads.append(grad[..., s:e].sum_to_size(shape))
        zeroed = [[(max(s, c) - c, min(e, c + d) - c) for s, e in spans if s < c + d and e > c]
                  for c, d in zip(columns, ctx.dims)]
        if use_triton(grad) or any(z and ctx.sparse[k] for k, z in enumerate(zeroed)):
            # The kernels (and sparse gradients) read a gradient with the written columns zero.
            written = torch.zeros(grad.shape[-1], dtype=torch.bool, device=grad.device)
            for s, e in spans:
                written[s:e] = True
            grad = torch.where(written, torch.zeros((), dtype=grad.dtype, device=grad.device), grad)
            zeroed = [[] for _ in range(t)]
        # Else the CPU backward zeroes those columns of each table's gradient itself: masking
        # grad was a copy of all of it, the step's peak memory.
    grads: list[torch.Tensor | None] = [None] * t
    for sparse, tables in ((True, [k for k in range(t) if ctx.sparse[k]]),
                           (False, [k for k in range(t) if not ctx.sparse[k]])):
        if not tables:
            continue
        pick = lambda xs, tables=tables: [xs[k] for k in tables]  # noqa: E731
        args = (grad, pick(indices), pick(ctx.num_rows), pick(ctx.dims), pick(ctx.padding_idx))
        if sparse:
            got = _sparse_grads(*args, pick(columns), [ctx.first[k] for k in tables])
        elif not use_triton(grad):
            got = _cpu_backward(*args, pick(ctx.scale_grad_by_freq), pick(columns), zeroed=pick(zeroed))
        else:
            got = _gpu_backward(*args, pick(ctx.scale_grad_by_freq), pick(columns))
        for k, g in zip(tables, got):
            grads[k] = g
    # One entry per argument the call gave (``sparse`` and the column writes may be left out;
    # needs_input_grad has the call's structure, where the inputs above have the defaults).
    return (grads, [None] * t, None, None, None, value_grads or None, None)[:len(ctx.needs_input_grad)]


def _sparse_grads(grad, indices, num_rows, dims, padding_idx, columns, first) -> list[torch.Tensor | None]:
    """Coalesced COO gradients of the sparse tables; ``first[k]``, the first position of table
    k's weight in the op. A table looked up once: ``multi_embedding_sparse_backward`` (one
    launch for all). A table looked up several times: one gradient for all its lookups (two
    sparse gradients would be added as sparse tensors inside the compiled backward, which
    Inductor cannot do), by ``coalesce_rows`` over their rows; its other positions get None."""
    count = {f: first.count(f) for f in first}
    once = [k for k, f in enumerate(first) if count[f] == 1]
    grads: list[torch.Tensor | None] = [None] * len(first)
    if once:
        pick = lambda xs: [xs[k] for k in once]  # noqa: E731
        got = torch.ops.inductor_embed.multi_embedding_sparse_backward(
            grad, pick(indices), pick(num_rows), pick(dims), pick(padding_idx), pick(columns),
            coalesce_sparse_grads(grad))
        for k, g in zip(once, got):
            grads[k] = g
    shared = sorted({f for f in first if count[f] > 1})
    if shared:
        groups = [[k for k, f in enumerate(first) if f == s] for s in shared]
        rows, values = [], []
        for ks in groups:  # each lookup's padding entries become row V (left out): no gradient
            v = num_rows[ks[0]]
            rows.append(torch.cat([indices[k].reshape(-1) if padding_idx[k] < 0 else
                                   torch.where(indices[k].reshape(-1) == padding_idx[k], v, indices[k].reshape(-1))
                                   for k in ks]))
            values.append(torch.cat([grad.narrow(-1, columns[k], dims[k]).reshape(-1, dims[k]) for k in ks]))
        got = torch.ops.inductor_embed.coalesce_rows(rows, values, [num_rows[ks[0]] for ks in groups],
                                                     [num_rows[ks[0]] for ks in groups], coalesce_sparse_grads(grad))
        for ks, g in zip(groups, got):
            grads[ks[0]] = g
    return grads


def _gpu_backward(grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns) -> list[torch.Tensor]:
    """Dense ``[V_k, D_k]`` gradients from one flat buffer (one zero fill on the GPU), viewed
    per table for free."""
    end = columns[0] + sum(dims)
    if columns != [columns[0] + sum(dims[:k]) for k in range(len(dims))]:  # sparse tables in between
        grad = torch.cat([grad.narrow(-1, c, d) for c, d in zip(columns, dims)], -1)
    elif columns[0] != 0 or end != grad.shape[-1]:
        grad = grad.narrow(-1, columns[0], sum(dims))
    flat = torch.ops.inductor_embed.multi_embedding_backward(
        grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq)
    grads, offset = [], 0
    for v, d in zip(num_rows, dims):
        grads.append(flat.narrow(0, offset, v * d).view(v, d))
        offset += v * d
    return grads


multi_embedding.register_autograd(first_order(_backward), setup_context=_setup_context)
multi_embedding_columns.register_autograd(first_order(_backward), setup_context=_setup_context)


_cpu_host.define_fast("multi_embedding_backward_cpu", "Tensor[]")
