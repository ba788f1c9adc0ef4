"""View generation: uint8 images -> the normalized views of an AugmentConfig, with the drawn params."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from workbench.augment import ops
from workbench.augment.ops import Params
from workbench.augment.presets import AugmentConfig, ViewOps


@dataclass
class ViewBatch:
    """Views of one batch: ``views[i]`` float [B, C, s_i, s_i] normalized; ``params[i]`` the dict of
    per-sample tensors drawn for view i (see ``view_params_doc``); the first ``num_global`` views are global; the
    last ``num_gram`` are the global views' Gram-teacher renderings (``AugmentConfig.gram_views``: the same crop
    box and flip, larger, no colour op; their params are the global views' geometry)."""

    views: list[torch.Tensor]
    params: list[dict[str, torch.Tensor]]
    num_global: int
    num_gram: int = 0


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


def sample_geometry(batch: int, height: int | torch.Tensor, width: int | torch.Tensor, config: AugmentConfig,
                    generator: torch.Generator, device: torch.device | str = "cpu") -> list[Params]:
    """The geometry of every view of a batch: per view {"crop": int64 [B, 4] (top, left, h, w), "flip": bool [B]},
    drawn view by view (crop, then flip) from ``generator`` onto ``device``.

    ``height``/``width``: the source images' size, one int for the batch or int64 [B] per sample (full-size images
    of different sizes). The one place crop parameters are drawn: the in-memory path (``generate_views``) and the
    streaming path (workers that decode full images) call it with the same seed and get the same boxes for
    same-size images.
    """
    out = []
    for view in config.views:
        boxes = ops.sample_crop_params(batch, height, width, view.scale, view.ratio, generator, device)
        out.append({"crop": boxes, "flip": ops._coin(generator, batch, view.flip_p, torch.device(device))})
    return out


def rendered_views(config: AugmentConfig, geometry: list[Params]) -> list[tuple[ViewOps, Params]]:
    """What each crop of a batch renders, in the ViewBatch's order: (view, its geometry) for the ``num_views``
    views of ``config`` (``geometry[i]`` = view i's, as ``sample_geometry`` draws them; entries past them are
    ignored), then for each Gram-teacher view (``config.gram_views``) its global view's geometry at the larger
    size: the one place "the same crop, larger" is defined."""
    geometry = geometry[:config.num_views]
    return list(zip(config.views, geometry)) + list(zip(config.gram_views, geometry[:config.num_global]))


def crop_images(images: Sequence[torch.Tensor], geometry: list[Params], config: AugmentConfig) -> list[torch.Tensor]:
    """The crops of every view (Gram-teacher renderings last, ``rendered_views``) from images of any sizes
    (``images[b]`` [C, H_b, W_b], uint8 decoded at full size): a list over views of [B, C, s, s] with the images'
    dtype and device (``ops.resized_crop_image`` per image and view)."""
    views = []
    for view, g in rendered_views(config, geometry):
        boxes, flips = g["crop"].tolist(), g["flip"].tolist()
        views.append(torch.stack([ops.resized_crop_image(im, boxes[b], view.size, flips[b])
                                  for b, im in enumerate(images)]))
    return views


def apply_colour(images: torch.Tensor, view: ViewOps, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
    """The colour ops of one view on its float [0, 1] crops [B, C, s, s], which they may overwrite: colour jitter,
    grayscale, blur, solarize (the torchvision recipes' order), parameters drawn in that fixed order."""
    out, params = ops.color_jitter(images, view.jitter_p, view.brightness, view.contrast, view.saturation, view.hue,
                                   generator, inplace=True)
    out, p = ops.random_grayscale(out, view.grayscale_p, generator, inplace=True)
    params.update(p)
    out, p = ops.random_blur(out, view.blur_p, view.blur_sigma, view.kernel_size, generator)
    params.update(p)
    out, p = ops.random_solarize(out, view.solarize_p, view.solarize_threshold, generator)
    params.update(p)
    return out, params


def _check_generator(generator: torch.Generator, device: torch.device, where: str) -> None:
    gdev = generator.device
    if gdev.type != "cpu" and (gdev.type != device.type or (gdev.index or 0) != (device.index or 0)):
        raise ValueError(f"{where}: the generator is on {gdev} but the images are on {device}; "
                         "use a CPU generator or one on the images' device")


def finish_views(crops: list[torch.Tensor], geometry: list[Params], config: AugmentConfig,
                 generator: torch.Generator) -> ViewBatch:
    """Views from their crops (one [B, C, s, s] per view of ``rendered_views``, uint8 or float [0, 1], already
    cropped and flipped as ``geometry`` records): each view's colour ops with parameters from ``generator``, then
    normalisation; the Gram-teacher crops are only normalised (they draw nothing). Float crops are overwritten.
    Returns the ViewBatch with the geometry and colour parameters of each view."""
    _check_generator(generator, crops[0].device, "finish_views")
    views, params = [], []
    for i, ((view, g), x) in enumerate(zip(rendered_views(config, geometry), crops)):
        out, p = (ops.to_float(x), {}) if i >= config.num_views else apply_colour(ops.to_float(x), view, generator)
        views.append(ops.normalize_float(out, config.mean, config.std, inplace=True))  # out is ours (or overwritable)
        params.append({**{k: ops.to_device(v, out.device) for k, v in g.items()}, **p})
    return ViewBatch(views=views, params=params, num_global=config.num_global, num_gram=len(config.gram_views))


def generate_views(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                   geometry_generator: torch.Generator | None = None) -> ViewBatch:
    """All views of ``config`` for a batch of uint8 images [B, C, H, W] on any device.

    Crop boxes and flips of every view are drawn first (``sample_geometry``, from ``geometry_generator`` when
    given, else from ``generator``), then each view's colour parameters from ``generator``. Generators must
    live on the images' device or on the CPU. Returns normalized float32 views on the images' device, one params
    dict per view (tensors on that device), and ``config.num_global``.
    """
    if images.ndim != 4:
        raise ValueError(f"generate_views: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"generate_views: images must have 1 or 3 channels, got {images.shape[1]}")
    geo = geometry_generator if geometry_generator is not None else generator
    for g in (generator, geo):
        _check_generator(g, images.device, "generate_views")
    B, _, H, W = images.shape
    geometry = sample_geometry(B, H, W, config, geo, images.device)
    x = ops.to_float(images)
    crops = [ops.resized_crop(x, g["crop"], view.size, g["flip"]) for view, g in rendered_views(config, geometry)]
    return finish_views(crops, geometry, config, generator)
