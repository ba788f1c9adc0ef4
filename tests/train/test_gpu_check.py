"""benchmarks/gpu_check.py end to end on the CPU at tiny sizes (the CI smoke check of the first-GPU command)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu_at_tiny_sizes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
           "--methods", "simclr,mae", "--compile-methods", "simclr", "--compile-precisions", "fp32"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in records if "images_per_s" in r]
    assert {(r["method"], r["precision"], r["compile"]) for r in rows} == {
        ("simclr", "fp32", False), ("simclr", "bf16", False), ("mae", "fp32", False), ("mae", "bf16", False),
        ("simclr", "fp32", True)}
    for r in rows:
        assert r["images_per_s"] > 0 and r["gflops_per_image"] > 0 and 0 < r["mfu_measured"] < 1
        assert r["precision_used"] == r["precision"]
    knn = [r for r in records if r.get("check") == "knn"]
    assert [r["precision_used"] for r in knn] == ["fp32", "bf16"] and all(0 <= r["knn_acc"] <= 1 for r in knn)
    summary = records[-1]
    assert summary["summary"] and summary["errors"] == 0 and summary["skipped"] == 0
    assert summary["knn_gap"] == pytest.approx(abs(knn[0]["knn_acc"] - knn[1]["knn_acc"]))
    assert "| simclr | small_cnn | fp32 | True |" in proc.stdout  # the table
