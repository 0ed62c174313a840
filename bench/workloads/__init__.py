"""The workload registry: name -> ``Workload``.

| name | after | inductor_embed pattern |
|---|---|---|
| single_table | pytorch-fast-embedding's FastEmbedding study | independent_lookups (a lone lookup, CPU fp32); ``inductor_embed.op`` calls the op |
| multi_table | pytorch-fast-embedding's FastMultiEmbedding study | multi_embedding_cat |
| table_batched_bags | FBGEMM's TBE benchmark defaults | multi_embedding_bag |
| one_hot_linear | the embedding-vs-Linear equivalence | one_hot_linear |
| tied_bags | a tied Embedding / EmbeddingBag | tied_embedding_bag |
| sparse_tables | sparse=True recommender training | multi_embedding_cat (sparse=True; optimizer step timed) |
| models | DLRM, DeepFM, BERT, OGB, two-tower code | whatever fires (every rewrite counts) |

pytorch-fast-embedding is RTB House's public GitHub repository of fast embedding modules
and their benchmarks.

The ``inductor_embed`` provider is skipped, with the reason, where ``inductor_embed.config``
has no switch for a workload's pattern or the switch is off.

Bytes moved are counted per workload (each module's ``bytes_formula``): index bytes,
rows gathered, output written; for the backward the gradient read, the zero-fill of
the dense gradient and one atomic read-modify-write of a gradient row per lookup, all
in the tables' dtype. The count is provider-independent: a provider that moves more
(an fp32 accumulation buffer, a sort) shows as fewer GB/s.
"""

from __future__ import annotations

from bench.workloads.base import EmbeddingModel, FbgemmTBE, Unsupported, Workload
from bench.workloads.models import Models
from bench.workloads.multi_table import MultiTable
from bench.workloads.pattern_hooks import OneHotLinear, TiedBags
from bench.workloads.single_table import SingleTable
from bench.workloads.sparse_tables import SparseTables
from bench.workloads.table_batched_bags import TableBatchedBags

WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (SingleTable(), MultiTable(), TableBatchedBags(), OneHotLinear(), TiedBags(), SparseTables(),
                        Models())
}

__all__ = ["WORKLOADS", "EmbeddingModel", "FbgemmTBE", "Unsupported", "Workload"]
