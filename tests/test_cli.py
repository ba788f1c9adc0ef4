"""`workbench pretrain` as a subprocess writes a complete run folder; bad input exits 2 with a named error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def workbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "CI": "1"})


@pytest.mark.slow
def test_pretrain_via_cli_writes_a_run_folder_and_resumes(tmp_path):
    p = workbench("pretrain", "--method", "simclr", "--data", "shapes", "--backbone", "small_cnn", "--epochs", "2",
                  "--batch-size", "32", "--out", str(tmp_path / "runs"), "--name", "cli", "data.image_size=16",
                  "data.options.n=64", "model.options.width=8", "method_options.proj_hidden_dim=32",
                  "train.lr=0.2", "train.max_steps=3", "train.knn_max_train=64", "train.log_every=1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "runs" / "cli"
    assert f"run folder: {run}" in p.stdout
    for f in ("config.json", "env.json", "metrics.jsonl", "status.json", "summary.json", "checkpoints/last.pt"):
        assert (run / f).exists(), f
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "simclr" and config["train"]["lr"] == 0.2 and config["data"]["options"] == {"n": 64}
    assert config["method_options"] == {"proj_hidden_dim": 32} and len(config["data"]["mean"]) == 3
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["step"] == 3
    p = workbench("pretrain", "--resume", str(run), "train.max_steps=4", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["step"] == 4


@pytest.mark.parametrize("args, pattern", [
    (["pretrain", "--method", "simclrr"], "unknown method 'simclrr'; known methods"),
    (["pretrain", "--backbone", "resnet7"], "backbone='resnet7' is not allowed"),
    (["pretrain", "train.lrr=0.1"], "unknown field 'lrr'"),
    (["pretrain", "train.lr"], "must look like key=value"),
    (["pretrain", "--epochs", "many"], "invalid int value: 'many'"),
    (["pretrain", "--method", "mae"], "needs a ViT backbone"),
    (["pretrain", "--resume", "/nonexistent/run"], "no config.json"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_cli_input_exits_2_without_traceback(args, pattern, tmp_path):
    from workbench.cli import main

    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(args + ["--out", str(tmp_path)] if args[0] == "pretrain" and "--resume" not in args else args)
    assert code == 2
    assert pattern in err.getvalue() and "Traceback" not in err.getvalue()
    assert not any(tmp_path.iterdir())  # nothing was created
