"""Batched augmentation operations: a whole batch on its device in one pass, per-sample parameters.

Every random op draws its per-sample parameters from an explicit ``torch.Generator`` (on the images'
device or on the CPU: draws happen on the generator's device and are moved) and returns them, so
widgets can show what was drawn and tests can replay each sample through
``torchvision.transforms.v2.functional``. Images are float ``[B, C, H, W]`` in [0, 1] with C = 1 or 3
(for one channel, saturation, hue and grayscale are the identity, as in torchvision).

Reference semantics (checked in tests/augment/test_ops.py):
- crop parameters follow ``torchvision.transforms.RandomResizedCrop.get_params`` (10 attempts with
  log-uniform aspect ratio, then the centre-crop fallback), vectorized over the batch;
- ``resized_crop`` matches ``torchvision.transforms.v2.functional.resized_crop(img, top, left, h, w,
  size, antialias=True)`` (bilinear; antialiased when downscaling, plain bilinear when upscaling);
- colour ops match ``adjust_brightness/contrast/saturation/hue``, ``rgb_to_grayscale``,
  ``gaussian_blur`` and ``solarize`` of torchvision v2 on float images.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from workbench.device import full_fp32

Params = dict[str, torch.Tensor]

# order of colour-jitter ops in the recorded permutation (as torchvision ColorJitter's fn_idx)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


# ----------------------------------------------------------------------------------------- random draws
def _rand(generator: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape`` drawn on the generator's device, moved to ``device`` (from a CPU generator
    to a GPU through pinned memory, without blocking the host)."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return to_device(u, device)


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; a CPU tensor goes to a CUDA device through pinned memory with ``non_blocking`` (a plain
    ``.to`` from pageable memory makes the host wait for the device's queue)."""
    device = torch.device(device)
    if x.device == device or (x.device.type == device.type and device.index is None):
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """Per-sample uniform values in [low, high): float32 [n]."""
    return low + (high - low) * _rand(generator, (n,), device)


def _coin(generator: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli(p) draws as bool [n] (``u < p``, as torchvision's ``torch.rand(1) < p``)."""
    return _rand(generator, (n,), device) < p


# ----------------------------------------------------------------------------------------- crop + resize
def sample_crop_params(batch: int, height: int | torch.Tensor, width: int | torch.Tensor, scale: Sequence[float],
                       ratio: Sequence[float], generator: torch.Generator, device: torch.device | str = "cpu",
                       attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop.get_params for a whole batch -> int64 [B, 4] rows (top, left, height, width).

    ``height``/``width``: one size for the batch, or int64 [B] per sample (full-size images of different
    sizes, the streaming path). Draws ``attempts`` (area, log-ratio) candidates per sample at once, keeps
    the first valid one, and falls back to torchvision's centre crop where none is valid. The draws do not
    depend on the sizes, so the same generator state gives the same boxes for same-size images either way.
    """
    device = torch.device(device)

    def size(v: int | torch.Tensor) -> torch.Tensor:  # float64 [B]; a Python int is filled on the device (no copy)
        if isinstance(v, torch.Tensor):
            return v.to(device=device, dtype=torch.float64).expand(batch)
        return torch.full((batch,), float(v), dtype=torch.float64, device=device)

    H, W = size(height), size(width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u = _rand(generator, (batch, attempts, 2), device).double()
    target_area = (H * W)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))  # round-half-even, as Python's round
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    any_valid = valid.any(dim=1)
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)  # first True (0 if none; masked below)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    pos = _rand(generator, (batch, 2), device).double()
    top = torch.floor(pos[:, 0] * (H - h + 1).clamp(min=1)).clamp(min=0)
    left = torch.floor(pos[:, 1] * (W - w + 1).clamp(min=1)).clamp(min=0)
    top = torch.minimum(top, (H - h).clamp(min=0))
    left = torch.minimum(left, (W - w).clamp(min=0))
    # torchvision's fallback: centre crop with the ratio clamped into range
    in_ratio = W / H
    lo_r, hi_r = min(ratio), max(ratio)
    fh = torch.where(in_ratio < lo_r, torch.round(W / lo_r), H)
    fw = torch.where(in_ratio > hi_r, torch.round(H * hi_r), W)
    fallback = torch.stack([torch.div(H - fh, 2, rounding_mode="floor"), torch.div(W - fw, 2, rounding_mode="floor"),
                            fh, fw], dim=1)
    out = torch.stack([top, left, h, w], dim=1)
    return torch.where(any_valid[:, None], out, fallback).long()


def _axis_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                  antialias: bool) -> torch.Tensor:
    """Resampling matrix float32 [B, out, in] for crop [start, start+length) resized to ``out_size``.

    Same filter as torch's bilinear (antialias) interpolation: triangle kernel, widened by the scale
    when downscaling with antialias, taps outside the crop dropped and weights renormalized (which is
    torch's edge clamping).
    """
    length = length.float()
    scale = length / out_size  # [B]
    wide = (scale >= 1.0) & antialias
    inv = torch.where(wide, 1.0 / scale, torch.ones_like(scale))
    i = torch.arange(out_size, dtype=torch.float32, device=start.device)
    center = scale[:, None] * (i[None, :] + 0.5)  # [B, out]
    j = torch.arange(in_size, dtype=torch.float32, device=start.device)[None, :] - start[:, None].float()  # [B, in]
    inside = (j >= 0) & (j < length[:, None])
    x = (j[:, None, :] + 0.5 - center[:, :, None]) * inv[:, None, None]
    w = (1.0 - x.abs()).clamp(min=0.0) * inside[:, None, :]
    return w / w.sum(dim=2, keepdim=True).clamp(min=1e-12)


def _separable(images: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """Per-sample separable linear map: out[b, c] = wy[b] @ images[b, c] @ wx[b]^T.

    images [B, C, H, W]; wy [B, oh, H]; wx [B, ow, W] -> [B, C, oh, ow]. The W contraction is one
    bmm over B; the H contraction a bmm over B*C with wy repeated per channel (small).
    """
    B, C, H, W = images.shape
    oh, ow = wy.shape[1], wx.shape[1]
    with full_fp32():  # IEEE float32 even where the model's matmuls run in TF32 (workbench.device.configure_cuda)
        tmp = torch.bmm(images.reshape(B, C * H, W), wx.transpose(1, 2))  # [B, C*H, ow]
        wyc = wy.repeat_interleave(C, dim=0) if C > 1 else wy  # [B*C, oh, H]
        return torch.bmm(wyc, tmp.reshape(B * C, H, ow)).reshape(B, C, oh, ow)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: Sequence[int] | int,
                 flip: torch.Tensor | None = None, antialias: bool = True) -> torch.Tensor:
    """Crop each image to its box and resize to ``size``, optionally flipping horizontally.

    images: float [B, C, H, W]; boxes: int64 [B, 4] (top, left, height, width); flip: bool [B].
    Returns float [B, C, oh, ow]; each sample equals torchvision v2
    ``resized_crop(img, *box, size, antialias=antialias)`` (then ``horizontal_flip`` where flipped).
    Two batched matmuls with per-sample resampling matrices (no Python loop over samples).
    """
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    _, _, H, W = images.shape
    boxes = to_device(boxes, images.device)
    wy = _axis_weights(boxes[:, 0], boxes[:, 2], H, oh, antialias)  # [B, oh, H]
    wx = _axis_weights(boxes[:, 1], boxes[:, 3], W, ow, antialias)  # [B, ow, W]
    if flip is not None:
        wx = torch.where(to_device(flip, images.device)[:, None, None], wx.flip(1), wx)
    return _separable(images, wy.to(images.dtype), wx.to(images.dtype))


def resized_crop_image(image: torch.Tensor, box: Sequence[int] | torch.Tensor, size: Sequence[int] | int,
                       flip: bool = False) -> torch.Tensor:
    """One image [C, H, W] (uint8 or float, any size) cropped to ``box`` (top, left, height, width), resized to
    ``size`` with antialiasing and flipped left-right where ``flip``.

    The per-image counterpart of :func:`resized_crop` for batches whose images differ in size (the streaming
    path decodes each at full size): torchvision v2 ``resized_crop`` itself, whose uint8 path keeps uint8 (the
    float result rounded). Same dtype and device as ``image``.
    """
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    top, left, h, w = (int(v) for v in box)
    out = TF.resized_crop(image, top, left, h, w, [oh, ow], antialias=True)
    return TF.horizontal_flip(out) if flip else out


def random_resized_crop(images: torch.Tensor, size: Sequence[int] | int, scale: Sequence[float],
                        ratio: Sequence[float], generator: torch.Generator, flip_p: float = 0.0,
                        antialias: bool = True) -> tuple[torch.Tensor, Params]:
    """RandomResizedCrop (+ RandomHorizontalFlip(flip_p)) on a batch.

    images float [B, C, H, W] -> (float [B, C, s, s], {"crop": int64 [B, 4] (top, left, h, w),
    "flip": bool [B]}).
    """
    B, _, H, W = images.shape
    boxes = sample_crop_params(B, H, W, scale, ratio, generator, images.device)
    flip = _coin(generator, B, flip_p, images.device)
    return resized_crop(images, boxes, size, flip, antialias), {"crop": boxes, "flip": flip}


def horizontal_flip(images: torch.Tensor, p: float, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
    """Flip each image left-right with probability p: float [B, C, H, W] -> same, {"flip": bool [B]}."""
    flip = _coin(generator, images.shape[0], p, images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images), {"flip": flip}


# ----------------------------------------------------------------------------------------- colour
def _col(v: torch.Tensor) -> torch.Tensor:
    """Per-sample [B] -> broadcastable [B, 1, 1, 1]."""
    return v.reshape(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (torchvision weights): float [B, 3, H, W] -> [B, 1, H, W]; 1 channel passes through."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend with a per-sample ratio [B]: (a * r + b * (1 - r)).clamp(0, 1)."""
    r = _col(ratio)
    return (a * r).add_(b * (1.0 - r)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample brightness factor [B]: (x * f).clamp(0, 1)."""
    return (images * _col(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample contrast factor [B]: blend with the mean grey level of each image."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample saturation factor [B]: blend with the grayscale image (identity for 1 channel)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample hue shift [B] in [-0.5, 0.5] (fraction of the colour wheel); identity for 1 channel.

    RGB -> HSV -> RGB with torchvision's hue definition (the max channel picks the sector: red, else
    green, else blue). The inverse uses the closed form channel = min + (max - min) * F(6h), with
    F_R = clamp(|6h - 3| - 1), F_G = clamp(2 - |6h - 2|), F_B = clamp(2 - |6h - 4|) on [0, 1]: the
    same function as torchvision's sector table, in fewer passes over the batch.
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    maxc = images.amax(dim=1)  # [B, H, W]
    minc = images.amin(dim=1)
    delta = maxc - minc
    inv = delta.clamp_min(1e-12).reciprocal_()  # numerators below are 0 wherever delta is 0
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))  # float 0/1 written directly (fast path)
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc)).mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    h6 = (g - b).mul_(is_r)
    h6 += (b - r).add_(delta, alpha=2.0).mul_(is_g)
    h6 += (r - g).add_(delta, alpha=4.0).mul_(is_b)
    h6 = h6.mul_(inv).add_(6.0 * factor.reshape(-1, 1, 1))  # hue in sixths, in (-3, 9)
    h6 = h6.sub_(torch.floor(h6 * (1.0 / 6.0)).mul_(6.0))  # mod 6 -> [0, 6)
    out = torch.empty_like(images)
    torch.sub(h6, 3.0, out=out[:, 0]).abs_().sub_(1.0)
    torch.sub(h6, 2.0, out=out[:, 1]).abs_().neg_().add_(2.0)
    torch.sub(h6, 4.0, out=out[:, 2]).abs_().neg_().add_(2.0)
    return out.clamp_(0.0, 1.0).mul_(delta.unsqueeze(1)).add_(minc.unsqueeze(1))


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_jitter(images: torch.Tensor, params: Params, inplace: bool = False,
                 used: Sequence[bool] = (True, True, True, True)) -> torch.Tensor:
    """Replay recorded colour-jitter params (see ``color_jitter``) on a batch (``inplace``: the batch may be
    overwritten).

    Pass k applies, to every selected sample, op ``order[b, k]``. Brightness, contrast and saturation are one
    blend ``clamp(x * r + other * (1 - r))`` (other = 0, the mean grey level, the grey image), so a pass is one
    full-batch blend and one full-batch hue shift, each kept by a per-sample mask (``torch.where``): no host sync,
    no data-dependent shape, the same values as applying each sample's op alone. ``used``: which of brightness,
    contrast, saturation, hue can differ from the identity (known from the config, so ops that cannot are skipped
    without looking at the draws).
    """
    applied, order = params["jitter"], params["jitter_order"]
    factors = [params[name] for name in JITTER_OPS]
    identity = (1.0, 1.0, 1.0, 0.0)
    one_channel = images.shape[1] == 1  # saturation and hue are the identity on one channel
    ops = [o for o in (range(2) if one_channel else range(4)) if used[o]]
    if not ops:
        return images
    active = {o: applied & (factors[o] != identity[o]) for o in ops}
    none = torch.zeros_like(applied)
    for o in range(4):
        active.setdefault(o, none)
    blend_ops = any(o < 3 for o in ops)
    out = images
    for k in range(4):
        step = order[:, k]
        sel = {o: active[o] & (step == o) for o in range(4)}  # bool [B]: sample does op o in pass k
        if blend_ops:
            blend = sel[0] | sel[1] | (sel[2] if not one_channel else torch.zeros_like(sel[0]))
            ratio = torch.where(sel[0], factors[0], torch.ones_like(factors[0]))
            ratio = torch.where(sel[1], factors[1], ratio)
            gray = grayscale(out)  # [B, 1, H, W]
            other = torch.where(_col(sel[1]), gray.mean(dim=(1, 2, 3), keepdim=True),
                                torch.zeros_like(gray[:, :, :1, :1]))
            if not one_channel:
                ratio = torch.where(sel[2], factors[2], ratio)
                other = torch.where(_col(sel[2]), gray, other)
            out = torch.where(_col(blend), _blend(out, other, ratio), out)
        if 3 in ops:
            out = torch.where(_col(sel[3]), adjust_hue(out, factors[3]), out)
    return out


def color_jitter(images: torch.Tensor, p: float, brightness: float, contrast: float, saturation: float,
                 hue: float, generator: torch.Generator, inplace: bool = False) -> tuple[torch.Tensor, Params]:
    """RandomApply(ColorJitter(b, c, s, h), p) on a batch, each sample with its own random op order.

    Factors as torchvision: uniform in [max(0, 1 - x), 1 + x] for brightness/contrast/saturation,
    uniform in [-hue, hue] for hue. Returns (float [B, C, H, W], {"jitter": bool [B] applied,
    "jitter_order": int64 [B, 4] op ids in application order (0 brightness, 1 contrast,
    2 saturation, 3 hue), "brightness"/"contrast"/"saturation"/"hue": float [B]}).
    Samples not jittered get the identity factors (1, 1, 1, 0) in the record.
    """
    B, dev = images.shape[0], images.device
    applied = _coin(generator, B, p, dev)
    order = torch.argsort(_rand(generator, (B, 4), dev), dim=1)
    params: Params = {"jitter": applied, "jitter_order": order}
    for name, x in zip(JITTER_OPS[:3], (brightness, contrast, saturation)):
        f = _uniform(generator, B, max(0.0, 1.0 - x), 1.0 + x, dev)
        params[name] = torch.where(applied, f, torch.ones_like(f))
    hf = _uniform(generator, B, -hue, hue, dev)
    params["hue"] = torch.where(applied, hf, torch.zeros_like(hf))
    if p <= 0.0:  # decided by the config, not the draws: no host sync
        return images, params
    used = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return apply_jitter(images, params, inplace=inplace, used=used), params


def random_grayscale(images: torch.Tensor, p: float, generator: torch.Generator,
                     inplace: bool = False) -> tuple[torch.Tensor, Params]:
    """RandomGrayscale(p): selected samples become 3-channel luma (a full-batch mask; ``inplace``: the batch may be
    overwritten). Returns (images, {"grayscale": bool [B]})."""
    sel = _coin(generator, images.shape[0], p, images.device)
    if images.shape[1] == 1 or p <= 0.0:
        return images, {"grayscale": sel}
    gray = grayscale(images).expand(-1, images.shape[1], -1, -1)
    return torch.where(_col(sel), gray, images), {"grayscale": sel}


# ----------------------------------------------------------------------------------------- blur, solarize
def default_blur_kernel(size: int) -> int:
    """SimCLR's kernel size: about 10% of the view size, odd, at least 3."""
    k = int(0.1 * size)
    k = k + 1 if k % 2 == 0 else k
    return max(k, 3)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample normalized 1-D Gaussian kernels float [B, k] (torchvision's formula)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=sigma.dtype, device=sigma.device)
    return torch.softmax(-(x[None, :] / sigma[:, None]).pow(2), dim=1)


def _blur_matrices(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample 1-D convolution with reflect padding as matrices: kernels [B, k] -> float [B, size, size]."""
    B, k = kernels.shape
    pad = k // 2
    if pad >= size:
        raise ValueError(f"blur kernel size {k} is too large for {size}-pixel images (reflect padding needs "
                         f"kernel // 2 < size)")
    i = torch.arange(size, device=kernels.device)[:, None]
    t = torch.arange(k, device=kernels.device)[None, :]
    src = i + t - pad  # [size, k]
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
    mat = torch.zeros(B, size, size, dtype=kernels.dtype, device=kernels.device)
    return mat.scatter_add_(2, src.expand(B, size, k), kernels[:, None, :].expand(B, size, k))


def _blur_shifted(images: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
    """Separable blur as a weighted sum of k shifted copies of the reflect-padded batch (small kernels)."""
    B, C, H, W = images.shape
    k = kern.shape[1]
    pad = k // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    w = kern.reshape(B, 1, 1, 1, k)
    tmp = x[..., 0:W] * w[..., 0]
    for t in range(1, k):  # loop over kernel taps, not samples
        tmp.addcmul_(x[..., t:t + W], w[..., t])
    out = tmp[:, :, 0:H] * w[..., 0]
    for t in range(1, k):
        out.addcmul_(tmp[:, :, t:t + H], w[..., t])
    return out


def blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with per-sample sigma [B] and reflect padding; float [B, C, H, W].

    Same result as torchvision v2 ``gaussian_blur(img, [k, k], [s, s])``. Small kernels: weighted sum
    of shifted copies; larger ones: two batched matmuls with per-sample blur matrices.
    """
    _, _, H, W = images.shape
    if kernel_size // 2 >= min(H, W):
        raise ValueError(f"blur kernel size {kernel_size} is too large for {H}x{W} images (reflect padding "
                         "needs kernel // 2 < size)")
    kern = gaussian_kernels(sigma.to(images.dtype), kernel_size)
    if kernel_size <= 7:
        return _blur_shifted(images, kern)
    ky = _blur_matrices(kern, H)
    kx = ky if W == H else _blur_matrices(kern, W)
    return _separable(images, ky, kx)


def random_blur(images: torch.Tensor, p: float, sigma_range: Sequence[float], kernel_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, Params]:
    """RandomApply(GaussianBlur(kernel_size, sigma_range), p): (images, {"blur": bool [B], "sigma": float [B]})."""
    B, dev = images.shape[0], images.device
    sel = _coin(generator, B, p, dev)
    sigma = _uniform(generator, B, sigma_range[0], sigma_range[1], dev)
    if p <= 0.0:  # decided by the config, not the draws: no host sync
        return images, {"blur": sel, "sigma": sigma}
    # the whole batch is blurred and the selected samples kept (a mask, not a subset: no host sync)
    return torch.where(_col(sel), blur(images, sigma, kernel_size), images), {"blur": sel, "sigma": sigma}


def solarize(images: torch.Tensor, threshold: float, selected: torch.Tensor | None = None) -> torch.Tensor:
    """Invert pixels >= threshold (x -> 1 - x) in the selected samples (bool [B]; all when None)."""
    hit = (images >= threshold).to(images.dtype)
    if selected is not None:
        hit = hit.mul_(_col(selected.to(images.dtype)))
    return images.sub(hit).abs_()  # |x - 1| = 1 - x where hit, |x - 0| = x elsewhere


def random_solarize(images: torch.Tensor, p: float, threshold: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, Params]:
    """RandomSolarize(threshold, p): (images, {"solarize": bool [B]})."""
    sel = _coin(generator, images.shape[0], p, images.device)
    if p <= 0.0:  # decided by the config, not the draws: no host sync
        return images, {"solarize": sel}
    return solarize(images, threshold, sel), {"solarize": sel}


# ----------------------------------------------------------------------------------------- dtype, normalize
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1] (x / 255 as torchvision's to_dtype(scale=True)); floats pass."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).mul_(1.0 / 255.0)


def normalize_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    inplace: bool = False) -> torch.Tensor:
    """(x - mean) / std per channel; a 1-item mean/std applies to every channel. float [B, C, H, W].
    ``inplace`` overwrites ``images`` (one pass over memory instead of two)."""
    C = images.shape[1]
    if len(mean) not in (1, C) or len(std) not in (1, C):
        raise ValueError(f"normalize: mean {tuple(mean)} / std {tuple(std)} must have 1 or {C} values "
                         f"for {C}-channel images")
    m, s = _stats_tensors(tuple(float(v) for v in mean), tuple(float(v) for v in std), images.dtype, images.device)
    return (images.sub_(m) if inplace else images.sub(m)).div_(s)


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats_tensors(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std as [1, C, 1, 1] tensors, built once per (values, dtype, device): a host -> device copy per call
    would make every view wait for the copy on a GPU."""
    key = (mean, std, dtype, device)
    hit = _CONSTANTS.get(key)
    if hit is None:
        hit = _CONSTANTS[key] = (torch.tensor(mean, dtype=dtype, device=device).reshape(1, -1, 1, 1),
                                 torch.tensor(std, dtype=dtype, device=device).reshape(1, -1, 1, 1))
    return hit
