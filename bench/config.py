"""The benchmark's records: what to run (``Case``, ``Preset``) and what came out
(``Stat``, ``Bytes``, ``ProviderResult``, ``CaseResult``, ``RunMeta``, ``RunResult``).

All are frozen dataclasses. Results round-trip through JSON (``to_dict`` /
``from_dict``), so ``python -m bench --report results.json`` can redraw the
markdown and the plots on another machine (one with matplotlib, say).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Index distributions, by name (bench/distributions.py draws them).
DISTRIBUTIONS: dict[str, str] = {
    "uniform": "uniform over the vocabulary",
    "halves": "half the batch on one index, a quarter on a second, ... (index k has probability 0.5^(k+1))",
    "same": "every index the same row",
    "hot20": "80% uniform + 20% on one hot row",
    "zipf1.15": "Zipf, alpha 1.15, over the vocabulary (ranks scattered over the rows)",
}

DTYPES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}  # name -> bytes per element
INDEX_BYTES = 8  # int64 indices everywhere, as nn.Embedding users pass them


@dataclasses.dataclass(frozen=True)
class Case:
    """One workload configuration: the tables, the batch and how indices are drawn.

    ``vocabs[k]`` x ``dims[k]`` is table k. ``batch`` is the number of lookups per table
    (bags: bags per table, each of ``bag_size`` indices). ``panel`` names the plot's
    subplot the case belongs to and ``x`` is its position on that subplot's x axis.
    """

    workload: str  # key in bench.workloads.WORKLOADS
    panel: str  # subplot title, e.g. "V=100000 D=32"
    vocabs: tuple[int, ...]
    dims: tuple[int, ...]
    batch: int
    dist: str = "uniform"
    dtype: str = "float32"
    bag_size: int = 1
    weighted: bool = False  # bags: per-sample weights
    x_axis: str = "batch"  # "batch" or "tables": what the plot's x axis is
    variant: str = ""  # the workload's model variant (e.g. multi_table "fm_slices"), "" for its plain model

    def __post_init__(self) -> None:
        if len(self.vocabs) != len(self.dims):
            raise ValueError(f"{len(self.vocabs)} vocab sizes but {len(self.dims)} dims")
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(f"unknown index distribution {self.dist!r}; known: {list(DISTRIBUTIONS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {list(DTYPES)}")

    @property
    def tables(self) -> int:
        return len(self.dims)

    @property
    def x(self) -> int:
        return self.tables if self.x_axis == "tables" else self.batch

    @property
    def compile_key(self) -> tuple:
        """Cases with one key share one model and one compile (the batch is dynamic)."""
        return (self.workload, self.vocabs, self.dims, self.dtype, self.bag_size, self.weighted, self.variant)

    @property
    def label(self) -> str:
        """A short readable id, e.g. ``T=10 D=1..8 B=2048 uniform fp32``."""
        if self.tables == 1:
            shape = f"V={self.vocabs[0]} D={self.dims[0]}"
        else:
            lo, hi = min(self.dims), max(self.dims)
            shape = f"T={self.tables} D={lo}..{hi}" if lo != hi else f"T={self.tables} D={lo}"
            vlo, vhi = min(self.vocabs), max(self.vocabs)
            shape += f" V={vlo}..{vhi}" if vlo != vhi else f" V={vlo}"
        bag = f" L={self.bag_size}" if self.bag_size > 1 else ""
        w = " weighted" if self.weighted else ""
        dt = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]
        variant = f" {self.variant}" if self.variant else ""
        return f"{shape} B={self.batch}{bag}{w} {self.dist} {dt}{variant}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named set of cases and how hard to time them."""

    name: str
    description: str
    cases: tuple[Case, ...]
    iters: int  # timed iterations per provider and measure
    warmup: int  # untimed iterations first
    copy_mib: int  # size of the copy that measures the device's bandwidth
    providers: tuple[str, ...] | None = None  # None: every provider
    warm_up: bool = True  # compile a tiny model first, so no compile time carries Inductor's start-up
    rss: bool = False  # also measure each provider's peak RSS growth in its own process (bench/rss.py; CPU)
    inference: bool = False  # time the forward alone under torch.inference_mode(), models in eval()


@dataclasses.dataclass(frozen=True)
class Stat:
    """Milliseconds: median and the 20th / 80th percentiles of ``n`` samples."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A speedup: the median and 20th / 80th percentiles of ``n`` per-round ratios.

    Round i's ratio is the baseline's time over the provider's, both taken in round i,
    back to back: on a shared machine a load spike then slows both sides of one ratio
    rather than one side of the comparison.
    """

    median: float
    p20: float
    p80: float
    n: int


@dataclasses.dataclass(frozen=True)
class Bytes:
    """Bytes one forward / one backward must move at least (formulas in bench/workloads)."""

    fwd: int
    bwd: int

    @property
    def fwd_bwd(self) -> int:
        return self.fwd + self.bwd


@dataclasses.dataclass(frozen=True)
class ProviderResult:
    """One provider on one case.

    status: "ok"; "mismatch" (timed, but its output or gradients differ from the
    reference beyond the dtype's tolerance; ``note`` says by how much); "skipped"
    (``note`` says why: not installed, pattern not implemented, ...); "failed" (it
    raised; ``note`` holds the error).
    """

    provider: str
    status: str
    note: str = ""
    compile_s: float | None = None  # first forward + backward when it compiled, None otherwise
    fwd: Stat | None = None
    bwd: Stat | None = None
    fwd_bwd: Stat | None = None  # the timed step: forward + backward, or the forward alone in an inference run
    peak_mem_bytes: int | None = None  # extra memory of one fwd+bwd (method in RunMeta)
    launches: int | None = None  # device kernels in one fwd+bwd (CUDA only)
    rss_step_bytes: int | None = None  # peak RSS growth of one training step, in its own process (bench/rss.py)
    rss_first_bytes: int | None = None  # the same for the first step (compile, optimizer state)
    rewrites: int | None = None  # inductor_embed rewrites made when it compiled
    max_err: float | None = None  # max abs difference to the reference, output and grads
    vs_eager: Ratio | None = None  # the step's speedup over eager, per-round ratios
    vs_compile: Ratio | None = None  # the step's speedup over torch.compile, per-round ratios

    @property
    def timed(self) -> bool:
        return self.fwd_bwd is not None


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: Case
    bytes: Bytes
    results: tuple[ProviderResult, ...]

    def get(self, provider: str) -> ProviderResult | None:
        for r in self.results:
            if r.provider == provider:
                return r
        return None


@dataclasses.dataclass(frozen=True)
class RunMeta:
    preset: str
    device: str  # "cpu" or "cuda"
    device_name: str
    results_dir: str  # the <device> folder name under bench/results
    torch: str
    triton: str
    python: str
    fbgemm: str  # version, or why it is not used
    git_sha: str
    git_dirty: bool
    date: str  # UTC, ISO 8601
    threads: int
    copy_gbps: float  # measured device copy bandwidth (read + write bytes / time)
    copy_mib: int
    timer: str
    shapes: str
    compile_caches: str
    peak_mem_method: str
    iters: int
    warmup: int
    wall_s: float = 0.0
    rss_method: str = ""  # how rss_step_bytes was measured, where a workload asked for it
    inference: bool = False  # the step is the forward alone, under torch.inference_mode(), models in eval()


@dataclasses.dataclass(frozen=True)
class RunResult:
    meta: RunMeta
    cases: tuple[CaseResult, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (workload, reason) for workloads not run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        def stat(s):
            return None if s is None else Stat(**s)

        def case_result(c):
            case = dict(c["case"])
            case["vocabs"], case["dims"] = tuple(case["vocabs"]), tuple(case["dims"])
            results = []
            for r in c["results"]:
                r = dict(r)
                for k in ("fwd", "bwd", "fwd_bwd"):
                    r[k] = stat(r[k])
                for k in ("vs_eager", "vs_compile"):
                    r[k] = None if r.get(k) is None else Ratio(**r[k])
                results.append(ProviderResult(**r))
            return CaseResult(Case(**case), Bytes(**c["bytes"]), tuple(results))

        return cls(
            meta=RunMeta(**d["meta"]),
            cases=tuple(case_result(c) for c in d["cases"]),
            skipped=tuple(tuple(s) for s in d.get("skipped", ())),
        )
