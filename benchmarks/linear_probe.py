"""Linear-probe speed on 60k x 512 features (10 classes): the issue asks for well under a minute on a 2-core CPU.

Features are synthetic but shaped like a backbone's: a 10-class Gaussian mixture in 64 dims pushed through a
random linear map and a ReLU to 512 dims, plus noise (overlapping classes, so L-BFGS does real work).
Prints one JSON object: wall seconds (and process CPU seconds: on a busy machine, CPU / threads is closer to
what a quiet one takes) for the whole probe (weight-decay search on a 10% validation split + refit),
its accuracy, and, with ``--sklearn``, scikit-learn's LogisticRegression on the same standardised features
at the chosen weight decay (time and accuracy) for comparison.

    .venv/bin/python benchmarks/linear_probe.py [--n 60000] [--dim 512] [--sklearn]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch


def synthetic(n: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """(x_train [n, dim], y_train [n], x_test [n_test, dim], y_test [n_test]) from one class mixture."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 64, generator=g) * 0.35
    proj = torch.randn(64, dim, generator=g) / 8

    def draw(m: int):
        y = torch.randint(0, classes, (m,), generator=g)
        latent = centers[y] + torch.randn(m, 64, generator=g)
        return torch.relu(latent @ proj) + 0.05 * torch.randn(m, dim, generator=g), y

    return (*draw(n), *draw(n_test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn LogisticRegression")
    args = ap.parse_args()

    from workbench.trained import FeatureSet
    from workbench.evaluation.linear import linear_probe, standardize_stats

    xtr, ytr, xte, yte = synthetic(args.n, args.n_test, args.dim, args.classes)
    train, test = FeatureSet(xtr, ytr), FeatureSet(xte, yte)

    t0, c0 = time.perf_counter(), time.process_time()
    res = linear_probe(train, test, max_iter=args.max_iter, device="cpu")
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    out = {"benchmark": "linear_probe", "n": args.n, "dim": args.dim, "classes": args.classes,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "seconds": round(seconds, 2),
           "cpu_seconds": round(cpu_seconds, 2),
           "top1": round(res.top1, 4), "weight_decay": res.weight_decay,
           "val_top1": {str(k): round(v, 4) for k, v in res.val_top1.items()}}
    if args.sklearn:
        from sklearn.linear_model import LogisticRegression

        mean, std = standardize_stats(xtr)
        a, b = ((xtr - mean) / std).numpy(), ((xte - mean) / std).numpy()
        t0 = time.perf_counter()
        clf = LogisticRegression(C=1.0 / (res.weight_decay * args.n), max_iter=1000).fit(a, ytr.numpy())
        out["sklearn_seconds_one_fit"] = round(time.perf_counter() - t0, 2)
        out["sklearn_top1"] = round(float((clf.predict(b) == yte.numpy()).mean()), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
