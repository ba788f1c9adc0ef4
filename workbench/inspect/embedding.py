"""Embedding-space views: 2-D PCA (instant) and UMAP (cached with the run), cosine nearest neighbours,
k-means and leave-one-out kNN-correctness colourings, and the WebGL scatter figure.

Features are float [N, D] tensors or arrays; coordinates are float32 numpy [N, 2].
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.inspect.colors import color_spec
from workbench.inspect.pca import pca
from workbench.metrics import weighted_knn_predict

PCA_MAX_FIT = 20_000  # rows the 2-D and pre-UMAP PCAs are fitted on (about a second for 512-d features on 2 cores)


def _as_tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(t.shape)}")
    return t.detach().float().cpu()


def features_hash(features: Any) -> str:
    """Short SHA-1 of a feature matrix's shape and float32 bytes (the cache key of its 2-D coordinates)."""
    t = _as_tensor(features).contiguous()
    h = hashlib.sha1(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def pca_2d(features: Any, max_fit: int = PCA_MAX_FIT) -> np.ndarray:
    """First two principal-component coordinates [N, 2] of features [N, D] (:func:`~workbench.inspect.pca.pca`,
    fitted on at most ``max_fit`` rows)."""
    x = _as_tensor(features)
    mean, comps = pca(x, 2, max_fit)
    return ((x - mean) @ comps).numpy().astype(np.float32)


def umap_epochs(n: int) -> int:
    """Optimisation epochs chosen by size (fewer for large sets, where each epoch already moves many points)."""
    if n <= 2_000:
        return 300
    if n <= 20_000:
        return 150
    return 80


def umap_2d(features: Any, n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None,
            seed: int | None = 0, pca_dims: int | None = 32, low_memory: bool = True) -> np.ndarray:
    """UMAP coordinates [N, 2] (umap-learn) of the cosine geometry of ``features`` [N, D], tuned for speed: rows
    L2-normalised (Euclidean distance between unit vectors ranks neighbours as cosine does, and umap-learn's
    Euclidean nearest-neighbour descent is its fastest path), reduced to ``pca_dims`` by PCA, ``n_epochs`` by
    size (:func:`umap_epochs`), ``low_memory``, PCA initialisation (no spectral step). ``seed`` None lets
    umap-learn use all cores (not reproducible); an int makes it deterministic (single-threaded)."""
    import umap

    x = F.normalize(_as_tensor(features), dim=1)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {n}")
    if pca_dims is not None and x.shape[1] > pca_dims:
        mean, comps = pca(x, pca_dims, PCA_MAX_FIT)
        x = (x - mean) @ comps
    init = pca_2d(x).astype(np.float64)
    init = init / (np.abs(init).max() or 1.0) * 10.0
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist, metric="euclidean",
                        n_epochs=n_epochs or umap_epochs(n), low_memory=low_memory, init=init,
                        random_state=seed, n_jobs=1 if seed is not None else -1)
    return reducer.fit_transform(x.numpy()).astype(np.float32)


def embedding_2d(features: Any, method: str = "pca", cache_dir: str | Path | None = None,
                 **params: Any) -> np.ndarray:
    """2-D coordinates by ``method`` ("pca" or "umap"), cached as ``cache_dir/embedding-<method>-<key>.npy``
    where key hashes the features and the parameters (a run's ``run.cache_dir`` keeps them with the run)."""
    if method not in ("pca", "umap"):
        raise ValueError(f"method={method!r} must be 'pca' or 'umap'")
    path = None
    if cache_dir is not None:
        key = hashlib.sha1((features_hash(features) + json.dumps(params, sort_keys=True, default=str)).encode())
        path = Path(cache_dir) / f"embedding-{method}-{key.hexdigest()[:16]}.npy"
        if path.exists():
            return np.load(path)
    coords = pca_2d(features) if method == "pca" else umap_2d(features, **params)
    if path is not None:
        from workbench.runs import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, coords)
        atomic_write_bytes(path, buf.getvalue())
    return coords


def nearest_neighbors(features: Any, queries: int | Sequence[int] | torch.Tensor, k: int = 8,
                      exclude_self: bool = True, chunk_size: int = 65536,
                      normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k nearest neighbours of the rows ``queries`` (indices into ``features`` [N, D]).

    Returns (indices int64 [Q, k], similarities float32 [Q, k]), best first; the query itself is excluded
    when ``exclude_self``. The database is scanned ``chunk_size`` rows at a time (memory O(Q * chunk)).
    ``normalized``: the features are already L2-normalised (skips the normalisation, for repeated queries).
    """
    x = _as_tensor(features)
    if not normalized:
        x = F.normalize(x, dim=1)
    q_idx = torch.as_tensor([queries] if isinstance(queries, int) else queries, dtype=torch.long).reshape(-1)
    if q_idx.numel() and (int(q_idx.min()) < 0 or int(q_idx.max()) >= x.shape[0]):
        raise ValueError(f"query index out of range 0..{x.shape[0] - 1}")
    k = min(k, x.shape[0] - (1 if exclude_self else 0))
    q = x[q_idx]
    best_s = torch.full((len(q_idx), 0), float("-inf"))
    best_i = torch.zeros((len(q_idx), 0), dtype=torch.long)
    for start in range(0, x.shape[0], chunk_size):
        sim = q @ x[start:start + chunk_size].T
        if exclude_self:
            local = q_idx - start
            inside = (local >= 0) & (local < sim.shape[1])
            sim[inside.nonzero().flatten(), local[inside]] = float("-inf")
        s, i = sim.topk(min(k, sim.shape[1]), dim=1)
        best_s = torch.cat([best_s, s], dim=1)
        best_i = torch.cat([best_i, i + start], dim=1)
        if best_s.shape[1] > k:
            best_s, order = best_s.topk(k, dim=1)
            best_i = best_i.gather(1, order)
    return best_i.numpy(), best_s.numpy().astype(np.float32)


def knn_correct(features: Any, labels: Any, k: int = 20, temperature: float = 0.07,
                chunk_size: int = 1024) -> np.ndarray:
    """Leave-one-out weighted kNN (:func:`workbench.metrics.weighted_knn_predict`: DINO's vote, cosine,
    exp(sim / T)) of every point of features [N, D] against all others: bool [N], True where the predicted
    label equals the point's own int ``labels`` [N]."""
    x = _as_tensor(features)
    y = torch.as_tensor(np.asarray(labels)).long()
    scores = weighted_knn_predict(x, y, x, k, temperature, chunk_size=chunk_size, leave_one_out=True)
    return (scores.argmax(1) == y).numpy()


def kmeans_labels(features: Any, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """k-means cluster ids int64 [N] (scikit-learn; MiniBatchKMeans above 20k points, for speed)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = F.normalize(_as_tensor(features), dim=1).numpy()
    n_clusters = max(1, min(n_clusters, x.shape[0]))
    if x.shape[0] > 20_000:
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    return km.fit_predict(x).astype(np.int64)


def legend_traces(values: Any, names: Any = None, limit: int = 20) -> list[Any]:
    """Legend-only plotly traces (no points): one per category of integer/bool ``values`` [N], drawn in the colour
    :func:`color_spec` gives it and named ``names(code)`` (default the code; bools: "no"/"yes"); at most ``limit``
    (the most frequent; the rest summed in one grey entry). Float values get none (their colour bar is the key)."""
    import plotly.graph_objects as go

    from workbench.inspect.colors import UNLABELED, palette

    v = np.asarray(values)
    if v.dtype != bool and not np.issubdtype(v.dtype, np.integer):
        return []
    pal = palette()
    codes, counts = np.unique(v, return_counts=True)
    order = sorted(range(len(codes)), key=lambda i: (-counts[i], codes[i]))
    name = names or (lambda c: ("yes" if c else "no") if v.dtype == bool else str(c))

    def entry(label: str, color: str) -> Any:
        return go.Scattergl(x=[None], y=[None], mode="markers", name=label, showlegend=True, hoverinfo="skip",
                            marker=dict(size=9, color=color))

    out = []
    for i in sorted(order[:limit], key=lambda i: codes[i]):
        c = codes[i]
        color = (pal[2] if c else pal[3]) if v.dtype == bool else UNLABELED if c < 0 else pal[int(c) % len(pal)]
        out.append(entry(f"{name(c.item())} ({counts[i]})", color))
    if len(codes) > limit:
        out.append(entry(f"{len(codes) - limit} more (colours repeat)", UNLABELED))
    return out


def scatter_figure(coords: np.ndarray, colors: Any = None, hover: Sequence[str] | None = None,
                   title: str = "", marker_size: int | None = None) -> Any:
    """Plotly WebGL scatter (go.Scattergl, one trace) of coordinates [N, 2], coloured by ``colors`` (per-point
    values, see :func:`color_spec`)."""
    import plotly.graph_objects as go

    n = coords.shape[0]
    size = marker_size or (3 if n > 20_000 else 5 if n > 2_000 else 7)
    marker = dict(size=size, **(color_spec(colors) if colors is not None else {}))
    fig = go.Figure(go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", marker=marker,
                                 text=list(hover) if hover is not None else None,
                                 hoverinfo="text" if hover is not None else "x+y"))
    fig.update_layout(title=title, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10), height=520,
                      xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    return fig
