"""What every workload provides, and the pieces they share (FBGEMM's dense TBE).

A workload turns a ``Case`` into an eager model, its inputs and its byte count.
Models expose ``weights()``: their tables in order, so every provider's gradients
can be compared with eager's table by table.
"""

from __future__ import annotations

import contextlib
import weakref
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from bench.config import DTYPES, INDEX_BYTES, Bytes, Case
from bench.distributions import sample


class Unsupported(Exception):
    """A provider cannot run this case (the message says why); recorded as skipped."""


class EmbeddingModel(nn.Module):
    """Base of the workloads' eager models: ``weights()`` lists the tables in order (the
    models register their tables, and nothing else, as parameters in that order)."""

    def weights(self) -> list[torch.Tensor]:
        return list(self.parameters())


class Workload:
    """One family of cases. Subclasses set the class attributes and override the methods."""

    name: str = ""
    title: str = ""
    source: str = ""  # where the workload comes from (seed document, FBGEMM)
    pattern: str = ""  # the inductor_embed.config switch of the rewrite it exercises
    bytes_formula: str = ""  # the byte count, in words, for the report
    tolerance: tuple[float, float] | None = None  # (rtol, atol) of the check (runner.TOLERANCES); None: the dtype's

    def unavailable(self) -> str | None:
        """Why the whole workload cannot run in this checkout, or None."""
        return None

    def build(self, case: Case, device: torch.device) -> EmbeddingModel:
        """The eager model of ``case`` on ``device``, with the same weights for every provider."""
        torch.manual_seed(seed_for(case))
        return self.make(case, torch_dtype(case.dtype)).to(device)

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        raise NotImplementedError

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def dynamic_dims(self, case: Case) -> tuple[tuple[int, int], ...]:
        """(input position, dim) pairs that carry the batch: marked dynamic for compiles."""
        return ((0, 0),)

    def bytes(self, case: Case) -> Bytes:
        raise NotImplementedError

    def op_model(self, model: EmbeddingModel) -> EmbeddingModel | None:
        """The model written with inductor_embed's fused op called directly, or None."""
        return None

    def fbgemm(self, model: EmbeddingModel, case: Case, device: torch.device) -> FbgemmTBE:
        raise Unsupported(f"no FBGEMM equivalent for the {self.name} workload")

    # Workloads whose timed step includes an optimizer step (sparse_tables) override these.
    shares_tables: bool = False  # every provider but FBGEMM steps the eager model's own tables
    steps_weights: bool = False  # the timed step changes the weights: a fresh model per case

    def make_optimizer(self, model: EmbeddingModel, case: Case) -> Callable[[], None] | None:
        """The optimizer step the timed step ends with (None: forward + backward only)."""
        return None

    def optimizer(self, model: EmbeddingModel, case: Case) -> Callable[[], None] | None:
        """``make_optimizer``'s step, one per model object: providers that share a model
        share its optimizer state too (an Adam state is twice the tables)."""
        steps = self.__dict__.setdefault("_steps", weakref.WeakKeyDictionary())
        if model not in steps:
            steps[model] = self.make_optimizer(model, case)
        return steps[model]


# --- shared helpers -------------------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def rng_for(case: Case, salt: str = "") -> np.random.Generator:
    """A numpy generator seeded from the case, so a case draws the same indices in every run."""
    return np.random.default_rng(zlib.crc32(f"{case.label}|{case.workload}|{salt}".encode()))


def table_indices(case: Case, n: int, device: torch.device, salt: str = "") -> torch.Tensor:
    """[n, T] int64: column k drawn from ``case.dist`` over table k's vocabulary."""
    rng = rng_for(case, salt)
    cols = [sample(case.dist, n, v, rng) for v in case.vocabs]
    return torch.from_numpy(np.stack(cols, axis=1)).to(device)


def seed_for(case: Case) -> int:
    """Weights depend on the tables only, so cases sharing a compile share a model."""
    return zlib.crc32(repr(case.compile_key).encode())


def unpooled_bytes(case: Case) -> Bytes:
    """N lookups in each of T tables, outputs concatenated (e = the tables' element size).

    fwd = sum_k  N*8 (indices) + N*D_k*e (rows read) + N*D_k*e (output written)
    bwd = sum_k  N*8 (indices) + N*D_k*e (grad read) + V_k*D_k*e (zero-fill of the dense
                 grad) + 2*N*D_k*e (atomic read-modify-write of one grad row per lookup)
    """
    e, n = DTYPES[case.dtype], case.batch
    fwd = sum(n * INDEX_BYTES + 2 * n * d * e for d in case.dims)
    bwd = sum(n * INDEX_BYTES + n * d * e + v * d * e + 2 * n * d * e for v, d in zip(case.vocabs, case.dims))
    return Bytes(fwd=fwd, bwd=bwd)


def lookup_bags(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TBE's inputs for plain lookups: ``x`` ([B] or [B, T], column k indexing table k) as
    table-major flat indices, and one bag of one index per (table, sample)."""
    return x.t().reshape(-1), torch.arange(x.numel() + 1, device=x.device)


# The fused optimizers FbgemmTBE offers: our name -> FBGEMM's EmbOptimType member.
TBE_OPTIMIZERS: dict[str, str] = {
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",  # DLRM's usual choice: one fp32 of state per row
    "adagrad": "EXACT_ADAGRAD",  # torch.optim.Adagrad's math: a state the size of the table
    "sgd": "EXACT_SGD",  # torch.optim.SGD's math: w -= lr * g
}


class FbgemmTBE:
    """FBGEMM's table-batched embeddings holding copies of a model's tables.

    ``optimizer=None``: ``DenseTableBatchedEmbeddingBagsCodegen``, the others' contract (a
    dense gradient of its flat weights, no optimizer). Else ``SplitTableBatchedEmbeddingBagsCodegen``
    with that fused optimizer (a ``TBE_OPTIMIZERS`` key, learning rate ``lr``): the backward
    updates the touched rows in place and leaves no gradient (``grads()`` gives None for the
    tables). ``head`` is a dense module applied to the TBE's ``[B, sum(D_k)]`` output, with
    its own parameters and gradients (a model's MLP). ``adapt`` turns the workload's inputs
    into TBE's flat indices and offsets (done once per case, outside the timed loop: a TBE
    pipeline gets them in that form). Pooling is SUM; a bag of one index is a plain lookup.
    """

    def __init__(self, weights: Sequence[torch.Tensor], device: torch.device,
                 adapt: Callable[..., tuple[torch.Tensor, ...]], optimizer: str | None = None,
                 lr: float = 0.01, head: nn.Module | None = None) -> None:
        dtype = weights[0].dtype
        if device.type == "cpu" and dtype == torch.bfloat16:
            raise Unsupported("FBGEMM's CPU TBE has no bf16 kernel (split_embedding_cpu_forward is not "
                              "implemented for BFloat16)")
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            DenseTableBatchedEmbeddingBagsCodegen,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        precision = {torch.float32: SparseType.FP32, torch.float16: SparseType.FP16,
                     torch.bfloat16: SparseType.BF16}[dtype]
        kw = {"weights_precision": precision, "output_dtype": precision, "pooling_mode": PoolingMode.SUM}
        cpu = device.type == "cpu"
        specs = [(int(w.shape[0]), int(w.shape[1])) for w in weights]
        with contextlib.nullcontext() if cpu else torch.cuda.device(device):
            if optimizer is None:
                tbe = DenseTableBatchedEmbeddingBagsCodegen(specs, use_cpu=cpu, **kw)
            else:
                from fbgemm_gpu.split_embedding_configs import EmbOptimType

                where = (EmbeddingLocation.HOST, ComputeDevice.CPU) if cpu else (
                    EmbeddingLocation.DEVICE, ComputeDevice.CUDA)
                tbe = SplitTableBatchedEmbeddingBagsCodegen(
                    [(v, d, *where) for v, d in specs], optimizer=getattr(EmbOptimType, TBE_OPTIMIZERS[optimizer]),
                    learning_rate=lr, **kw)
        with torch.no_grad():
            for dst, w in zip(tbe.split_embedding_weights(), weights):
                dst.copy_(w.detach())
        self.fused = optimizer is not None
        self.tbe = tbe
        self.head = head
        self.module: Callable[..., torch.Tensor] = tbe if head is None else (lambda *a: head(tbe(*a)))
        self.adapt = adapt
        self.step: Callable[[], None] | None = None  # the head's optimizer step, set by the workload
        self._shapes = specs

    def grads(self) -> list[torch.Tensor | None]:
        heads = [p.grad for p in self.head.parameters()] if self.head is not None else []
        g = None if self.fused else self.tbe.weights.grad
        if g is None:
            return [None] * len(self._shapes) + heads
        offsets = [int(o) for o in self.tbe.weights_offsets.tolist()]
        return [g[o:o + v * d].view(v, d) for o, (v, d) in zip(offsets, self._shapes)] + heads

    def params(self) -> list[torch.Tensor]:
        """What gets a ``.grad``: the dense TBE's flat weights, or only the head's (fused)."""
        heads = list(self.head.parameters()) if self.head is not None else []
        return heads if self.fused else [self.tbe.weights, *heads]
