"""Every launcher runs on its tensors' CUDA device, whatever device is current.

Triton launches on the current device and its current stream, so an op called with
tensors on cuda:1 while cuda:0 is current must enter ``torch.cuda.device(cuda:1)`` first.
Without a second GPU (or any), fake tensors on cuda:1 stand in: the launcher's guard is
entered (recorded here, then stopped before any kernel work), and a tensor on another
device is refused before anything is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from inductor_embed.kernels import multi_embedding as me
from inductor_embed.kernels import multi_embedding_bag as bg
from inductor_embed.kernels import one_hot_linear as oh


class _Entered(Exception):
    pass


def _calls(dev: str, other: str) -> dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, Any]]]:
    """launcher name -> (launcher, kwargs on ``dev``, kwargs with one tensor on ``other``)."""
    with FakeTensorMode():
        def t(*shape: int, dtype: torch.dtype = torch.float32, d: str = dev) -> torch.Tensor:
            return torch.empty(*shape, dtype=dtype, device=d)

        i = t(4, dtype=torch.int64)
        i2 = t(4, 1, dtype=torch.int64)
        calls = {
            "multi_embedding_fwd": (me.multi_embedding_fwd, dict(weights=[t(5, 3)], indices=[i], out=t(4, 3)),
                                    dict(weights=[t(5, 3)], indices=[t(4, dtype=torch.int64, d=other)], out=t(4, 3))),
            "multi_embedding_bwd": (me.multi_embedding_bwd,
                                    dict(grad_out=t(4, 3), indices=[i], num_rows=[5], dims=[3], padding_idx=[-1],
                                         freq=[False], grad_flat=t(15)),
                                    dict(grad_out=t(4, 3), indices=[i], num_rows=[5], dims=[3], padding_idx=[-1],
                                         freq=[False], grad_flat=t(15, d=other))),
            "multi_embedding_bag_fwd": (bg.multi_embedding_bag_fwd,
                                        dict(weights=[t(5, 3)], segments=[bg.Segment(i, 2, bag_size=2)],
                                             outs=[t(2, 3)], arg_max=[None]),
                                        dict(weights=[t(5, 3)], segments=[bg.Segment(i, 2, bag_size=2)],
                                             outs=[t(2, 3, d=other)], arg_max=[None])),
            "multi_embedding_bag_bwd": (bg.multi_embedding_bag_bwd,
                                        dict(grads=[t(2, 3)], segments=[bg.Segment(i, 2, bag_size=2)], num_rows=[5],
                                             dims=[3], arg_max=[None], grad_offsets=[0], sparse_values=[None],
                                             grad_flat=t(15)),
                                        dict(grads=[t(2, 3)],
                                             segments=[bg.Segment(t(4, dtype=torch.int64, d=other), 2, bag_size=2)],
                                             num_rows=[5], dims=[3], arg_max=[None], grad_offsets=[0],
                                             sparse_values=[None], grad_flat=t(15))),
            "one_hot_linear_fwd": (oh.one_hot_linear_fwd,
                                   dict(indices=[i2], num_classes=[5], offsets=[0], weight=t(3, 5), bias=None,
                                        out=t(4, 3)),
                                   dict(indices=[i2], num_classes=[5], offsets=[0], weight=t(3, 5, d=other),
                                        bias=None, out=t(4, 3))),
            "one_hot_linear_bwd": (oh.one_hot_linear_bwd,
                                   dict(grad_out=t(4, 3), indices=[i2], num_classes=[5], offsets=[0],
                                        grad_flat=t(15), num_columns=5, v_major=False, has_bias=False),
                                   dict(grad_out=t(4, 3), indices=[t(4, 1, dtype=torch.int64, d=other)],
                                        num_classes=[5], offsets=[0], grad_flat=t(15), num_columns=5,
                                        v_major=False, has_bias=False)),
        }
    return calls


@pytest.fixture
def entered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.device]]:
    """``torch.cuda.device`` replaced by a guard that records its device and stops the call."""
    seen: list[torch.device] = []

    @contextlib.contextmanager
    def device(d: Any) -> Iterator[None]:
        seen.append(torch.device(d))
        raise _Entered
        yield  # pragma: no cover

    monkeypatch.setattr(torch.cuda, "device", device)
    yield seen


@pytest.mark.parametrize("name", list(_calls("cpu", "cpu")))
def test_launcher_enters_its_tensors_device(name: str, entered: list[torch.device]) -> None:
    launcher, kwargs, _ = _calls("cuda:1", "cuda:0")[name]
    assert launcher.launch_device_param in kwargs
    with pytest.raises(_Entered):
        launcher(**kwargs)
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.parametrize("name", list(_calls("cpu", "cpu")))
def test_launcher_refuses_a_tensor_on_another_device(name: str, entered: list[torch.device]) -> None:
    launcher, _, mixed = _calls("cuda:1", "cuda:0")[name]
    with pytest.raises(ValueError, match="every tensor must be on cuda:1, got one on cuda:0"):
        launcher(**mixed)
    assert entered == []
