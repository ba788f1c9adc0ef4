"""I-JEPA (Assran et al., 2023): predict the representations of target blocks from a context block.

Pseudo-code of the paper, as written here::

    context [B, Kc], targets [B, M, Kt] = multiblock_masks(...)     # 1 context block, M=4 target blocks, disjoint
    with no_grad:  h = layer_norm(target_encoder(image))[targets]   # EMA encoder on the full image
    z = context_encoder(image patches at context)                    # the backbone ViT
    pred = predictor(z, positions of context, positions of each target block)  # narrow transformer
    loss = smooth_l1(pred, h)                                       # averaged over blocks, patches, dims
    target_encoder <- m * target_encoder + (1 - m) * context_encoder   # m: 0.996 -> 1, linear

Recipe from facebookresearch/ijepa (configs/in1k_vith14_ep300.yaml): AdamW lr 1e-3 at batch 2048 (1.25e-4 per
256), wd 0.04, 40 warm-up epochs, EMA 0.996 -> 1.0, mask scales (0.15, 0.2) targets / (0.85, 1.0) context,
aspect (0.75, 1.5). The paper's predictor for ViT-H is 384 wide and 12 deep; for the small encoders here it is
96 wide and 4 deep (under half the width of vit_tiny). Augmentation: the "mae" preset (random resized crop +
flip; the paper uses crop scale (0.3, 1) and no flip, no colour jitter).

The backbone ViT carries a CLS token (evaluation reads it); I-JEPA's has none. The CLS token stays in both
encoders, so it is trained through attention, and is dropped before the predictor and the targets.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.augment import multiblock_masks
from workbench.config import check_choice, check_pair, check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, ema_update, register
from workbench.methods.mae import default_generator, sincos_pos_embed_2d


@dataclass
class IJEPAConfig:
    """I-JEPA hyper-parameters (paper masks, EMA and loss; a narrow predictor sized for small ViTs)."""

    predictor_dim: int = 96
    predictor_depth: int = 4
    predictor_heads: int = 3
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    momentum: float = 0.996
    final_momentum: float = 1.0
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"

    def __post_init__(self) -> None:
        o = "IJEPAConfig"
        for name in ("predictor_dim", "predictor_depth", "predictor_heads", "num_targets"):
            check_range(o, name, getattr(self, name), 1)
        if self.predictor_dim % 4 or self.predictor_dim % self.predictor_heads:
            raise ValueError(f"IJEPAConfig.predictor_dim={self.predictor_dim} must be divisible by 4 (2-D sin-cos "
                             f"positions) and by predictor_heads={self.predictor_heads}")
        check_pair(o, "target_scale", self.target_scale, low=0.0, high=1.0)
        check_pair(o, "target_ratio", self.target_ratio, low=0.0)
        check_pair(o, "context_scale", self.context_scale, low=0.0, high=1.0)
        check_range(o, "momentum", self.momentum, 0.0, 1.0)
        check_range(o, "final_momentum", self.final_momentum, self.momentum, 1.0)
        check_choice(o, "loss", self.loss, ["smooth_l1", "mse"])


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] (or [1, L, D]), idx [B, K] -> [B, K, D]."""
    x = x.expand(idx.shape[0], -1, -1)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Predictor(nn.Module):
    """Narrow ViT: context tokens [B, Kc, D] at ``context`` [B, Kc] + mask tokens at ``targets`` [B, M, Kt]
    -> predicted target representations [B, M, Kt, D]; each target block is predicted in its own sequence."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], dim: int = 96, depth: int = 4, heads: int = 3):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_pos_embed_2d(dim, grid).unsqueeze(0), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.proj = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, block in enumerate(self.blocks, start=1):  # the official depth-wise rescaling of residual outputs
            block.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            block.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))

    def forward(self, ctx: torch.Tensor, context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, m, kt = targets.shape
        kc = context.shape[1]
        x = self.embed(ctx) + _gather_tokens(self.pos, context)  # [B, Kc, d]
        x = x.unsqueeze(1).expand(-1, m, -1, -1).reshape(b * m, kc, -1)
        t = self.mask_token + _gather_tokens(self.pos, targets.reshape(b * m, kt))  # [B*M, Kt, d]
        x = self.norm(self.blocks(torch.cat([x, t.to(x.dtype)], dim=1)))[:, kc:]
        return self.proj(x).reshape(b, m, kt, -1)


def ijepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Regression of predicted [B, M, Kt, D] onto target representations (no gradient), mean over everything."""
    target = target.detach().float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target)
    return F.mse_loss(pred.float(), target)


@register
class IJEPA(Method):
    """Context encoder (the backbone) + predictor regressing the EMA target encoder's block representations."""

    name = "ijepa"
    Config = IJEPAConfig
    preset = "mae"
    recipe = Recipe(optimizer="adamw", lr=1.25e-4, weight_decay=0.04, warmup_epochs=40)
    num_views = 1
    requires_vit = True
    min_batch_size = 1

    def __init__(self, backbone: nn.Module, config: IJEPAConfig):
        super().__init__(backbone, config)
        c = config
        self.predictor = Predictor(backbone.feature_dim, backbone.grid, c.predictor_dim, c.predictor_depth,
                                   c.predictor_heads)
        self.target_encoder = copy.deepcopy(backbone).requires_grad_(False)

    @torch.no_grad()
    def targets(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Layer-normed target-encoder patch tokens of the full images at ``targets`` [B, M, Kt] -> [B, M, Kt, D]."""
        h = self.target_encoder.forward_tokens(images)[:, 1:]
        h = F.layer_norm(h, (h.shape[-1],))
        b, m, kt = targets.shape
        return _gather_tokens(h, targets.reshape(b, m * kt)).reshape(b, m, kt, -1)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, images = self.config, batch.views[0]
        g = default_generator(progress.generator, images.device)
        masks = multiblock_masks(images.shape[0], self.backbone.grid, g, images.device,
                                 num_targets=c.num_targets, target_scale=tuple(c.target_scale),
                                 target_ratio=tuple(c.target_ratio), context_scale=tuple(c.context_scale))
        h = self.targets(images, masks.targets)
        tokens = self.backbone.forward_tokens(images, masks.context)  # [B, 1+Kc, D]
        pred = self.predictor(tokens[:, 1:], masks.context, masks.targets)
        loss = ijepa_loss(pred, h, c.loss)
        # features: CLS of the context encoding (saves a second full forward for the monitors)
        return StepOutput(loss, tokens[:, 0].detach(), {})

    @torch.no_grad()
    def predict_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One multi-block masking of normalised ``images`` [B, C, H, W], as in training -> ``target`` [B, L, D] (the
        layer-normed target-encoder tokens of every patch), ``pred`` [B, L, D] (the predictor's output at the target
        patches, zero elsewhere; where target blocks overlap, the last block's) and ``mask`` [B, L] (1 = predicted)."""
        c = self.config
        g = default_generator(generator, images.device)
        masks = multiblock_masks(images.shape[0], self.backbone.grid, g, images.device, num_targets=c.num_targets,
                                 target_scale=tuple(c.target_scale), target_ratio=tuple(c.target_ratio),
                                 context_scale=tuple(c.context_scale))
        h = self.target_encoder.forward_tokens(images)[:, 1:].float()
        target = F.layer_norm(h, (h.shape[-1],))
        tokens = self.backbone.forward_tokens(images, masks.context)
        pred = self.predictor(tokens[:, 1:], masks.context, masks.targets).float()  # [B, M, Kt, D]
        b, m, kt, d = pred.shape
        idx = masks.targets.reshape(b, m * kt)
        out = torch.zeros_like(target).scatter(1, idx.unsqueeze(-1).expand(-1, -1, d), pred.reshape(b, m * kt, d))
        mask = torch.zeros(target.shape[:2], device=images.device).scatter(1, idx, 1.0)
        return {"target": target, "pred": out, "mask": mask}

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        c = self.config
        m = c.momentum + (c.final_momentum - c.momentum) * progress.fraction
        ema_update(self.target_encoder, self.backbone, m)

    def teacher_modules(self) -> list[nn.Module]:
        return [self.target_encoder]
