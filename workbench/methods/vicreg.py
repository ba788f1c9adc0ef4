"""VICReg (Bardes, Ponce & LeCun, 2022): variance-invariance-covariance regularisation of two views' embeddings.

Pseudo-code, as written here (the official code, facebookresearch/vicreg ``main_vicreg.py``)::

    z1, z2 = g(f(x1)), g(f(x2))                          # [B, D] each; backbone f, expander g
    inv = mse(z1, z2)                                    # on this rank's batch
    z1, z2 = gather(z1), gather(z2)                      # global batch of N, with gradients
    var = mean(relu(1 - sqrt(var(z1) + eps))) / 2 + (same for z2) / 2
    cov = sum_{i != j} cov(z1)_ij^2 / D + (same for z2)  # cov over the global batch, divided by N - 1
    loss = 25 * inv + 25 * var + 1 * cov

Defaults: loss weights 25 / 25 / 1 and eps 1e-4 (paper); solo-learn ``scripts/pretrain/cifar/vicreg.yaml`` for
the rest (expander 3 layers 2048 -> 2048, LARS lr 0.3 per 256 images, weight decay 1e-4, warm-up 10 epochs).
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
class VICRegConfig:
    """VICReg hyper-parameters: weights of the invariance, variance and covariance terms, the variance eps."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    eps: float = 1e-4

    def __post_init__(self) -> None:
        o = "VICRegConfig"
        for name in ("proj_hidden_dim", "proj_output_dim", "proj_layers"):
            check_range(o, name, getattr(self, name), 1)
        for name in ("sim_weight", "var_weight", "cov_weight"):
            check_range(o, name, getattr(self, name), 0.0)
        check_range(o, "eps", self.eps, 0.0, low_inclusive=False)


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) terms for z1, z2 [B, D]; variance and covariance over the global batch."""
    with torch.autocast(z1.device.type, enabled=False):  # covariances in float32 under autocast
        dtype = torch.promote_types(z1.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
        z1, z2 = z1.to(dtype), z2.to(dtype)
        inv = F.mse_loss(z1, z2)
        z1, z2 = gather(z1), gather(z2)
        n, d = z1.shape
        if n < 2:
            raise ValueError(f"vicreg needs a global batch of at least 2 samples, got {n}")
        z1, z2 = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
        std1, std2 = torch.sqrt(z1.var(dim=0) + eps), torch.sqrt(z2.var(dim=0) + eps)
        var = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
        cov1, cov2 = z1.T @ z1 / (n - 1), z2.T @ z2 / (n - 1)                # [D, D] each
        off1 = cov1.pow(2).sum() - cov1.diagonal().pow(2).sum()              # sum of squared off-diagonals
        off2 = cov2.pow(2).sum() - cov2.diagonal().pow(2).sum()
        cov = off1 / d + off2 / d
        return inv, var, cov


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Weighted sum of :func:`vicreg_terms`: z1, z2 [B, D] -> scalar."""
    inv, var, cov = vicreg_terms(z1, z2, eps)
    return sim_weight * inv + var_weight * var + cov_weight * cov


@register
class VICReg(Method):
    """Backbone + expander; invariance pulls views together, variance and covariance keep dimensions alive."""

    name = "vicreg"
    Config = VICRegConfig
    preset = "byol"
    recipe = Recipe(weight_decay=1e-4)

    def __init__(self, backbone: Backbone, config: VICRegConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, c.proj_layers)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, (x1, x2) = self.config, self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        inv, var, cov = vicreg_terms(self.projector(f1), self.projector(f2), c.eps)
        loss = c.sim_weight * inv + c.var_weight * var + c.cov_weight * cov
        logs = {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
        return StepOutput(loss, f1.detach(), logs)
