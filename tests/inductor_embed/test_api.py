"""The public surface: entry point, enable()/disable() chaining and uuid, explain, env vars, TORCH_LOGS."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import torch
import torch.nn as nn

import inductor_embed
from inductor_embed.graph_pass import InductorEmbedPass
from tests.inductor_embed._util import compare_with_eager, rewrites
from tests.inductor_embed.test_multi_embedding_cat import FastMultiEmbeddingEquivalent, _batch

_THREE_TABLES_SCRIPT = textwrap.dedent("""
    import torch, torch.nn as nn
    tables = nn.ModuleList([nn.Embedding(100, 2), nn.Embedding(200, 4), nn.Embedding(300, 8)])
    def emb(batch):
        return torch.cat([tables[0](batch[:, 0]), tables[1](batch[:, 1]), tables[2](batch[:, 2])], 1)
    batch = torch.stack([torch.randint(0, v, (16,)) for v in (100, 200, 300)], 1)
    out = torch.compile(emb, backend="inductor_embed")(batch)
    torch.testing.assert_close(out, emb(batch), rtol=0, atol=0)
    from torch._dynamo.utils import counters
    print("REWRITES", counters["inductor_embed"]["multi_embedding_cat"])
""")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_entry_point_is_registered():
    eps = importlib.metadata.entry_points(group="torch_dynamo_backends")
    assert any(ep.name == "inductor_embed" and ep.value == "inductor_embed.backend:inductor_embed_backend" for ep in eps)


def test_backend_string_works_without_import_and_torch_logs_prints_the_rewrite():
    # A fresh process that never imports inductor_embed: the entry point finds it, and
    # TORCH_LOGS (parsed at torch import, before the plugin is loaded) names it.
    res = _python(_THREE_TABLES_SCRIPT, TORCH_LOGS="inductor_embed")
    assert res.returncode == 0, res.stderr
    assert "REWRITES 1" in res.stdout
    assert "multi_embedding_cat: 3 tables -> inductor_embed.multi_embedding" in res.stderr


def test_env_var_turns_every_rewrite_off_and_plus_logs_show_skips():
    res = _python(_THREE_TABLES_SCRIPT, INDUCTOR_EMBED_ENABLED="0")
    assert res.returncode == 0, res.stderr
    assert "REWRITES 0" in res.stdout
    code = _THREE_TABLES_SCRIPT.replace("nn.Embedding(100, 2)", "nn.Embedding(100, 2, max_norm=1.0)")
    res = _python(code, TORCH_LOGS="+inductor_embed")
    assert res.returncode == 0, res.stderr
    assert "skipped embedding: max_norm" in res.stderr


def test_enable_makes_plain_torch_compile_rewrite_and_chains_the_user_pass():
    seen = []

    class UserPass(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            seen.append(sum(1 for n in graph.nodes if n.op == "call_function"))

        def uuid(self):
            return "user-pass-v1"

    cfg = torch._inductor.config
    user = UserPass()
    old = cfg.pre_grad_custom_pass
    cfg.pre_grad_custom_pass = user
    try:
        inductor_embed.enable()
        inductor_embed.enable()  # idempotent
        installed = cfg.pre_grad_custom_pass
        assert isinstance(installed, InductorEmbedPass) and installed.previous is user
        assert inductor_embed.is_enabled()
        compare_with_eager(FastMultiEmbeddingEquivalent(), [_batch(4, (100, 200, 300))], backend="inductor")
        assert rewrites() == 1
        assert seen, "the user's pass must still run"
        # the cache key follows the config and the chained pass
        before = installed.uuid()
        with inductor_embed.config.patch(min_tables=3):
            assert installed.uuid() != before
        assert installed.uuid() == before and before[-1] == "user-pass-v1"
        inductor_embed.disable()
        assert cfg.pre_grad_custom_pass is user and not inductor_embed.is_enabled()
    finally:
        cfg.pre_grad_custom_pass = old


def test_uuid_is_none_after_a_plain_callable_so_the_cache_is_bypassed():
    assert InductorEmbedPass(previous=lambda g: None).uuid() is None
    assert InductorEmbedPass().uuid() is not None


def test_explain_reports_rewrites_and_skips_without_compiling():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Embedding(10, 4), nn.Embedding(20, 3), nn.Embedding(30, 2, max_norm=1.0)

        def forward(self, x):
            return torch.cat([self.a(x[:, 0]), self.b(x[:, 1]), self.c(x[:, 2])], -1)

    model = Model()
    report = inductor_embed.explain(model, _batch(5, (10, 20, 30)))
    assert rewrites() == 0  # explain only reports
    assert [r.pattern for r in report.rewrites] == ["multi_embedding_cat"]
    tables = report.rewrites[0].tables
    assert [(t.name, t.num_embeddings, t.embedding_dim) for t in tables] == [("a.weight", 10, 4), ("b.weight", 20, 3)]
    assert len(report.skipped) == 1 and "max_norm" in report.skipped[0].reason
    text = str(report)
    assert "1 rewrite(s), 1 skipped, 1 graph(s)" in text
    assert "a.weight, b.weight" in text and "reason skipped" in text
    # the model still compiles and rewrites afterwards
    compare_with_eager(model, [_batch(5, (10, 20, 30))])
    assert rewrites() == 1


def test_explain_sees_every_graph_across_a_graph_break():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.ModuleList([nn.Embedding(10, 2) for _ in range(4)])

        def forward(self, x):
            y = torch.cat([self.t[0](x[:, 0]), self.t[1](x[:, 1])], -1)
            torch._dynamo.graph_break()
            return y, torch.cat([self.t[2](x[:, 2]), self.t[3](x[:, 3])], -1)

    report = inductor_embed.explain(Broken(), _batch(3, (10,) * 4))
    assert report.graphs == 2 and len(report.rewrites) == 2


def test_rewrites_are_counted_even_when_inductor_serves_the_compile_from_its_cache():
    x = _batch(4, (100, 200, 300))
    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True):
        for _ in range(2):
            torch._dynamo.reset()
            compare_with_eager(FastMultiEmbeddingEquivalent(), [x])
    assert rewrites() == 2


class Criteo(nn.Module):
    """26 categorical fields, as the Criteo CTR models have them, plus 26 left alone."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.ModuleList([nn.Embedding(50, 4 if k < 20 else 8) for k in range(26)])
        self.normed = nn.ModuleList([nn.Embedding(50, 4, max_norm=1.0) for _ in range(26)])

    def forward(self, x):
        y = torch.cat([e(x[:, k]) for k, e in enumerate(self.embeddings)], -1)
        return y, torch.cat([e(x[:, k]) for k, e in enumerate(self.normed)], -1)


def test_explain_groups_many_tables_and_keeps_every_line_short():
    report = inductor_embed.explain(Criteo(), torch.randint(0, 50, (3, 26)))
    assert len(report.rewrites) == 1 and len(report.skipped) == 26
    text = str(report)
    assert max(map(len, text.splitlines())) < 120, text
    assert "embeddings.{0..25}.weight" in text and "[4 x20, 8 x6]" in text
    assert "embedding, embedding_{1..25}, y" in text  # y: the cat
    skip_rows = [line for line in text.splitlines() if line.startswith("multi_embedding_cat") and "max_norm" in line]
    assert len(skip_rows) == 1 and "embedding_{26..51}" in skip_rows[0]  # one row per reason
    line = report.rewrites[0].describe()
    assert "embeddings.{0..19}.weight[50x4 fp32], embeddings.{20..25}.weight[50x8 fp32]" in line


def test_group_names_and_dims_text():
    from inductor_embed.report import _table, dims_text, group_names

    assert group_names(["a.0.w", "a.1.w", "a.2.w", "b.0.w", "a.3.w"]) == ["a.{0..3}.w", "b.0.w"]
    assert group_names(["a.0.w", "a.1.w", "a.2.w", "b.0.w", "a.3.w"], adjacent=True) == ["a.{0..2}.w", "b.0.w", "a.3.w"]
    assert group_names(["e", "u", "e_1", "u_1", "e_2", "u_2", "e_3", "u_3"]) == ["e", "u", "e_{1..3}", "u_{1..3}"]
    assert group_names(["e", "e_1", "e_2"]) == ["e", "e_1", "e_2"]  # pairs stay spelled out
    assert group_names(["t.0.e.0.w", "t.1.e.0.w", "t.2.e.0.w"]) == ["t.{0..2}.e.0.w"]
    assert group_names(["tok.w", "other.w", "tok.w"]) == ["tok.w", "other.w", "tok.w"]
    assert group_names(["t.0", "t.2", "t.5", "t.6", "t.7", "t01"]) == ["t.{0,2,5..7}", "t01"]
    assert dims_text([2, 4, 8]) == "[2, 4, 8]" and dims_text([16] * 4 + [4, 4, 4]) == "[16 x4, 4, 4, 4]"
    lines = _table(["node", "reason skipped"], [["n", "word " * 60]]).splitlines()
    assert len(lines) == 5 and max(map(len, lines)) < 120
    # three wide columns: each shrinks, but a name never breaks inside
    lines = _table(["tables", "dims", "nodes"], [["embeddings.{0..25}.weight, more.{0..9}.weight",
                                                  str(list(range(40))), "embedding, embedding_{1..25}, " * 4]]).splitlines()
    text = "\n".join(lines)
    assert max(map(len, lines)) < 120 and "embeddings.{0..25}.weight," in text and "more.{0..9}.weight" in text, text
    # words that cannot all fit whole side by side break, and the width still holds
    lines = _table(["a", "b"], [["x" * 90, "y" * 90]]).splitlines()
    assert max(map(len, lines)) < 120 and "".join(ln.split(" |")[0].rstrip() for ln in lines[2:]) == "x" * 90
