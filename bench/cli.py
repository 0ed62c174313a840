"""``python -m bench``: run a preset, write json + markdown + plots, print the summary.

    python -m bench --preset cpu-quick          # a few minutes on 2 CPU cores
    python -m bench --preset gpu                # the full sweep on one GPU
    python -m bench --preset gpu --workloads single_table      # one part of it
    python -m bench --preset smoke --out /tmp/b # the CI smoke: seconds
    python -m bench --list                      # presets, workloads, providers
    python -m bench --report bench/results/cpu/cpu-quick.json  # redraw md + png from a json

Results go to ``bench/results/<device>/<name>.{json,md}`` and ``<name>_<workload>.png``,
``<device>`` being ``cpu`` or the GPU's name (``nvidia-h100-80gb-hbm3``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import host, report, rss
from bench.config import CaseResult, Preset, RunMeta, RunResult
from bench.presets import PRESETS
from bench.providers import PROVIDERS, fbgemm_status
from bench.runner import (
    Clock,
    PeakMemory,
    compile_settings,
    group_cases,
    measure_copy_bandwidth,
    run_group,
)
from bench.workloads import WORKLOADS

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else host.cpu_model()


def results_dir_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


git_state = host.git_state


def warm_up_compiler(device: torch.device) -> float:
    """Compile one tiny lookup + backward, so the first provider's compile time is not
    charged with Inductor's one-time start-up (imports, C++/Triton toolchain probes)."""
    t0 = time.perf_counter()
    torch._dynamo.reset()
    w = torch.randn(4, 2, device=device, requires_grad=True)
    torch.compile(lambda w, i: torch.nn.functional.embedding(i, w).sum())(w, torch.tensor([1], device=device)).backward()
    torch._dynamo.reset()
    return time.perf_counter() - t0


def run(preset: Preset, device: torch.device, workloads: Sequence[str] | None = None,
        providers: Sequence[str] | None = None, static: bool = False, compile_cache: bool = False,
        iters: int | None = None, warmup: int | None = None, match: Sequence[str] | None = None) -> RunResult:
    """Run a preset (optionally a subset of its workloads / providers, and of its cases: those
    whose label contains one of ``match``) and return the results."""
    import triton

    t_start = time.perf_counter()
    iters = preset.iters if iters is None else iters
    warmup = preset.warmup if warmup is None else warmup
    # Inference-only providers (freezing) join a preset that names none only where it infers.
    names = list(providers or preset.providers
                 or [n for n, p in PROVIDERS.items() if preset.inference or not p.inference_only])
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise SystemExit(f"unknown provider(s) {unknown}; known: {list(PROVIDERS)}")
    if not preset.inference and any(PROVIDERS[n].inference_only for n in names):
        raise SystemExit(f"{[n for n in names if PROVIDERS[n].inference_only]} run in inference presets only "
                         f"(Inductor's freezing needs autograd off); {preset.name} times training steps")
    chosen = [PROVIDERS[n] for n in names]
    cases = [c for c in preset.cases if (workloads is None or c.workload in workloads)
             and (not match or any(m in c.label for m in match))]
    if not cases:
        raise SystemExit(f"preset {preset.name} has no case for workloads {workloads} matching {match}")

    log.info("torch %s, triton %s, %s (%s); preset %s: %d cases, providers %s", torch.__version__,
             triton.__version__, device, device_name(device), preset.name, len(cases), ", ".join(names))
    clock, memory = Clock(device), PeakMemory(device)
    copy_gbps = [measure_copy_bandwidth(device, preset.copy_mib)]
    log.info("copy bandwidth: %.1f GB/s (%d MiB copy)", copy_gbps[0], preset.copy_mib)

    results: list[CaseResult] = []
    skipped: list[tuple[str, str]] = []
    with compile_settings(compile_cache):
        if preset.warm_up:
            log.info("compiler warm-up: %.1f s (Inductor's one-time start-up, kept out of every compile time)",
                     warm_up_compiler(device))
        for group in group_cases(cases, static):
            wl = WORKLOADS[group[0].workload]
            reason = wl.unavailable()
            if reason:
                if all(w != wl.name for w, _ in skipped):
                    log.info("%s: skipped: %s", wl.name, reason)
                    skipped.append((wl.name, reason))
                continue
            t0 = time.perf_counter()
            log.info("%s: %s (%d case%s)", wl.name, group[0].panel, len(group), "s" * (len(group) > 1))
            got = run_group(wl, group, chosen, device, iters, warmup, not static, clock, memory,
                            inference=preset.inference)
            if preset.rss and device.type == "cpu":
                got = [_with_rss(c) for c in got]
            for c in got:
                eager = c.get("eager")
                log.info("  %-46s %s", c.case.label, "  ".join(
                    f"{r.provider}={r.fwd_bwd.median_ms:.3g}ms" if r.timed else f"{r.provider}:{r.status}"
                    for r in c.results if r.status != "skipped" or r is eager))
            log.info("  (%.1f s)", time.perf_counter() - t0)
            results.extend(got)
    # Bandwidth again at the end: on a shared machine it drifts; the report uses the mean.
    copy_gbps.append(measure_copy_bandwidth(device, preset.copy_mib))
    version, why = fbgemm_status()
    sha, dirty = git_state()
    meta = RunMeta(
        preset=preset.name, device=device.type, device_name=device_name(device),
        results_dir=results_dir_name(device), torch=torch.__version__, triton=triton.__version__,
        python=platform.python_version(), fbgemm=version or why, git_sha=sha, git_dirty=dirty,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        threads=torch.get_num_threads(), copy_gbps=sum(copy_gbps) / len(copy_gbps), copy_mib=preset.copy_mib,
        timer=clock.description,
        shapes="static: one compile per case" if static else
               "batch dimension marked dynamic: one compile per table configuration",
        compile_caches=("on" if compile_cache else "off (force_disable_caches): compile times are cold")
        + ("" if preset.warm_up else "; no compiler warm-up, so the first compile carries Inductor's start-up"),
        peak_mem_method=memory.method, rss_method=rss.METHOD if preset.rss and device.type == "cpu" else "",
        iters=iters, warmup=warmup, wall_s=time.perf_counter() - t_start, inference=preset.inference)
    return RunResult(meta=meta, cases=tuple(results), skipped=tuple(skipped))


def _with_rss(c: CaseResult) -> CaseResult:
    """Each timed provider's peak RSS growth of a training step, in a fresh process each."""
    out = []
    for r in c.results:
        if r.timed:
            got = rss.measure(c.case, r.provider)
            if got.note:
                log.warning("  %s: RSS not measured: %s", r.provider, got.note)
            log.info("  %s: RSS growth: step %s, first step %s", r.provider, _mib(got.step_bytes),
                     _mib(got.first_bytes))
            r = dataclasses.replace(r, rss_step_bytes=got.step_bytes, rss_first_bytes=got.first_bytes)
        out.append(r)
    return dataclasses.replace(c, results=tuple(out))


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def _list() -> str:
    lines = ["presets:"]
    for p in PRESETS.values():
        lines.append(f"  {p.name:<10} {len(p.cases):>4} cases, {p.iters} iters: {p.description}")
    lines.append("workloads:")
    for w in WORKLOADS.values():
        why = w.unavailable()
        lines.append(f"  {w.name:<19} {w.title} (after {w.source})" + (f"  [not run: {why}]" if why else ""))
    lines.append("providers:")
    for p in PROVIDERS.values():
        lines.append(f"  {p.name:<19} {p.description}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = host.arg_parser("python -m bench", __doc__)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu with CUDA, else cpu-quick")
    ap.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--providers", help=f"comma-separated subset of {','.join(PROVIDERS)}")
    ap.add_argument("--match", help="comma-separated; only the cases whose label contains one (e.g. fm_,scaled)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default bench/results)")
    ap.add_argument("--name", help="file name stem (default: the preset, plus the workloads if filtered)")
    ap.add_argument("--iters", type=int, help="timed iterations (default: the preset's)")
    ap.add_argument("--warmup", type=int, help="warm-up iterations (default: the preset's)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, the core count)")
    ap.add_argument("--static", action="store_true", help="compile per case with static shapes")
    ap.add_argument("--compile-cache", action="store_true", help="leave Inductor's caches on")
    ap.add_argument("--report", type=Path, metavar="JSON", help="only redraw markdown + plots from a json")
    ap.add_argument("--list", action="store_true", help="list presets, workloads and providers")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not log.handlers:  # our own handler: fbgemm_gpu's import configures the root logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bench: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.list:
        print(_list())
        return 0
    if args.report:
        res = report.load(args.report)
        paths = report.write(res, args.report.parent, args.report.stem)
        print("\n".join(str(p) for p in paths))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu-quick")]
    workloads = args.workloads.split(",") if args.workloads else None
    if workloads:
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown:
            raise SystemExit(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    providers = args.providers.split(",") if args.providers else None
    res = run(preset, device, workloads, providers, static=args.static, compile_cache=args.compile_cache,
              iters=args.iters, warmup=args.warmup, match=args.match.split(",") if args.match else None)
    name = args.name or preset.name + ("-" + "-".join(workloads) if workloads else "")
    out_dir = args.out / res.meta.results_dir
    paths = report.write(res, out_dir, name)
    print(f"# {preset.name} on {res.meta.device_name}\n")
    print(report.meta_lines(res) + "\n")
    print(report.summary_tables(res))
    print("\n".join(f"wrote {p}" for p in paths))
    failed = [(c.case.label, r.provider) for c in res.cases for r in c.results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} provider run(s) failed: {failed[:5]}", file=sys.stderr)
    return 1 if failed else 0
