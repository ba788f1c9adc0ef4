"""DDP failures end every rank promptly with the cause: a 2-process gloo run where only rank 1 raises."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_failure_on_rank_1_ends_rank_0_with_the_cause(tmp_path):
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.pop("CI", None)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "ddp_fail.py"), str(tmp_path)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    # gloo's own timeout is 30 minutes: a rank left waiting for its peer would hit this limit and fail the test
    outs = [p.communicate(timeout=240) for p in procs]
    err0, err1 = outs[0][1], outs[1][1]
    assert procs[1].returncode == 3 and "ENDED RuntimeError: boom: rank 1 broke at step 2" in err1, err1[-2000:]
    assert procs[0].returncode != 0, err0[-2000:]
    assert "rank 1: RuntimeError: boom: rank 1 broke at step 2" in err0, err0[-2000:]  # the cause, on rank 0
    status = json.loads((tmp_path / "runs" / "fail" / "status.json").read_text())
    assert status["status"] == "failed" and "rank 1: RuntimeError: boom" in status["error"]
