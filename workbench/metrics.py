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


def wasserstein_uniformity(z: torch.Tensor) -> float:
    """W2 distance from the L2-normalised rows of z [N, D] to the uniform distribution on the sphere (Fang et al.
    2024, "Rethinking the Uniformity Metric in Self-Supervised Learning"); lower is more uniform.

    Both sides are taken as Gaussians, the uniform sphere as N(0, I / D): W2^2 = ||mu||^2 + 1 + tr(S)
    - (2 / sqrt(D)) tr(S^(1/2)), with mu, S the mean and covariance of the normalised rows. Unlike Wang & Isola's
    uniformity it keeps growing as the embedding collapses onto fewer dimensions (0 for isotropic embeddings,
    sqrt(2) for all rows on one point).
    """
    x = F.normalize(z.detach().double(), dim=1)
    mu = x.mean(dim=0)
    cov = (x - mu).T @ (x - mu) / x.shape[0]
    root_trace = torch.linalg.eigvalsh(cov).clamp(min=0).sqrt().sum()        # tr(S^(1/2)) of a PSD matrix
    w2_sq = mu.pow(2).sum() + 1 + cov.trace() - 2 / x.shape[1] ** 0.5 * root_trace
    return float(w2_sq.clamp(min=0).sqrt())


def lidar(views: torch.Tensor, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2023): effective rank of the LDA matrix that treats each image as a class and its
    augmented views as the class's samples. views [n, q, D]: q >= 2 embeddings of each of n images.

    S_b = covariance of the n per-image means, S_w = mean within-image covariance + delta * I; LiDAR = exp of the
    entropy of the normalised eigenvalues of S_w^(-1/2) S_b S_w^(-1/2). High: many directions tell images apart
    beyond what augmentation moves; RankMe's counterpart that ignores augmentation noise.
    """
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"lidar needs views [n, q, D] with q >= 2 views per image, got {tuple(views.shape)}")
    e = views.detach().double()
    n, q, d = e.shape
    means = e.mean(dim=1)                                                   # [n, D]
    centred = means - means.mean(dim=0)
    s_b = centred.T @ centred / n
    within = (e - means[:, None]).reshape(n * q, d)
    s_w = within.T @ within / (n * q) + delta * torch.eye(d, dtype=e.dtype)
    evals, evecs = torch.linalg.eigh(s_w)
    inv_root = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    lam = torch.linalg.eigvalsh(inv_root @ s_b @ inv_root).clamp(min=0)
    p = lam / lam.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def singular_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Singular values of the centred, L2-normalised rows of z [N, D], largest first -> float64 [min(N, D)].

    The dimensional-collapse picture: a healthy embedding decays slowly, a collapsed one drops to ~0 after a few.
    """
    x = F.normalize(z.detach().double(), dim=1)
    return torch.linalg.svdvals(x - x.mean(dim=0))


def normalized_spectrum(z: torch.Tensor, k: int = 64) -> list[float]:
    """:func:`singular_spectrum` of z [N, D], top min(k, N - 1, D) values (centring leaves at most N - 1) divided by
    the sum of all of them: fractions of the spread, comparable across epochs and runs (flat: spread; first ~1,
    rest ~0: rank-1 collapse); [] when all rows are equal. The training monitor's per-epoch ``spectrum`` record."""
    s = singular_spectrum(z)
    total = float(s.sum())
    return (s[:min(k, len(z) - 1)] / total).tolist() if total > 0 else []


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
