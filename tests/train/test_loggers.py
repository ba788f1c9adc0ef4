"""TensorBoard and MLflow loggers (workbench.train.loggers), offline: TensorBoard event files read back with
tensorboard's EventAccumulator, MLflow through a SQLite store in the test folder; both against metrics.jsonl."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from workbench.config import ConfigError, apply_overrides, from_dict
from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
from workbench.train.loggers import TRACKERS_FILE, TensorBoardLogger, export_projector, flatten, log_summary

tensorboard = pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")


def tiny(out, **train) -> PretrainConfig:
    t = dict(epochs=2, batch_size=32, log_every=1, knn_every=1, progress="off", device="cpu")
    t.update(train)
    return PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                          data=DataConfig(name="shapes", image_size=16, options={"n": 128}),
                          model=ModelConfig(backbone="small_cnn", options={"width": 8}), train=TrainConfig(**t),
                          out=str(out))


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_logs_the_scalars_of_metrics_jsonl_the_config_and_the_headline(tmp_path):
    run = pretrain(tiny(tmp_path, loggers="tensorboard"))
    log_dir = run.path / "tensorboard"
    assert json.loads((run.path / TRACKERS_FILE).read_text())["tensorboard"]["log_dir"] == str(log_dir.resolve())
    acc = events(log_dir)
    steps = [r for r in run.metrics() if r["kind"] == "step"]
    epochs = [r for r in run.metrics() if r["kind"] == "epoch"]
    for name in ("loss", "lr", "rankme", "std"):  # float32 in the event file
        got = series(acc, f"train/{name}")
        assert [s for s, _ in got] == [r["step"] for r in steps]
        assert [v for _, v in got] == pytest.approx([r[name] for r in steps], rel=1e-6)
    assert series(acc, "epoch/knn_acc") == [(r["step"], pytest.approx(r["knn_acc"], rel=1e-6)) for r in epochs]
    knn = run.summary["pretrain"]["knn_acc"]
    assert series(acc, "summary/knn_acc") == [(8, pytest.approx(knn, rel=1e-6))]
    # the config as hyper-parameters (TensorBoard's HParams plugin)
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = session.session_start_info.hparams
    assert hp["method"].string_value == "simclr" and hp["train.batch_size"].number_value == 32
    # an evaluation recorded later reaches the same folder
    assert log_summary(run, {"linear_top1": 0.625}) == ["tensorboard"]
    assert series(events(log_dir), "summary/linear_top1") == [(0, 0.625)]


def test_mlflow_logs_to_a_sqlite_store_and_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = pretrain(tiny(tmp_path / "runs", loggers=["mlflow"], max_steps=3, knn_every=0))
    first = json.loads((run.path / TRACKERS_FILE).read_text())["mlflow"]
    assert first["tracking_uri"] == uri
    resumed = pretrain(apply_overrides(from_dict(PretrainConfig, run.config), {"train.max_steps": None}),
                       resume=run.path)
    assert resumed.status["status"] == "completed"
    assert json.loads((run.path / TRACKERS_FILE).read_text())["mlflow"]["run_id"] == first["run_id"]
    client = MlflowClient(tracking_uri=uri)
    record = client.get_run(first["run_id"])
    assert record.info.status == "FINISHED" and record.info.run_name == run.path.name
    assert record.data.params["method"] == "simclr" and record.data.params["train.batch_size"] == "32"
    assert record.data.tags["workbench.run_folder"] == str(run.path.resolve())
    steps = [r for r in resumed.metrics() if r["kind"] == "step"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(first["run_id"], "train/loss"))
    assert [s for s, _ in history] == [r["step"] for r in steps] == list(range(1, 9))
    assert [v for _, v in history] == pytest.approx([r["loss"] for r in steps])
    epochs = sorted((m.step, m.value) for m in client.get_metric_history(first["run_id"], "epoch/loss"))
    assert epochs == [(r["step"], pytest.approx(r["loss"])) for r in resumed.metrics() if r["kind"] == "epoch"]
    assert log_summary(run, {"linear_top1": 0.5}) == ["mlflow"]
    assert client.get_run(first["run_id"]).data.metrics["summary/linear_top1"] == 0.5


def test_logger_names_are_validated_and_a_missing_extra_names_its_install(monkeypatch):
    with pytest.raises(ConfigError, match="TrainConfig.loggers: 'wandb' is not a logger"):
        TrainConfig(loggers="tensorboard,wandb")
    assert TrainConfig(loggers="tensorboard, mlflow,tensorboard").loggers == ["tensorboard", "mlflow"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'ssl-workbench\[mlflow\]'"):
        pretrain(tiny("unused", loggers="mlflow"))
    assert flatten({"a": {"b": 1, "c": None}, "d": [1, 2]}) == {"a.b": 1, "a.c": "null", "d": "[1, 2]"}


def test_a_logger_passed_from_a_notebook_is_not_added_twice(tmp_path):
    logger = TensorBoardLogger(log_dir=tmp_path / "tb")
    run = pretrain(tiny(tmp_path / "runs", loggers="tensorboard", knn_every=0, epochs=1), callbacks=[logger])
    assert not (run.path / "tensorboard").exists()
    assert len(series(events(tmp_path / "tb"), "train/loss")) == 4


def test_projector_export_writes_vectors_labels_and_a_sprite(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 4, generator=g)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=g)
    out = export_projector(tmp_path / "proj", feats, labels=[f"c{i % 3}" for i in range(10)], images=images,
                           thumbnail=20)
    config = (out / "projector_config.pbtxt").read_text()
    assert "tensors.tsv" in config and "metadata.tsv" in config and "sprite.png" in config
    assert "single_image_dim: 20" in config
    folder = out / "00000" / "embedding"
    rows = [[float(x) for x in line.split("\t")] for line in (folder / "tensors.tsv").read_text().splitlines()]
    assert torch.allclose(torch.tensor(rows), feats, atol=1e-5)
    assert (folder / "metadata.tsv").read_text().split() == [f"c{i % 3}" for i in range(10)]
    sprite = Image.open(folder / "sprite.png")
    assert sprite.size == (4 * 20, 4 * 20)  # ceil(sqrt(10)) thumbnails a side
    with pytest.raises(ValueError, match="3 labels for 10 vectors"):
        export_projector(tmp_path / "bad", feats, labels=["a", "b", "c"])
    # an evaluated embedding: a FeatureSet's labels become its class names
    from workbench.trained.features import FeatureSet
    fs = FeatureSet(feats, torch.tensor([0, 1] * 5), class_names=["circle", "square"])
    out = export_projector(tmp_path / "fs", fs, images=images)
    assert (out / "00000" / "embedding" / "metadata.tsv").read_text().split() == ["circle", "square"] * 5
    assert math.isfinite(float(feats.sum()))
