"""The measurement loop: every provider on the same inputs, side by side.

For each compile group (cases that share the tables and so one model; the batch is
marked dynamic, so one compile serves every batch size and distribution of the
group, unless ``static`` asks for a compile per case):

1. build the eager model and each provider's runner (compiled copies, FBGEMM's TBE);
2. per case: one forward + backward of each provider, compared with the reference
   (eager for fp32; eager run in fp32 on the same tables for bf16/fp16, since eager's
   own half-type backward accumulates in the half type). A provider's first call in
   a group compiles it: that wall time is its compile time, reported apart and
   never part of a timed sample; the huge-page collapses a compile queued in the
   background (lowering/_hugepages.py) finish before the timing starts;
3. warm-up, then ``iters`` rounds; each round times every provider's forward,
   backward and forward+backward in turn, the provider order rotating each round,
   so that drift on a shared machine hits all alike;
4. one more step per provider for its peak memory, and on CUDA a profiled step for
   its kernel launch count.

Timers: CUDA events around the call, after a 256 MiB L2 flush and a synchronize (so
the host's launch cost counts, as it does for a small step); on the CPU,
``time.perf_counter`` around the call. Python's GC is off while timing.

One module, though long: it is the whole account of how a benchmark number is obtained
(the check, the rounds, the ratios, the memory peak), read top to bottom.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import logging
import statistics
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence

import torch

import inductor_embed
from bench.config import Case, CaseResult, ProviderResult, Ratio, Stat
from bench.providers import Provider, Runner
from bench.workloads import WORKLOADS, Unsupported, Workload
from inductor_embed.lowering import _hugepages

log = logging.getLogger("bench")

# Reference tolerances per dtype: |got - want| <= atol * max(1, max|want|) + rtol * |want|.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-5),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}
MEASURES = ("fwd", "bwd", "fwd_bwd")


# --- timing ---------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Times one call: CUDA events after an L2 flush on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    @property
    def description(self) -> str:
        if self.cuda:
            return "CUDA events; 256 MiB L2 flush and a synchronize before each timed call"
        return "time.perf_counter around each call"

    def measure(self, fn: Callable[[], object]) -> float:
        """Milliseconds ``fn`` takes."""
        if self.cuda:
            self._flush.zero_()
            torch.cuda.synchronize(self.device)
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def stat(samples: Sequence[float]) -> Stat:
    if len(samples) >= 2:
        q = statistics.quantiles(samples, n=5, method="inclusive")
        p20, p80 = q[0], q[-1]
    else:
        p20 = p80 = samples[0]
    return Stat(median_ms=statistics.median(samples), p20_ms=p20, p80_ms=p80, n=len(samples))


def paired_ratio(base: Sequence[float], other: Sequence[float]) -> Ratio | None:
    """Per-round ``base[i] / other[i]``: median and p20 / p80."""
    ratios = [b / o for b, o in zip(base, other) if o > 0]
    if not ratios or len(base) != len(other):
        return None
    s = stat(ratios)
    return Ratio(median=s.median_ms, p20=s.p20_ms, p80=s.p80_ms, n=s.n)


def measure_copy_bandwidth(device: torch.device, mib: int, reps: int = 10) -> float:
    """GB/s of ``dst.copy_(src)`` for a ``mib`` MiB tensor, counting read + write bytes."""
    n = mib * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    clock = Clock(device)
    for _ in range(2):
        dst.copy_(src)
    sync(device)
    ms = statistics.median(clock.measure(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# --- peak memory ------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Kineto prints a line to fd 2 on every profiler start and stop; hide them."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class PeakMemory:
    """Extra memory one forward + backward needs above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` over the step (the caching allocator's
    view). CPU: the torch profiler's allocation events (``profile_memory=True``) of the
    step, summed in time order: the peak of bytes allocated and not yet freed. Both
    count every tensor the step allocates, compiled code's buffers included.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated over one step"
        else:
            self.method = "peak live bytes of one step, from the torch profiler's allocation events"

    def measure(self, steps: dict[str, Callable[[], None]]) -> dict[str, int | None]:
        """Each named step's peak extra bytes. The caller frees every gradient first.

        Before each step (outside its window) inductor_embed's cached CPU gradient buffers
        are freed, so that a step that reuses them still counts them as it allocates them
        again (the cache holds them between steps: its bytes are the step's all the same)."""
        gc.collect()
        if self.device.type == "cuda":
            out: dict[str, int | None] = {}
            for name, step in steps.items():
                inductor_embed.empty_cache()
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
                step()
                torch.cuda.synchronize(self.device)
                out[name] = torch.cuda.max_memory_allocated(self.device) - base
            return out
        # One profiler session for all steps (starting one costs ~0.1-0.3 s), each step
        # in its own record_function window; a window's allocations are its subtree.
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile, record_function

        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for name, step in steps.items():
                inductor_embed.empty_cache()
                with record_function(f"bench::{name}"):
                    step()
        out = dict.fromkeys(steps)
        for root in prof.profiler.kineto_results.experimental_event_tree():
            name = root.name.removeprefix("bench::")
            if not root.name.startswith("bench::") or name not in out:
                continue
            allocs, stack = [], list(root.children)
            while stack:
                e = stack.pop()
                if e.tag == _EventType.Allocation:
                    allocs.append((e.start_time_ns, e.extra_fields.alloc_size))
                stack.extend(e.children)
            live = peak = 0
            for _, size in sorted(allocs):
                live += size
                peak = max(peak, live)
            out[name] = peak
        return out


def count_launches(device: torch.device, step: Callable[[], None]) -> int | None:
    """Device activities (kernels, memsets, copies) in one step; CUDA only."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


# --- correctness -----------------------------------------------------------------------


def compare(got: Sequence[torch.Tensor | None], want: Sequence[torch.Tensor], dtype: str,
            missing_ok: bool = False, tolerance: tuple[float, float] | None = None) -> tuple[float, str]:
    """(max abs error, "" or what is wrong) of output + gradients against the reference.

    A sparse gradient is compared after ``coalesce()`` (its rows sorted and summed), so an
    uncoalesced COO gradient equals its coalesced twin; where only one side is sparse, the
    sparse side is made dense. ``missing_ok``: a None gradient is not compared (FBGEMM's
    fused optimizer leaves none).
    """
    rtol, atol = tolerance or TOLERANCES[dtype]
    worst, problems = 0.0, []
    for k, (g, w) in enumerate(zip(got, want)):
        what = "output" if k == 0 else f"grad of parameter {k - 1}"
        if g is None:
            if not missing_ok:
                problems.append(f"{what} is missing")
            continue
        g, w = _comparable(g.detach().float(), w)
        if g.shape != w.shape:
            problems.append(f"{what} has shape {list(g.shape)}, expected {list(w.shape)}")
            continue
        if not torch.isfinite(g).all():
            problems.append(f"{what} has non-finite values")
            continue
        diff = (g - w).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        worst = max(worst, err)
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        if not bool((diff <= atol * scale + rtol * w.abs()).all()):
            problems.append(f"{what} off by up to {err:.3g} (max |ref| {scale:.3g})")
    return worst, "; ".join(problems[:3])


def _comparable(g: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two dense tensors, or the values of two coalesced sparse ones with equal indices."""
    if g.is_sparse and w.is_sparse:
        g, w = g.coalesce(), w.coalesce()
        if torch.equal(g.indices(), w.indices()):
            return g.values(), w.values()
    return (g.to_dense() if g.is_sparse else g), (w.to_dense() if w.is_sparse else w)


# --- one compile group --------------------------------------------------------------------


def _counters():
    from torch._dynamo.utils import counters

    return counters


def _rewrites(pattern: str) -> int:
    """inductor_embed's rewrites so far of ``pattern`` ("*": of every pattern)."""
    counts = _counters()["inductor_embed"]
    if pattern == "*":
        return sum(v for k, v in counts.items() if not k.endswith("_skipped"))
    return counts[pattern]


def _graphs_compiled() -> int:
    return int(_counters()["stats"]["unique_graphs"])


def _nothing() -> None:
    pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*force_disable_caches")
        warnings.filterwarnings("ignore", message=".*an autograd kernel was not registered.*")
        warnings.filterwarnings("ignore", message=".*TensorFloat32.*")
        yield


class _State:
    """A runner's progress through a group: its status sticks once it has failed."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.status = "ok"
        self.note = ""
        self.rewrites: int | None = None
        self.err: float | None = None  # this case's check
        self.case_status = "ok"
        self.case_note = ""


def _step(runner: Runner, inputs: Sequence[torch.Tensor], grad: torch.Tensor, optimize: bool = False) -> torch.Tensor:
    """One forward + backward (+ the runner's optimizer step if ``optimize``: never in the
    correctness check, which must leave the weights as every provider found them)."""
    for p in runner.params:
        p.grad = None
    out = runner.fn(*inputs)
    out.backward(grad if grad.dtype == out.dtype else grad.to(out.dtype))
    if optimize and runner.step is not None:
        runner.step()
    return out


def _infer(runner: Runner, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One forward under ``torch.inference_mode()`` (an inference run's step)."""
    with torch.inference_mode():
        return runner.fn(*inputs)


def run_group(workload: Workload, cases: Sequence[Case], providers: Sequence[Provider], device: torch.device,
              iters: int, warmup: int, dynamic: bool, clock: Clock, memory: PeakMemory,
              inference: bool = False) -> list[CaseResult]:
    """Run every provider on every case of one compile group (``inference``: the forward
    alone under ``torch.inference_mode()``, models in eval(); else forward + backward)."""
    torch._dynamo.reset()
    case0 = cases[0]
    model = workload.build(case0, device)
    model = model.eval() if inference else model.train()
    ref_model = model if case0.dtype == "float32" else copy.deepcopy(model).float()

    states: dict[str, _State] = {}
    fixed: dict[str, ProviderResult] = {}  # providers that do not run in this group
    for p in providers:
        reason = p.unavailable(workload, device)
        if reason:
            fixed[p.name] = ProviderResult(p.name, "skipped", reason)
            continue
        try:
            states[p.name] = _State(p.build(workload, case0, model, device))
        except Unsupported as e:
            fixed[p.name] = ProviderResult(p.name, "skipped", str(e))
        except Exception as e:  # a baseline that cannot even be built here: say why, go on
            log.warning("  %s: could not be built: %s", p.name, _first_line(e))
            fixed[p.name] = ProviderResult(p.name, "failed", f"could not be built: {_first_line(e)}")

    results = []
    phases = {"first calls (compiles) + checks": 0.0, "timing": 0.0, "memory": 0.0}
    for case in cases:
        results.append(_run_case(workload, case, providers, states, fixed, model, ref_model, device,
                                 iters, warmup, dynamic, clock, memory, phases, inference))
    log.info("  phases: %s", ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    del states, model, ref_model
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def _run_case(workload: Workload, case: Case, providers: Sequence[Provider], states: dict[str, _State],
              fixed: dict[str, ProviderResult], model, ref_model, device: torch.device, iters: int, warmup: int,
              dynamic: bool, clock: Clock, memory: PeakMemory, phases: dict[str, float],
              inference: bool = False) -> CaseResult:
    """One case for every provider: the eager reference, each provider's first call (its
    compile) checked against it, paired timing rounds, then peak memory and launches."""
    t_phase = time.perf_counter()
    inputs = workload.inputs(case, device)
    if dynamic:
        for pos, dim in workload.dynamic_dims(case):
            torch._dynamo.maybe_mark_dynamic(inputs[pos], dim)
    want, grad = _reference(ref_model, inputs, case, device, inference)
    compile_s, own_inputs = _first_calls(workload, case, states, inputs, grad, want, device, inference)
    # The plugin's compile may have queued huge-page collapses of its tables (a background
    # thread, lowering/_hugepages.py): the timing measures the steady state after them.
    _hugepages.wait(timeout=300)
    phases["first calls (compiles) + checks"] += time.perf_counter() - t_phase

    t_phase = time.perf_counter()
    active = [n for n in states if states[n].status != "failed" and n in own_inputs]
    samples = _time_rounds(case, states, active, own_inputs, grad, clock, iters, warmup, inference)
    phases["timing"] += time.perf_counter() - t_phase

    t_phase = time.perf_counter()
    runnable = [n for n in active if states[n].status != "failed"]
    peaks, launches = _peaks_and_launches(states, runnable, own_inputs, grad, device, memory, inference)
    results = []
    for p in providers:
        if p.name in fixed:
            results.append(fixed[p.name])
        elif states[p.name].status == "failed" or p.name not in own_inputs:
            results.append(ProviderResult(p.name, "failed", states[p.name].note, rewrites=states[p.name].rewrites))
        else:
            results.append(_provider_result(workload, p.name, states[p.name], samples, compile_s, peaks, launches))
    phases["memory"] += time.perf_counter() - t_phase
    return CaseResult(case=case, bytes=workload.bytes(case), results=tuple(results))


def _reference(ref_model, inputs: tuple[torch.Tensor, ...], case: Case, device: torch.device,
               inference: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(want, grad)``: eager's output (and every weight's gradient, training) in fp32, and
    the output gradient every provider's backward is fed (seeded by the case's label).
    Half-type tables are checked against an fp32 copy of the model (``ref_model``)."""
    ref_inputs = tuple(t.float() if t.is_floating_point() else t for t in inputs)
    for p in ref_model.parameters():
        p.grad = None
    with torch.inference_mode(inference):
        ref_out = ref_model(*ref_inputs)
    gen = torch.Generator().manual_seed(zlib.crc32(case.label.encode()))
    grad = torch.randn(ref_out.shape, generator=gen).to(device, getattr(torch, case.dtype))
    if inference:
        want = [ref_out.float()]
    else:
        ref_out.backward(grad.float())
        want = [ref_out.detach().float()] + [w.grad.detach().float() for w in ref_model.weights()]
    # A fused-optimizer provider (FBGEMM) updates its own tables in the check step; the
    # others' tables (shared for sparse_tables) are never stepped there.
    for p in ref_model.parameters():
        p.grad = None
    return want, grad


def _first_calls(workload: Workload, case: Case, states: dict[str, _State], inputs: tuple[torch.Tensor, ...],
                 grad: torch.Tensor, want: list[torch.Tensor], device: torch.device,
                 inference: bool) -> tuple[dict[str, float | None], dict[str, tuple[torch.Tensor, ...]]]:
    """Each provider's first call on the case, timed as its compile where it compiled, and
    checked against ``want``. Returns ``(compile_s, own_inputs)``: the compile seconds (None:
    nothing compiled) and the inputs as each provider takes them; a provider that raises is
    marked failed."""
    compile_s: dict[str, float | None] = {}
    own_inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, st in states.items():
        if st.status == "failed":
            continue
        r = st.runner
        try:
            own_inputs[name] = tuple(r.adapt(*inputs)) if r.adapt else inputs
            graphs0 = _graphs_compiled()
            rw0 = _rewrites("*")  # every pattern's: a sum row's rewrite is multi_embedding_sum's
            sync(device)
            t0 = time.perf_counter()
            out = _infer(r, own_inputs[name]) if inference else _step(r, own_inputs[name], grad)
            sync(device)
            elapsed = time.perf_counter() - t0
        except Exception as e:
            log.warning("  %s failed on %s: %s", name, case.label, _first_line(e))
            st.status, st.note = "failed", _first_line(e)
            continue
        compiled_now = _graphs_compiled() > graphs0
        compile_s[name] = elapsed if (r.compiled and compiled_now) else None
        if r.counts_rewrites and compiled_now:
            st.rewrites = (st.rewrites or 0) + _rewrites("*") - rw0
        got = [out] if inference else [out, *r.grads()]
        err, problem = compare(got, want, case.dtype, missing_ok=bool(r.uncompared), tolerance=workload.tolerance)
        st.err = err
        st.case_status, st.case_note = ("mismatch", problem) if problem else ("ok", "")
        if r.uncompared:
            st.case_note = "; ".join(n for n in (st.case_note, r.uncompared) if n)
        for p in r.params:
            p.grad = None
    return compile_s, own_inputs


def _time_rounds(case: Case, states: dict[str, _State], active: list[str],
                 own_inputs: dict[str, tuple[torch.Tensor, ...]], grad: torch.Tensor, clock: Clock, iters: int,
                 warmup: int, inference: bool) -> dict[str, dict[str, list[float]]]:
    """``warmup`` untimed then ``iters`` timed rounds, each running every active provider once
    (in a rotated order, so no provider always follows the same one); per provider and
    measure (``MEASURES``) the samples. A provider that raises is marked failed."""
    samples = {n: {m: [] for m in MEASURES} for n in active}

    def one_round(names: Sequence[str], record: bool) -> None:
        for name in names:
            st = states[name]
            if st.status == "failed":
                continue
            r, inp = st.runner, own_inputs[name]
            g = grad
            opt = r.step or _nothing  # the optimizer step is part of the backward and of the step
            try:
                if inference:  # the step is the forward: one sample serves as both
                    with torch.inference_mode():
                        t_f = t_fb = clock.measure(lambda: r.fn(*inp))  # noqa: B023
                    if record:
                        samples[name]["fwd"].append(t_f)
                        samples[name]["fwd_bwd"].append(t_fb)
                    continue
                for p in r.params:
                    p.grad = None
                box: list[torch.Tensor] = []
                t_f = clock.measure(lambda: box.append(r.fn(*inp)))  # noqa: B023
                out = box[0]
                if g.dtype != out.dtype:
                    g = g.to(out.dtype)
                t_b = clock.measure(lambda: (out.backward(g), opt()))  # noqa: B023
                box.clear()
                for p in r.params:
                    p.grad = None
                t_fb = clock.measure(lambda: (r.fn(*inp).backward(g), opt()))  # noqa: B023
            except Exception as e:
                log.warning("  %s failed while timing %s: %s", name, case.label, _first_line(e))
                st.status, st.note = "failed", _first_line(e)
                continue
            if record:
                samples[name]["fwd"].append(t_f)
                samples[name]["bwd"].append(t_b)
                samples[name]["fwd_bwd"].append(t_fb)

    for _ in range(warmup):
        one_round(active, record=False)
    gc.collect()
    gc.disable()
    try:
        for i in range(iters):
            k = i % max(1, len(active))
            one_round(active[k:] + active[:k], record=True)
    finally:
        gc.enable()
    return samples


def _peaks_and_launches(states: dict[str, _State], runnable: list[str],
                        own_inputs: dict[str, tuple[torch.Tensor, ...]], grad: torch.Tensor, device: torch.device,
                        memory: PeakMemory, inference: bool) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """Peak memory of one more step each (all gradients freed first), then CUDA launches.
    A failure here is logged and leaves both empty: it must not lose the timings."""
    def step(n: str):
        runner = states[n].runner
        if inference:
            return functools.partial(_infer, runner, own_inputs[n])
        return functools.partial(_step, runner, own_inputs[n], grad, optimize=True)

    def free_grads() -> None:
        for n in runnable:
            for q in states[n].runner.params:
                q.grad = None

    free_grads()
    peaks: dict[str, int | None] = {}
    launches: dict[str, int | None] = {}
    try:
        peaks = memory.measure({n: step(n) for n in runnable})
        for n in runnable:
            launches[n] = count_launches(device, step(n))
    except Exception as e:
        log.warning("  peak memory / launches not measured: %s", _first_line(e))
    free_grads()
    return peaks, launches


def _provider_result(workload: Workload, name: str, st: _State, samples: dict[str, dict[str, list[float]]],
                     compile_s: dict[str, float | None], peaks: dict[str, int | None],
                     launches: dict[str, int | None]) -> ProviderResult:
    """One provider's row of the case: its statistics, and its step's ratios to eager's and
    torch.compile's (the median of the paired per-round ratios)."""
    note = st.case_note
    if st.runner.counts_rewrites and st.rewrites == 0:
        what = "" if workload.pattern == "*" else f"{workload.pattern} "
        note = (note + "; " if note else "") + (f"no {what}rewrite fired: the compiled code is plain Inductor's")
    s = samples[name]
    base = samples.get("eager", {}).get("fwd_bwd", [])
    comp = samples.get("torch.compile", {}).get("fwd_bwd", [])
    return ProviderResult(
        provider=name, status=st.case_status, note=note, compile_s=compile_s.get(name),
        fwd=stat(s["fwd"]) if s["fwd"] else None, bwd=stat(s["bwd"]) if s["bwd"] else None,
        fwd_bwd=stat(s["fwd_bwd"]) if s["fwd_bwd"] else None, peak_mem_bytes=peaks.get(name),
        launches=launches.get(name), rewrites=st.rewrites, max_err=st.err,
        vs_eager=paired_ratio(base, s["fwd_bwd"]) if base else None,
        vs_compile=paired_ratio(comp, s["fwd_bwd"]) if comp else None)


def group_cases(cases: Sequence[Case], static: bool) -> list[list[Case]]:
    """Consecutive-in-spirit groups: cases with one compile key share a model and a compile.

    A workload whose timed step changes the weights (an optimizer step) gets a group, so a
    fresh model, per case: FBGEMM's tables would otherwise drift from the reference's."""
    if static:
        return [[c] for c in cases]
    groups: dict[tuple, list[Case]] = {}
    for i, c in enumerate(cases):
        key = (c.compile_key, i) if WORKLOADS[c.workload].steps_weights else c.compile_key
        groups.setdefault(key, []).append(c)
    return list(groups.values())


@contextlib.contextmanager
def compile_settings(compile_cache: bool) -> Iterator[None]:
    """Inductor's caches off unless asked (a compile time is then a compiler's, not a cache's)."""
    import torch._inductor.config as inductor_config

    with _quiet(), inductor_config.patch(force_disable_caches=not compile_cache):
        yield
