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

from workbench.inspect.images import PALETTE


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


def pca_basis(features: Any, k: int, max_fit: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], top-``k`` principal directions [D, k]) of rows [N, D], fitted on at most ``max_fit`` rows
    (a fixed random subset: the directions of 70k x 512 features in well under a second)."""
    x = _as_tensor(features)
    fit = x
    if x.shape[0] > max_fit:
        fit = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_fit]]
    mean = fit.mean(dim=0)
    xc = fit - mean
    return mean, top_eigenvectors((xc.T @ xc).double(), k).float()


def top_eigenvectors(cov: torch.Tensor, k: int, oversample: int = 10, iters: int = 12, seed: int = 0) -> torch.Tensor:
    """Top-``k`` eigenvectors [D, k] of a symmetric PSD matrix [D, D] by randomized subspace iteration (a few
    [D, D] x [D, k + oversample] products and a small eigendecomposition: fast even where a full LAPACK
    ``eigh`` is slow on a busy machine)."""
    d = cov.shape[0]
    m = min(d, k + oversample)
    if d <= 64 or m >= d:
        evals, evecs = torch.linalg.eigh(cov)
        return evecs[:, torch.argsort(evals, descending=True)[:k]]
    q = torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=cov.dtype)
    for _ in range(iters):
        q, _ = torch.linalg.qr(cov @ q)
    evals, small = torch.linalg.eigh(q.T @ cov @ q)
    return (q @ small)[:, torch.argsort(evals, descending=True)[:k]]


def pca_2d(features: Any, max_fit: int = 20_000) -> np.ndarray:
    """First two principal-component coordinates [N, 2] (directions fitted on at most ``max_fit`` rows)."""
    x = _as_tensor(features)
    mean, comps = pca_basis(x, 2, max_fit)
    out = ((x - mean) @ comps).numpy().astype(np.float32)
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((out.shape[0], 2 - out.shape[1]), np.float32)], axis=1)
    return out


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
        mean, comps = pca_basis(x, pca_dims)
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
    """Leave-one-out weighted kNN (DINO's vote, cosine, exp(sim / T)) of every point against all others:
    bool [N], True where the predicted label equals the point's own."""
    x = F.normalize(_as_tensor(features), dim=1)
    y = torch.as_tensor(np.asarray(labels)).long()
    n = x.shape[0]
    k = min(k, n - 1)
    c = int(y.max()) + 1
    out = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk_size):
        sim = x[start:start + chunk_size] @ x.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = float("-inf")
        s, i = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], c).scatter_add_(1, y[i], (s / temperature).exp())
        out[start:start + sim.shape[0]] = (votes.argmax(1) == y[start:start + sim.shape[0]]).numpy()
    return out


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


def category_colors(values: Any, palette: Sequence[str] = PALETTE) -> list[str]:
    """Per-point hex colours of integer categories (negative = unlabeled, gray)."""
    v = np.asarray(values).astype(np.int64)
    pal = np.asarray(list(palette) + ["#bbbbbb"])
    return pal[np.where(v < 0, len(palette), v % len(palette))].tolist()


def continuous_colors(values: Any, cmap: str = "viridis") -> list[str]:
    """Per-point hex colours of continuous values (min-max normalised through ``cmap``)."""
    from workbench.inspect.images import colormap, minmax

    rgb = (colormap(minmax(np.asarray(values, dtype=np.float32)), cmap) * 255).round().astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def point_colors(values: Any) -> list[str]:
    """Colours for a colouring: integer or bool values -> categorical palette; float values -> viridis."""
    v = np.asarray(values)
    if v.dtype == bool:
        return np.where(v, "#2ca02c", "#d62728").tolist()
    if np.issubdtype(v.dtype, np.integer):
        return category_colors(v)
    return continuous_colors(v)


def _discrete_scale(colors: Sequence[str]) -> list[list[Any]]:
    n = len(colors)
    out: list[list[Any]] = []
    for i, c in enumerate(colors):
        out += [[i / n, c], [(i + 1) / n, c]]
    return out


def color_spec(values: Any) -> dict[str, Any]:
    """Plotly marker settings colouring points by ``values`` with a numeric array (fast to send and validate
    for 70k points, unlike per-point colour strings): integers -> categories of :data:`PALETTE` (code
    ``v % 20``; negative = unlabeled, gray), bools -> red (False) / green (True), floats -> Viridis."""
    v = np.asarray(values)
    if v.dtype == bool:
        return dict(color=v.astype(np.int64), colorscale=_discrete_scale(["#d62728", "#2ca02c"]), cmin=-0.5,
                    cmax=1.5, showscale=False)
    if np.issubdtype(v.dtype, np.integer):
        codes = np.where(v < 0, len(PALETTE), v % len(PALETTE)).astype(np.int64)
        return dict(color=codes, colorscale=_discrete_scale(list(PALETTE) + ["#bbbbbb"]), cmin=-0.5,
                    cmax=len(PALETTE) + 0.5, showscale=False)
    return dict(color=v.astype(np.float32), colorscale="Viridis", cmin=float(np.nanmin(v)), cmax=float(np.nanmax(v)),
                showscale=True)


def spec_colors(marker: Any) -> list[str]:
    """Per-point hex colours that a marker's numeric colours map to through its discrete colour scale (the
    colours a viewer sees); continuous scales fall back to viridis."""
    color = np.asarray(marker["color"] if isinstance(marker, dict) else marker.color)
    scale = marker["colorscale"] if isinstance(marker, dict) else marker.colorscale
    cmin = float(marker["cmin"] if isinstance(marker, dict) else marker.cmin)
    cmax = float(marker["cmax"] if isinstance(marker, dict) else marker.cmax)
    if isinstance(scale, str) or scale is None or not np.issubdtype(color.dtype, np.number):
        return continuous_colors(color)
    stops = [(float(p), c) for p, c in scale]
    pos = (color.astype(np.float64) - cmin) / max(cmax - cmin, 1e-12)
    n = len(stops) // 2
    idx = np.clip((pos * n).astype(int), 0, n - 1)
    return [stops[2 * i][1] for i in idx]


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
