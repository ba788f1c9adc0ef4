"""What a latent-target method predicts (I-JEPA, data2vec 2.0, NEPA), as numbers and pictures: per patch, the cosine
similarity between the prediction and its target, beside the cosine that the best constant guess (the mean target)
reaches; and a PCA-to-RGB of the targets next to the predictions, both projected on one PCA fitted to the targets,
so equal colours mean similar vectors.

Uses ``method.predict_latents(images, generator)`` (workbench/methods/ijepa.py, data2vec2.py, nepa.py), whose
contract is a dict with ``target`` and ``pred`` float [B, L, D] and ``mask`` [B, L] (1 = predicted patch).
The pixel counterpart, for MAE, is workbench/inspect/recon.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.inspect.images import image_grid, mask_overlay, to_hwc, upscale

LATENT_KEYS = ("target", "pred", "mask")
COLUMNS = ("original", "predicted patches", "cosine(pred, target)", "target PCA", "prediction PCA")


def check_latent_predictor(method: Any) -> None:
    """Raise ValueError unless ``method`` predicts latents (has ``predict_latents``)."""
    if not callable(getattr(method, "predict_latents", None)):
        name = getattr(method, "name", type(method).__name__)
        raise ValueError(f"method {name!r} does not predict latent targets; latent predictions need an I-JEPA, "
                         "data2vec 2.0 or NEPA run (for MAE's pixel targets use mae_reconstruction)")


@torch.no_grad()
def latent_predictions(method: Any, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                       seed: int = 0) -> dict[str, Any]:
    """Predict the latent targets of uint8 images [B, C, H, W] with one masking drawn from ``seed``.

    Returns ``target``, ``pred`` float [B, L, D] and ``mask`` [B, L] (CPU), ``cosine`` [B, L] (cosine of prediction
    and target per patch, NaN where nothing is predicted), ``mean_cosine`` (over predicted patches) and
    ``constant_cosine`` (the same for a constant guess: the mean target of the predicted patches of these images).
    """
    check_latent_predictor(method)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    from workbench.augment import normalize

    was_training = method.training
    method.eval()
    try:
        out = method.predict_latents(normalize(images, mean, std), generator=torch.Generator().manual_seed(int(seed)))
    finally:
        method.train(was_training)
    missing = [k for k in LATENT_KEYS if k not in out]
    if missing:
        raise ValueError(f"predict_latents() returned no {missing}; expected keys {LATENT_KEYS}")
    target, pred, mask = (out[k].detach().float().cpu() for k in LATENT_KEYS)
    on = mask > 0.5
    if not bool(on.any()):
        raise ValueError("predict_latents() predicted no patch (mask is all zero)")
    cosine = F.cosine_similarity(pred, target, dim=-1)
    constant = target[on].mean(0)
    constant_cos = F.cosine_similarity(target[on], constant.expand_as(target[on]), dim=-1)
    return {"target": target, "pred": pred, "mask": mask, "cosine": cosine.masked_fill(~on, float("nan")),
            "mean_cosine": float(cosine[on].mean()), "constant_cosine": float(constant_cos.mean())}


def _pca_pictures(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Targets and predictions [B, L, D] on the first three principal components of the targets (min-max of the
    targets' projections, clipped) -> RGB float [B, h, w, 3] each; unpredicted patches of ``pred`` are black."""
    from workbench.inspect.pca import pca

    b, L, d = target.shape
    mu, comps = pca(target.reshape(b * L, d), 3)
    t = (target.reshape(b * L, d) - mu) @ comps
    p = (pred.reshape(b * L, d) - mu) @ comps
    lo, hi = t.min(0).values, t.max(0).values
    scale = (hi - lo).clamp_min(1e-12)
    t_rgb = ((t - lo) / scale).clamp(0, 1).reshape(b, *grid, 3)
    p_rgb = ((p - lo) / scale).clamp(0, 1).reshape(b, *grid, 3) * (mask > 0.5).reshape(b, *grid, 1)
    return t_rgb.numpy(), p_rgb.numpy()


def latent_grid(pred: dict[str, Any], images: torch.Tensor, grid: tuple[int, int], zoom: int = 4) -> np.ndarray:
    """One row per image of uint8 ``images`` [B, C, H, W], columns :data:`COLUMNS`: the image, its predicted patches
    (the others grayed), the per-patch cosine (inferno, -1 black to 1 bright; unpredicted patches black), the
    targets' PCA colours and the predictions' on the same axes -> uint8 [H', W', 3] (nearest ``zoom``)."""
    from workbench.inspect.attention import to_grid, upsample
    from workbench.inspect.colors import colormap

    size = tuple(images.shape[-2:])
    mask = pred["mask"]
    hidden = upsample(to_grid(1.0 - mask, grid), size, "nearest").numpy() > 0.5
    cos = upsample(to_grid(torch.nan_to_num(pred["cosine"], nan=-1.0), grid), size, "nearest").numpy()
    heat = (colormap((cos + 1) / 2) * 255).round().astype(np.uint8)
    t_rgb, p_rgb = _pca_pictures(pred["target"], pred["pred"], mask, grid)

    def blocks(rgb: np.ndarray) -> np.ndarray:
        x = upsample(torch.from_numpy(rgb).permute(2, 0, 1), size, "nearest").permute(1, 2, 0)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    rows = []
    for i in range(images.shape[0]):
        cells = [to_hwc(images[i]), mask_overlay(images[i], hidden[i], (128, 128, 128), 0.85), heat[i],
                 blocks(t_rgb[i]), blocks(p_rgb[i])]
        rows.append([upscale(c, zoom) for c in cells])
    return image_grid(rows)
