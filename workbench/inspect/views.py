"""Augmentation pictures: each view beside its source with the drawn crop box, captions made from the
parameters ``generate_views`` drew, crops shown at their true relative size, and MAE / I-JEPA masks
drawn over images.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from workbench.inspect.colors import palette_rgb
from workbench.inspect.images import denormalize, display_scale, image_grid, mask_overlay, to_hwc, upscale


def caption(params: dict[str, torch.Tensor], i: int) -> str:
    """Short text of what was drawn for sample ``i`` of one view's params (crop box, flip, jitter factors,
    grayscale, blur sigma, solarize)."""
    parts = []
    if "crop" in params:
        t, l, h, w = (int(v) for v in params["crop"][i])
        parts.append(f"crop {h}x{w}@({t},{l})")
    if "flip" in params and bool(params["flip"][i]):
        parts.append("flip")
    if "jitter" in params and bool(params["jitter"][i]):
        vals = []
        for key, tag in (("brightness", "b"), ("contrast", "c"), ("saturation", "s")):
            if key in params:
                vals.append(f"{tag}{float(params[key][i]):.2f}")
        if "hue" in params:
            vals.append(f"h{float(params['hue'][i]):+.2f}")
        parts.append("jitter " + " ".join(vals))
    if "grayscale" in params and bool(params["grayscale"][i]):
        parts.append("gray")
    if "blur" in params and bool(params["blur"][i]):
        parts.append(f"blur σ{float(params['sigma'][i]):.2f}")
    if "solarize" in params and bool(params["solarize"][i]):
        parts.append("solarize")
    return ", ".join(parts) if parts else "identity"


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[int]], zoom: int = 1,
               colors: Sequence[tuple[int, int, int]] | None = None, width: int = 2) -> np.ndarray:
    """Draw (top, left, height, width) boxes (input pixels) on a uint8 HWC image zoomed by ``zoom``, box j in
    colors[j] (default: the categorical palette)."""
    from PIL import Image, ImageDraw

    colors = colors or palette_rgb()

    pil = Image.fromarray(upscale(to_hwc(image), zoom))
    d = ImageDraw.Draw(pil)
    for j, (t, l, h, w) in enumerate(boxes):
        d.rectangle((l * zoom, t * zoom, (l + w) * zoom - 1, (t + h) * zoom - 1), outline=colors[j % len(colors)],
                    width=width)
    return np.asarray(pil)


def view_images(views: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> list[torch.Tensor]:
    """Normalised views (float [B, C, s, s] each) -> uint8 [B, C, s, s] each, for display."""
    return [denormalize(v, mean, std) for v in views]


def augmentation_grid(images: torch.Tensor, config: Any, seed: int = 0, zoom: int | None = None,
                      title: str | None = None) -> tuple[np.ndarray, list[list[str]], Any]:
    """Views of uint8 images [N, C, H, W] under an AugmentConfig, drawn from ``seed``.

    Returns (picture uint8 [H', W', 3]: one row per image, the original (zoomed to about 128 px unless ``zoom``)
    with each view's crop box in the view's colour, then the views at their true relative size, column headings
    above and beside each row what was drawn for each view in its colour, ``title`` on top; captions[n][v];
    the ViewBatch).
    """
    from workbench.augment import generate_views

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to augment (empty selection)")
    g = torch.Generator().manual_seed(int(seed))
    vb = generate_views(images, config, g)
    shown = view_images(vb.views, config.mean, config.std)
    size = images.shape[-1]
    zoom = zoom or display_scale(size, 128)
    gsize = max(v.size for v in config.views)
    vzoom = max(1, int(round(size * zoom / gsize)))  # the largest view is shown as large as the original
    rows, captions = [], []
    for n in range(images.shape[0]):
        boxes = [p["crop"][n].tolist() for p in vb.params]
        row = [draw_boxes(to_hwc(images[n]), boxes, zoom)]
        row += [upscale(to_hwc(v[n]), vzoom) for v in shown]
        rows.append(row)
        captions.append([caption(p, n) for p in vb.params])
    pal = palette_rgb()
    heads = ["image, crop boxes"] + [f"view {v + 1} ({'global' if v < config.num_global else 'local'}, "
                                     f"{view.size} px)" for v, view in enumerate(config.views)]
    heads += [f"Gram teacher: view {v + 1} at {view.size} px" for v, view in enumerate(config.gram_views)]
    notes = [[(f"v{v + 1}: {c}", pal[v % len(pal)]) for v, c in enumerate(row)] for row in captions]
    return image_grid(rows, titles=[heads], notes=notes, title=title), captions, vb


def patch_mask_pixels(mask: torch.Tensor, grid: tuple[int, int], image_size: int | tuple[int, int]) -> np.ndarray:
    """Per-patch values [B, L] -> per-pixel [B, H, W] (nearest: each patch covers its block of pixels)."""
    from workbench.inspect.attention import to_grid, upsample

    return upsample(to_grid(mask.float(), grid), image_size, "nearest").numpy()


def mae_mask_images(images: torch.Tensor, patch_size: int, mask_ratio: float = 0.75, seed: int = 0,
                    zoom: int = 1) -> tuple[list[np.ndarray], torch.Tensor]:
    """MAE random masks (``random_patch_mask``) over uint8 images [B, C, H, W]: masked patches gray.
    Returns (uint8 HWC pictures, mask float [B, L] 1 = masked)."""
    from workbench.augment import random_patch_mask

    b, _, H, W = images.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the {H}x{W} images")
    grid = (H // patch_size, W // patch_size)
    pm = random_patch_mask(b, grid[0] * grid[1], mask_ratio, torch.Generator().manual_seed(int(seed)))
    px = patch_mask_pixels(pm.mask, grid, (H, W))
    out = [upscale(mask_overlay(images[i], px[i] > 0.5, (128, 128, 128), 0.85), zoom) for i in range(b)]
    return out, pm.mask


def ijepa_mask_images(images: torch.Tensor, patch_size: int, seed: int = 0, zoom: int = 1,
                      **mask_options: Any) -> tuple[list[np.ndarray], Any]:
    """I-JEPA multi-block masks (``multiblock_masks``) over uint8 images: context patches tinted blue, each
    target block in its own colour. Returns (uint8 HWC pictures, BlockMasks)."""
    from workbench.augment import multiblock_masks

    b, _, H, W = images.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the {H}x{W} images")
    grid = (H // patch_size, W // patch_size)
    L = grid[0] * grid[1]
    bm = multiblock_masks(b, grid, torch.Generator().manual_seed(int(seed)), **mask_options)
    ctx = torch.zeros(b, L).scatter_(1, bm.context, 1.0)
    ctx_px = patch_mask_pixels(ctx, grid, (H, W))
    out, pal = [], palette_rgb()
    for i in range(b):
        pic = mask_overlay(images[i], ctx_px[i] > 0.5, pal[0], 0.45)
        for t in range(bm.targets.shape[1]):
            tm = torch.zeros(1, L).scatter_(1, bm.targets[i:i + 1, t], 1.0)
            pic = mask_overlay(pic, patch_mask_pixels(tm, grid, (H, W))[0] > 0.5, pal[(t + 1) % len(pal)], 0.55)
        out.append(upscale(pic, zoom))
    return out, bm
