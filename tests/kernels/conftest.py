"""Kernel tests run on the GPU when there is one, else on the CPU under the Triton
interpreter (switched on by tests/conftest.py before any kernel module is imported)."""

import pytest


@pytest.fixture
def count_launches(monkeypatch):
    """``count_launches(module)`` wraps every Triton kernel of a kernel module and returns a
    function that says how many launches happened since."""
    import triton

    def install(module):
        calls = [0]

        class _Counting:
            def __init__(self, fn):
                self.fn = fn

            def __getitem__(self, grid):
                calls[0] += 1
                return self.fn[grid]

        for name in dir(module):
            fn = getattr(module, name)
            if isinstance(fn, triton.runtime.KernelInterface) and name.endswith("_kernel"):
                monkeypatch.setattr(module, name, _Counting(fn))
        return lambda: calls[0]

    return install
