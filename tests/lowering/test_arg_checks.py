"""Every op, and every twin of it (its CPU and Triton bodies), checks its arguments before any
native or Triton code touches memory: direct calls with inconsistent arguments
raise eager's kinds of errors (RuntimeError, IndexError, ValueError), never crash the
process or read part of a buffer. The calls run in a child process (``tests/_isolated.py``),
so a regression fails its case instead of killing pytest."""

from __future__ import annotations

import pytest
import torch

from tests._isolated import run_calls

f32 = torch.float32


def _i(high: int, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.randint(0, high, shape, dtype=dtype)


def _cases() -> list[tuple[str, str, tuple]]:
    torch.manual_seed(0)
    i8, i12 = _i(10, 8), _i(10, 12)
    bags = _i(10, 8, 3)
    return [
        # one_hot_linear
        ("oh_bwd_index_rows_past_grad", "one_hot_linear_backward",  # once a segfault
         (torch.randn(4, 64), [torch.zeros((4_000_000, 1), dtype=torch.long)], [10], [0], 10, False, False, f32)),
        ("oh_bwd_cpu_index_rows_past_grad", "one_hot_linear_backward_cpu",
         (torch.randn(4, 64), [_i(10, 400, 1)], [10], [0], 10, False, False, f32)),
        ("oh_bwd_triton_index_rows_past_grad", "one_hot_linear_backward_triton",
         (torch.randn(4, 64), [_i(10, 400, 1)], [10], [0], 10, False, False, f32)),
        ("oh_bwd_columns_past_num_columns", "one_hot_linear_backward",
         (torch.randn(4, 8), [_i(10, 4, 1)], [10], [5], 10, False, False, f32)),
        ("oh_bwd_counts_differ", "one_hot_linear_backward",
         (torch.randn(4, 8), [_i(10, 4, 1), _i(10, 4, 1)], [10], [0], 10, False, False, f32)),
        ("oh_bwd_class_out_of_range", "one_hot_linear_backward_cpu",
         (torch.randn(4, 8), [torch.tensor([[0], [1], [10], [2]])], [10], [0], 10, True, False, f32)),
        ("oh_cpu_bias_of_another_size", "one_hot_linear_cpu", ([_i(10, 4, 1)], [10], [0], torch.randn(8, 10),
                                                               torch.randn(3))),
        ("oh_cpu_columns_past_the_weight", "one_hot_linear_cpu", ([_i(10, 4, 1)], [10], [5], torch.randn(8, 10),
                                                                  None)),
        ("oh_triton_columns_past_the_weight", "one_hot_linear_triton", ([_i(10, 4, 1)], [10], [5],
                                                                        torch.randn(8, 10), None, f32)),
        # multi_embedding
        ("me_bwd_cpu_grad_rows_fewer", "multi_embedding_backward_cpu",  # used part of the indices
         (torch.randn(4, 128), [i8, i8], [10, 10], [64, 64], [-1, -1], [False, False], [0, 64])),
        ("me_bwd_grad_rows_fewer", "multi_embedding_backward",
         (torch.randn(4, 128), [i8, i8], [10, 10], [64, 64], [-1, -1], [False, False])),
        ("me_bwd_cpu_list_lengths_differ", "multi_embedding_backward_cpu",
         (torch.randn(8, 128), [i8, i8], [10], [64, 64], [-1, -1], [False, False], [0, 64])),
        ("me_bwd_cpu_columns_past_grad", "multi_embedding_backward_cpu",
         (torch.randn(8, 64), [i8], [10], [64], [-1], [False], [32])),
        ("me_bwd_cpu_index_out_of_range", "multi_embedding_backward_cpu",
         (torch.randn(8, 64), [torch.full((8,), 10)], [10], [64], [-1], [False], [0])),
        ("me_bwd_cpu_negative_index", "multi_embedding_backward_cpu",
         (torch.randn(8, 64), [torch.full((8,), -1)], [10], [64], [-1], [False], [0])),
        ("me_bwd_width_sum_differs", "multi_embedding_backward",
         (torch.randn(8, 100), [i8, i8], [10, 10], [64, 64], [-1, -1], [False, False])),
        ("me_sparse_bwd_grad_rows_fewer", "multi_embedding_sparse_backward",
         (torch.randn(4, 8), [i8], [10], [8], [-1], [0])),
        ("coalesce_rows_values_rows_differ", "coalesce_rows", ([i8], [torch.randn(5, 4)], [10], [-1])),
        ("coalesce_rows_index_out_of_range", "coalesce_rows", ([torch.full((8,), 11)], [torch.randn(8, 4)], [10],
                                                                [-1])),
        ("me_sum_bwd_width_differs", "multi_embedding_sum_backward",
         (torch.randn(8, 4), [i8, i8], [10, 10], [8, 8], [-1, -1], [False, False])),
        ("me_sum_bwd_indices_not_broadcast", "multi_embedding_sum_backward",
         (torch.randn(8, 4), [_i(10, 5), i8], [10, 10], [4, 4], [-1, -1], [False, False])),
        # multi_embedding_bag
        ("bag_bwd_cpu_grad_rows_fewer", "multi_embedding_bag_backward_cpu",  # used part of the indices
         (torch.randn(4, 8), torch.empty(4, 0, dtype=torch.long), [bags, bags], [None, None], [None, None], [10, 10],
          [4, 4], [0, 0], [-1, -1], [False, False], [False, False])),
        ("bag_bwd_cpu_offsets_fewer_than_grad_rows", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), [i12], [torch.tensor([0, 3, 6, 9])], [None], [10],
          [4], [0], [-1], [False], [False])),
        ("bag_bwd_cpu_width_past_grad", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), [bags], [None], [None], [10], [64], [0], [-1],
          [False], [False])),
        ("bag_bwd_cpu_weights_shorter_than_indices", "multi_embedding_bag_backward_cpu",
         (torch.randn(4, 4), torch.empty(4, 0, dtype=torch.long), [i12], [torch.tensor([0, 3, 6, 9])],
          [torch.randn(3)], [10], [4], [0], [-1], [False], [False])),
        ("bag_bwd_cpu_arg_max_of_another_shape", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.zeros(3, 2, dtype=torch.long), [bags], [None], [None], [10], [4], [2], [-1],
          [False], [False])),
        ("bag_bwd_cpu_arg_max_out_of_range", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.full((8, 4), 10), [bags], [None], [None], [10], [4], [2], [-1], [False], [False])),
        ("bag_bwd_cpu_index_out_of_range", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), [torch.full((8, 3), 10)], [None], [None], [10],
          [4], [0], [-1], [False], [False])),
        ("bag_bwd_cpu_offsets_past_the_end", "multi_embedding_bag_backward_cpu",
         (torch.randn(4, 4), torch.empty(4, 0, dtype=torch.long), [i12], [torch.tensor([0, 3, 6, 90])], [None],
          [10], [4], [0], [-1], [False], [False])),
        ("bag_bwd_cpu_negative_rows", "multi_embedding_bag_backward_cpu",
         (torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), [bags], [None], [None], [-10], [4], [0], [-1],
          [False], [False])),
        ("bag_bwd_last_offset_of_no_bags", "multi_embedding_bag_backward",
         (torch.randn(0, 4), torch.empty(0, 0, dtype=torch.long), [i12], [torch.empty(0, dtype=torch.long)], [None],
          [10], [4], [0], [-1], [True], [False])),
        ("bag_int32_indices_int64_offsets_past_2_31", "multi_embedding_bag",  # wrapped, then accepted
         ([torch.randn(10, 4)], [_i(10, 8, dtype=torch.int32)], [torch.tensor([0, 3, 5, 2**32 + 7])], [], [0], [-1],
          [False], [False])),
        ("bag_cpu_decreasing_offsets", "multi_embedding_bag_cpu",
         ([torch.randn(10, 4)], [i12], [torch.tensor([0, 6, 3])], [], [0], [2], [False])),
        ("bag_cpu_padding_row_past_the_table", "multi_embedding_bag_cpu",
         ([torch.randn(10, 4)], [i12], [torch.tensor([0, 6])], [], [0], [10], [False])),
        # tied_embedding_bag
        ("tied_bwd_grad_emb_of_another_shape", "tied_embedding_bag_backward",
         (torch.randn(5, 4), torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), i8, bags, None, None, 10, 0, -1,
          -1, False, False)),
        ("tied_bwd_bag_grad_rows_fewer", "tied_embedding_bag_backward",
         (torch.randn(8, 4), torch.randn(2, 4), torch.empty(2, 0, dtype=torch.long), i8, bags, None, None, 10, 0, -1,
          -1, False, False)),
        ("tied_bwd_index_out_of_range", "tied_embedding_bag_backward",
         (torch.randn(8, 4), torch.randn(8, 4), torch.empty(8, 0, dtype=torch.long), torch.full((8,), 12), bags, None,
          None, 10, 0, -1, -1, False, False)),
    ]


CASES = {label: (op, args) for label, op, args in _cases()}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, str]:
    calls = [(label, op, args) for label, (op, args) in CASES.items()]
    return run_calls(calls)


@pytest.mark.parametrize("label", list(CASES))
def test_an_inconsistent_direct_call_raises(label, outcomes):
    got = outcomes[label]
    assert got.split(":")[0] in ("RuntimeError", "IndexError", "ValueError"), f"{CASES[label][0]}: {got}"


def test_int32_indices_with_int64_offsets_raise_as_eager():
    """Issue 26: eager promotes both to int64 and raises on ``offsets[-1]``; the op cast the
    offsets to int32 (``2**32 + 7`` became 7) and returned a result."""
    w = torch.randn(10, 4)
    i, o = _i(10, 8, dtype=torch.int32), torch.tensor([0, 3, 5, 2**32 + 7])
    with pytest.raises(RuntimeError, match="offsets\\[-1\\] can not be greater than input's length"):
        torch.nn.functional.embedding_bag(i, w, o)
    with pytest.raises(RuntimeError, match="offsets\\[-1\\] can not be greater than input's length"):
        torch.ops.inductor_embed.multi_embedding_bag([w], [i], [o], [], [0], [-1], [False], [False])
