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


@pytest.fixture
def spy(monkeypatch):
    """Counts the Python op's runs (its body's ``embedding_grads_cpu``): none where the C++
    kernel took the call."""
    from inductor_embed.lowering import multi_embedding

    assert _cpu_host.load()
    calls = []
    run = multi_embedding.embedding_grads_cpu
    monkeypatch.setattr(multi_embedding, "embedding_grads_cpu", lambda *a, **k: (calls.append(1), run(*a, **k))[1])
    return calls


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
    cache (1 MiB or more) and an empty batch: the Python op runs, with its results."""
    grad, indices, rows, dims, pads, scale, columns = _case(torch.float32, torch.int64)
    zeroed, checked = [], True
    if form == "unchecked":
        checked = False
    elif form == "zeroed":
        zeroed = [1, 2, 9]
    elif form == "scale_grad_by_freq":
        scale = [False, True, False, False]
    elif form == "cached table":
        rows = [50, 1000, 5000, 2]  # 5,000 x 64 fp32: 1.3 MB
        indices[2] = indices[2] * 70
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
