"""Barlow Twins (Zbontar et al., 2021): make the cross-correlation of two views' embeddings the identity.

Pseudo-code of the paper (Alg. 1), as written here::

    z1, z2 = g(f(x1)), g(f(x2))                          # [B, D] each; backbone f, projector g
    z1n, z2n = batchnorm(gather(z1)), batchnorm(gather(z2))   # standardised over the global batch of N
    c = z1n.T @ z2n / N                                  # [D, D] cross-correlation
    loss = scale * (sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2)

Defaults: lambda 0.0051 (paper); solo-learn ``scripts/pretrain/cifar/barlow.yaml`` for the rest (projector
3 layers 2048 -> 2048, scale_loss 0.1, LARS lr 0.3 per 256 images, weight decay 1e-4, warm-up 10 epochs).
The official code normalises with a (synchronised) BatchNorm without affine parameters; gathering the
embeddings with gradients and normalising over the global batch computes the same c.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, gather, register
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins hyper-parameters: ``lambd`` weighs the off-diagonal (redundancy) term, ``scale_loss`` the
    whole loss (solo-learn's CIFAR recipe; 1.0 in the paper's final ImageNet recipe)."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    lambd: float = 0.0051
    scale_loss: float = 0.1

    def __post_init__(self) -> None:
        o = "BarlowTwinsConfig"
        for name in ("proj_hidden_dim", "proj_output_dim", "proj_layers"):
            check_range(o, name, getattr(self, name), 1)
        check_range(o, "lambd", self.lambd, 0.0)
        check_range(o, "scale_loss", self.scale_loss, 0.0, low_inclusive=False)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051,
                      scale_loss: float = 1.0) -> torch.Tensor:
    """Barlow Twins loss of z1, z2 [B, D] (gathered with gradients from all ranks first).

    Each embedding dimension is standardised over the global batch (batch mean, biased variance, eps 1e-5 as
    BatchNorm), c = z1n.T @ z2n / N, loss = scale_loss * (sum (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2).
    """
    with torch.autocast(z1.device.type, enabled=False):  # the D x D correlation in float32 under autocast
        dtype = torch.promote_types(z1.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
        z1, z2 = gather(z1.to(dtype)), gather(z2.to(dtype))
        n = z1.shape[0]
        if n < 2:
            raise ValueError(f"barlow_twins_loss needs a global batch of at least 2 samples, got {n}")
        z1n = F.batch_norm(z1, None, None, training=True)
        z2n = F.batch_norm(z2, None, None, training=True)
        c = z1n.T @ z2n / n                                                     # [D, D]
        diag = torch.diagonal(c)
        on_diag = (1 - diag).pow(2).sum()
        off_diag = c.pow(2).sum() - diag.pow(2).sum()
        return scale_loss * (on_diag + lambd * off_diag)


@register
class BarlowTwins(Method):
    """Backbone + projector; the loss decorrelates embedding dimensions while aligning the two views."""

    name = "barlow_twins"
    Config = BarlowTwinsConfig
    preset = "byol"
    recipe = Recipe(weight_decay=1e-4)

    def __init__(self, backbone: Backbone, config: BarlowTwinsConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, c.proj_layers)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, (x1, x2) = self.config, self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        loss = barlow_twins_loss(self.projector(f1), self.projector(f2), c.lambd, c.scale_loss)
        return StepOutput(loss, f1.detach(), {})
