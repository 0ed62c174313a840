"""The compilation machinery around the rewrite: dynamic shapes (no recompiles for new
batch sizes), the FX graph cache across processes (a hit, the same numbers, a new key
when the config changes), torch.export + AOTInductor (the ops export, serialise,
package, load and run)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inductor_embed
from inductor_embed.backend import inductor_embed_backend
from tests.inductor_embed._util import rewrites

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# x[:, :3] index three tables; x[:, 3] is a one-hot field of CLASSES classes
VOCABS, DIMS, CLASSES = (100, 200, 300), (2, 4, 8), 6


class Tabular(nn.Module):
    """Three lookups + cat (multi_embedding_cat), a Linear on a one-hot field
    (one_hot_linear) and a linear head: the model every test here compiles."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(v, d) for v, d in zip(VOCABS, DIMS)])
        self.field = nn.Linear(CLASSES, sum(DIMS))
        self.head = nn.Linear(sum(DIMS), 1)

    def features(self, x):
        h = torch.cat([t(x[:, k]) for k, t in enumerate(self.tables)], dim=1)
        return h + self.field(F.one_hot(x[:, 3], CLASSES).float())

    def forward(self, x):
        return self.head(self.features(x))


class TabularDot(Tabular):
    """Tabular with an elementwise head. Inductor's CPU decomposition of a small mm (the
    Linear head) guards the batch into 2..18 and recompiles once past it, with or without
    the plugin; without an mm, every guard left is the plugin's or Dynamo's own."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(sum(DIMS)))

    def forward(self, x):
        return (self.features(x) * self.w).sum(-1)


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCABS + (CLASSES,)], dim=1)


TORCH_2_13 = torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)


def _fused(pattern="one_hot_linear"):
    return torch._dynamo.utils.counters["inductor_embed"][pattern]


# --- dynamic shapes -----------------------------------------------------------------------

def test_new_batch_sizes_do_not_recompile_once_dynamic():
    compiles = []

    def counting(gm, example_inputs):
        compiles.append(gm)
        return inductor_embed_backend(gm, example_inputs)

    torch.manual_seed(0)
    model = TabularDot()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=counting)
    stats = torch._dynamo.utils.counters["stats"]
    for k, n in enumerate((8, 16, 32, 64, 5, 3, 1000)):
        x = _batch(n, seed=k)
        out = compiled(x)
        torch.testing.assert_close(out, model(x))
        out.sum().backward()  # the backward is compiled once too, with the same symbol
        if k == 1:  # the second size made the batch dimension dynamic
            assert len(compiles) == 2 and stats["unique_graphs"] == 2
    assert len(compiles) == 2, "a new batch size recompiled"
    assert stats["unique_graphs"] == 2
    assert rewrites() == 2 and _fused() == 2  # one per compile, both rewritten
    assert "s" in str(compiles[1].graph)  # the second graph carries a symbolic size
    model.zero_grad()
    for k, n in enumerate((8, 16, 32, 64, 5, 3, 1000)):
        model(_batch(n, seed=k)).sum().backward()
    for p, q in zip(model.parameters(), compiled_model.parameters()):  # sums over 1128 rows
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4)


def test_marked_dynamic_batch_compiles_once_with_enable():
    torch.manual_seed(0)
    model = TabularDot()
    inductor_embed.enable()
    try:
        compiled = torch.compile(copy.deepcopy(model))  # the default backend, our pre-grad pass
        for k, n in enumerate((7, 2, 33, 128)):
            x = _batch(n, seed=k)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(compiled(x), model(x))
    finally:
        inductor_embed.disable()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert rewrites() == 1 and _fused() == 1


# --- the FX graph cache, across processes ------------------------------------------------

_CACHE_RUN = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    sys.path.insert(0, {repo!r})
    import inductor_embed
    from torch._dynamo.utils import counters
    from tests.reliability.test_compile_machinery import Tabular, _batch

    def run():
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = Tabular()
        out = torch.compile(model, backend="inductor_embed")(_batch(16))
        out.sum().backward()
        return [out.flatten().tolist(), [p.grad.sum().item() for p in model.parameters()]]

    def hits():
        return {{"fx_hit": counters["inductor"]["fxgraph_cache_hit"],
                 "fx_miss": counters["inductor"]["fxgraph_cache_miss"],
                 "aot_hit": counters["aot_autograd"]["autograd_cache_hit"],
                 "aot_miss": counters["aot_autograd"]["autograd_cache_miss"],
                 "rewrites": counters["inductor_embed"]["multi_embedding_cat"],
                 "one_hot": counters["inductor_embed"]["one_hot_linear"]}}

    result = {{"values": run(), "first": hits()}}
    if {change_config}:
        with inductor_embed.config.patch(multi_embedding_cat=False):  # another graph
            result["unfused_values"] = run()
        result["unfused"] = hits()
        with inductor_embed.config.patch(min_tables=3):  # the same graph: all three still fuse
            result["same_graph_values"] = run()
        result["same_graph"] = hits()
    print("RESULT" + json.dumps(result))
""")


def _cache_process(cache_dir, change_config=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "INDUCTOR_EMBED_"))}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(cache_dir), TORCHINDUCTOR_FX_GRAPH_CACHE="1",
               TORCHINDUCTOR_AUTOGRAD_CACHE="1")
    code = _CACHE_RUN.format(repo=REPO, change_config=change_config)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_fx_graph_cache_hits_in_a_second_process_and_the_config_is_in_the_key(tmp_path):
    first = _cache_process(tmp_path)
    assert first["first"]["fx_hit"] == 0 and first["first"]["fx_miss"] >= 1
    second = _cache_process(tmp_path, change_config=True)
    got = second["first"]
    # A hit of AOTAutograd's cache serves forward and backward from FX graph cache
    # entries; either counter shows that nothing was compiled again.
    assert got["fx_hit"] + got["aot_hit"] >= 1, got
    assert got["fx_miss"] == 0 and got["aot_miss"] == 0, got
    # the backend rewrites (and counts) before the cache lookup
    assert got["rewrites"] == 1 and got["one_hot"] == 1
    assert second["values"] == first["values"]
    # A config field that changes the rewritten graph changes the key: a miss, eager's numbers.
    unfused = second["unfused"]
    assert unfused["fx_miss"] + unfused["aot_miss"] > 0, unfused
    torch.testing.assert_close(torch.tensor(second["unfused_values"][0]), torch.tensor(first["values"][0]))
    torch.testing.assert_close(torch.tensor(second["unfused_values"][1]), torch.tensor(first["values"][1]),
                               rtol=1e-5, atol=1e-5)
    # One that leaves the graph as it was: torch 2.13 looks the caches up before the
    # pre-grad passes run, so the pass's uuid (code + every config field) is in the key,
    # and it misses. torch 2.11 runs the pre-grad passes first and keys the rewritten
    # graph, so the same graph hits (correctly: it is the same code).
    same = second["same_graph"]
    misses = same["fx_miss"] + same["aot_miss"] - unfused["fx_miss"] - unfused["aot_miss"]
    if TORCH_2_13:
        assert misses > 0, same
    else:
        assert misses == 0, same
    assert second["same_graph_values"] == first["values"]


# --- torch.export and AOTInductor ---------------------------------------------------------

class Rewritten(nn.Module):
    """Tabular as the passes leave it: the fused ops where the lookups + cat and the
    one-hot + Linear were."""

    def __init__(self, src: Tabular):
        super().__init__()
        self.tables = copy.deepcopy(src.tables)
        self.field = copy.deepcopy(src.field)
        self.head = copy.deepcopy(src.head)

    def forward(self, x):
        n = len(self.tables)
        h = torch.ops.inductor_embed.multi_embedding(
            [t.weight for t in self.tables], [x[:, k] for k in range(n)], [-1] * n, [False] * n)
        h = h + torch.ops.inductor_embed.one_hot_linear(
            [x[:, 3:4]], [CLASSES], [0], self.field.weight, self.field.bias)
        return self.head(h)


def test_exported_program_with_the_fused_op_serialises_and_runs(tmp_path):
    torch.manual_seed(0)
    model = Tabular()
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(Rewritten(model), (_batch(8),), dynamic_shapes={"x": {0: batch}})
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    # kept as our ops, not decomposed
    assert "inductor_embed.multi_embedding.default" in targets
    assert "inductor_embed.one_hot_linear.default" in targets
    path = tmp_path / "rewritten.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    for n in (8, 3, 50):
        x = _batch(n, seed=n)
        torch.testing.assert_close(loaded.module()(x), model(x))


def test_enable_rewrites_inside_aot_inductor_and_the_package_runs_without_the_plugin(tmp_path):
    # torch.export does not run torch.compile backends, and its graph is ATen-level. AOTInductor
    # does run Inductor's pre-grad pass on the exported graph, so with enable() the pass
    # rewrites aten.embedding + aten.cat there, and the package holds the fused code.
    # one_hot_linear matches torch-level F.one_hot / F.linear only: not rewritten here.
    torch.manual_seed(0)
    model = Tabular()
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (_batch(8),), dynamic_shapes={"x": {0: batch}})
    inductor_embed.enable()
    try:
        package = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
    finally:
        inductor_embed.disable()
    assert rewrites() == 1 and _fused() == 0
    xs = [_batch(n, seed=n) for n in (8, 3, 50)]
    torch.save({"xs": xs, "want": [model(x).detach() for x in xs]}, tmp_path / "io.pt")
    # A fresh process that never imports inductor_embed: on the CPU the fused op was
    # compiled into the package, so nothing of the plugin is needed to run it.
    code = textwrap.dedent(f"""
        import sys, torch
        loaded = torch._inductor.aoti_load_package({str(package)!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        for x, want in zip(io["xs"], io["want"]):
            torch.testing.assert_close(loaded(x), want)
        bad = io["xs"][0].clone()
        bad[0, 2] = 300
        try:
            loaded(bad)
        except RuntimeError as e:
            print("RAISED", e, flush=True)
        assert "inductor_embed" not in sys.modules
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR_")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RAISED" in res.stdout and "OK" in res.stdout
    # torch 2.13 puts the kernel's message in the exception; 2.11 prints it to stderr and
    # raises "run_func_(...) API call failed"
    assert "index out of bounds" in res.stdout + res.stderr or "out of range" in res.stdout + res.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_enable_rewrites_inside_aot_inductor_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = Tabular().cuda()
    ep = torch.export.export(model, (_batch(8).cuda(),))
    inductor_embed.enable()
    try:
        package = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
    finally:
        inductor_embed.disable()
    assert rewrites() == 1
    loaded = torch._inductor.aoti_load_package(package)
    x = _batch(8, seed=3).cuda()
    torch.testing.assert_close(loaded(x), model(x))
