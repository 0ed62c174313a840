"""scripts/gpu_check.sh on a CPU machine: a failed install stops the run at once.

A GPU run is rare and minutes long, so the script must not go on to test or benchmark
whatever other copy of the package happens to import. The check copies the script into
an empty "checkout" (so the package does not import from there) and gives it a Python
whose ``-m pip`` fails the way an old setuptools without ``wheel`` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_failed_install_stops_gpu_check(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu_check.sh", checkout / "scripts" / "gpu_check.sh")
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$1" == "-m" && "$2" == "pip" ]]; then\n'
        "  echo \"error: invalid command 'bdist_wheel'\" >&2; exit 1\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PYTHON=str(stub), BUDGET_S="300", PATH=f"{tmp_path}:{env['PATH']}")
    proc = subprocess.run(["bash", str(checkout / "scripts" / "gpu_check.sh")], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "could not be installed (pip exit code 1)" in out, out
    # Nothing after the install ran: no test step, no benchmark, no digest.
    for later in ("=== tests", "=== bench", "=== digest", "gpu_check summary"):
        assert later not in out, out
