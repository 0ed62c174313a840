"""Small models written the way popular libraries write their embedding layers (written here
from scratch, no library imported): tabular, CTR, language, graph (an OGB encoder, a PyG
message-passing layer) and retrieval models.

``tests/inductor_embed/test_library_models.py`` runs ``inductor_embed.explain`` on each with
the default config and pins what the pass does: the rewrites, and every skip reason.
Each ``make_*`` returns ``(model, example inputs)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

B = 8


def _ids(vocabs: tuple[int, ...], n: int = B) -> torch.Tensor:
    return torch.stack([torch.randint(0, v, (n,)) for v in vocabs], dim=1)


class CategoryEmbeddingModel(nn.Module):
    """pytorch_tabular's CategoryEmbedding backbone: one table per categorical column, the
    lookups cat with the continuous columns, dropout, then an MLP."""

    def __init__(self, vocabs=(5, 7, 11), dims=(3, 4, 6), continuous: int = 2) -> None:
        super().__init__()
        self.cat_embedding_layers = nn.ModuleList(nn.Embedding(v, d) for v, d in zip(vocabs, dims))
        self.embd_dropout = nn.Dropout(0.0)
        self.backbone = nn.Sequential(nn.Linear(sum(dims) + continuous, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, categorical: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        embs = [layer(categorical[:, i]) for i, layer in enumerate(self.cat_embedding_layers)]
        x = torch.cat([torch.cat(embs, 1), continuous], 1)
        return self.backbone(self.embd_dropout(x))


def make_category_embedding():
    return CategoryEmbeddingModel(), (_ids((5, 7, 11)), torch.randn(B, 2))


class SharedEmbeddings(nn.Module):
    """pytorch_tabular's shared embedding scheme: the first columns of each column's lookup
    overwritten by a vector shared by the column, before the cat."""

    def __init__(self, vocabs=(5, 7, 11), dim: int = 8, shared: int = 2) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(v, dim) for v in vocabs)
        self.shared = nn.ParameterList(nn.Parameter(torch.randn(1, shared)) for _ in vocabs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, (emb, shared) in enumerate(zip(self.embeds, self.shared)):
            e = emb(x[:, i])
            e[:, :shared.shape[1]] = shared.expand(e.shape[0], -1)
            out.append(e)
        return torch.cat(out, 1).sum(1)


def make_shared_embeddings():
    return SharedEmbeddings(), (_ids((5, 7, 11)),)


class DeepFM(nn.Module):
    """A DeepCTR-style DeepFM: each field looked up once; the FM term stacks the fields, the
    deep part flattens them with the dense features."""

    def __init__(self, vocabs=(5, 7, 11, 13), dim: int = 4, dense: int = 3) -> None:
        super().__init__()
        self.embedding_dict = nn.ModuleDict({f"C{k}": nn.Embedding(v, dim) for k, v in enumerate(vocabs)})
        self.dnn = nn.Linear(len(vocabs) * dim + dense, 1)

    def forward(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        emb_list = [self.embedding_dict[f"C{k}"](x[:, k]) for k in range(x.shape[1])]
        fm_input = torch.stack(emb_list, dim=1)
        square_of_sum = fm_input.sum(dim=1, keepdim=True) ** 2
        sum_of_square = (fm_input * fm_input).sum(dim=1, keepdim=True)
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=2)
        deep = self.dnn(torch.cat([torch.cat(emb_list, dim=-1), dense], dim=-1))
        return fm + deep


def make_deepfm():
    return DeepFM(), (_ids((5, 7, 11, 13)), torch.randn(B, 3))


class FieldSlicesFM(nn.Module):
    """A CTR library's FM: ``embedding(x[:, k:k+1])`` per field, cat along the fields."""

    def __init__(self, vocabs=(5, 7, 11, 13), dim: int = 4) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in vocabs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.cat([emb(x[:, k:k + 1]) for k, emb in enumerate(self.embeddings)], dim=1)
        return 0.5 * (e.sum(1) ** 2 - (e * e).sum(1)).sum(1)


def make_field_slices_fm():
    return FieldSlicesFM(), (_ids((5, 7, 11, 13)),)


class BertEmbeddings(nn.Module):
    """Hugging Face's BertEmbeddings: words + positions + token types, LayerNorm, dropout."""

    def __init__(self, vocab: int = 50, hidden: int = 16, positions: int = 12, types: int = 2) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(0.0)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        position_ids = self.position_ids[:, :input_ids.shape[1]]
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings += self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


def make_bert_embeddings():
    return BertEmbeddings(), (torch.randint(0, 50, (2, 10)), torch.randint(0, 2, (2, 10)))


class NanoGPTEmbeddings(nn.Module):
    """nanoGPT's input: ``tok_emb + pos_emb``, positions made on the indices' device, then
    the output head tied to the token table."""

    def __init__(self, vocab: int = 50, n_embd: int = 16, block: int = 12) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(0, idx.shape[1], dtype=torch.long, device=idx.device)
        tok_emb = self.wte(idx)
        pos_emb = self.wpe(pos).to(tok_emb.device)
        return self.lm_head(tok_emb + pos_emb)


def make_nanogpt():
    return NanoGPTEmbeddings(), (torch.randint(0, 50, (2, 10)),)


class AtomEncoder(nn.Module):
    """OGB's AtomEncoder: one table per atom feature, summed in a loop."""

    def __init__(self, emb_dim: int = 8, dims=(119, 5, 12, 12, 10, 6, 6, 2, 2)) -> None:
        super().__init__()
        self.atom_embedding_list = nn.ModuleList(nn.Embedding(d, emb_dim) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_embedding = 0
        for i in range(x.shape[1]):
            x_embedding += self.atom_embedding_list[i](x[:, i])
        return x_embedding


def make_atom_encoder():
    return AtomEncoder(), (_ids((119, 5, 12, 12, 10, 6, 6, 2, 2)),)


class DLRMBottom(nn.Module):
    """The DLRM reference's embeddings: an EmbeddingBag per feature (``sparse=True``, sum
    mode) fed (indices, offsets), cat with the bottom MLP's output."""

    def __init__(self, vocabs=(20, 30, 40), dim: int = 4, sparse: bool = True) -> None:
        super().__init__()
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(v, dim, mode="sum", sparse=sparse) for v in vocabs)
        self.bot_l = nn.Linear(3, dim)

    def forward(self, dense: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        ly = [emb(indices[k], offsets[k]) for k, emb in enumerate(self.emb_l)]
        return torch.cat([self.bot_l(dense), *ly], dim=1)


def make_dlrm(sparse: bool = True):
    vocabs = (20, 30, 40)
    indices = [torch.randint(0, v, (3 * B,)) for v in vocabs]
    offsets = [torch.arange(0, 3 * B, 3) for _ in vocabs]
    return DLRMBottom(vocabs, sparse=sparse), (torch.randn(B, 3), indices, offsets)


class TwoTower(nn.Module):
    """A two-tower retrieval model: a user tower and an item tower, scored by a dot product."""

    def __init__(self, users: int = 30, items: int = 40, dim: int = 8) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.user_mlp = nn.Linear(dim, dim)
        self.item_mlp = nn.Linear(dim, dim)

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        u = self.user_mlp(self.user(user_ids))
        i = self.item_mlp(self.item(item_ids))
        return (u * i).sum(-1)


def make_two_tower():
    return TwoTower(), (torch.randint(0, 30, (B,)), torch.randint(0, 40, (B,)))


class OneHotLinear(nn.Module):
    """A tabular baseline: one-hot categoricals cat with continuous columns, then a Linear."""

    def __init__(self, classes=(5, 7), continuous: int = 2) -> None:
        super().__init__()
        self.classes = classes
        self.fc = nn.Linear(sum(classes) + continuous, 4)

    def forward(self, x: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        oh = [F.one_hot(x[:, k], n) for k, n in enumerate(self.classes)]
        return self.fc(torch.cat([*oh, cont], dim=1).float())


def make_one_hot_linear():
    return OneHotLinear(), (_ids((5, 7)), torch.randn(B, 2))


class OneHotEnsemble(nn.Module):
    """A tabular ensemble (TabM-style): one-hot and continuous features column_stack-ed,
    expanded to k members, scaled per member, multiplied by per-member weights."""

    def __init__(self, classes=(5, 7), continuous: int = 2, k: int = 3, out: int = 4) -> None:
        super().__init__()
        self.classes, self.k = classes, k
        width = sum(classes) + continuous
        self.r = nn.Parameter(torch.randn(k, width))
        self.weight = nn.Parameter(torch.randn(k, width, out))

    def forward(self, x: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        feats = torch.column_stack([*(F.one_hot(x[:, j], n) for j, n in enumerate(self.classes)), cont])
        h = feats[:, None].expand(-1, self.k, -1) * self.r
        return torch.einsum("bki,kio->bko", h, self.weight)


def make_one_hot_ensemble():
    return OneHotEnsemble(), (_ids((5, 7)), torch.randn(B, 2))


def _scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """torch_geometric.utils.scatter(src, index, dim=0, reduce="sum"): the index broadcast
    over the rows (``broadcast``), then ``scatter_add_`` into new zeros."""
    index = index.view(-1, 1).expand_as(src)
    return src.new_zeros((dim_size, src.shape[1])).scatter_add_(0, index, src)


class GINEConv(nn.Module):
    """torch_geometric's GINEConv (MessagePassing, aggr="add"): each edge's message
    ``relu(x_j + edge_attr)`` with ``x_j = x.index_select(0, edge_index[0])`` (PyG's
    ``_index_select``), summed into its target node by ``scatter``, then ``nn((1 + eps) * x + out)``;
    bond features from an OGB BondEncoder (a sum of lookups), two layers."""

    def __init__(self, dim: int = 6, bond_vocabs=(5, 6, 2)) -> None:
        super().__init__()
        self.bond_embedding_list = nn.ModuleList(nn.Embedding(v, dim) for v in bond_vocabs)
        self.nns = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)) for _ in range(2))
        self.eps = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        e = 0
        for i, emb in enumerate(self.bond_embedding_list):
            e = e + emb(edge_attr[:, i])
        for nn_ in self.nns:
            x_j = x.index_select(0, edge_index[0])
            out = _scatter_sum(F.relu(x_j + e), edge_index[1], x.shape[0])
            x = nn_((1 + self.eps) * x + out)
        return x


def make_gine_conv():
    nodes, edges = B, 3 * B
    return GINEConv(), (torch.randn(nodes, 6, requires_grad=True), torch.randint(0, nodes, (2, edges)),
                        _ids((5, 6, 2), edges))


MODELS = {
    "category_embedding": make_category_embedding,
    "shared_embeddings": make_shared_embeddings,
    "deepfm": make_deepfm,
    "field_slices_fm": make_field_slices_fm,
    "bert_embeddings": make_bert_embeddings,
    "nanogpt": make_nanogpt,
    "atom_encoder": make_atom_encoder,
    "dlrm": make_dlrm,
    "two_tower": make_two_tower,
    "one_hot_linear": make_one_hot_linear,
    "one_hot_ensemble": make_one_hot_ensemble,
    "gine_conv": make_gine_conv,
}
