"""Sharded data parallel: FSDP2 (``torch.distributed.fsdp.fully_shard``) on gloo, two
processes on the CPU, two Adam steps compiled with inductor_embed against the same run in
eager. Each rank compares its own shards of every gradient and parameter.

How FSDP2 is wrapped decides what the plugin sees. FSDP2's hooks are
``torch._dynamo.disable``-d (torch 2.11 to 2.13), so Dynamo breaks the graph at every call of
a module that ``fully_shard`` wrapped, and runs that call (hooks and forward) eagerly:

- root only (``fully_shard(model)``): the hooks run around the whole compiled forward; the
  graph reads the all-gathered, unsharded parameters as plain tensors, so the lookups and
  their cat are rewritten;
- each table on its own (``fully_shard(emb)`` per table): each lookup runs eagerly across a
  graph break, only the cat of their outputs is left in a graph, and the plugin logs why;
- the module that holds the tables and the cat as one unit: its forward is a graph of its
  own (Dynamo compiles the frame the eager call enters), which is rewritten.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.reliability._util import LogLines, dist_env, run_ranks

# torch 2.11's Dynamo (Python <= 3.11) cannot resume inside Lookups.forward's list
# comprehension after FSDP2's graph break ("builtin iterators passed in from uncompiled to
# compiled regions"), so that forward runs eagerly: no graph holds the cat, and the plugin
# has nothing to rewrite or to log. torch 2.13 resumes there and leaves the cat in a graph.
CAT_LEFT_IN_A_GRAPH = sys.version_info >= (3, 12) or torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)
STEPS = 2
VOCABS, DIMS = (50, 30, 20), (4, 3, 5)
OUTSIDE = ("3 inputs of cat are lookups that ran outside this graph, across a graph break; they are outputs "
           "of FSDP2 modules")


class Lookups(nn.Module):
    """Several tables, one lookup each, concatenated (multi_embedding_cat)."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(v, d) for v, d in zip(VOCABS, DIMS)])

    def forward(self, x):
        return torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)


class Ranker(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = Lookups()
        self.mlp = nn.Sequential(nn.Linear(sum(DIMS), 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.mlp(self.emb(x)).squeeze(-1)


def _data(rank, step, n=8):
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCABS], dim=1), torch.randn(n, generator=g)


def _local(t):
    """This rank's shard of an FSDP2 parameter or gradient (a DTensor)."""
    return t.to_local().detach().clone() if hasattr(t, "to_local") else t.detach().clone()


def _train(rank, wrap, compiled):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Ranker()
    if wrap == "tables":
        for t in model.emb.tables:
            fully_shard(t)
    elif wrap == "layer":
        fully_shard(model.emb)
    fully_shard(model)
    step_fn = torch.compile(model, backend="inductor_embed") if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, grads = [], []
    for step in range(STEPS):
        x, y = _data(rank, step)
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(step_fn(x), y)
        loss.backward()
        grads.append({n: _local(p.grad) for n, p in model.named_parameters()})
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "grads": grads, "params": {n: _local(p) for n, p in model.named_parameters()}}


def _ranks(rank, wraps):
    from torch._dynamo.utils import counters

    out = {}
    for wrap in wraps:
        torch._dynamo.reset()
        counters.clear()
        eager = _train(rank, wrap, compiled=False)
        with LogLines() as lines:
            compiled = _train(rank, wrap, compiled=True)
        out[wrap] = {"eager": eager, "compiled": compiled, "log": lines,
                     "rewrites": counters["inductor_embed"]["multi_embedding_cat"],
                     "skips": counters["inductor_embed"]["multi_embedding_cat_skipped"]}
    return out


def _check_like_eager(r, wrap, res):
    eager, compiled = res["eager"], res["compiled"]
    torch.testing.assert_close(torch.tensor(compiled["losses"]), torch.tensor(eager["losses"]), rtol=1e-5, atol=1e-6)
    for step, (got, want) in enumerate(zip(compiled["grads"], eager["grads"])):
        for name, g in want.items():
            torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, s=step: f"{wrap}, rank {r}, step {s}, grad of {n}: {m}")
    for name, p in eager["params"].items():
        torch.testing.assert_close(compiled["params"][name], p, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=name: f"{wrap}, rank {r}, {n} after {STEPS} steps: {m}")


def test_fsdp2_root_wrapped_is_rewritten_and_matches_eager(tmp_path):
    ranks = run_ranks(_ranks, ("root",), out_dir=tmp_path, env=dist_env(tmp_path))
    for r, res in enumerate(ranks):
        res = res["root"]
        assert res["rewrites"] == 1, (r, res["rewrites"], res["log"])
        assert any(line.startswith("multi_embedding_cat: 3 tables -> inductor_embed.multi_embedding")
                   for line in res["log"]), res["log"]
        _check_like_eager(r, "root", res)


@pytest.mark.parametrize("wraps", [("tables", "layer")], ids=["tables-then-layer"])
def test_fsdp2_tables_wrapped_on_their_own_are_left_and_logged(tmp_path, wraps):
    """Each table wrapped on its own: no rewrite, the reason logged, results unchanged. The
    same model with the tables' module wrapped as one unit: rewritten (one spawn for both)."""
    ranks = run_ranks(_ranks, wraps, out_dir=tmp_path, env=dist_env(tmp_path))
    for r, res in enumerate(ranks):
        tables, layer = res["tables"], res["layer"]
        if CAT_LEFT_IN_A_GRAPH:
            assert tables["rewrites"] == 0 and tables["skips"] >= 1, (r, tables["log"])
            assert any(OUTSIDE in line for line in tables["log"]), tables["log"]
        else:  # the whole Lookups.forward ran eagerly
            assert tables["rewrites"] == 0 and tables["skips"] == 0, (r, tables["log"])
        _check_like_eager(r, "tables", tables)
        assert layer["rewrites"] == 1, (r, layer["log"])
        _check_like_eager(r, "layer", layer)
