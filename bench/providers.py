"""The providers: each turns a workload's eager model into something to time.

| name | what runs |
|---|---|
| eager | the eager model (for multi_table: the reference twin ``multi_embedding_ref``) |
| torch.compile | ``torch.compile(model)``: plain Inductor |
| torch.compile+combo | ``torch.compile(model, options={"combo_kernels": True})``: Inductor's horizontal fusion of independent kernels (Triton only; the CPU backend ignores it) |
| torch.compile+partitioned_scatter | ``torch.compile(model, options={"partitioned_scatter_enabled": True}, dynamic=False)`` on CUDA: Inductor's own answer to atomic-add contention (each scatter-add split over partitions, then summed), opt-in in torch 2.11-2.13; static shapes, as the pass skips dynamic ones |
| inductor_embed | ``torch.compile(model, backend="inductor_embed")``; skipped where the workload's pattern has no config switch or is switched off |
| inductor_embed.op | ``torch.compile`` of the model written with ``torch.ops.inductor_embed.multi_embedding`` called directly (single_table only: the pattern needs >= 2 lookups) |
| fbgemm_tbe | FBGEMM's ``DenseTableBatchedEmbeddingBagsCodegen`` (dense gradient, like the others) where ``fbgemm_gpu`` imports; for sparse_tables its ``SplitTableBatchedEmbeddingBagsCodegen`` with a fused exact optimizer |

Every compiled provider gets its own deep copy of the model, so gradients never mix;
except where the workload ``shares_tables`` (sparse_tables: 2 GiB tables): there every
provider but FBGEMM steps the eager model's tables, each step starting from no gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import inductor_embed
from bench.config import Case
from bench.workloads import EmbeddingModel, Unsupported, Workload


@dataclasses.dataclass
class Runner:
    """A provider made ready for one compile group: call ``fn(*adapt(*inputs))``."""

    provider: str
    fn: Callable[..., torch.Tensor]
    params: list[torch.Tensor]  # whose .grad is reset before every step
    grads: Callable[[], list[torch.Tensor | None]]  # per-table gradients, in eager's order
    adapt: Callable[..., tuple[torch.Tensor, ...]] | None = None  # inputs -> this provider's inputs
    compiled: bool = False
    counts_rewrites: bool = False  # inductor_embed: record the pattern's rewrites
    keep: Any = None  # keeps the model alive
    step: Callable[[], None] | None = None  # the optimizer step that ends a timed step (sparse_tables)
    uncompared: str = ""  # why the gradients ``grads()`` gives as None are not compared


class Provider:
    name: str = ""
    description: str = ""
    inference_only: bool = False  # runs in inference presets only (Inductor's freezing needs no autograd)

    def unavailable(self, workload: Workload, device: torch.device) -> str | None:
        """Why this provider cannot run the workload here, or None."""
        return None

    def build(self, workload: Workload, case: Case, model: EmbeddingModel, device: torch.device) -> Runner:
        raise NotImplementedError


def _model_runner(name: str, fn: Callable[..., torch.Tensor], model: EmbeddingModel, workload: Workload,
                  case: Case, **kw: Any) -> Runner:
    return Runner(name, fn, list(model.parameters()), lambda: [w.grad for w in model.weights()], keep=model,
                  step=workload.optimizer(model, case), **kw)


class Eager(Provider):
    name = "eager"
    description = "the eager PyTorch model"

    def build(self, workload, case, model, device):
        return _model_runner(self.name, model, model, workload, case)


class Compiled(Provider):
    """``torch.compile`` with a backend and options, on a deep copy of the model."""

    def __init__(self, name: str, description: str, backend: str = "inductor",
                 options: dict[str, Any] | None = None, inference_only: bool = False, static: bool = False) -> None:
        self.name, self.description, self.backend, self.options = name, description, backend, options
        self.inference_only = inference_only
        self.static = static  # compile with static shapes, whatever dimensions the runner marks dynamic

    def unavailable(self, workload, device):
        missing = [k for k in (self.options or {}) if k not in _inductor_config_keys()]
        if missing:
            return f"torch {torch.__version__}'s Inductor config has no {missing}"
        if (self.options or {}).get("combo_kernels") and device.type == "cpu":
            return ("combo_kernels changes Triton (GPU) code only: on the CPU Inductor's C++ code is the same "
                    "as torch.compile's (checked on torch 2.13), so it is not timed twice")
        return None

    def _model(self, workload: Workload, model: EmbeddingModel) -> nn.Module:
        # sparse_tables: 4 x 2,000,000 x 64 fp32 tables and their Adam state, once per provider,
        # would not fit the machine; a step costs the same whatever the values are. Dynamo
        # guards its cache entries on the backend, so each wrapper of the one module runs
        # its own backend's code (checked on torch 2.13 with two counting backends).
        return model if workload.shares_tables else copy.deepcopy(model)

    def build(self, workload, case, model, device):
        m = self._model(workload, model)
        kw: dict[str, Any] = {"backend": self.backend}
        if self.options:
            kw["options"] = dict(self.options)
        if self.static:
            kw["dynamic"] = False
        return _model_runner(self.name, torch.compile(m, **kw), m, workload, case, compiled=True,
                             counts_rewrites=self.backend == "inductor_embed",
                             adapt=_unmarked if self.static else None)


def _unmarked(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs as new views of themselves: the runner's ``maybe_mark_dynamic`` hints live on
    the tensor objects, and a view has none, so ``dynamic=False`` compiles them static."""
    return tuple(t.view_as(t) for t in inputs)


class PartitionedScatter(Compiled):
    """Inductor's partitioned scatter (``torch._inductor.config.partitioned_scatter_enabled``): a
    post-grad pass that splits a contended ``index_put_(accumulate=True)`` (an embedding's
    backward) over several copies of its output, then sums them: fewer atomic collisions
    for more memory. A GPU peer: the pass's target is Triton's atomic adds. It skips
    dynamic shapes, so this provider compiles once per batch size with static shapes."""

    def __init__(self) -> None:
        super().__init__("torch.compile+partitioned_scatter",
                         'torch.compile(model, options={"partitioned_scatter_enabled": True}, dynamic=False)',
                         options={"partitioned_scatter_enabled": True}, static=True)

    def unavailable(self, workload, device):
        if device.type != "cuda":
            return ("partitioned scatter splits Triton's atomic adds on a GPU (collision-heavy backward rows); "
                    "it is a GPU peer, not timed on the CPU")
        return super().unavailable(workload, device)


class InductorEmbed(Compiled):
    def __init__(self, name: str = "inductor_embed", options: dict[str, Any] | None = None,
                 inference_only: bool = False) -> None:
        shown = f", options={options}" if options else ""
        super().__init__(name, f'torch.compile(model, backend="inductor_embed"{shown})', backend="inductor_embed",
                         options=options, inference_only=inference_only)

    def unavailable(self, workload, device):
        why = super().unavailable(workload, device)
        if why or workload.pattern == "*":  # a whole model: whatever patterns it has
            return why
        if not hasattr(inductor_embed.config, workload.pattern):
            return (f"pattern {workload.pattern} not implemented in inductor_embed yet "
                    f"(inductor_embed.config has no {workload.pattern!r} switch)")
        if not inductor_embed.config.pattern_enabled(workload.pattern):
            return f"pattern {workload.pattern} is switched off in inductor_embed.config"
        return None


class InductorEmbedOp(Compiled):
    def __init__(self) -> None:
        super().__init__("inductor_embed.op",
                         "torch.compile of the model calling torch.ops.inductor_embed.multi_embedding directly")

    def unavailable(self, workload, device):
        if type(workload).op_model is Workload.op_model:
            return f"the {workload.name} workload has no direct-op form (the backend row covers it)"
        return None

    def _model(self, workload, model):
        return workload.op_model(model)


@functools.cache
def _inductor_config_keys() -> frozenset[str]:
    import torch._inductor.config as cfg

    return frozenset(cfg.get_config_copy())


@functools.cache
def fbgemm_status() -> tuple[str | None, str]:
    """(fbgemm_gpu's version, "") if its dense TBE imports, else (None, why not)."""
    try:
        with warnings.catch_warnings():  # its optional SSD/Adam lookups warn when they do not import
            warnings.simplefilter("ignore")
            import fbgemm_gpu
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (  # noqa: F401
                DenseTableBatchedEmbeddingBagsCodegen,
            )
    except Exception as e:  # ImportError, or an ABI mismatch with this torch (OSError, RuntimeError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"fbgemm_gpu does not import here ({type(e).__name__}: {first[:200]})"
    try:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("fbgemm-gpu-cpu", "fbgemm-gpu", "fbgemm-gpu-nightly"):
            try:
                return f"{dist} {version(dist)}", ""
            except PackageNotFoundError:
                continue
    except ImportError:  # pragma: no cover
        pass
    return f"fbgemm_gpu {getattr(fbgemm_gpu, '__version__', '?')}", ""


class Fbgemm(Provider):
    name = "fbgemm_tbe"
    description = ("FBGEMM DenseTableBatchedEmbeddingBagsCodegen (dense gradient, SUM pooling); "
                   "SplitTableBatchedEmbeddingBagsCodegen with a fused optimizer for sparse_tables")

    def unavailable(self, workload, device):
        if type(workload).fbgemm is Workload.fbgemm:  # first: such a row has no FBGEMM peer at all
            return f"no FBGEMM equivalent wired for the {workload.name} workload"
        version, reason = fbgemm_status()
        return reason if version is None else None

    def build(self, workload, case, model, device):
        try:
            tbe = workload.fbgemm(model, case, device)
        except Unsupported:
            raise
        except Exception as e:  # e.g. the CPU-only wheel asked for a CUDA TBE
            text = str(e).strip().splitlines()
            raise Unsupported(f"FBGEMM could not build its TBE here: {type(e).__name__}: "
                              f"{text[0][:200] if text else ''}") from e
        uncompared = ("table gradients not compared: FBGEMM's fused optimizer applies them inside the backward"
                      if tbe.fused else "")
        return Runner(self.name, tbe.module, tbe.params(), tbe.grads, adapt=tbe.adapt, keep=tbe, step=tbe.step,
                      uncompared=uncompared)


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Eager(),
        Compiled("torch.compile", "torch.compile(model)"),
        Compiled("torch.compile+combo", 'torch.compile(model, options={"combo_kernels": True})',
                 options={"combo_kernels": True}),
        PartitionedScatter(),
        InductorEmbed(),
        InductorEmbedOp(),
        Fbgemm(),
        # Inductor's freezing (weights as constants, folded and laid out for the kernels) works
        # under no_grad / inference_mode only: the inference presets' extra providers.
        Compiled("torch.compile+freezing", 'torch.compile(model, options={"freezing": True})',
                 options={"freezing": True}, inference_only=True),
        InductorEmbed("inductor_embed+freezing", options={"freezing": True}, inference_only=True),
    )
}
