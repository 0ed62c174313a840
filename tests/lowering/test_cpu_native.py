"""The CPU EmbeddingBag backward's native kernel (lowering/_cpu_native.py): bit-equal to
eager's own backward in every form it takes (ATen's sort order below the stable-sort length,
its own counting sort above it; strided and int32 indices; rows not a multiple of the
vector width; streamed and cached stores; adding into a gradient), the same with any thread
count, the errors eager raises, and the ATen-op path where it cannot be built."""

from __future__ import annotations

import logging
import platform

import numpy as np
import pytest
import torch
import torch.nn as nn

import inductor_embed
from inductor_embed import config
from inductor_embed.lowering import _cpu_native
from inductor_embed.lowering.bag_backward_cpu import bag_weight_grad_cpu
from inductor_embed.lowering.one_hot_linear_ref import (
    one_hot_linear_backward_ref,
    one_hot_linear_ref,
)
from tests._util import eager_bag_backward, num_threads

pytestmark = pytest.mark.skipif(_cpu_native.lib() is None, reason="no C compiler on this machine")


def _case(form, nnz, num_rows, weighted, itype, seed):
    """``(indices, offsets, psw, ilo)`` of about ``nnz`` Zipf positions in one of the forms."""
    rng = np.random.default_rng(seed)
    bag = 20
    b = max(nnz // bag, 4)
    ids = torch.from_numpy((rng.zipf(1.2, (b, 3, bag)) - 1) % num_rows).to(itype)
    ids[0, :, 0] = 7  # the padding row, where there is one
    psw = torch.rand(b, bag) if weighted else None
    if form == "2d":
        return ids[:, 1].contiguous(), None, psw, False
    if form == "2d_strided":  # a column slice of [B, 3, L]: what x[:, k] hands a table
        return ids[:, 1], None, psw, False
    flat = ids[:, 1].reshape(-1)
    cuts = torch.from_numpy(np.sort(rng.integers(0, flat.numel() - 5, b))).to(itype)
    cuts[0], cuts[2] = 0, cuts[3]  # an empty bag
    psw = None if psw is None else psw.reshape(-1)
    if form == "include_last_offset":  # the last 5 indices are in no bag
        return flat, torch.cat([cuts, torch.tensor([flat.numel() - 5], dtype=itype)]), psw, True
    return flat, cuts, psw, False


@pytest.fixture(params=["rule", "sort", "scatter"])
def rows_path(request, monkeypatch):
    """How the kernel makes a table's rows where it may choose (no ATen order to follow,
    nothing to accumulate onto): the rule (``_scatters``), else forced to the counting sort or
    to the scatter (``scatter_rows``) for every such table."""
    if request.param != "rule":
        forced = request.param == "scatter"
        monkeypatch.setattr(_cpu_native, "_scatters", lambda: forced)
    return request.param


# small / large: below / above stable_sort_from; few: far fewer positions than rows (the
# kernel sorts the positions instead of counting every row)
@pytest.mark.parametrize("size", ["small", "large", "few"])
@pytest.mark.parametrize("form", ["2d", "2d_strided", "offsets", "include_last_offset"])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("padding_idx", [-1, 7])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_bit_equal_to_eager(size, form, mode, weighted, padding_idx, itype, rows_path):
    nnz, num_rows, dim = {"small": (600, 300, 61), "large": (40960, 9000, 64),  # 2.3 MB
                          "few": (600, 9000, 61)}[size]
    indices, offsets, psw, ilo = _case(form, nnz, num_rows, weighted, itype, seed=nnz + mode + padding_idx)
    b = indices.shape[0] if offsets is None else offsets.numel() - int(ilo)
    grad = torch.randn(b, dim)
    want = eager_bag_backward(grad, indices, offsets, psw, mode, padding_idx, ilo, num_rows)
    got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, mode, padding_idx, ilo, num_rows)
    assert torch.equal(got, want)
    # Added into a gradient (the tied op's): x + s, as AccumulateGrad adds a second one.
    base = torch.randn(num_rows, dim)
    added = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, mode, padding_idx, ilo, num_rows,
                                 out=base.clone())
    assert torch.equal(added, base + want)


@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_the_kernels_sort_is_atens(itype):
    """The kernel's replica of std::sort gives ATen's sort() order, equal keys included, at
    every length below the radix sort's (and the probe says so)."""
    assert _cpu_native.aten_sort_matches(itype)
    rng = np.random.default_rng(4)
    for n in (0, 1, 2, 15, 16, 17, 18, 100, 1000, 10240, 32767):
        for keys in (rng.zipf(1.15, n) % 5000, rng.integers(0, 3, n), rng.integers(0, 1 << 30, n), np.arange(n)[::-1].copy()):
            t = torch.from_numpy(keys).to(itype)
            order = _cpu_native.aten_order(t)
            assert order is not None and torch.equal(order, t.sort()[1]), n


@pytest.fixture
def sort_bails():
    """Every sort of more than 16 positions turns to std::sort's heap sort at once (a depth
    limit of 0): the kernel gives up and the caller takes ATen's order."""
    lib = _cpu_native.lib()
    lib.ie_aten_order(None, 1, 0, None, 0)
    try:
        yield
    finally:
        lib.ie_aten_order(None, 1, 0, None, 2)


@pytest.mark.parametrize("form", ["2d", "offsets"])
def test_a_sort_past_its_depth_limit_takes_atens_order(form, sort_bails):
    assert _cpu_native.aten_order(torch.arange(40)) is None
    tables = []
    for seed in range(3):
        indices, offsets, psw, ilo = _case(form, 600, 300, seed == 1, torch.int64, seed=seed)
        b = indices.shape[0] if offsets is None else offsets.numel()
        tables.append((torch.randn(b, 24), indices, offsets, psw))
    for grad, indices, offsets, psw in tables:
        got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 0, -1, False, 300)
        assert torch.equal(got, eager_bag_backward(grad, indices, offsets, psw, 0, -1, False, 300))


def test_large_lookups_take_the_kernels_own_stable_sort():
    stable = _cpu_native.stable_sort_from(torch.int64)
    if stable is None:
        pytest.skip("this torch build's sort is not stable at any length: ATen's order is used throughout")
    keys = torch.randint(0, 50, (stable,))
    order = keys.sort().indices
    assert torch.equal(order, keys.sort(stable=True).indices)  # what the kernel's counting sort gives


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nnz", [40960, 600])  # rows counted / positions sorted
def test_every_thread_count_gives_the_same_bits(threads, nnz, monkeypatch, rows_path):
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)  # a small call threaded too
    indices, offsets, psw, ilo = _case("offsets", nnz, 9000, False, torch.int64, seed=1)
    grad = torch.randn(offsets.numel(), 64)
    want = eager_bag_backward(grad, indices, offsets, psw, 0, -1, ilo, 9000)
    with num_threads(threads):
        got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 0, -1, ilo, 9000)
    assert torch.equal(got, want)


@pytest.mark.parametrize("size", ["small", "large"])
def test_an_index_out_of_range_raises_and_writes_nothing(size):
    indices, offsets, _, _ = _case("offsets", 600 if size == "small" else 40960, 300, False, torch.int64, seed=2)
    indices[5] = 300
    grad = torch.randn(offsets.numel(), 8)
    base = torch.randn(300, 8)
    out = base.clone()
    with pytest.raises(IndexError, match="out of range"):
        bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, None, 0, -1, False, 300, out=out)
    assert torch.equal(out, base)


class Bags(nn.Module):
    """Three 3,000 x 16 sum bags (one with padding) + cat: 40,960 positions a table at B=2,048."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList([nn.EmbeddingBag(3000, 16, mode="sum"),
                                     nn.EmbeddingBag(3000, 16, mode="sum", padding_idx=7),
                                     nn.EmbeddingBag(3000, 16, mode="mean")])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)


def test_a_compiled_training_step_is_eagers_bit_for_bit():
    torch.manual_seed(0)
    eager, model = Bags(), Bags()
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model, backend="inductor_embed")
    rng = np.random.default_rng(3)
    for _ in range(2):  # the second step reuses the first's buffers, written again in full
        x = torch.from_numpy((rng.zipf(1.15, (2048, 3, 20)) - 1) % 3000)
        for m in (eager, model):
            m.zero_grad(set_to_none=True)
        eager(x).square().sum().backward()
        compiled(x).square().sum().backward()
        for pe, pm in zip(eager.parameters(), model.parameters()):
            assert torch.equal(pe.grad, pm.grad)


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty kernel cache directory and no loaded kernel (restored afterwards)."""
    monkeypatch.setenv("INDUCTOR_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu_native, "_state", {})
    return tmp_path


def test_the_kernel_is_built_once_then_loaded_from_the_cache(fresh_build, monkeypatch):
    assert _cpu_native.lib() is not None
    built = list(fresh_build.glob("cpu_kernels_*.so"))
    assert len(built) == 1 and not list(fresh_build.glob("*.c"))  # no leftovers
    monkeypatch.setattr(_cpu_native, "_state", {})
    monkeypatch.setattr(_cpu_native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert _cpu_native.lib() is not None


def test_without_a_compiler_the_aten_ops_give_the_same_bits(fresh_build, monkeypatch, caplog):
    monkeypatch.setattr(_cpu_native, "_compilers", lambda: [])
    indices, offsets, psw, ilo = _case("offsets", 40960, 9000, True, torch.int64, seed=4)
    grad = torch.randn(offsets.numel(), 64)
    want = eager_bag_backward(grad, indices, offsets, psw, 0, 7, ilo, 9000)
    with caplog.at_level(logging.WARNING, logger="inductor_embed"):
        got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 0, 7, ilo, 9000)
        bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 0, 7, ilo, 9000)
    assert _cpu_native.lib() is None
    assert torch.equal(got, want)
    warnings = [r for r in caplog.records if "could not build the native CPU kernels" in r.message]
    assert len(warnings) == 1 and "no C compiler found" in warnings[0].message


def test_a_build_without_openmp_threads_its_own_and_gives_the_same_results(fresh_build, monkeypatch):
    """A compiler without OpenMP: the kernels start their own threads (pthreads)."""
    monkeypatch.setattr(_cpu_native, "_FLAGS", [f for f in _cpu_native._FLAGS if f != "-fopenmp"])
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    assert _cpu_native.lib() is not None
    (built,) = fresh_build.glob("cpu_kernels_*.so")
    assert b"GOMP_parallel" not in built.read_bytes()  # no OpenMP region in this build
    with num_threads(3):
        indices, offsets, psw, ilo = _case("offsets", 40960, 9000, True, torch.int64, seed=8)
        grad = torch.randn(offsets.numel(), 64)
        got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 0, 7, ilo, 9000)
        oh, classes, offs, w, b = _one_hot_case("row", True, torch.int64)
        out, _ = _cpu_native.one_hot_linear(oh, classes, offs, w, b)
        g = torch.randn(4, 6, 9)
        flat, _ = _cpu_native.one_hot_linear_backward(g, oh, classes, offs, 12, True, False)
    assert torch.equal(got, eager_bag_backward(grad, indices, offsets, psw, 0, 7, ilo, 9000))
    assert torch.equal(out, one_hot_linear_ref(oh, offs, w, b))
    torch.testing.assert_close(flat, one_hot_linear_backward_ref(g, oh, offs, 12, True, False, torch.float32),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.parametrize("isa", ["-march=haswell", "-march=x86-64"], ids=["avx2_fma", "sse2"])
def test_builds_for_older_instruction_sets_give_the_same_bits(isa, fresh_build, monkeypatch):
    """The kernels built for a CPU without AVX-512 (AVX2 + FMA: fma16's two-register path,
    as on AMD Zen 2 / 3) or without FMA at all (the baseline build: its scalar fmaf): a
    weighted and a mean bag's forward and backward, and a bf16 and an fp16 lookup's backward
    (the baseline build converts fp16 without F16C), bit for bit as on this machine's own
    build."""
    monkeypatch.setattr(_cpu_native, "_FLAGS", [isa if f == "-march=native" else f for f in _cpu_native._FLAGS])
    monkeypatch.setattr(_cpu_native, "_fma", {})  # this build's own probe
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    assert _cpu_native.lib() is not None
    from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu

    with num_threads(2):
        for padding_idx in (-1, 7):  # FBGEMM's fused multiply-add, then ATen's product and sum
            assert _cpu_native.weighted_fma(padding_idx >= 0) is not None  # the kernel, not ATen, runs the bags
            for mode, weighted in ((0, True), (1, False)):
                indices, offsets, psw, ilo = _case("offsets", 600, 300, weighted, torch.int64, seed=9 + mode)
                weight = torch.randn(300, 205)
                want = _eager_bags(weight, indices, offsets, psw, mode, padding_idx, ilo)
                got, _ = torch.ops.inductor_embed.multi_embedding_bag_cpu(
                    [weight], [indices], [offsets], [] if psw is None else [psw], [mode], [padding_idx], [ilo])
                assert torch.equal(got, want), (padding_idx, mode)
                grad = torch.randn_like(want)
                got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, mode, padding_idx, ilo, 300)
                assert torch.equal(got, eager_bag_backward(grad, indices, offsets, psw, mode, padding_idx, ilo, 300))
        ids = torch.randint(0, 50, (3000,), generator=torch.Generator().manual_seed(1))
        for dtype in (torch.bfloat16, torch.float16):
            g = torch.randn(3000, 40).to(dtype)
            (got,) = embedding_grads_cpu(g, [ids], [50], [40], [-1], [False])
            assert torch.equal(got, torch.ops.aten.embedding_dense_backward(g.float(), ids, 50, -1, False).to(dtype))
    _fp16_bits_are_torchs()


def _fp16_bits_are_torchs() -> None:
    """The loaded build's fp16 conversions, both ways, against torch's casts, through the
    lookups' backward (one column, rows summed in fp32 and rounded once): every float16 bit
    pattern alone in its row (fp16 -> fp32 -> fp16), and rows of three terms whose fp32 sum is
    exact and lies on, just above or just below the point halfway between two float16s
    (round to nearest even, from the subnormals to the overflow to infinity). NaNs compare as
    NaNs (their payloads follow the cast's code path in torch itself)."""
    from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu

    def check(terms: torch.Tensor) -> None:  # [rows, k] fp16: row r sums its k terms
        rows, k = terms.shape
        ids = torch.arange(rows).repeat_interleave(k)
        g = terms.reshape(-1, 1)
        (got,) = embedding_grads_cpu(g, [ids], [rows], [1], [-1], [False])
        want = torch.ops.aten.embedding_dense_backward(g.float(), ids, rows, -1, False).to(torch.float16)
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan) and torch.equal(got[~nan], want[~nan])

    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    check(every.view(-1, 1))
    a = every[every.isfinite() & (every.abs() >= 2.0 ** -13)]  # its half-ulp is a float16 too
    e = torch.frexp(a.float())[1] - 1  # |a| in [2^e, 2^(e+1))
    half_ulp = torch.ldexp(torch.ones_like(a, dtype=torch.float32), e - 11)
    nudge = torch.ldexp(torch.ones_like(half_ulp), (e - 23).clamp(min=-24))
    rows = [torch.stack([a.float(), s * half_ulp, t * nudge], 1) for s in (1, -1) for t in (0, 1, -1)]
    check(torch.cat(rows).to(torch.float16))


def test_a_failing_compiler_is_reported(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")  # exits 1
    monkeypatch.setattr(_cpu_native, "_compilers", lambda: ["/bin/false"])
    with caplog.at_level(logging.WARNING, logger="inductor_embed"):
        assert _cpu_native.lib() is None
    assert "/bin/false" in caplog.text and not list(fresh_build.glob("*"))


def test_the_switch_turns_the_kernel_off():
    with config.patch(cpu_native_kernels=False):
        assert _cpu_native.lib() is None
        indices, offsets, psw, ilo = _case("2d_strided", 40960, 9000, False, torch.int64, seed=5)
        grad = torch.randn(indices.shape[0], 64)
        got = bag_weight_grad_cpu(grad, torch.empty(0), indices, offsets, psw, 1, -1, ilo, 9000)
    assert torch.equal(got, eager_bag_backward(grad, indices, offsets, psw, 1, -1, ilo, 9000))
    assert _cpu_native.lib() is not None
    inductor_embed.empty_cache()


@pytest.mark.parametrize("n", [300, 40960])  # below / above the stable-sort length: the same order
@pytest.mark.parametrize("form", ["1d", "strided", "2d", "expanded_grad"])
@pytest.mark.parametrize("padding_idx", [-1, 7])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_embedding_backward_is_eagers_bit_for_bit(n, form, padding_idx, itype, monkeypatch, rows_path):
    """multi_embedding's fp32 CPU backward: the kernel with bags of one position, in position
    order (embedding_dense_backward's) at every size."""
    from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu

    calls = []
    run = _cpu_native.lookup_grad
    monkeypatch.setattr(_cpu_native, "lookup_grad", lambda g, outs, *a: (calls.append(len(outs)), run(g, outs, *a)))

    rng = np.random.default_rng(n)
    num_rows, dims = 5000, [64, 70]  # 1.3 MB each: cached; 70: rows not a vector multiple
    ids = torch.from_numpy((rng.zipf(1.2, (n, 3)) - 1) % num_rows).to(itype)
    ids[0] = 7
    if form == "strided":
        indices = [ids[:, 0], ids[:, 2]]  # columns of [N, 3]
    elif form == "2d":
        indices = [ids[:, 0].reshape(-1, 4), ids[:, 1].reshape(-1, 4)]
    else:
        indices = [ids[:, 0].contiguous(), ids[:, 1].contiguous()]
    shape = (*indices[0].shape, sum(dims))
    grad = torch.randn(shape).exp() if form != "expanded_grad" else torch.tensor(1.5).expand(shape)
    got = embedding_grads_cpu(grad, indices, [num_rows] * 2, dims, [padding_idx] * 2, [False] * 2,
                                          reuse=True)
    cols = [0, dims[0]]
    for k in range(2):
        want = torch.ops.aten.embedding_dense_backward(grad[..., cols[k]:cols[k] + dims[k]], indices[k], num_rows,
                                                       padding_idx, False)
        assert torch.equal(got[k], want), k
    assert calls == [2]  # both tables, one call


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_narrow_lookups_of_many_tables_are_eagers_bit_for_bit(threads, itype, dtype, monkeypatch, rows_path):
    """Lookups of many narrow tables (multi_embedding's CPU backward at every width):
    widths the kernel unrolls (1-8, 16, 32, 64) and others (3, 5, 33), strided indices and a
    padding row, one table big enough to be written by non-temporal stores among them, the
    tables spread whole over the threads (10 tables) or cut into row slices (a call of two
    tables on 3 threads), each scattered or counting-sorted (rows_path; half types always
    scattered). fp32: eager's gradient bit for bit; bf16 and fp16: torch.compile's (summed in
    fp32, rounded once), bit for bit."""
    from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu

    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    calls = []
    run = _cpu_native.lookup_grad
    monkeypatch.setattr(_cpu_native, "lookup_grad", lambda g, outs, *a: (calls.append(len(outs)), run(g, outs, *a)))
    rng = np.random.default_rng(3)
    dims = [1, 2, 3, 4, 5, 7, 8, 16, 33, 64]
    rows = [10, 300, 1000, 5, 2000, 700, 64, 4000, 900, 33000]  # the last 8.4 MB: streamed
    n = 3000
    ids = torch.from_numpy(np.stack([(rng.zipf(1.3, n) - 1) % v for v in rows], 1)).to(itype)
    ids[:5, 2] = 7
    pads = [-1, -1, 7, -1, 3, -1, -1, 0, -1, -1]
    grad = torch.randn(n, sum(dims)).to(dtype)
    with num_threads(threads):
        for pick in (range(len(dims)), (2, 9)):
            pick = list(pick)
            sub = torch.cat([grad[:, sum(dims[:k]):sum(dims[:k + 1])] for k in pick], 1)
            got = embedding_grads_cpu(sub, [ids[:, k] for k in pick], [rows[k] for k in pick],
                                      [dims[k] for k in pick], [pads[k] for k in pick], [False] * len(pick))
            for j, k in enumerate(pick):
                want = torch.ops.aten.embedding_dense_backward(
                    grad[:, sum(dims[:k]):sum(dims[:k + 1])].float(), ids[:, k], rows[k], pads[k], False)
                assert got[j].dtype == dtype and torch.equal(got[j], want.to(dtype)), (threads, k)
    assert calls == [len(dims), 2]


@pytest.mark.parametrize("call", ["lookups", "bags"])
def test_a_call_streams_where_its_tables_together_outgrow_the_cache(call, monkeypatch):
    """Non-temporal stores are chosen per call, by every table's gradient bytes together
    (STREAMING_BYTES): two tables of 0.6 MiB each stream where the line is 1 MiB and not
    where it is 2 MiB; the gradients are eager's either way."""
    from inductor_embed.lowering.embedding_backward_cpu import embedding_grads_cpu

    flags = []
    run = _cpu_native._run_bag_grad
    monkeypatch.setattr(_cpu_native, "_run_bag_grad", lambda fields, rows, work: (
        flags.append(fields[_cpu_native._STREAMING::_cpu_native._TABLE_INTS]), run(fields, rows, work))[1])
    g = torch.Generator().manual_seed(4)
    num_rows, dim, n = 5000, 32, 700  # 0.61 MiB a table
    ids = [torch.randint(0, num_rows, (n,), generator=g) for _ in range(2)]
    grad = torch.randn(n, 2 * dim, generator=g)
    for line, streamed in ((1 << 20, 1), (2 << 20, 0)):
        monkeypatch.setattr(_cpu_native, "STREAMING_BYTES", line)
        flags.clear()
        if call == "lookups":
            got = embedding_grads_cpu(grad, ids, [num_rows] * 2, [dim] * 2, [-1] * 2, [False] * 2)
            want = [torch.ops.aten.embedding_dense_backward(grad[:, k * dim:(k + 1) * dim], ids[k], num_rows, -1,
                                                            False) for k in range(2)]
        else:
            outs = [torch.empty(num_rows, dim) for _ in range(2)]
            bags = [i.reshape(-1, 7) for i in ids]
            _cpu_native.bag_grad([_cpu_native.BagTable(o, grad[:, k * dim:(k + 1) * dim][:100], b, None, None, False,
                                                       -1, False, None, aten_sort=True)  # (ATen's std::sort order)
                                  for k, (o, b) in enumerate(zip(outs, bags))])
            got = outs
            want = [eager_bag_backward(grad[:, k * dim:(k + 1) * dim][:100], b, None, None, 0, -1, False, num_rows)
                    for k, b in enumerate(bags)]
        assert flags == [[streamed, streamed]], (line, flags)
        for x, y in zip(got, want):
            assert torch.equal(x, y)


def _kernel_in_a_forked_child(queue) -> None:
    # ATen's own parallel ops hang here (libgomp's pool is the parent's, its threads gone):
    # the inputs are made on one thread, as DataLoader's workers do. Then the thread count
    # goes back up and only our kernel runs (threaded at any size: THREADED_BYTES is 0, as
    # the parent set it): it must not enter a parallel region.
    torch.set_num_threads(1)
    indices, offsets, _, _ = _case("offsets", 4096, 900, False, torch.int64, seed=6)
    grad = torch.randn(offsets.numel(), 16)
    want = eager_bag_backward(grad, indices, offsets, None, 0, -1, False, 900)
    out = torch.empty(900, 16)
    torch.set_num_threads(2)
    _cpu_native.bag_grad([_cpu_native.BagTable(out, grad, indices, offsets, None, False, -1, False, indices.sort()[1])])
    queue.put(torch.equal(out, want))


def test_a_forked_child_runs_the_kernel_on_one_thread(monkeypatch):
    """After fork, libgomp's thread pool is the parent's: a parallel region in the child
    hangs. The parent runs the kernel threaded first; the child's call must stay serial."""
    import multiprocessing

    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    with num_threads(max(torch.get_num_threads(), 2)):
        indices, offsets, _, _ = _case("offsets", 4096, 900, False, torch.int64, seed=7)
        grad = torch.randn(offsets.numel(), 16)
        out = torch.empty(900, 16)
        _cpu_native.bag_grad([_cpu_native.BagTable(out, grad, indices, offsets, None, False, -1, False, indices.sort()[1])])
        assert torch.equal(out, eager_bag_backward(grad, indices, offsets, None, 0, -1, False, 900))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_kernel_in_a_forked_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) is True


# --- one_hot_linear's CPU kernels ------------------------------------------------------------


def _one_hot_case(layout, bias, itype, seed=0):
    """Two fields (7 classes, bag 1; 5 classes, bag 3) over a [4, 6] lead, D=9, V=12 (+3
    spare columns in the strided layout)."""
    g = torch.Generator().manual_seed(seed)
    v, d = 12, 9
    if layout == "vmajor":
        w = torch.randn(v, d, generator=g).t()
    elif layout == "strided":  # a column slice of a wider weight
        w = torch.randn(d, v + 3, generator=g)[:, 2:2 + v]
    else:
        w = torch.randn(d, v, generator=g)
    b = torch.randn(d, generator=g) if bias else None
    indices = [torch.randint(0, 7, (4, 6, 1), generator=g).to(itype), torch.randint(0, 5, (4, 6, 3), generator=g).to(itype)]
    return indices, [7, 5], [0, 7], w, b


@pytest.mark.parametrize("layout", ["row", "vmajor", "strided"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_hot_kernels_match_the_reference(layout, bias, itype, threads, monkeypatch):
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0 if threads > 1 else 1 << 62)
    indices, classes, offsets, w, b = _one_hot_case(layout, bias, itype)
    with num_threads(threads):
        out, bad = _cpu_native.one_hot_linear(indices, classes, offsets, w, b)
        grad = torch.randn(4, 6, 9)
        v_major = layout == "vmajor"
        flat, bad_b = _cpu_native.one_hot_linear_backward(grad, indices, classes, offsets, 12, bias, v_major)
        again, _ = _cpu_native.one_hot_linear_backward(grad, indices, classes, offsets, 12, bias, v_major)
    assert bad is None and bad_b is None
    # The forward adds as the reference does (each field's sum, then the fields, then the bias).
    assert torch.equal(out, one_hot_linear_ref(indices, offsets, w, b))
    want = one_hot_linear_backward_ref(grad, indices, offsets, 12, bias, v_major, torch.float32)
    torch.testing.assert_close(flat, want, rtol=1e-6, atol=1e-6)  # another summation order than index_put's
    assert torch.equal(flat, again)  # deterministic


def test_one_hot_kernels_report_the_field_out_of_range():
    indices, classes, offsets, w, _ = _one_hot_case("row", False, torch.int64)
    indices[1][2, 3, 1] = 5  # field 1 has 5 classes: inside the weight, outside the field
    assert _cpu_native.one_hot_linear(indices, classes, offsets, w, None)[1] == 1
    assert _cpu_native.one_hot_linear_backward(torch.randn(4, 6, 9), indices, classes, offsets, 12, False, False)[1] == 1
    with pytest.raises(RuntimeError, match="Class values"):
        torch.ops.inductor_embed.one_hot_linear_backward(torch.randn(4, 6, 9), indices, classes, offsets, 12, False,
                                                         False, torch.float32)
    # the CPU ops leave the value checks to the kernels, then raise the detailed error
    with pytest.raises(RuntimeError, match="Class values .*: got 5 in one_hot_linear"):
        torch.ops.inductor_embed.one_hot_linear_cpu(indices, classes, offsets, w, None)
    with pytest.raises(RuntimeError, match="Class values .*: got 5 in one_hot_linear"):
        torch.ops.inductor_embed.one_hot_linear_backward_cpu(torch.randn(4, 6, 9), indices, classes, offsets, 12,
                                                             False, False, torch.float32)


class _OneHotLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(40, 8)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.one_hot(idx, 40).float())


@pytest.mark.parametrize("native", [True, False])
def test_a_compiled_one_hot_linear_runs_the_kernels_and_builds_no_cpp(native):
    """With the kernels, Inductor has nothing of the pattern left to generate: no C++ kernel to
    build in either graph (its first compile's largest cost). Without them
    (``cpu_native_kernels=False``) it compiles the ATen reference into its own loops."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model, idx = _OneHotLinear(), torch.randint(0, 40, (64,))
    eager = _OneHotLinear()
    eager.load_state_dict(model.state_dict())
    eager(idx).square().sum().backward()
    with config.patch(cpu_native_kernels=native):
        compiled = torch.compile(model, backend="inductor_embed")
        _, code = run_and_get_code(lambda: compiled(idx).square().sum().backward())
    code = "\n".join(code)
    assert ("one_hot_linear_cpu" in code and "one_hot_linear_backward_cpu" in code) == native
    assert ("cpp_fused" not in code) == native
    torch.testing.assert_close(model.proj.weight.grad, eager.proj.weight.grad)
    torch.testing.assert_close(model.proj.bias.grad, eager.proj.bias.grad)


def test_one_hot_cpu_ops_pass_opcheck():
    from torch.library import opcheck

    indices, classes, offsets, w, b = _one_hot_case("row", True, torch.int64)
    opcheck(torch.ops.inductor_embed.one_hot_linear_cpu.default, (indices, classes, offsets, w, b))
    opcheck(torch.ops.inductor_embed.one_hot_linear_backward_cpu.default,
            (torch.randn(4, 6, 9), indices, classes, offsets, 12, True, False, torch.float32))


@pytest.mark.parametrize("bags", [(0,), (0, 0), (0, 3), (3, 0)], ids=["one-empty", "two-empty", "first-empty",
                                                                       "second-empty"])
def test_one_hot_kernels_write_every_row_of_empty_bags(bags):
    """A multi-hot field with an empty bag (``one_hot(x [B, 0], n).sum(1)`` is all zeros): the
    forward still writes every row (the other fields' columns plus the bias, as the reference),
    never what ``torch.empty`` held."""
    g = torch.Generator().manual_seed(len(bags) + sum(bags))
    w, b = torch.randn(5, 20, generator=g), torch.randn(5, generator=g)
    indices = [torch.randint(0, 10, (8, bag), generator=g) for bag in bags]
    offsets = [10 * k for k in range(len(bags))]
    for _ in range(3):  # fresh torch.empty outputs: garbage shows on one of them
        out, bad = _cpu_native.one_hot_linear(indices, [10] * len(bags), offsets, w, b)
        assert bad is None
        assert torch.equal(out, one_hot_linear_ref(indices, offsets, w, b))
        out, _ = _cpu_native.one_hot_linear(indices, [10] * len(bags), offsets, w, None)
        assert torch.equal(out, one_hot_linear_ref(indices, offsets, w, None))


def test_a_compiled_one_hot_of_an_empty_multi_hot_bag_gives_the_bias():
    """Issue 26: ``lin(one_hot(x [8, 0], 50).sum(1).float())`` compiled gave rows of 1e18..1e30."""
    torch.manual_seed(0)
    lin = nn.Linear(50, 4)
    x = torch.randint(0, 50, (8, 0))
    fn = lambda x: lin(torch.nn.functional.one_hot(x, 50).sum(1).float())  # noqa: E731
    compiled = torch.compile(fn, backend="inductor_embed")
    for _ in range(5):
        poison = torch.full((8, 4), 1e30)  # freed memory of the output's size, for torch.empty to reuse
        del poison
        got = compiled(x)
        assert torch.equal(got, fn(x))
    assert torch.equal(got, lin.bias.detach().expand(8, 4))


def test_a_foreign_library_in_the_cache_is_rebuilt(tmp_path):
    """Issue 26: a ``.so`` of the cache's name that is not this source's build (another
    version's, a truncated or foreign file) gave ``undefined symbol: ie_bag_grad``. It is
    rebuilt, and replaced, in fresh processes as the real case has it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INDUCTOR_EMBED_CACHE_DIR": str(tmp_path)}
    use = ("import torch, inductor_embed\n"
           "from inductor_embed.lowering import _cpu_native\n"
           "assert _cpu_native.lib() is not None\n"
           "i = torch.randint(0, 10, (8, 3)); o = torch.empty(10, 4)\n"
           "_cpu_native.bag_grad([_cpu_native.BagTable(o, torch.ones(8, 4), i, None, None, False, -1, False, None)])\n"
           "assert torch.equal(o, torch.zeros(10, 4).index_add_(0, i.reshape(-1), torch.ones(24, 4)))\n")
    run = lambda: subprocess.run([sys.executable, "-c", use], env=env, capture_output=True, text=True,  # noqa: E731
                                 timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    (built,) = tmp_path.glob("cpu_kernels_*.so")
    src = tmp_path / "foreign.c"
    src.write_text("int something_else(void) { return 1; }\n")
    cc = _cpu_native._compilers()[0]
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(built)], check=True, timeout=120)
    src.unlink()
    second = run()
    assert second.returncode == 0, second.stderr[-2000:]
    assert b"ie_bag_grad" in built.read_bytes()  # replaced by this source's build
    (truncated := built).write_bytes(b"\x7fELF not a library")
    third = run()
    assert third.returncode == 0, third.stderr[-2000:]
    assert b"ie_bag_grad" in truncated.read_bytes()
    assert not list(tmp_path.glob("*.c")) and len(list(tmp_path.glob("*.so"))) == 1  # no leftovers


def test_the_structs_have_one_layout_on_both_sides():
    """The C structs' sizes, exported by the library, are ctypes' (a library that disagrees is
    rebuilt: test_a_foreign_library_in_the_cache_is_rebuilt)."""
    import ctypes

    library = _cpu_native.lib()
    n = len(_cpu_native._STRUCTS)
    assert [library.ie_struct_sizes(k) for k in range(n)] == [ctypes.sizeof(s) for s in _cpu_native._STRUCTS]
    assert library.ie_struct_sizes(n) == -1


# --- max mode: the forward (max and its row) and the backward --------------------------------


def _max_case(form, itype, padding_idx, seed=3, num_rows=300, dim=19):
    indices, offsets, _, ilo = _case(form, 600, num_rows, False, itype, seed=seed)
    weight = torch.randn(num_rows, dim)
    weight[11, 3] = float("nan")  # ATen's comparison: a NaN stays where it comes first, a later one loses
    weight[12] = weight[13]  # ties: the first row wins
    indices = indices.clone()
    indices.view(-1)[:4] = torch.tensor([11, 12, 13, 11], dtype=itype)
    return weight, indices, offsets, ilo


def _eager_max(weight, indices, offsets, padding_idx, ilo):
    """Eager's max-mode lookup, on the positions in a bag (include_last_offset's extra ones
    cut off, as the op reads them)."""
    if offsets is not None and ilo:
        indices, offsets, ilo = indices[:int(offsets[-1])], offsets[:-1], False
    return torch.nn.functional.embedding_bag(indices, weight, offsets, mode="max",
                                             padding_idx=None if padding_idx < 0 else padding_idx)


@pytest.mark.parametrize("form", ["2d", "2d_strided", "offsets", "include_last_offset"])
@pytest.mark.parametrize("padding_idx", [-1, 7])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("native", [True, False], ids=["kernel", "aten"])
def test_max_mode_is_eagers_bit_for_bit(form, padding_idx, itype, native):
    """The op's CPU forward and backward (the kernels, or ATen's ops) give eager's max, rows
    and gradient exactly: NaN, ties, padding, empty bags, strided and int32 indices."""
    weight, indices, offsets, ilo = _max_case(form, itype, padding_idx)
    w = weight.clone().requires_grad_()
    want = _eager_max(w, indices, offsets, padding_idx, ilo)
    w2 = weight.clone().requires_grad_()
    with config.patch(cpu_native_kernels=native):
        got, arg_max = torch.ops.inductor_embed.multi_embedding_bag(
            [w2], [indices], [offsets], [], [2], [padding_idx], [ilo], [False])
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    grad = torch.randn_like(want)
    want.backward(grad)
    with config.patch(cpu_native_kernels=native):
        got.backward(grad)
    assert torch.equal(w2.grad, w.grad)
    assert (arg_max == -1).any() or form.startswith("2d")  # empty bags say -1 (the offsets forms have one)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_max_mode_gives_the_same_bits_on_every_thread_count(threads, monkeypatch):
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    weight, indices, offsets, ilo = _max_case("offsets", torch.int64, -1)
    want = _cpu_native_off_max(weight, indices, offsets)
    with num_threads(threads):
        got = torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [indices], [offsets], [], [2], [-1],
                                                                [False])
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(got, want))


def _cpu_native_off_max(weight, indices, offsets):
    with config.patch(cpu_native_kernels=False):
        return torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [indices], [offsets], [], [2], [-1],
                                                                 [False])


def test_max_mode_with_other_tables_and_an_index_out_of_range():
    """Max tables next to a sum table and a column-major max one (ATen's path) land in their
    columns; an index out of range raises eager's error."""
    weight, indices, offsets, _ = _max_case("2d", torch.int64, -1)
    tables = [weight, torch.randn(300, 5), weight.t().contiguous().t(), weight[:, :7]]
    args = ([indices] * 4, [None] * 4, [], [2, 0, 2, 2], [-1] * 4, [False] * 4)
    got = torch.ops.inductor_embed.multi_embedding_bag_cpu(tables, *args)
    with config.patch(cpu_native_kernels=False):
        want = torch.ops.inductor_embed.multi_embedding_bag_cpu(tables, *args)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0].nan_to_num(), want[0].nan_to_num())
    bad = indices.clone()
    bad[3, 2] = 300
    with pytest.raises(RuntimeError, match="out of range"):  # the op's check, as eager's RuntimeError
        torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [bad], [None], [], [2], [-1], [False])


def test_max_mode_takes_offsets_of_any_strides_and_refuses_empty_fixed_bags():
    """Review findings: strided offsets (eager takes them) reach the kernel contiguous; ``[B, 0]``
    input takes ATen's path, which raises as eager does (the kernel would read no offsets)."""
    weight = torch.randn(20, 6)
    indices = torch.randint(0, 20, (9,))
    offsets = torch.tensor([0, 99, 3, 99, 5, 99, 5, 99])[::2]
    got = torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [indices], [offsets], [], [2], [-1], [False])
    want = torch.nn.functional.embedding_bag(indices, weight, offsets.contiguous(), mode="max")
    assert torch.equal(got[0], want)
    with pytest.raises(RuntimeError):
        torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [torch.empty(3, 0, dtype=torch.long)], [None], [],
                                                          [2], [-1], [False])


def _python_first_bad(rows, indices, offsets, ilo):
    from inductor_embed.lowering import _checks

    for k, (v, i, o, last) in enumerate(zip(rows, indices, offsets, ilo)):
        try:
            _checks.bag_values("test", k, i, o, v, last)
        except (RuntimeError, IndexError):
            return k
    return None


@pytest.mark.parametrize("itype", [torch.int32, torch.int64])
def test_the_native_bag_check_finds_the_tables_the_python_checks_reject(itype) -> None:
    """``first_bad_bag`` (one call for every table) names the first table whose offsets or
    indices ``_checks.bag_values`` rejects: offsets not from 0, decreasing or past the end,
    an index below 0 or at V, in 1-D bags with offsets (include_last_offset: indices past the
    last offset are in no bag, not checked), fixed [B, L] bags, strided columns of [B, T, L]."""
    g = torch.Generator().manual_seed(int(itype == torch.int64))
    v = 50

    def table(kind: str, bad: str):
        if kind == "fixed":
            i = torch.randint(0, v, (6, 4), generator=g, dtype=itype)
            o, last = None, False
        elif kind == "strided":
            i = torch.randint(0, v, (6, 3, 4), generator=g, dtype=itype)[:, 1]
            o, last = None, False
        else:
            i = torch.randint(0, v, (20,), generator=g, dtype=itype)
            o, last = torch.tensor([0, 3, 3, 9, 15], dtype=itype), kind == "last"
        first = (0,) * i.dim()
        if bad == "high":
            i[first] = v
        elif bad == "low":
            i[first] = -1
        elif bad == "past_last" and o is not None:
            i[18] = v  # in no bag with include_last_offset: fine there, bad in the last bag otherwise
        elif bad == "first" and o is not None:
            o[0] = 1
        elif bad == "decrease" and o is not None:
            o[2] = 2
        elif bad == "end" and o is not None:
            o[-1] = 21
        return v, i, o, last

    kinds = ("offsets", "last", "fixed", "strided")
    bads = ("none", "high", "low", "past_last", "first", "decrease", "end")
    for kind in kinds:
        for bad in bads:
            for where in range(3):
                tables = [table(kinds[(j + 1) % 4], "none") if j != where else table(kind, bad) for j in range(3)]
                rows, indices, offsets, ilo = (list(x) for x in zip(*tables))
                want = _python_first_bad(rows, indices, offsets, ilo)
                assert _cpu_native.first_bad_bag(rows, indices, offsets, ilo) == want, (kind, bad, where)
    empty = [torch.empty(3, 0, dtype=itype), torch.empty(0, dtype=itype)]
    assert _cpu_native.first_bad_bag([v, v], empty, [None, torch.zeros(1, dtype=itype)], [False, False]) is None


# --- the forward of every mode (one native call for every fp32 table) ------------------------


def _eager_bags(weight, indices, offsets, psw, mode, padding_idx, ilo):
    """Eager's lookup on the positions in a bag (include_last_offset's extra ones cut off, as
    the op reads them)."""
    if offsets is not None and ilo:
        end = int(offsets[-1])
        indices, offsets, ilo = indices[:end], offsets[:-1], False
        psw = None if psw is None else psw[:end]
    return torch.nn.functional.embedding_bag(indices, weight, offsets, mode=("sum", "mean", "max")[mode],
                                             per_sample_weights=psw,
                                             padding_idx=None if padding_idx < 0 else padding_idx)


@pytest.mark.parametrize("size", ["small", "wide", "large"])
@pytest.mark.parametrize("form", ["2d", "2d_strided", "offsets", "include_last_offset"])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("padding_idx", [-1, 7])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_the_forward_is_eagers_bit_for_bit(size, form, mode, weighted, padding_idx, itype, monkeypatch):
    """Sum, weighted sum and mean bags through the native forward equal eager's bits: its
    order of additions, its fused multiply-add where FBGEMM's kernel runs (weights, no padding
    row) and its product-then-sum elsewhere, its division for the mean, empty bags, padding,
    strided and int32 indices, include_last_offset's positions in no bag; every column
    block (small: 32 + 16 + 13 columns; wide: 128 + 64 + 13); large: two threads."""
    nnz, num_rows, dim = {"small": (600, 300, 61), "wide": (600, 300, 205), "large": (40960, 9000, 64)}[size]
    indices, offsets, psw, ilo = _case(form, nnz, num_rows, weighted, itype, seed=nnz + mode + padding_idx)
    weight = torch.randn(num_rows, dim)
    weight[3, 5] = float("inf")  # an inf row: eager's sums carry it (and NaN where it meets -inf)
    weight[4, 5] = -float("inf")
    indices = indices.clone()
    indices.view(-1)[1:3] = torch.tensor([3, 4], dtype=itype)
    want = _eager_bags(weight, indices, offsets, psw, mode, padding_idx, ilo)
    assert _cpu_native.weighted_fma(padding_idx >= 0) is not None  # probed (a call of its own) before the spy
    calls = []
    run = _cpu_native.bag_forward
    monkeypatch.setattr(_cpu_native, "bag_forward", lambda tables: calls.append(len(tables)) or run(tables))
    with num_threads(2):
        got, arg_max = torch.ops.inductor_embed.multi_embedding_bag_cpu(
            [weight], [indices], [offsets], [] if psw is None else [psw], [mode], [padding_idx], [ilo])
    assert calls == [1]  # the native forward ran it
    assert arg_max.shape == (want.shape[0], 0)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_forward_gives_the_same_bits_on_every_thread_count(threads, monkeypatch):
    monkeypatch.setattr(_cpu_native, "THREADED_BYTES", 0)
    indices, offsets, psw, _ = _case("offsets", 4000, 500, True, torch.int64, seed=5)
    weights = [torch.randn(500, 17), torch.randn(500, 64), torch.randn(500, 3)]
    args = ([indices] * 3, [offsets] * 3, [psw, psw.new_empty(()), psw.new_empty(())], [0, 1, 2], [-1] * 3,
            [False] * 3)
    with config.patch(cpu_native_kernels=False):
        want = torch.ops.inductor_embed.multi_embedding_bag_cpu(weights, *args)
    with num_threads(threads):
        got = torch.ops.inductor_embed.multi_embedding_bag_cpu(weights, *args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_forward_mixes_native_and_aten_tables_in_their_columns():
    """Column-major and strided weighted tables (ATen's) between native ones land in their
    columns; every table's bad input raises eager's error."""
    indices, offsets, psw, _ = _case("2d_strided", 600, 300, True, torch.int64, seed=2)
    base = torch.randn(300, 40)
    tables = [torch.randn(300, 8), torch.randn(300, 5), base.t().contiguous().t(),
              base[:, :7], base[:, 7:19]]
    empty = psw.new_empty(())
    args = ([indices] * 5, [None] * 5, [empty, empty, empty, psw, empty], [1, 0, 0, 0, 2], [-1] * 5, [False] * 5)
    got = torch.ops.inductor_embed.multi_embedding_bag_cpu(tables, *args)
    want = torch.cat([_eager_bags(w, indices, None, p if p.dim() else None, m, -1, False)
                      for w, p, m in zip(tables, args[2], args[3])], dim=1)
    assert torch.equal(got[0], want)
    for k in range(5):
        bad = [indices] * 5
        bad[k] = indices.clone()
        bad[k][3, 2] = 300
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.inductor_embed.multi_embedding_bag_cpu(tables, bad, *args[1:])
    with pytest.raises(RuntimeError, match="offsets"):  # decreasing offsets: the op's error
        torch.ops.inductor_embed.multi_embedding_bag_cpu([tables[0]], [indices.reshape(-1)],
                                                          [torch.tensor([0, 5, 3])], [], [0], [-1], [False])


# --- sparse=True bags' COO values (one native call for every table) ------------------------


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("form", ["2d", "2d_strided", "offsets", "include_last_offset"])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_sparse_values_are_eagers_bit_for_bit(size, form, mode, weighted, itype, monkeypatch):
    """A sparse=True bag's gradient from the CPU backward (the native rows: each position's
    share of its bag's gradient row) is eager's COO tensor, entry for entry (not coalesced:
    the CPU default); large: 2.6 MB of values, streamed, on two threads."""
    nnz, num_rows, dim = {"small": (600, 300, 61), "large": (10240, 9000, 64)}[size]
    if size == "large":
        monkeypatch.setattr(_cpu_native, "STREAMING_BYTES", 1 << 20)
    indices, offsets, psw, ilo = _case(form, nnz, num_rows, weighted, itype, seed=nnz + mode)
    weight = torch.randn(num_rows, dim)
    w = weight.clone().requires_grad_()
    cut_i, cut_o, cut_p = indices, offsets, psw
    if ilo:  # eager on the positions in a bag (the op's reading of include_last_offset)
        end = int(offsets[-1])
        cut_i, cut_o, cut_p = indices[:end], offsets[:-1], None if psw is None else psw[:end]
    want = torch.nn.functional.embedding_bag(cut_i, w, cut_o, mode=("sum", "mean")[mode], per_sample_weights=cut_p,
                                             sparse=True)
    grad = torch.randn_like(want)
    want.backward(grad)
    calls = []
    run = _cpu_native.bag_rows
    monkeypatch.setattr(_cpu_native, "bag_rows", lambda tables: calls.append(len(tables)) or run(tables))
    arg_max = torch.empty((grad.shape[0], 0), dtype=torch.int64)
    with num_threads(2):
        (g,) = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu(
            grad, arg_max, [indices], [offsets], [psw], [num_rows], [dim], [mode], [-1], [ilo],
            [True])  # eager's form: one entry per position, not coalesced
    e = w.grad
    assert calls == [1] and not g.is_coalesced()
    kept = g._indices()[0] < num_rows  # the op's positions in no bag: dropped (eager has none)
    assert torch.equal(g._indices()[:, kept], e._indices()) and torch.equal(g._values()[kept], e._values())


@pytest.mark.parametrize("psw_form", ["contiguous", "every_other", "column", "expanded", "2d_column"])
def test_weighted_bags_take_atens_arithmetic_for_the_weights_stride(psw_form):
    """Review finding: ATen adds weighted terms by FBGEMM's fused multiply-add only for weights
    of unit stride (as ``F.embedding_bag`` hands them over, flattened); strided or expanded ones
    take its product-then-sum loop. The native forward follows the same rule, bit for bit."""
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(50, 24, generator=gen)
    n = 64 * 9
    indices = torch.randint(0, 50, (n,), generator=gen)
    offsets = torch.arange(0, n, 9)
    base = torch.rand(n * 2, generator=gen)
    psw = {"contiguous": base[:n], "every_other": base[::2], "column": base.view(n, 2)[:, 1],
           "expanded": base[:1].expand(n), "2d_column": base.view(64, 9, 2)[:, :, 0]}[psw_form]
    fixed = psw.dim() == 2
    i, o = (indices.view(64, 9), None) if fixed else (indices, offsets)
    want = torch.nn.functional.embedding_bag(i, weight, o, mode="sum", per_sample_weights=psw)
    got, _ = torch.ops.inductor_embed.multi_embedding_bag_cpu([weight], [i], [o], [psw], [0], [-1], [False])
    assert torch.equal(got, want)
