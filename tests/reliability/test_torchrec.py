"""torchrec: an EmbeddingBagCollection sharded by DistributedModelParallel (table-wise, two
processes on gloo, the CPU), compiled with inductor_embed, against the same model run eagerly.

torchrec's sharded module is table-batched already: its lookups are one FBGEMM TBE call per
group of tables, with the optimizer fused into the backward. There is nothing for the plugin
to fuse there, and it must not touch it. On the CPU (fbgemm-gpu-cpu 1.8) the TBE forward op
has no fake-tensor kernel, so Dynamo breaks the graph at it and runs it eagerly; its output
reaches the next graph as an input, which the plugin recognises (by the output's autograd
node) and logs as left to torchrec. Where FBGEMM's ops do trace (CUDA), the op itself is in
the graph and is logged the same way.

The tests skip only where torchrec does not import (scripts/setup.sh installs it on x86_64
Linux with torch 2.13; the GPU machine, torch 2.11 and no network, has none).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from tests.reliability._util import LogLines, dist_env, run_ranks

TABLES = ((40, 4), (30, 8), (20, 4))  # (rows, dim) of t0, t1, t2
BATCH, BAG = 4, 2  # a fixed bag length: the same shapes every step, so no recompile
STEPS = 2
LEFT = "torchrec/FBGEMM table-batched embedding (already fused): left to torchrec"


def _torchrec():
    return pytest.importorskip(
        "torchrec.distributed.model_parallel",
        reason="torchrec does not import here (scripts/setup.sh installs it on x86_64 Linux with torch 2.13)")


def _model(device: torch.device) -> nn.Module:
    import torchrec

    class Ranker(nn.Module):
        """An EmbeddingBagCollection of three tables, then a Linear on the pooled features."""

        def __init__(self):
            super().__init__()
            self.ebc = torchrec.EmbeddingBagCollection(tables=[
                torchrec.EmbeddingBagConfig(name=f"t{k}", embedding_dim=d, num_embeddings=n, feature_names=[f"f{k}"],
                                            pooling=torchrec.PoolingType.SUM)
                for k, (n, d) in enumerate(TABLES)], device=device)
            self.head = nn.Linear(sum(d for _, d in TABLES), 1, device=None if device.type == "meta" else device)

        def forward(self, kjt):
            return self.head(self.ebc(kjt).values()).squeeze(-1)

    return Ranker()


def _batch(rank: int, step: int):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(100 * rank + step)
    values = torch.cat([torch.randint(0, n, (BATCH * BAG,), generator=g) for n, _ in TABLES])
    lengths = torch.full((len(TABLES) * BATCH,), BAG)
    return KeyedJaggedTensor(keys=[f"f{k}" for k in range(len(TABLES))], values=values, lengths=lengths), \
        torch.randn(BATCH, generator=g)


def _state(dmp) -> dict[str, torch.Tensor]:
    """Every entry of the state dict, a sharded table as this rank's shards."""
    out = {}
    for name, v in dmp.state_dict().items():
        if hasattr(v, "local_shards"):
            shards = [s.tensor for s in v.local_shards()]
            v = torch.cat([s.flatten() for s in shards]) if shards else torch.empty(0)
        out[name] = v.detach().clone()
    return out


def _train(rank: int, compiled: bool) -> dict:
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    torch.manual_seed(0)
    model = _model(torch.device("meta"))
    sharder = EmbeddingBagCollectionSharder()  # its default: FBGEMM's TBE with a fused SGD step
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=dist.get_world_size(), compute_device="cpu"),
        constraints={f"t{k}": ParameterConstraints(sharding_types=["table_wise"]) for k in range(len(TABLES))})
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    torch.manual_seed(1)  # the same initial tables and Linear in both runs
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                   device=torch.device("cpu"), plan=plan, sharders=[sharder])
    opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                lambda params: torch.optim.SGD(params, lr=0.1))
    step_fn = torch.compile(dmp, backend="inductor_embed") if compiled else dmp
    outs, losses = [], []
    for step in range(STEPS):
        kjt, y = _batch(rank, step)
        opt.zero_grad()
        out = step_fn(kjt)
        loss = torch.nn.functional.mse_loss(out, y)
        loss.backward()  # the tables' SGD step runs here, fused into FBGEMM's backward
        opt.step()
        outs.append(out.detach().clone())
        losses.append(loss.item())
    return {"outs": outs, "losses": losses, "state": _state(dmp), "plan": str(plan)}


def _ranks(rank: int) -> dict:
    from torch._dynamo.utils import counters

    from inductor_embed import _internal

    eager = _train(rank, compiled=False)
    # The bag patterns on, as on CUDA: they still must leave torchrec's sharded module alone.
    with _internal.patch(bag_patterns_on_cpu="all"), LogLines() as lines:
        compiled = _train(rank, compiled=True)
    return {"eager": eager, "compiled": compiled, "log": list(lines),
            "counters": dict(counters["inductor_embed"]), "graphs": counters["stats"]["unique_graphs"]}


def test_dmp_sharded_ebc_is_left_to_torchrec_and_runs_unchanged(tmp_path):
    _torchrec()
    ranks = run_ranks(_ranks, out_dir=tmp_path, env=dist_env(tmp_path), timeout=400)
    for r, res in enumerate(ranks):
        eager, compiled, c = res["eager"], res["compiled"], res["counters"]
        assert "table_wise" in eager["plan"], eager["plan"]
        # nothing rewritten; the table-batched lookup seen and logged as left to torchrec
        assert not any(c.get(p, 0) for p in ("multi_embedding_bag", "multi_embedding_cat", "tied_embedding_bag")), c
        assert c.get("multi_embedding_bag_skipped", 0) >= 1, c
        assert any(LEFT in line for line in res["log"]), res["log"]
        for step, (got, want) in enumerate(zip(compiled["outs"], eager["outs"])):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, s=step, r=r: f"rank {r}, step {s}: {m}")
        torch.testing.assert_close(torch.tensor(compiled["losses"]), torch.tensor(eager["losses"]), rtol=1e-5, atol=1e-6)
        assert compiled["state"].keys() == eager["state"].keys()
        for name, want in eager["state"].items():  # tables (fused SGD) and the Linear (SGD) after the steps
            torch.testing.assert_close(compiled["state"][name], want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, r=r: f"rank {r}, {n} after {STEPS} steps: {m}")


def test_unsharded_ebc_on_the_cpu_default_is_left_and_matches_eager(caplog):
    """The plain EmbeddingBagCollection is F.embedding_bag per table and a cat: on CUDA, or
    with ``bag_patterns_on_cpu`` (tests/inductor_embed/test_multi_embedding_bag.py), it is
    rewritten by multi_embedding_bag; with ``bag_patterns_on_cpu="none"`` it is left to
    Inductor, and the log says why."""
    _torchrec()
    from inductor_embed import _internal
    from tests.inductor_embed._util import compare_with_eager, rewrites

    model = _model(torch.device("cpu"))
    kjt, _ = _batch(0, 0)
    with _internal.patch(bag_patterns_on_cpu="none"), caplog.at_level(logging.DEBUG, logger="inductor_embed"):
        compare_with_eager(model, (kjt,))
    assert rewrites("multi_embedding_bag") == 0
    assert "bags on the CPU are forced off (_internal.bag_patterns_on_cpu='none')" in caplog.text


def test_fbgemm_lookup_ops_in_a_graph_are_logged_and_left():
    """Where FBGEMM's ops trace (CUDA builds with fake kernels), the TBE lookup op itself is in
    Dynamo's graph: one logged skip per lookup op, none for FBGEMM's sparse-data ops, and the
    graph is left as it was."""
    _torchrec()
    import torch.fx as fx

    from inductor_embed.graph_pass import run_patterns

    g = fx.Graph()
    w, idx = g.placeholder("weights"), g.placeholder("indices")
    perm = g.call_function(torch.ops.fbgemm.permute_2D_sparse_data.default, (idx,))
    dense = g.call_function(torch.ops.fbgemm.dense_embedding_codegen_lookup_function, (w, perm))
    tbe = g.call_function(torch.ops.fbgemm.split_embedding_codegen_lookup_sgd_function_pt2, (w, perm))
    g.output((dense, tbe))
    before = str(g)
    report = run_patterns(g, apply=True)
    assert [(s.pattern, s.node) for s in report.skipped] == [("multi_embedding_bag", dense.name),
                                                               ("multi_embedding_bag", tbe.name)]
    assert all(s.reason.startswith(LEFT) for s in report.skipped), report.skipped
    assert "fbgemm.split_embedding_codegen_lookup_sgd_function_pt2" in report.skipped[1].reason
    assert not report.rewrites and str(g) == before
