"""Tier 2: ``multi_embedding_sum`` and its backward. opcheck (schema, fake impl, autograd
registration, AOT with dynamic shapes), forward and gradients vs eager's sum of lookups
(broadcast indices, padding_idx, scale_grad_by_freq), errors; on both the ATen path and the
Triton path (the Triton interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from inductor_embed.lowering.multi_embedding_ref import multi_embedding_sum_backward_ref
from tests._util import deterministic

OP = torch.ops.inductor_embed.multi_embedding_sum.default
BWD = torch.ops.inductor_embed.multi_embedding_sum_backward.default

CASES = {
    # id: (vocabs, index shapes, D, dtype, index dtype, padding_idx, scale_grad_by_freq)
    "B4xS5-T3-D6-bert-fp32": ((11, 5, 2), ((4, 5), (5,), (4, 5)), 6, torch.float32, torch.int64,
                              (0, -1, -1), (False,) * 3),
    "B3xS4-T2-D8-pos1S-bf16": ((9, 4), ((3, 4), (1, 4)), 8, torch.bfloat16, torch.int64, (-1, -1), (False, False)),
    "B13-T9-D3-atoms-fp16-int32": (tuple(range(3, 12)), ((13,),) * 9, 3, torch.float16, torch.int32,
                                   (-1,) * 9, (False,) * 9),
    "B2xS6-T2-D4-freq-broadcast-fp32": ((7, 6), ((2, 6), (6,)), 4, torch.float32, torch.int64, (-1, 3), (True, True)),
    "B0xS3-T2-D3-empty-fp32": ((5, 3), ((0, 3), (3,)), 3, torch.float32, torch.int64, (-1, -1), (False, False)),
}


def _make(case, requires_grad=True, device="cpu"):
    vocabs, shapes, d, dtype, idt, pad, freq = CASES[case]
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(v, d, generator=g).to(device, dtype).requires_grad_(requires_grad) for v in vocabs]
    indices = [torch.randint(0, v, s, generator=g, dtype=idt).to(device) for v, s in zip(vocabs, shapes)]
    return weights, indices, list(pad), list(freq)


def _eager(weights, indices, pad, freq):
    out = None
    for w, i, p, s in zip(weights, indices, pad, freq):
        e = F.embedding(i, w, padding_idx=None if p < 0 else p, scale_grad_by_freq=s)
        out = e if out is None else out + e
    return out


def _lead(indices):
    return torch.broadcast_shapes(*(i.shape for i in indices))


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_forward(case):
    weights, indices, pad, freq = _make(case)
    opcheck(OP, (weights, indices, pad, freq))


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_backward(case, path):
    weights, indices, pad, freq = _make(case, requires_grad=False, device=path)
    grad = torch.randn(*_lead(indices), weights[0].shape[1]).to(path, weights[0].dtype)
    opcheck(BWD, (grad, indices, [w.shape[0] for w in weights], [w.shape[1] for w in weights], pad, freq))


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_eager(case, path):
    weights, indices, pad, freq = _make(case, device=path)
    out = OP(weights, indices, pad, freq)
    ref = _eager([w.detach() for w in weights], indices, pad, freq)
    # The same adds in the same order and dtype: exact in every dtype.
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    # fp32 oracle for the gradients: the op accumulates half types in fp32 and rounds once.
    ref_w = [w.detach().float().requires_grad_() for w in weights]
    _eager(ref_w, indices, pad, freq).backward(grad.float())
    tol = {"rtol": 1e-5, "atol": 1e-5} if weights[0].dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for w, r in zip(weights, ref_w):
        torch.testing.assert_close(w.grad, r.grad.to(w.dtype), **tol)


def test_deterministic_backward_is_the_reference(path):
    weights, indices, pad, freq = _make("B4xS5-T3-D6-bert-fp32", requires_grad=False, device=path)
    grad = torch.randn(4, 5, 6, device=path)
    args = (grad, indices, [11, 5, 2], [6, 6, 6], pad, freq)
    with deterministic():
        first, second = BWD(*args), BWD(*args)
    assert torch.equal(first, second)
    assert torch.equal(first, multi_embedding_sum_backward_ref(*args))


@pytest.mark.parametrize("bad", [5, -1])
def test_out_of_range_index_raises(bad):
    weights, indices, pad, freq = _make("B4xS5-T3-D6-bert-fp32", requires_grad=False)
    indices[1][2] = bad
    with pytest.raises((IndexError, RuntimeError), match="out of range|index"):
        OP(weights, indices, pad, freq)


def test_bad_inputs_raise():
    weights, indices, pad, freq = _make("B4xS5-T3-D6-bert-fp32", requires_grad=False)
    with pytest.raises(RuntimeError, match="width 7"):
        OP([weights[0], torch.randn(5, 7), weights[2]], indices, pad, freq)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        OP(weights, [indices[0], indices[1].float(), indices[2]], pad, freq)
    with pytest.raises(RuntimeError, match="shape|broadcast|size"):
        OP(weights, [indices[0], torch.zeros(3, dtype=torch.int64), indices[2]], pad, freq)


@pytest.mark.parametrize("case", ["wide", "narrow", "narrow_bf16", "narrow_fp16"])
def test_cpu_backward_takes_multi_embeddings_rule_per_index_shape(case):
    """Tables whose indices share a shape share one gradient and take multi_embedding's CPU
    rule together: tables of any float dtype (any width) one native call (other narrow ones,
    with scale_grad_by_freq: test_cpu_backward_splits_tables_by_width); a
    lone table (here the broadcast [S] one, summed over the batch first, as eager does) the
    native call at any width. Deterministic mode: the native call, one per index shape."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from inductor_embed.lowering import _cpu_native
    from inductor_embed.lowering.multi_embedding import CPU_EAGER_MIN_DIM
    from inductor_embed.lowering.multi_embedding_sum import _cpu_backward_sum

    dtype = {"narrow_bf16": torch.bfloat16, "narrow_fp16": torch.float16}.get(case, torch.float32)
    d = 2 * CPU_EAGER_MIN_DIM if case == "wide" else 8
    indices = [torch.randint(0, 10, (3, 4)), torch.arange(4), torch.randint(0, 2, (3, 4))]
    grad = torch.randn(3, 4, d).to(dtype)
    args = ([10, 4, 2], [d] * 3, [-1] * 3, [False] * 3)

    def targets():
        gm = make_fx(lambda g, i: _cpu_backward_sum(g, i, *args))(grad, indices)
        return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]

    op_for_all = case == "wide" or _cpu_native.lib() is not None
    ops = targets()
    assert ops.count("aten.embedding_dense_backward.default") == (0 if op_for_all else 2)
    assert ops.count("aten.sum.dim_IntList") == 1  # the [S] table's reduction over the batch
    assert _cpu_ops(ops) == (2 if op_for_all else 1)
    with deterministic():
        ops = targets()
    assert "aten.embedding_dense_backward.default" not in ops
    assert _cpu_ops(ops) == 2  # one per index shape
    ref = multi_embedding_sum_backward_ref(grad.float(), indices, *args)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for mode in (False, True):
        torch.use_deterministic_algorithms(mode)
        try:
            got = _cpu_backward_sum(grad, indices, *args)
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(torch.cat([g.float().reshape(-1) for g in got]), ref, **tol)


def test_sparse_tables_get_eagers_coalesced_gradient(path):
    """A sparse word table (with padding) and a sparse broadcast position table, a dense
    third: on both paths, each sparse gradient is eager's after .coalesce()."""
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(v, 6, generator=g).to(path).requires_grad_() for v in (40, 12, 3)]
    ids = torch.randint(0, 40, (5, 12), generator=g).to(path)
    ids[0, :4] = 1
    indices = [ids, torch.arange(12, device=path), torch.randint(0, 3, (5, 12), generator=g).to(path)]
    pad, sparse = [1, -1, -1], [True, True, False]
    out = torch.ops.inductor_embed.multi_embedding_sum(weights, indices, pad, [False] * 3, sparse)
    refs = [w.detach().clone().requires_grad_() for w in weights]
    ref = sum(F.embedding(i, w, padding_idx=None if p < 0 else p, sparse=s)
              for w, i, p, s in zip(refs, indices, pad, sparse))
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for w, r, s in zip(weights, refs, sparse):
        assert w.grad.is_sparse == s
        if s:
            want = r.grad.coalesce()
            assert torch.equal(w.grad._indices(), want.indices())
            torch.testing.assert_close(w.grad._values(), want.values(), rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(w.grad, r.grad, rtol=1e-5, atol=1e-5)


def _cpu_ops(targets: list[str]) -> int:
    """Calls of the CPU backward op among a graph's targets, either form (the C++ host's
    where the native kernels are built, the Python op's where not)."""
    return sum(targets.count(f"inductor_embed.multi_embedding_backward_cpu{s}.default") for s in ("", "_fast"))
