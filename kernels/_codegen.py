"""Writing and importing generated Triton kernel modules (shared by every op family).

A kernel specialised on a table or field count is generated as source text. Triton and
Inductor read kernel source with ``inspect.getsource``, so it must live in a real file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from types import ModuleType


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
