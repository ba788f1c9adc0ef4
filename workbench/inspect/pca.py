"""Principal components of feature rows, one implementation for the 2-D embedding view, UMAP's pre-reduction
and the PCA-of-patch-features picture: ``torch.pca_lowrank`` (randomized SVD), seeded so a view looks the same
every time, with a sign convention so colours and axes do not flip between calls.
"""
from __future__ import annotations

import torch


def pca(x: torch.Tensor, k: int, max_fit: int | None = None, seed: int = 0, oversample: int = 10,
        niter: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` principal directions of rows x [N, D] -> (mean [D], components [D, k]), float32 on the CPU;
    project with ``(x - mean) @ components``.

    Fitted on at most ``max_fit`` rows (a seeded random subset), by ``torch.pca_lowrank`` with ``k + oversample``
    columns and ``niter`` power iterations under a forked, seeded RNG (deterministic; the global RNG is left as
    it was): exact PCA to float precision on the inspection views' data. Each component's sign makes its
    largest-magnitude projection of the fitted rows positive; components past min(N, D) are zero.
    """
    x = x.detach().float().cpu()
    if x.ndim != 2:
        raise ValueError(f"pca: rows must be [N, D], got shape {tuple(x.shape)}")
    fit = x
    if max_fit is not None and x.shape[0] > max_fit:
        fit = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_fit]]
    mean = fit.mean(dim=0)
    centered = fit - mean
    q = min(k + oversample, *centered.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(centered, q=q, center=False, niter=niter)
    comps = v[:, :min(k, q)]
    proj = centered @ comps
    sign = proj.gather(0, proj.abs().argmax(dim=0, keepdim=True)).sign().squeeze(0)
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    if comps.shape[1] < k:
        comps = torch.cat([comps, torch.zeros(x.shape[1], k - comps.shape[1])], dim=1)
    return mean, comps
