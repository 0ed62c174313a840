"""Direct op calls run in a child process, so that one that crashes the process (a native
kernel reading past a buffer) fails its test instead of killing pytest.

``run_calls(calls)`` pickles ``(label, op, args)`` triples (``op``: a name in
``torch.ops.inductor_embed``), runs them one after another in a fresh interpreter and returns
``{label: outcome}``: ``"ok"``, ``"<ExceptionType>: <message>"``, or ``"crashed: ..."`` for a
call during which the child died (the rest run in a new child)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

_CHILD = r"""
import json, pickle, sys
import torch
import inductor_embed  # registers the ops
from inductor_embed import config

calls, patches = pickle.load(open(sys.argv[1], "rb"))
with config.patch(**patches):
    for label, op, args in calls:
        print(json.dumps(["start", label]), flush=True)
        try:
            getattr(torch.ops.inductor_embed, op)(*args)
            outcome = "ok"
        except Exception as e:  # the outcome is the report
            outcome = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(["done", label, outcome]), flush=True)
"""


def run_calls(calls: Sequence[tuple[str, str, tuple]], timeout: float = 600,
              **patches: Any) -> dict[str, str]:
    """Run each call in a child process (under ``config.patch(**patches)``); see the module."""
    results: dict[str, str] = {}
    pending = list(calls)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "calls.pkl")
        while pending:
            with open(path, "wb") as f:
                pickle.dump((pending, patches), f)
            run = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True,
                                 timeout=timeout, env={**os.environ, "PYTHONFAULTHANDLER": "0"})
            started = None
            for line in run.stdout.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event[0] == "start":
                    started = event[1]
                else:
                    results[event[1]] = event[2]
                    started = None
            if started is not None:  # the child died inside this call
                results[started] = f"crashed: exit {run.returncode}: {run.stderr[-500:]}"
            elif run.returncode != 0 and len(results) < len(calls):
                raise RuntimeError(f"the child process failed outside a call: {run.stderr[-2000:]}")
            pending = [c for c in pending if c[0] not in results]
    return results
