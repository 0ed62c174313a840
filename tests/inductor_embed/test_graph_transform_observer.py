"""Each pattern runs under Inductor's GraphTransformObserver, so that
INDUCTOR_LOG_URL_FOR_GRAPH_XFORM=<dir> (``torch._inductor.config.trace.log_url_for_graph_xform``)
gets the graph before and after every rewrite, as it does for Inductor's own passes."""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F

from inductor_embed.graph_pass import run_patterns

observer = pytest.importorskip("torch.fx.passes.graph_transform_observer")


class _Dot:
    """A stand-in for pydot's graph (pydot is optional): writes the FX graph's text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_node_list(self) -> list:
        return []

    def write(self, path: str) -> None:
        pathlib.Path(path).write_text(self.text)


class _Drawer:
    def __init__(self, gm: torch.fx.GraphModule, name: str, **_: object) -> None:
        self.text = str(gm.graph)

    def get_dot_graph(self) -> _Dot:
        return _Dot(self.text)


def _dynamo_graph() -> torch.fx.GraphModule:
    w0, w1 = torch.randn(7, 3), torch.randn(5, 2)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(copy.deepcopy(gm))
        return gm.forward

    torch.compile(lambda i: torch.cat([F.embedding(i, w0), F.embedding(i, w1)], -1), backend=backend)(
        torch.tensor([0, 4, 1]))
    return graphs[0]


def test_a_rewrite_writes_the_graph_before_and_after(tmp_path, monkeypatch):
    if importlib.util.find_spec("pydot") is None:
        monkeypatch.setattr(observer, "FxGraphDrawer", _Drawer)
    gm = _dynamo_graph()
    with torch._inductor.config.patch({"trace.log_url_for_graph_xform": str(tmp_path)}):
        report = run_patterns(gm.graph, apply=True)
    assert report.rewrites
    before = list(tmp_path.glob("pass_*_inductor_embed_multi_embedding_cat_input_graph.dot"))
    after = list(tmp_path.glob("pass_*_inductor_embed_multi_embedding_cat_output_graph.dot"))
    assert len(before) == 1 and len(after) == 1, sorted(p.name for p in tmp_path.iterdir())
    # Only passes that changed the graph write: the other patterns left no files.
    assert len(list(tmp_path.iterdir())) == 2
    assert "multi_embedding" not in before[0].read_text()
    assert "multi_embedding" in after[0].read_text()


def test_torch_compile_debug_writes_the_graph_before_and_after(tmp_path):
    """TORCH_COMPILE_DEBUG=1 (``trace.enabled``) alone: the graph's code before and after
    each rewriting pattern lands in the run's debug directory, no pydot needed."""
    gm = _dynamo_graph()
    with torch._inductor.config.patch({"trace.enabled": True}), \
            torch._dynamo.config.patch(debug_dir_root=str(tmp_path)):
        run_patterns(gm.graph, apply=True)
    before = sorted(tmp_path.rglob("inductor_embed/*_multi_embedding_cat_before.py"))
    after = sorted(tmp_path.rglob("inductor_embed/*_multi_embedding_cat_after.py"))
    assert len(before) == len(after) == 1
    assert "torch.nn.functional.embedding" in before[0].read_text()
    assert "inductor_embed.multi_embedding" in after[0].read_text()
    assert "torch.nn.functional.embedding" not in after[0].read_text()
