"""Whole models, written here from scratch at realistic sizes: the training step of each
(forward, backward of the output), not one op. Which patterns fire is the model's business;
every rewrite counts.

| variant | model | input |
|---|---|---|
| dlrm | DLRM: a bottom MLP on 13 dense features, 26 EmbeddingBags (Criteo Kaggle's cardinalities capped at 200,000, D=16, one id per bag), pairwise dot products, a top MLP | [B, 26] ids |
| deepfm | DeepFM: the same fields at D=8, each looked up once, read by an FM stack and a flat cat (multi_table's ``DeepFM``) | [B, 26] ids |
| bert | a BERT-base embedding block (30,522 x 768 words + 512 positions + 2 token types, LayerNorm) and one encoder layer (12 heads, 3,072 wide), no dropout | [B, S] ids, [B, S] types |
| gnn | an OGB-style molecule encoder: 9 atom and 3 bond feature tables (D=300) summed, two GIN layers (messages by index_add over the edges) | [N, 9] atoms, [E, 3] bonds, [2, E] edges |
| two_tower | a two-tower retriever: users (100,000 x 64) with their 20 last items mean-pooled, items (50,000 x 64, shared with the history) with a category (1,000 x 64), each through an MLP; in-batch dot products | [B] users, [B, 20] history, [B] items, [B] categories |

Dropout is off everywhere: every provider's result is checked against eager's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import DTYPES, INDEX_BYTES, Bytes, Case
from bench.workloads.base import EmbeddingModel, Workload, rng_for, table_indices
from bench.workloads.multi_table import DeepFM

# OGB's atom and bond feature cardinalities (ogb.utils.features: get_atom_feature_dims /
# get_bond_feature_dims, +1 as its encoders allocate).
ATOM_VOCABS = (120, 5, 13, 13, 11, 7, 7, 3, 3)
BOND_VOCABS = (6, 7, 3)


def _mlp(*widths: int, dtype: torch.dtype) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b, dtype=dtype), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DLRM(EmbeddingModel):
    """[B, 26] ids -> [B, 1]; dense features derived from the ids (``log1p``), as DeepFM's."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        d = dims[0]
        self.tables = nn.ModuleList(nn.EmbeddingBag(v, d, mode="sum", dtype=dtype) for v in vocabs)
        self.bottom = _mlp(13, 512, 256, d, dtype=dtype)
        n = len(vocabs) + 1
        self.top = _mlp(d + n * (n - 1) // 2, 512, 256, 1, dtype=dtype)

    def weights(self) -> list[torch.Tensor]:
        return [t.weight for t in self.tables]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.bottom(x[:, :13].to(self.tables[0].weight.dtype).log1p())
        e = [t(x[:, k:k + 1]) for k, t in enumerate(self.tables)]
        z = torch.stack([dense, *e], dim=1)  # [B, 27, D]
        dots = z @ z.transpose(1, 2)
        i, j = torch.triu_indices(z.shape[1], z.shape[1], 1, device=z.device)
        return self.top(torch.cat([dense, dots[:, i, j]], dim=1))


class DeepFMTables(DeepFM):
    def weights(self) -> list[torch.Tensor]:
        return [t.weight for t in self.tables]


class BertBlock(EmbeddingModel):
    """BERT-base's embeddings and one encoder layer: [B, S] ids, [B, S] types -> [B, S, 768]."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        d = dims[0]
        self.word, self.pos, self.token_type = (nn.Embedding(v, d, dtype=dtype) for v in vocabs)
        self.norm = nn.LayerNorm(d, dtype=dtype)
        self.layer = nn.TransformerEncoderLayer(d, 12, 4 * d, dropout=0.0, batch_first=True, dtype=dtype)

    def weights(self) -> list[torch.Tensor]:
        return [self.word.weight, self.pos.weight, self.token_type.weight]

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.layer(self.norm(self.word(ids) + self.pos(pos) + self.token_type(types)))


class MoleculeGNN(EmbeddingModel):
    """OGB-style: atoms [N, 9] and bonds [E, 3] summed over their feature tables, two GIN
    layers over edges [2, E]: -> [N, 300]."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        d = dims[0]
        self.atoms = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v in ATOM_VOCABS)
        self.bonds = nn.ModuleList(nn.Embedding(v, d, dtype=dtype) for v in BOND_VOCABS)
        self.mlps = nn.ModuleList(_mlp(d, 2 * d, d, dtype=dtype) for _ in range(2))

    def weights(self) -> list[torch.Tensor]:
        return [t.weight for t in (*self.atoms, *self.bonds)]

    def forward(self, atoms: torch.Tensor, bonds: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        h = self.atoms[0](atoms[:, 0])
        for k in range(1, len(self.atoms)):
            h = h + self.atoms[k](atoms[:, k])
        e = self.bonds[0](bonds[:, 0])
        for k in range(1, len(self.bonds)):
            e = e + self.bonds[k](bonds[:, k])
        src, dst = edges[0], edges[1]
        for mlp in self.mlps:
            msg = F.relu(h[src] + e)
            h = mlp(h + torch.zeros_like(h).index_add_(0, dst, msg))
        return h


class TwoTower(EmbeddingModel):
    """[B] users, [B, L] item history, [B] items, [B] categories -> [B, B] in-batch scores."""

    def __init__(self, vocabs: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        users, items, cats = vocabs
        d = dims[0]
        self.user, self.item, self.cat = (nn.Embedding(v, d, dtype=dtype) for v in (users, items, cats))
        self.user_mlp = _mlp(2 * d, 128, d, dtype=dtype)
        self.item_mlp = _mlp(2 * d, 128, d, dtype=dtype)

    def weights(self) -> list[torch.Tensor]:
        return [self.user.weight, self.item.weight, self.cat.weight]

    def forward(self, uid: torch.Tensor, hist: torch.Tensor, iid: torch.Tensor, cid: torch.Tensor) -> torch.Tensor:
        u = self.user_mlp(torch.cat([self.user(uid), self.item(hist).mean(1)], dim=1))
        i = self.item_mlp(torch.cat([self.item(iid), self.cat(cid)], dim=1))
        return u @ i.t()


MODELS = {"dlrm": DLRM, "deepfm": DeepFMTables, "bert": BertBlock, "gnn": MoleculeGNN, "two_tower": TwoTower}
HISTORY = 20  # two_tower: items in a user's history
SEQ = 128  # bert: tokens per sequence


class Models(Workload):
    name = "models"
    title = "Whole models, training step"
    source = "DLRM, DeepFM, BERT, OGB and two-tower code, written here from scratch"
    pattern = "*"  # every rewrite of the pass counts
    # A transformer layer's attention and GEMMs sum in another order once compiled (plain
    # torch.compile's too): 1e-3, not fp32's 1e-4 of a lookup.
    tolerance = (1e-3, 1e-3)
    bytes_formula = ("the lookups only: N*8 + N*D_k*e forward, N*D_k*e + V_k*D_k*e backward per table "
                     "(N: the table's lookups); the dense layers' bytes are not counted")

    def make(self, case: Case, dtype: torch.dtype) -> EmbeddingModel:
        return MODELS[case.variant](case.vocabs, case.dims, dtype)

    def _lookups(self, case: Case) -> tuple[int, ...]:
        """Lookups of each table in one step."""
        b = case.batch
        return {"bert": (b * SEQ, SEQ, b * SEQ), "gnn": (b,) * len(ATOM_VOCABS) + (2 * b,) * len(BOND_VOCABS),
                "two_tower": (b, b * (HISTORY + 1), b)}.get(case.variant, (b,) * len(case.vocabs))

    def inputs(self, case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
        b, rng = case.batch, rng_for(case)

        def ids(vocab: int, *shape: int) -> torch.Tensor:
            return torch.from_numpy(rng.integers(0, vocab, shape)).to(device)

        if case.variant == "bert":
            return ids(case.vocabs[0], b, SEQ), ids(2, b, SEQ)
        if case.variant == "gnn":  # b atoms, 2b directed bonds (each bond both ways)
            atoms = torch.stack([ids(v, b) for v in ATOM_VOCABS], dim=1)
            half = torch.stack([ids(v, b) for v in BOND_VOCABS], dim=1)
            a, c = ids(b, b), ids(b, b)
            return atoms, torch.cat([half, half]), torch.stack([torch.cat([a, c]), torch.cat([c, a])])
        if case.variant == "two_tower":
            users, items, cats = case.vocabs
            return ids(users, b), ids(items, b, HISTORY), ids(items, b), ids(cats, b)
        return (table_indices(case, b, device),)

    def dynamic_dims(self, case: Case) -> tuple[tuple[int, int], ...]:
        return ()  # one case per model: nothing to share a compile with

    def bytes(self, case: Case) -> Bytes:
        e = DTYPES[case.dtype]
        rows = [(n, v, d) for n, v, d in zip(self._lookups(case), case.vocabs, case.dims)]
        fwd = sum(n * INDEX_BYTES + n * d * e for n, _, d in rows)
        bwd = sum(n * d * e + v * d * e for n, v, d in rows)
        return Bytes(fwd=fwd, bwd=bwd)
