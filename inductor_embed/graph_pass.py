"""Running the patterns over a graph, and the pass object Inductor's config holds.

``run_patterns`` is the one entry point: the backend calls it on Dynamo's graph,
``enable()`` installs ``InductorEmbedPass`` (which calls it) as Inductor's
``pre_grad_custom_pass``, and ``explain`` calls it with ``apply=False``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from inductor_embed import _compat, _internal, config
from inductor_embed.lowering._common import coalesce_sparse_grads
from inductor_embed.lowering._hugepages import advise_tables
from inductor_embed.patterns import PATTERNS
from inductor_embed.patterns._fx import (
    mark_regions,
    plugin_op_calls,
    table_batched_reason,
    table_tensors,
    written_args,
)
from inductor_embed.report import Recorder, Report, Skip
from inductor_embed.sparse_grads import keep_coalesced, sparse_weights

log = logging.getLogger("inductor_embed")


def run_patterns(graph: fx.Graph, apply: bool = True) -> Report:
    """Match every enabled pattern in ``graph``; rewrite the matches when ``apply``.

    With ``apply`` the decisions are logged and counted; without, they are only reported.
    Saved-tensor hooks are off meanwhile (``_compat.saved_tensors_hooks_off``): a first call
    compiled inside ``torch.utils.checkpoint`` must save what its recomputation saves.
    """
    with _compat.saved_tensors_hooks_off():
        return _run_patterns(graph, apply)


def _run_patterns(graph: fx.Graph, apply: bool) -> Report:
    rec = Recorder(live=apply)
    # torchrec's sharded modules are table-batched already (FBGEMM's TBE): no pattern touches
    # them (they are no F.embedding / F.embedding_bag calls); the log says they were seen,
    # under the pattern that table-batches bags.
    if config.pattern_enabled("multi_embedding_bag"):
        for node in graph.nodes:
            why = table_batched_reason(node)
            if why is not None:
                rec.skip(Skip("multi_embedding_bag", node.name, why))
    mark_regions(graph)  # torch.func transforms and no_grad blocks: _fx.region_problem
    debug_dir = _compat.compile_debug_dir() if apply else None
    for pattern in PATTERNS:
        if not config.pattern_enabled(pattern.NAME):
            continue
        if apply:
            before, made = (graph.python_code("self").src if debug_dir else ""), len(rec.report.rewrites)
            # Under Inductor's observer: INDUCTOR_LOG_URL_FOR_GRAPH_XFORM=<dir> gets each
            # rewrite's graph before and after (as .dot, with pydot), as Inductor's own passes do.
            with _compat.graph_transform_observer(graph, f"inductor_embed_{pattern.NAME}"):
                pattern.run(graph, rec, apply)
            if debug_dir and len(rec.report.rewrites) > made:
                _write_debug_graphs(debug_dir, pattern.NAME, before, graph.python_code("self").src)
        else:
            pattern.run(graph, rec, apply)
    if apply and rec.report.rewrites:
        # FX counts call_method nodes as pure, so its default DCE would delete an unused
        # ``buf.add_(1)``: writes are kept explicitly.
        graph.eliminate_dead_code(is_impure_node=_is_impure)
        graph.lint()
        # Sparse tables' gradients are coalesced where the backward coalesces them (not on the
        # CPU by default): keep them flagged so in param.grad.
        for weight in sparse_weights(graph):
            if coalesce_sparse_grads(weight):
                keep_coalesced(weight)
        _huge_pages(graph)
    rec.report.graphs = 1
    return rec.report


_DEBUG_SEQ = itertools.count()


def _write_debug_graphs(debug_dir: str, pattern: str, before: str, after: str) -> None:
    """A TORCH_COMPILE_DEBUG=1 run: the graph's code before and after a pattern that
    rewrote it, as ``<debug dir>/inductor_embed/<n>_<pattern>_{before,after}.py``."""
    out = pathlib.Path(debug_dir) / "inductor_embed"
    out.mkdir(parents=True, exist_ok=True)
    n = next(_DEBUG_SEQ)
    (out / f"{n:03d}_{pattern}_before.py").write_text(before)
    (out / f"{n:03d}_{pattern}_after.py").write_text(after)


def _huge_pages(graph: fx.Graph) -> None:
    """Ask for huge pages under each fused op's big CPU tables (``_hugepages.advise_tables``).
    A speed-up only: whatever goes wrong here is logged and never fails the compile."""
    for node, bound in plugin_op_calls(graph):
        # a table, not a value the graph's caller computed (it has a grad_fn)
        tables = [t for t in table_tensors(bound) if t.grad_fn is None]
        try:
            advise_tables(tables, _compat.op_name(node.target)[1].removesuffix(".default"), in_compile=True)
        except Exception as e:  # noqa: BLE001 (an optional speed-up must not break torch.compile)
            log.debug("huge pages: skipped for %s: %s", node.target, e)


def _is_impure(node: fx.Node) -> bool:
    return node.is_impure() or bool(written_args(node))


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hash of every source file of the plugin: a code change changes the cache key."""
    import inductor_embed
    import inductor_embed.kernels
    import inductor_embed.lowering

    h = hashlib.sha256()
    for pkg in (inductor_embed, inductor_embed.lowering, inductor_embed.kernels):
        for path in sorted(pathlib.Path(pkg.__file__).parent.glob("*.py")) + sorted(
            pathlib.Path(pkg.__file__).parent.glob("*/*.py")
        ):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def cache_key() -> str:
    """The plugin's part of the FX graph cache key: code and config."""
    return hashlib.sha256((_source_hash() + json.dumps([config.snapshot(), _internal.snapshot()], sort_keys=True)).encode()).hexdigest()


class InductorEmbedPass(_compat.CustomGraphPass):
    """Inductor ``pre_grad_custom_pass`` that runs the patterns, chained after ``previous``.

    ``uuid()`` combines our code + config hash with the previous pass's uuid, so the
    FX graph cache key changes whenever either does (``rewrite`` does not enter the key:
    both modes produce the same graph). If the previous pass is a plain
    callable (no uuid), we return None and Inductor bypasses the cache, as it would
    for that callable alone.
    """

    def __init__(self, previous: Callable[[fx.Graph], Any] | None = None, rewrite: bool = True) -> None:
        self.previous = previous
        # False when the backend has already rewritten Dynamo's graph itself: the pass
        # then only carries the cache key (and runs the user's pass).
        self.rewrite = rewrite

    def __call__(self, graph: fx.Graph) -> None:
        if self.previous is not None:
            self.previous(graph)
        if self.rewrite:
            run_patterns(graph, apply=True)  # Inductor recompiles the module after its pre-grad passes

    def uuid(self) -> Any:
        prev = self.previous
        if prev is None:
            prev_id = None
        elif isinstance(prev, _compat.CustomGraphPass):
            prev_id = prev.uuid()
            if prev_id is None:
                return None
        else:
            return None
        return ("inductor_embed", cache_key(), prev_id)
