"""Patch-mask generators: MAE random masking, data2vec 2.0 inverse block masking, I-JEPA multi-block masks and
iBOT/DINOv2 block masks, batched, from a generator.

Patch indices are row-major positions in the patch grid (index = row * grid_w + col).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from workbench.augment.ops import _rand
from workbench.device import host_tensors


@dataclass
class PatchMask:
    """MAE masking of L patches keeping K: keep int64 [B, K] (visible patch ids, in shuffled order),
    restore int64 [B, L] (unshuffle: ``gather(cat(kept, masked), 1, restore)`` is original order),
    mask float [B, L] in original order, 1 = masked, 0 = kept."""

    keep: torch.Tensor
    restore: torch.Tensor
    mask: torch.Tensor


@dataclass
class BlockMasks:
    """I-JEPA masks: context int64 [B, Kc] visible patch ids (ascending), targets int64 [B, T, Kt] ids of
    each target block (ascending); the same Kc and Kt for every sample (truncated to the batch minimum,
    as the official collator). ``target_size`` and ``context_size`` are the (h, w) block sizes drawn;
    ``context_mask`` bool [B, L] and ``target_mask`` bool [B, T, L] are the untruncated masks (for display)."""

    context: torch.Tensor
    targets: torch.Tensor
    grid: tuple[int, int]
    target_size: tuple[int, int]
    context_size: tuple[int, int]
    context_mask: torch.Tensor
    target_mask: torch.Tensor


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator,
                      device: torch.device | str = "cpu") -> PatchMask:
    """MAE per-sample random masking: shuffle by argsort of uniform noise, keep the first
    K = int(L * (1 - mask_ratio)) patches. Returns PatchMask on ``device``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"random_patch_mask: mask_ratio={mask_ratio!r} must be in [0, 1)")
    if num_patches < 1 or batch < 1:
        raise ValueError(f"random_patch_mask: batch={batch} and num_patches={num_patches} must be >= 1")
    device = torch.device(device)
    keep_n = int(num_patches * (1 - mask_ratio))
    if keep_n < 1:
        raise ValueError(f"random_patch_mask: mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
    noise = _rand(generator, (batch, num_patches), device)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = (torch.arange(num_patches, device=device) >= keep_n).float().expand(batch, -1)  # 0 kept, 1 masked
    mask = torch.gather(mask, 1, restore)
    return PatchMask(keep=shuffle[:, :keep_n].contiguous(), restore=restore, mask=mask)


def inverse_block_mask(batch: int, grid: tuple[int, int], mask_ratio: float, generator: torch.Generator,
                       device: torch.device | str = "cpu", mask_length: int = 3,
                       mask_prob_adjust: float = 0.07) -> PatchMask:
    """data2vec 2.0's image masks: the *visible* patches are grown as blocks, the rest (``mask_ratio``) is masked.

    As fairseq's ``compute_block_mask_2d`` with ``inverse_mask`` and ``require_same_masks`` (facebookresearch/fairseq
    ``fairseq/data/data_utils.py``; image defaults ``expand_adjcent``, ``non_overlapping`` off, ``mask_dropout`` 0):
    with keep fraction q = 1 - mask_ratio, ``int(L * (q + mask_prob_adjust) / mask_length**2)`` block centres are
    drawn uniformly with replacement; each marks the ``mask_length`` x ``mask_length`` square around it (offsets
    ``-(mask_length // 2)`` on, cut at the grid border) as visible. Every sample then keeps exactly
    K = ``int(L * q)`` patches (``random_patch_mask``'s count): surplus visible patches are dropped, or missing ones
    added, uniformly at random. Vectorised: keep the top K of (visible + uniform noise), which picks the same
    uniform subsets. Returns PatchMask on ``device`` with ``keep`` [B, K] ascending (then the masked ids ascending in
    the ``restore`` order).
    """
    gh, gw = int(grid[0]), int(grid[1])
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"inverse_block_mask: mask_ratio={mask_ratio!r} must be in [0, 1)")
    if batch < 1 or gh < 1 or gw < 1 or mask_length < 1:
        raise ValueError(f"inverse_block_mask: batch={batch}, grid={tuple(grid)} and mask_length={mask_length} must "
                         "be >= 1")
    if mask_prob_adjust < 0:
        raise ValueError(f"inverse_block_mask: mask_prob_adjust={mask_prob_adjust!r} must be >= 0")
    device = torch.device(device)
    L, keep_frac = gh * gw, 1 - mask_ratio
    keep_n = int(L * keep_frac)
    if keep_n < 1:
        raise ValueError(f"inverse_block_mask: mask_ratio={mask_ratio} keeps no patch out of {L}")
    n_blocks = int(L * ((keep_frac + mask_prob_adjust) / mask_length ** 2))
    visible = torch.zeros(batch, L, dtype=torch.bool, device=device)
    if n_blocks > 0:
        centre = (_rand(generator, (batch, n_blocks), device) * L).long().clamp_(max=L - 1)  # randint(0, L)
        off = mask_length // 2
        top, left = centre // gw - off, centre % gw - off
        visible = _block_masks(top, left, (mask_length, mask_length), (gh, gw)).any(dim=1)  # [B, L]
    # exactly keep_n per sample: visible patches rank above hidden ones, a uniform draw orders each group
    score = visible.float() * 2 + _rand(generator, (batch, L), device)
    kept = torch.zeros(batch, L, dtype=torch.bool, device=device)
    kept.scatter_(1, score.topk(keep_n, dim=1).indices, True)
    order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices  # kept ids ascending, then masked ones
    return PatchMask(keep=order[:, :keep_n].contiguous(), restore=torch.argsort(order, dim=1),
                     mask=(~kept).float())


def _block_size(u: float, grid: tuple[int, int], scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int]:
    """The official ``_sample_block_size``: one uniform ``u`` sets both scale and aspect ratio."""
    gh, gw = grid
    s = scale[0] + u * (scale[1] - scale[0])
    max_keep = int(gh * gw * s)
    ar = ratio[0] + u * (ratio[1] - ratio[0])
    h = int(round(math.sqrt(max_keep * ar)))
    w = int(round(math.sqrt(max_keep / ar)))
    h = max(1, min(h, gh - 1)) if gh > 1 else 1
    w = max(1, min(w, gw - 1)) if gw > 1 else 1
    return h, w


def _block_masks(top: torch.Tensor, left: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """bool [..., gh*gw] masks of (h, w) blocks at the given top-left corners (any leading shape)."""
    gh, gw = grid
    rows = torch.arange(gh, device=top.device)
    cols = torch.arange(gw, device=top.device)
    r = (rows >= top[..., None]) & (rows < top[..., None] + size[0])  # [..., gh]
    c = (cols >= left[..., None]) & (cols < left[..., None] + size[1])  # [..., gw]
    return (r[..., :, None] & c[..., None, :]).flatten(-2)


def _first_true_indices(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending positions of the first ``k`` True entries of each row of bool [B, L] -> int64 [B, k]."""
    key = (~mask).to(torch.uint8)
    return torch.sort(key, dim=1, stable=True).indices[:, :k]


def multiblock_masks(batch: int, grid: tuple[int, int], generator: torch.Generator,
                     device: torch.device | str = "cpu", num_targets: int = 4,
                     target_scale: tuple[float, float] = (0.15, 0.2), target_ratio: tuple[float, float] = (0.75, 1.5),
                     context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 4,
                     attempts: int = 20) -> BlockMasks:
    """I-JEPA multi-block masks, as the official MaskCollator (facebookresearch/ijepa src/masks/multiblock.py).

    One target block size (scale and aspect ratio from one uniform) and one square context block size
    per batch; per sample ``num_targets`` target blocks at uniform positions and one context block
    minus the union of the targets. As the official code, a context position is accepted when more
    than ``min_keep`` patches survive; after ``attempts`` failures the last target's constraint is
    dropped, and so on. Counts are truncated to the batch minimum so the tensors are rectangular.
    """
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1 or batch < 1 or num_targets < 1:
        raise ValueError(f"multiblock_masks: batch={batch}, grid={grid}, num_targets={num_targets} must be >= 1")
    for name, pair, hi in (("target_scale", target_scale, 1.0), ("context_scale", context_scale, 1.0),
                           ("target_ratio", target_ratio, None)):
        if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (hi is not None and pair[1] > hi):
            raise ValueError(f"multiblock_masks: {name}={tuple(pair)} must be (min, max) with 0 < min <= max"
                             + (f" <= {hi}" if hi is not None else ""))
    device = torch.device(device)
    # the two block sizes set tensor shapes, so they are drawn on the host: from the generator itself when it is a
    # CPU one, else from a CPU generator seeded with its seed (a GPU generator would need a device -> host sync)
    host = generator if generator.device.type == "cpu" else torch.Generator().manual_seed(generator.initial_seed())
    with host_tensors():
        u = _rand(host, (2,), torch.device("cpu")).tolist()
    t_size = _block_size(u[0], (gh, gw), target_scale, target_ratio)
    c_size = _block_size(u[1], (gh, gw), context_scale, (1.0, 1.0))
    T, L = num_targets, gh * gw

    # targets: uniform top-left in [0, g - size) as torch.randint(0, g - size) (at least 0)
    pos = _rand(generator, (batch, T, 2), device)
    t_top = torch.floor(pos[..., 0] * max(gh - t_size[0], 1)).long()
    t_left = torch.floor(pos[..., 1] * max(gw - t_size[1], 1)).long()
    tmask = _block_masks(t_top, t_left, t_size, (gh, gw))  # [B, T, L]
    kt = t_size[0] * t_size[1]
    targets = torch.sort((~tmask).to(torch.uint8), dim=2, stable=True).indices[..., :kt]

    # context: candidates level by level; level l keeps the constraints of the first T - l targets
    levels = T + 1
    cpos = _rand(generator, (batch, levels * attempts, 2), device)
    c_top = torch.floor(cpos[..., 0] * max(gh - c_size[0], 1)).long()
    c_left = torch.floor(cpos[..., 1] * max(gw - c_size[1], 1)).long()
    cand = _block_masks(c_top, c_left, c_size, (gh, gw))  # [B, A, L]
    # forbidden[b, l] = union of the first T - l targets
    cum = torch.cumsum(tmask.to(torch.int16), dim=1) > 0  # [B, T, L]: union of the first t+1 targets
    none = torch.zeros(batch, 1, L, dtype=torch.bool, device=device)
    unions = torch.cat([cum.flip(1), none], dim=1)  # [B, levels, L]: level l -> union of first T - l
    forbidden = unions.repeat_interleave(attempts, dim=1)  # [B, A, L]
    cand = cand & ~forbidden
    counts = cand.sum(dim=2)  # [B, A]
    valid = counts > min_keep
    first = torch.where(valid.any(dim=1), valid.to(torch.int8).argmax(dim=1),
                        torch.full((batch,), levels * attempts - 1, device=device))
    cmask = cand[torch.arange(batch, device=device), first]  # [B, L]
    kc = int(cmask.sum(dim=1).min())  # a shape (the official collator's truncation): the one host sync here
    context = _first_true_indices(cmask, kc)
    return BlockMasks(context=context, targets=targets, grid=(gh, gw), target_size=t_size, context_size=c_size,
                      context_mask=cmask, target_mask=tmask)


def ibot_masks(batch: int, grid: tuple[int, int], generator: torch.Generator, device: torch.device | str = "cpu",
               mask_probability: float = 0.5, mask_ratio: tuple[float, float] = (0.1, 0.5), min_block: int = 4,
               min_aspect: float = 0.3, max_share: float = 0.5, attempts: int = 40) -> torch.Tensor:
    """iBOT / DINOv2 block-wise masks of the student's global crops: bool [batch, gh*gw], True = masked.

    As DINOv2's collator and ``MaskingGenerator`` (facebookresearch/dinov2 ``dinov2/data/masking.py``):
    ``int(batch * mask_probability)`` images are masked, image i of them aiming at ``int(L * r_i)`` patches with r_i
    uniform in the i-th of the equal slices of ``mask_ratio`` (stratified), the rest unmasked, in random order. Each
    masked image is covered by rectangles: area uniform in [min_block, remaining budget] (the budget capped at
    ``max_share * L``), log-aspect uniform in [log min_aspect, -log min_aspect], position uniform; a rectangle is
    kept when it adds between 1 and the remaining budget new patches. The official loop stops after 10 failed draws
    in a row; here every image gets ``attempts`` draws, batched, so a mask can stop short of its target the same way.
    """
    gh, gw = int(grid[0]), int(grid[1])
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"ibot_masks: mask_probability={mask_probability!r} must be in [0, 1]")
    if len(mask_ratio) != 2 or not 0.0 <= mask_ratio[0] <= mask_ratio[1] <= 1.0:
        raise ValueError(f"ibot_masks: mask_ratio={tuple(mask_ratio)} must be (min, max) with 0 <= min <= max <= 1")
    device = torch.device(device)
    L = gh * gw
    n_masked = int(batch * mask_probability)
    u = _rand(generator, (batch,), device)
    slot = torch.arange(batch, device=device, dtype=torch.float32)
    ratio = mask_ratio[0] + (mask_ratio[1] - mask_ratio[0]) * (slot + u) / max(n_masked, 1)
    target = torch.where(slot < n_masked, (L * ratio).floor(), torch.zeros_like(ratio))
    target = target[torch.argsort(_rand(generator, (batch,), device))]  # the official collator shuffles the list
    cap = int(max_share * L)
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    mask = torch.zeros(batch, L, dtype=torch.bool, device=device)
    draws = _rand(generator, (attempts, 4, batch), device)
    log_aspect = math.log(min_aspect)
    for a_u, r_u, t_u, l_u in draws:
        budget = (target - mask.sum(1)).clamp(max=cap)  # [B] patches still to mask
        area = min_block + a_u * (budget - min_block)
        aspect = torch.exp(log_aspect + r_u * (-2 * log_aspect))
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < gh) & (w < gw)
        top = (t_u * (gh - h + 1).clamp(min=1)).floor().long()
        left = (l_u * (gw - w + 1).clamp(min=1)).floor().long()
        r = (rows >= top[:, None]) & (rows < (top + h)[:, None])
        c = (cols >= left[:, None]) & (cols < (left + w)[:, None])
        block = (r[:, :, None] & c[:, None, :]).flatten(1)
        new = (block & ~mask).sum(1)
        accept = fits & (new > 0) & (new <= budget)
        mask = mask | (block & accept[:, None])
    return mask
