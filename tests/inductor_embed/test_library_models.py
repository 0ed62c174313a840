"""What the pass does, with the default config, to small models written like the libraries
people use (``library_models.py``): each model's rewrites and every skip reason, pinned.

A change that makes a model lose a rewrite, or gain or change a reason, shows here; update
the pin only when the new behaviour is the intended one. Runs ``explain`` (Dynamo and the
pass, no Inductor compile), so the whole file takes seconds.
"""

from __future__ import annotations

import pytest
import torch

import inductor_embed
from tests.inductor_embed.library_models import MODELS

_E4 = ("embedding", "embedding_1", "embedding_2", "embedding_3")

# model -> ([(pattern, replaced nodes, shares)], [(pattern, node, reason)])
EXPECTED = {
    "category_embedding": ([("multi_embedding_cat", ("embedding", "embedding_1", "embedding_2", "cat"), "")], []),
    "shared_embeddings": ([("multi_embedding_cat", ("e", "setitem", "e_1", "setitem_1", "e_2", "setitem_2", "cat"),
                            "")], []),
    "deepfm": ([("multi_embedding_cat", (*_E4, "fm_input"), ""),
                ("multi_embedding_cat", (*_E4, "cat"), "fm_input")], []),
    "field_slices_fm": ([("multi_embedding_cat", (*_E4, "e"), "")], []),
    "bert_embeddings": ([("multi_embedding_sum", ("embedding", "embedding_1", "embedding_2", "embeddings",
                                                  "embeddings_1"), "")], []),
    # pos_emb is the .to(tok_emb.device) step, a no-op here
    "nanogpt": ([("multi_embedding_sum", ("tok_emb", "embedding_1", "pos_emb", "add"), "")], []),
    "atom_encoder": ([("multi_embedding_sum", ("embedding", *(f"embedding_{k}" for k in range(1, 9)), "x_embedding",
                                               *(f"x_embedding_{k}" for k in range(1, 9))), "")], []),
    "dlrm": ([("multi_embedding_bag", ("embedding_bag", "embedding_bag_1", "embedding_bag_2", "cat"), "")], []),
    "two_tower": ([("independent_lookups", ("embedding", "embedding_1"), "")], []),
    "one_hot_linear": ([("one_hot_linear", ("one_hot", "one_hot_1", "cat", "float_1", "linear"), "")], []),
    "one_hot_ensemble": ([("one_hot_linear", ("one_hot", "one_hot_1", "feats", "getitem_2", "expand", "h", "einsum"),
                           "")], []),
    # PyG's scatter of relu messages into new zeros -> index_add_rows (relu applied by the op);
    # x.index_select(0, src) -> a lone lookup;
    # the bond lookups' sum, taken once (each layer's message adds it as a term, the skips below).
    "gine_conv": ([("index_rows", ("out", "new_zeros", "relu"), ""), ("index_rows", ("out_1", "new_zeros_1", "relu_2"), ""),
                   ("multi_embedding_sum", ("embedding", "embedding_1", "embedding_2", "e", "e_1", "e_2"), ""),
                   ("independent_lookups", ("x_j_2",), ""), ("independent_lookups", ("x_j_3",), "")],
                  [("multi_embedding_sum", "embedding", "embedding reaches the sum ending at add_3 through `add` (e), "
                    "`add` (e_1), `add` (e_2), not no-op steps alone: left as a term"),
                   ("multi_embedding_sum", "x_j_2", "only 1 fusable lookup(s) in the sum ending at add_3; min_tables=2"),
                   ("multi_embedding_sum", "embedding", "embedding reaches the sum ending at add_6 through `add` (e), "
                    "`add` (e_1), `add` (e_2), not no-op steps alone: left as a term"),
                   ("multi_embedding_sum", "x_j_3", "only 1 fusable lookup(s) in the sum ending at add_6; min_tables=2")]),
}


@pytest.fixture(autouse=True)
def _default_config():
    """The shipped CPU rules that tests/conftest.py overrides for the other tests."""
    with inductor_embed._internal.patch(bag_patterns_on_cpu="fp32", column_writes_on_cpu=False,
                                        sparse_coalesce_on_cpu=False):
        yield


def test_every_model_is_pinned():
    assert set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_library_model(name: str) -> None:
    torch.manual_seed(0)
    model, args = MODELS[name]()
    report = inductor_embed.explain(model, *args)
    got = ([(r.pattern, r.replaced, r.shares) for r in report.rewrites],
           [(s.pattern, s.node, s.reason) for s in report.skipped])
    assert got == EXPECTED[name]
    assert report.rewrites or report.skipped, "a model with an embedding pattern is never silent"


def test_dlrm_with_sparse_bags_is_eagers_with_the_cpu_defaults() -> None:
    """The DLRM reference's sparse=True bags, taken with the CPU defaults: the output bit for
    bit, every gradient (the bags' uncoalesced COO ones entry for entry, the Linear's) as
    eager's; one rewrite."""
    from tests.inductor_embed._util import compare_with_eager, rewrites

    torch.manual_seed(0)
    model, args = MODELS["dlrm"]()
    torch._dynamo.reset()
    compare_with_eager(model, args)
    assert rewrites("multi_embedding_bag") == 1
