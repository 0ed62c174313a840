"""README.md must stay true: its tables match the config, its links exist, its code blocks run.

Code block convention (doctest-style, CPU, small):

- A block fenced ```` ```python ```` is run, in a fresh namespace, after
  ``torch._dynamo.reset()``. Its lines keep their README line numbers, so a traceback
  points into README.md.
- A block fenced ```` ```python no-run ```` is only compiled (a syntax check): use it
  for fragments that need a model or data the block does not define.
- A block fenced ```` ```text output ```` is what the nearest ```` ```python ```` block
  above it prints: its stdout and the records of the ``inductor_embed`` logger at INFO
  (what ``TORCH_LOGS="inductor_embed"`` shows), in order. In the expected text, a log
  line's torch prefix (``I1202 07:22:44.183000 6814 .../report.py:117] [0/0] ``) is
  ignored; everything after it must match exactly.
- Other fences (```` ```bash ````, ```` ```text ````) are never run.

Keep the runnable blocks small: all of them together take a few seconds on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import inductor_embed
from inductor_embed import config
from inductor_embed.patterns import PATTERNS

README = Path(__file__).resolve().parent.parent / "README.md"
MAX_LINES = 300  # the README is for users; design notes live in docs/

# torch's log prefix: level letter, date, time, pid, path:line] and an optional [compile id].
_LOG_PREFIX = re.compile(r"^[DIVWEC]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] (\[[^\]]*\] )?")


@dataclass(frozen=True)
class Block:
    info: str  # the fence's info string: "python", "python no-run", "text output", ...
    line: int  # README line number of the block's first line of code (1-based)
    code: str
    output: str | None = None  # the ```text output block that belongs to it


def _blocks(text: str) -> list[Block]:
    """Every fenced block of ``text``, with the ```text output blocks attached to the
    ```python block above them."""
    raw: list[tuple[str, int, str]] = []
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        m = re.match(r"^```(\S.*)?$", lines[k])
        if m is None:
            k += 1
            continue
        info, start = (m.group(1) or "").strip(), k + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"README.md:{k + 1}: code fence is never closed")
        raw.append((info, start + 1, "\n".join(lines[start:end]) + "\n"))
        k = end + 1
    blocks: list[Block] = []
    for info, line, code in raw:
        if info == "text output":
            runnable = [b for b in blocks if b.info == "python"]
            assert runnable, f"README.md:{line}: a ```text output block with no ```python block above it"
            last = runnable[-1]
            assert last.output is None, f"README.md:{line}: a second ```text output block for line {last.line}"
            blocks[blocks.index(last)] = Block(last.info, last.line, last.code, code)
        else:
            blocks.append(Block(info, line, code))
    return blocks


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header row contains ``header``."""
    lines = text.splitlines()
    starts = [k for k, ln in enumerate(lines) if ln.startswith("|") and header in ln]
    assert len(starts) == 1, f"README.md: expected one table with a {header!r} column, found {len(starts)}"
    rows = []
    for ln in lines[starts[0] + 2:]:  # skip the header and its |---| line
        if not ln.startswith("|"):
            break
        rows.append([cell.strip() for cell in ln.strip().strip("|").split("|")])
    return rows


def _code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def config_pattern_switches() -> set[str]:
    """The pattern switches of ``inductor_embed.config``.

    config.py has no list of them: they are its boolean fields (``config.snapshot()``
    holds every field) other than the master switch ``enabled`` and the native-kernel
    switch ``cpu_native_kernels``. That set must also be the pass's own
    registry: each module in
    ``inductor_embed.patterns.PATTERNS`` runs only if ``config.pattern_enabled(NAME)``,
    so its NAME is its switch. A new boolean that is not a pattern fails this check
    until it is added to the exclusions below.
    """
    not_patterns = {"enabled", "cpu_native_kernels"}
    switches = {name for name, value in config.snapshot().items() if isinstance(value, bool)} - not_patterns
    registry = {p.NAME for p in PATTERNS}
    assert switches == registry, (
        f"config's boolean pattern fields {sorted(switches)} differ from the pattern modules' NAMEs "
        f"{sorted(registry)}")
    return switches


TEXT = README.read_text()
BLOCKS = _blocks(TEXT)
RUNNABLE = [b for b in BLOCKS if b.info == "python"]


def test_readme_is_short_and_keeps_the_results_markers():
    assert len(TEXT.splitlines()) <= MAX_LINES, (
        f"README.md has {len(TEXT.splitlines())} lines (at most {MAX_LINES}); move details to docs/")
    begin, end = TEXT.find("<!-- results:begin -->"), TEXT.find("<!-- results:end -->")
    assert TEXT.count("<!-- results:begin -->") == 1 and TEXT.count("<!-- results:end -->") == 1
    assert 0 <= begin < end, "the latest-results section must sit between its two markers"


def test_pattern_table_matches_config_switches():
    rows = _table(TEXT, "config switch")
    readme = set()
    for row in rows:
        name, switch = row[0], _code_spans(row[1])
        assert switch, f"README pattern table: no `config.<switch>` in the row of {name!r}"
        field = switch[0].removeprefix("config.")
        assert name == field, f"README pattern table: pattern {name!r} lists the switch {field!r}"
        readme.add(field)
    assert readme == config_pattern_switches(), (
        f"README's pattern table lists {sorted(readme)}, inductor_embed.config has the pattern switches "
        f"{sorted(config_pattern_switches())}")


def test_config_table_lists_every_field():
    rows = _table(TEXT, "| field |")
    readme = [_code_spans(row[0])[0] for row in rows]
    assert sorted(readme) == sorted(config.snapshot()), (
        f"README's config table lists {readme}, inductor_embed/config.py has {list(config.snapshot())}")
    # The config is what a user sets; internal choices live in inductor_embed/_internal.py.
    # 11: the master switch, one per pattern (7), and three for the CPU's buffers, native
    # kernels and the fewest tables worth fusing.
    assert len(readme) <= 11, f"{len(readme)} config fields: at most 11 (user-facing ones only)"
    if any(k.startswith("INDUCTOR_EMBED_") for k in os.environ):
        return  # the environment overrides some field: snapshot() holds no defaults then
    defaults = {name: _code_spans(row[1])[0] for name, row in zip(readme, rows)}
    want = {k: repr(v) for k, v in config.snapshot().items()}
    assert defaults == want, "a default in README's config table"


def test_relative_links_exist():
    links = re.findall(r"\]\(([^)\s]+)\)", TEXT)
    local = [link.split("#")[0] for link in links if not re.match(r"^[a-z]+:", link) and not link.startswith("#")]
    assert local, "README.md links nothing of the repository"
    missing = [link for link in local if not (README.parent / link).exists()]
    assert not missing, f"README.md links paths that do not exist: {missing}"


def test_no_run_blocks_compile():
    for b in BLOCKS:
        if b.info == "python no-run":
            compile("\n" * (b.line - 1) + b.code, str(README), "exec")


class _Capture(logging.Handler):
    def __init__(self, out: io.StringIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.write(record.getMessage() + "\n")


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """stdout and the inductor_embed logger's INFO records, in the order they come."""
    out = io.StringIO()
    logger = logging.getLogger("inductor_embed")
    handler, level = _Capture(out), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _normalise(text: str, expected: bool) -> list[str]:
    lines = [ln.rstrip() for ln in text.strip("\n").splitlines()]
    return [_LOG_PREFIX.sub("", ln) for ln in lines] if expected else lines


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_readme_code_block_runs(block: Block):
    torch._dynamo.reset()
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    try:
        with _captured() as out:
            exec(code, {"__name__": "__readme__"})
    finally:
        if inductor_embed.is_enabled():  # a block that enables the pass must not leak it
            inductor_embed.disable()
        torch._dynamo.reset()
    if block.output is not None:
        assert _normalise(out.getvalue(), False) == _normalise(block.output, True), (
            f"README.md:{block.line}: the block's output differs from the ```text output block below it")


def test_readme_has_runnable_blocks_and_the_parser_finds_them():
    assert len(RUNNABLE) >= 3 and any(b.output for b in RUNNABLE)
    sample = "x\n```python\nprint(1)\n```\n```text output\n1\n```\n```python no-run\nmodel(x)\n```\n"
    got = _blocks(sample)
    assert [(b.info, b.line, b.output) for b in got] == [("python", 3, "1\n"), ("python no-run", 9, None)]


def test_shown_log_lines_name_no_machine_and_the_logging_line():
    """A log line shown in the README names the file as ``.../inductor_embed/<file>.py`` (no
    absolute path of some machine) and the line of the logging call that prints it."""
    shown = re.findall(r"^[DIVWEC]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (\S+):(\d+)\]", TEXT, re.MULTILINE)
    assert shown, "README.md shows no log line"
    for path, line in shown:
        assert path.startswith(".../inductor_embed/"), f"README.md shows the log path {path!r}"
        source = (README.parent / path.removeprefix(".../")).read_text().splitlines()
        assert "log." in source[int(line) - 1], f"README.md: {path}:{line} is not a logging call"


def test_design_doc_lists_every_registered_op():
    """docs/design.md's "Every registered op" table names each op in the ``inductor_embed``
    namespace once, and the files and tests it names exist."""
    import inductor_embed.lowering  # noqa: F401  (registers the ops)

    design = README.parent / "docs" / "design.md"
    rows = _table(design.read_text(), "| op | file |")
    listed = [_code_spans(r[0])[0] for r in rows]
    registered = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith("inductor_embed::"))
    assert sorted(listed) == registered, "docs/design.md's op table and the registry differ"
    for r in rows:
        files = [README.parent / "lowering" / f for f in _code_spans(r[1])]
        files += [README.parent / f for f in _code_spans(r[4])]
        missing = [str(f) for f in files if not f.exists()]
        assert not missing, f"docs/design.md: {r[0]} names missing files {missing}"
