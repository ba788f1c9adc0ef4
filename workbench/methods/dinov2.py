"""DINOv2 (Oquab et al., 2023) with DINOv3's Gram anchoring (Siméoni et al., 2025) as an option.

DINO's image-level self-distillation plus iBOT's masked-patch distillation, a KoLeo spread of the class tokens,
and (DINOv3) a Gram loss that keeps the student's patch-similarity structure close to an earlier snapshot.
Pseudo-code of the papers, as written here::

    m = ibot_masks(global crops)                                        # half the images, 10-50 % of patches in blocks
    cls_s, patch_s = student(global crops with mask tokens at m), student(local crops)[cls]
    cls_t, patch_t = teacher(global crops)                              # full views, no gradient
    p_cls, p_patch = sinkhorn(cls_t / T), sinkhorn(patch_t[m] / T)       # or centre + sharpen, as DINO
    loss = H(p_cls, cls_s) over view pairs v != t                      # DINO, shared with workbench's dino
         + w_ibot * mean_images mean_{masked patches} H(p_patch, patch_s[m])
         + w_koleo * sum_{global crops} -mean log ||z_i - z_nn(i)||     # z = normalised student class tokens
         + w_gram * mean_images ||P_s P_s^T - P_g P_g^T||^2 / L^2       # P: normalised patch features, P_s of
                                                                        # the masked global crops; g: the Gram
                                                                        # teacher (a copy of the EMA teacher taken
                                                                        # every N steps) on the global crops
                                                                        # rendered s x larger, undistorted, its
                                                                        # patch grid resized to the student's
    teacher <- m * teacher + (1 - m) * student                          # m: 0.992 -> 1, cosine

Defaults follow facebookresearch/dinov2 and dinov3 (``ssl_default_config.yaml``): KoLeo 0.1 on the backbone's class
token of each global crop, iBOT weight 1 with masks on half the global crops at ratios (0.1, 0.5), Sinkhorn-Knopp
centring (3 iterations) on class and patch outputs, EMA 0.992, one head shared by DINO and iBOT (DINOv2's default;
DINOv3 separates them: ``separate_ibot_head``), AdamW lr 1e-3 at batch 1024 with the square-root rule (5e-4 per 256
images), weight decay 0.04 -> 0.4 along a cosine, layer-wise lr decay 0.9 and the patch embedding at 0.2x the lr
(``workbench.train.optim``; train.layer_decay=1.0 turns the decay off). Head sizes are DINO's CIFAR-scale ones
(4096 prototypes). Gram anchoring is off (``gram_weight=0``, DINOv2); DINOv3 uses weight 2 with image-level Gram
matrices of normalised patch features, no negative clipping, the teacher refreshed every 10k of ~1M iterations in a
late phase: here ``gram_start_epochs`` and ``gram_refresh_epochs`` scale that to short runs. The Gram teacher sees
each global crop's box and flip rendered ``gram_crop_scale`` (2) times larger without colour distortion, the batch's
last views (``AugmentConfig.gram_scale``, which a run sets from ``gram_crop_scale`` through ``augment_defaults``); its patch features [N, h', w', D] are
resized bicubically (half-pixel centres, no antialiasing) to the student's grid, then normalised. DINOv3's
(facebookresearch/dinov3: ``configs/train/dinov3_vit7b16_gram_anchor.yaml``, ``data/augmentations.py``,
``train/ssl_meta_arch.py``): ``gram_teacher_crops_size`` 512 for 256 px global crops with
``gram_teacher_no_distortions`` (1.5x in the high-resolution adaptation), ``global_teacher_resize_method`` bicubic,
``_antialias`` false, ``img_level``, all patch tokens, ``remove_neg`` false. ``gram_crop_scale=1`` anchors on the
student's own (distorted) global crops, with no extra views.
Register tokens: any ViT with them works (``timm:`` specs with ``reg_tokens``); they join every block and are not read.

Measured at CPU scale before the wd schedule / layer decay were in the recipe (shapes, 2000 images at 32 px,
vit_tiny with 2 blocks and 8 px patches, 2 epochs, seeds 0-2):
kNN within +-0.03 of random init for DINOv2 and DINO alike; the object-vs-background patch-similarity contrast
(``workbench.inspect.patches.object_similarity_contrast``, 0.84 at random init) falls to 0.59-0.61 with DINOv2 and
stays at 0.80-0.83 with Gram anchoring (weight 2, from epoch 1, refreshed every half epoch, on the student's crops:
``gram_crop_scale=1``). The wd schedule and
layer decay change nothing measurable at the tests' tiny size (tests/methods/tiny_runs, seeds 0-1: kNN gain over
random init -0.070 / -0.063 with them, -0.051 / -0.074 without; both runs' loss 10.81 -> 10.45-10.47).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.augment.masks import ibot_masks
from workbench.config import ConfigError, check_choice, check_pair, check_range
from workbench.methods.base import Batch, Progress, Recipe, StepOutput, ema_update, cosine_momentum, register
from workbench.methods.dino import (DINO, DINOConfig, DINOHead, batch_center, cross_view_loss, multicrop_pooled,
                                    teacher_temperature)
from workbench.methods.mae import default_generator
from workbench.methods.swav import sinkhorn


@dataclass
class DINOv2Config(DINOConfig):
    """DINO's hyper-parameters plus DINOv2's (iBOT, KoLeo, Sinkhorn-Knopp centring) and DINOv3's Gram anchoring."""

    momentum: float = 0.992
    centering: str = "sinkhorn"
    sinkhorn_iterations: int = 3
    ibot_weight: float = 1.0
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    separate_ibot_head: bool = False
    koleo_weight: float = 0.1
    gram_weight: float = 0.0
    gram_start_epochs: float = 1.0
    gram_refresh_epochs: float = 1.0
    gram_crop_scale: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "DINOv2Config"
        check_choice(o, "centering", self.centering, ["sinkhorn", "center"])
        check_range(o, "sinkhorn_iterations", self.sinkhorn_iterations, 1)
        for name in ("ibot_weight", "koleo_weight", "gram_weight", "gram_start_epochs"):
            check_range(o, name, getattr(self, name), 0.0)
        check_range(o, "mask_probability", self.mask_probability, 0.0, 1.0)
        check_pair(o, "mask_ratio", self.mask_ratio, low=0.0, high=1.0)
        check_range(o, "gram_refresh_epochs", self.gram_refresh_epochs, 0.0, low_inclusive=False)
        check_range(o, "gram_crop_scale", self.gram_crop_scale, 1.0)


def ibot_loss(student_masked: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
              student_temp: float = 0.1) -> torch.Tensor:
    """iBOT's masked-patch distillation: student logits [M, K] and teacher probabilities [M, K] of the M masked
    patches (``mask`` bool [N, L], rows in its row-major order of True entries). Each image's cross-entropies are
    averaged over its masked patches, and the images (unmasked ones count as 0) are averaged: a scalar."""
    with torch.autocast(student_masked.device.type, enabled=False):
        ce = -(teacher_probs.detach().float() * F.log_softmax(student_masked.float() / student_temp, -1)).sum(-1)
        weight = (1.0 / mask.sum(1).clamp(min=1)).unsqueeze(1).expand_as(mask)[mask]  # [M]: 1 / masked of its image
        return (ce * weight).sum() / mask.shape[0]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: -mean_i log ||z_i - z_nn(i)|| of the L2-normalised rows z of ``x``
    [B, D] (nearest neighbour within the batch). Pushes the batch's features apart, uniformly over the sphere."""
    with torch.autocast(x.device.type, enabled=False):
        z = F.normalize(x.float(), dim=-1, eps=eps)
        dots = z @ z.t() - 3.0 * torch.eye(z.shape[0], device=z.device)  # a point is never its own neighbour
        nearest = z[dots.argmax(dim=1)]
        return -torch.log(F.pairwise_distance(z, nearest, eps=eps) + eps).mean()


def gram_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """DINOv3's Gram anchoring: mean squared difference between the per-image patch-similarity (Gram) matrices of
    L2-normalised student [N, L, D] and Gram-teacher [N, L, D] patch features, i.e. ||G_s - G_t||_F^2 / (N L^2)."""
    with torch.autocast(student_patches.device.type, enabled=False):
        s = F.normalize(student_patches.float(), dim=-1)
        t = F.normalize(teacher_patches.detach().float(), dim=-1)
        return F.mse_loss(s @ s.transpose(1, 2), t @ t.transpose(1, 2))


def resize_patch_grid(patches: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch features [N, h*w, D] laid out row-major on the ``grid`` (h, w) -> float [N, H*W, D] on ``size`` (H, W):
    bicubic, align_corners=False, no antialiasing, as DINOv3 brings its Gram teacher's features from the larger crop
    to the student's grid (``gram.global_teacher_resize_method`` / ``_antialias``). Unchanged when the grids match."""
    if tuple(grid) == tuple(size):
        return patches
    x = patches.float().transpose(1, 2).unflatten(2, tuple(grid))  # [N, D, h, w]
    x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=False)
    return x.flatten(2).transpose(1, 2)


@register
class DINOv2(DINO):
    """DINO's student, heads and EMA teacher, with a mask token, iBOT, KoLeo and an optional Gram teacher."""

    name = "dinov2"
    Config = DINOv2Config
    requires_vit = True
    # official wd 0.04 -> 0.4, layerwise_decay 0.9, patch_embed_lr_mult 0.2 kept: the wd cosine spans any run's length,
    # and the decay is per block (shallow ViTs decay less: embeddings at 0.9**3 = 0.73x with 2 blocks, 0.07x on ViT-L)
    recipe = Recipe(optimizer="adamw", lr=5e-4, weight_decay=0.04, weight_decay_end=0.4, layer_decay=0.9,
                    patch_embed_lr_mult=0.2)

    def __init__(self, backbone: nn.Module, config: DINOv2Config):
        super().__init__(backbone, config)
        c = config
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.feature_dim))  # DINOv2 leaves it at zero
        self.register_buffer("patch_center", torch.zeros(1, c.out_dim))
        self.ibot_head = self.teacher_ibot_head = None
        if c.separate_ibot_head:
            self.ibot_head = DINOHead(backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.num_layers,
                                      c.head_batch_norm)
            self.teacher_ibot_head = copy.deepcopy(self.ibot_head).requires_grad_(False)
        self.gram_backbone = copy.deepcopy(backbone).requires_grad_(False) if c.gram_weight > 0 else None

    @classmethod
    def augment_defaults(cls, config: DINOv2Config) -> dict[str, Any]:
        """DINOv3's Gram teacher reads the global crops rendered ``gram_crop_scale`` x larger: the run asks the
        augmentation for them, so ``gram_weight`` and ``gram_crop_scale`` alone switch it on."""
        return {"gram_scale": config.gram_crop_scale} if config.gram_weight > 0 and config.gram_crop_scale != 1 else {}

    def _teacher_probs(self, logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
        """[N, K] teacher logits -> probabilities: Sinkhorn-Knopp codes, or DINO's centre-and-sharpen (the centre
        then moves towards this batch's mean)."""
        if self.config.centering == "sinkhorn":
            return sinkhorn(logits, self.config.sinkhorn_iterations, temp)
        probs = F.softmax((logits.float() - center) / temp, dim=-1)
        if self.training:
            m = self.config.center_momentum
            center.mul_(m).add_(batch_center(logits.unsqueeze(0)), alpha=1 - m)
        return probs

    def _gram_steps(self, progress: Progress) -> tuple[int, int]:
        spe = max(1, progress.steps_per_epoch)
        return round(self.config.gram_start_epochs * spe), max(1, round(self.config.gram_refresh_epochs * spe))

    def _split_gram_views(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """(the student's views, the Gram teacher's crops [B, C, s*h, s*w] per global view, or None where it reads
        the student's global crops: ``gram_crop_scale`` 1 or no Gram loss). The Gram crops are the batch's last
        ``num_global`` views (``AugmentConfig.gram_scale``: the global crops' boxes rendered larger, undistorted)."""
        c, views, g = self.config, batch.views, batch.num_global
        h, w = views[0].shape[-2:]
        want = (round(c.gram_crop_scale * h), round(c.gram_crop_scale * w))
        if self.gram_backbone is None or c.gram_crop_scale == 1:
            if any(v.shape[-2] > h or v.shape[-1] > w for v in views[g:]):
                raise ConfigError("dinov2: the batch has views larger than its global crops after them (Gram-teacher "
                                  "crops, augment gram_scale); they are read only with gram_weight > 0 and "
                                  "gram_crop_scale > 1: set those or drop augment gram_scale")
            return views, None
        gram = views[len(views) - g:]
        if len(views) < 2 * g or any(tuple(v.shape[-2:]) != want for v in gram):
            raise ConfigError(f"dinov2: gram_crop_scale={c.gram_crop_scale} feeds the Gram teacher the global crops "
                              f"rendered at {want[0]}x{want[1]} px, the batch's last {g} views; they are missing "
                              f"(views: {[tuple(v.shape[-2:]) for v in views]}). Set augment gram_scale="
                              f"{c.gram_crop_scale} (make_preset(..., gram_scale=...)), or gram_crop_scale=1 for the "
                              "student's global crops")
        return views[:len(views) - g], gram

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        (views, gram_views), c, g = self._split_gram_views(batch), self.config, batch.num_global
        b, bb = views[0].shape[0], self.backbone
        epoch = progress.step / max(1, progress.steps_per_epoch)
        freeze = epoch < c.freeze_last_layer_epochs
        glob = torch.cat(views[:g])  # [gB, C, H, W]
        mask = ibot_masks(g * b, bb.grid, default_generator(progress.generator, glob.device), glob.device,
                          c.mask_probability if c.ibot_weight > 0 else 0.0, c.mask_ratio)  # [gB, L]
        tokens = bb.encode(bb.patchify_embed(glob, mask, self.mask_token))  # [gB, 1 + L, D]
        cls = tokens[:, 0].reshape(g, b, -1)
        if len(views) > g:
            cls = torch.cat([cls, multicrop_pooled(bb, views[g:])])  # [V, B, D]
        student = self.head(cls.flatten(0, 1), freeze_last_layer=freeze).reshape(cls.shape[0], b, -1)
        ibot_head, teacher_ibot_head = ((self.ibot_head, self.teacher_ibot_head) if c.separate_ibot_head
                                        else (self.head, self.teacher_head))
        temp = teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs)
        with torch.no_grad():
            t_tokens = self.teacher_backbone.encode(self.teacher_backbone.patchify_embed(glob))
            t_cls = self._teacher_probs(self.teacher_head(t_tokens[:, 0]), self.center, temp).reshape(g, b, -1)
        loss_dino = cross_view_loss(student, t_cls, c.student_temp)
        loss_koleo = sum(koleo_loss(x) for x in tokens[:, 0].reshape(g, b, -1))
        loss = loss_dino + c.koleo_weight * loss_koleo
        logs = {"teacher_temp": temp, "loss_dino": loss_dino.detach(), "loss_koleo": loss_koleo.detach()}  # no sync
        masked = tokens[:, 1:][mask]  # [M, D] (a boolean index: the step's one host sync)
        if c.ibot_weight > 0 and masked.shape[0] > 0:
            s_patch = ibot_head(masked, freeze_last_layer=freeze)  # [M, K]
            with torch.no_grad():
                t_patch = self._teacher_probs(teacher_ibot_head(t_tokens[:, 1:][mask]), self.patch_center, temp)
            loss_ibot = ibot_loss(s_patch, t_patch, mask, c.student_temp)
            loss = loss + c.ibot_weight * loss_ibot
            logs["loss_ibot"] = loss_ibot.detach()
        if self.gram_backbone is not None and progress.step >= self._gram_steps(progress)[0]:
            gb = self.gram_backbone
            with torch.no_grad():
                if gram_views is None:
                    anchor = gb.encode(gb.patchify_embed(glob))[:, 1:]  # [gB, L, D]
                else:  # DINOv3: the larger crops, their patch grid resized to the student's
                    big = torch.cat(gram_views)  # [gB, C, s*H, s*W]
                    grid = tuple(max(1, round(n / gb.patch_size)) for n in big.shape[-2:])  # embed_any_size's grid
                    anchor = resize_patch_grid(gb.encode(gb.embed_any_size(big))[:, 1:], grid, bb.grid)
            loss_gram = gram_loss(tokens[:, 1:], anchor)
            loss = loss + c.gram_weight * loss_gram
            logs["loss_gram"] = loss_gram.detach()
        return StepOutput(loss, tokens[:b, 0].detach(), logs)

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        super().update_teacher(progress)
        if self.teacher_ibot_head is not None and not self.config.frozen_teacher:
            ema_update(self.teacher_ibot_head, self.ibot_head, cosine_momentum(self.config.momentum, progress))
        if self.gram_backbone is not None:  # DINOv3: the Gram teacher is a fresh copy of the EMA teacher every N steps
            start, every = self._gram_steps(progress)
            done = progress.step + 1
            if done >= start and (done - start) % every == 0:
                self.gram_backbone.load_state_dict(self.teacher_backbone.state_dict())

    def teacher_modules(self) -> list[nn.Module]:
        return [m for m in (self.teacher_backbone, self.teacher_head, self.teacher_ibot_head, self.gram_backbone)
                if m is not None]
