"""Offline compile of every kernel family for a real GPU target, on a machine without one.

    python -m bench.kernel_compile --arch sm_90 --tables 1,26,100,1000 --json out.json
    python -m bench.kernel_compile --families multi_embedding --tables 1,1000
    python -m bench.kernel_compile --variants --strict    # every kernel variant, exit 1 on a miss

Triton's own compiler (``triton.compile`` on an ``ASTSource``, ptxas from the triton
wheel) builds each family's kernels for ``GPUTarget("cuda", NN, 32)``: no GPU and no
driver are needed. Per family and table count T it measures the wall time of the
compiles, the kernel parameter bytes (the ``.param`` declarations of the PTX entry),
the spill stores and the registers (ptxas ``-v``). Every (family, T) measurement gets a
fresh, empty ``TRITON_CACHE_DIR``, so nothing compiled for one T is reused for another;
one tiny warm-up compile first keeps Triton's one-time start-up out of the first number.

A family is a module ``inductor_embed.kernels.<family>`` exposing
``kernel_specs(tables) -> list[dict]`` (keys ``name``, ``fn``, ``num_warps``,
``signature`` {arg: "*fp32" | "i64" | ...}, ``constexprs`` {name: value}) and
``LAUNCHES = (forward, backward)``, the op's worst-case kernel launches. A family
without ``kernel_specs`` is skipped with a note; a missing ``LAUNCHES`` is reported as
null. The signature mimics Triton's runtime specialization: pointers get
``tt.divisibility=16``, integers none.

Goals: compile <= 30 s for T <= 26, <= 60 s at T = 100, <= 120 s at
T = 1,000; no spills; <= 4,096 parameter bytes. Misses are marked in the table; the exit
code is 0 anyway (1 only when a family cannot be imported or its ``kernel_specs``
raises).

``--variants`` compiles instead every kernel the CUDA launchers can pick (each module's
``kernel_variants()``: each width class, block size, dtype, VEC, max mode, bias and
unit-stride layout), in ``--jobs`` worker processes, and reports per family the
variants that fail to compile, spill or pass the parameter budget; table counts do not
apply (no kernel source depends on T). CI runs it with Triton 3.6 (the GPU machines'
toolchain, torch 2.11's pin) and with the newest Triton: a kernel that one Triton
version cannot compile is caught without a GPU. ``--strict`` makes every miss, in
either mode, exit 1.

The Triton interpreter (``TRITON_INTERPRET=1``, which the tests' conftest sets on a CPU
machine) replaces ``@triton.jit`` functions by ones that cannot be compiled: under it the
tool re-runs itself in a subprocess without that variable (``run_subprocess`` does the
same for callers such as tests/bench).

One module, though long: the variant list, the workers and the report share one record
type and one set of goals, and a reader checks a number in the table against the code
that made it in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import triton
import triton.language as tl

from bench import host

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("multi_embedding", "one_hot_linear", "multi_embedding_bag")
DEFAULT_TABLES = (1, 26, 100, 1000)
PARAM_BYTES_GOAL = 4096


def compile_goal_s(tables: int) -> float:
    """The compile-time budget for one family at ``tables`` tables."""
    return 30.0 if tables <= 26 else 60.0 if tables <= 100 else 120.0


# --- records ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelStat:
    """One kernel of a family, compiled once."""

    name: str
    compile_s: float
    param_bytes: int | None  # from the PTX entry's .param declarations (or the signature)
    param_source: str  # "ptx" or "signature" (an estimate: no PTX came back)
    spills: int | None  # spill store bytes, None without a ptxas log
    registers: int | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One family at one table count: what the JSON file holds, one per (family, T)."""

    family: str
    tables: int
    compile_s: float  # wall seconds, summed over the family's kernels
    kernels: int  # kernels compiled (without error)
    launches_fwd: int | None
    launches_bwd: int | None
    param_bytes: int | None  # the largest kernel's
    spills: int | None  # spill store bytes, summed over kernels; None when no log was found
    registers: int | None  # the most any kernel uses
    arch: str
    triton: str
    error: str | None = None  # compile errors, "; "-joined
    per_kernel: tuple[KernelStat, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def misses(self) -> list[str]:
        """The goals this row misses, in words (empty: all met or unknown)."""
        out = []
        if self.error:
            out.append("compile error")
        goal = compile_goal_s(self.tables)
        if self.compile_s > goal:
            out.append(f"compile {self.compile_s:.1f} s > {goal:.0f} s")
        if self.spills:
            out.append(f"{self.spills} B spilled")
        if self.param_bytes is not None and self.param_bytes > PARAM_BYTES_GOAL:
            out.append(f"params {self.param_bytes} B > {PARAM_BYTES_GOAL}")
        return out


# --- parsing ---------------------------------------------------------------------------

_ENTRY = re.compile(r"\.entry\s+[\w$.]+\s*\((.*?)\)", re.S)
_TYPE_BITS = re.compile(r"\.[bsuf](\d+)\b")
_ARRAY = re.compile(r"\[(\d+)\]")
_SPILLS = re.compile(r"(\d+) bytes spill stores")
_REGS = re.compile(r"Used (\d+) registers")


def ptx_param_bytes(ptx: str) -> int | None:
    """Bytes of the first ``.entry``'s parameters: ``.param .u64 .ptr ... x`` is 8,
    ``.param .u32 x`` 4, ``.param .align 8 .b8 x[24]`` 24. None if there is no entry."""
    m = _ENTRY.search(ptx)
    if m is None:
        return None
    total = 0
    for decl in m.group(1).split(","):
        if ".param" not in decl:
            continue
        bits = _TYPE_BITS.search(decl)
        if bits is None:
            return None
        size = int(bits.group(1)) // 8
        arr = _ARRAY.search(decl)
        total += size * (int(arr.group(1)) if arr else 1)
    return total


def signature_param_bytes(signature: dict[str, str]) -> int:
    """An estimate from the signature alone (pointers and 64-bit values 8, 32-bit 4, ...);
    Triton's hidden scratch pointers are not in it."""
    total = 0
    for ty in signature.values():
        if ty.startswith("*"):
            total += 8
        elif ty == "constexpr":
            continue
        else:
            bits = re.search(r"(\d+)$", ty)
            total += max(1, int(bits.group(1)) // 8) if bits else 8
    return total


def ptxas_stats(log: str) -> tuple[int | None, int | None]:
    """(spill store bytes summed over the log's functions, most registers used), each None
    when the log has no such line."""
    spills = [int(x) for x in _SPILLS.findall(log)]
    regs = [int(x) for x in _REGS.findall(log)]
    return (sum(spills) if spills else None), (max(regs) if regs else None)


def parse_arch(arch: str) -> int:
    """``sm_90``, ``sm_90a``, ``90`` -> 90."""
    m = re.fullmatch(r"(?:sm_)?(\d+)a?", arch.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"--arch: expected sm_NN (e.g. sm_90), got {arch!r}")
    return int(m.group(1))


# --- compiling -------------------------------------------------------------------------


def interpreter_on() -> bool:
    knobs = getattr(triton, "knobs", None)
    runtime = getattr(knobs, "runtime", None)
    if runtime is not None and hasattr(runtime, "interpret"):
        return bool(runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _knob_group(name: str) -> Any:
    return getattr(getattr(triton, "knobs", None), name, None)


@contextlib.contextmanager
def _knob(group_name: str, name: str, value: Any, env_key: str) -> Iterator[bool]:
    """Set ``triton.knobs.<group>.<name>`` and the env var ``env_key`` behind it for the
    body, then restore both; yields whether this Triton has the knob (the env var is set
    either way, for Triton versions that read it directly)."""
    group = _knob_group(group_name)
    has = group is not None and hasattr(group, name)
    old_env = os.environ.get(env_key)
    old_override = vars(group).get(name) if has else None
    os.environ[env_key] = str(value) if not isinstance(value, bool) else str(int(value))
    if has:
        setattr(group, name, value)  # a knob set in Python sets its env var too
    try:
        yield has
    finally:
        if has:
            delattr(group, name)  # drops the override; the env var decides again
            if old_override is not None:
                setattr(group, name, old_override)
        if old_env is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = old_env


@contextlib.contextmanager
def fresh_triton_cache() -> Iterator[str]:
    """A new, empty Triton cache directory for the body (env var and knob), removed after."""
    path = tempfile.mkdtemp(prefix="kernel_compile_cache_")
    try:
        with _knob("cache", "dir", path, "TRITON_CACHE_DIR"):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ptxas_log_on() -> contextlib.AbstractContextManager[bool]:
    """Make the NVIDIA backend print ptxas ``-v``'s log to stdout."""
    return _knob("nvidia", "dump_ptxas_log", True, "TRITON_DUMP_PTXAS_LOG")


def ast_source_args(spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], dict]:
    """(signature, constexprs, attrs) for ``ASTSource``: every argument of ``spec["fn"]``
    typed, constexprs as "constexpr", in the function's own argument order (a runtime
    argument and a constexpr may interleave; attrs are keyed by argument position);
    ``tt.divisibility=16`` on every pointer, as Triton's launcher gives an aligned tensor."""
    fn, signature, constexprs = spec["fn"], dict(spec["signature"]), dict(spec["constexprs"])
    names = list(getattr(fn, "arg_names", None) or [*signature, *constexprs])
    both = set(signature) & set(constexprs)
    missing = [n for n in names if n not in signature and n not in constexprs]
    extra = [n for n in [*signature, *constexprs] if n not in names]
    if both or missing or extra:
        raise ValueError(f"{spec['name']}: signature + constexprs must name each argument of "
                         f"{fn.__name__} once (both: {sorted(both)}, missing: {missing}, unknown: {extra})")
    sig = {n: ("constexpr" if n in constexprs else signature[n]) for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*")}
    return sig, constexprs, attrs


def compile_kernel(spec: dict[str, Any], capability: int) -> KernelStat:
    """Compile one spec for ``cuda`` at ``capability`` (warp size 32) and measure it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = str(spec["name"])
    try:
        sig, constexprs, attrs = ast_source_args(spec)
    except ValueError as e:
        return KernelStat(name, 0.0, None, "signature", None, None, error=str(e))
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with ptxas_log_on(), contextlib.redirect_stdout(buf):
            compiled = triton.compile(ASTSource(fn=spec["fn"], signature=sig, constexprs=constexprs, attrs=attrs),
                                      target=GPUTarget("cuda", capability, 32),
                                      options={"num_warps": int(spec["num_warps"])})
    except Exception as e:  # a ptxas failure (too many parameter bytes, say) is a result
        first = (str(e).strip().splitlines() or [""])[0]
        return KernelStat(name, time.perf_counter() - t0, None, "signature", None, None,
                          error=f"{name}: {type(e).__name__}: {first[:300]}")
    elapsed = time.perf_counter() - t0
    ptx = getattr(compiled, "asm", {}).get("ptx")
    from_ptx = ptx_param_bytes(ptx) if ptx else None
    params, source = (from_ptx, "ptx") if from_ptx is not None else (
        signature_param_bytes(spec["signature"]), "signature")
    spills, regs = ptxas_stats(buf.getvalue())
    return KernelStat(name, elapsed, params, source, spills, regs)


@triton.jit
def _warm_up_kernel(x_ptr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(x_ptr + o, tl.load(x_ptr + o) + 1.0)


def warm_up(capability: int) -> float:
    """Compile a tiny kernel in a throwaway cache: Triton's one-time start-up (MLIR
    contexts, the backend, the first ptxas run) is then charged to no family."""
    t0 = time.perf_counter()
    with fresh_triton_cache():
        compile_kernel({"name": "warm_up", "fn": _warm_up_kernel, "num_warps": 4,
                        "signature": {"x_ptr": "*fp32"}, "constexprs": {"BLOCK": 128}}, capability)
    return time.perf_counter() - t0


def launches(module: Any) -> tuple[int | None, int | None]:
    got = getattr(module, "LAUNCHES", None)
    try:
        fwd, bwd = got
        return int(fwd), int(bwd)
    except (TypeError, ValueError):
        if got is not None:
            print(f"note: {module.__name__}.LAUNCHES = {got!r} is not (forward, backward); reported as null")
        return None, None


def load_family(family: str) -> Any | None:
    """The family's module, or None (with a note) when it has no ``kernel_specs`` yet."""
    module = importlib.import_module(f"inductor_embed.kernels.{family}")
    if not callable(getattr(module, "kernel_specs", None)):
        print(f"note: {family}: inductor_embed.kernels.{family} has no kernel_specs(tables) yet; skipped")
        return None
    return module


def measure(family: str, module: Any, tables: int, capability: int) -> Row:
    """Compile every kernel ``module.kernel_specs(tables)`` lists, in a fresh cache."""
    fwd, bwd = launches(module)
    with fresh_triton_cache():
        specs = module.kernel_specs(tables)
        stats = tuple(compile_kernel(s, capability) for s in specs)
    ok = [k for k in stats if k.error is None]
    params = [k.param_bytes for k in ok if k.param_bytes is not None]
    spills = [k.spills for k in ok]
    regs = [k.registers for k in ok if k.registers is not None]
    errors = [k.error for k in stats if k.error]
    return Row(
        family=family, tables=tables, compile_s=sum(k.compile_s for k in stats), kernels=len(ok),
        launches_fwd=fwd, launches_bwd=bwd, param_bytes=max(params) if params else None,
        # Unknown for one kernel is unknown for the family: no partial sum looks like "0".
        spills=sum(spills) if ok and None not in spills else None,
        registers=max(regs) if regs else None, arch=f"sm_{capability}", triton=triton.__version__,
        error="; ".join(errors) or None, per_kernel=stats)


def run(families: Sequence[str], tables: Sequence[int], capability: int,
        progress: bool = True) -> tuple[list[Row], list[str]]:
    """Measure every family that has ``kernel_specs`` at every T. Returns the rows and
    the families that could not be measured (import error, kernel_specs raised)."""
    if interpreter_on():
        raise RuntimeError("TRITON_INTERPRET is on: @triton.jit functions cannot be compiled; "
                           "run without it (see run_subprocess)")
    rows: list[Row] = []
    broken: list[str] = []
    for family in families:
        try:
            module = load_family(family)
        except Exception as e:
            print(f"note: {family}: import failed: {type(e).__name__}: {e}")
            broken.append(family)
            continue
        if module is None:
            continue
        for t in tables:
            try:
                row = measure(family, module, t, capability)
            except Exception as e:  # kernel_specs itself raised
                print(f"note: {family} at T={t}: kernel_specs failed: {type(e).__name__}: {e}")
                broken.append(family)
                break
            rows.append(row)
            if progress:
                print(f"  {family} T={t}: {row.kernels} kernels, {row.compile_s:.2f} s", flush=True)
    return rows, broken


def run_subprocess(families: Sequence[str], tables: Sequence[int], arch: str = "sm_90",
                   timeout: float | None = None) -> tuple[list[dict[str, Any]], str, int]:
    """Run the tool in a fresh interpreter without TRITON_INTERPRET (which the tests set);
    returns (the JSON rows, its stdout + stderr, its exit code)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="kernel_compile_") as tmp:
        out = Path(tmp) / "rows.json"
        proc = subprocess.run(
            [sys.executable, "-m", "bench.kernel_compile", "--arch", arch, "--tables",
             ",".join(map(str, tables)), "--families", ",".join(families), "--json", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        rows = json.loads(out.read_text()) if out.exists() else []
    return rows, proc.stdout + proc.stderr, proc.returncode


# --- every variant ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One family's ``kernel_variants()``, each compiled once."""

    family: str
    variants: int
    compile_s: float  # wall seconds, summed over the variants (workers run in parallel)
    registers: int | None  # the most any variant uses
    param_bytes: int | None  # the largest variant's
    arch: str
    triton: str
    errors: tuple[str, ...] = ()  # "name: error" per variant that did not compile
    spills: tuple[str, ...] = ()  # "name: N B" per variant that spilled more than the allowance
    unknown_spills: int = 0  # variants without a ptxas log line
    tolerated: tuple[str, ...] = ()  # "name: N B" per variant that spilled within the allowance

    def misses(self) -> list[str]:
        out = [f"{len(self.errors)} compile error(s)"] if self.errors else []
        if self.spills:
            out.append(f"{len(self.spills)} spilled")
        if self.param_bytes is not None and self.param_bytes > PARAM_BYTES_GOAL:
            out.append(f"params {self.param_bytes} B > {PARAM_BYTES_GOAL}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_worker_capability = 0


def _variant_worker_init(capability: int) -> None:
    """A worker process: its own empty Triton cache (nothing reused between variants of
    one worker that another worker would not see), and the interpreter off."""
    global _worker_capability
    _worker_capability = capability
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel_variants_cache_")
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _compile_variant(job: tuple[str, int]) -> KernelStat:
    family, index = job
    module = importlib.import_module(f"inductor_embed.kernels.{family}")
    with ptxas_log_on():
        return compile_kernel(module.kernel_variants()[index], _worker_capability)


def run_variants(families: Sequence[str], capability: int, jobs: int,
                 spill_allowance: int = 0) -> tuple[list[VariantRow], list[str]]:
    """Compile every family's ``kernel_variants()`` in ``jobs`` spawned workers. Returns
    the rows and the families without ``kernel_variants`` or whose listing raised. A
    variant spilling at most ``spill_allowance`` bytes is listed, not counted a miss."""
    import concurrent.futures
    import multiprocessing

    work: dict[str, int] = {}
    broken: list[str] = []
    for family in families:
        try:
            module = importlib.import_module(f"inductor_embed.kernels.{family}")
            work[family] = len(module.kernel_variants())
        except Exception as e:
            print(f"note: {family}: kernel_variants failed: {type(e).__name__}: {e}")
            broken.append(family)
    ctx = multiprocessing.get_context("spawn")  # no forked MLIR context or Triton state
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max(1, jobs), mp_context=ctx, initializer=_variant_worker_init,
                                                initargs=(capability,)) as pool:
        for family, count in work.items():
            t0 = time.perf_counter()
            stats = list(pool.map(_compile_variant, [(family, i) for i in range(count)]))
            ok = [k for k in stats if k.error is None]
            regs = [k.registers for k in ok if k.registers is not None]
            params = [k.param_bytes for k in ok if k.param_bytes is not None]
            rows.append(VariantRow(
                family=family, variants=count, compile_s=sum(k.compile_s for k in stats),
                registers=max(regs) if regs else None, param_bytes=max(params) if params else None,
                arch=f"sm_{capability}", triton=triton.__version__,
                errors=tuple(k.error for k in stats if k.error),
                spills=tuple(f"{k.name}: {k.spills} B" for k in ok if k.spills and k.spills > spill_allowance),
                tolerated=tuple(f"{k.name}: {k.spills} B" for k in ok if k.spills and k.spills <= spill_allowance),
                unknown_spills=sum(k.spills is None for k in ok)))
            print(f"  {family}: {count} variants in {time.perf_counter() - t0:.1f} s wall", flush=True)
    return rows, broken


def variant_table(rows: Sequence[VariantRow]) -> str:
    out = [f"{'family':<20}  {'variants':>8}  {'compile s':>9}  {'regs':>4}  {'param B':>7}  goals",
           f"{'-' * 20}  {'-' * 8}  {'-' * 9}  {'-' * 4}  {'-' * 7}  {'-' * 5}"]
    for r in rows:
        miss = r.misses()
        out.append(f"{r.family:<20}  {r.variants:>8}  {r.compile_s:>9.1f}  {_n(r.registers):>4}  "
                   f"{_n(r.param_bytes):>7}  {'MISS: ' + '; '.join(miss) if miss else 'ok'}")
    for r in rows:
        out += [f"error: {r.family}: {e}" for e in r.errors]
        out += [f"spill: {r.family}: {x}" for x in r.spills]
        out += [f"spill within --spill-allowance: {r.family}: {x}" for x in r.tolerated]
        if r.unknown_spills:
            out.append(f"spills unknown (no ptxas log line) for {r.unknown_spills} {r.family} variant(s)")
    return "\n".join(out)


# --- output ----------------------------------------------------------------------------


def _git() -> str:
    sha, dirty = host.git_state()
    return sha[:12] + (" (uncommitted changes)" if dirty else "")


def _host() -> str:
    return f"{host.cpu_model()}, {os.cpu_count()} cores"


def _ptxas_version(capability: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        text = get_ptxas_version(capability)
        m = re.search(r"release ([\d.]+)", text)
        return f"ptxas {m.group(1)}" if m else "ptxas (unknown version)"
    except Exception as e:
        return f"ptxas unavailable ({type(e).__name__})"


def header(capability: int, variants: bool = False) -> str:
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "not installed"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return "\n".join([
        f"# kernel compile: target cuda sm_{capability} (GPUTarget('cuda', {capability}, 32)), offline",
        f"- host: {_host()}; no GPU used",
        f"- triton {triton.__version__}, {_ptxas_version(capability)}, torch {torch_v}, "
        f"python {platform.python_version()}",
        f"- git {_git()}, {date}",
        "- every kernel_variants() entry, each compiled once, a fresh TRITON_CACHE_DIR per worker; "
        "pointers specialized to 16-byte alignment" if variants else
        "- a fresh TRITON_CACHE_DIR per (family, T); one warm-up compile first; "
        "pointers specialized to 16-byte alignment",
        f"- goals: no compile error; no spills; params <= {PARAM_BYTES_GOAL} B" if variants else
        "- goals: compile <= 30 s for T <= 26, <= 60 s at T = 100, <= 120 s at T = 1,000; "
        f"no spills; params <= {PARAM_BYTES_GOAL} B",
    ])


def _n(v: int | None) -> str:
    return "?" if v is None else str(v)


def table(rows: Sequence[Row]) -> str:
    head = ["family", "T", "kernels", "compile s", "goal s", "launches f/b", "param B", "spill B",
            "regs", "goals"]
    body = []
    for r in rows:
        miss = r.misses()
        body.append([r.family, str(r.tables), str(r.kernels), f"{r.compile_s:.2f}",
                     f"{compile_goal_s(r.tables):.0f}", f"{_n(r.launches_fwd)}/{_n(r.launches_bwd)}",
                     _n(r.param_bytes), _n(r.spills), _n(r.registers),
                     "MISS: " + "; ".join(miss) if miss else "ok"])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    left = {0, len(head) - 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    errors = [(r.family, r.tables, r.error) for r in rows if r.error]
    out += [f"error: {f} T={t}: {e}" for f, t, e in errors]
    unknown = [f"{r.family} T={r.tables}" for r in rows if r.spills is None and r.kernels]
    if unknown:
        out.append(f"spills unknown (no ptxas log line) for: {', '.join(unknown)}")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = host.arg_parser("python -m bench.kernel_compile", __doc__)
    ap.add_argument("--arch", default="sm_90", help="target, sm_NN (default sm_90)")
    ap.add_argument("--tables", default=",".join(map(str, DEFAULT_TABLES)),
                    help="comma-separated table counts (default 1,26,100,1000)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma-separated kernel families (default {','.join(FAMILIES)})")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the rows here (a JSON list)")
    ap.add_argument("--variants", action="store_true",
                    help="compile every kernel variant the launchers can pick (kernel_variants()); --tables is ignored")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="worker processes for --variants (default: the CPU count)")
    ap.add_argument("--spill-allowance", type=int, default=0, metavar="BYTES",
                    help="with --variants: spills of at most BYTES per kernel are listed, not misses (default 0)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 on any miss: a compile error, a spill, a parameter or compile-time budget")
    args = ap.parse_args(argv)
    try:
        args.capability = parse_arch(args.arch)
        args.table_counts = [int(t) for t in args.tables.split(",") if t.strip()]
    except (argparse.ArgumentTypeError, ValueError) as e:
        ap.error(str(e))
    if not args.table_counts or min(args.table_counts) < 1:
        ap.error("--tables: positive integers, comma-separated")
    args.family_list = [f.strip() for f in args.families.split(",") if f.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if interpreter_on():
        print("note: TRITON_INTERPRET is set; re-running without it", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "bench.kernel_compile", *argv], cwd=REPO, env=env,
                              check=False).returncode
    # Triton 3.9's note that its fp-fusion default will change: true, and noise here.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    print(header(args.capability, args.variants), flush=True)
    if args.variants:
        rows, broken = run_variants(args.family_list, args.capability, args.jobs, args.spill_allowance)
    else:
        print(f"warm-up compile: {warm_up(args.capability):.2f} s (not charged to any family)", flush=True)
        rows, broken = run(args.family_list, args.table_counts, args.capability)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")
    print()
    if not rows:
        print("no family exposes kernel_specs: nothing compiled")
    else:
        print(variant_table(rows) if args.variants else table(rows))
    if args.json:
        print(f"wrote {args.json}")
    missed = any(r.misses() for r in rows)
    if args.strict and missed:
        print("kernel_compile: --strict: a goal was missed (see the table)")
    return 1 if broken or (args.strict and missed) else 0

if __name__ == "__main__":
    sys.exit(main())
