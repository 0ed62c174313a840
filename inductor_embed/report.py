"""What a pass run decided: the rewrites it made and the candidates it skipped.

The same records feed the logs, the counters and ``inductor_embed.explain``.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from inductor_embed import _compat

log = logging.getLogger("inductor_embed")

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """One embedding table taking part in a rewrite."""

    name: str  # the parameter's name in the model when Dynamo knows it, else the graph node's
    num_embeddings: int
    embedding_dim: int
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.name}[{self.num_embeddings}x{self.embedding_dim} {_DTYPE_NAMES.get(self.dtype, self.dtype)}]"


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """A group of graph nodes replaced by one fused op."""

    pattern: str  # the pattern's name in ARCHITECTURE.md, e.g. "multi_embedding_cat"
    replaced: tuple[str, ...]  # names of the graph nodes the fused op replaced
    fused_op: str
    tables: tuple[TableInfo, ...]
    index_shape: tuple
    dtype: torch.dtype

    def describe(self) -> str:
        dims = [t.embedding_dim for t in self.tables]
        shape = list(self.index_shape)
        return (
            f"{self.pattern}: {len(self.tables)} tables -> {self.fused_op} "
            f"(dims={dims}, dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)}, index_shape={shape}) "
            f"replacing [{', '.join(self.replaced)}]; tables: {', '.join(map(str, self.tables))}"
        )


@dataclasses.dataclass(frozen=True)
class Skip:
    """A candidate that was left as it was, and why."""

    pattern: str
    node: str
    reason: str

    def describe(self) -> str:
        return f"{self.pattern}: skipped {self.node}: {self.reason}"


@dataclasses.dataclass
class Report:
    """Rewrites and skips of one or more graphs (``explain`` collects every graph of a model)."""

    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    graphs: int = 0

    def __str__(self) -> str:
        lines = [f"inductor_embed: {len(self.rewrites)} rewrite(s), {len(self.skipped)} skipped, {self.graphs} graph(s)"]
        if self.rewrites:
            lines.append("")
            lines.append(_table(
                ["pattern", "tables", "dims", "dtype", "index shape", "replaced nodes"],
                [
                    [
                        r.pattern,
                        ", ".join(t.name for t in r.tables),
                        str([t.embedding_dim for t in r.tables]),
                        _DTYPE_NAMES.get(r.dtype, str(r.dtype)),
                        str(list(r.index_shape)),
                        ", ".join(r.replaced),
                    ]
                    for r in self.rewrites
                ],
            ))
        if self.skipped:
            lines.append("")
            lines.append(_table(["pattern", "node", "reason skipped"], [[s.pattern, s.node, s.reason] for s in self.skipped]))
        return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header).rstrip(), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(out)


class Recorder:
    """Collects a pass run's decisions; when ``live``, also logs them and bumps the counters."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.report = Report()

    def rewrite(self, r: Rewrite) -> None:
        self.report.rewrites.append(r)
        if self.live:
            _compat.counters()["inductor_embed"][r.pattern] += 1
            log.info("%s", _Lazy(r.describe))

    def skip(self, s: Skip) -> None:
        self.report.skipped.append(s)
        if self.live:
            _compat.counters()["inductor_embed"][f"{s.pattern}_skipped"] += 1
            log.debug("%s", _Lazy(s.describe))


class _Lazy:
    """Formats only if the record is emitted (lazy logging of a costly string)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __str__(self) -> str:
        return self.fn()
