"""The sparse_tables workload (optimizer step timed, FBGEMM's fused TBE beside it, RSS per
provider in its own process) and multi_table's and one_hot_linear's model variants, at tiny sizes.

FBGEMM's tests run wherever ``fbgemm_gpu`` imports (CI installs fbgemm-gpu-cpu==1.8.0
next to torch 2.13 on x86_64) and skip only where it does not."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

import inductor_embed
from bench import cli, rss
from bench.config import Case, Preset
from bench.presets import PRESETS, sparse
from bench.providers import PROVIDERS, fbgemm_status
from bench.runner import _step
from bench.workloads import WORKLOADS

CPU = torch.device("cpu")
PROVIDER_NAMES = ("eager", "torch.compile", "inductor_embed", "fbgemm_tbe")
needs_fbgemm = pytest.mark.skipif(fbgemm_status()[0] is None, reason=fbgemm_status()[1])


def test_sparse_tables_run():
    """Every provider runs the workload (two optimizers, two distributions), matches eager's
    output and its gradients (sparse ones after coalesce), and FBGEMM is there exactly when
    fbgemm_gpu imports, with the reason when it does not."""
    cases = (sparse("tiny", 3, 500, 8, (32,), ("zipf1.15",))
             + sparse("tiny", 2, 300, 4, (16,), ("uniform",), variant="sgd"))
    preset = Preset("t", "t", tuple(cases), iters=2, warmup=1, copy_mib=1, providers=PROVIDER_NAMES,
                    warm_up=False)
    res = cli.run(preset, CPU)
    assert [c.case for c in res.cases] == cases
    for c in res.cases:
        got = {r.provider: r for r in c.results}
        for name in PROVIDER_NAMES[:3]:
            assert got[name].status == "ok" and got[name].timed, (c.case.label, name, got[name].note)
        assert c.bytes.bwd > 0
        tbe = got["fbgemm_tbe"]
        if fbgemm_status()[0]:
            assert tbe.status == "ok" and tbe.timed, tbe.note
            assert "fused optimizer" in tbe.note  # its table gradients are not compared, and it says so
        else:
            assert tbe.status == "skipped" and "fbgemm_gpu does not import" in tbe.note


def _one_step_tables(case: Case) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Eager: the tables, one step's indices, output and the tables' coalesced gradients."""
    wl = WORKLOADS["sparse_tables"]
    model = wl.build(case, CPU)
    (x,) = wl.inputs(case, CPU)
    out = model(x)
    out.backward(torch.ones_like(out))
    grads = [t.weight.grad for t in model.tables]
    assert all(g.is_sparse for g in grads)
    return [t.weight.detach().clone() for t in model.tables], x, out.detach(), [g.coalesce().to_dense() for g in grads]


@needs_fbgemm
def test_fbgemm_fused_sgd_is_eagers_step():
    """The fused EXACT_SGD TBE, fed the workload's inputs through ``lookup_bags``, gives
    eager's output and moves every row by -lr x eager's gradient (a hot Zipf row included):
    the adapter lays out tables and indices as eager's cat does."""
    (case,) = sparse("tiny", 3, 200, 8, (64,), ("zipf1.15",), variant="sgd")
    wl = WORKLOADS["sparse_tables"]
    w0, x, want_out, want_grads = _one_step_tables(case)
    model = wl.build(case, CPU)
    tbe = wl.fbgemm(model, case, CPU)
    out = tbe.module(*tbe.adapt(x))
    torch.testing.assert_close(out, want_out)
    out.backward(torch.ones_like(out))
    lr = 1e-2  # sparse_tables.OPTIMIZERS["sgd"]
    for w_before, w_after, g in zip(w0, tbe.tbe.split_embedding_weights(), want_grads):
        torch.testing.assert_close((w_before - w_after) / lr, g, atol=1e-3, rtol=1e-3)
    assert tbe.grads()[:3] == [None] * 3 and all(g is not None for g in tbe.grads()[3:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux's")
def test_rss_growth_in_own_process():
    """The child process measures the first step's growth (SparseAdam's two dense moments:
    2 x the tables) and a steady step's, far below the tables' size (sparse gradients)."""
    (case,) = sparse("rss", 2, 100_000, 16, (256,), ("uniform",))
    tables = 2 * 100_000 * 16 * 4
    got = rss.measure(case, "eager", steps=2, warmup=1)
    assert got.note == "" and got.step_bytes is not None and got.first_bytes is not None
    assert got.first_bytes >= 1.8 * tables, got
    assert 0 <= got.step_bytes < tables / 4, got


def test_step_includes_the_optimizer():
    """``_step(optimize=True)`` moves the shared tables; the correctness check's step does not."""
    (case,) = sparse("tiny", 2, 50, 4, (8,), ("uniform",))
    wl = WORKLOADS["sparse_tables"]
    model = wl.build(case, CPU)
    eager = PROVIDERS["eager"].build(wl, case, model, CPU)
    (x,) = wl.inputs(case, CPU)
    grad = torch.ones(8, 1)
    w = model.tables[0].weight.detach().clone()
    _step(eager, (x,), grad)
    assert torch.equal(w, model.tables[0].weight)
    _step(eager, (x,), grad, optimize=True)
    assert not torch.equal(w, model.tables[0].weight)
    # the compiled providers share the eager model's tables and optimizer (2 GiB tables at the key size)
    comp = PROVIDERS["torch.compile"].build(wl, case, model, CPU)
    assert comp.params[0] is eager.params[0] and comp.step is eager.step


@pytest.mark.parametrize("variant", ["fm_slices", "fm_bias", "scaled"])
def test_fm_and_scaled_variants_are_rewritten(variant):
    """The cpu-quick cases of the FM and scaled one-hot forms are ones the patterns rewrite (else the
    bench would time plain Inductor twice), and FBGEMM's TBE runs the FM models too."""
    case = next(c for c in PRESETS["cpu-quick"].cases if c.variant == variant)
    case = dataclasses.replace(case, batch=16)
    wl = WORKLOADS[case.workload]
    model = wl.build(case, CPU)
    inputs = wl.inputs(case, CPU)
    report = inductor_embed.explain(model, *inputs)
    assert [r.pattern for r in report.rewrites] == [wl.pattern], str(report)
    out = model(*inputs)
    assert out.shape == ((16, 1) if case.workload == "multi_table" else (16, case.dims[0]))
    if case.workload == "multi_table" and fbgemm_status()[0]:
        tbe = wl.fbgemm(model, case, CPU)
        torch.testing.assert_close(tbe.module(*tbe.adapt(*inputs)), out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant, pattern", [("sum", "multi_embedding_sum"), ("sum_noop", "multi_embedding_sum"),
                                              ("mf", "independent_lookups"),
                                              ("shared", "multi_embedding_cat")])
def test_sum_and_mf_variants_are_rewritten(variant, pattern):
    """The sums of lookups, independent lookups and column writes in cpu-quick: rewritten by
    their patterns."""
    case = dataclasses.replace(next(c for c in PRESETS["cpu-quick"].cases if c.variant == variant), batch=16)
    wl = WORKLOADS[case.workload]
    model = wl.build(case, CPU)
    inputs = wl.inputs(case, CPU)
    report = inductor_embed.explain(model, *inputs)
    assert [r.pattern for r in report.rewrites] == [pattern], str(report)
    want = {"sum": (16, case.dims[0]), "sum_noop": (16, case.dims[0]), "mf": (16,),
            "shared": (16, sum(case.dims))}[variant]
    assert model(*inputs).shape == want
