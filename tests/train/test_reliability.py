"""A run is never lost, never mislabelled, never silently wrong (README, "What happens when things go wrong").

Kill tests start `workbench pretrain` as a real subprocess and send it real signals (SIGTERM, SIGINT, SIGKILL); the
rest run tiny in-process runs (128 16-px images, a width-8 small CNN: about a second each).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from workbench.cli import main as cli_main
from workbench.runs import CheckpointError, Run, RunLockedError, atomic_torch_save, atomic_write_json
from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
from workbench.train.engine import TrainingInterrupted
from workbench.trained import load_trained

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ helpers
def tiny(data: str, out, method: str = "byol", width: int = 8, n: int = 128, **train) -> PretrainConfig:
    """A one-second run: 128 16-px images, batch 32 (4 steps an epoch), width-8 small CNN."""
    t = dict(epochs=2, batch_size=32, log_every=1, knn_every=0, progress="off", device="cpu")
    t.update(train)
    opts = {"proj_hidden_dim": 64, "proj_output_dim": 32} if method in ("byol", "simclr") else {}
    if method == "byol":
        opts["pred_hidden_dim"] = 64
    return PretrainConfig(method=method, method_options=opts, data=DataConfig(name=data, options={"n": n}),
                          model=ModelConfig(backbone="small_cnn", options={"width": width}), train=TrainConfig(**t),
                          out=str(out))


# `workbench pretrain` of SimCLR on 128 16-px shapes, width-8 CNN, batch 32; overrides stand among the flags
CLI_RUN = ["pretrain", "--method", "simclr", "--data", "shapes", "data.image_size=16", "--backbone", "small_cnn",
           "data.options.n=128", "--batch-size", "32", "model.options.width=8", "method_options.proj_hidden_dim=32",
           "method_options.proj_output_dim=16", "train.knn_every=0", "train.log_every=1", "train.device=cpu"]


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "OMP_NUM_THREADS": "1"}


def step_records(run_dir: Path) -> list[int]:
    return [r["step"] for r in Run(run_dir).metrics() if r.get("kind") == "step"]


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
        if (run_dir / "metrics.jsonl").exists() and len(step_records(run_dir)) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {n} step records in {timeout} s")


def folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (names included), to show a folder was left exactly as it was."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cli_in_process(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------- 1, 4, 5: one writer; SIGTERM; resume
@pytest.mark.slow
def test_a_live_run_has_one_writer_and_sigterm_checkpoints_marks_interrupted_and_resumes(tmp_path):
    out = tmp_path / "runs"
    proc = start_cli(*CLI_RUN, "--epochs", "1000", "--out", str(out), "--name", "live", cwd=tmp_path)
    run_dir = out / "live"
    try:
        wait_for_steps(proc, run_dir, 3)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "running" and status["pid"] == proc.pid
        assert status["host"] == socket.gethostname() and status["heartbeat"]
        assert Run(run_dir).status["status"] == "running"  # the lock is held: a live writer
        # (1) a second writer is refused, naming the holder; the folder keeps one writer
        second = run_cli("pretrain", "--resume", str(run_dir), "train.max_steps=2", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"pid {proc.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) <= 2
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            Run(run_dir).update_summary({"knn_acc": 0.9})  # evaluate/notebooks never write under a live trainer
        # (5) SIGTERM: the step finishes, a checkpoint is written, the run is marked interrupted, rc 128 + 15
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    status = Run(run_dir).status
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    stopped_at = status["step"]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped_at
    steps = step_records(run_dir)
    assert steps == list(range(1, stopped_at + 1))  # no duplicated or interleaved records
    # --resume continues it to the end
    done = run_cli("pretrain", "--resume", str(run_dir), f"train.max_steps={stopped_at + 2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    status = Run(run_dir).status
    assert status["status"] == "completed" and status["step"] == stopped_at + 2
    assert status["resumed_from_step"] == stopped_at
    assert step_records(run_dir) == list(range(1, stopped_at + 3))


@pytest.mark.slow
def test_sigint_stops_a_cli_run_the_same_way_with_exit_code_130(tmp_path):
    out = tmp_path / "runs"
    proc = start_cli(*CLI_RUN, "--epochs", "1000", "--out", str(out), "--name", "int", cwd=tmp_path)
    try:
        wait_for_steps(proc, out / "int", 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    status = Run(out / "int").status
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT"
    assert torch.load(out / "int" / "checkpoints" / "last.pt", weights_only=True)["step"] == status["step"]


# ---------------------------------------------------------- 4, 11: kill -9; interrupted; restart; orphans
@pytest.mark.slow
def test_a_killed_run_reads_interrupted_and_resume_restarts_it_without_a_checkpoint(tmp_path):
    from workbench.experiments.table import runs_table

    out = tmp_path / "runs"
    proc = start_cli(*CLI_RUN, "--epochs", "1000", "train.checkpoint_every=1000", "--out", str(out),
                     "--name", "killed", cwd=tmp_path)
    run_dir = out / "killed"
    try:
        wait_for_steps(proc, run_dir, 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run = Run(run_dir)
    assert run.recorded_status["status"] == "running"  # the file still says so ...
    status = run.status                                # ... but its writer is gone
    assert status["status"] == "interrupted" and status["recorded_status"] == "running"
    assert status["pid"] == proc.pid and isinstance(status["step"], int)
    assert not run.checkpoints()  # killed before its first checkpoint
    row = runs_table(out).iloc[0]
    assert (row.status, row.step) == ("interrupted", status["step"])
    code, shown, _ = cli_in_process("runs", "--dir", str(out))
    assert code == 0 and "interrupted" in shown
    # (11) temporary files a killed write leaves behind
    orphans = [run_dir / "checkpoints" / ".last.pt.0a1b2c3d.tmp", run_dir / ".status.json.0a1b2c3d.tmp"]
    for p in orphans:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a file")
    done = run_cli("pretrain", "--resume", str(run_dir), "train.max_steps=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    status = Run(run_dir).status
    assert status["status"] == "completed" and status["step"] == 3 and status["resumed_from_step"] == 0
    assert "restarted" in status
    assert step_records(run_dir) == [1, 2, 3]  # the killed attempt's records are gone, none duplicated
    assert not any(p.exists() for p in orphans)


def _image_folder(root: Path, n: int = 20) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.mark.slow
def test_forked_data_workers_do_not_keep_a_killed_writers_lock(tmp_path):
    """DataLoader workers are forked with the lock's descriptor; they drop it, so the lock ends with the writer."""
    images = _image_folder(tmp_path / "img")
    out = tmp_path / "runs"
    proc = start_cli("pretrain", "--method", "simclr", "--data", "folder", f"data.root={images}",
                     "data.options.stream=true", "data.options.workers=2", "data.image_size=16", "--batch-size", "16",
                     "model.options.width=8", "train.knn_every=0", "--epochs", "1000", "train.log_every=1",
                     "--out", str(out), "--name", "streamed", "train.device=cpu", cwd=tmp_path)
    try:
        wait_for_steps(proc, out / "streamed", 3)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()]
    status = Run(out / "streamed").status
    assert status["status"] == "interrupted", (status, alive)  # even while the workers are still exiting
    assert workers  # the run did fork its data workers


# ------------------------------------------------------------------------- 5: the handler, in process
def test_sigterm_in_process_checkpoints_marks_interrupted_and_restores_the_handlers(blobs_data, tmp_path):
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))

    class Preempt:
        def on_step(self, run, record):
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as e:
        pretrain(tiny(blobs_data, tmp_path, epochs=50), callbacks=[Preempt()])
    assert e.value.exit_code == 143 and e.value.step == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    run = e.value.run
    assert run.status["status"] == "interrupted" and run.status["step"] == 2 and run.status["signal"] == "SIGTERM"
    assert run.load_checkpoint()["step"] == 2
    resumed = pretrain(apply_max_steps(run, 4), resume=run.path)
    assert resumed.status["status"] == "completed" and resumed.status["step"] == 4


def apply_max_steps(run: Run, max_steps: int) -> PretrainConfig:
    from workbench.config import apply_overrides, from_dict

    return apply_overrides(from_dict(PretrainConfig, run.config), {"train.max_steps": max_steps})


def test_step_checkpoints_and_keeping_the_newest_k(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path / "k", epochs=3, checkpoint_steps=3, keep_checkpoints=2))
    names = sorted(p.name for p in run.checkpoints())
    assert names == ["epoch-0003.pt", "last.pt", "step-00000009.pt"]  # written at 3, 4, 6, 8, 9, 12; newest 2 kept
    assert torch.load(run.checkpoint_path("step-00000009"), weights_only=True)["step"] == 9
    assert torch.load(run.checkpoint_path("epoch-0003"), weights_only=True)["step"] == 12
    assert run.checkpoint_path("last").samefile(run.checkpoint_path("epoch-0003"))
    assert load_trained(run, "step-00000009").step == 9
    plain = pretrain(tiny(blobs_data, tmp_path / "plain", epochs=1))
    assert [p.name for p in plain.checkpoints()] == ["last.pt"]  # keep_checkpoints=0: last.pt only


# ---------------------------------------------------------------- 2: a checkpoint carries what it is
def test_a_checkpoint_from_another_run_is_refused_by_every_loader(blobs_data, tmp_path):
    a = pretrain(tiny(blobs_data, tmp_path / "a", max_steps=2))
    ident = a.load_checkpoint()["identity"]
    assert ident["method"] == "byol" and ident["backbone"] == "small_cnn" and ident["backbone_options"] == {"width": 8}
    assert ident["data"] == {"name": blobs_data, "options": {"n": 128}} and ident["image_size"] == 16
    assert ident["run_id"] == a.run_id and len(ident["config_hash"]) == 16
    wider = pretrain(tiny(blobs_data, tmp_path / "b", width=16, max_steps=2))
    twin = pretrain(tiny(blobs_data, tmp_path / "c", max_steps=2))  # the same config, another run
    a.update_summary({"knn_acc": 0.5})
    own = a.checkpoint_path("last").read_bytes()

    shutil.copyfile(wider.checkpoint_path("last"), a.checkpoint_path("last"))
    before = folder_digest(a.path)
    with pytest.raises(CheckpointError, match=r"backbone_options \{'width': 16\} in the checkpoint vs "
                                              r"\{'width': 8\} in config.json"):
        load_trained(a)
    code, _, err = cli_in_process("evaluate", str(a.path), "--metrics", "knn", "--no-baselines")
    assert code == 2 and "does not belong to run" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="does not belong to run"):
        pretrain(None, resume=a.path)
    assert folder_digest(a.path) == before and a.summary["knn_acc"] == 0.5  # nothing written under a's name

    shutil.copyfile(twin.checkpoint_path("last"), a.checkpoint_path("last"))
    with pytest.raises(CheckpointError, match=f"run id {twin.run_id} in the checkpoint vs {a.run_id}"):
        load_trained(a)

    # a checkpoint written before identities existed: checked through the config it carries
    legacy = torch.load(wider.checkpoint_path("last"), weights_only=True)
    del legacy["identity"]
    atomic_torch_save(legacy, a.checkpoint_path("last"))
    with pytest.raises(CheckpointError, match="backbone_options"):
        load_trained(a)
    a.checkpoint_path("last").write_bytes(own)
    mine = torch.load(a.checkpoint_path("last"), weights_only=True)
    del mine["identity"]
    atomic_torch_save(mine, a.checkpoint_path("last"))
    with pytest.warns(UserWarning, match="before checkpoints carried an identity"):
        assert load_trained(a).step == 2


# ------------------------------------------------------------------ 3: a failed resume changes nothing
def test_a_resume_that_cannot_start_leaves_the_run_folder_byte_for_byte(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path, max_steps=3))
    ckpt = run.checkpoint_path("last")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    (run.checkpoints_dir / ".last.pt.deadbeef.tmp").write_bytes(b"x")
    before = folder_digest(run.path)
    code, _, err = cli_in_process("pretrain", "--resume", str(run.path), "train.max_steps=4")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert f"checkpoint {ckpt} is truncated or corrupt" in lines[0]
    assert folder_digest(run.path) == before
    assert run.status["status"] == "completed" and run.status["step"] == 3
    code, _, err = cli_in_process("evaluate", str(run.path), "--metrics", "knn", "--no-baselines")
    assert code == 2 and f"checkpoint {ckpt} is truncated or corrupt" in err and "Traceback" not in err
    assert folder_digest(run.path) == before
    # a live writer: refused before anything is read or written
    ckpt.unlink()
    with run.acquire_writer():  # this test is the live writer
        before = folder_digest(run.path)
        code, _, err = cli_in_process("pretrain", "--resume", str(run.path))
        assert folder_digest(run.path) == before
    assert code == 2 and f"pid {os.getpid()}" in err


# ------------------------------------------------------------------------------ 10: skipped files
def test_skipped_corrupt_files_are_recorded_in_the_status_and_counted(tmp_path):
    _image_folder(tmp_path / "img")
    broken = tmp_path / "img" / "b" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code, out, err = cli_in_process("pretrain", "--method", "simclr", "--data", "folder",
                                    f"data.root={tmp_path / 'img'}", "data.options.skip_corrupt=true",
                                    "data.image_size=16", "--batch-size", "16", "model.options.width=8",
                                    "train.knn_every=0", "train.max_steps=1", "--out", str(tmp_path / "runs"),
                                    "--name", "skip", "train.device=cpu")
    assert code == 0, err
    status = Run(tmp_path / "runs" / "skip").status
    assert status["skipped_count"] == 1 and status["skipped_files"]["train"][0][0] == str(broken)
    assert status["skipped_files"]["train"][0][1]  # the reason
    assert "skipped:    1 unreadable image file(s)" in out
    # streamed with given statistics (no sample read up front), the broken file is found when the epoch decodes
    # it, and recorded all the same
    code, out, err = cli_in_process("pretrain", "--method", "simclr", "--data", "folder",
                                    f"data.root={tmp_path / 'img'}", "data.options.skip_corrupt=true",
                                    "data.options.stream=true", "data.options.workers=0", "data.image_size=16",
                                    "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]",
                                    "--batch-size", "16", "model.options.width=8", "train.knn_every=0",
                                    "--epochs", "1", "--out", str(tmp_path / "runs"), "--name", "streamed",
                                    "train.device=cpu")
    assert code == 0, err
    status = Run(tmp_path / "runs" / "streamed").status
    assert status["skipped_count"] == 1 and status["skipped_files"]["train"][0][0] == str(broken)
    assert "skipped:    1 unreadable image file(s)" in out


# ----------------------------------------------------------------------------------- 12: the umask
def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "a.pt")
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"b": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------- 13: not learning, said so
def test_a_constant_loss_is_warned_about_in_the_log_and_the_status(tmp_path):
    from workbench.experiments.table import runs_table

    cfg = PretrainConfig(method="simclr", data=DataConfig(name="shapes", image_size=16, options={"n": 128}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                         train=TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=1e6, log_every=1,
                                           knn_every=0, progress="off", device="cpu"), out=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="the loss has not moved for a whole epoch"):
        run = pretrain(cfg)
    epochs = [r for r in run.metrics() if r["kind"] == "epoch"]
    assert any("has not moved" in w for r in epochs for w in r.get("warnings", []))
    assert run.status["status"] == "completed" and "constant_loss" in run.status["warnings"]
    assert runs_table(tmp_path).iloc[0].warnings == "constant_loss"


def test_collapsed_embeddings_are_warned_about_and_a_healthy_run_has_no_warnings(blobs_data, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        healthy = pretrain(tiny(blobs_data, tmp_path / "ok", epochs=1))
    assert "warnings" not in healthy.status
    from workbench.methods.byol import BYOL

    real = BYOL.training_step

    def collapsed(self, batch, progress):
        out = real(self, batch, progress)
        out.features = torch.ones_like(out.features)  # every image on the same point
        return out

    monkeypatch.setattr(BYOL, "training_step", collapsed)
    with pytest.warns(RuntimeWarning, match="the embeddings collapsed"):
        run = pretrain(tiny(blobs_data, tmp_path / "collapsed", epochs=1))
    assert "collapse" in run.status["warnings"]
