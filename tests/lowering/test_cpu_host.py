"""The lookups' CPU backward with its host side in C++ (lowering/_cpu_host.py, cpu_host.cpp):
the Python op's results bit for bit in every form the C++ kernel takes, every other call
handed to the Python op (its results and errors), the build's failure reported, a forked
child on one thread, and autograd calling it."""

from __future__ import annotations

import logging
import multiprocessing
import os

import pytest
import torch

from inductor_embed import _internal
from inductor_embed.lowering import _cpu_host, _cpu_native
from tests._util import num_threads

pytestmark = pytest.mark.skipif(_cpu_native.lib() is None or not _cpu_host._compilers(),
                                reason="no C / C++ compiler on this machine")

FAST = torch.ops.inductor_embed.multi_embedding_backward_cpu_fast.default
PYTHON = torch.ops.inductor_embed.multi_embedding_backward_cpu.default


def _spy_on(monkeypatch, module, name: str) -> list[int]:
    """Loads the C++ kernels, then counts the calls of ``module.name`` (a function the Python
    op's body calls): none where the C++ kernel took the call."""
    assert _cpu_host.load()
    calls: list[int] = []
    run = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: (calls.append(1), run(*a, **k))[1])
    return calls


@pytest.fixture
def spy(monkeypatch):
    """The Python lookups' backward's runs (its body's ``embedding_grads_cpu``)."""
    from inductor_embed.lowering import multi_embedding

    return _spy_on(monkeypatch, multi_embedding, "embedding_grads_cpu")


def _case(dtype, itype, n=300, tables=((50, 3), (1000, 16), (7, 64), (2, 1))):
    """``(grad [n, C] of dtype, indices, num_rows, dims, padding_idx, scale, columns)``: Zipf-like
    repeats, a padding row in the second table, the indices strided columns of one [n, T]."""
    g = torch.Generator().manual_seed(n)
    rows = [v for v, _ in tables]
    dims = [d for _, d in tables]
    ids = torch.stack([torch.randint(0, v, (n,), generator=g) ** 2 % v for v in rows], 1).to(itype)
    ids[:9, 1] = 5
    grad = torch.randn(n, sum(dims), generator=g).to(dtype)
    columns = [sum(dims[:k]) for k in range(len(dims))]
    return grad, [ids[:, k] for k in range(len(rows))], rows, dims, [-1, 5, -1, -1], [False] * len(rows), columns


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_the_cpp_host_gives_the_python_ops_gradients(dtype, itype, threads, spy):
    """Every dtype and index type, strided indices and a padding row, on one and two threads
    (a call past THREADED_BYTES: 20,000 positions): the Python op's gradients bit for bit,
    with no call into Python."""
    for n in (300, 20000):
        args = _case(dtype, itype, n)
        with num_threads(threads):
            got = FAST(*args, [], True)
        assert not spy, "the C++ kernel handed a call it takes to the Python op"
        want = PYTHON(*args, [], True)
        spy.clear()
        assert len(got) == len(want) and all(g.dtype == dtype and torch.equal(g, w) for g, w in zip(got, want))


def test_other_layouts_it_takes(spy):
    """[*L] indices (2-D, flattened by the kernel), a non-contiguous grad (transposed), one
    position, and grad columns read from an offset: the Python op's results."""
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, 30, (4, 5), generator=g), torch.randint(0, 9, (4, 5), generator=g)]
    grad = torch.randn(8, 4, 5, generator=g).permute(1, 2, 0)  # [4, 5, 8], column stride 20
    for args in ((grad, ids, [30, 9], [3, 2], [-1, -1], [False] * 2, [5, 0]),
                 (torch.randn(1, 6, generator=g), [torch.tensor([2])], [4], [6], [2], [False], [0])):
        got = FAST(*args, [], True)
        assert not spy
        want = PYTHON(*args, [], True)
        spy.clear()
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("form", ["unchecked", "zeroed", "scale_grad_by_freq", "cached table", "no positions"])
def test_what_it_does_not_take_goes_to_the_python_op(form, spy):
    """Unchecked calls, zeroed columns, scale_grad_by_freq, a gradient from the reused-buffer
    cache (2 MiB or more) and an empty batch: the Python op runs, with its results."""
    grad, indices, rows, dims, pads, scale, columns = _case(torch.float32, torch.int64)
    zeroed, checked = [], True
    if form == "unchecked":
        checked = False
    elif form == "zeroed":
        zeroed = [1, 2, 9]
    elif form == "scale_grad_by_freq":
        scale = [False, True, False, False]
    elif form == "cached table":
        rows = [50, 1000, 9000, 2]  # 9,000 x 64 fp32: 2.3 MB
        indices[2] = indices[2] * 128
    else:
        grad, indices = grad[:0], [i[:0] for i in indices]
    args = (grad, indices, rows, dims, pads, scale, columns, zeroed, checked)
    got = FAST(*args)
    assert spy == [1]
    want = PYTHON(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("bad", [1000, -1])
def test_an_index_out_of_range_raises_the_python_ops_error(bad, spy):
    grad, indices, rows, dims, pads, scale, columns = _case(torch.float32, torch.int64)
    indices[2] = indices[2].clone()
    indices[2][17] = bad
    with pytest.raises(IndexError, match=r"index out of range in self: an index outside \[0, 7\)"):
        FAST(grad, indices, rows, dims, pads, scale, columns, [], True)
    assert spy  # the kernel found it, then the Python op raised


def test_autograd_calls_it_and_a_compiled_step_is_eagers(spy):
    """A compiled model's lookups' backward is the C++ kernel's: the gradients eager's bit for
    bit; with the switch off (``_internal.cpp_host_on_cpu``) the Python op's, the same."""
    import copy

    import torch._dynamo

    torch.manual_seed(0)
    tables = torch.nn.ModuleList(torch.nn.Embedding(v, d) for v, d in ((100, 8), (30, 4), (7, 16)))

    def model(t, x):
        return torch.cat([e(x[:, k]) for k, e in enumerate(t)], 1)

    x = torch.stack([torch.randint(0, v, (64,)) for v in (100, 30, 7)], 1)
    g = torch.randn(64, 28)
    eager = copy.deepcopy(tables)
    model(eager, x).backward(g)
    for cpp in (True, False):
        mine = copy.deepcopy(tables)
        torch._dynamo.reset()
        with _internal.patch(cpp_host_on_cpu=cpp):
            torch.compile(model, backend="inductor_embed")(mine, x).backward(g)
        assert all(torch.equal(a.weight.grad, b.weight.grad) for a, b in zip(mine, eager))
        assert bool(spy) != cpp
        spy.clear()
    torch._dynamo.reset()


def test_a_failing_cpp_compiler_is_reported(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("INDUCTOR_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu_native, "_state", {**_cpu_native._state, "private": str(tmp_path)})
    monkeypatch.setattr(_cpu_host, "_compilers", lambda: ["/bin/false"])
    with caplog.at_level(logging.WARNING, logger="inductor_embed"):
        assert _cpu_host._build() is None
    assert "could not build the C++ host" in caplog.text and "/bin/false" in caplog.text
    assert not list(tmp_path.glob("*"))  # no leftovers


def _child(queue) -> None:
    args = _case(torch.float32, torch.int64, 20000)
    with num_threads(2):  # past THREADED_BYTES: the parent would use two threads
        got = FAST(*args, [], True)
    queue.put(all(torch.equal(a, b) for a, b in zip(got, PYTHON(*args, [], True))))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_runs_it_on_one_thread(spy):
    """After a fork (of a process whose OpenMP pool may be running), the C++ kernel runs the
    native kernel on the calling thread, as the Python op does: no hang, the same results."""
    with num_threads(2):
        FAST(*_case(torch.float32, torch.int64, 20000), [], True)  # the parent's pool started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(120)
    assert child.exitcode == 0 and queue.get(timeout=5)


# --- the bags' forward -------------------------------------------------------------------------

BAG_FAST = torch.ops.inductor_embed.multi_embedding_bag_cpu_fast.default
BAG_PYTHON = torch.ops.inductor_embed.multi_embedding_bag_cpu.default


@pytest.fixture
def bag_spy(monkeypatch):
    """The Python bag forward's runs (its body's ``_native_tables``)."""
    from inductor_embed.lowering import multi_embedding_bag

    return _spy_on(monkeypatch, multi_embedding_bag, "_native_tables")


def _bags(b=33, itype=torch.int64, last=False):
    """Three lookups: [B, 4] bags (a strided slice of one [B, 3, 4] input), 1-D indices with
    int32 offsets (an empty bag; with include_last_offset, positions past the last offset),
    and a strided table (a column slice)."""
    g = torch.Generator().manual_seed(b)
    weights = [torch.randn(50, 16, generator=g), torch.randn(200, 8, generator=g)[:, :5], torch.randn(30, 7, generator=g)]
    x = torch.randint(0, 30, (b, 3, 4), generator=g).to(itype)
    flat = torch.randint(0, 200, (100,), generator=g).to(itype)
    offsets = torch.sort(torch.randint(0, 90, (b,), generator=g))[0].int()
    offsets[0], offsets[2] = 0, offsets[3]
    if last:
        offsets = torch.cat([offsets, torch.tensor([95], dtype=torch.int32)])
    return weights, [x[:, 0], flat, x[:, 2]], [None, offsets, None]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_the_cpp_host_gives_the_python_bag_forwards(itype, threads, bag_spy, monkeypatch):
    """Sum, mean and max tables mixed, padding rows or none, include_last_offset, one and two
    threads (a batch of 20,000 bags: past THREADED_BYTES): the Python op's outputs and max
    rows bit for bit, with no call into Python."""
    for b in (33, 20000):
        for modes in ([0, 1, 2], [2, 2, 0]):
            for pads, last in (([-1] * 3, False), ([3, 7, 0], True)):
                weights, indices, offsets = _bags(b, itype, last)
                args = (weights, indices, offsets, [], modes, pads, [False, last, False], True)
                with num_threads(threads):
                    got = BAG_FAST(*args)
                assert not bag_spy, "the C++ kernel handed a call it takes to the Python op"
                want = BAG_PYTHON(*args)
                bag_spy.clear()
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (b, modes, pads)


@pytest.mark.parametrize("form", ["unchecked", "weighted", "strided offsets", "bf16", "no positions a bag"])
def test_bags_it_does_not_take_go_to_the_python_op(form, bag_spy):
    weights, indices, offsets = _bags()
    psw, checked, modes = [], True, [0, 0, 0]
    if form == "unchecked":
        checked = False
    elif form == "weighted":
        psw = [torch.rand(33, 4), torch.rand(100), torch.rand(33, 4)]
    elif form == "strided offsets":
        offsets[1] = torch.stack([offsets[1], offsets[1]], 1)[:, 0]
    elif form == "bf16":
        weights = [w.bfloat16() for w in weights]
    else:
        indices = [indices[0][:, :0], indices[1], indices[2]]
    args = (weights, indices, offsets, psw, modes, [-1] * 3, [False] * 3, checked)
    if form == "no positions a bag":  # ATen raises for [B, 0] bags: so do both
        with pytest.raises(RuntimeError):
            BAG_FAST(*args)
        assert bag_spy == [1]
        return
    got = BAG_FAST(*args)
    assert bag_spy == [1]
    want = BAG_PYTHON(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("bad", ["index", "negative index", "offsets"])
def test_bad_bags_raise_the_python_ops_error(bad, bag_spy):
    weights, indices, offsets = _bags()
    if bad == "offsets":
        offsets[1] = offsets[1].clone()
        offsets[1][5] = 1000
        match = "malformed offsets"
    else:
        indices[0] = indices[0].clone()
        indices[0][3, 1] = 60 if bad == "index" else -1
        match = "index out of range"
    args = (weights, indices, offsets, [], [0, 1, 2], [-1] * 3, [False] * 3, True)
    with pytest.raises(RuntimeError, match=match) as fast:
        BAG_FAST(*args)
    with pytest.raises(RuntimeError, match=match) as python:
        BAG_PYTHON(*args)
    assert str(fast.value) == str(python.value) and bag_spy


def test_a_compiled_bag_model_calls_it(bag_spy, bag_bwd_spy):
    """A compiled DLRM-style step (EmbeddingBags, then a cat) runs the C++ kernels, forward and
    backward: eager's output and gradients bit for bit (sum bags of fp32, no weights)."""
    import torch._dynamo

    torch.manual_seed(0)
    bags = torch.nn.ModuleList(torch.nn.EmbeddingBag(v, 8, mode="sum") for v in (100, 30, 7))

    def model(t, x):
        return torch.cat([e(x[:, k]) for k, e in enumerate(t)], 1)

    x = torch.stack([torch.randint(0, v, (64, 5)) for v in (100, 30, 7)], 1)
    import inductor_embed

    assert [r.pattern for r in inductor_embed.explain(lambda x: model(bags, x), x).rewrites] == ["multi_embedding_bag"]
    import copy

    mine = copy.deepcopy(bags)
    want = model(bags, x)
    g = torch.randn_like(want)
    want.backward(g)
    torch._dynamo.reset()
    got = torch.compile(model, backend="inductor_embed")(mine, x)
    got.backward(g)
    assert torch.equal(got, want) and not bag_spy and not bag_bwd_spy
    assert all(torch.equal(a.weight.grad, b.weight.grad) for a, b in zip(mine, bags))
    torch._dynamo.reset()


# --- the bags' backward ------------------------------------------------------------------------

BAG_BWD_FAST = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu_fast.default
BAG_BWD_PYTHON = torch.ops.inductor_embed.multi_embedding_bag_backward_cpu.default


@pytest.fixture
def bag_bwd_spy(monkeypatch):
    """The Python bag backward's runs (its body's ``bag_grads_cpu``)."""
    from inductor_embed.lowering import multi_embedding_bag

    return _spy_on(monkeypatch, multi_embedding_bag, "bag_grads_cpu")


def _bag_grad_args(b, itype=torch.int64, modes=(0, 1, 0), pads=(-1, 7, 0)):
    """The backward's arguments for ``_bags``' three lookups (no include_last_offset), grad
    ``[B, 28]`` with Zipf-heavy repeats in the first table."""
    weights, indices, offsets = _bags(b, itype)
    indices[0] = (indices[0].float() ** 2 % 50).to(itype)  # repeats: rows summed in ATen's order
    g = torch.Generator().manual_seed(b + 1)
    grad = torch.randn(b, 28, generator=g)
    rows, dims = [w.shape[0] for w in weights], [w.shape[1] for w in weights]
    return (grad, grad.new_empty((b, 0), dtype=torch.int64), indices, offsets, [None] * 3, rows, dims,
            list(modes), list(pads), [False] * 3, [False] * 3, False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_the_cpp_host_gives_the_python_bag_gradients(itype, threads, bag_bwd_spy):
    """Sum and mean tables, padding rows, [B, L] and offsets, positions below the stable
    sort's length (the kernel's std::sort replica) and above it (12,000 bags of 4: 48,000
    positions in a [B, L] table), on one and two threads: the Python op's gradients bit for bit
    (eager's: test_cpu_native.py), with no call into Python."""
    for b in (33, 12000, "long offsets"):
        if b == "long offsets":  # an offsets table past the stable length: 40,000 positions in 9 bags
            args = list(_bag_grad_args(9, itype))
            args[2] = [args[2][0], torch.randint(0, 200, (40000,)).to(itype), args[2][2]]
            args[3] = [None, torch.tensor([0, 10, 10, 5000, 9000, 20000, 30000, 39000, 39990], dtype=torch.int32),
                       None]
            args = tuple(args)
        else:
            args = _bag_grad_args(b, itype)
        with num_threads(threads):
            got = BAG_BWD_FAST(*args, False, True)
        assert not bag_bwd_spy, "the C++ kernel handed a call it takes to the Python op"
        want = BAG_BWD_PYTHON(*args, False, True)
        bag_bwd_spy.clear()
        assert all(torch.equal(a, w) for a, w in zip(got, want)), b


@pytest.mark.parametrize("form", ["unchecked", "as_values", "max", "weighted", "include_last_offset", "sparse",
                                  "cached table"])
def test_bag_gradients_it_does_not_take_go_to_the_python_op(form, bag_bwd_spy):
    args = list(_bag_grad_args(33))
    checked, as_values = True, False
    if form == "unchecked":
        checked = False
    elif form == "as_values":
        as_values, args[10] = True, [False, True, False]
    elif form == "max":
        args[7] = [0, 2, 0]
        args[1] = torch.zeros(33, 5, dtype=torch.int64)
    elif form == "weighted":
        args[4] = [torch.rand(33, 4), None, None]
    elif form == "include_last_offset":
        args[9] = [False, True, False]
        args[3] = [None, torch.cat([args[3][1], torch.tensor([95], dtype=torch.int32)]), None]
    elif form == "sparse":
        args[10] = [True, False, False]
    else:  # 9,000 x 64 fp32: from the reused-gradient cache
        args[5], args[6] = [9000, 200, 30], [64, 5, 7]
        args[0] = torch.randn(33, 76)
    got = BAG_BWD_FAST(*args, as_values, checked)
    assert bag_bwd_spy == [1]
    want = BAG_BWD_PYTHON(*args, as_values, checked)
    for a, w in zip(got, want):
        assert torch.equal(a.to_dense(), w.to_dense())


def test_a_bad_bag_index_in_the_backward_raises_the_python_ops_error(bag_bwd_spy):
    args = list(_bag_grad_args(33))
    args[2] = [args[2][0], args[2][1].clone(), args[2][2]]
    args[2][1][40] = 200
    with pytest.raises(IndexError) as fast:
        BAG_BWD_FAST(*args, False, True)
    with pytest.raises(IndexError) as python:
        BAG_BWD_PYTHON(*args, False, True)
    assert str(fast.value) == str(python.value) and bag_bwd_spy


_FORK_BEFORE_LOAD = r"""
import os, sys, torch
import inductor_embed
from inductor_embed.lowering import _cpu_host, _cpu_native
assert _cpu_native.lib() is not None and "loaded" not in _cpu_host._state
torch.set_num_threads(2)
torch.randn(2000, 2000).sum(0).add_(1)  # the parent's OpenMP pool started
pid = os.fork()
if pid == 0:
    n = 20000  # past THREADED_BYTES: a parent would use two threads
    g = torch.randn(n, 64)
    idx = [torch.randint(0, 500, (n,))]
    args = (g, idx, [500], [64], [-1], [False], [0], [], True)
    got = torch.ops.inductor_embed.multi_embedding_backward_cpu_fast(*args)  # loads here, in the child
    want = torch.ops.inductor_embed.multi_embedding_backward_cpu(*args)
    os._exit(0 if _cpu_host._state.get("loaded") and torch.equal(got[0], want[0]) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_before_the_load_runs_it_on_one_thread():
    """Review finding: the C++ kernels' fork flag came from a handler installed at the first
    load, so a child forked before it asked for torch's threads (the parent's OpenMP pool:
    a hang), and the load's probes of ATen's parallel sort could hang there too. A fresh
    interpreter starts its pool, forks, and the child's first call loads, binds as a fork
    (one thread, no probes) and gives the Python op's gradient."""
    import subprocess
    import sys

    assert _cpu_host.load()  # (the library built and cached for the child)
    proc = subprocess.Popen([sys.executable, "-c", _FORK_BEFORE_LOAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the parent and its hung child
        proc.communicate()
        pytest.fail("the forked child hung")
    assert proc.returncode == 0, err[-2000:]


def test_a_cache_directory_gone_leaves_the_python_ops(tmp_path, monkeypatch, caplog):
    """Review finding: where the cache directory could not hold a build (removed by a tmp
    cleaner, read-only) ``load`` raised on every call; it logs once and returns False, and the
    op still runs (through its Python kernel, or the C++ one loaded earlier in this process)."""
    gone = tmp_path / "gone"
    monkeypatch.setattr(_cpu_native, "_private_dir", lambda: str(gone))
    monkeypatch.setattr(_cpu_host, "_state", {})
    with caplog.at_level(logging.WARNING, logger="inductor_embed"):
        assert _cpu_host.load() is False
        assert _cpu_host.load() is False  # recorded: not tried again
    assert caplog.text.count("could not build the C++ host") == 1
    args = _case(torch.float32, torch.int64)
    assert all(torch.equal(a, b) for a, b in zip(FAST(*args, [], True), PYTHON(*args, [], True)))


# --- one_hot_linear's forward and backward ------------------------------------------------------

OH_FAST = torch.ops.inductor_embed.one_hot_linear_cpu_fast.default
OH_PYTHON = torch.ops.inductor_embed.one_hot_linear_cpu.default
OH_BWD_FAST = torch.ops.inductor_embed.one_hot_linear_backward_cpu_fast.default
OH_BWD_PYTHON = torch.ops.inductor_embed.one_hot_linear_backward_cpu.default


@pytest.fixture
def one_hot_spy(monkeypatch):
    """The Python one-hot ops' runs (their bodies' ``_checks`` calls)."""
    from inductor_embed.lowering import one_hot_linear

    calls = _spy_on(monkeypatch, one_hot_linear._checks, "one_hot_linear")
    calls_bwd = _spy_on(monkeypatch, one_hot_linear._checks, "one_hot_linear_backward")
    return calls, calls_bwd


def _one_hot_case(lead=(6, 5), itype=torch.int64):
    """Three fields of a [*lead] batch (one multi-hot: a bag of 3), 4 + 7 + 5 columns of a
    [D=9, V=20] weight at offsets 0, 4, 13 (columns 11-12 unused), transposed storage."""
    g = torch.Generator().manual_seed(len(lead))
    indices = [torch.randint(0, n, (*lead, b), generator=g).to(itype) for n, b in ((4, 1), (7, 3), (5, 1))]
    weight = torch.randn(20, 9, generator=g).t()  # [9, 20], column stride 9
    return indices, [4, 7, 5], [0, 4, 13], weight, torch.randn(9, generator=g)


@pytest.mark.parametrize("itype", [torch.int64, torch.int32], ids=["i64", "i32"])
@pytest.mark.parametrize("lead", [(6, 5), (700,), (4096, 3)], ids=["2d", "1d", "big"])
def test_the_cpp_host_gives_the_python_one_hot_results(lead, itype, one_hot_spy):
    """Forward with and without a bias, backward in both layouts with and without the bias's
    gradient, multi-hot fields, strided weight, 1-D and 2-D batches (the big one past
    THREADED_BYTES): the Python ops' results bit for bit, with no call into Python."""
    indices, classes, offsets, weight, bias = _one_hot_case(lead, itype)
    for b in (bias, None):
        got = OH_FAST(indices, classes, offsets, weight, b)
        assert not one_hot_spy[0]
        assert torch.equal(got, OH_PYTHON(indices, classes, offsets, weight, b))
        one_hot_spy[0].clear()
    grad = torch.randn(*lead, 9)
    for has_bias in (True, False):
        for v_major in (True, False):
            args = (grad, indices, classes, offsets, 20, has_bias, v_major, torch.float32)
            got = OH_BWD_FAST(*args)
            assert not one_hot_spy[1]
            assert torch.equal(got, OH_BWD_PYTHON(*args))
            one_hot_spy[1].clear()


@pytest.mark.parametrize("form", ["short bias", "field past the weight", "lead mismatch", "bad index"])
def test_one_hot_calls_it_does_not_take_go_to_the_python_op(form, one_hot_spy):
    """What the C++ kernels hand over: the Python ops' results, or their errors (the same
    message)."""
    indices, classes, offsets, weight, bias = _one_hot_case()
    if form == "short bias":
        bias = bias[:8]
    elif form == "field past the weight":
        offsets = [0, 4, 16]
    elif form == "lead mismatch":
        indices[1] = indices[1][:5]
    else:
        indices[2] = indices[2].clone()
        indices[2][1, 2, 0] = 5
    def run(op):
        try:
            return op(indices, classes, offsets, weight, bias)
        except RuntimeError as e:
            return str(e)

    got = run(OH_FAST)
    assert one_hot_spy[0]  # the Python op ran
    want = run(OH_PYTHON)
    assert got == want if isinstance(want, str) else torch.equal(got, want)


def test_a_compiled_one_hot_linear_calls_it(monkeypatch):
    """A compiled Linear on a one-hot encoding, forward and backward, runs the C++ kernels: the
    same output and gradients as with the Python ops (``_internal.cpp_host_on_cpu`` off)."""
    import copy

    import torch._dynamo
    import torch.nn.functional as F

    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 8)
    x = torch.randint(0, 40, (64,))
    # (the Python ops' native calls: tracing runs the ops' fakes, so only a Python op at run time)
    spies = [_spy_on(monkeypatch, _cpu_native, name) for name in ("one_hot_linear", "one_hot_linear_backward")]
    results = []
    for cpp in (True, False):
        mine = copy.deepcopy(lin)
        torch._dynamo.reset()
        with _internal.patch(cpp_host_on_cpu=cpp):
            out = torch.compile(lambda i, m=mine: m(F.one_hot(i, 40).float()), backend="inductor_embed")(x)
            out.sum().backward()
        results.append((out, mine.weight.grad, mine.bias.grad))
        assert bool(spies[0]) != cpp and bool(spies[1]) != cpp
    assert all(torch.equal(a, b) for a, b in zip(*results))
    torch._dynamo.reset()
