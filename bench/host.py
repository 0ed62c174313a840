"""Facts about the machine and the checkout a benchmark ran on (no torch import, so the
offline kernel compile, ``bench.kernel_compile``, can use it too)."""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """``"CPU <model name>"`` from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return f"CPU {m.group(1).strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def git_state() -> tuple[str, bool]:
    """``(HEAD's sha, whether tracked files have uncommitted changes)``; ``("unknown", False)``
    outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def arg_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser: its module docstring's first paragraph as the description, the
    rest (usage examples) as the epilog."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n\n".join(doc.split("\n\n")[1:]))
