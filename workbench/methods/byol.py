"""BYOL (Grill et al., 2020): bootstrap your own latent with an EMA target network and a predictor.

Pseudo-code of the paper, as written here::

    p1, p2 = q(g(f(x1))), q(g(f(x2)))                    # online: backbone f, projector g, predictor q
    z1, z2 = g_t(f_t(x1)), g_t(f_t(x2))                  # target (EMA of f, g), no gradient
    loss = l(p1, z2) + l(p2, z1),  l(p, z) = mean(2 - 2 cos(p, z))
    f_t, g_t <- tau * (f_t, g_t) + (1 - tau) * (f, g)    # tau: base -> 1 along a half cosine

Defaults: solo-learn ``scripts/pretrain/cifar/byol.yaml`` (projector 4096 -> 256, predictor hidden 4096,
tau 0.99 -> 1, LARS lr 1.0 per 256 images, weight decay 1e-5, warm-up 10 epochs). The paper's ImageNet recipe
uses tau 0.996 and LARS lr 0.2, weight decay 1.5e-6.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import (Batch, Method, Progress, Recipe, StepOutput, cosine_momentum, ema_update,
                                    register)
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class BYOLConfig:
    """BYOL hyper-parameters (solo-learn CIFAR recipe); ``momentum`` is the base tau, ``final_momentum`` its end."""

    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum: float = 0.99
    final_momentum: float = 1.0

    def __post_init__(self) -> None:
        o = "BYOLConfig"
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check_range(o, name, getattr(self, name), 1)
        check_range(o, "momentum", self.momentum, 0.0, 1.0)
        check_range(o, "final_momentum", self.final_momentum, self.momentum, 1.0)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 - 2 cos(p_i, z_i): p [B, d] online predictions, z [B, d] targets (detached)."""
    dtype = torch.promote_types(p.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
    return (2 - 2 * F.cosine_similarity(p.to(dtype), z.detach().to(dtype), dim=-1)).mean()


@register
class BYOL(Method):
    """Online backbone + projector + predictor regress the EMA target's projection of the other view."""

    name = "byol"
    Config = BYOLConfig
    preset = "byol"
    recipe = Recipe(lr=1.0, weight_decay=1e-5)

    def __init__(self, backbone: Backbone, config: BYOLConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, 2)
        self.predictor = mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, (x1, x2) = self.config, self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        p1, p2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(x1))
            z2 = self.target_projector(self.target_backbone(x2))
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return StepOutput(loss, f1.detach(), {"momentum": cosine_momentum(c.momentum, progress, c.final_momentum)})

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        tau = cosine_momentum(self.config.momentum, progress, self.config.final_momentum)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)

    def teacher_modules(self) -> list[nn.Module]:
        return [self.target_backbone, self.target_projector]
