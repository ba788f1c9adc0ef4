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


# ------------------------------------------------------------------ bad data, files and checkpoints: rc 2
def _write_idx(path: Path, array, magic: bytes | None = None, cut: int | None = None) -> None:
    import gzip

    import numpy as np

    header = (magic or bytes([0, 0, 8, array.ndim])) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw if cut is None else raw[:cut])


def _fmnist(root: Path, magic: bytes | None = None, cut: int | None = None) -> Path:
    import numpy as np

    from workbench.data import fashion_mnist as fm

    root.mkdir(parents=True)
    for split in ("train", "test"):
        _write_idx(root / fm.FILES[split][0], np.zeros((64, 28, 28), np.uint8), magic if split == "train" else None,
                   cut if split == "train" else None)
        _write_idx(root / fm.FILES[split][1], np.zeros(64, np.uint8))
    return root


def _image_folder(root: Path, broken: bool) -> Path:
    from PIL import Image

    (root / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "a" / "good.png")
    if broken:
        (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.mark.parametrize("case, args, pattern", [
    ("unknown data", ["--data", "nosuch"], "unknown data set 'nosuch'"),
    ("corrupt folder", ["--data", "folder", "data.root={tmp}/img"], "could not be read: {tmp}/img/a/broken.png"),
    ("empty folder", ["--data", "folder", "data.root={tmp}/empty"], "no image files under {tmp}/empty"),
    ("truncated idx", ["--data", "fashion-mnist", "data.root={tmp}/cut"], "is truncated or corrupt"),
    ("wrong magic", ["--data", "fashion-mnist", "data.root={tmp}/magic"], "not an unsigned-byte IDX file"),
    ("batch > data", ["--batch-size", "64", "data.options.n=32"], "larger than the training set (32 images"),
    ("vit patch", ["--method", "mae", "--backbone", "vit_tiny", "model.options.patch_size=5", "data.options.n=64",
                   "--batch-size", "32"], "patch_size=5 does not divide image_size=32"),
    ("bad json", ["--config", "{tmp}/bad.json"], "--config {tmp}/bad.json is not valid JSON"),
])
def test_bad_data_and_files_exit_2_with_one_line_and_no_run_folder(case, args, pattern, tmp_path):
    from workbench.cli import main

    import io
    from contextlib import redirect_stderr, redirect_stdout

    _image_folder(tmp_path / "img", broken=True)
    (tmp_path / "empty").mkdir()
    _fmnist(tmp_path / "cut", cut=600)
    _fmnist(tmp_path / "magic", magic=b"\x00\x00\x09\x03")
    (tmp_path / "bad.json").write_text('{"method": "simclr",')
    out = tmp_path / "runs"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["pretrain", *args, "--out", str(out), "train.device=cpu", "train.knn_every=0"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2, err.getvalue()
    assert pattern.replace("{tmp}", str(tmp_path)) in lines[0] and lines[0].startswith("error: ")
    assert len(lines) <= 2 and all(ln.startswith("hint: ") for ln in lines[1:]), lines
    assert "Traceback" not in err.getvalue()
    assert not out.exists() or not any(out.iterdir())  # no half-made run folder


def test_a_refused_pickle_payload_is_named_and_never_run(tmp_path, blobs_data):
    import os

    import torch

    from workbench.runs import CheckpointError
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
    from workbench.trained import load_trained

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = pretrain(PretrainConfig(method="simclr", data=DataConfig(name=blobs_data, options={"n": 64}),
                                  model=ModelConfig(options={"width": 8}), out=str(tmp_path),
                                  train=TrainConfig(epochs=1, batch_size=32, knn_every=0, max_steps=1,
                                                    progress="off", device="cpu")))
    torch.save({"format": "workbench-pretrain-1", "method": Payload()}, run.checkpoint_path("last"))
    with pytest.raises(CheckpointError) as e:
        load_trained(run)
    message = str(e.value)
    assert f"{run.checkpoint_path('last')} is not a plain-weights checkpoint" in message
    assert "weights_only" not in message and "False" not in message
    assert not marker.exists()


def test_overrides_stand_anywhere_among_the_flags():
    from workbench.cli import build_config, build_parser, parse_args

    args = parse_args(build_parser(), ["pretrain", "data.options.n=128", "--epochs", "1", "train.knn_every=0",
                                       "--method", "byol", "train.lr=0.3"])
    cfg = build_config(args)
    assert cfg.data.options == {"n": 128} and cfg.train.epochs == 1 and cfg.train.knn_every == 0
    assert cfg.method == "byol" and cfg.train.lr == 0.3
    ev = parse_args(build_parser(), ["evaluate", "RUN", "--metrics", "knn", "size=32"])
    assert ev.options == ["size=32"] and ev.metrics == "knn"


def test_unknown_flags_are_still_refused(capsys):
    from workbench.cli import main

    assert main(["pretrain", "--epochs", "1", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
