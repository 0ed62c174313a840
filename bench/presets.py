"""The presets: which cases a run covers and how many iterations it times.

- ``smoke``: tiny sizes, every workload and code path, seconds; what CI runs (no
  timing is asserted).
- ``cpu-quick``: a few minutes on a 2-core CPU: small and medium batches, a subset
  of each study, few iterations.
- ``cpu-infer``: CPU serving: the forward alone under ``torch.inference_mode()`` at batch
  1 to 4,096 (DLRM bags, 26 lookups + cat, FM fields, a sum, a one-hot Linear), plain and
  with Inductor's freezing.
- ``cpu-models``: five whole models (DLRM, DeepFM, a BERT-base block, an OGB-style GNN,
  a two-tower retriever) at realistic sizes, training step.
- ``cpu-sparse``: big sparse=True tables with the optimizer step timed, and
  each provider's peak RSS growth measured in a process of its own (bench/rss.py).
- ``gpu``: the full sweep, for one H100/H200. Run it in parts with ``--workloads``
  where a command may only take 10 minutes.
- ``gpu-check-*``: the few cases behind the GPU goals, one small preset per goal (a
  handful of compiles each, well under two minutes on one H100/H200), so that
  ``scripts/gpu_check.sh`` fits a short device loan with a time cap per preset.
"""

from __future__ import annotations

import itertools

from bench.config import Case, Preset
from bench.workloads.models import ATOM_VOCABS, BOND_VOCABS

ALL_DISTS = ("uniform", "halves", "same", "hot20", "zipf1.15")
# The multi-table vocabularies of RTB House's pytorch-fast-embedding, cycled over the tables
MULTI_TABLE_VOCABS = (1_000, 5_000, 10_000, 50_000)


def cycle(values: tuple[int, ...], n: int) -> tuple[int, ...]:
    return tuple(itertools.islice(itertools.cycle(values), n))


def single(vocab: int, dim: int, batches, dists, dtype: str = "float32", panel: str = "") -> list[Case]:
    panel = panel or f"V={vocab} D={dim}" + ("" if dtype == "float32" else f" {dtype}")
    return [Case("single_table", f"{panel} {d}", (vocab,), (dim,), b, d, dtype)
            for d in dists for b in batches]


def multi(panel: str, dims: tuple[int, ...], batches, dtype: str = "float32",
          vocabs: tuple[int, ...] = MULTI_TABLE_VOCABS, dist: str = "uniform") -> list[Case]:
    return [Case("multi_table", panel, cycle(vocabs, len(dims)), dims, b, dist, dtype) for b in batches]


def table_sweep(tables, batch: int, dims: tuple[int, ...] = (1, 2, 4, 8)) -> list[Case]:
    return [Case("multi_table", f"tables at B={batch}, D={'/'.join(map(str, dims))}", cycle(MULTI_TABLE_VOCABS, t),
                 cycle(dims, t), batch, "uniform", x_axis="tables") for t in tables]


def bags(panel: str, tables: int, rows: int, dims: tuple[int, ...], batches, bag_size: int = 20,
         weighted: bool = False, dist: str = "zipf1.15", variant: str = "") -> list[Case]:
    return [Case("table_batched_bags", panel, (rows,) * tables, cycle(dims, tables), b, dist, "float32",
                 bag_size, weighted, variant=variant) for b in batches]


def sparse(panel: str, tables: int, rows: int, dim: int, batches, dists=("uniform", "zipf1.15"),
           variant: str = "adam") -> list[Case]:
    """sparse_tables: ``tables`` x ``rows`` x ``dim`` fp32 sparse=True tables + an
    MLP, optimizer step timed; ``variant`` is the tables' optimizer (adam, adagrad, sgd)."""
    return [Case("sparse_tables", panel, (rows,) * tables, (dim,) * tables, b, d, variant=variant)
            for d in dists for b in batches]


def fm(batches, fields: int = 26, dim: int = 16) -> list[Case]:
    """A Criteo-like FM model on multi_table: 26 field slices, then a per-field bias
    before the cat (bench/workloads/multi_table.py FieldsFM)."""
    return [Case("multi_table", f"Criteo-like FM, {fields} fields D={dim} ({v})", cycle(MULTI_TABLE_VOCABS, fields),
                 (dim,) * fields, b, variant=v) for v in ("fm_slices", "fm_bias") for b in batches]


# Criteo Kaggle's 26 categorical cardinalities (the DLRM reference's day counts), capped at
# 200,000 rows as a CPU-sized model would hash them.
CRITEO_VOCABS = tuple(min(v, 200_000) for v in (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572))


def deepfm(batches, dim: int = 8) -> list[Case]:
    """A DeepFM: 26 Criteo fields of width ``dim``, each looked up once and read by
    a stack (FM) and a flat cat with dense features (deep part); one fused op should serve
    both (bench/workloads/multi_table.py DeepFM)."""
    return [Case("multi_table", f"DeepFM, 26 Criteo fields D={dim} (deepfm)", CRITEO_VOCABS, (dim,) * 26, b,
                 variant="deepfm") for b in batches]


def sums_and_mf(batches, fields: int = 9, dim: int = 64) -> list[Case]:
    """Sums of lookups (9 tables of one width summed, then a LayerNorm: an atom
    encoder; ``sum_noop``: each lookup through ``.to(device)`` and ``.contiguous()`` first), matrix factorisation (users 100k and items 50k x D, per-id biases, a dot
    product) and shared first columns written into each lookup before the cat, on
    multi_table (bench/workloads/multi_table.py SumEncoder, MatrixFactorisation, SharedColumns)."""
    return ([Case("multi_table", f"sum of {fields} lookups D={dim} ({v})", cycle(MULTI_TABLE_VOCABS, fields),
                  (dim,) * fields, b, variant=v) for v in ("sum", "sum_noop") for b in batches]
            + [Case("multi_table", f"matrix factorisation D={dim} (mf)", (100_000, 50_000, 100_000, 50_000),
                    (dim, dim, 1, 1), b, variant="mf") for b in batches]
            + [Case("multi_table", f"{fields} lookups D={dim}, shared first columns (shared)",
                    cycle(MULTI_TABLE_VOCABS, fields), (dim,) * fields, b, variant="shared") for b in batches])


def hooks(batches, n_classes: int = 1000, dim: int = 64, vocab: int = 10_000, bag_size: int = 8) -> list[Case]:
    """The pattern hooks (one_hot_linear, its scaled form and a TabM-style ensemble of 8
    members over 8 one-hot fields of 100 classes and 4 dense features, tied_bags); see
    bench/workloads/pattern_hooks.py."""
    return ([Case("one_hot_linear", f"classes={n_classes} D={dim}{s and ' ' + s}", (n_classes,), (dim,), b,
                  variant=s) for s in ("", "scaled") for b in batches]
            + [Case("one_hot_linear", f"ensemble k=8, 8 fields x 100 classes D={dim}", (100,) * 8, (dim,) * 8, b,
                    variant="ensemble") for b in batches]
            + [Case("tied_bags", f"V={vocab} D={dim} L={bag_size}", (vocab,), (dim,), b, "zipf1.15",
                    bag_size=bag_size) for b in batches])


# pytorch-fast-embedding's multi-table configurations (its FastMultiEmbedding study)
DIMS_1_8 = (1, 2, 4, 8, 1, 2, 4, 8, 1, 2)
DIMS_4_32 = (4, 8, 16, 32, 4, 8, 16, 32, 4, 8)
DIMS_64_256 = (64, 128, 256, 64, 128, 256, 64, 128, 256, 64)
DIMS_20 = cycle((1, 2, 4, 8, 16, 32), 20)


def _smoke() -> Preset:
    # Few compiles (each costs 1-2 s on a CPU): one group per code path, two cases in a
    # group so the dynamic batch is reused, bf16 on the multi-table path (the fp32
    # reference), per-sample weights on the bags path.
    cases = (
        single(100, 8, (64,), ("same",))
        + [Case("multi_table", "T=3 bf16", (100, 500, 1000), (1, 2, 4), b, "zipf1.15", "bfloat16")
           for b in (32, 64)]
        + bags("T=2 D=8", 2, 100, (8,), (16,), bag_size=4, weighted=True)
        + sparse("T=2 sparse", 2, 100, 8, (16,), ("zipf1.15",))
    )
    # The pattern hooks are left out (tests/bench checks their models without compiling).
    return Preset("smoke", "tiny sizes through every code path (CI; no timing is asserted)", tuple(cases),
                  iters=2, warmup=1, copy_mib=8, warm_up=False,
                  providers=("eager", "torch.compile", "inductor_embed", "inductor_embed.op", "fbgemm_tbe"))


def _cpu_quick() -> Preset:
    # pytorch-fast-embedding's tables as they are; the cost on a CPU is the dense gradient's
    # zero-fill (V x D per table per step), so big configurations get one batch size each.
    # Left to the gpu preset: the table-count sweep (100 tables cost ~30 s of compile per
    # provider on 2 cores), per-sample weights and mixed dims in bags.
    small, large = 512, 16384
    cases = (
        single(100_000, 32, (small, large), ALL_DISTS)
        + single(10, 32, (small, large), ("uniform",))
        # users' worst case for compiled backward: bf16, one row repeated 262,144 times
        + single(32_000, 64, (262_144,), ("same",), dtype="bfloat16", panel="worst case V=32000 D=64 bf16")
        + multi("10 tables, D 1..8", DIMS_1_8, (small, 4096, large))
        + multi("10 tables, D 4..32", DIMS_4_32, (small, large))
        + multi("10 tables, D 64..256", DIMS_64_256, (4096,))
        # heavy index collisions (Zipf): where Inductor's element-wise atomic adds are weakest
        + multi("10 tables, D 64..256, Zipf", DIMS_64_256, (4096,), dist="zipf1.15")
        + multi("20 tables, D 1..32", DIMS_20, (4096,))
        # a CTR model's 26 categorical features (Criteo-like) on a CPU: the training step
        # is bound by the dense gradients' zero-fill (26 x 100,000 x 64 fp32 = 666 MB)
        + multi("26 tables, V=100000 D=64", (64,) * 26, (4096,), vocabs=(100_000,))
        # FBGEMM's TBE defaults, scaled to the CPU: T=8 tables of 5,000 rows (not 32 x 100,000)
        + bags("T=8 rows=5000 D=128 L=20", 8, 5_000, (128,), (small,))
        # DLRM-style: 26 bags of 20 Zipf ids per sample
        + bags("T=26 rows=100000 D=64 L=20", 26, 100_000, (64,), (2048,))
        # max pooling and sparse=True tables (the DLRM reference's default), both sizes
        + [c for v in ("max", "sparse") for c in (
            bags(f"T=8 rows=5000 D=128 L=20 {v}", 8, 5_000, (128,), (small,), variant=v)
            + bags(f"T=26 rows=100000 D=64 L=20 {v}", 26, 100_000, (64,), (2048,), variant=v))]
        + fm((small, 4096))
        + deepfm((2048,))
        + sums_and_mf((small, 4096))
        + hooks((small, 4096))
    )
    return Preset("cpu-quick", "a few minutes on a 2-core CPU: a subset of every study", tuple(cases),
                  iters=10, warmup=1, copy_mib=128)


def _cpu_infer() -> Preset:
    # What CPU serving runs: the forward alone under torch.inference_mode(), at batch 1 (one
    # request), 64, 512 and 4,096; plain and with Inductor's freezing.
    batches = (1, 64, 512, 4096)
    cases = (
        bags("DLRM: 26 bags, rows=100000 D=64 L=20", 26, 100_000, (64,), batches)
        + multi("26 lookups + cat, V=100000 D=64", (64,) * 26, batches, vocabs=(100_000,))
        + [Case("multi_table", "Criteo-like FM, 26 fields D=16 (fm_slices)", cycle(MULTI_TABLE_VOCABS, 26), (16,) * 26,
                b, variant="fm_slices") for b in batches]
        + [Case("multi_table", "BERT-style sum of 9 lookups D=64 (sum)", cycle(MULTI_TABLE_VOCABS, 9), (64,) * 9, b,
                variant="sum") for b in batches]
        + [Case("one_hot_linear", "classes=1000 D=64", (1000,), (64,), b) for b in batches]
    )
    return Preset("cpu-infer", "CPU inference: the forward under torch.inference_mode(), batch 1 to 4,096, "
                  "with and without freezing", tuple(cases), iters=20, warmup=3, copy_mib=128, inference=True,
                  providers=("eager", "torch.compile", "torch.compile+freezing", "inductor_embed",
                             "inductor_embed+freezing", "fbgemm_tbe"))


def model_cases() -> tuple[Case, ...]:
    """Five model families at realistic sizes, training step (bench/workloads/models.py)."""
    return (
        Case("models", "DLRM, 26 Criteo bags D=16", CRITEO_VOCABS, (16,) * 26, 2048, variant="dlrm"),
        Case("models", "DeepFM, 26 Criteo fields D=8", CRITEO_VOCABS, (8,) * 26, 2048, variant="deepfm"),
        Case("models", "BERT-base embeddings + 1 layer, S=128", (30_522, 512, 2), (768,) * 3, 8, variant="bert"),
        Case("models", "OGB molecule GNN, 9 atom + 3 bond tables D=300", ATOM_VOCABS + BOND_VOCABS, (300,) * 12,
             4096, variant="gnn"),
        Case("models", "two-tower retrieval D=64, history 20", (100_000, 50_000, 1_000), (64,) * 3, 1024,
             variant="two_tower"),
    )


def _cpu_models() -> Preset:
    return Preset("cpu-models", "five whole models' training step on a 2-core CPU", model_cases(), iters=10, warmup=2,
                  copy_mib=128, providers=("eager", "torch.compile", "inductor_embed", "fbgemm_tbe"))


def _cpu_sparse() -> Preset:
    # Big sparse=True tables: 4 tables x 2,000,000 rows x D=64 fp32 (2 GiB; SparseAdam's
    # moments 4 GiB more), batch 4,096, uniform and Zipf; the other table optimizers on uniform.
    # Each case is its own group (a fresh model), and each provider's RSS is measured in
    # a process of its own: ~10 minutes on 2 cores, ~8 GiB of memory at a time.
    key = ("4 tables x 2,000,000 rows, D=64", 4, 2_000_000, 64, (4096,))
    cases = sparse(*key) + sparse(*key, ("uniform",), variant="adagrad") + sparse(*key, ("uniform",), variant="sgd")
    return Preset("cpu-sparse", "big sparse=True tables + optimizer step, step time and peak RSS growth",
                  tuple(cases), iters=10, warmup=2, copy_mib=128, rss=True,
                  providers=("eager", "torch.compile", "inductor_embed", "fbgemm_tbe"))


def _gpu() -> Preset:
    batches = (32, 128, 512, 2048, 8192, 16384)
    cases = []
    for dim in (8, 32, 128, 256):
        cases += single(100_000, dim, batches, ALL_DISTS)
    for vocab in (10, 1_000, 1_000_000):
        cases += single(vocab, 32, batches, ALL_DISTS)
    for dim in (64, 256):
        cases += single(32_000, dim, (65_536, 262_144, 1_048_576), ("same",), dtype="bfloat16",
                        panel=f"worst case V=32000 D={dim} bf16")
    cases += multi("10 tables, D 1..8", DIMS_1_8, batches)
    cases += multi("10 tables, D 4..32", DIMS_4_32, batches)
    cases += multi("10 tables, D 64..256", DIMS_64_256, batches)
    cases += multi("20 tables, D 1..32", DIMS_20, batches)
    cases += multi("10 tables, D 1..8 bf16", DIMS_1_8, batches, dtype="bfloat16")
    cases += fm(batches)
    cases += sums_and_mf(batches)
    cases += table_sweep((10, 100, 1000), 128, dims=DIMS_1_8[:4])
    cases += bags("FBGEMM defaults T=32 rows=100000 D=128 L=20", 32, 100_000, (128,), (128, 512, 2048))
    cases += bags("mixed D 32..256", 32, 100_000, (32, 64, 128, 256), (512,))
    cases += bags("weighted", 32, 100_000, (128,), (512,), weighted=True)
    cases += hooks(batches, n_classes=1000, dim=128, vocab=100_000, bag_size=20)
    cases += model_cases()
    cases += sparse("4 tables x 2,000,000 rows, D=64", 4, 2_000_000, 64, (4096, 16384))
    return Preset("gpu", "the full sweep on one GPU", tuple(cases), iters=30, warmup=5, copy_mib=1024)


def _gpu_check() -> list[Preset]:
    """One preset per GPU goal (scripts/gpu_check.sh runs each under its own time cap).

    Few compile groups each (every group compiles once per compiled provider), a fixed
    provider list (no combo kernels, and inductor_embed only where its pattern fires:
    ``inductor_embed.op`` for one table), fewer iterations than ``gpu``.
    """
    fused, op = ("eager", "torch.compile", "inductor_embed"), ("eager", "torch.compile", "inductor_embed.op")
    # The collision-heavy row also against Inductor's partitioned scatter (its answer to atomic contention).
    contended = (*op, "torch.compile+partitioned_scatter")
    kw = {"iters": 20, "warmup": 3, "copy_mib": 1024}
    return [
        # pytorch-fast-embedding's 10 tables of D 1..8, forward + backward at B <= 4096 vs
        # eager and torch.compile; and a wide (D 64..256) multi-table forward gather.
        Preset("gpu-check-multi", "GPU goal: pytorch-fast-embedding's 10 tables D 1..8 at B <= 4096; "
               "10 tables D 64..256",
               tuple(multi("10 tables, D 1..8", DIMS_1_8, (128, 512, 2048, 4096))
                     + multi("10 tables, D 64..256", DIMS_64_256, (4096, 16384))),
               providers=fused, **kw),
        # The forward gather at D >= 64 against the copy bandwidth: batches big enough to
        # be bandwidth bound (128 MiB of output at B=262,144).
        Preset("gpu-check-gather", "GPU goal: one-table forward gather at D=128 vs the copy bandwidth",
               tuple(single(100_000, 128, (16_384, 65_536, 262_144), ("uniform",))), providers=op, **kw),
        # Users' worst case for a compiled backward: bf16, one row repeated.
        Preset("gpu-check-bf16", "GPU goal: bf16 backward, one row repeated 262,144 / 1,048,576 times",
               tuple(single(32_000, 64, (262_144, 1_048_576), ("same",), dtype="bfloat16",
                            panel="worst case V=32000 D=64 bf16")), providers=contended, **kw),
        # Launch-bound: many tables at a small batch (T=1,000 apart: its torch.compile
        # compile is the slowest thing here, so it runs last, on its own).
        Preset("gpu-check-tables", "GPU goal: T=10 and T=100 tables at B=128",
               tuple(table_sweep((10, 100), 128, dims=DIMS_1_8[:4])), providers=fused, **kw),
        Preset("gpu-check-tables1000", "GPU goal: T=1,000 tables at B=128",
               tuple(table_sweep((1000,), 128, dims=DIMS_1_8[:4])), providers=fused, **kw),
    ]


PRESETS: dict[str, Preset] = {p.name: p for p in (_smoke(), _cpu_quick(), _cpu_infer(), _cpu_models(), _cpu_sparse(),
                                                   _gpu(), *_gpu_check())}
