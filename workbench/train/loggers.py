"""Run tracking where users look: TensorBoard and MLflow as Trainer callbacks.

``train.loggers=tensorboard,mlflow`` (``TrainConfig.loggers``) adds them to a run; from a notebook pass them
yourself: ``pretrain(cfg, callbacks=[TensorBoardLogger()])``. Each logs the scalars of every metrics.jsonl record
(step records as ``train/<name>``, epoch records as ``epoch/<name>``, at the record's step), the config as
hyper-parameters (flattened ``train.lr`` ...) and the headline results as ``summary/<name>``: the pretraining's
(kNN accuracy, loss) when it ends, and any evaluation recorded later (``log_summary``, called by ``workbench
evaluate`` and ``record_metrics``). Where each logger wrote is kept in the run folder's ``trackers.json``, so a
resumed run continues the same TensorBoard folder and MLflow run.

- TensorBoard (``pip install 'ssl-workbench[tensorboard]'``): event files in ``<run>/tensorboard`` (``tensorboard
  --logdir runs``). ``export_projector`` writes an evaluated embedding for TensorBoard's projector.
- MLflow (``pip install 'ssl-workbench[mlflow]'``): the tracking URI from ``MLFLOW_TRACKING_URI``, else a SQLite
  store beside the runs (``sqlite:///<runs folder>/mlflow.db``); the experiment from ``MLFLOW_EXPERIMENT_NAME``,
  else ``ssl-workbench``. ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from workbench.config import ConfigError

LOGGERS = ("tensorboard", "mlflow")
TRACKERS_FILE = "trackers.json"   # in a run folder: where each logger wrote (TensorBoard folder, MLflow run id)
INSTALL = {"tensorboard": "pip install 'ssl-workbench[tensorboard]'", "mlflow": "pip install 'ssl-workbench[mlflow]'"}
SKIP = {"kind", "step"}           # record keys that are not scalars to plot (the x axis is the step)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics.jsonl record, minus its kind and step."""
    out = {}
    for k, v in record.items():
        x = _number(v)
        if k not in SKIP and x is not None:
            out[k] = x
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"train.lr": 0.5, "data.name": "shapes", ...}; lists and None as text."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            flat[key] = v
        else:
            flat[key] = json.dumps(v, default=str)
    return flat


def _trackers(run: Any) -> dict[str, Any]:
    p = Path(run) / TRACKERS_FILE
    try:
        value = json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        value = {}
    return value if isinstance(value, dict) else {}


def _set_tracker(run: Any, name: str, record: Mapping[str, Any]) -> None:
    from workbench.runs import atomic_write_json

    atomic_write_json(Path(run) / TRACKERS_FILE, {**_trackers(run), name: dict(record)})


def check_loggers(names: Sequence[str], owner: str = "TrainConfig.loggers") -> list[str]:
    """Validate logger names and that their packages are installed (a ConfigError naming the extra to install)."""
    import importlib.util

    out = []
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"{owner}: {name!r} is not a logger; choose from {list(LOGGERS)}")
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{owner}: {name!r} needs the {module} package, which is not installed; "
                              f"{INSTALL[name]}")
        out.append(name)
    return out


class TensorBoardLogger:
    """Trainer callback writing TensorBoard event files (``log_dir``; default ``<run>/tensorboard``)."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None):
        check_loggers([self.name], owner="TensorBoardLogger")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._writer = None

    def _open(self, run: Any):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.log_dir or Path(_trackers(run).get(self.name, {}).get("log_dir") or Path(run) / "tensorboard")
            self._writer = SummaryWriter(log_dir=str(log_dir))
            _set_tracker(run, self.name, {"log_dir": str(Path(log_dir).resolve())})
        return self._writer

    def on_start(self, run: Any, info: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._open(run)
        params = flatten(_config(run))
        metric_tags = {f"summary/{k}": 0.0 for k in ("knn_acc", "train_loss", "linear_acc", "rankme")}
        for summary in hparams(params, metric_tags):  # the HParams tab: config against the headline results
            writer.file_writer.add_summary(summary)
        writer.add_text("config", "```\n" + json.dumps(_config(run), indent=2) + "\n```", 0)
        writer.flush()

    def on_step(self, run: Any, record: Mapping[str, Any]) -> None:
        writer = self._open(run)
        for k, v in scalars(record).items():
            writer.add_scalar(f"train/{k}", v, int(record["step"]))

    def on_epoch(self, run: Any, record: Mapping[str, Any]) -> None:
        writer = self._open(run)
        for k, v in scalars(record).items():
            writer.add_scalar(f"epoch/{k}", v, int(record["step"]))
        writer.flush()

    def log_summary(self, run: Any, values: Mapping[str, Any], step: int | None = None) -> None:
        writer = self._open(run)
        for k, v in values.items():
            x = _number(v)
            if x is not None:
                writer.add_scalar(f"summary/{k}", x, step or 0)
        writer.flush()

    def on_end(self, run: Any, status: Mapping[str, Any]) -> None:
        if status.get("status") in ("completed", "stopped"):  # a stopped run has a summary too
            self.log_summary(run, _pretrain_headline(run), status.get("step"))
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MLflowLogger:
    """Trainer callback logging to an MLflow run (one per run folder; a resumed run continues it).
    ``tracking_uri``/``experiment`` default to MLflow's environment variables, else a SQLite store beside the
    runs and the experiment ``ssl-workbench``."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None):
        check_loggers([self.name], owner="MLflowLogger")
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self._client = self._run_id = None

    def _open(self, run: Any):
        if self._client is not None:
            return self._client, self._run_id
        from mlflow.tracking import MlflowClient

        known = _trackers(run).get(self.name, {})
        uri = (self.tracking_uri or known.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
               or f"sqlite:///{(Path(run).resolve().parent / 'mlflow.db')}")
        client = MlflowClient(tracking_uri=uri)
        run_id = known.get("run_id") if known.get("tracking_uri") == uri else None
        if run_id is None:
            name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ssl-workbench"
            exp = client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
            config = _config(run)
            tags = {"workbench.run_folder": str(Path(run).resolve()), "method": str(config.get("method")),
                    "data": str((config.get("data") or {}).get("name"))}
            run_id = client.create_run(exp_id, run_name=Path(run).name, tags=tags).info.run_id
            _set_tracker(run, self.name, {"tracking_uri": uri, "run_id": run_id, "experiment": name})
        else:
            client.update_run(run_id, status="RUNNING")
        self._client, self._run_id = client, run_id
        return client, run_id

    def _log(self, run: Any, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        client, run_id = self._open(run)
        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("@", "_"), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def on_start(self, run: Any, info: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        client, run_id = self._open(run)
        have = set(client.get_run(run_id).data.params)  # params are write-once: a resumed run logs only new ones
        params = [Param(k, str(v)[:6000]) for k, v in flatten(_config(run)).items() if k not in have]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])

    def on_step(self, run: Any, record: Mapping[str, Any]) -> None:
        self._log(run, {f"train/{k}": v for k, v in scalars(record).items()}, int(record["step"]))

    def on_epoch(self, run: Any, record: Mapping[str, Any]) -> None:
        self._log(run, {f"epoch/{k}": v for k, v in scalars(record).items()}, int(record["step"]))

    def log_summary(self, run: Any, values: Mapping[str, Any], step: int | None = None) -> None:
        numbers = {f"summary/{k}": x for k, v in values.items() if (x := _number(v)) is not None}
        if numbers:
            self._log(run, numbers, step or 0)

    def on_end(self, run: Any, status: Mapping[str, Any]) -> None:
        state = status.get("status")
        if state in ("completed", "stopped"):
            self.log_summary(run, _pretrain_headline(run), status.get("step"))
        client, run_id = self._open(run)
        client.set_terminated(run_id, status={"completed": "FINISHED", "failed": "FAILED"}.get(state, "KILLED"))
        self._client = self._run_id = None

    def close(self) -> None:
        self._client = self._run_id = None


CLASSES = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def _config(run: Any) -> dict[str, Any]:
    p = Path(run) / "config.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        return {}


def _pretrain_headline(run: Any) -> dict[str, Any]:
    """The pretraining's own results from summary.json: kNN accuracy and the last loss."""
    p = Path(run) / "summary.json"
    try:
        summary = json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        return {}
    pre = summary.get("pretrain") or {}
    return {"knn_acc": pre.get("knn_acc"), "train_loss": pre.get("train_loss")}


def make_loggers(names: Iterable[str] | str | None) -> list[Any]:
    """Logger callbacks by name (``"tensorboard,mlflow"`` or a list); [] for None/empty."""
    if not names:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [CLASSES[n]() for n in check_loggers(list(names))]


def log_summary(run: Any, values: Mapping[str, Any]) -> list[str]:
    """Log headline results (e.g. an evaluation's ``linear_top1``) to the loggers that tracked ``run`` (those of
    its ``trackers.json``); nothing when it had none or their package is gone. Returns the loggers written."""
    known = _trackers(run)
    written = []
    for name, cls in CLASSES.items():
        if name not in known:
            continue
        try:
            logger = cls()
        except ConfigError:
            continue
        logger.log_summary(run, values)
        if name == "mlflow":  # reopening ran the run again: close it as it was
            client, run_id = logger._open(run)
            client.set_terminated(run_id, status="FINISHED")
        logger.close()
        written.append(name)
    return written


def export_projector(log_dir: str | os.PathLike, features: Any, labels: Sequence[Any] | None = None,
                     images: Any = None, tag: str = "embedding", step: int = 0,
                     thumbnail: int = 32) -> Path:
    """Write an embedding for TensorBoard's projector: ``features`` [N, D] (the vectors) or an evaluated
    ``FeatureSet`` (``workbench.trained.extract_features``: its labels, as class names, become the metadata),
    ``labels`` (N names or class ids), ``images`` [N, C, H, W] (uint8 or floats in [0, 1]; resized to ``thumbnail``
    px for the sprite). Returns the folder (``tensorboard --logdir`` it, then the Projector tab)::

        feats = extract_features(run, test_set)        # the embedding an evaluation used
        export_projector(run.path / "tensorboard", feats, images=test_set.images)
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    check_loggers(["tensorboard"], owner="export_projector")
    if hasattr(features, "features") and hasattr(features, "labels"):  # a FeatureSet
        names = list(getattr(features, "class_names", None) or [])
        if labels is None:
            labels = [names[i] if 0 <= i < len(names) else str(i) for i in features.labels.tolist()]
        features = features.features
    mat = torch.as_tensor(features).detach().float().cpu()
    if mat.dim() != 2:
        raise ValueError(f"export_projector: features must be [N, D], got shape {tuple(mat.shape)}")
    n = mat.shape[0]
    meta = None if labels is None else [str(x) for x in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if meta is not None and len(meta) != n:
        raise ValueError(f"export_projector: {len(meta)} labels for {n} vectors")
    label_img = None
    if images is not None:
        img = torch.as_tensor(images).detach().cpu()
        if img.dim() != 4 or img.shape[0] != n:
            raise ValueError(f"export_projector: images must be [N, C, H, W] with N={n}, got {tuple(img.shape)}")
        img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float().clamp(0, 1)
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        if img.shape[-1] != thumbnail or img.shape[-2] != thumbnail:
            img = torch.nn.functional.interpolate(img, size=(thumbnail, thumbnail), mode="bilinear",
                                                  align_corners=False, antialias=True)
        label_img = img
    log_dir = Path(log_dir)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_embedding(mat, metadata=meta, label_img=label_img, tag=tag, global_step=step)
    return log_dir


__all__ = ["LOGGERS", "MLflowLogger", "TRACKERS_FILE", "TensorBoardLogger", "check_loggers", "export_projector",
           "flatten", "log_summary", "make_loggers", "scalars"]
