"""Five CPU ops with their host side in C++ (``cpu_host.cpp``): the lookups' backward
(``multi_embedding_backward_cpu_fast``), the bags' forward and backward
(``multi_embedding_bag_cpu_fast``, ``multi_embedding_bag_backward_cpu_fast``) and
one_hot_linear's (``one_hot_linear_cpu_fast``, ``one_hot_linear_backward_cpu_fast``), which
autograd and the ops' CPU bodies call where the native kernels are built (``op``).

Why: a small batch's step is host work, not data (bench/results/cpu/op_host_cost.md): the
Python ops spent 84-214 us a call at 26 tables between the dispatcher's trip into Python and a
tensor call per table field. The C++ kernels read their arguments as the dispatcher holds
them, allocate the outputs and fill the native kernels' structs themselves, then call
``cpu_kernels.c``'s ``ie_bag_grad`` / ``ie_bag_forward`` / ``ie_one_hot_linear`` (their
addresses, and the probes of ATen's sort the bag backward follows, bound at load): 17-32 us.

Each ``_fast`` op is defined here, in Python (``define_fast``), its Python kernel the Python
op's work: a graph or an FX cache entry that names it always runs, built or not. The first
call builds ``cpu_host.cpp`` (the running torch's headers and libraries, the system's C++
compiler, ~6 s once; cached per user beside the C kernels, keyed by the source, the
compiler, the flags and the torch build) and loads it, which registers the ops' CPU kernels
over the Python ones. Without a C++ compiler, or where the build fails (logged once), the
Python kernels stay. A C++ kernel takes the common case and hands every other call to the
Python op unchanged (see the source), so both give the same results and errors.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import torch

from inductor_embed import _internal
from inductor_embed.lowering import _cpu_native, _grad_cache
from inductor_embed.lowering._common import twin_op

log = logging.getLogger("inductor_embed")

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_host.cpp")
_FLAGS = ["-O2", "-fPIC", "-shared", "-w"]
# torch 2.14's headers need C++20; a compiler without it may still build older torch's as C++17.
_STANDARDS = ("-std=c++20", "-std=c++17")

_lock = threading.Lock()
# "loaded": whether the C++ kernels are bound (set once tried); "host": the loaded library
_state: dict[str, object] = {}


def _compilers() -> list[str]:
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return [p for p in dict.fromkeys(shutil.which(n) for n in names if n) if p]


def _command(cxx: str, std: str, out: str) -> list[str]:
    """The build's command: the running torch's headers and libraries (as
    ``torch.utils.cpp_extension`` finds them for a CPU build, without importing it: it needs
    setuptools)."""
    root = os.path.dirname(torch.__file__)
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{os.path.join(root, 'include')}", f"-I{os.path.join(root, 'include', 'torch', 'csrc', 'api', 'include')}"]
    return [cxx, std, *_FLAGS, abi, *includes, SOURCE_PATH, "-o", out, f"-L{os.path.join(root, 'lib')}", "-lc10",
            "-ltorch_cpu"]


def _build() -> str | None:
    """The built library's path (cached, or compiled now), or None, logged, where it cannot
    be built."""
    if sys.platform == "win32":
        return None
    source = _cpu_native.read_source(SOURCE_PATH, "the C++ host kernels' source is missing (%s); using the Python ops")
    if source is None:
        return None
    errors: list[str] = []
    directory = _cpu_native._private_dir()
    build = f"{torch.__version__} {torch.__file__} {torch._C._GLIBCXX_USE_CXX11_ABI}"
    for cxx, std in ((c, std) for c in _compilers() for std in _STANDARDS):
        key = hashlib.sha256("\0".join([source, cxx, std, *_FLAGS, build]).encode()).hexdigest()[:20]
        path = os.path.join(directory, f"cpu_host_{key}.so")
        if os.path.exists(path):
            return path
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)  # (OSError: the directory is gone)
            os.close(fd)
            subprocess.run(_command(cxx, std, tmp), check=True, capture_output=True, text=True, timeout=300)
            os.replace(tmp, path)  # atomic: another process may be building it too
            return path
        except (OSError, subprocess.SubprocessError) as e:
            detail = (getattr(e, "stderr", "") or str(e)).strip()
            first = next((ln for ln in detail.splitlines() if "error" in ln), detail)  # (not the include chain)
            errors.append(f"{cxx} {std}: {first[:300]}")
        finally:
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
    log.warning("inductor_embed: could not build the C++ host of the CPU ops (%s); their Python ops run instead "
                "(3-7x the host time a call). Set CXX to a C++ compiler.",
                "; ".join(errors) if errors else "no C++ compiler found: $CXX, c++, g++, clang++")
    return None


def load() -> bool:
    """Build (once a process) and load the C++ kernels, binding them to the native library;
    whether they are bound. Never raises: whatever goes wrong is logged once and the Python ops
    run. Requires ``_cpu_native.lib()``."""
    if "loaded" not in _state:
        with _lock:
            if "loaded" not in _state:
                try:
                    _state["loaded"] = _load()
                except Exception as e:  # noqa: BLE001  (a cache directory gone, a failed probe, ...)
                    log.warning("inductor_embed: the C++ host kernels could not be set up (%s: %s); the Python ops "
                                "run instead", type(e).__name__, e)
                    _state["loaded"] = False
    return bool(_state["loaded"])


def _load() -> bool:
    library = _cpu_native.lib()
    path = _build() if library is not None else None
    if path is None:
        return False
    # ATen's sort, as the bag backward's Python path asks it per table: probed once a process,
    # not in a fork (ATen's parallel sort may hang on the parent's OpenMP pool there; the C++
    # bag backward then hands every call to the Python op, as unprobed)
    forked = bool(_cpu_native._state.get("forked"))
    stable = [None if forked else _cpu_native.stable_sort_from(t) for t in (torch.int32, torch.int64)]
    replica = [not forked and _cpu_native.aten_sort_matches(t) for t in (torch.int32, torch.int64)]
    try:
        # dlopen registers the ops' CPU kernels (the library's static initialisers); unbound,
        # they hand every call to the Python ops
        host = ctypes.CDLL(path)
        bind = host.ie_host_bind
        bind.restype, bind.argtypes = ctypes.c_int64, [ctypes.c_int64] * 15
        address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        if bind(address(library.ie_bag_grad), ctypes.sizeof(_cpu_native._Table), address(library.ie_bag_forward),
                ctypes.sizeof(_cpu_native._Pool), _cpu_native.STREAMING_BYTES, _cpu_native.THREADED_BYTES,
                _grad_cache.MIN_BYTES, *[-1 if f is None else f for f in stable], *replica, forked,
                address(library.ie_one_hot_linear), ctypes.sizeof(_cpu_native._Field),
                ctypes.sizeof(_cpu_native._OneHot)) != 0:
            raise OSError("its structs are not the native kernels'")
        _state["host"] = host  # (ctypes never unloads a library; kept for clarity)
    except (OSError, AttributeError, RuntimeError) as e:  # a stale or foreign file under the cache's name
        log.warning("inductor_embed: could not load the C++ host kernels %s (%s); the Python ops run instead",
                    path, str(e).splitlines()[0] if str(e) else e)
        return False
    return True


def op(name: str) -> object:
    """The op to call for the Python op ``name`` (a CPU path with a C++ twin): its ``_fast``
    twin, unless ``_internal.cpp_host_on_cpu`` is off (tests of the Python op)."""
    return getattr(torch.ops.inductor_embed, f"{name}_fast" if _internal.cpp_host_on_cpu else name)


def define_fast(name: str, returns: str) -> None:
    """Define ``<name>_fast``: the op ``name``'s arguments and results, its Python kernel the
    builder (the first call) and the fallback (``name`` itself); ``cpu_host.cpp`` registers
    its CPU kernel. Called where ``name`` has just been defined."""
    python = getattr(torch.ops.inductor_embed, name).default

    def fast(*args):
        if not _state.get("loaded") and _cpu_native.lib() is not None:
            load()
        return python(*args)

    fast.__doc__ = (f"``{name}``, the same arguments and results; its CPU kernel is ``cpu_host.cpp``'s once built "
                    "(this Python body: the first call, which builds it, and every call where it cannot be built).")
    twin = twin_op(f"inductor_embed::{name}_fast", like=f"inductor_embed::{name}", returns=returns)(fast)
    twin.register_fake(lambda *args, **kwargs: python(*args, **kwargs))
