"""The main job: a short pretraining on ``shapes`` that finishes in minutes on a 2-core CPU, then a kNN
comparison of the learned backbone with the same backbone at random initialisation."""
from __future__ import annotations

import time
from typing import Any

import torch

from workbench.train.config import DataConfig, ModelConfig, PretrainConfig, TrainConfig


def quickstart_config(out: str = "runs", **train_overrides: Any) -> PretrainConfig:
    """The default quickstart recipe: BYOL (solo-learn CIFAR settings) on 8000 32 px ``shapes`` images with
    the small CNN, batch 256 (LARS, base lr 1.0 per 256), 6 epochs (186 steps; ~200 images/s on a quiet
    2-core CPU, so about 4 minutes); ``train_overrides`` replace TrainConfig fields."""
    train = dict(epochs=6, batch_size=256, log_every=10, knn_every=1, knn_max_train=5000, seed=0)
    train.update(train_overrides)
    return PretrainConfig(method="byol", data=DataConfig(name="shapes", image_size=32, options={"n": 8000}),
                          model=ModelConfig(backbone="small_cnn"), train=TrainConfig(**train), out=out)


def knn_vs_random(run_or_path: Any, knn_max_train: int = 5000, k: int = 20, seed: int = 0) -> dict[str, float]:
    """Weighted kNN accuracy (k=20, T=0.07) on the test split of the run's data: the pretrained backbone vs the
    same architecture at random initialisation (seeded), same images, same normalisation."""
    from workbench.metrics import knn_accuracy
    from workbench.models.backbones import build_backbone
    from workbench.train.engine import extract_features, load_pretrained

    backbone, info = load_pretrained(run_or_path)
    import workbench.data as data_pkg

    name, options = info["data"]["name"], dict(info["data"]["options"])
    train = data_pkg.load(name, split="train", **options)
    test = data_pkg.load(name, split="test", **options)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:knn_max_train]
    dev = torch.device("cpu")

    def score(model: torch.nn.Module) -> float:
        tr = extract_features(model, train.images[idx], info["mean"], info["std"], dev)
        te = extract_features(model, test.images, info["mean"], info["std"], dev)
        return knn_accuracy(tr, train.labels[idx], te, test.labels, k=k, temperature=0.07)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_init = build_backbone(info["backbone"], image_size=info["image_size"], in_chans=info["in_chans"],
                                     **info.get("backbone_options", {})).eval()
    return {"knn_pretrained": score(backbone), "knn_random_init": score(random_init)}


def quickstart(out: str = "runs", **train_overrides: Any) -> dict[str, Any]:
    """Pretrain :func:`quickstart_config`, compare kNN with random init; returns the numbers and the run folder
    (also written to the run's summary.json)."""
    from workbench.train.engine import pretrain

    t0 = time.perf_counter()
    run = pretrain(quickstart_config(out, **train_overrides))
    pretrain_s = time.perf_counter() - t0
    scores = knn_vs_random(run)
    result = {"run": str(run.path), "pretrain_s": round(pretrain_s, 1), **scores,
              "total_s": round(time.perf_counter() - t0, 1)}
    run.update_summary({"quickstart": result})
    return result


if __name__ == "__main__":  # python -m workbench.train.quickstart [RUNS_DIR]
    import json
    import sys

    print(json.dumps(quickstart(sys.argv[1] if len(sys.argv) > 1 else "runs"), indent=2))
