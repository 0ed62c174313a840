"""The rewritten graphs, pinned: a change to what the pass emits shows up as a readable diff.

Regenerate after an intended change with ``EXPECTTEST_ACCEPT=1 python -m pytest <this file>``.
"""

from __future__ import annotations

import expecttest
import torch
import torch.nn as nn

from tests.inductor_embed._util import rewritten_code
from tests.inductor_embed.test_independent_lookups import MatrixFactorisation, _ids
from tests.inductor_embed.test_multi_embedding_bag import (
    DLRMEmbeddings,
    SharedEmbeddingLayer,
    SparseTied,
    _dlrm_inputs,
)
from tests.inductor_embed.test_multi_embedding_cat import (
    BiasedFields,
    DynamicEmbeddingConcatenator,
    FastMultiEmbeddingEquivalent,
    FieldSliceFM,
    _batch,
)
from tests.inductor_embed.test_multi_embedding_sum import (
    AtomEncoder,
    BertEmbeddings,
    GPTEmbeddings,
    _atoms,
)


class TestGraphPins(expecttest.TestCase):
    def setUp(self):
        torch._dynamo.reset()

    def test_cat_of_column_slices(self):
        code = rewritten_code(FastMultiEmbeddingEquivalent(), _batch(4, (100, 200, 300)))
        self.assertExpectedInline(code, """\
def forward(self, L_batch_ : torch.Tensor, L_self_modules_embbeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embbeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embbeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter):
    getitem = l_batch_[(slice(None, None, None), 0)]
    getitem_1 = l_batch_[(slice(None, None, None), 1)]
    getitem_2 = l_batch_[(slice(None, None, None), 2)];  l_batch_ = None
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_embbeddings_modules_0_parameters_weight_, l_self_modules_embbeddings_modules_1_parameters_weight_, l_self_modules_embbeddings_modules_2_parameters_weight_], [getitem, getitem_1, getitem_2], [-1, -1, -1], [False, False, False]);  l_self_modules_embbeddings_modules_0_parameters_weight_ = l_self_modules_embbeddings_modules_1_parameters_weight_ = l_self_modules_embbeddings_modules_2_parameters_weight_ = getitem = getitem_1 = getitem_2 = None
    return (multi_embedding_default,)""")

    def test_list_of_index_tensors(self):
        model = DynamicEmbeddingConcatenator([100, 200, 150], [32, 64, 48])
        code = rewritten_code(model, [torch.randint(0, v, (10, 5)) for v in (100, 200, 150)])
        self.assertExpectedInline(code, """\
def forward(self, L_self_modules_embeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_0_ : torch.Tensor, L_self_modules_embeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_1_ : torch.Tensor, L_self_modules_embeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter, L_input_data_2_ : torch.Tensor):
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

    def test_field_slices_into_fm_fields(self):
        model = FieldSliceFM(vocabs=(7, 11, 13))
        code = rewritten_code(lambda x: torch.cat([e(x[:, k:k + 1]) for k, e in enumerate(model.embeddings)], dim=1),
                              _batch(3, (7, 11, 13)))
        self.assertExpectedInline(code, """\
def forward(self, L_x_ : torch.Tensor, L_model_modules_embeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_model_modules_embeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_model_modules_embeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter):
    getitem = l_x_[(slice(None, None, None), slice(0, 1, None))]
    getitem_1 = l_x_[(slice(None, None, None), slice(1, 2, None))]
    getitem_2 = l_x_[(slice(None, None, None), slice(2, 3, None))];  l_x_ = None
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_model_modules_embeddings_modules_0_parameters_weight_, l_model_modules_embeddings_modules_1_parameters_weight_, l_model_modules_embeddings_modules_2_parameters_weight_], [getitem, getitem_1, getitem_2], [-1, -1, -1], [False, False, False]);  l_model_modules_embeddings_modules_0_parameters_weight_ = l_model_modules_embeddings_modules_1_parameters_weight_ = l_model_modules_embeddings_modules_2_parameters_weight_ = getitem = getitem_1 = getitem_2 = None
    squeeze = torch.squeeze(multi_embedding_default, -2);  multi_embedding_default = None
    unflatten = torch.unflatten(squeeze, -1, (3, 4));  squeeze = None
    return (unflatten,)""")

    def test_bias_before_the_cat_hoisted(self):
        code = rewritten_code(BiasedFields(dims=(3, 5)), _batch(3, (7, 11)))
        self.assertExpectedInline(code, """\
def forward(self, L_x_ : torch.Tensor, L_self_modules_biases_parameters_0_ : torch.nn.parameter.Parameter, L_self_modules_tables_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_biases_parameters_1_ : torch.nn.parameter.Parameter, L_self_modules_tables_modules_1_parameters_weight_ : torch.nn.parameter.Parameter):
    getitem = l_x_[(slice(None, None, None), 0)]
    unsqueeze = l_self_modules_biases_parameters_0_.unsqueeze(0);  l_self_modules_biases_parameters_0_ = None
    getitem_1 = l_x_[(slice(None, None, None), 1)];  l_x_ = None
    unsqueeze_1 = l_self_modules_biases_parameters_1_.unsqueeze(0);  l_self_modules_biases_parameters_1_ = None
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_tables_modules_0_parameters_weight_, l_self_modules_tables_modules_1_parameters_weight_], [getitem, getitem_1], [-1, -1], [False, False]);  l_self_modules_tables_modules_0_parameters_weight_ = l_self_modules_tables_modules_1_parameters_weight_ = getitem = getitem_1 = None
    flatten = torch.flatten(unsqueeze);  unsqueeze = None
    flatten_1 = torch.flatten(unsqueeze_1);  unsqueeze_1 = None
    cat_1 = torch.cat([flatten, flatten_1], -1);  flatten = flatten_1 = None
    add_2 = multi_embedding_default + cat_1;  multi_embedding_default = cat_1 = None
    return (add_2,)""")

    def test_column_writes_written_by_the_fused_op(self):
        a, b = nn.Embedding(7, 4), nn.Embedding(11, 3)
        shared = nn.Parameter(torch.randn(2))

        def fn(x):
            ea, eb = a(x[:, 0]), b(x[:, 1])
            ea[:, :2] = shared.expand(x.shape[0], -1)
            eb[..., 1:].copy_(shared.expand(x.shape[0], -1))
            return torch.cat([ea, eb], dim=1)

        code = rewritten_code(fn, _batch(3, (7, 11)))
        self.assertExpectedInline(code, """\
def forward(self, L_x_ : torch.Tensor, L_a_parameters_weight_ : torch.nn.parameter.Parameter, L_b_parameters_weight_ : torch.nn.parameter.Parameter, L_shared_ : torch.nn.parameter.Parameter):
    getitem = l_x_[(slice(None, None, None), 0)]
    getitem_1 = l_x_[(slice(None, None, None), 1)];  l_x_ = None
    expand = l_shared_.expand(3, -1)
    expand_1 = l_shared_.expand(3, -1);  l_shared_ = None
    multi_embedding_columns_default = torch.ops.inductor_embed.multi_embedding_columns.default([l_a_parameters_weight_, l_b_parameters_weight_], [getitem, getitem_1], [-1, -1], [False, False], [False, False], [expand, expand_1], [0, 2, 5, 7]);  l_a_parameters_weight_ = l_b_parameters_weight_ = getitem = getitem_1 = expand = expand_1 = None
    return (multi_embedding_columns_default,)""")

    def test_independent_lookups_of_matrix_factorisation(self):
        code = rewritten_code(MatrixFactorisation(), *_ids())
        self.assertExpectedInline(code, """\
def forward(self, L_self_modules_u_parameters_weight_ : torch.nn.parameter.Parameter, L_uid_ : torch.Tensor, L_self_modules_i_parameters_weight_ : torch.nn.parameter.Parameter, L_iid_ : torch.Tensor, L_self_modules_ub_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_ib_parameters_weight_ : torch.nn.parameter.Parameter, L_self_parameters_g_ : torch.nn.parameter.Parameter):
    multi_embedding_default = torch.ops.inductor_embed.multi_embedding.default([l_self_modules_u_parameters_weight_, l_self_modules_i_parameters_weight_, l_self_modules_ub_parameters_weight_, l_self_modules_ib_parameters_weight_], [l_uid_, l_iid_, l_uid_, l_iid_], [-1, -1, -1, -1], [False, False, False, False]);  l_self_modules_u_parameters_weight_ = l_self_modules_i_parameters_weight_ = l_self_modules_ub_parameters_weight_ = l_self_modules_ib_parameters_weight_ = l_uid_ = l_iid_ = None
    narrow = torch.narrow(multi_embedding_default, -1, 0, 8)
    narrow_1 = torch.narrow(multi_embedding_default, -1, 8, 8)
    narrow_2 = torch.narrow(multi_embedding_default, -1, 16, 1)
    narrow_3 = torch.narrow(multi_embedding_default, -1, 17, 1);  multi_embedding_default = None
    mul = narrow * narrow_1;  narrow = narrow_1 = None
    sum_1 = mul.sum(-1);  mul = None
    squeeze = narrow_2.squeeze(-1);  narrow_2 = None
    add = sum_1 + squeeze;  sum_1 = squeeze = None
    squeeze_1 = narrow_3.squeeze(-1);  narrow_3 = None
    add_1 = add + squeeze_1;  add = squeeze_1 = None
    add_2 = add_1 + l_self_parameters_g_;  add_1 = l_self_parameters_g_ = None
    return (add_2,)""")

    def test_dlrm_bags_into_dense_cat(self):
        x, lS_o, lS_i = _dlrm_inputs([10, 20], batch=3)
        model = DLRMEmbeddings(4, [10, 20])
        code = rewritten_code(lambda x, o, i: torch.cat([x] + model.apply_emb(o, i, model.emb_l), dim=1), x, lS_o, lS_i)
        self.assertExpectedInline(code, """\
def forward(self, L_model_modules_emb_l_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_i_0_ : torch.Tensor, L_o_0_ : torch.Tensor, L_model_modules_emb_l_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_i_1_ : torch.Tensor, L_o_1_ : torch.Tensor, L_x_ : torch.Tensor):
    multi_embedding_bag_default = torch.ops.inductor_embed.multi_embedding_bag.default([l_model_modules_emb_l_modules_0_parameters_weight_, l_model_modules_emb_l_modules_1_parameters_weight_], [l_i_0_, l_i_1_], [l_o_0_, l_o_1_], [], [0, 0], [-1, -1], [False, False], [True, True]);  l_model_modules_emb_l_modules_0_parameters_weight_ = l_model_modules_emb_l_modules_1_parameters_weight_ = l_i_0_ = l_i_1_ = l_o_0_ = l_o_1_ = None
    getitem = multi_embedding_bag_default[0];  multi_embedding_bag_default = None
    cat_1 = torch.cat([l_x_, getitem], 1);  l_x_ = getitem = None
    return (cat_1,)""")

    def test_tied_sparse_pair(self):
        """One Parameter read by a sparse Embedding and a sparse EmbeddingBag: the sparse flags
        are the op's 11th argument."""
        code = rewritten_code(SparseTied(True, True, two=False), torch.randint(0, 50, (4, 3)),
                              torch.randint(0, 50, (10,)), torch.tensor([0, 3, 3, 7]))
        self.assertExpectedInline(code, """\
def forward(self, L_self_modules_emb_parameters_weight_ : torch.nn.parameter.Parameter, L_indices_ : torch.Tensor, L_sequences_ : torch.Tensor, L_offsets_ : torch.Tensor):
    tied_embedding_bag_default = torch.ops.inductor_embed.tied_embedding_bag.default(l_self_modules_emb_parameters_weight_, None, l_indices_, l_sequences_, l_offsets_, None, 1, 3, -1, False, [True, True]);  l_self_modules_emb_parameters_weight_ = l_indices_ = l_sequences_ = l_offsets_ = None
    getitem = tied_embedding_bag_default[0]
    getitem_1 = tied_embedding_bag_default[1];  tied_embedding_bag_default = None
    sum_1 = getitem.sum(1)
    amax = getitem.amax(1);  getitem = None
    cat = torch.cat([sum_1, amax, getitem_1], 1);  sum_1 = amax = getitem_1 = None
    return (cat,)""")

    def test_tied_embedding_bag(self):
        model = SharedEmbeddingLayer(100, 32)
        code = rewritten_code(model, torch.randint(0, 100, (5,)), torch.randint(0, 100, (12,)), torch.tensor([0, 4, 8]))
        self.assertExpectedInline(code, """\
def forward(self, L_self_modules_shared_embedding_parameters_weight_ : torch.nn.parameter.Parameter, L_indices_ : torch.Tensor, L_self_modules_embedding_bag_parameters_weight_ : torch.nn.parameter.Parameter, L_sequences_ : torch.Tensor, L_offsets_ : torch.Tensor):
    tied_embedding_bag_default = torch.ops.inductor_embed.tied_embedding_bag.default(l_self_modules_shared_embedding_parameters_weight_, l_self_modules_embedding_bag_parameters_weight_, l_indices_, l_sequences_, l_offsets_, None, 1, -1, -1, False);  l_self_modules_shared_embedding_parameters_weight_ = l_self_modules_embedding_bag_parameters_weight_ = l_indices_ = l_sequences_ = l_offsets_ = None
    getitem = tied_embedding_bag_default[0]
    getitem_1 = tied_embedding_bag_default[1];  tied_embedding_bag_default = None
    return (getitem, getitem_1)""")

    def test_bert_sum_with_broadcast_positions(self):
        code = rewritten_code(BertEmbeddings(), torch.randint(0, 50, (2, 5)), torch.randint(0, 2, (2, 5)))
        self.assertExpectedInline(code, """\
def forward(self, L_ids_ : torch.Tensor, L_self_buffers_position_ids_ : torch.Tensor, L_self_modules_word_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_token_type_parameters_weight_ : torch.nn.parameter.Parameter, L_token_types_ : torch.Tensor, L_self_modules_position_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_norm_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_norm_parameters_bias_ : torch.nn.parameter.Parameter):
    pos = l_self_buffers_position_ids_[(slice(None, None, None), slice(None, 5, None))];  l_self_buffers_position_ids_ = None
    multi_embedding_sum_default = torch.ops.inductor_embed.multi_embedding_sum.default([l_self_modules_word_parameters_weight_, l_self_modules_token_type_parameters_weight_, l_self_modules_position_parameters_weight_], [l_ids_, l_token_types_, pos], [0, -1, -1], [False, False, False]);  l_self_modules_word_parameters_weight_ = l_self_modules_token_type_parameters_weight_ = l_self_modules_position_parameters_weight_ = l_ids_ = l_token_types_ = pos = None
    layer_norm = torch.nn.functional.layer_norm(multi_embedding_sum_default, (8,), l_self_modules_norm_parameters_weight_, l_self_modules_norm_parameters_bias_, 1e-05);  multi_embedding_sum_default = l_self_modules_norm_parameters_weight_ = l_self_modules_norm_parameters_bias_ = None
    return (layer_norm,)""")

    def test_gpt_sum_with_tied_head(self):
        code = rewritten_code(GPTEmbeddings(), torch.randint(0, 40, (2, 5)))
        # torch >= 2.14's Dynamo records the head's ``w.T`` as aten.numpy_T (a line this pass
        # does not touch); the pin keeps torch 2.13's spelling of it.
        code = code.replace("numpy_t = torch.ops.aten.numpy_T(l_self_modules_wte_parameters_weight_)",
                            "getattr_1 = l_self_modules_wte_parameters_weight_.T").replace("numpy_t", "getattr_1")
        self.assertExpectedInline(code, """\
def forward(self, L_ids_ : torch.Tensor, L_self_modules_wte_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_wpe_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_ln_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_ln_parameters_bias_ : torch.nn.parameter.Parameter):
    pos = torch.arange(5, device = device(type='cpu'))
    multi_embedding_sum_default = torch.ops.inductor_embed.multi_embedding_sum.default([l_self_modules_wte_parameters_weight_, l_self_modules_wpe_parameters_weight_], [l_ids_, pos], [-1, -1], [False, False]);  l_self_modules_wpe_parameters_weight_ = l_ids_ = pos = None
    h = torch.nn.functional.layer_norm(multi_embedding_sum_default, (8,), l_self_modules_ln_parameters_weight_, l_self_modules_ln_parameters_bias_, 1e-05);  multi_embedding_sum_default = l_self_modules_ln_parameters_weight_ = l_self_modules_ln_parameters_bias_ = None
    getattr_1 = l_self_modules_wte_parameters_weight_.T;  l_self_modules_wte_parameters_weight_ = None
    matmul = h @ getattr_1;  h = getattr_1 = None
    return (matmul,)""")

    def test_atom_encoder_sum_from_zero(self):
        code = rewritten_code(AtomEncoder(), _atoms(4))
        self.assertExpectedInline(code, """\
def forward(self, L_x_ : torch.Tensor, L_self_modules_embeddings_modules_0_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_1_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_2_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_3_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_4_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_5_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_6_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_7_parameters_weight_ : torch.nn.parameter.Parameter, L_self_modules_embeddings_modules_8_parameters_weight_ : torch.nn.parameter.Parameter):
    getitem = l_x_[(slice(None, None, None), 0)]
    getitem_1 = l_x_[(slice(None, None, None), 1)]
    getitem_2 = l_x_[(slice(None, None, None), 2)]
    getitem_3 = l_x_[(slice(None, None, None), 3)]
    getitem_4 = l_x_[(slice(None, None, None), 4)]
    getitem_5 = l_x_[(slice(None, None, None), 5)]
    getitem_6 = l_x_[(slice(None, None, None), 6)]
    getitem_7 = l_x_[(slice(None, None, None), 7)]
    getitem_8 = l_x_[(slice(None, None, None), 8)];  l_x_ = None
    multi_embedding_sum_default = torch.ops.inductor_embed.multi_embedding_sum.default([l_self_modules_embeddings_modules_0_parameters_weight_, l_self_modules_embeddings_modules_1_parameters_weight_, l_self_modules_embeddings_modules_2_parameters_weight_, l_self_modules_embeddings_modules_3_parameters_weight_, l_self_modules_embeddings_modules_4_parameters_weight_, l_self_modules_embeddings_modules_5_parameters_weight_, l_self_modules_embeddings_modules_6_parameters_weight_, l_self_modules_embeddings_modules_7_parameters_weight_, l_self_modules_embeddings_modules_8_parameters_weight_], [getitem, getitem_1, getitem_2, getitem_3, getitem_4, getitem_5, getitem_6, getitem_7, getitem_8], [-1, -1, -1, -1, -1, -1, -1, -1, -1], [False, False, False, False, False, False, False, False, False]);  l_self_modules_embeddings_modules_0_parameters_weight_ = l_self_modules_embeddings_modules_1_parameters_weight_ = l_self_modules_embeddings_modules_2_parameters_weight_ = l_self_modules_embeddings_modules_3_parameters_weight_ = l_self_modules_embeddings_modules_4_parameters_weight_ = l_self_modules_embeddings_modules_5_parameters_weight_ = l_self_modules_embeddings_modules_6_parameters_weight_ = l_self_modules_embeddings_modules_7_parameters_weight_ = l_self_modules_embeddings_modules_8_parameters_weight_ = getitem = getitem_1 = getitem_2 = getitem_3 = getitem_4 = getitem_5 = getitem_6 = getitem_7 = getitem_8 = None
    add = multi_embedding_sum_default + 0;  multi_embedding_sum_default = None
    return (add,)""")
