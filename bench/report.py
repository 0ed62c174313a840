"""What a run leaves behind: ``<name>.json``, ``<name>.md`` and ``<name>_<workload>.png``.

The markdown has, per workload, a summary (eager's forward+backward median and every
provider's speedup over eager, plus inductor_embed over torch.compile) and a detail
table (forward, backward and forward+backward medians with p20-p80, GB/s from the
workload's byte count, the share of the copy bandwidth measured in the same run, peak
memory, compile time, the correctness check). The plots show forward+backward speedup
over eager against the batch size (or the table count), one panel per configuration,
like the plots of RTB House's pytorch-fast-embedding. Without matplotlib the plots are
skipped with a log line; ``python -m bench --report <name>.json`` redraws them later.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from bench.config import CaseResult, ProviderResult, RunResult, Stat
from bench.workloads import WORKLOADS

log = logging.getLogger("bench")

BASELINE = "eager"
COMPILE = "torch.compile"
EMBED = "inductor_embed"


# --- numbers ---------------------------------------------------------------------------


def median(r: ProviderResult | None, measure: str = "fwd_bwd") -> float | None:
    if r is None or r.status not in ("ok", "mismatch"):
        return None
    s: Stat | None = getattr(r, measure)
    return s.median_ms if s else None


def speedup(c: CaseResult, provider: str, over: str, measure: str = "fwd_bwd") -> float | None:
    """``over``'s time / ``provider``'s: the median of per-round ratios where the run kept
    them (forward+backward), else the ratio of the medians."""
    r = c.get(provider)
    if r is not None and r.status in ("ok", "mismatch") and measure == "fwd_bwd":
        paired = {BASELINE: r.vs_eager, COMPILE: r.vs_compile}.get(over)
        if paired is not None:
            return paired.median
    a, b = median(c.get(over), measure), median(r, measure)
    return a / b if a and b else None


def gbps(c: CaseResult, r: ProviderResult, measure: str = "fwd_bwd") -> float | None:
    ms = median(r, measure)
    n = {"fwd": c.bytes.fwd, "bwd": c.bytes.bwd, "fwd_bwd": c.bytes.fwd_bwd}[measure]
    return n / (ms * 1e-3) / 1e9 if ms else None


def _x(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}x"


def _ms(s: Stat | None) -> str:
    if s is None:
        return "—"
    return f"{s.median_ms:.3g} [{s.p20_ms:.3g}–{s.p80_ms:.3g}]"


def _by_workload(run: RunResult) -> dict[str, list[CaseResult]]:
    out: dict[str, list[CaseResult]] = {}
    for c in run.cases:
        out.setdefault(c.case.workload, []).append(c)
    return out


def _providers(cases: Sequence[CaseResult]) -> list[str]:
    names: list[str] = []
    for c in cases:
        for r in c.results:
            if r.provider not in names:
                names.append(r.provider)
    return names


def _cell(c: CaseResult, provider: str) -> str:
    r = c.get(provider)
    if r is None:
        return ""
    if r.status == "skipped":
        return "skip"
    if r.status == "failed":
        return "fail"
    s = _x(speedup(c, provider, BASELINE))
    return s + " †" if r.status == "mismatch" else s


def _pair(c: CaseResult, field: str, unit: float = 1.0) -> str:
    """``"inductor_embed / torch.compile"`` of one result field, "—" where either lacks it
    (compile times exist on the first case of a compile group only)."""
    vals = [getattr(c.get(p), field, None) if c.get(p) else None for p in (EMBED, COMPILE)]
    if any(v is None for v in vals):
        return "—"
    return " / ".join(f"{v / unit:.3g}" for v in vals)


# --- the goal: inductor_embed at least as fast as the fastest peer --------------------

FBGEMM = "fbgemm_tbe"
FROZEN = "torch.compile+freezing"  # an inference run's extra peer
PARTITIONED = "torch.compile+partitioned_scatter"  # a GPU run's extra peer
PEERS = (BASELINE, COMPILE, FBGEMM, FROZEN, PARTITIONED)
GOAL = 0.95  # inductor_embed / fastest peer, rows of one table
GOAL_MULTI = 1.2  # rows of several tables, where fusing them is the point (not whole models: there, not losing)
GOAL_MIN_MS = 0.5  # rows where eager's step takes less are too small to hold to it


def fastest_peer(c: CaseResult) -> tuple[float | None, str, str]:
    """(inductor_embed's speedup over the fastest peer, that peer, "" or why unmeasured); (0.0,
    its status, "") where inductor_embed failed or gave wrong results.

    Each ratio is paired where the run paired it (eager, torch.compile); FBGEMM's is
    inductor_embed's paired speedup over eager over FBGEMM's. A peer that has no equivalent
    for the row (skipped for that reason) is no peer; an FBGEMM that did not run at all, or
    does not import here, leaves the row unmeasured, not met."""
    ie = c.get(EMBED)
    if ie is None or ie.status == "skipped":
        return None, "", "inductor_embed did not run"
    if ie.status != "ok":  # failed, or wrong results: a miss, whatever its time
        return 0.0, ie.status, ""
    ratios: dict[str, float] = {}
    for p in PEERS:
        r = c.get(p)
        if r is None:
            if p == FBGEMM:
                return None, "", "FBGEMM not run"
            continue  # (torch.compile+freezing runs in inference presets only)
        if r.status not in ("ok", "mismatch"):
            if p == FBGEMM and "does not import" in (r.note or ""):
                return None, "", "FBGEMM does not import"
            continue
        if p not in (BASELINE, COMPILE):  # through each one's paired speedup over eager
            a, b = speedup(c, EMBED, BASELINE), speedup(c, p, BASELINE)
            v = a / b if a and b else None
        else:
            v = speedup(c, EMBED, p)
        if v is not None:
            ratios[p] = v
    if not ratios:
        return None, "", "no peer timed"
    peer = min(ratios, key=ratios.__getitem__)
    return ratios[peer], peer, ""


def goal_of(c: CaseResult) -> float | None:
    """The ratio the row must reach, or None for a row too small to hold to it."""
    base = median(c.get(BASELINE))
    if base is None or base < GOAL_MIN_MS:
        return None
    return GOAL_MULTI if len(c.case.vocabs) > 1 and c.case.workload != "models" else GOAL


def goal_cell(c: CaseResult) -> str:
    ratio, peer, why = fastest_peer(c)
    goal = goal_of(c)
    if ratio is None:
        return f"unmeasured ({why})"
    if ratio == 0.0:
        return f"{peer}{'' if goal is None else ' ✗'}"
    mark = "" if goal is None else (" ✓" if ratio >= goal else " ✗")
    return f"{ratio:.2f}x {peer}{mark}"


def goal_count(cases: Sequence[CaseResult]) -> str:
    """"met on M of N rows held to the goal (U unmeasured)"."""
    held = [c for c in cases if goal_of(c) is not None]
    ratios = [fastest_peer(c) for c in held]
    met = sum(1 for c, (r, _, _) in zip(held, ratios) if r is not None and r >= goal_of(c))
    unmeasured = sum(1 for r, _, _ in ratios if r is None)
    return f"met on {met} of {len(held)} rows" + (f" ({unmeasured} unmeasured)" if unmeasured else "")


GOAL_TEXT = (f"goal: inductor_embed at least {GOAL}x the fastest of eager, torch.compile, FBGEMM TBE "
             f"(and torch.compile+freezing in inference runs, torch.compile+partitioned_scatter on a GPU) "
             f"({GOAL_MULTI}x on rows of several tables, whole models aside), on rows where eager's step takes at least "
             f"{GOAL_MIN_MS} ms (✓ met, ✗ missed, no mark: a smaller row)")


# --- markdown -------------------------------------------------------------------------


def _step_name(run: RunResult) -> str:
    return "forward (inference)" if run.meta.inference else "forward + backward"


def summary_tables(run: RunResult, heading: str = "###") -> str:
    """Per workload: eager's step median (forward + backward, or the forward of an inference
    run) and each provider's speedup over eager."""
    step = "fwd" if run.meta.inference else "fwd+bwd"
    parts = []
    for name, cases in _by_workload(run).items():
        wl = WORKLOADS[name]
        provs = [p for p in _providers(cases) if p != BASELINE]
        timed = [p for p in provs if any(c.get(p) and c.get(p).timed for c in cases)]
        untimed = [p for p in provs if p not in timed]
        has_ratio = EMBED in timed and COMPILE in timed
        header = ["case", f"eager {step} ms", *(f"{p} vs eager" for p in timed)]
        if has_ratio:
            # the goals of a rewrite on any device: faster, no more memory, no slower compile
            header += ["inductor_embed vs torch.compile", "ie vs fastest peer", "peak MiB ie / tc",
                       "compile s ie / tc"]
        rows = []
        for c in cases:
            row = [c.case.label, f"{median(c.get(BASELINE)):.3g}" if median(c.get(BASELINE)) else "—"]
            row += [_cell(c, p) for p in timed]
            if has_ratio:
                row += [_x(speedup(c, EMBED, COMPILE)), goal_cell(c), _pair(c, "peak_mem_bytes", 2**20),
                        _pair(c, "compile_s")]
            rows.append(row)
        parts.append(f"{heading} {wl.title} ({name}; after {wl.source})\n")
        if has_ratio:
            parts.append(f"Fastest peer: {goal_count(cases)}.\n")
        parts.append(_table(header, rows))
        rss = _rss_table(cases, timed)
        if rss:
            parts.append("\nPeak RSS growth of one training step (own process per provider; in brackets: "
                         "x eager's), MiB:\n")
            parts.append(rss)
        notes = _provider_notes(cases, untimed)
        if notes:
            parts.append("\n" + notes)
        parts.append("")
    return "\n".join(parts)


def _rss_table(cases: Sequence[CaseResult], providers: Sequence[str]) -> str:
    """Per case: each provider's steady step and first step RSS growth, and x eager's."""
    provs = [BASELINE, *providers]
    if not any(r.rss_step_bytes is not None for c in cases for r in c.results):
        return ""

    def cell(c: CaseResult, p: str, field: str) -> str:
        r, e = c.get(p), c.get(BASELINE)
        v = getattr(r, field, None) if r else None
        if v is None:
            return "—"
        base = getattr(e, field, None) if e else None
        rel = f" ({v / base:.3g}x)" if base and p != BASELINE else ""
        return f"{v / 2**20:.1f}{rel}"

    header = ["case", *(f"{p} step" for p in provs), *(f"{p} first" for p in provs)]
    rows = [[c.case.label, *(cell(c, p, "rss_step_bytes") for p in provs),
             *(cell(c, p, "rss_first_bytes") for p in provs)] for c in cases]
    return _table(header, rows)


def _provider_notes(cases: Sequence[CaseResult], providers: Sequence[str] | None = None) -> str:
    """One line per (provider, status, note) that is not a plain "ok"."""
    seen: dict[tuple[str, str, str], int] = {}
    for c in cases:
        for r in c.results:
            if (providers is None or r.provider in providers) and r.note:
                key = (r.provider, r.status, r.note)
                seen[key] = seen.get(key, 0) + 1
    lines = []
    for (p, status, note), n in seen.items():
        where = "" if n == len(cases) else f" ({n} of {len(cases)} cases)"
        lines.append(f"- `{p}` {status}{where}: {note}")
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def meta_lines(run: RunResult) -> str:
    m = run.meta
    dirty = " (uncommitted changes)" if m.git_dirty else ""
    return "\n".join([
        f"- device: **{m.device_name}** ({m.device}, {m.threads} threads)",
        f"- torch {m.torch}, triton {m.triton}, python {m.python}; FBGEMM: {m.fbgemm}",
        f"- git {m.git_sha[:12]}{dirty}, {m.date}; preset `{m.preset}`, wall time {m.wall_s:.0f} s",
        f"- copy bandwidth measured in this run: **{m.copy_gbps:.1f} GB/s** (a {m.copy_mib} MiB "
        "tensor copy, read + write bytes)",
        f"- timing: median and p20–p80 of {m.iters} interleaved iterations after {m.warmup} warm-up; {m.timer}",
        f"- shapes: {m.shapes}; Inductor caches: {m.compile_caches}",
        f"- peak memory: {m.peak_mem_method or 'not measured on this device'}",
        *([f"- RSS: {m.rss_method}"] if m.rss_method else []),
        *(["- step: the forward alone under `torch.inference_mode()`, models in `eval()` (the fwd+bwd "
           "columns of the details hold the forward again, bwd none)"] if m.inference else []),
        *([] if "does not import" not in m.fbgemm else
          ["- **FBGEMM is not installed here: rows it has an equivalent for are counted as unmeasured, "
           "not as met**"]),
    ])


def markdown(run: RunResult) -> str:
    from bench.providers import PROVIDERS

    m = run.meta
    out = [f"# inductor_embed benchmark: `{m.preset}` on {m.device_name}", "", meta_lines(run), ""]
    out += ["Providers:", ""]
    for p in PROVIDERS.values():
        out.append(f"- `{p.name}`: {p.description}")
    out += ["", f"Speedups are {_step_name(run)} times, eager's (or torch.compile's) over the provider's: the "
            "median of per-round ratios (both timed in the same round, back to back), so a load spike on a "
            "shared machine hits both sides of a ratio; † marks a provider "
            "whose output or gradients differ from the reference beyond the dtype's tolerance (the detail "
            "table says by how much). Bytes are counted per workload (formulas below) and are the same for "
            "every provider.", ""]
    out += [f"## Summary ({_step_name(run)})", "", f"Fastest peer, all rows: {goal_count(run.cases)}; "
            f"{GOAL_TEXT}.", "", summary_tables(run), ""]
    out += ["## Details", ""]
    for name, cases in _by_workload(run).items():
        wl = WORKLOADS[name]
        out += [f"### {wl.title} ({name})", "", f"Bytes: {wl.bytes_formula}.", ""]
        header = ["case", "provider", "fwd ms", "bwd ms", "fwd+bwd ms", "GB/s", "% copy BW", "peak MiB",
                  "vs eager", "vs torch.compile", "compile s", "check"]
        rows = []
        for c in cases:
            for r in c.results:
                if not r.timed:
                    continue
                g = gbps(c, r)
                peak = "—" if r.peak_mem_bytes is None else f"{r.peak_mem_bytes / 2**20:.1f}"
                check = "ok" if r.status == "ok" else f"{r.status} (max err {r.max_err:.3g})"
                if r.rewrites is not None:
                    check += f"; {r.rewrites} rewrite(s)"
                if r.launches is not None:
                    check += f"; {r.launches} launches"
                rows.append([
                    c.case.label, r.provider, _ms(r.fwd), _ms(r.bwd), _ms(r.fwd_bwd),
                    "—" if g is None else f"{g:.2f}",
                    "—" if g is None or not m.copy_gbps else f"{100 * g / m.copy_gbps:.1f}%",
                    peak, _x(speedup(c, r.provider, BASELINE)), _x(speedup(c, r.provider, COMPILE)),
                    "—" if r.compile_s is None else f"{r.compile_s:.2f}", check,
                ])
        out += [_table(header, rows), ""]
        notes = _provider_notes(cases)
        if notes:
            out += [notes, ""]
    if run.skipped:
        out += ["## Workloads not run", ""]
        out += [f"- `{w}`: {why}" for w, why in run.skipped]
        out.append("")
    return "\n".join(out)


# --- plots ------------------------------------------------------------------------------

# y ticks of the (log-scale) speedup axes: dense enough that a narrow range shows several
_TICKS_DENSE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1, 1.2, 1.4, 1.7, 2, 2.5, 3, 4, 5, 6, 8, 10)
_TICKS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 0.25, 0.35, 0.5, 0.7, 1, 1.4, 2, 2.8, 4, 5.6, 8, 11, 16, 32, 64, 128)


def plots(run: RunResult, out_dir: Path, name: str) -> list[Path]:
    """One PNG per workload: fwd+bwd speedup over eager vs batch (or tables), a panel per config."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib; then "
                    "python -m bench --report %s)", out_dir / f"{name}.json")
        return []
    paths = []
    styles = {"torch.compile": ("tab:blue", "o"), "torch.compile+combo": ("tab:cyan", "s"),
              "inductor_embed": ("tab:red", "D"), "inductor_embed.op": ("tab:orange", "^"),
              "fbgemm_tbe": ("tab:green", "v")}
    for wname, cases in _by_workload(run).items():
        panels: dict[str, list[CaseResult]] = {}
        for c in cases:
            panels.setdefault(c.case.panel, []).append(c)
        provs = [p for p in _providers(cases) if p != BASELINE and any(speedup(c, p, BASELINE) for c in cases)]
        if not provs:
            continue
        ncols = min(5, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.0, 3.6 * ncols), 2.9 * nrows + 1.0), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (panel, pcases) in zip(axes.flat, panels.items()):
            xs = [c.case.x for c in pcases]
            xlabel = "tables" if pcases[0].case.x_axis == "tables" else "batch"
            ax.axhline(1.0, color="0.5", lw=1, ls="--")
            ax.set_yscale("log", base=2)
            if len(set(xs)) == 1:  # one configuration: bars
                bars = [(p, speedup(pcases[0], p, BASELINE)) for p in provs]
                bars = [(p, y) for p, y in bars if y]
                # bars grow from 1x, up for faster and down for slower
                ax.bar(range(len(bars)), [y - 1 for _, y in bars], bottom=1,
                       color=[styles.get(p, ("0.3", "o"))[0] for p, _ in bars])
                ax.set_xticks(range(len(bars)), [p.replace("torch.compile", "compile") for p, _ in bars],
                              rotation=30, ha="right", fontsize=7)
                ax.set_xlabel(f"{xlabel} = {xs[0]}", fontsize=8)
            else:
                for p in provs:
                    pts = [(c.case.x, speedup(c, p, BASELINE)) for c in pcases]
                    pts = [(x, y) for x, y in pts if y]
                    if pts:
                        color, marker = styles.get(p, ("0.3", "o"))
                        ax.plot(*zip(*pts), marker=marker, color=color, label=p, lw=1.5, ms=4)
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(set(xs)), [str(x) for x in sorted(set(xs))], fontsize=7)
                ax.set_xlabel(xlabel, fontsize=8)
            lo, hi = ax.get_ylim()
            ticks = [t for t in _TICKS_DENSE if lo <= t <= hi]
            if len(ticks) > 7:
                ticks = [t for t in _TICKS if lo <= t <= hi]
            ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}x"))
            ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title(panel, fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_ylabel("speedup vs eager", fontsize=8)
            ax.grid(alpha=0.3)
        handles = [plt.Line2D([], [], color=styles.get(p, ("0.3", "o"))[0], marker=styles.get(p, ("0.3", "o"))[1],
                              label=p) for p in provs]
        wl = WORKLOADS[wname]
        m = run.meta
        fig.suptitle(f"{wl.title}\n{_step_name(run)} speedup over eager (higher is better)\n"
                     f"{m.device_name}, torch {m.torch}, preset {m.preset}", fontsize=9)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(provs), 5), fontsize=8,
                   frameon=False)
        path = out_dir / f"{name}_{wname}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# --- files ------------------------------------------------------------------------------


def write(run: RunResult, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and the plots into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(run.to_dict(), indent=1) + "\n")
    md = out_dir / f"{name}.md"
    md.write_text(markdown(run))
    return [js, md, *plots(run, out_dir, name)]


def load(path: Path) -> RunResult:
    return RunResult.from_dict(json.loads(Path(path).read_text()))
