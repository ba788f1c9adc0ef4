"""Patch-level views that work for every backbone (ViT patch tokens or a CNN's last feature map):
cosine similarity of every patch to a chosen one (also across a second image), and the DINOv2-style
PCA-of-patch-features image (first three components as RGB, optional foreground threshold); each also as
pixel images at the input size, ready to show.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workbench.inspect.attention import check_image_size, to_grid, upsample
from workbench.inspect.images import minmax
from workbench.inspect.pca import pca
from workbench.inspect.views import draw_boxes


@torch.no_grad()
def patch_tokens(backbone: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Spatial tokens [B, h*w, D] (float32, CPU) and the grid (h, w) of normalised images [B, C, H, W]. A ViT's
    prefix tokens (CLS, registers) are not among them: ``forward_features`` returns the patches alone."""
    check_image_size(backbone, images)
    feats = backbone.forward_features(images)
    grid = tuple(int(g) for g in feats.grid)
    if feats.tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{type(backbone).__name__} returned {feats.tokens.shape[1]} spatial tokens for a "
                         f"{grid[0]}x{grid[1]} grid; its forward_features must drop prefix (CLS/register) tokens")
    return feats.tokens.float().cpu(), grid  # type: ignore[return-value]


def patch_index(row: int, col: int, grid: tuple[int, int]) -> int:
    """Row-major index of patch (row, col) in a grid (h, w), with a range check."""
    h, w = grid
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"patch ({row}, {col}) is outside the {h}x{w} patch grid")
    return row * w + col


def patch_at_pixel(x: float, y: float, image_size: int | tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the patch under pixel (x, y) of an image of ``image_size`` (H, W) split into ``grid``."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    h, w = grid
    row = int(np.clip(np.floor(y * h / H), 0, h - 1))
    col = int(np.clip(np.floor(x * w / W), 0, w - 1))
    return row, col


def patch_similarity(tokens: torch.Tensor, index: int, target_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [M] of patch ``index`` of ``tokens`` [L, D] to every patch of ``target_tokens`` [M, D]
    (default: the same image, so the chosen patch scores 1)."""
    if tokens.ndim != 2:
        raise ValueError(f"patch_similarity: tokens must be [L, D], got {tuple(tokens.shape)}")
    if not 0 <= index < tokens.shape[0]:
        raise ValueError(f"patch index {index} is outside 0..{tokens.shape[0] - 1}")
    target = tokens if target_tokens is None else target_tokens
    q = F.normalize(tokens[index].float(), dim=0)
    return F.normalize(target.float(), dim=1) @ q


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int], foreground_threshold: float | None = None,
            foreground_above: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """DINOv2's PCA picture of patch tokens [B, L, D] (one PCA fitted jointly over all images' patches).

    Without a threshold: the first three components, each min-max normalised over all patches, as RGB.
    With ``foreground_threshold`` t: the first component (min-max normalised) above t (below, if not
    ``foreground_above``) marks the foreground; a second PCA on foreground patches only gives the colours and
    the background is black. Returns (rgb float [B, h, w, 3] in [0, 1], foreground bool [B, h, w]).
    """
    b, L, d = tokens.shape
    h, w = grid
    if h * w != L:
        raise ValueError(f"pca_rgb: {L} tokens do not fill the {h}x{w} grid")
    x = tokens.reshape(b * L, d).float()
    fg = torch.ones(b * L, dtype=torch.bool)
    if foreground_threshold is not None:
        mean, comps = pca(x, 1)
        first = ((x - mean) @ comps)[:, 0]
        first = (first - first.min()) / (first.max() - first.min()).clamp_min(1e-12)
        fg = first > foreground_threshold if foreground_above else first < foreground_threshold
    rgb = torch.zeros(b * L, 3)
    if int(fg.sum()) >= 2:
        mean, comps = pca(x[fg], 3)
        proj = (x[fg] - mean) @ comps
        lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
        rgb[fg] = (proj - lo) / (hi - lo).clamp_min(1e-12)
    elif int(fg.sum()) == 1:
        rgb[fg] = 0.5
    return rgb.reshape(b, h, w, 3).numpy(), fg.reshape(b, h, w).numpy()


def similarity_images(tokens_a: torch.Tensor, tokens_b: torch.Tensor, query: int, grid: tuple[int, int],
                      image_size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of patch ``query`` of image a (tokens [L, D]) to every patch of image a and of image b
    (tokens [L, D], same grid), as two float32 heat maps [H, W] at ``image_size`` (nearest: one block per patch),
    min-max normalised on one scale across both images (so the brighter image is the more similar one)."""
    sims = torch.stack([patch_similarity(tokens_a, query), patch_similarity(tokens_a, query, tokens_b)])
    heats = minmax(upsample(to_grid(sims, grid), image_size, "nearest"))
    return heats[0], heats[1]


def patch_edges(n: int, size: int) -> list[int]:
    """Where each of ``n`` patches starts along an axis of ``size`` pixels, then ``size`` (n + 1 values): the
    blocks nearest upsampling gives each patch (pixel y shows patch floor(y * n / size), as in
    :func:`patch_at_pixel`), also when ``n`` does not divide ``size``."""
    return [-(-k * size // n) for k in range(n + 1)]


def _zoomed_edges(grid: tuple[int, int], picture: np.ndarray,
                  image_size: int | tuple[int, int] | None) -> tuple[list[int], list[int]]:
    """Patch edges (rows, cols) on a picture that shows an image of ``image_size`` zoomed by an integer factor."""
    H, W = picture.shape[:2]
    ih, iw = (H, W) if image_size is None else ((image_size, image_size) if isinstance(image_size, int)
                                                 else tuple(image_size))
    if H % ih or W % iw:
        raise ValueError(f"a {H}x{W} picture is not an integer zoom of a {ih}x{iw} image")
    return ([e * (H // ih) for e in patch_edges(grid[0], ih)], [e * (W // iw) for e in patch_edges(grid[1], iw)])


def outline_patch(picture: np.ndarray, patch: tuple[int, int], grid: tuple[int, int],
                  color: tuple[int, int, int] = (0, 255, 0), image_size: int | tuple[int, int] | None = None,
                  width: int | None = None) -> np.ndarray:
    """A copy of the uint8 picture [H, W, 3] with a ``color`` outline on the border pixels of patch (row, col)
    of ``grid`` (the query patch of the similarity view). ``image_size``: the image's size when the picture shows
    it zoomed (default: the picture's own); ``width`` default: 1 px per 80 px of picture, at least 1."""
    ys, xs = _zoomed_edges(grid, picture, image_size)
    r, c = patch
    width = width or max(1, min(picture.shape[:2]) // 80)
    return draw_boxes(picture, [(ys[r], xs[c], ys[r + 1] - ys[r], xs[c + 1] - xs[c])], colors=[color], width=width)


def patch_grid_lines(picture: np.ndarray, grid: tuple[int, int], image_size: int | tuple[int, int] | None = None,
                     color: tuple[int, int, int] = (255, 255, 255), opacity: float = 0.35,
                     min_patch_px: int = 6) -> np.ndarray:
    """A copy of the uint8 picture [H, W, 3] with 1-pixel lines blended in at ``opacity`` on the inner patch
    boundaries of ``grid``, so each patch of a map reads as one block; left out (the picture returned as it is)
    where a patch is under ``min_patch_px`` pixels on the picture. ``image_size`` as in :func:`outline_patch`."""
    ys, xs = _zoomed_edges(grid, picture, image_size)
    if min(b - a for a, b in zip(ys, ys[1:])) < min_patch_px or min(b - a for a, b in zip(xs, xs[1:])) < min_patch_px:
        return picture.copy()
    out = picture.astype(np.float32)
    line = np.zeros(picture.shape[:2], bool)
    line[ys[1:-1], :] = True
    line[:, xs[1:-1]] = True
    out[line] = (1 - opacity) * out[line] + opacity * np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def pca_images(tokens: torch.Tensor, grid: tuple[int, int], image_size: int | tuple[int, int],
               foreground_threshold: float | None = None) -> np.ndarray:
    """:func:`pca_rgb` of patch tokens [B, L, D] (one joint fit) as uint8 pictures [B, H, W, 3] at
    ``image_size`` (nearest: one block per patch; background black under a foreground threshold)."""
    rgb, _ = pca_rgb(tokens, grid, foreground_threshold)
    b, h, w, _ = rgb.shape
    px = upsample(torch.from_numpy(rgb).permute(0, 3, 1, 2).reshape(b * 3, h, w), image_size, "nearest")
    px = px.reshape(b, 3, *px.shape[-2:]).permute(0, 2, 3, 1)
    return (px.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def object_similarity_contrast(tokens: torch.Tensor, object_fraction: torch.Tensor, threshold: float = 0.5
                               ) -> torch.Tensor:
    """How well patch similarity separates the object from the background, per image: [B].

    ``tokens`` [B, L, D] patch features, ``object_fraction`` [B, L] the object's coverage of each patch (e.g.
    ``patch_fractions(object_masks(data), grid)``). Patches with coverage >= ``threshold`` are object, those with
    none are background (edge patches are left out). The score is mean cosine(object, other object patches) minus
    mean cosine(object, background): 0 when similarity ignores the object, up to 2; NaN for an image without both
    an object pair and a background patch. A dense-feature check of DINOv3's Gram anchoring, whose point is to keep
    this structure as training goes on.
    """
    if tokens.ndim != 3 or object_fraction.shape != tokens.shape[:2]:
        raise ValueError(f"object_similarity_contrast: tokens [B, L, D] and object_fraction [B, L] must match, got "
                         f"{tuple(tokens.shape)} and {tuple(object_fraction.shape)}")
    z = F.normalize(tokens.float(), dim=-1)
    sim = z @ z.transpose(1, 2)  # [B, L, L]
    obj = (object_fraction >= threshold).float()
    bg = (object_fraction <= 0).float()
    pair_oo = obj[:, :, None] * obj[:, None, :] * (1 - torch.eye(obj.shape[1], device=obj.device))
    pair_ob = obj[:, :, None] * bg[:, None, :]
    within = (sim * pair_oo).sum((1, 2)) / pair_oo.sum((1, 2))
    across = (sim * pair_ob).sum((1, 2)) / pair_ob.sum((1, 2))
    return within - across
