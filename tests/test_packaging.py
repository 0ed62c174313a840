"""The wheel and the sdist hold the whole package, and an install from them works on its own.

An editable install (what scripts/setup.sh makes) imports from the checkout, so a module left
out of the wheel goes unnoticed there. Here, offline (``--no-build-isolation``, ``--no-index``):

1. a copy of the checkout (without build outputs: a stale ``build/lib`` or ``*.egg-info``
   would leak old files into the artifacts, and the checkout itself stays untouched) is built
   into a wheel and an sdist, and the sdist is built into a wheel again;
2. each wheel's file list is compared with the checkout: every file under ``inductor_embed/``,
   ``lowering/`` and ``kernels/`` (these two install as ``inductor_embed.lowering`` and
   ``inductor_embed.kernels``), ``.py`` or data, is in it at its installed path;
3. each wheel is installed into a fresh venv that cannot see the checkout (no system
   site-packages; a ``.pth`` line appends the main environment's site-packages, for torch and
   triton, and the editable install's ``__editable__*.pth`` finder in there is not run, since
   ``.pth`` files in a directory a ``.pth`` line adds are not processed), and there, run from a
   temporary directory with PYTHONPATH unset: ``torch.compile(m, backend="inductor_embed")``
   with no import of the package (the entry point) rewrites a lookups + cat model and matches
   eager exactly, so does ``inductor_embed.enable()`` + plain ``torch.compile``, the version
   and the installed metadata agree, and ``python -m inductor_embed.demo --help`` runs.

It skips only where the tools cannot work at all: no ``venv`` module, no pip, setuptools
older than 64 (pyproject's build requirement), or setuptools < 70.1 without ``wheel``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source directory -> the package path it installs as (pyproject's [tool.setuptools.package-dir]).
PACKAGE_DIRS = {"inductor_embed": "inductor_embed", "lowering": "inductor_embed/lowering",
                "kernels": "inductor_embed/kernels"}
# What a copy of the checkout leaves out: VCS data, caches and earlier build outputs.
NOT_COPIED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
              ".venv", "*.pyc")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tools_or_skip() -> None:
    """Skip when building or installing cannot work here at all; nothing else skips.

    Read from the installed metadata, never by import or find_spec: in this process torch has
    imported distutils, so importing setuptools trips its distutils shim, and looking pip up
    switches that shim off for good (later compiles that import setuptools then fail)."""
    if importlib.util.find_spec("venv") is None:
        pytest.skip("this Python has no venv module")
    if _installed("pip") is None:
        pytest.skip("pip is not installed")
    setuptools_version = _installed("setuptools")
    if setuptools_version is None:
        pytest.skip("setuptools is not installed (the build backend; --no-build-isolation)")
    if _version_tuple(setuptools_version) < (64,):
        pytest.skip(f"setuptools {setuptools_version} < 64, pyproject's build requirement")
    if _version_tuple(setuptools_version) < (70, 1) and _installed("wheel") is None:
        pytest.skip(f"setuptools {setuptools_version} needs the wheel package to build a wheel")


def _env(tmp: Path) -> dict[str, str]:
    """The environment of every command: no PYTHONPATH (or any PYTHON* setting), none of the
    plugin's or torch's settings from the caller, pip offline, Inductor's caches in ``tmp``
    (its C++ kernels, built once for both venvs) and its FX graph and AOTAutograd caches off:
    a hit there under ``enable()`` would skip the pass whose counters are checked."""
    drop = ("PYTHON", "INDUCTOR_EMBED_", "TORCHINDUCTOR_", "TORCH_LOGS", "TORCH_COMPILE", "TRITON_", "PIP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor_cache"), TORCHINDUCTOR_FX_GRAPH_CACHE="0",
               TORCHINDUCTOR_AUTOGRAD_CACHE="0", INDUCTOR_EMBED_CACHE_DIR=str(tmp / "inductor_embed_cache"))
    return env


def _run(cmd: list, cwd: Path, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(tmp), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(str(c) if len(str(c)) < 100 else '<script>' for c in cmd)} (in {cwd}) "
        f"exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def _checkout_files() -> dict[str, str]:
    """Every file of the three package directories: installed path -> checkout path."""
    files = {}
    for src, dst in PACKAGE_DIRS.items():
        for path in sorted((ROOT / src).rglob("*")):
            rel = path.relative_to(ROOT / src)
            if (not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo")
                    or any(p.startswith(".") for p in rel.parts) or path.name.endswith("~")):
                continue
            files[f"{dst}/{rel.as_posix()}"] = f"{src}/{rel.as_posix()}"
    return files


def _checkout_version() -> str:
    """inductor_embed/_version.py's one literal assignment (setuptools reads it statically,
    without importing the package and so torch, at build time)."""
    tree = ast.parse((ROOT / "inductor_embed" / "_version.py").read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Assign), (
        "inductor_embed/_version.py must be the single line __version__ = \"X.Y.Z\"")
    (target,), value = tree.body[0].targets, tree.body[0].value
    assert isinstance(target, ast.Name) and target.id == "__version__"
    return ast.literal_eval(value)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist of a copy of the checkout, and the wheel built from that sdist."""
    _tools_or_skip()
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    _run([*pip_wheel, "-w", tmp / "wheel", src], cwd=tmp, tmp=tmp)
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])",
          tmp / "sdist"], cwd=src, tmp=tmp)
    (sdist,) = (tmp / "sdist").glob("*.tar.gz")
    _run([*pip_wheel, "-w", tmp / "sdist_wheel", sdist], cwd=tmp, tmp=tmp)
    (wheel,) = (tmp / "wheel").glob("*.whl")
    (sdist_wheel,) = (tmp / "sdist_wheel").glob("*.whl")
    return {"tmp": tmp, "wheel": wheel, "sdist": sdist, "sdist_wheel": sdist_wheel}


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


@pytest.mark.parametrize("artifact", ["wheel", "sdist_wheel"])
def test_wheel_holds_every_module_and_data_file(built, artifact):
    names = _wheel_names(built[artifact])
    want = _checkout_files()
    assert "inductor_embed/patterns/__init__.py" in want  # the subpackage the wheel once lacked
    missing = sorted(f"{dst} (from {src})" for dst, src in want.items() if dst not in names)
    assert not missing, (
        f"{built[artifact].name} lacks files of the checkout: {missing}. A new subpackage goes into "
        "pyproject's [tool.setuptools] packages, a data file's pattern into [tool.setuptools.package-data]")
    packaged = {n for n in names if not n.startswith("inductor_embed-")}
    assert packaged == set(want), f"files in the wheel but not in the checkout: {sorted(packaged - set(want))}"
    version = _checkout_version()
    with zipfile.ZipFile(built[artifact]) as z:
        metadata = z.read(f"inductor_embed-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"inductor_embed-{version}.dist-info/entry_points.txt").decode()
    assert re.search(rf"^Version: {re.escape(version)}$", metadata, re.M), metadata[:300]
    assert "inductor_embed = inductor_embed.backend:inductor_embed_backend" in entry_points


def test_sdist_holds_what_the_wheel_is_built_from(built):
    with tarfile.open(built["sdist"]) as t:
        names = {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile() and "/" in m.name}
    want = {"pyproject.toml", "README.md", "PKG-INFO", *_checkout_files().values()}
    assert not want - names, f"the sdist lacks {sorted(want - names)}"
    # Built again from the sdist, the wheel has the same files as the checkout's.
    assert _wheel_names(built["sdist_wheel"]) == _wheel_names(built["wheel"])


def test_version_is_written_once():
    version = _checkout_version()
    for name in ("pyproject.toml", "inductor_embed/__init__.py"):
        text = (ROOT / name).read_text()
        assert not re.search(rf"['\"]{re.escape(version)}['\"]", text), (
            f"{name} spells the version {version}: it lives in inductor_embed/_version.py only")
    import inductor_embed

    assert inductor_embed.__version__ == version


# Run inside the venv, from a temporary directory: the rewrite through the entry point (no
# import of inductor_embed first), then through enable(); prints what it found as JSON.
CHECK = r'''
import copy, importlib.metadata as md, json, sys
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

facts = {"imported_before_compile": "inductor_embed" in sys.modules}


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(50, 4), nn.Embedding(80, 8), nn.Embedding(30, 2)])

    def forward(self, x):
        return torch.cat([t(x[:, i]) for i, t in enumerate(self.tables)], dim=-1)


def run(compile_model):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Features()
    twin = copy.deepcopy(model)
    x = torch.stack([torch.randint(0, n, (64,)) for n in (50, 80, 30)], dim=1)
    out_e, out_c = model(x), compile_model(twin)(x)
    grad = torch.randint(-3, 4, out_e.shape).float()  # small integers: sums exact in any order
    out_e.backward(grad)
    out_c.backward(grad)
    return {"rewrites": counters["inductor_embed"]["multi_embedding_cat"],
            "forward_equal": torch.equal(out_c, out_e),
            "grads_equal": all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), twin.parameters()))}


facts["backend"] = run(lambda m: torch.compile(m, backend="inductor_embed"))
facts["imported_by_entry_point"] = "inductor_embed" in sys.modules
import inductor_embed
inductor_embed.enable()
facts["enable"] = run(torch.compile)
inductor_embed.disable()

import inductor_embed.kernels, inductor_embed.lowering, inductor_embed.patterns
facts["files"] = [m.__file__ for m in (inductor_embed, inductor_embed.patterns, inductor_embed.lowering,
                                       inductor_embed.kernels)]
facts["version"] = inductor_embed.__version__
from inductor_embed.lowering import _cpu_native
facts["native_kernels"] = [_cpu_native.lib() is not None, _cpu_native.SOURCE_PATH]
facts["metadata_version"] = md.version("inductor-embed")
facts["entry_points"] = [[ep.name, ep.value, str(ep.dist.locate_file(""))]
                         for ep in md.entry_points(group="torch_dynamo_backends") if ep.name == "inductor_embed"]
facts["editable"] = sorted({type(f).__module__ for f in sys.meta_path} | set(sys.modules))
facts["editable"] = [m for m in facts["editable"] if "__editable__" in m]
facts["sys_path"] = sys.path
print("FACTS" + json.dumps(facts))
'''


def _main_site_dirs() -> list[str]:
    """The main environment's site-packages directories (torch, triton and their
    dependencies), for the venv's .pth file; never the checkout."""
    import torch
    import triton

    dirs = [*site.getsitepackages(),
            *(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    dirs += [str(Path(m.__file__).resolve().parent.parent) for m in (torch, triton)]
    dirs = list(dict.fromkeys(os.path.realpath(d) for d in dirs if os.path.isdir(d)))
    assert not [d for d in dirs if Path(d) == ROOT or ROOT in Path(d).parents], dirs
    return dirs


def _venv_with(built: dict[str, Path], artifact: str) -> tuple[Path, Path]:
    """A fresh venv with ``artifact`` installed; returns its python and its site-packages."""
    tmp = built["tmp"]
    venv = tmp / f"venv_{artifact}"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp, tmp=tmp)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=tmp, tmp=tmp).stdout.strip())
    # Installed before the main environment is visible, so that pip sees no other inductor-embed.
    if _version_tuple(_installed("pip") or "0") >= (22, 3):
        install = [sys.executable, "-m", "pip", "--python", python, "install"]
    else:
        install = [sys.executable, "-m", "pip", "install", "--target", purelib]
    _run([*install, "--no-deps", "--no-index", "-q", built[artifact]], cwd=tmp, tmp=tmp)
    (purelib / "_main_environment.pth").write_text("\n".join(_main_site_dirs()) + "\n")
    return python, purelib


@pytest.mark.parametrize("artifact", ["wheel", "sdist_wheel"])
def test_installed_wheel_works_without_the_checkout(built, artifact):
    python, purelib = _venv_with(built, artifact)
    cwd = built["tmp"] / f"run_{artifact}"
    cwd.mkdir()
    out = _run([python, "-c", CHECK], cwd=cwd, tmp=built["tmp"]).stdout
    facts = json.loads(out[out.rindex("FACTS") + len("FACTS"):])

    venv_files = [Path(f).resolve() for f in facts["files"]]
    assert all(purelib.resolve() in f.parents for f in venv_files), (
        f"inductor_embed was imported from {facts['files']}, not from the venv's {purelib}")
    assert not [p for p in facts["sys_path"] if p and Path(p).resolve() == ROOT], facts["sys_path"]
    assert facts["editable"] == [], f"the editable install's finder ran in the venv: {facts['editable']}"

    assert not facts["imported_before_compile"]
    assert facts["imported_by_entry_point"], "backend='inductor_embed' did not load the package"
    for how in ("backend", "enable"):
        result = facts[how]
        assert result["rewrites"] >= 1, f"{how}: the multi_embedding_cat rewrite did not fire: {result}"
        assert result["forward_equal"] and result["grads_equal"], f"{how}: differs from eager: {result}"

    # The CPU kernels build from the C source the wheel ships.
    built_ok, source = facts["native_kernels"]
    assert built_ok and purelib.resolve() in Path(source).resolve().parents, facts["native_kernels"]

    version = _checkout_version()
    assert facts["version"] == facts["metadata_version"] == version
    assert [name for name, _, _ in facts["entry_points"]] == ["inductor_embed"], facts["entry_points"]
    name, value, location = facts["entry_points"][0]
    assert value == "inductor_embed.backend:inductor_embed_backend"
    assert Path(location).resolve() == purelib.resolve(), f"the entry point came from {location}"

    demo = _run([python, "-m", "inductor_embed.demo", "--help"], cwd=cwd, tmp=built["tmp"])
    assert "--quick" in demo.stdout
