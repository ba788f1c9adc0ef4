"""Evaluation at nested sizes: kNN, linear probe and RankMe on the first m dims of the features.

A Matryoshka representation (Kusupati et al., 2022; workbench.methods.matryoshka) is meant to be used at any of
its prefixes f[:, :m]; this reads each prefix (``FeatureSet.prefix``) with the suite's own functions
(``knn_eval``, ``linear_probe``, ``workbench.metrics.rankme``), so a prefix and the full feature are scored alike.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from workbench.evaluation.knn import knn_eval
from workbench.evaluation.linear import linear_probe
from workbench.metrics import rankme
from workbench.trained import FeatureSet

PREFIX_METRICS = ("knn", "linear", "rankme")


def nested_dims(dim: int, smallest: int = 8) -> list[int]:
    """The paper's sizes for a ``dim``-dim feature: powers of two from ``smallest`` below ``dim``, then ``dim``."""
    if dim < 1 or smallest < 1:
        raise ValueError(f"dim={dim} and smallest={smallest} must be >= 1")
    sizes, m = [], smallest
    while m < dim:
        sizes.append(m)
        m *= 2
    return sizes + [dim]


def prefix_metrics(train: FeatureSet, test: FeatureSet, dims: Sequence[int] | None = None,
                   metrics: Sequence[str] = PREFIX_METRICS, k: int = 20, rankme_rows: int = 10000,
                   seed: int = 0, device: str | torch.device = "auto") -> pd.DataFrame:
    """One row per size m in ``dims`` (default :func:`nested_dims` of the feature size) with the ``metrics`` of
    the first m feature dims: "knn" -> ``knn_top1`` (weighted kNN, ``k`` neighbours, T = 0.07), "linear" ->
    ``linear_top1`` (the suite's probe, weight decay chosen on a validation split of train), "rankme" -> ``rankme``
    of the test features (at most ``rankme_rows`` seeded-random rows). Columns: dims, then the metrics."""
    unknown = sorted(set(metrics) - set(PREFIX_METRICS))
    if unknown or not metrics:
        raise ValueError(f"metrics={list(metrics)!r}: choose from {list(PREFIX_METRICS)}")
    if train.dim != test.dim:
        raise ValueError(f"train features have {train.dim} dims but test features {test.dim}; "
                         "extract both with the same model")
    dims = nested_dims(train.dim) if dims is None else [int(m) for m in dims]
    z = test.features
    if z.shape[0] > rankme_rows:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:rankme_rows]]
    rows = []
    for m in dims:
        tr, te = train.prefix(m), test.prefix(m)
        row: dict[str, float | int] = {"dims": m}
        if "knn" in metrics:
            row["knn_top1"] = knn_eval(tr, te, ks=(k,), device=device)[f"knn_top1_k{k}"]
        if "linear" in metrics:
            row["linear_top1"] = linear_probe(tr, te, seed=seed, device=device).top1
        if "rankme" in metrics:
            row["rankme"] = rankme(z[:, :m].float())
        rows.append(row)
    return pd.DataFrame(rows)
