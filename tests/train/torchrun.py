"""Launch a test script over 2 CPU processes with torchrun (gloo), as the DDP tests do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root


def torchrun_two(script: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``script OUT`` on 2 processes; (the finished process, OUT). A launch that gloo aborted by a signal (an
    overloaded host) is retried once, into a fresh folder, so the script never meets its own half-written output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CI", None)

    def launch(out: Path) -> subprocess.CompletedProcess:
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(out)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    out = tmp_path / "first"
    proc = launch(out)
    if proc.returncode != 0 and "Signal" in proc.stderr:
        print("first torchrun attempt was killed by a signal; retrying in a fresh folder:\n" + proc.stderr[-2000:])
        out = tmp_path / "second"
        proc = launch(out)
    return proc, out
