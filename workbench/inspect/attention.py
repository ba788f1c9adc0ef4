"""ViT attention views: CLS-to-patch attention per layer and head, DINO's thresholded attention mask,
attention rollout (Abnar & Zuidema 2020), upsampling to image size and overlays; the norms of the output tokens
(patches, registers, CLS) with the high-norm outlier statistic of "Vision Transformers Need Registers".

Attention tensors are the backbone's ``attention_maps(x)``: one softmax tensor per layer, [B, heads, T, T]
with T = P + L: P prefix tokens (CLS first, then any register tokens, as in DINOv2 with registers), then the L
patches in row-major order. Register tokens take part in the attention but are not patches: every patch view
reads the CLS row at the patch columns only (``num_prefix`` = P; :func:`num_prefix_tokens` finds it from the
grid).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

CNN_VIEWS_HINT = ("attention maps need a ViT backbone (vit_tiny, vit_small, a timm ViT); for a CNN use the "
                  "patch-similarity and PCA-of-patch-features views, which work for every backbone")


class NotAViTError(ValueError):
    """Raised when an attention view is asked of a backbone without attention (a CNN)."""


def check_vit(backbone: torch.nn.Module) -> None:
    """Raise NotAViTError (naming the views that do work) unless ``backbone`` is a ViT."""
    if getattr(backbone, "kind", None) != "vit" or not hasattr(backbone, "attention_maps"):
        raise NotAViTError(f"this backbone is a {type(backbone).__name__} ({getattr(backbone, 'kind', '?')}): "
                           + CNN_VIEWS_HINT)


def check_image_size(backbone: torch.nn.Module, images: torch.Tensor) -> None:
    """Raise ValueError unless images [B, C, H, W] match the backbone's input size and channels."""
    size, chans = getattr(backbone, "image_size", None), getattr(backbone, "in_chans", None)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} px but the backbone was trained on "
                         f"{size}x{size} px; resize the images (or load the data set with size={size})")
    if chans is not None and images.shape[1] != chans:
        raise ValueError(f"images have {images.shape[1]} channel(s) but the backbone takes {chans}")


@torch.no_grad()
def attention_maps(backbone: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer attention [B, heads, T, T] of normalised float images [B, C, H, W] (checks ViT and size)."""
    check_vit(backbone)
    check_image_size(backbone, images)
    return [a.float().cpu() for a in backbone.attention_maps(images)]


def num_prefix_tokens(maps: Sequence[torch.Tensor] | torch.Tensor, grid: tuple[int, int]) -> int:
    """P, the tokens before the patches (CLS + registers), of attention maps [B, heads, T, T] over a grid (h, w):
    T - h*w. A ValueError unless the CLS token is there (P >= 1)."""
    t, (h, w) = maps[0].shape[-1], grid
    if t - h * w < 1:
        raise ValueError(f"attention over {t} tokens does not hold a CLS token and a {h}x{w} patch grid")
    return t - h * w


def cls_attention(maps: Sequence[torch.Tensor] | torch.Tensor, layer: int = -1, num_prefix: int = 1) -> torch.Tensor:
    """CLS-to-patch attention of one layer: [B, heads, L] (the CLS query row, the patch key columns after the
    ``num_prefix`` prefix tokens: 1 for CLS alone, 1 + R with R register tokens)."""
    a = maps[layer]
    return a[:, :, 0, num_prefix:]


def head_attention(maps: Sequence[torch.Tensor], layer: int = -1, head: int | str = "mean",
                   num_prefix: int = 1) -> torch.Tensor:
    """CLS-to-patch attention [B, L] of ``head`` (an index) or the mean over heads (``"mean"``); ``num_prefix``
    as in :func:`cls_attention`."""
    a = cls_attention(maps, layer, num_prefix)
    if head == "mean":
        return a.mean(dim=1)
    h = int(head)
    if not -a.shape[1] <= h < a.shape[1]:
        raise ValueError(f"head={head} is out of range; this layer has {a.shape[1]} heads (or use 'mean')")
    return a[:, h]


def threshold_mass(attn: torch.Tensor, share: float = 0.6) -> torch.Tensor:
    """DINO's thresholded attention: bool [B, L] keeping the largest patches whose attention (renormalised
    to sum to 1) reaches ``share`` of the mass. As DINO's visualize_attention.py: sort ascending, keep
    where the cumulative mass exceeds 1 - share."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share={share} must be in (0, 1]")
    a = attn.float()
    val, idx = torch.sort(a, dim=-1)
    val = val / val.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    keep_sorted = torch.cumsum(val, dim=-1) > (1 - share)
    return torch.gather(keep_sorted, -1, torch.argsort(idx, dim=-1))


def attention_rollout(maps: Sequence[torch.Tensor], residual: float = 0.5, head_fusion: str = "mean",
                      start_layer: int = 0) -> torch.Tensor:
    """Attention rollout [B, T, T]: per layer A' = residual * I + (1 - residual) * fuse_heads(A), rows
    renormalised to sum to 1, multiplied from the first layer up (R = A'_L ... A'_1). The CLS row at the patch
    columns, ``R[:, 0, P:]`` (P prefix tokens), is the patch relevance map; registers stay in the product, as
    tokens that carry attention between layers. ``head_fusion``: mean, max or min over heads."""
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion={head_fusion!r} must be 'mean', 'max' or 'min'")
    result = None
    for a in list(maps)[start_layer:]:
        a = a.float()
        fused = {"mean": a.mean(dim=1), "max": a.amax(dim=1), "min": a.amin(dim=1)}[head_fusion]
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype).expand_as(fused)
        a2 = residual * eye + (1 - residual) * fused
        a2 = a2 / a2.sum(dim=-1, keepdim=True)
        result = a2 if result is None else a2 @ result
    if result is None:
        raise ValueError("attention_rollout: no layers given")
    return result


def to_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-patch values [B, L] (row-major) -> [B, h, w]."""
    h, w = grid
    if values.shape[-1] != h * w:
        raise ValueError(f"to_grid: {values.shape[-1]} values do not fill a {h}x{w} grid")
    return values.reshape(*values.shape[:-1], h, w)


def upsample(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Patch maps [B, h, w] -> [B, H, W] at image size (``nearest`` keeps patch blocks; ``bilinear`` smooths)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = maps.float().unsqueeze(1)
    out = F.interpolate(x, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return out.squeeze(1)


def attention_image(maps: Sequence[torch.Tensor], grid: tuple[int, int], image_size: int, kind: str = "attention",
                    layer: int = -1, head: int | str = "mean", share: float = 0.6, residual: float = 0.5,
                    mode: str = "nearest") -> np.ndarray:
    """The heat map [B, H, W] (float in [0, 1] per image) of one attention view: ``attention`` (layer, head),
    ``rollout`` (all layers), or ``mask`` (DINO threshold of layer/head at ``share`` of the mass; 0/1).
    Prefix tokens (CLS, registers) are told from the patches by the grid: T - h*w of them."""
    prefix = num_prefix_tokens(maps, grid)
    if kind == "attention":
        vals = head_attention(maps, layer, head, prefix)
    elif kind == "rollout":
        vals = attention_rollout(maps, residual)[:, 0, prefix:]
    elif kind == "mask":
        vals = threshold_mass(head_attention(maps, layer, head, prefix), share).float()
    else:
        raise ValueError(f"kind={kind!r} must be 'attention', 'rollout' or 'mask'")
    up = upsample(to_grid(vals, grid), image_size, mode).numpy()
    lo = up.reshape(up.shape[0], -1).min(1)[:, None, None]
    hi = up.reshape(up.shape[0], -1).max(1)[:, None, None]
    return np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0.0).astype(np.float32)


def patch_fractions(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks [B, H, W] (values in [0, 1], e.g. object coverage) -> mean per patch [B, h*w] (row-major),
    the patch order of the attention maps. H and W must be multiples of the grid."""
    b, hh, ww = masks.shape
    h, w = grid
    if hh % h or ww % w:
        raise ValueError(f"masks of {hh}x{ww} px do not split into a {h}x{w} patch grid")
    pooled = F.avg_pool2d(masks.float().unsqueeze(1), kernel_size=(hh // h, ww // w))
    return pooled.reshape(b, h * w)


def attention_share(attn: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of each image's patch attention falls on a region: (share [B], area [B]).

    ``attn`` [B, L] non-negative patch attention (e.g. ``head_attention(maps)``, the CLS row); ``masks`` [B, H, W]
    the region's pixel coverage in [0, 1] (e.g. ``workbench.data.shapes.object_masks``). ``share`` is
    sum_l attn_l * m_l / sum_l attn_l with m_l the region's coverage of patch l; ``area`` is mean_l m_l, the share
    that attention spread uniformly over the patches would give (the baseline to compare with).
    """
    frac = patch_fractions(masks, grid)
    if attn.shape != frac.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and masks ({tuple(frac.shape)} patches) do not match")
    a = attn.float().clamp_min(0)
    share = (a * frac).sum(-1) / a.sum(-1).clamp_min(1e-12)
    return share, frac.mean(-1)


OUTLIER_STDS = 3.0  # a patch token is a high-norm outlier when its norm > mean + 3 std of the batch's patch norms


TOKEN_STAGES = ("residual", "output")  # token_norms' ``where``: before / after the final norm


@dataclass
class TokenNorms:
    """L2 norms of a ViT's tokens after the last block for B images (``where``: see :func:`token_norms`).

    patches [B, h, w]; registers [B, R] (R = 0 without register tokens); cls [B] (None without a class token);
    threshold: the outlier level, mean + ``OUTLIER_STDS`` std (unbiased) over all B*h*w patch norms.
    """

    patches: torch.Tensor
    registers: torch.Tensor
    cls: torch.Tensor | None
    threshold: float

    @property
    def outliers(self) -> torch.Tensor:
        """bool [B, h, w]: the patch tokens whose norm exceeds ``threshold``."""
        return self.patches > self.threshold

    @property
    def outlier_fraction(self) -> float:
        """Share of all patch tokens above ``threshold`` (Darcet et al.: ~2 % in DINOv2 ViT-g, ~0 with registers)."""
        return float(self.outliers.float().mean())


def outlier_threshold(norms: torch.Tensor, stds: float = OUTLIER_STDS) -> float:
    """mean + ``stds`` x std (unbiased) of all values of ``norms`` (any shape, at least 2 values)."""
    v = norms.double().flatten()
    return float(v.mean() + stds * v.std())


@torch.no_grad()
def token_norms(backbone: torch.nn.Module, images: torch.Tensor, stds: float = OUTLIER_STDS,
                where: str = "residual") -> TokenNorms:
    """Norms of the tokens after the last block of normalised images [B, C, H, W] under a ViT (the workbench's or a
    timm token model), all P + L of them read at the final norm in one ``forward_features`` pass: ``residual`` (its
    input, the residual stream, default) or ``output`` (its output, the tokens ``forward_features`` returns).

    The residual stream is where the outliers live: a LayerNorm output has norm sqrt(D) times a gamma-weighted
    spread whatever its input, so at init (gamma = 1) every ``output`` norm is exactly sqrt(D); large trained
    models keep the contrast through gamma, which is why the paper could see it in the output features.

    Why: Darcet et al. 2023 ("Vision Transformers Need Registers") find that large, long-trained ViTs recycle a few
    low-information patch tokens as global scratch space; their output norm is ~10x the others (a bimodal norm
    histogram; they count tokens above 150 in DINOv2 ViT-g) and they show as artefacts in attention maps. Register
    tokens take over that role and the outliers vanish. The threshold here is scale-free (mean + ``stds`` std of the
    batch's patch norms), since the paper's 150 belongs to one model. The outliers emerge only in big, long-trained
    models; at CPU scale there are none to see: a 4-block vit_tiny (8 px patches, 32 px shapes, 256 test images)
    gives 1.5 % above the threshold at random init and 1.5 % after one dinov2 epoch on 2000 images, the same
    content-driven tail (object vs flat background patches, max/median norm 4.7 both), not the artefact; after one
    epoch on 512 images, 1.6 % without and 1.4 % with 4 registers (init 1.5 / 1.4 %), which hold ~19 % of the
    last layer's attention at init and after alike: nothing for registers to absorb yet. Longer, on a finer grid
    (timm ViT-tiny, 4 blocks, 4 px patches = 8x8, 8 dinov2 epochs on 2000 images, seeds 0/1): 2.2 / 2.5 % at init
    and 2.2 / 2.4 % after without registers, 2.2 / 2.5 % and 2.0 / 2.3 % with 4; max/median norm 5.0-5.5 in all.
    """
    check_vit(backbone)
    check_image_size(backbone, images)
    if where not in TOKEN_STAGES:
        raise ValueError(f"where={where!r} must be one of {TOKEN_STAGES}")
    model = getattr(backbone, "vit", None) or getattr(backbone, "model", None)
    norm = getattr(model, "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no final ``norm`` module whose output holds all tokens")
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_hook(
        lambda _m, inputs, out: seen.append((inputs[0] if where == "residual" else out).detach()))
    try:
        backbone.forward_features(images)
    finally:
        handle.remove()
    h, w = backbone.grid
    prefix, cls = int(backbone.num_prefix_tokens), int(bool(backbone.has_class_token))
    tokens = seen[0].float().cpu() if seen else None
    if tokens is None or tokens.ndim != 3 or tokens.shape[1] != prefix + h * w:
        raise ValueError(f"the final norm of {type(model).__name__} did not see the {prefix} prefix tokens and the "
                         f"{h}x{w} patches in one [B, T, D] tensor")
    norms = tokens.norm(dim=-1)  # [B, P + L]
    patches = norms[:, prefix:].reshape(-1, h, w)
    return TokenNorms(patches, norms[:, cls:prefix], norms[:, 0] if cls else None, outlier_threshold(patches, stds))

