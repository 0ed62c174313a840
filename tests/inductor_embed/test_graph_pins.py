"""The rewritten graphs, pinned: a change to what the pass emits shows up as a readable diff.

Regenerate after an intended change with ``EXPECTTEST_ACCEPT=1 python -m pytest <this file>``.
"""

from __future__ import annotations

import expecttest
import torch
import torch.nn as nn

from tests.inductor_embed._util import rewritten_code
from tests.inductor_embed.test_multi_embedding_cat import (
    DynamicEmbeddingConcatenator,
    FastMultiEmbeddingEquivalent,
    _batch,
)


class TestGraphPins(expecttest.TestCase):
    def setUp(self):
        torch._dynamo.reset()

    def test_seed004_cat_of_column_slices(self):
        code = rewritten_code(FastMultiEmbeddingEquivalent(), _batch(4, (100, 200, 300)))
        self.assertExpectedInline(code, """\
def forward(self, L_batch_ : torch.Tensor, L_self_modules_embbeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embbeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embbeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter):
    l_batch_ = L_batch_
    l_self_modules_embbeddings_modules_0_parameters_weight_ = L_self_modules_embbeddings_modules_0_parameters_weight_
    l_self_modules_embbeddings_modules_1_parameters_weight_ = L_self_modules_embbeddings_modules_1_parameters_weight_
    l_self_modules_embbeddings_modules_2_parameters_weight_ = L_self_modules_embbeddings_modules_2_parameters_weight_
    getitem = l_batch_[(slice(None, None, None), 0)]
    getitem_1 = l_batch_[(slice(None, None, None), 1)]
    getitem_2 = l_batch_[(slice(None, None, None), 2)];  l_batch_ = None
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_embbeddings_modules_0_parameters_weight_, l_self_modules_embbeddings_modules_1_parameters_weight_, l_self_modules_embbeddings_modules_2_parameters_weight_], [getitem, getitem_1, getitem_2], [-1, -1, -1], [False, False, False]);  l_self_modules_embbeddings_modules_0_parameters_weight_ = l_self_modules_embbeddings_modules_1_parameters_weight_ = l_self_modules_embbeddings_modules_2_parameters_weight_ = getitem = getitem_1 = getitem_2 = None
    return (multi_embedding_default,)""")

    def test_seed000_list_of_index_tensors(self):
        model = DynamicEmbeddingConcatenator([100, 200, 150], [32, 64, 48])
        code = rewritten_code(model, [torch.randint(0, v, (10, 5)) for v in (100, 200, 150)])
        self.assertExpectedInline(code, """\
def forward(self, L_self_modules_embeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_0_ : torch.Tensor, L_self_modules_embeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_1_ : torch.Tensor, L_self_modules_embeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_2_ : torch.Tensor):
    l_self_modules_embeddings_modules_0_parameters_weight_ = L_self_modules_embeddings_modules_0_parameters_weight_
    l_input_data_0_ = L_input_data_0_
    l_self_modules_embeddings_modules_1_parameters_weight_ = L_self_modules_embeddings_modules_1_parameters_weight_
    l_input_data_1_ = L_input_data_1_
    l_self_modules_embeddings_modules_2_parameters_weight_ = L_self_modules_embeddings_modules_2_parameters_weight_
    l_input_data_2_ = L_input_data_2_
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_embeddings_modules_0_parameters_weight_, l_self_modules_embeddings_modules_1_parameters_weight_, l_self_modules_embeddings_modules_2_parameters_weight_], [l_input_data_0_, l_input_data_1_, l_input_data_2_], [-1, -1, -1], [False, False, False]);  l_self_modules_embeddings_modules_0_parameters_weight_ = l_self_modules_embeddings_modules_1_parameters_weight_ = l_self_modules_embeddings_modules_2_parameters_weight_ = l_input_data_0_ = l_input_data_1_ = l_input_data_2_ = None
    return (multi_embedding_default,)""")

    def test_stack_with_dense_token_and_extra_user(self):
        class Tokens(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Embedding(5, 4), nn.Embedding(9, 4)
                self.cls = nn.Parameter(torch.randn(4))

            def forward(self, x):
                ea, eb = self.a(x[:, 0]), self.b(x[:, 1])
                tokens = torch.stack([self.cls.expand(x.shape[0], 4), ea, eb], dim=1)
                return tokens, eb.relu()

        code = rewritten_code(Tokens(), _batch(3, (5, 9)))
        self.assertExpectedInline(code, """\
def forward(self, L_x_ : torch.Tensor, L_self_modules_a_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_b_parameters_weight_ : torch.nn.parameter.Parameter, L_self_parameters_cls_ : torch.nn.parameter.Parameter):
    l_x_ = L_x_
    l_self_modules_a_parameters_weight_ = L_self_modules_a_parameters_weight_
    l_self_modules_b_parameters_weight_ = L_self_modules_b_parameters_weight_
    l_self_parameters_cls_ = L_self_parameters_cls_
    getitem = l_x_[(slice(None, None, None), 0)]
    getitem_1 = l_x_[(slice(None, None, None), 1)];  l_x_ = None
    expand = l_self_parameters_cls_.expand(3, 4);  l_self_parameters_cls_ = None
    unsqueeze = torch.unsqueeze(expand, 1);  expand = None
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_a_parameters_weight_, l_self_modules_b_parameters_weight_], [getitem, getitem_1], [-1, -1], [False, False]);  l_self_modules_a_parameters_weight_ = l_self_modules_b_parameters_weight_ = getitem = getitem_1 = None
    narrow = torch.narrow(multi_embedding_default, -1, 4, 4)
    unflatten = torch.unflatten(multi_embedding_default, -1, (2, 4));  multi_embedding_default = None
    cat = torch.cat([unsqueeze, unflatten], 1);  unsqueeze = unflatten = None
    relu = narrow.relu();  narrow = None
    return (cat, relu)""")
