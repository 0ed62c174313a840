"""``python -m bench.paired_step`` runs, and says inductor_embed's gradients are eager's bit for
bit (small tables: 8,192 rows, 2 MiB gradients, the smallest the gradient cache takes)."""

from __future__ import annotations

import re

from bench import paired_step


def test_paired_step_cat(capsys):
    paired_step.main(["cat", "--rounds", "1", "--rows", "8192"])
    out = capsys.readouterr().out
    assert re.search(r"inductor_embed vs torch\.compile \d+\.\d\dx", out), out
    assert "inductor_embed True" in out, out
