"""The engine: run folders and checkpoints, resume equivalence, NaN handling, failures, background runs with stop()
and callbacks (config errors: test_config.py; optimizer groups, LARS and the schedule: test_optim.py)."""
from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError, apply_overrides
from workbench.train import (DataConfig, ModelConfig, PretrainConfig, TrainConfig, TrainingDiverged, pretrain,
                             start_pretrain)
from workbench.trained import load_trained
from workbench.runs import status_text


def tiny(data: str, out, method: str = "byol", **train) -> PretrainConfig:
    """A few-second run: 128 16-px images, batch 32 (4 steps an epoch), width-8 small CNN."""
    t = dict(epochs=2, batch_size=32, log_every=1, knn_every=0, progress="off", device="cpu")
    t.update(train)
    opts = {"proj_hidden_dim": 64, "proj_output_dim": 32} if method in ("byol", "simclr") else {}
    if method == "byol":
        opts["pred_hidden_dim"] = 64
    return PretrainConfig(method=method, method_options=opts, data=DataConfig(name=data, options={"n": 128}),
                          model=ModelConfig(backbone="small_cnn", options={"width": 8}), train=TrainConfig(**t),
                          out=str(out))


# ---------------------------------------------------------------------------------------------- runs
def test_run_folder_checkpoint_and_load_trained(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path, epochs=1, knn_every=1))
    for f in ("config.json", "env.json", "metrics.jsonl", "status.json", "summary.json", "checkpoints/last.pt"):
        assert (run.path / f).exists(), f
    assert run.status["status"] == "completed" and run.status["step"] == 4
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert ckpt["step"] == 4 and "target_backbone.stages.0.0.weight" in ckpt["method"]  # the EMA teacher is saved
    kinds = [r["kind"] for r in run.metrics()]
    assert kinds.count("step") == 4 and kinds.count("epoch") == 1
    step = run.metrics()[0]
    assert {"loss", "lr", "rankme", "std", "step_time", "images_per_s"} <= set(step)
    epoch = [r for r in run.metrics() if r["kind"] == "epoch"][0]
    assert 0.0 <= epoch["knn_acc"] <= 1.0
    # normalisation statistics come from the training images and are recorded in config.json
    from workbench.data.base import load
    imgs = load(blobs_data, "train", n=128).images.double() / 255
    assert run.config["data"]["mean"] == pytest.approx(imgs.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    trained = load_trained(run)
    backbone, info = trained.backbone, trained.info
    method = load_trained(run.path).method()
    assert not backbone.training and info["image_size"] == 16 and info["in_chans"] == 3 and info["method"] == "byol"
    assert info["data"] == {"name": blobs_data, "options": {"n": 128}} and info["feature_dim"] == 64
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(backbone(x), method.backbone(x))
    # the epoch record's embedding spectrum: the held-out (test split) features of the final backbone, rows
    # L2-normalised and centred, top 64 singular values over the sum of all (reference: own forward and svdvals)
    test = load(blobs_data, "test", n=128).images.float() / 255
    mean, std = (torch.tensor(run.config["data"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        f = backbone((test - mean) / std).double()
    f = f / f.norm(dim=1, keepdim=True)
    s = torch.linalg.svdvals(f - f.mean(dim=0))
    assert len(epoch["spectrum"]) == min(64, len(s))
    assert epoch["spectrum"] == pytest.approx((s[:64] / s.sum()).tolist(), rel=1e-3, abs=1e-6)
    with pytest.raises(FileNotFoundError, match="checkpoint 'best' not found"):
        load_trained(run, "best")


@pytest.mark.parametrize("log_every", [1, 3])  # 3 does not divide the checkpoint step (3 of 4 per epoch) twice
def test_resume_gives_the_same_parameters_as_training_straight(blobs_data, tmp_path, log_every):
    straight = pretrain(tiny(blobs_data, tmp_path / "a", max_steps=6, deterministic=True, log_every=log_every))
    first = pretrain(tiny(blobs_data, tmp_path / "b", max_steps=3, deterministic=True, log_every=log_every))
    assert first.status["status"] == "completed" and first.status["stopped_at_max_steps"]
    assert first.status["step"] == 3
    resumed = pretrain(apply_overrides(tiny(blobs_data, tmp_path / "b", deterministic=True, log_every=log_every),
                                       {"train.max_steps": 6}), resume=first.path)
    assert resumed.path == first.path and resumed.status["step"] == 6
    # the metrics of the resumed run are those of the straight run: the same step and epoch records, same losses
    def records(run):
        return [(r["kind"], r["step"], r["loss"]) for r in run.metrics()]

    assert [r[:2] for r in records(resumed)] == [r[:2] for r in records(straight)]
    assert [r[2] for r in records(resumed)] == pytest.approx([r[2] for r in records(straight)], abs=1e-5)
    # an epoch record's loss is the mean over that epoch's steps (every step logged with log_every=1)
    if log_every == 1:
        steps = [r["loss"] for r in straight.metrics() if r["kind"] == "step"]
        (epoch,) = [r for r in straight.metrics() if r["kind"] == "epoch"]
        assert epoch["loss"] == pytest.approx(sum(steps[:4]) / 4, rel=1e-6)
    else:
        assert [r["step"] for r in resumed.metrics() if r["kind"] == "step"] == [1, 3, 6]
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    assert a["method"].keys() == b["method"].keys()
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=0, atol=1e-6, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"], rtol=0, atol=1e-6)
    if log_every == 1:
        assert [r["step"] for r in resumed.metrics() if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]


def test_resume_rejects_a_different_method(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path, max_steps=1))
    with pytest.raises(ConfigError, match="config.method differs"):
        pretrain(tiny(blobs_data, tmp_path, method="simclr"), resume=run.path)


def test_nan_loss_fails_the_run_and_keeps_a_loadable_checkpoint(blobs_data, tmp_path, monkeypatch):
    from workbench.methods.byol import BYOL

    real = BYOL.training_step

    def poisoned(self, batch, progress):
        out = real(self, batch, progress)
        if progress.step == 5:  # second epoch, after the epoch-1 checkpoint
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BYOL, "training_step", poisoned)
    cfg = tiny(blobs_data, tmp_path)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 5"):
        pretrain(cfg)
    from workbench.runs import list_runs

    (run,) = list_runs(tmp_path)
    status = run.status
    assert status["status"] == "failed" and status["step"] == 5 and "nan" in status["error"]
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert ckpt["step"] == 5  # the state before the diverging update
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    backbone = load_trained(run).backbone
    assert torch.isfinite(backbone(torch.randn(2, 3, 16, 16))).all()
    assert max(r["step"] for r in run.metrics()) == 5


def test_exception_marks_the_run_failed_and_is_reraised(blobs_data, tmp_path, monkeypatch):
    from workbench.methods.byol import BYOL

    def broken(self, batch, progress):
        raise RuntimeError("boom in the method")

    monkeypatch.setattr(BYOL, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom in the method"):
        pretrain(tiny(blobs_data, tmp_path))
    from workbench.runs import list_runs

    (run,) = list_runs(tmp_path)
    assert run.status["status"] == "failed" and "boom in the method" in run.status["error"]
    assert "broken" in run.status["traceback"]


def test_start_pretrain_runs_in_the_background_and_stops_on_request(blobs_data, tmp_path):
    events = []

    class Monitor:
        def on_start(self, run, info):
            events.append(("start", info["total_steps"]))

        def on_step(self, run, record):
            events.append(("step", record["step"]))
            if record["step"] == 2:
                handle.stop()

        def on_end(self, run, status):
            events.append(("end", status["status"]))

    handle = start_pretrain(tiny(blobs_data, tmp_path, epochs=50), callbacks=[Monitor()])
    assert handle.run.path.is_dir()  # the run folder exists as soon as start_pretrain returns
    run = handle.wait(timeout=120)
    assert handle.done()
    # an early stop is recorded as one: "stopped" (never "completed"), at epoch 2 / (200 steps / 50 epochs) = 0.5
    assert run.status["status"] == "stopped" and run.status["stopped_early"] and run.status["step"] == 2
    assert (run.status["epoch"], run.status["epochs"]) == (0.5, 50)
    assert status_text(run.status) == "stopped at epoch 0.5 of 50"
    assert events == [("start", 200), ("step", 1), ("step", 2), ("end", "stopped")]
    assert torch.load(run.checkpoint_path("last"), weights_only=True)["step"] == 2


# ---------------------------------------------------------------------------------------------- memory format
def test_channels_last_auto_is_on_for_cnns_in_bf16_on_a_cpu_and_changes_no_result(blobs_data, tmp_path):
    from workbench.train.setup import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", True, cpu, torch.bfloat16) and use_channels_last("auto", True, cuda, None)
    assert not use_channels_last("auto", True, cpu, None) and not use_channels_last("auto", False, cpu, torch.bfloat16)
    assert use_channels_last("on", False, cpu, None) and not use_channels_last("off", True, cuda, torch.bfloat16)
    losses = {}
    for setting in ("auto", "off"):
        run = pretrain(tiny(blobs_data, tmp_path / setting, method="simclr", precision="bf16", channels_last=setting,
                            seed=3))
        assert load_trained(run).info["channels_last"] is (setting == "auto")
        losses[setting] = [r["loss"] for r in run.metrics() if r["kind"] == "step"]
    # the memory format changes the kernels' summation order only: the same run, to bf16 rounding
    assert losses["auto"] == pytest.approx(losses["off"], rel=0.02)
    fp32 = pretrain(tiny(blobs_data, tmp_path / "fp32", method="simclr", precision="fp32"))
    assert load_trained(fp32).info["channels_last"] is False
