"""MAE reconstructions as pictures: original, masked input, reconstruction, reconstruction with the
visible patches pasted back, for a chosen mask ratio and seed.

Uses ``MAE.reconstruct(images, mask_ratio, generator)`` (workbench/methods/mae.py), whose contract is a dict
with ``pred_images``, ``pasted_images``, ``masked_images`` (normalised float [B, C, H, W]), ``mask`` [B, L]
(1 = masked), ``mask_images`` [B, 1, H, W] and ``loss`` (float).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from workbench.inspect.images import denormalize, image_grid, upscale

RECON_KEYS = ("pred_images", "pasted_images", "mask", "mask_images", "loss")
COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


def check_reconstructor(method: Any) -> None:
    """Raise ValueError unless ``method`` can reconstruct (an MAE with ``reconstruct``)."""
    if not callable(getattr(method, "reconstruct", None)):
        name = getattr(method, "name", type(method).__name__)
        raise ValueError(f"reconstructions need an MAE run; this run's method is {name!r}, which does not "
                         "reconstruct pixels (pretrain with method='mae' and a ViT backbone)")


@torch.no_grad()
def mae_reconstruction(method: Any, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                       mask_ratio: float = 0.75, seed: int = 0, mask_gray: int = 128) -> dict[str, Any]:
    """Reconstruct uint8 images [B, C, H, W] with an MAE method (one masking drawn from ``seed``).

    Returns uint8 tensors [B, C, H, W] ``original``, ``masked`` (masked patches gray), ``reconstruction``,
    ``pasted`` (visible patches from the original), plus ``mask`` float [B, L] (1 = masked) and ``loss``.
    """
    check_reconstructor(method)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    backbone = getattr(method, "backbone", None)
    size = getattr(backbone, "image_size", None)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} px but the MAE was trained on "
                         f"{size}x{size} px; resize them or load the data with size={size}")
    from workbench.augment import normalize

    x = normalize(images, mean, std)
    g = torch.Generator().manual_seed(int(seed))
    out = method.reconstruct(x, mask_ratio=mask_ratio, generator=g)
    missing = [k for k in RECON_KEYS if k not in out]
    if missing:
        raise ValueError(f"reconstruct() returned no {missing}; expected keys {RECON_KEYS}")
    mask_px = out["mask_images"].float().cpu() > 0.5  # [B, 1, H, W]
    masked = images.clone()
    masked[mask_px.expand_as(masked)] = mask_gray
    return {
        "original": images.cpu(),
        "masked": masked,
        "reconstruction": denormalize(out["pred_images"], mean, std),
        "pasted": denormalize(out["pasted_images"], mean, std),
        "mask": out["mask"].float().cpu(),
        "loss": float(out["loss"]),
    }


def reconstruction_grid(rec: dict[str, Any], zoom: int = 4) -> np.ndarray:
    """One row per image, columns :data:`COLUMNS` -> uint8 [H, W, 3] picture (nearest ``zoom``)."""
    from workbench.inspect.images import to_hwc

    rows = []
    for i in range(rec["original"].shape[0]):
        rows.append([upscale(to_hwc(rec[k][i]), zoom) for k in ("original", "masked", "reconstruction", "pasted")])
    return image_grid(rows)


@torch.no_grad()
def reconstruction_losses(method: Any, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                          mask_ratio: float | None = None, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """MAE loss on the masked patches of uint8 images [N, C, H, W] (e.g. held-out test images), with baselines.

    The masks are drawn from ``seed`` (the same masks for every model given the same images and seed), batch by
    batch. Returns ``loss`` (the model's, as in training: mean squared error per masked patch, in the training
    target space: per-patch normalised pixels with ``norm_pix_loss``), ``mean_patch_loss`` (predicting, for
    every masked patch, the mean target patch of these images: the best constant guess) and ``zero_loss``
    (predicting 0 in target space: with ``norm_pix_loss`` that is each patch's own flat mean colour), plus
    ``masked_patches`` (how many patches were scored).
    """
    check_reconstructor(method)
    from workbench.augment import normalize
    from workbench.methods.mae import mae_target, patchify

    was_training = method.training
    method.eval()
    p = method.backbone.patch_size
    norm_pix = bool(getattr(method.config, "norm_pix_loss", True))
    ratio = method.config.mask_ratio if mask_ratio is None else mask_ratio
    g = torch.Generator().manual_seed(int(seed))
    model_sum, count, targets, masks = 0.0, 0.0, [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start:start + batch_size], mean, std)
            out = method.reconstruct(x, mask_ratio=ratio, generator=g)
            m = out["mask"].float()
            model_sum += out["loss"] * float(m.sum())
            count += float(m.sum())
            targets.append(mae_target(patchify(x, p), norm_pix))
            masks.append(m)
    finally:
        method.train(was_training)
    t, m = torch.cat(targets), torch.cat(masks)  # [N, L, P], [N, L]
    w = m.unsqueeze(-1)
    mean_patch = (t * w).sum(dim=(0, 1)) / m.sum().clamp_min(1)  # [P]
    per_patch_mean = ((t - mean_patch) ** 2).mean(-1)
    per_patch_zero = (t ** 2).mean(-1)
    total = m.sum().clamp_min(1)
    return {"loss": model_sum / max(count, 1.0), "mean_patch_loss": float((per_patch_mean * m).sum() / total),
            "zero_loss": float((per_patch_zero * m).sum() / total), "masked_patches": int(m.sum())}
