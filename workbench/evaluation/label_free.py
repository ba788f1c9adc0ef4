"""Label-free metrics, usable on a user's unlabeled data.

- RankMe, std of L2-normalised embeddings, alignment, Wang & Isola's uniformity and the Wasserstein uniformity
  of Fang et al. 2024 (which, unlike the former, sees dimensional collapse), and LiDAR: the implementations in
  ``workbench.metrics`` (shared with the engine's live monitors); alignment and LiDAR need features of two
  augmented views of the same images (``view_features``, with the run's augmentation preset).
- k-means and agglomerative (Ward) clustering of L2-normalised features (scikit-learn), scored against labels
  where they exist with NMI (arithmetic-mean normaliser), AMI and ARI, all scikit-learn's.
- Silhouette score in a UMAP-reduced space (2-D and 10-D): UMAP (umap-learn, min_dist=0), k-means in the
  reduced space, silhouette of those clusters there. Lowe et al. 2024 ("An empirical study into clustering of
  unseen datasets with self-supervised encoders") find it tracks clustering quality without labels.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.data.base import ImageDataset
from workbench.models.encode import encode
from workbench.trained import FeatureSet
from workbench.metrics import alignment, lidar, normalized_std, rankme, uniformity, wasserstein_uniformity


def _features(x: FeatureSet | torch.Tensor) -> torch.Tensor:
    return x.features if isinstance(x, FeatureSet) else x


def label_free_metrics(features: FeatureSet | torch.Tensor,
                       views: tuple[torch.Tensor, torch.Tensor] | None = None,
                       max_points: int = 10000, seed: int = 0) -> dict[str, float]:
    """{"rankme", "std", "uniformity", "w2_uniformity"} of features [N, D] (+ "alignment" and "lidar" given two
    views' features [M, D] each; LiDAR here uses those two views per image, its paper draws more).

    RankMe uses at most ``max_points`` rows (a seeded random subset; SVD cost), uniformity likewise.
    """
    z = _features(features).float()
    if z.shape[0] > max_points:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    out = {"rankme": rankme(z), "std": normalized_std(z), "uniformity": uniformity(z, max_points=max_points),
           "w2_uniformity": wasserstein_uniformity(z)}
    if views is not None:
        out["alignment"] = alignment(views[0], views[1])
        out["lidar"] = lidar(torch.stack([views[0].float(), views[1].float()], dim=1))
    return out


def view_pairs(dataset: ImageDataset, preset: str = "simclr", mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, overrides: dict[str, Any] | None = None, n: int = 1024,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views (the preset's first two, i.e. global, views) of ``n`` seeded-random images of
    ``dataset`` -> (v1, v2) normalised float [n, C, s, s], from workbench.augment's ``make_preset`` and
    ``generate_views`` with a seeded generator. Draw once, encode with every model being compared."""
    from workbench.augment import channel_values, generate_views, make_preset
    from workbench.trained import DEFAULT_MEAN, DEFAULT_STD

    chans = dataset.images.shape[1]
    mean_t = channel_values(DEFAULT_MEAN if mean is None else mean, chans, "mean")
    std_t = channel_values(DEFAULT_STD if std is None else std, chans, "std")
    cfg = make_preset(preset, dataset.images.shape[-1], mean=mean_t, std=std_t, **(overrides or {}))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n]
    vb = generate_views(dataset.images[idx], cfg, g)
    if len(vb.views) < 2:
        raise ValueError(f"augmentation preset {preset!r} makes {len(vb.views)} view(s); alignment needs two")
    return vb.views[0], vb.views[1]


def view_features(encoder: nn.Module, dataset: ImageDataset, preset: str = "simclr",
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  overrides: dict[str, Any] | None = None, n: int = 1024, seed: int = 0,
                  device: str | torch.device = "auto",
                  pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of two augmented views of the same ``n`` images -> (z1 [n, D], z2 [n, D]), for alignment.

    ``pairs``: views already drawn by :func:`view_pairs` (then the other arguments but ``encoder`` and
    ``device`` are ignored).
    """
    v1, v2 = pairs if pairs is not None else view_pairs(dataset, preset, mean, std, overrides, n, seed)
    return encode(encoder, v1, device=device), encode(encoder, v2, device=device)


# -- clustering -------------------------------------------------------------------------------------------
def kmeans_clusters(x: np.ndarray | torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 3) -> np.ndarray:
    """scikit-learn k-means cluster ids [N] of rows of x [N, D]."""
    from sklearn.cluster import KMeans

    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x.astype(np.float32))


def kmeans_scores(features: FeatureSet | torch.Tensor, labels: torch.Tensor | None = None,
                  n_clusters: int | None = None, max_points: int = 20000, seed: int = 0,
                  agglomerative_points: int = 4000) -> dict[str, float]:
    """Clusters of L2-normalised features scored against labels -> {"kmeans_nmi", "kmeans_ami", "kmeans_ari",
    "agglomerative_nmi", "agglomerative_ami", "agglomerative_ari"}; k = number of classes unless given.

    k-means uses at most ``max_points`` rows, Ward agglomerative clustering (memory O(n^2)) at most
    ``agglomerative_points`` (seeded subsets; 0 turns agglomerative off). AMI corrects NMI for chance, which
    matters with many clusters or few points.
    """
    z = _features(features).float()
    if labels is None:
        if not isinstance(features, FeatureSet) or not features.has_labels:
            raise ValueError("kmeans_scores needs labels to score against; for unlabeled data use "
                             "umap_silhouette (label-free)")
        labels = features.labels
    if n_clusters is None:
        n_clusters = int(torch.unique(labels).numel())
    order = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    def scores(name: str, y: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
        return {f"{name}_nmi": float(normalized_mutual_info_score(y, clusters)),
                f"{name}_ami": float(adjusted_mutual_info_score(y, clusters)),
                f"{name}_ari": float(adjusted_rand_score(y, clusters))}

    keep = order[:max_points]
    out = scores("kmeans", labels[keep].cpu().numpy(), kmeans_clusters(F.normalize(z[keep], dim=1), n_clusters, seed))
    if agglomerative_points > 0:
        keep = order[:agglomerative_points]
        ward = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward")
        out.update(scores("agglomerative", labels[keep].cpu().numpy(),
                          ward.fit_predict(F.normalize(z[keep], dim=1).numpy())))
    return out


def umap_silhouette(features: FeatureSet | torch.Tensor, n_clusters: int | None = None,
                    n_components: Sequence[int] = (2, 10), max_points: int = 2000, n_neighbors: int = 15,
                    seed: int = 0) -> dict[str, float]:
    """Silhouette of k-means clusters in UMAP-reduced spaces -> {"umap2_silhouette", "umap10_silhouette"}.

    ``n_clusters`` defaults to the number of classes (10 without labels); a seeded subset of ``max_points``
    rows keeps UMAP quick. Labels are never used for the score itself.
    """
    import umap
    from sklearn.metrics import silhouette_score

    z = _features(features).float()
    if n_clusters is None:
        has = isinstance(features, FeatureSet) and features.has_labels
        n_clusters = int(torch.unique(features.labels).numel()) if has else 10
    if z.shape[0] > max_points:
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    if z.shape[0] <= n_clusters + 1:
        raise ValueError(f"umap_silhouette needs more than {n_clusters + 1} points, got {z.shape[0]}")
    x = F.normalize(z, dim=1).numpy()
    out = {}
    for dim in n_components:
        reducer = umap.UMAP(n_components=dim, n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=0.0,
                            random_state=seed, n_jobs=1)
        emb = reducer.fit_transform(x)
        clusters = kmeans_clusters(emb, n_clusters, seed)
        out[f"umap{dim}_silhouette"] = float(silhouette_score(emb, clusters)) if len(set(clusters)) > 1 else 0.0
    return out
