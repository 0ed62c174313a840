"""The meta tables that let one kernel source serve any table count (kernels/_meta.py).

The CUDA path (pinned buffers reused by content, a pinned arena for tables first seen
during CUDA-graph capture) is exercised here on the CPU with pinning and the capture
query stubbed out: the bookkeeping is plain Python, and a GPU run is rare."""

from __future__ import annotations

import pytest
import torch

from inductor_embed.kernels import _meta


def test_cpu_pack_layout_and_zeroed_flags() -> None:
    meta = _meta.pack([[1, 2, 3], [4, 5, 6]], torch.device("cpu"))
    assert meta.dtype == torch.int64 and meta.tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert _meta.error_flags(meta).tolist() == [0, 0]
    _meta.error_flags(meta)[1] = 1  # a view: the kernels set the flags in place
    assert meta[-1].item() != 0


def test_pointer_and_index_code() -> None:
    t = torch.zeros(3, dtype=torch.int32)
    assert _meta.pointer(None) == 0 and _meta.pointer(t) == t.data_ptr()
    assert _meta.index_code(t) == 0 and _meta.index_code(t.long()) == 1 and _meta.index_code(None) == 0


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pinning as a no-op, the capture state under the test's control, fresh caches."""
    state = {"capturing": False}
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(_meta, "_cache", type(_meta._cache)())
    monkeypatch.setattr(_meta, "_graph_owned", {})
    monkeypatch.setattr(_meta, "_arenas", {})
    monkeypatch.setattr(_meta._CaptureArena, "SIZE", 64)
    monkeypatch.setattr(_meta, "_CACHE_SIZE", 2)
    return state


def test_host_buffers_are_reused_by_content(fake_cuda) -> None:
    dev = torch.device("cuda", 0)
    a = _meta._host_buffer([1, 2, 0], dev)
    assert _meta._host_buffer([1, 2, 0], dev) is a  # the same pointers: no new pinned copy
    assert a.tolist() == [1, 2, 0]
    b = _meta._host_buffer([3, 4, 0], dev)
    assert b is not a
    _meta._host_buffer([5, 6, 0], dev)  # a third table evicts the oldest (cache of 2)
    assert _meta._host_buffer([1, 2, 0], dev) is not a
    assert 0 in _meta._arenas  # reserved outside capture, for later captures


def test_capture_keeps_buffers_for_the_graph_and_uses_the_arena(fake_cuda) -> None:
    dev = torch.device("cuda", 0)
    warm = _meta._host_buffer([7, 8, 0], dev)  # warm-up: parameters' table, cached
    fake_cuda["capturing"] = True
    assert _meta._host_buffer([7, 8, 0], dev) is warm  # reused, and now owned by the graph
    new = _meta._host_buffer([9, 9, 9, 0], dev)  # first seen while capturing: arena slice
    arena = _meta._arenas[0]
    assert new.tolist() == [9, 9, 9, 0] and new.data_ptr() == arena.buf.data_ptr()
    fake_cuda["capturing"] = False
    for k in range(5):  # eviction never touches what a graph re-reads on replay
        _meta._host_buffer([k, 0], dev)
    assert _meta._host_buffer([7, 8, 0], dev) is warm
    assert _meta._host_buffer([9, 9, 9, 0], dev) is new
    fake_cuda["capturing"] = True
    with pytest.raises(RuntimeError, match="used up"):
        _meta._host_buffer(list(range(100)), dev)


def test_first_call_inside_capture_raises_a_clear_error(fake_cuda, monkeypatch) -> None:
    """No arena on this device yet (no call ever ran outside a capture): pinning now would
    fail inside the CUDA driver, so the op says what to do instead."""

    def no_pinning(self):
        raise AssertionError("pin_memory() while capturing")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    fake_cuda["capturing"] = True
    with pytest.raises(RuntimeError, match=r"first call .* on cuda:3 is inside CUDA-graph capture; run the model once"):
        _meta._host_buffer([1, 2, 0], torch.device("cuda", 3))
    assert _meta._graph_owned == {} and 3 not in _meta._arenas


def test_meta_fields_build_rows_by_name_and_check_the_kernels_names() -> None:
    fields = _meta.MetaFields("A B C")
    a, b, c = fields
    assert fields.cols == 3 and (a.value, b.value, c.value) == (0, 1, 2)
    assert fields.row(C=3, A=1, B=2) == [1, 2, 3]
    with pytest.raises(TypeError, match="no value for field B"):
        fields.row(A=1, C=3)
    with pytest.raises(TypeError, match=r"unknown fields \['E'\]"):
        fields.row(A=1, B=2, C=3, E=4)
    fields.check({"A": a, "B": b, "C": c})
    with pytest.raises(AssertionError, match=r"\['A', 'B'\]"):
        fields.check({"A": b, "B": a, "C": c})


@pytest.mark.parametrize("module", ["multi_embedding", "multi_embedding_bag", "one_hot_linear"])
def test_each_kernel_family_declares_its_meta_fields_once(module: str) -> None:
    """The kernels' field names are the declared columns, and a row has one value each."""
    import importlib

    mod = importlib.import_module(f"inductor_embed.kernels.{module}")
    mod.FIELDS.check(vars(mod))
    assert mod.META_COLS == mod.FIELDS.cols == len(set(mod.FIELDS.names))
