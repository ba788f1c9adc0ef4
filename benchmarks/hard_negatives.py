"""Weighted kNN (k=20) of SimCLR's hard-negative options against plain NT-Xent at several batch sizes and seeds:
the grid behind tutorial 11's table. Small CNN on ``shapes`` (1000 training images at 32 px, 500 test images), 2
epochs, AdamW 4e-3 per 256 images with a 0.2-epoch warm-up; one thread per process (run seeds in parallel). Prints
one JSON object per run: variant, batch, seed, knn, knn_random_init (the same architecture at initialisation).

    .venv/bin/python benchmarks/hard_negatives.py --variants ntxent dcl mochi queue --batches 16 64 256 --seeds 0
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

VARIANTS = {"ntxent": {}, "dcl": {"loss": "dcl"},
            "mochi": {"queue_length": 512, "mochi_hardest": 64, "mochi_mix": 32, "mochi_mix_query": 16},
            "queue": {"queue_length": 512}}


def main() -> None:
    import workbench.data as data_pkg
    from workbench.data import base
    from workbench.evaluation import knn_eval
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
    from workbench.trained import extract_features, load_trained

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(1)
    cache = {split: data_pkg.load("shapes", split=split, size=32, n=n, seed=0)
             for split, n in (("train", a.n_train), ("test", 500))}
    base._REGISTRY["shapes_hard_negatives"] = lambda split="train", **_: cache[split]
    for seed in a.seeds:
        for batch in a.batches:
            for variant in a.variants:
                start = time.time()
                cfg = PretrainConfig(
                    method="simclr", method_options={"proj_hidden_dim": 512, "proj_output_dim": 128,
                                                     **VARIANTS[variant]},
                    data=DataConfig(name="shapes_hard_negatives"),
                    model=ModelConfig(backbone="small_cnn", options={"width": a.width}),
                    train=TrainConfig(epochs=a.epochs, batch_size=batch, log_every=5, knn_every=0, progress="off",
                                      device="cpu", optimizer="adamw", lr=4e-3, warmup_epochs=0.2, seed=seed),
                    out=tempfile.mkdtemp())
                run = pretrain(cfg)
                trained = load_trained(run)
                splits = (trained.dataset("train"), trained.dataset("test"))
                knn = {}
                for name, baseline in (("knn", None), ("knn_random_init", "random_init")):
                    feats = [extract_features(trained, s, baseline=baseline, cache=False) for s in splits]
                    knn[name] = knn_eval(*feats, ks=(20,))["knn_top1_k20"]
                print(json.dumps({"variant": variant, "batch": batch, "seed": seed, **knn,
                                  "status": run.status["status"], "seconds": round(time.time() - start)}),
                      flush=True)


if __name__ == "__main__":
    main()
