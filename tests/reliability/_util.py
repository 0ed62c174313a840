"""Helpers of the reliability tests: run a model eager and compiled on separate copies of
everything it may touch (parameters, buffers, input tensors) and compare all of it."""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.fx as fx
import torch.multiprocessing as mp

from inductor_embed.graph_pass import run_patterns
from tests.inductor_embed._util import TOL


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _flat(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return []


def check_like_eager(
    model: torch.nn.Module,
    inputs: Sequence[Any],
    *,
    backend: Any = "inductor_embed",
    backward: bool = True,
    tol: dict | None = None,
    **compile_kwargs: Any,
) -> Any:
    """Eager vs compiled on copies: outputs, inputs written in place, buffers and every
    parameter gradient must agree. ``tol`` defaults to exact for fp32 outputs and to the
    parameter's dtype tolerance for gradients. Returns the compiled outputs."""
    compiled_model = copy.deepcopy(model)
    in_e, in_c = _clone(list(inputs)), _clone(list(inputs))
    out_e = model(*in_e)
    out_c = torch.compile(compiled_model, backend=backend, **compile_kwargs)(*in_c)
    flat_e, flat_c = _flat(out_e), _flat(out_c)
    assert len(flat_e) == len(flat_c)
    for c, e in zip(flat_c, flat_e):
        t = tol or ({"rtol": 0, "atol": 0} if e.dtype == torch.float32 else TOL.get(e.dtype, {}))
        torch.testing.assert_close(c, e, **t)
    for c, e in zip(_flat(in_c), _flat(in_e)):  # in-place writes to inputs happened in both
        torch.testing.assert_close(c, e, rtol=0, atol=0)
    state_c = compiled_model.state_dict()
    for name, e in model.state_dict().items():  # parameters and buffers written in place
        torch.testing.assert_close(state_c[name], e, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    if backward:
        diff = [(c, e) for c, e in zip(flat_c, flat_e) if e.requires_grad]
        if diff:
            grads = [torch.randn_like(e) for _, e in diff]
            torch.autograd.backward([e for _, e in diff], grads)
            torch.autograd.backward([c for c, _ in diff], grads)
        named_c = dict(compiled_model.named_parameters())
        for name, p in model.named_parameters():
            q = named_c[name]
            if p.grad is None:
                assert q.grad is None or not q.grad.any(), name
                continue
            t = tol or TOL[p.dtype]
            torch.testing.assert_close(q.grad, p.grad, **t, msg=lambda m, n=name: f"grad of {n}: {m}")
    return out_c


def dynamo_graphs(fn: Callable[..., Any], *inputs: Any) -> list[fx.GraphModule]:
    """Dynamo's graphs of ``fn(*inputs)``, untouched (compiled with a backend that runs them as they are)."""
    graphs: list[fx.GraphModule] = []

    def backend(gm: fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(copy.deepcopy(gm))
        return gm.forward

    torch.compile(fn, backend=backend)(*inputs)
    return graphs


def code_before_and_after(gm: fx.GraphModule) -> tuple[str, str]:
    """The graph's code, and its code after run_patterns (on a copy)."""
    after = copy.deepcopy(gm)
    run_patterns(after.graph, apply=True)
    after.recompile()
    return gm.code, after.code


# --- several processes in one gloo group (DDP, FSDP2, torchrec) ---------------------------

def dist_env(tmp_path: Any) -> dict[str, str]:
    """The environment of spawned ranks: a fresh Inductor cache dir, no caches (a hit would
    skip the pass), and no compile-worker pool per rank (two cores)."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": "1"}


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn: Callable[..., Any], *args: Any, out_dir: Any, world: int = 2, timeout: float = 300,
              env: dict[str, str] | None = None) -> list[Any]:
    """``fn(rank, *args)`` in ``world`` spawned processes joined in one gloo process group on
    localhost (a free port); returns each rank's result. ``fn`` must be a module-level function
    (spawn pickles it by name). A rank that raises fails the caller with that rank's traceback
    (and the others are ended); a run longer than ``timeout`` seconds fails too. ``env`` is set
    for the children (Inductor's cache dir, ...); every rank runs with one thread."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        ctx = mp.start_processes(_rank_main, args=(fn, args, free_port(), str(out_dir), world), nprocs=world,
                                 join=False, start_method="spawn")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=2):  # raises ProcessRaisedException / ProcessExitedException
            if time.monotonic() > deadline:
                pytest.fail(f"{getattr(fn, '__name__', fn)}: {world} ranks did not finish in {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _rank_main(rank: int, fn: Callable[..., Any], args: tuple, port: int, out_dir: str, world: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        result = fn(rank, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class LogLines(logging.Handler):
    """The messages of the ``inductor_embed`` logger (rewrites and, at DEBUG, skips) while
    installed: ``with LogLines() as lines: ...`` (a child process has no pytest ``caplog``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._log = logging.getLogger("inductor_embed")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self._level = self._log.level
        self._log.setLevel(logging.DEBUG)
        self._log.addHandler(self)
        return self.lines

    def __exit__(self, *exc: Any) -> None:
        self._log.removeHandler(self)
        self._log.setLevel(self._level)
