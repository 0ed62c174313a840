"""What a pass run decided: the rewrites it made and the candidates it skipped.

The same records feed the logs, the counters and ``inductor_embed.explain``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap

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

    pattern: str  # the pattern's name in README.md, e.g. "multi_embedding_cat"
    replaced: tuple[str, ...]  # names of the graph nodes the fused op replaced
    fused_op: str
    tables: tuple[TableInfo, ...]
    index_shape: tuple
    dtype: torch.dtype
    # The node whose fused op this rewrite reads again instead of a new one (the same
    # lookups feeding a second cat or stack), or "".
    shares: str = ""

    def describe(self) -> str:
        shape = list(self.index_shape)
        op = f"the {self.fused_op} of {self.shares}, read again," if self.shares else self.fused_op
        return (
            f"{self.pattern}: {len(self.tables)} tables -> {op} "
            f"(dims={dims_text([t.embedding_dim for t in self.tables])}, "
            f"dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)}, index_shape={shape}) "
            f"replacing [{', '.join(group_names(self.replaced))}]; tables: {', '.join(_tables_text(self.tables))}"
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
        """A readable summary: one table of rewrites, one of skips (skips that share a pattern
        and a reason share a row), table and node names grouped (``embeddings.{0..25}.weight``),
        and no line longer than ``MAX_WIDTH``: a long cell wraps within its column."""
        lines = [f"inductor_embed: {len(self.rewrites)} rewrite(s), {len(self.skipped)} skipped, {self.graphs} graph(s)"]
        if self.rewrites:
            lines.append("")
            lines.append(_table(
                ["pattern", "tables", "dims", "dtype", "index shape", "replaced nodes"],
                [
                    [
                        r.pattern,
                        ", ".join(group_names([t.name for t in r.tables], adjacent=True)),
                        dims_text([t.embedding_dim for t in r.tables]),
                        _DTYPE_NAMES.get(r.dtype, str(r.dtype)),
                        str(list(r.index_shape)),
                        ", ".join(group_names(r.replaced)) + (f" (reads the op of {r.shares})" if r.shares else ""),
                    ]
                    for r in self.rewrites
                ],
            ))
        if self.skipped:
            nodes: dict[tuple[str, str], list[str]] = {}
            for s in self.skipped:
                nodes.setdefault((s.pattern, s.reason), []).append(s.node)
            lines.append("")
            lines.append(_table(["pattern", "node", "reason skipped"],
                                [[pattern, ", ".join(group_names(ns)), reason] for (pattern, reason), ns in nodes.items()]))
        return "\n".join(lines)


# The widest line ``str(Report)`` prints (a terminal, a log viewer, a code review).
MAX_WIDTH = 119
_DIGITS = re.compile(r"(\d+)")


def group_names(names, adjacent: bool = False) -> list[str]:
    """Three or more names that differ in one number, written once: ``embeddings.{0..25}.weight``,
    ``embedding_{1..25}``, ``t.{0,2,7}.w``. Values keep their order; ascending runs of three
    or more become ``a..b``. With ``adjacent`` only neighbours group (the order of the
    tables must stay readable next to their dims); else a group sits where its first
    name was. Repeated names stay repeated."""
    names = list(names)
    best = [[n] for n in names]
    positions = {k for n in names for k, part in enumerate(_DIGITS.split(n)) if k % 2 and _plain_int(part)}
    for pos in sorted(positions, reverse=True):  # the last number first (``layers.3.emb.{0..7}``)
        # a pair reads better spelled out (``one_hot, one_hot_1``): groups start at three
        groups: list[list[str]] = []
        for g in _group_at(names, pos, adjacent):
            groups += [g] if len(g) >= 3 else [[n] for n in g]
        if len(groups) < len(best):
            best = groups
    return [_render(g) for g in best]


def _plain_int(part: str) -> bool:
    return part.isdigit() and (part == "0" or not part.startswith("0"))


def _group_at(names: list[str], pos: int, adjacent: bool) -> list[list[str]]:
    """Names grouped by everything but their number at split position ``pos``."""
    groups: list[list[str]] = []
    by_key: dict[tuple, list[str]] = {}
    last_key = None
    for n in names:
        parts = _DIGITS.split(n)
        key = None
        if pos < len(parts) and _plain_int(parts[pos]):
            key = (len(parts), *parts[:pos], *parts[pos + 1:])
        group = (by_key.get(key) if not adjacent else (groups[-1] if key == last_key else None)) if key else None
        if group is None or n in group:
            group = [n]
            groups.append(group)
            if key is not None:
                by_key[key] = group
        else:
            group.append(n)
        last_key = key
    return groups


def _render(group: list[str]) -> str:
    if len(group) == 1:
        return group[0]
    a, b = _DIGITS.split(group[0]), _DIGITS.split(group[1])
    pos = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
    values = [int(_DIGITS.split(n)[pos]) for n in group]
    return "".join(a[:pos]) + "{" + _ranges(values) + "}" + "".join(a[pos + 1:])


def _ranges(values: list[int]) -> str:
    out, k = [], 0
    while k < len(values):
        j = k
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - k >= 2:
            out.append(f"{values[k]}..{values[j]}")
        else:
            out += [str(v) for v in values[k:j + 1]]
        k = j + 1
    return ",".join(out)


def dims_text(dims: list[int]) -> str:
    """``[2, 4, 8]``; runs of four or more equal dims counted: ``[8 x26]``, ``[16 x4, 4]``."""
    out, k = [], 0
    while k < len(dims):
        j = k
        while j + 1 < len(dims) and dims[j + 1] == dims[k]:
            j += 1
        out += [f"{dims[k]} x{j - k + 1}"] if j - k >= 3 else [str(d) for d in dims[k:j + 1]]
        k = j + 1
    return "[" + ", ".join(out) + "]"


def _tables_text(tables) -> list[str]:
    """``name[rows x dim dtype]`` per table; neighbours of one shape and dtype grouped by name."""
    out: list[str] = []
    k = 0
    while k < len(tables):
        j = k
        same = lambda t, u=tables[k]: (t.num_embeddings, t.embedding_dim, t.dtype) == (u.num_embeddings, u.embedding_dim, u.dtype)  # noqa: E731
        while j + 1 < len(tables) and same(tables[j + 1]):
            j += 1
        run = tables[k:j + 1]
        grouped = group_names([t.name for t in run], adjacent=True)
        if len(grouped) == 1:
            t = run[0]
            out.append(f"{grouped[0]}[{t.num_embeddings}x{t.embedding_dim} {_DTYPE_NAMES.get(t.dtype, t.dtype)}]")
        else:
            out += [str(t) for t in run]
        k = j + 1
    return out


def _table(header: list[str], rows: list[list[str]], max_width: int = MAX_WIDTH) -> str:
    """Columns separated by `` | ``; cells too wide for ``max_width`` wrap within their column."""
    natural = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    # A column is never narrower than its longest word: names stay whole (a table name
    # cut in two is unreadable and unsearchable); the reason column takes up the slack.
    # Only where the longest words fit side by side at all: else words break too, so that
    # no line passes ``max_width``.
    budget = max_width - 3 * (len(header) - 1)
    words = [max(len(w) for c in (h, *(r[i] for r in rows)) for w in (c.split() or [""])) for i, h in enumerate(header)]
    whole = sum(words) <= budget
    widths = _fit(natural, budget, words if whole else [1] * len(header))
    out = _lines(header, widths, whole) + ["-+-".join("-" * w for w in widths)]
    for r in rows:
        out += _lines(r, widths, whole)
    return "\n".join(out)


def _fit(natural: list[int], budget: int, minimum: list[int]) -> list[int]:
    """Column widths within ``budget`` where the ``minimum`` widths allow: the widest columns
    shrink to one common cap, none below its minimum."""
    if sum(natural) <= budget:
        return natural
    fit = lambda cap: [max(m, min(w, cap)) for w, m in zip(natural, minimum)]  # noqa: E731
    cap = max(natural)
    while cap > 8 and sum(fit(cap)) > budget:
        cap -= 1
    return fit(cap)


def _lines(cells: list[str], widths: list[int], whole: bool = True) -> list[str]:
    wrapped = [textwrap.wrap(c, w, break_on_hyphens=False, break_long_words=not whole) or [""]
               for c, w in zip(cells, widths)]
    height = max(map(len, wrapped))
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*(c[k] if k < len(c) else "" for c in wrapped)).rstrip() for k in range(height)]


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
