"""``evaluate(run, ...)``: every metric for a run, side by side with random-init and raw-pixel baselines.

Returns a tidy pandas table (one row per metric and model: model, name, value, split, settings) and merges
the numbers into the run's summary.json. The baselines go through exactly the same code path as the
pretrained backbone: a random-init copy of its architecture, and ``RawPixels`` (normalised pixels, flattened).
A run can be evaluated on another data set than it was trained on (transfer): pass ``data``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd
import torch.nn as nn

from workbench.data.base import ImageDataset
from workbench.evaluation.factors import factor_probes
from workbench.evaluation.finetune import distill, few_label_finetune
from workbench.evaluation.knn import knn_eval
from workbench.evaluation.label_free import (kmeans_scores, label_free_metrics, umap_silhouette, view_features,
                                           view_pairs)
from workbench.evaluation.linear import linear_probe
from workbench.runs import Run
from workbench.trained import (BASELINES, RawPixels, Trained, adapt_dataset, check_compatible, extract_features,
                               load_trained)

METRICS = ("knn", "linear", "label_free", "kmeans", "silhouette", "factors", "finetune", "distill")
DEFAULT_METRICS = ("knn", "linear", "label_free", "kmeans", "factors")
COLUMNS = ["model", "name", "value", "split", "settings"]


@dataclass
class EvalOptions:
    """Knobs of ``evaluate`` (defaults sized for a CPU; a GPU can afford more epochs)."""

    knn_ks: tuple[int, ...] = (10, 20, 200)
    knn_temperature: float = 0.07
    fractions: tuple[float, ...] = (0.01, 0.1)
    finetune_epochs: int = 5
    finetune_min_steps: int = 100
    distill_epochs: int = 2
    distill_min_steps: int = 100
    alignment_images: int = 1024
    cluster_points: int = 20000
    silhouette_points: int = 2000
    batch_size: int = 256
    seed: int = 0


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """"knn,linear" or ["knn", "linear"] or "all" -> validated list (error lists what is allowed)."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = list(metrics)
    if metrics == ["all"]:
        return list(METRICS)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)} (comma-separated) or 'all'")
    if "distill" in metrics and "finetune" not in metrics:
        metrics.insert(metrics.index("distill"), "finetune")  # distillation needs the fine-tuned teacher
    return metrics


def _data_spec(spec: Any) -> tuple[str | None, dict[str, Any]]:
    """A run's recorded data (a name or {"name", "options"}) -> (name, options)."""
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        # a DataConfig record: loader options plus root / image_size (-> size) / download
        opts = dict(spec.get("options") or {})
        if spec.get("root") is not None:
            opts["root"] = spec["root"]
        if spec.get("image_size") is not None:
            opts["size"] = spec["image_size"]
        if spec.get("download"):
            opts["download"] = True
        return spec.get("name"), opts
    return None, {}


def resolve_data(data: Any, data_options: dict[str, Any] | None, trained_on: Any = None
                 ) -> tuple[ImageDataset, ImageDataset, str]:
    """-> (train split, test split, data name). ``data``: None (the run's training data and options), a
    registered name, {"name", "options"}, or a (train, test) pair of ImageDatasets."""
    from workbench.data import load
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, ImageDataset) for d in data):
        return data[0], data[1], data[0].name or "data"
    if isinstance(data, ImageDataset):
        raise ValueError("pass data as a (train, test) pair of ImageDatasets, a data set name, or None")
    run_name, run_opts = _data_spec(trained_on)
    name, opts = _data_spec(data)
    if name is None:
        if run_name is None:
            raise ValueError("no data to evaluate on: the run records no training data set; pass data='shapes' "
                             "(CLI: --data NAME)")
        name, opts = run_name, {**run_opts, **opts}
    elif name == run_name and not opts:
        opts = dict(run_opts)
    opts = {**opts, **(data_options or {})}
    opts.pop("split", None)
    train = load(name, split="train", **opts)
    test = load(name, split="test", **opts)
    return train, test, name


def _preset_for(trained: Trained) -> tuple[str, dict[str, Any]]:
    """The augmentation preset the run trained with (for alignment's two views) and its overrides; a bare
    backbone, which records none, gets SimCLR's views."""
    config = trained.run.config if trained.run is not None else {}
    aug = dict(config.get("augment") or {})
    preset = trained.info.get("preset") or aug.pop("preset", None) or "simclr"
    aug.pop("preset", None)
    return preset, aug


def _rows(model: str, values: dict[str, float], split: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"model": model, "name": k, "value": float(v), "split": split, "settings": settings}
            for k, v in values.items()]


def evaluate(run: Any, data: Any = None, metrics: str | Sequence[str] = DEFAULT_METRICS, checkpoint: str = "last",
             baselines: bool | Sequence[str] = True, *, data_options: dict[str, Any] | None = None,
             options: EvalOptions | dict[str, Any] | None = None, device: str = "auto", adapt: bool = False,
             write_summary: bool = True, progress: bool | Callable[[str], None] = False) -> pd.DataFrame:
    """Evaluate a run (or a Backbone, with ``data`` given) -> DataFrame(model, name, value, split, settings).

    metrics: any of ``METRICS`` ("knn", "linear", "label_free", "kmeans", "silhouette", "factors",
    "finetune", "distill"), as a list or comma-separated string. baselines: True (random init and raw
    pixels), False, or a subset of ``BASELINES``. Results also go to the run's summary.json: flat keys for
    the pretrained model on its training data (e.g. ``linear_top1``), ``<baseline>/<name>`` for baselines,
    ``<data>/...`` prefixes for transfer data, and the full table under ``evaluation``. ``adapt``: resize and
    convert grey <-> RGB data that does not match the backbone (transfer), instead of raising.
    """
    metrics = parse_metrics(metrics)
    opts = options if isinstance(options, EvalOptions) else EvalOptions(**(options or {}))
    if baselines is True:
        baselines = list(BASELINES)
    elif baselines is False or baselines is None:
        baselines = []
    else:
        baselines = list(baselines)
        bad = [b for b in baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}")

    trained = load_trained(run, checkpoint)
    backbone, r = trained.backbone, trained.run
    train_ds, test_ds, data_name = resolve_data(data, data_options, trained.data)
    if adapt:  # transfer to data of another size / channel count: convert it to what the backbone takes
        if trained.image_size is not None and trained.in_chans is not None:
            train_ds = adapt_dataset(train_ds, trained.in_chans, trained.image_size)
            test_ds = adapt_dataset(test_ds, trained.in_chans, trained.image_size)
    check_compatible(backbone, train_ds, data_name)
    check_compatible(backbone, test_ds, data_name)
    chans = train_ds.images.shape[1]
    mean, std = trained.stats(chans)
    run_data_name, _ = _data_spec(trained.data)
    transfer = run_data_name is not None and data_name != run_data_name

    models: dict[str, nn.Module] = {"pretrained": backbone}
    if "random_init" in baselines:
        models["random_init"] = trained.random_init(opts.seed)
    if "raw_pixels" in baselines:
        models["raw_pixels"] = RawPixels(train_ds.images.shape[-1], chans)

    rows: list[dict[str, Any]] = []
    base = {"data": data_name, "adapted": bool(adapt), "checkpoint": checkpoint if r is not None else None,
            "n_train": len(train_ds), "n_test": len(test_ds)}
    t_start = time.time()
    say = progress if callable(progress) else ((lambda line: print(line, flush=True)) if progress else None)

    def note(model_name: str, stage: str) -> None:  # a progress line per model and stage
        if say is not None:
            say(f"[{time.time() - t_start:6.1f}s] {model_name} ({list(models).index(model_name) + 1}/{len(models)}): "
                f"{stage}")

    pairs = preset = None
    if "label_free" in metrics:  # two augmented views of the same test images, drawn once for every model
        preset, overrides = _preset_for(trained)
        pairs = view_pairs(test_ds, preset, mean, std, overrides, n=opts.alignment_images, seed=opts.seed)
    for model_name, encoder in models.items():
        baseline = None if model_name == "pretrained" else model_name
        needs_features = any(m in metrics for m in ("knn", "linear", "label_free", "kmeans", "silhouette", "factors"))
        if needs_features:
            note(model_name, "features")
            kw = dict(checkpoint=checkpoint, baseline=baseline, mean=mean, std=std, batch_size=opts.batch_size,
                      device=device, seed=opts.seed)
            ftr = extract_features(trained, train_ds, **kw)
            fte = extract_features(trained, test_ds, **kw)
        settings = {**base, "dim": int(ftr.dim) if needs_features else None}
        if "knn" in metrics:
            note(model_name, "knn")
            rows += _rows(model_name, knn_eval(ftr, fte, opts.knn_ks, opts.knn_temperature, device=device), "test",
                          {**settings, "temperature": opts.knn_temperature, "fit_split": "train"})
        if "linear" in metrics:
            note(model_name, "linear")
            res = linear_probe(ftr, fte, seed=opts.seed, device=device)
            vals = {"linear_top1": res.top1}
            if res.top5 is not None:
                vals["linear_top5"] = res.top5
            rows += _rows(model_name, vals, "test", {**settings, "weight_decay": res.weight_decay,
                                                     "val_top1": {str(k): v for k, v in res.val_top1.items()},
                                                     "fit_split": "train"})
        if "label_free" in metrics:
            note(model_name, "label_free")
            views = view_features(encoder, test_ds, device=device, pairs=pairs)
            rows += _rows(model_name, label_free_metrics(fte, views, seed=opts.seed), "test",
                          {**settings, "preset": preset})
        if "kmeans" in metrics and fte.has_labels:
            rows += _rows(model_name, kmeans_scores(fte, max_points=opts.cluster_points, seed=opts.seed), "test",
                          {**settings, "features": "l2-normalised"})
        if "silhouette" in metrics:
            note(model_name, "silhouette")
            rows += _rows(model_name, umap_silhouette(fte, max_points=opts.silhouette_points, seed=opts.seed),
                          "test", {**settings, "points": opts.silhouette_points})
        if "factors" in metrics and ftr.factors:
            note(model_name, "factor probes")
            table = factor_probes(ftr, fte, seed=opts.seed, device=device)
            for rec in table.to_dict("records"):
                rows += _rows(model_name, {f"factor_{rec['factor']}_{rec['metric']}": rec["value"]}, "test",
                              {**settings, "kind": rec["kind"], "chance": rec["chance"],
                               "num_values": rec["num_values"]})
        if "finetune" in metrics:
            for frac in opts.fractions:
                note(model_name, f"fine-tuning on {frac:.0%} of the labels")
                tag = f"{frac * 100:g}pct"
                ft = few_label_finetune(encoder, train_ds, test_ds, frac, epochs=opts.finetune_epochs,
                                        min_steps=opts.finetune_min_steps, seed=opts.seed, mean=mean, std=std,
                                        device=device)
                vals = {f"finetune_top1_{tag}": ft.top1}
                if ft.top5 is not None:
                    vals[f"finetune_top5_{tag}"] = ft.top5
                rows += _rows(model_name, vals, "test", {**settings, **ft.settings, "num_labeled": ft.num_labeled})
                if "distill" in metrics:
                    ds = distill(ft, train_ds, test_ds, epochs=opts.distill_epochs,
                                 min_steps=opts.distill_min_steps, seed=opts.seed, mean=mean, std=std, device=device)
                    rows += _rows(model_name, {f"distill_top1_{tag}": ds.top1}, "test",
                                  {**settings, **ds.settings, "teacher_top1": ds.teacher_top1})
        note(model_name, "done")

    table = pd.DataFrame(rows, columns=COLUMNS)
    if r is not None and write_summary:
        _write_summary(r, table, data_name, transfer, checkpoint)
    return table


def _write_summary(run: Run, table: pd.DataFrame, data_name: str, transfer: bool, checkpoint: str) -> None:
    flat: dict[str, Any] = {}
    for rec in table.to_dict("records"):
        key = rec["name"] if rec["model"] == "pretrained" else f"{rec['model']}/{rec['name']}"
        if transfer:
            key = f"{data_name}/{key}"
        flat[key] = rec["value"]
    evaluation = dict(run.summary.get("evaluation") or {})
    evaluation[data_name] = {"checkpoint": checkpoint, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "rows": json.loads(table.to_json(orient="records"))}
    run.update_summary({**flat, "evaluation": evaluation})
    from workbench.train.loggers import log_summary
    log_summary(run, {k: v for k, v in flat.items() if "/" not in k})  # the headline, where the run was tracked
