"""Pure tensor metrics of embeddings, shared by the engine's live monitors and the evaluation suite.

Kept at the bottom of the import graph (it imports nothing from the workbench) so that both
``workbench.train`` and ``workbench.evaluation`` can use one implementation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of ``z`` [N, D].

    Ranges from ~1 (rank-1 embeddings, collapse) to min(N, D) (isotropic embeddings).
    """
    s = torch.linalg.svdvals(z.detach().double())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised embeddings [N, D].

    About 1/sqrt(D) for well-spread embeddings and 0 under complete collapse (the SimSiam paper's alarm).
    """
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola alignment: E ||f(x) - f(x+)||^alpha over positive pairs (rows of z1, z2 [N, D]), normalised."""
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0, max_points: int = 10000) -> float:
    """Wang & Isola uniformity: log E exp(-t ||f(x) - f(y)||^2) over distinct pairs of normalised rows of z [N, D]."""
    z = F.normalize(z.float(), dim=1)
    if z.shape[0] > max_points:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:max_points]]
    sq = torch.pdist(z, p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel()))))


@torch.no_grad()
def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                         k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                         chunk_size: int = 1024, leave_one_out: bool = False) -> torch.Tensor:
    """DINO's weighted kNN: cosine similarity to the train set, top-k neighbours vote with exp(sim / T).

    train_features [N, D], train_labels int64 [N], test_features [M, D] -> class scores [M, num_classes].
    ``leave_one_out``: the test rows are the train rows (M = N) and row i never votes for itself.
    Test rows are processed ``chunk_size`` at a time so memory stays O(chunk_size * N).
    """
    if leave_one_out and test_features.shape[0] != train_features.shape[0]:
        raise ValueError(f"leave_one_out needs the test rows to be the train rows, got {test_features.shape[0]} "
                         f"test and {train_features.shape[0]} train rows")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0] - int(leave_one_out))
    scores = torch.empty(test.shape[0], num_classes, dtype=torch.float32, device=test.device)
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T
        if leave_one_out:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float32, device=test.device)
        votes.scatter_add_(1, train_labels.to(test.device)[top_idx], weights)
        scores[start:start + chunk_size] = votes
    return scores


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy (0-1) of :func:`weighted_knn_predict`."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = weighted_knn_predict(train_features, train_labels, test_features, k, temperature, num_classes).argmax(1)
    return float((pred.cpu() == test_labels.cpu()).float().mean())
