"""Weighted kNN evaluation as in DINO (cosine similarity, votes weighted by exp(sim / T)), chunked."""
from __future__ import annotations

from typing import Sequence

import torch

from workbench.device import resolve_device
from workbench.trained import FeatureSet
from workbench.metrics import weighted_knn_predict


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction (0-1) of rows of ``scores`` [M, C] whose true label [M] is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices.cpu()
    return float((top == labels.cpu().view(-1, 1)).any(dim=1).float().mean())


def knn_eval(train: FeatureSet, test: FeatureSet, ks: Sequence[int] = (10, 20, 200), temperature: float = 0.07,
             chunk_size: int = 1024, device: str | torch.device = "auto") -> dict[str, float]:
    """DINO weighted kNN accuracy for each k -> {"knn_top1_k20": 0.85, ...} (+ "knn_top5_k20" when > 10 classes).

    Test rows go ``chunk_size`` at a time (memory O(chunk_size * N_train)); features move to ``device``.
    """
    if not train.has_labels or not test.has_labels:
        raise ValueError("kNN evaluation needs labels on both splits; this data set is unlabeled "
                         "(use the label-free metrics: --metrics label_free,kmeans)")
    if train.dim != test.dim:
        raise ValueError(f"train features have {train.dim} dims but test features {test.dim}; "
                         "extract both with the same model")
    dev = resolve_device(device)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    tr, te, ytr = train.features.to(dev), test.features.to(dev), train.labels.to(dev)
    out: dict[str, float] = {}
    for k in ks:
        scores = weighted_knn_predict(tr, ytr, te, k=k, temperature=temperature, num_classes=num_classes,
                                      chunk_size=chunk_size)
        out[f"knn_top1_k{k}"] = topk_accuracy(scores, test.labels, 1)
        if num_classes > 10:
            out[f"knn_top5_k{k}"] = topk_accuracy(scores, test.labels, 5)
    return out
