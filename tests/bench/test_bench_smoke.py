"""The benchmark suite cannot rot: its smoke preset runs through ``python -m bench``'s
code path (every provider kind, the compile groups, the fp32 reference for bf16, the
report) into a temporary folder. Nothing about speed is asserted."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

import inductor_embed
from bench import cli, report
from bench.config import Case, RunResult
from bench.distributions import hottest_share, sample
from bench.presets import PRESETS
from bench.providers import PROVIDERS, fbgemm_status
from bench.workloads import WORKLOADS


def _smoke_result(tmp_path) -> tuple[RunResult, list]:
    assert cli.main(["--preset", "smoke", "--out", str(tmp_path), "-q"]) == 0
    (js,) = tmp_path.glob("*/smoke.json")
    return report.load(js), sorted(p.name for p in js.parent.iterdir())


def test_smoke_preset(tmp_path, capsys):
    res, files = _smoke_result(tmp_path)
    preset = PRESETS["smoke"]

    assert [c.case for c in res.cases] == [c for c in preset.cases]
    assert res.meta.preset == "smoke" and res.meta.torch == torch.__version__
    assert res.meta.copy_gbps > 0 and len(res.meta.git_sha) >= 7
    for c in res.cases:
        assert c.bytes.fwd > 0 and c.bytes.bwd > 0
        got = {r.provider: r for r in c.results}
        assert list(got) == list(preset.providers)
        for r in c.results:
            assert r.status != "failed", (c.case.label, r.provider, r.note)
            if r.status == "skipped":
                assert r.note, (c.case.label, r.provider)
                continue
            assert r.fwd and r.bwd and r.fwd_bwd and r.fwd_bwd.median_ms > 0
            assert r.fwd_bwd.p20_ms <= r.fwd_bwd.median_ms <= r.fwd_bwd.p80_ms
            # Every compiled provider matches the reference; eager's own half-type backward
            # accumulates in the half type and may not.
            if r.provider != "eager" or c.case.dtype == "float32":
                assert r.status == "ok", (c.case.label, r.provider, r.note)
        for name in ("eager", "torch.compile"):
            assert got[name].timed, (c.case.label, name)
        if c.case.workload == "multi_table":
            assert got["inductor_embed"].timed and got["inductor_embed"].rewrites == 1
        if c.case.workload == "table_batched_bags" and not hasattr(inductor_embed.config, "multi_embedding_bag"):
            assert got["inductor_embed"].status == "skipped" and "not implemented" in got["inductor_embed"].note
        if c.case.workload == "single_table":
            assert got["inductor_embed.op"].timed
        if fbgemm_status()[0] and c.case.dtype == "float32":
            assert got["fbgemm_tbe"].timed, got["fbgemm_tbe"].note

    # The first case of a group compiled (a compile time), the second (another batch
    # size, the batch being dynamic) reused the compiled code.
    multi = [c for c in res.cases if c.case.workload == "multi_table"]
    assert multi[0].case.batch != multi[1].case.batch
    for name in ("torch.compile", "inductor_embed"):
        assert multi[0].get(name).compile_s > 0 and multi[1].get(name).compile_s is None
        assert multi[1].get(name).vs_eager.n == PRESETS["smoke"].iters

    workloads = {c.case.workload for c in res.cases}
    assert "smoke.json" in files and "smoke.md" in files
    pngs = {f"smoke_{w}.png" for w in workloads}
    if importlib.util.find_spec("matplotlib"):  # a test dependency; an offline GPU machine may lack it
        assert pngs <= set(files)
    else:
        assert not pngs & set(files)
    md = (tmp_path / res.meta.results_dir / "smoke.md").read_text()
    assert "## Summary (forward + backward)" in md and "GB/s" in md
    assert "## Summary" not in capsys.readouterr().err

    # The json round-trips, and --report redraws markdown and plots from it.
    assert RunResult.from_dict(res.to_dict()) == res
    js = tmp_path / res.meta.results_dir / "smoke.json"
    (js.parent / "smoke.md").unlink()
    assert cli.main(["--report", str(js)]) == 0
    assert (js.parent / "smoke.md").read_text() == md


@pytest.mark.parametrize("name", ["one_hot_linear", "tied_bags"])
def test_pattern_hooks(name):
    """The hooks' models are complete, and they run exactly when their pattern exists."""
    wl = WORKLOADS[name]
    assert (wl.unavailable() is None) == hasattr(inductor_embed.config, wl.pattern)
    if wl.unavailable():
        assert wl.pattern in wl.unavailable()
    case = dataclasses.replace(next(c for c in PRESETS["cpu-quick"].cases if c.workload == name), batch=8)
    model = wl.build(case, torch.device("cpu"))
    out = model(*wl.inputs(case, torch.device("cpu")))
    assert out.shape == (8, case.dims[0])
    out.sum().backward()
    assert all(w.grad is not None for w in model.weights())
    assert wl.bytes(case).fwd > 0


def test_presets_are_well_formed():
    for p in PRESETS.values():
        assert p.cases and p.iters >= 1
        assert all(c.workload in WORKLOADS for c in p.cases)
        assert all(n in PROVIDERS for n in p.providers or ())
    gpu = PRESETS["gpu"]
    assert {c.workload for c in gpu.cases} == set(WORKLOADS)
    assert {c.dist for c in gpu.cases if c.workload == "single_table"} >= {
        "uniform", "halves", "same", "hot20", "zipf1.15"}
    # FBGEMM's TBE benchmark defaults
    assert Case("table_batched_bags", "FBGEMM defaults T=32 rows=100000 D=128 L=20", (100_000,) * 32,
                (128,) * 32, 512, "zipf1.15", bag_size=20) in gpu.cases


def test_distributions():
    rng = np.random.default_rng(0)
    for dist in ("uniform", "halves", "same", "hot20", "zipf1.15"):
        idx = sample(dist, 20_000, 1_000, rng)
        assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < 1_000
    assert hottest_share(sample("same", 100, 10, rng)) == 1.0
    assert 0.45 < hottest_share(sample("halves", 20_000, 10_000, rng)) < 0.55
    assert 0.15 < hottest_share(sample("hot20", 20_000, 1_000_000, rng)) < 0.25
    big = sample("zipf1.15", 100_000, 1_000_000, rng)
    assert big.max() < 1_000_000 and hottest_share(big) > 0.05
    assert sample("uniform", 3, 1, rng).tolist() == [0, 0, 0]


def test_list(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in (*PRESETS, *WORKLOADS, *PROVIDERS))


def test_an_inference_preset_times_the_forward_alone(tmp_path, monkeypatch):
    """An inference preset: the forward under inference_mode, models in eval(), outputs
    checked, the freezing providers run, and the report says what the step is."""
    from bench.config import Preset

    cases = (tuple(Case("multi_table", "T=2", (50, 80), (4, 8), b) for b in (1, 16))
             + (Case("table_batched_bags", "T=2 bags", (50, 50), (8, 8), 16, "zipf1.15", bag_size=4),))
    names = ("eager", "torch.compile", "torch.compile+freezing", "inductor_embed", "inductor_embed+freezing",
             "fbgemm_tbe")
    monkeypatch.setitem(PRESETS, "infer-smoke", Preset("infer-smoke", "tiny inference", cases, iters=2, warmup=1,
                                                       copy_mib=8, warm_up=False, inference=True, providers=names))
    assert cli.main(["--preset", "infer-smoke", "--out", str(tmp_path), "-q"]) == 0
    (js,) = tmp_path.glob("*/infer-smoke.json")
    res = report.load(js)
    assert res.meta.inference
    for c in res.cases:
        got = {r.provider: r for r in c.results}
        for name in names[:5]:
            r = got[name]
            assert r.status == "ok", (c.case.label, name, r.note)
            assert r.fwd and r.bwd is None and r.fwd_bwd == r.fwd
        assert got["inductor_embed"].rewrites and got["inductor_embed+freezing"].rewrites
        ratio, peer, why = report.fastest_peer(c)
        assert (ratio is None) == bool(why) and (peer in report.PEERS or ratio is None)
    text = (js.parent / "infer-smoke.md").read_text()
    assert "## Summary (forward (inference))" in text and "eager fwd ms" in text
    assert "Fastest peer, all rows: met on" in text


def test_training_presets_leave_the_inference_only_providers_out():
    assert [n for n, p in PROVIDERS.items() if p.inference_only] == ["torch.compile+freezing",
                                                                     "inductor_embed+freezing"]
    assert PRESETS["cpu-infer"].inference and not PRESETS["cpu-quick"].inference


@pytest.mark.parametrize("variant", ["dlrm", "deepfm", "bert", "gnn", "two_tower"])
def test_whole_models_run_and_get_rewritten(variant):
    """cpu-models' families, shrunk: eager forward + backward reach every table, bytes are
    counted, and the pass rewrites something in each (whatever fires, fires)."""
    from bench.workloads.models import MODELS

    wl = WORKLOADS["models"]
    case = next(c for c in PRESETS["cpu-models"].cases if c.variant == variant)
    small = dataclasses.replace(case, vocabs=tuple(min(v, 64) for v in case.vocabs),
                                dims=tuple(min(d, 32) for d in case.dims), batch=4)
    if variant == "bert":  # a position per token; the layer's 12 heads need a width they divide
        from bench.workloads.models import SEQ

        small = dataclasses.replace(small, vocabs=(64, SEQ, 2), dims=(24,) * 3)
    model = wl.build(small, torch.device("cpu"))
    assert type(model) is MODELS[variant]
    inputs = wl.inputs(small, torch.device("cpu"))
    model(*inputs).sum().backward()
    assert all(w.grad is not None for w in model.weights())
    assert wl.bytes(small).fwd > 0 and wl.bytes(case).bwd > wl.bytes(small).bwd
    torch._dynamo.reset()
    assert inductor_embed.explain(model, *inputs).rewrites


def test_a_training_preset_refuses_the_freezing_providers():
    with pytest.raises(SystemExit, match="inference presets only"):
        cli.run(PRESETS["smoke"], torch.device("cpu"), providers=["eager", "torch.compile+freezing"])


def test_a_failed_or_wrong_inductor_embed_row_misses_the_goal():
    from bench.config import Bytes, CaseResult, ProviderResult, Ratio, Stat

    stat = Stat(median_ms=1.0, p20_ms=1.0, p80_ms=1.0, n=3)
    fast = Ratio(median=2.0, p20=2.0, p80=2.0, n=3)
    case = Case("single_table", "p", (10,), (4,), 8)
    for status in ("failed", "mismatch"):
        c = CaseResult(case, Bytes(1, 1), (ProviderResult("eager", "ok", fwd_bwd=stat),
                                          ProviderResult("torch.compile", "ok", fwd_bwd=stat),
                                          ProviderResult("fbgemm_tbe", "skipped", "no FBGEMM equivalent"),
                                          ProviderResult("inductor_embed", status, fwd_bwd=stat, vs_eager=fast,
                                                         vs_compile=fast)))
        assert report.fastest_peer(c)[0] == 0.0
        assert report.goal_cell(c).endswith("✗") and report.goal_count([c]) == "met on 0 of 1 rows"


def test_partitioned_scatter_is_a_static_gpu_peer():
    """Inductor's partitioned scatter: a GPU peer in the goal column, refused on the CPU with a
    reason; built, it compiles with static shapes (the pass skips dynamic ones), the runner's
    dynamic-dimension hints dropped by fresh views of the inputs."""
    from bench.providers import PartitionedScatter

    p = PROVIDERS["torch.compile+partitioned_scatter"]
    assert isinstance(p, PartitionedScatter) and p.name in report.PEERS
    assert "GPU peer" in p.unavailable(WORKLOADS["single_table"], torch.device("cpu"))
    assert p.name in PRESETS["gpu-check-bf16"].providers

    case = Case("single_table", "p", (50,), (8,), 16, "same")
    wl = WORKLOADS["single_table"]
    model = wl.make(case, torch.float32)
    runner = p.build(wl, case, model, torch.device("cpu"))
    shapes = []
    seen = lambda gm, ex: (shapes.extend(type(s).__name__ for t in ex if isinstance(t, torch.Tensor)  # noqa: E731
                                         for s in t.shape), gm)[1]
    torch._dynamo.reset()
    for b in (16, 24):
        x = torch.zeros(b, dtype=torch.int64)
        torch._dynamo.maybe_mark_dynamic(x, 0)
        (xs,) = runner.adapt(x)
        assert xs.data_ptr() == x.data_ptr()  # a view, not a copy
        torch.compile(model, backend=seen, dynamic=False)(xs)
    assert shapes and "SymInt" not in shapes
    out = runner.fn(*runner.adapt(torch.zeros(16, dtype=torch.int64)))
    assert out.shape[0] == 16
    torch._dynamo.reset()
