"""MoCo v3 (Chen, Xie & He, 2021): a momentum encoder, a predictor and a symmetric InfoNCE loss.

Pseudo-code of the paper (Alg. 1), as written here::

    q1, q2 = h(g(f(x1))), h(g(f(x2)))                    # online: backbone f, projector g, predictor h
    k1, k2 = g_m(f_m(x1)), g_m(f_m(x2))                  # momentum encoder, no gradient
    loss = ctr(q1, k2) + ctr(q2, k1)
    ctr(q, k) = cross_entropy(normalize(q) @ normalize(gather(k)).T / t, own row of the global batch) * 2t
    f_m, g_m <- m * (f_m, g_m) + (1 - m) * (f, g)         # m: 0.99 -> 1 along a half cosine

Defaults: solo-learn ``scripts/pretrain/cifar/mocov3.yaml`` (projector 4096 -> 256, predictor hidden 4096,
temperature 0.2, momentum 0.99 -> 1, LARS lr 0.3 per 256 images, weight decay 1e-6, warm-up 10 epochs).
Head depths follow the official code (facebookresearch/moco-v3 ``moco/builder.py``): a 2-layer projector and a
predictor without a final BN for CNNs, a 3-layer projector and a predictor ending in BN for ViTs; every projector
ends in a BN without affine parameters. (The official code has no biases in its Linears; ``mlp`` keeps one
on the predictor's last Linear when no BN follows it.)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import (Batch, Method, Progress, StepOutput, cosine_momentum, ema_update, gather, rank,
                                    register)
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class MoCoV3Config:
    """MoCo v3 hyper-parameters; ``proj_layers`` / ``pred_last_bn`` None = the official choice for the backbone
    kind (CNN: 2 layers, no predictor BN; ViT: 3 layers, predictor BN)."""

    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    proj_layers: int | None = None
    pred_last_bn: bool | None = None
    temperature: float = 0.2
    momentum: float = 0.99
    final_momentum: float = 1.0

    def __post_init__(self) -> None:
        o = "MoCoV3Config"
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check_range(o, name, getattr(self, name), 1)
        if self.proj_layers is not None:
            check_range(o, "proj_layers", self.proj_layers, 1)
        check_range(o, "temperature", self.temperature, 0.0, low_inclusive=False)
        check_range(o, "momentum", self.momentum, 0.0, 1.0)
        check_range(o, "final_momentum", self.final_momentum, self.momentum, 1.0)


def infonce_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3's ``contrastive_loss``: q [B, d] queries, k [B, d] keys (no gradient; gathered from all ranks);
    row i of q matches row i of k, every other key of the global batch is a negative. Scaled by 2 * temperature."""
    with torch.autocast(q.device.type, enabled=False):  # logits in float32 even under bf16 autocast
        dtype = torch.promote_types(q.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
        q = F.normalize(q.to(dtype), dim=1)
        k_all = gather(F.normalize(k.detach().to(dtype), dim=1))            # [N, d]
        logits = q @ k_all.T / temperature                                # [B, N]
        labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return F.cross_entropy(logits, labels) * (2 * temperature)


@register
class MoCoV3(Method):
    """Online backbone + projector + predictor; momentum backbone + projector give the keys."""

    name = "mocov3"
    Config = MoCoV3Config
    preset = "byol"

    def __init__(self, backbone: Backbone, config: MoCoV3Config):
        super().__init__(backbone, config)
        c, vit = config, getattr(backbone, "kind", "cnn") == "vit"
        proj_layers = c.proj_layers if c.proj_layers is not None else (3 if vit else 2)
        pred_bn = c.pred_last_bn if c.pred_last_bn is not None else vit
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, proj_layers,
                             last_batch_norm=True, last_bn_affine=False)
        self.predictor = mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2,
                             last_batch_norm=pred_bn, last_bn_affine=False)
        self.momentum_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, (x1, x2) = self.config, self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        q1, q2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = infonce_loss(q1, k2, c.temperature) + infonce_loss(q2, k1, c.temperature)
        return StepOutput(loss, f1.detach(), {"momentum": cosine_momentum(c.momentum, progress, c.final_momentum)})

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        m = cosine_momentum(self.config.momentum, progress, self.config.final_momentum)
        ema_update(self.momentum_backbone, self.backbone, m)
        ema_update(self.momentum_projector, self.projector, m)

    def teacher_modules(self) -> list[nn.Module]:
        return [self.momentum_backbone, self.momentum_projector]
