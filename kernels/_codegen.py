"""Writing and importing generated Triton kernel modules (shared by every op family).

A kernel specialised on a table or field count is generated as source text. Triton and
Inductor read kernel source with ``inspect.getsource``, so it must live in a real file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


def cache_dir() -> str:
    """Directory of the generated kernel files, private to the current user."""
    return os.path.join(tempfile.gettempdir(), f"inductor_embed_kernels_{os.getuid()}")


def import_generated(stem: str, src: str) -> ModuleType:
    """Write ``src`` to ``{cache_dir()}/{stem}.py`` (unless that file exists) and import it.

    The caller puts a hash of everything the text depends on into ``stem``, so an
    existing file with that name is the right one and is imported as is.
    """
    directory = cache_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # The directory is importable code in a shared temp dir: refuse one that
    # another user created first.
    if os.stat(directory).st_uid != os.getuid():
        raise RuntimeError(f"{directory} is owned by another user")
    path = os.path.join(directory, stem + ".py")
    if not os.path.exists(path):
        # Atomic publish: a concurrent process sees the old state or the whole file.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(src)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    name = f"inductor_embed_generated_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered so that pickling and inspect can find the module by name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def render(template: str, params: str, call: str, count: int, **fmt: object) -> str:
    """One generated kernel: ``template`` with ``{params}`` and ``{calls}`` filled by the
    per-item templates ``params`` / ``call`` repeated for k = 0..count-1."""
    return template.format(
        params="\n".join(params.format(k=k) for k in range(count)),
        calls="\n".join(call.format(k=k) for k in range(count)),
        **fmt,
    )


def param_names(template: str, k: int) -> list[str]:
    """Item k's kernel parameter names, in order, read off a per-item parameter template
    (one ``name,`` or ``name: tl.constexpr,`` per line, comments allowed)."""
    return [line.split(",")[0].split(":")[0].strip() for line in template.format(k=k).splitlines()]


def prefix_offsets(sizes: Sequence[Any]) -> list[Any]:
    """Exclusive prefix sums: where each item starts."""
    out, acc = [], 0
    for x in sizes:
        out.append(acc)
        acc = acc + x
    return out


class KernelFamily:
    """Kernel modules generated per item count (tables, fields, segments), each generated,
    written and imported once per process.

    ``source(n)`` returns the module text for n items. The file name carries a hash of that
    text and of the jit helpers' source, so a code change never reuses a stale file.
    """

    def __init__(self, name: str, source: Callable[[int], str], helpers: ModuleType, item: str) -> None:
        self.name = name
        self.item = item  # what the count counts, for the error message
        self.source = source
        self.helpers = helpers
        self._modules: dict[int, ModuleType] = {}
        self._lock = threading.Lock()

    def module(self, n: int) -> ModuleType:
        if n < 1:
            raise ValueError(f"{self.name} needs at least one {self.item}, got {n}")
        module = self._modules.get(n)
        if module is not None:
            return module
        with self._lock:
            module = self._modules.get(n)
            if module is None:
                src = self.source(n)
                digest = hashlib.sha256((src + inspect.getsource(self.helpers)).encode()).hexdigest()[:16]
                module = import_generated(f"{self.name}_{n}_{digest}", src)
                self._modules[n] = module
            return module
