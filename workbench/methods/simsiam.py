"""SimSiam (Chen & He, 2021): a siamese network with a predictor and a stop-gradient, no negatives, no EMA.

Pseudo-code of the paper (Alg. 1), as written here::

    z1, z2 = g(f(x1)), g(f(x2))                          # backbone f, projector g (its output batch-normalised)
    p1, p2 = h(z1), h(z2)                                # predictor h (bottleneck MLP)
    loss = D(p1, z2) / 2 + D(p2, z1) / 2
    D(p, z) = -mean(cos(p, stopgrad(z)))

Defaults: solo-learn ``scripts/pretrain/cifar/simsiam.yaml`` (projector 3 layers 2048 -> 2048 ending in BN
without affine, predictor 2048 -> 512 -> 2048, SGD lr 0.5 per 256 images, weight decay 1e-5, warm-up 10 epochs).
The paper's CIFAR recipe: SGD lr 0.03 per 256, weight decay 5e-4; its ImageNet recipe keeps the predictor's
learning rate fixed (not applied here: the engine schedules every parameter group alike).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import Batch, Method, Progress, StepOutput, register
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class SimSiamConfig:
    """SimSiam hyper-parameters (solo-learn CIFAR recipe; the paper's ImageNet heads are the same shape)."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    pred_hidden_dim: int = 512
    proj_layers: int = 3

    def __post_init__(self) -> None:
        o = "SimSiamConfig"
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "proj_layers"):
            check_range(o, name, getattr(self, name), 1)


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -mean_i cos(p_i, z_i) with a stop-gradient on z: p, z [B, d] -> scalar in [-1, 1]."""
    dtype = torch.promote_types(p.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
    return -F.cosine_similarity(p.to(dtype), z.detach().to(dtype), dim=-1).mean()


@register
class SimSiam(Method):
    """Backbone + projector + predictor; each view's prediction matches the other view's (stopped) projection."""

    name = "simsiam"
    Config = SimSiamConfig
    preset = "simclr"
    recipe = {"optimizer": "sgd", "lr": 0.5, "weight_decay": 1e-5, "warmup_epochs": 10, "momentum": 0.9}

    def __init__(self, backbone: Backbone, config: SimSiamConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, c.proj_layers,
                             last_batch_norm=True, last_bn_affine=False)
        self.predictor = mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        if len(batch.views) < 2:
            raise ValueError(f"simsiam needs 2 views per image, got {len(batch.views)}; use the 'simclr' preset")
        x1, x2 = batch.views[:2]
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine_loss(p1, z2) / 2 + negative_cosine_loss(p2, z1) / 2
        z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()  # collapse alarm: ~1/sqrt(d) if healthy
        return StepOutput(loss, f1.detach(), {"z_std": z_std})
