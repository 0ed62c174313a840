"""Bad and unusual input, compiled with inductor_embed and at the op level on both code
paths (the ATen reference the CPU runs, and the Triton kernels: on CUDA when there is a
GPU, else in the Triton interpreter on CPU tensors).

Bad input must raise an error that names the problem, as eager does: never a silent
wrap, a zero row, a crash of the process, or a result. Unusual but valid input (empty
batches, D=1, odd D, non-contiguous indices and tables, tables past 2**31 elements)
must give eager's numbers.

Covers multi_embedding_cat and one_hot_linear. Bad input to the bag patterns (indices
out of range, malformed offsets) is tested with them: tests/inductor_embed/
test_multi_embedding_bag.py, tests/lowering/test_multi_embedding_bag_op.py and
tests/kernels/test_multi_embedding_bag.py.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.inductor_embed._util import rewrites
from tests.reliability._util import check_like_eager

OP = torch.ops.inductor_embed.multi_embedding.default
ONE_HOT_OP = torch.ops.inductor_embed.one_hot_linear.default
CUDA = torch.cuda.is_available()
VOCABS, DIMS = (10, 11, 13), (3, 5, 2)


class Cat3(nn.Module):
    """Three lookups, one cat, a linear head: a training step runs forward and backward."""

    def __init__(self, vocabs=VOCABS, dims=DIMS):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(v, d) for v, d in zip(vocabs, dims)])
        self.head = nn.Linear(sum(dims), 1)

    def forward(self, x):
        return self.head(torch.cat([t(x[..., k]) for k, t in enumerate(self.tables)], dim=-1))


def _fused(pattern):
    return torch._dynamo.utils.counters["inductor_embed"][pattern]


def _batch(n, vocabs=VOCABS, dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in vocabs], dim=-1).to(dtype)


TORCH_2_13 = torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)


def _compiled_outcome(model, backend, *inputs):
    torch._dynamo.reset()
    try:
        return torch.compile(copy.deepcopy(model), backend=backend)(*inputs)
    except Exception as e:  # the outcome is compared, not swallowed
        return e


# --- indices out of range -------------------------------------------------------------

# (table, bad value): past the end, far past it, just below 0, below -V, beyond int32.
BAD = [(0, 10), (2, 13), (1, -1), (2, -14), (0, 2**40)]


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
def test_out_of_range_index_raises_and_writes_no_gradient(index_dtype):
    torch.manual_seed(0)
    model = Cat3()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="inductor_embed")
    good = _batch(8, dtype=index_dtype)
    torch.testing.assert_close(compiled(good), model(good))
    for table, bad in BAD:
        if index_dtype == torch.int32 and bad >= 2**31:
            continue
        x = good.clone()
        x[5, table] = bad
        with pytest.raises((IndexError, RuntimeError), match="out of range"):
            model(x)  # eager: IndexError: index out of range in self
        # Inductor's own bounds check (CPU): RuntimeError "index out of bounds"; on torch
        # < 2.13 negatives hit the op's own assert: "index out of range".
        with pytest.raises(RuntimeError, match="out of (bounds|range)"):
            compiled(x).sum().backward()
        assert all(p.grad is None for p in compiled_model.parameters()), (table, bad)
    # the failures left nothing behind: the same compiled code still gives eager's numbers
    torch.testing.assert_close(compiled(good), model(good))
    assert rewrites() == 1


def test_out_of_range_error_is_the_one_plain_inductor_raises():
    model, x = Cat3(), _batch(4)
    x[1, 2] = 13
    errors = []
    for backend in ("inductor", "inductor_embed"):
        torch._dynamo.reset()
        with pytest.raises(Exception) as info:
            torch.compile(copy.deepcopy(model), backend=backend)(x)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1])
    assert "out of bounds" in str(errors[1]) or "out of range" in str(errors[1])


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
def test_op_raises_on_a_bad_index_in_any_table_and_any_program(path, index_dtype):
    if path == "cuda":
        pytest.skip("a device-side assert poisons the CUDA context: tests/lowering checks CUDA in a subprocess")
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(v, d, generator=g) for v, d in zip(VOCABS, DIMS)]
    n = 600  # several programs of the kernel (BLOCK_N <= 256)
    for table, bad in BAD + [(1, -(2**31))]:
        if index_dtype == torch.int32 and bad >= 2**31:
            continue
        indices = [torch.randint(0, v, (n,), generator=g).to(index_dtype) for v in VOCABS]
        indices[table][n - 3] = bad  # in the last program
        # ATen path: eager's IndexError; Triton path: the op's RuntimeError
        with pytest.raises((IndexError, RuntimeError), match="out of range"):
            OP(weights, indices, [-1] * 3, [False] * 3)


class OneHotFields(nn.Module):
    """Two one-hot fields of 5 and 7 classes feeding one Linear (one_hot_linear)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 4)

    def forward(self, a, b):
        return self.lin(torch.cat([F.one_hot(a, 5), F.one_hot(b, 7)], dim=-1).float())


def test_one_hot_class_out_of_range_raises_and_writes_no_gradient():
    # a = 5 lies inside the Linear's 12 columns: a gather without a per-field check would
    # silently read field b's first column.
    torch.manual_seed(0)
    model = OneHotFields()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="inductor_embed")
    good = [torch.tensor([0, 4, 2, 1]), torch.tensor([6, 0, 3, 5])]
    torch.testing.assert_close(compiled(*good), model(*good))
    for field, bad in ((0, 5), (0, -1), (1, 7), (1, -7), (0, 2**40)):
        x = [t.clone() for t in good]
        x[field][2] = bad
        with pytest.raises(RuntimeError, match="Class values must be"):
            model(*x)  # eager: "... must be non-negative." / "... smaller than num_classes."
        with pytest.raises(RuntimeError, match="Class values must be|out of (range|bounds)"):
            compiled(*x).sum().backward()
        assert all(p.grad is None for p in compiled_model.parameters()), (field, bad)
    torch.testing.assert_close(compiled(*good), model(*good))
    assert _fused("one_hot_linear") == 1


def test_one_hot_op_raises_on_a_bad_class_on_both_paths(path):
    if path == "cuda":
        pytest.skip("a device-side assert poisons the CUDA context")
    w = torch.randn(4, 12, device=path)
    for bad in (5, -1, 12):
        idx = [torch.tensor([[0], [4], [bad]], device=path), torch.tensor([[6], [0], [3]], device=path)]
        with pytest.raises(RuntimeError, match="Class values must be"):
            ONE_HOT_OP(idx, [5, 7], [0, 5], w)


def test_one_hot_int32_index_behaves_as_plain_inductor():
    # Eager F.one_hot takes int64 only, and so does torch 2.11 under torch.compile. On
    # torch 2.13 the check is lost under torch.compile (inductor or aot_eager alike): int32
    # classes work, and float classes are compared as numbers (2.5 gives a zero row).
    # inductor_embed neither adds nor removes the check.
    model = OneHotFields()
    a, b = torch.tensor([0, 4, 2, 1]), torch.tensor([6, 0, 3, 5])
    with pytest.raises(RuntimeError, match="LongTensor"):
        model(a.int(), b)
    ours = _compiled_outcome(model, "inductor_embed", a.int(), b)
    if isinstance(ours, Exception):
        assert not TORCH_2_13
        assert isinstance(ours, RuntimeError) and "LongTensor" in str(ours)
    else:
        torch.testing.assert_close(ours, model(a, b))  # eager's numbers for int64 classes
        assert _fused("one_hot_linear") == 1


# --- indices of the wrong kind ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16, torch.uint8, torch.bool],
                         ids=lambda d: str(d).replace("torch.", ""))
def test_non_integer_index_dtype_behaves_as_plain_inductor(dtype):
    # The pass leaves lookups with such indices, so what happens is Inductor's: torch 2.13
    # raises eager's own error while Dynamo traces; torch 2.11 raises a LoweringException
    # for float and bool indices and compiles int16 / uint8 ones (eager refuses them).
    model, x = Cat3(), _batch(4)
    with pytest.raises(RuntimeError) as eager:
        model(x.to(dtype))
    expected = str(eager.value).split(" (while")[0].split("; but got")[0]  # "Expected tensor ... Long, Int"
    ours = _compiled_outcome(model, "inductor_embed", x.to(dtype))
    plain = _compiled_outcome(model, "inductor", x.to(dtype))
    assert type(ours) is type(plain)
    if isinstance(plain, Exception):
        assert isinstance(ours, RuntimeError)
        assert (expected in str(ours)) == (expected in str(plain))
    else:
        torch.testing.assert_close(ours, plain)
        torch.testing.assert_close(ours, model(x))  # the values eager gives int64 indices
    if TORCH_2_13:
        assert isinstance(ours, RuntimeError) and expected in str(ours)


def test_op_rejects_a_float_index_on_both_paths(path):
    weights = [torch.randn(5, 2, device=path), torch.randn(4, 3, device=path)]
    indices = [torch.tensor([1, 2], device=path), torch.tensor([1.0, 2.0], device=path)]
    with pytest.raises(RuntimeError, match="expected indices 1 to be int32 or int64"):
        OP(weights, indices, [-1, -1], [False, False])


def test_indices_on_another_device_raise():
    # CPU-only machines have one real device; the meta device stands in for the second.
    # Eager F.embedding(meta indices, CPU table) does not raise on torch 2.11-2.13: it
    # returns a CPU tensor of garbage. Compiled, fake-tensor propagation refuses the mix.
    model, x = Cat3(), _batch(4)
    with pytest.raises(RuntimeError) as info:
        torch.compile(model, backend="inductor_embed")(x.to("meta"))
    assert "cpu" in str(info.value) and "meta" in str(info.value)
    assert rewrites() == 0  # the pass left the lookups: "indices on meta, table on cpu"


def test_op_rejects_indices_on_another_device():
    weights = [torch.randn(5, 2), torch.randn(4, 3)]
    with pytest.raises(RuntimeError, match="indices 1 are on meta, table 1 on cpu"):
        OP(weights, [torch.tensor([1]), torch.tensor([1], device="meta")], [-1, -1], [False, False])


@pytest.mark.skipif(not CUDA, reason="needs a second real device (CUDA)")
def test_cuda_indices_with_cpu_tables_raise_like_eager():
    model, x = Cat3(), _batch(4).cuda()
    with pytest.raises(RuntimeError, match="same device|cuda"):
        model(x)
    with pytest.raises(RuntimeError, match="same device|cuda"):
        torch.compile(model, backend="inductor_embed")(x)


# --- malformed input --------------------------------------------------------------------

class Loose(nn.Module):
    """Lookups on index tensors passed separately, so their shapes can disagree."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(10, 3), nn.Embedding(7, 2)

    def forward(self, x, y):
        return torch.cat([self.a(x), self.b(y)], dim=-1)


@pytest.mark.parametrize("shapes", [((4,), (5,)), ((4,), (4, 1))], ids=["lengths", "ranks"])
def test_index_shapes_that_do_not_cat_raise_eagers_error(shapes):
    x, y = torch.zeros(shapes[0], dtype=torch.long), torch.zeros(shapes[1], dtype=torch.long)
    with pytest.raises(RuntimeError) as eager:
        Loose()(x, y)
    with pytest.raises(RuntimeError) as compiled:
        torch.compile(Loose(), backend="inductor_embed")(x, y)
    assert type(eager.value).__name__ == "RuntimeError"
    # Same check, worded by cat's meta function: "Sizes of tensors must match" / "same
    # number of dimensions" (eager) against "... must match" / "Number of dimensions" (fake).
    assert "must match" in str(compiled.value) or "dimensions" in str(compiled.value)


def test_one_dimensional_weight_raises_eagers_error():
    w1, w2 = torch.randn(10), torch.randn(7, 2)

    def fn(x, y):
        return torch.cat([F.embedding(x, w1), F.embedding(y, w2)], -1)

    x = torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="'weight' must be 2-D"):
        fn(x, x)
    with pytest.raises(RuntimeError, match="'weight' must be 2-D"):
        torch.compile(fn, backend="inductor_embed")(x, x)


@pytest.mark.parametrize("case", ["no tables", "count mismatch", "lengths", "ranks", "dtypes", "1-D table"])
def test_op_rejects_malformed_arguments(path, case):
    w = [torch.randn(5, 2, device=path), torch.randn(4, 3, device=path)]
    i = [torch.tensor([1, 2], device=path), torch.tensor([0, 3], device=path)]
    expect = {
        "no tables": "0 tables but 0 index tensors",
        "count mismatch": "2 tables but 1 index tensors",
        "lengths": r"indices 1 have shape \[3\], indices 0 have shape \[2\]",
        "ranks": "indices 1 are 2-D, indices 0 are 1-D",
        "dtypes": "table 1 is torch.float16, table 0 is torch.float32",
        "1-D table": "table 1 must be 2-D, got 1-D",
    }[case]
    if case == "no tables":
        w, i = [], []
    elif case == "count mismatch":
        i = i[:1]
    elif case == "lengths":
        i[1] = torch.tensor([0, 1, 3], device=path)
    elif case == "ranks":
        i[1] = i[1][:, None]
    elif case == "dtypes":
        w[1] = w[1].half()
    else:
        w[1] = w[1][0]
    with pytest.raises(RuntimeError, match=expect):
        OP(w, i, [-1] * len(w), [False] * len(w))


# --- unusual but valid input: eager's numbers -------------------------------------------

class OddTables(nn.Module):
    """D=1, D=13, D=67 (not powers of two), a transposed table, a column slice of a wider
    table and a row slice, looked up with strided, expanded and transposed index views."""

    def __init__(self):
        super().__init__()
        self.d1, self.d13, self.d67 = nn.Embedding(6, 1), nn.Embedding(9, 13), nn.Embedding(5, 67)
        self.transposed = nn.Parameter(torch.randn(4, 8).t())  # [8, 4], strides (1, 8)
        self.wide = nn.Parameter(torch.randn(7, 9))

    def forward(self, x, wide_idx, shared):
        return torch.cat([
            self.d1(x[:, 0]),  # a column of x: stride 4
            self.d13(x[:, 1]),
            F.embedding(x.t()[2], self.transposed),  # transposed index view
            F.embedding(wide_idx, self.wide[:, 3:8]),  # column slice: row stride 9
            self.d67(shared.expand(x.shape[0])),  # one index for every row: stride 0
            F.embedding(x[:, 3], self.wide[2:6]),  # row slice
        ], dim=-1)


def _odd_inputs(n):
    g = torch.Generator().manual_seed(n)
    x = torch.stack([torch.randint(0, v, (n,), generator=g) for v in (6, 9, 8, 4)], 1)
    return [x, torch.randint(0, 7, (2 * n,), generator=g)[::2], torch.tensor([3])]


@pytest.mark.parametrize("n", [0, 1, 7], ids=["B0", "B1", "B7"])
def test_odd_tables_and_index_views_match_eager(n):
    check_like_eager(OddTables(), _odd_inputs(n))
    assert rewrites() == 1


class WithOneHot(Cat3):
    """Cat3 plus two Linears on one one-hot field of 4 classes: a D=1 F.linear, and
    ``oh @ R.t()`` with D=13 read through a transposed view."""

    def __init__(self):
        super().__init__()
        self.d1 = nn.Linear(4, 1)
        self.r = nn.Parameter(torch.randn(13, 4))

    def forward(self, x):
        oh = F.one_hot(x[..., 3], 4).float()
        return torch.cat([super().forward(x[..., :3]), self.d1(oh), oh @ self.r.t()], dim=-1)


@pytest.mark.parametrize("lead", [(), (0, 3), (2, 0), (3, 1, 2)], ids=["0-d", "0x3", "2x0", "3x1x2"])
def test_index_shapes_with_zero_and_many_dims_match_eager(lead):
    x = _batch(math.prod(lead), vocabs=VOCABS + (4,)).reshape(*lead, 4)
    check_like_eager(WithOneHot(), [x], tol={"rtol": 1e-5, "atol": 1e-6})
    assert rewrites() == 1 and _fused("one_hot_linear") == 2


def test_one_row_tables_match_eager():
    # Inductor's CPU codegen (torch 2.13) fails on a scatter-add into a one-element buffer:
    # plain torch.compile fails on a [1, 1] table's backward, and so did the plugin, on a
    # one-row table with scale_grad_by_freq, while its CPU backward was one Inductor
    # scatter-add (67e8d07; found by test_random_models). One-row tables take the CPU's
    # eager backward op (other narrow tables are left to Inductor), so they work; the random models still avoid
    # [1, 1] tables, which plain Inductor meets when they are not fused.
    class OneRow(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Embedding(1, 1)
            self.b = nn.Embedding(1, 5, scale_grad_by_freq=True)
            self.c = nn.Embedding(1, 3, padding_idx=0)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x), self.c(x)], dim=-1)

    check_like_eager(OneRow(), [torch.zeros(6, dtype=torch.long)])
    assert rewrites() == 1


def test_op_handles_odd_tables_and_views_on_both_paths(path):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(7, 9, generator=g)
    weights = [
        torch.randn(6, 1, generator=g),
        torch.randn(5, 67, generator=g),
        torch.randn(4, 8, generator=g).t(),
        big[:, 3:8],
        big[2:6],
    ]
    weights = [w.to(path).requires_grad_() for w in weights]
    x = torch.randint(0, 4, (300, 4), generator=g)
    indices = [x[:, 0], x[:, 1], x.t()[2], torch.randint(0, 7, (600,), generator=g)[::2],
               torch.tensor([3]).expand(300)]
    indices = [i.to(path) for i in indices]
    for n in (300, 0):
        idx = [i[:n] for i in indices]
        out = OP(weights, idx, [-1] * 5, [False] * 5)
        ref = torch.cat([F.embedding(i, w) for w, i in zip(weights, idx)], -1)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, weights, grad)
        want = torch.autograd.grad(ref, weights, grad)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# --- tables past 2**31 elements ---------------------------------------------------------
#
# A [2**24 + 64, 128] bf16 table has 2**31 + 8192 elements: byte offsets pass 2**32 and
# element offsets 2**31, so any int32 offset arithmetic would read the wrong row (or
# fault). Its 4 GiB cannot be allocated on a shared 24 GiB CPU box, so the table is a
# memory map of a sparse file: only the pages of the rows written and read are backed.
# The backward's dense gradient would need 8 GiB of fp32 that is really written (zeroed),
# so the compiled backward is not run at this size; the backward kernel's address math
# is checked directly on a sparse-file gradient buffer whose second table starts past
# 2**31 elements. On CUDA the same sizes are allocated for real (a 4 GiB table).

BIG_V, BIG_D = 2**24 + 64, 128
assert BIG_V * BIG_D > 2**31


def _sparse_tensor(numel, dtype, directory):
    fd, path = tempfile.mkstemp(dir=directory, suffix=".bin")
    os.close(fd)
    with open(path, "wb") as f:
        f.truncate(numel * dtype.itemsize)
    try:
        return torch.from_file(path, shared=True, size=numel, dtype=dtype)
    finally:
        os.unlink(path)  # the mapping stays valid; the disk blocks go when it is freed


def _big_rows():
    return torch.tensor([0, 5, 2**24 + 3, BIG_V - 2, BIG_V - 1])


@pytest.fixture
def big_table(tmp_path):
    w = _sparse_tensor(BIG_V * BIG_D, torch.bfloat16, tmp_path).view(BIG_V, BIG_D)
    rows = _big_rows()
    vals = torch.randn(len(rows), BIG_D, generator=torch.Generator().manual_seed(0)).bfloat16()
    w[rows] = vals
    yield w, rows, vals
    del w


def test_table_past_2_31_elements_compiled(big_table):
    w, rows, vals = big_table
    small = torch.randn(9, 3).bfloat16()

    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Embedding.from_pretrained(small)  # frozen: no 8 GiB gradient
            self.big = nn.Embedding.from_pretrained(w)

        def forward(self, x, y):
            return torch.cat([self.small(x), self.big(y)], dim=-1)

    x = torch.tensor([0, 1, 2, 3, 8])
    compiled = torch.compile(Big(), backend="inductor_embed")
    out = compiled(x, rows)
    assert rewrites() == 1
    torch.testing.assert_close(out, torch.cat([small[x], vals], -1), rtol=0, atol=0)
    bad = rows.clone()
    bad[1] = BIG_V
    with pytest.raises(RuntimeError, match="out of (bounds|range)"):
        compiled(x, bad)


def test_table_past_2_31_elements_op(big_table, path):
    w, rows, vals = big_table
    if path == "cuda":
        w = w.cuda()
    small = torch.randn(9, 3, device=path).bfloat16()
    out = OP([small, w], [torch.arange(5, device=path), rows.to(path)], [-1, -1], [False, False])
    torch.testing.assert_close(out[:, 3:].cpu(), vals, rtol=0, atol=0)


def test_backward_kernel_offsets_past_2_31_elements(tmp_path):
    # Table 0 is [2**24 + 64, 128]: table 1's block of the flat fp32 gradient starts at
    # element 2**31 + 8192, and table 0's last rows end there too.
    try:
        from inductor_embed.kernels.multi_embedding import multi_embedding_bwd
    except ImportError:
        pytest.skip("triton is not installed")
    dev = "cuda" if CUDA else "cpu"
    small_v, small_d = 9, 3
    size = BIG_V * BIG_D + small_v * small_d
    if dev == "cuda":
        flat = torch.zeros(size, dtype=torch.float32, device=dev)
    else:
        flat = _sparse_tensor(size, torch.float32, tmp_path)  # zero on entry: a sparse file
    rows = _big_rows().to(dev)
    small_rows = torch.tensor([8, 0, 8, 4, 1], device=dev)
    g = torch.randn(5, BIG_D + small_d, generator=torch.Generator().manual_seed(1)).to(dev)
    multi_embedding_bwd(g, [rows, small_rows], [BIG_V, small_v], [BIG_D, small_d], [-1, -1],
                     [False, False], flat)
    big_grad = flat[: BIG_V * BIG_D].view(BIG_V, BIG_D)
    torch.testing.assert_close(big_grad[rows].cpu(), g[:, :BIG_D].cpu(), rtol=0, atol=0)
    small_grad = flat[BIG_V * BIG_D:].view(small_v, small_d).cpu()
    want = torch.zeros(small_v, small_d).index_add_(0, small_rows.cpu(), g[:, BIG_D:].cpu())
    torch.testing.assert_close(small_grad, want, rtol=0, atol=1e-6)
