"""View generation: uint8 images -> the normalized views of an AugmentConfig, with the drawn params."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from workbench.augment import ops
from workbench.augment.presets import AugmentConfig, ViewOps


@dataclass
class ViewBatch:
    """Views of one batch: ``views[i]`` float [B, C, s_i, s_i] normalized; ``params[i]`` the dict of
    per-sample tensors drawn for view i (see ``view_params_doc``); the first ``num_global`` views are global."""

    views: list[torch.Tensor]
    params: list[dict[str, torch.Tensor]]
    num_global: int


view_params_doc = {
    "crop": "int64 [B, 4] crop box (top, left, height, width) in input pixels",
    "flip": "bool [B] flipped left-right",
    "jitter": "bool [B] colour jitter applied",
    "jitter_order": "int64 [B, 4] jitter op ids in application order (0 brightness, 1 contrast, 2 saturation, 3 hue)",
    "brightness": "float [B] brightness factor (1 = unchanged)",
    "contrast": "float [B] contrast factor (1 = unchanged)",
    "saturation": "float [B] saturation factor (1 = unchanged)",
    "hue": "float [B] hue shift (0 = unchanged)",
    "grayscale": "bool [B] converted to grayscale",
    "blur": "bool [B] blurred",
    "sigma": "float [B] blur sigma drawn (used where blur is True)",
    "solarize": "bool [B] solarized",
}


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Eval-time transform: uint8 (or [0,1] float) [B, C, H, W] -> float32 (x/255 - mean) / std."""
    return ops.normalize_float(ops.to_float(images), mean, std)


def channel_values(values: Sequence[float] | float, channels: int, what: str = "mean") -> tuple[float, ...]:
    """A per-channel normalisation statistic: one number, or one per channel -> a tuple of ``channels`` floats
    (``what`` names it in the error)."""
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise ValueError(f"{what}={vals} has {len(vals)} entries for {channels}-channel images; "
                         "pass one value per channel or a single value")
    return vals


def apply_view(images: torch.Tensor, view: ViewOps, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """One view of a float [0,1] batch [B, C, H, W] (before normalization) and its params.

    Order as the torchvision recipes: resized crop + flip, colour jitter, grayscale, blur, solarize.
    Parameters are drawn in a fixed order, so a seeded generator reproduces the views exactly.
    """
    out, params = ops.random_resized_crop(images, view.size, view.scale, view.ratio, generator, view.flip_p)
    # the crop wrote a fresh tensor: the colour ops may overwrite it (on CPU every full-batch copy costs)
    out, p = ops.color_jitter(out, view.jitter_p, view.brightness, view.contrast, view.saturation, view.hue,
                              generator, inplace=True)
    params.update(p)
    out, p = ops.random_grayscale(out, view.grayscale_p, generator, inplace=True)
    params.update(p)
    out, p = ops.random_blur(out, view.blur_p, view.blur_sigma, view.kernel_size, generator)
    params.update(p)
    out, p = ops.random_solarize(out, view.solarize_p, view.solarize_threshold, generator)
    params.update(p)
    return out, params


def generate_views(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> ViewBatch:
    """All views of ``config`` for a batch of uint8 images [B, C, H, W] on any device.

    The generator must live on the images' device or on the CPU. Returns normalized float32 views on
    the images' device, one params dict per view (tensors on that device), and ``config.num_global``.
    """
    if images.ndim != 4:
        raise ValueError(f"generate_views: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"generate_views: images must have 1 or 3 channels, got {images.shape[1]}")
    gdev = generator.device
    idev = images.device
    if gdev.type != "cpu" and (gdev.type != idev.type or (gdev.index or 0) != (idev.index or 0)):
        raise ValueError(f"generate_views: the generator is on {gdev} but the images are on {images.device}; "
                         "use a CPU generator or one on the images' device")
    x = ops.to_float(images)
    views, params = [], []
    for view in config.views:
        out, p = apply_view(x, view, generator)
        views.append(ops.normalize_float(out, config.mean, config.std, inplace=True))  # out is apply_view's own
        params.append(p)
    return ViewBatch(views=views, params=params, num_global=config.num_global)
