"""Smoke test of the showcase: ``python -m inductor_embed.demo --quick`` end to end.

The demo compiles a small CTR-style model with the default backend and with
inductor_embed, checks outputs and gradients against eager and times the three;
here it must succeed and the multi_embedding_cat rewrite must have fired.
"""

from __future__ import annotations

import torch

from inductor_embed import demo


def test_demo_quick_matches_eager_and_rewrites(capsys):
    counters = torch._dynamo.utils.counters
    before = counters["inductor_embed"]["multi_embedding_cat"]
    try:
        status = demo.main(["--quick"])
    finally:
        torch._dynamo.reset()
    out = capsys.readouterr().out
    assert status == 0, out
    assert counters["inductor_embed"]["multi_embedding_cat"] > before
    assert "parameter gradients match eager" in out
    assert "inductor_embed" in out.split("== forward + backward")[-1]  # the timing table
