"""A tiny pretraining run on ``shapes`` through the engine, scored by weighted kNN against the same backbone at
random initialisation: the short-run check of the latent-prediction methods (data2vec 2.0, NEPA).

Sizes keep one run to a few seconds on a 2-core CPU: 512 training and 256 test images at 16 px, a 2-block
vit_tiny with 4 px patches (16 patches), batch 32, AdamW at base lr 4e-3 per 256 images with a 0.2-epoch warm-up.
"""
from __future__ import annotations

from typing import Any

N_TRAIN, N_TEST, SIZE = 512, 256, 16
VIT = {"backbone": "vit_tiny", "options": {"depth": 2, "patch_size": 4}}


def tiny_knn_gain(method: str, options: dict[str, Any], out: str, seed: int = 0, epochs: int = 2) -> dict[str, Any]:
    """Pretrain ``method`` with ``options`` for ``epochs`` on tiny ``shapes`` -> {"knn_pretrained",
    "knn_random_init", "gain", "losses"} (kNN k=20, T=0.07 on the test split)."""
    import workbench.data as data_pkg
    from tests.methods.test_training import knn_vs_random_init
    from workbench.data import base
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cache = {split: data_pkg.load("shapes", split=split, size=SIZE, n=n, seed=0)
             for split, n in (("train", N_TRAIN), ("test", N_TEST))}
    base._REGISTRY["shapes_tiny"] = lambda split="train", **_: cache[split]
    try:
        cfg = PretrainConfig(method=method, method_options=options, data=DataConfig(name="shapes_tiny"),
                             model=ModelConfig(**VIT),
                             train=TrainConfig(epochs=epochs, batch_size=32, log_every=2, knn_every=0, progress="off",
                                               device="cpu", seed=seed, optimizer="adamw", lr=4e-3,
                                               warmup_epochs=0.2),
                             out=out)
        run = pretrain(cfg)
        assert run.status["status"] == "completed", run.status
        scores = knn_vs_random_init(run)
    finally:
        base._REGISTRY.pop("shapes_tiny", None)
    losses = [r["loss"] for r in run.metrics() if r["kind"] == "step"]
    return {**scores, "gain": scores["knn_pretrained"] - scores["knn_random_init"], "losses": losses}
