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

DirectPred (Tian et al., 2021; option ``direct_pred=True``): the predictor is one linear map that is not trained but
set after every step from the projections' correlation matrix, F <- rho F + (1 - rho) E[z z^T] = U diag(s) U^T,
W_p = U diag(sqrt(s / max s) + eps) U^T (rho 0.3, eps 0.01: solo-learn's defaults).

Ablations (paper Sec. 4.1, Fig. 2 and Table 1), for showing collapse: ``stop_gradient=False`` lets the gradient
flow through both branches of D(p, z) (the paper's "w/o stop-grad": the embeddings collapse to a constant within
a few epochs), and ``predictor=False`` replaces h by the identity ("no pred": collapses too). Both default to the
working method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import ConfigError, check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, register
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class SimSiamConfig:
    """SimSiam hyper-parameters (solo-learn CIFAR recipe; the paper's ImageNet heads are the same shape)."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    pred_hidden_dim: int = 512
    proj_layers: int = 3
    stop_gradient: bool = True  # False: the collapsing ablation, gradients through both branches of D(p, z)
    predictor: bool = True  # False: the collapsing ablation, h = identity (no predictor MLP)
    direct_pred: bool = False  # True: DirectPred's linear predictor set from the eigenbasis of E[z z^T]
    direct_pred_rho: float = 0.3
    direct_pred_eps: float = 0.01
    direct_pred_every: int = 1  # set the predictor every this many steps (DirectPred's update frequency)

    def __post_init__(self) -> None:
        o = "SimSiamConfig"
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "proj_layers"):
            check_range(o, name, getattr(self, name), 1)
        for name in ("stop_gradient", "predictor", "direct_pred"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{o}.{name}={getattr(self, name)!r} must be true or false")
        check_range(o, "direct_pred_rho", self.direct_pred_rho, 0.0, 1.0, high_inclusive=False)
        check_range(o, "direct_pred_eps", self.direct_pred_eps, 0.0)
        check_range(o, "direct_pred_every", self.direct_pred_every, 1)
        if self.direct_pred and not self.predictor:
            raise ConfigError(f"{o}.direct_pred=True sets the predictor directly; it needs predictor=True")


def direct_pred_weight(corr: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """DirectPred's predictor from a correlation matrix [d, d]: U diag(sqrt(s / max s) + eps) U^T (float32).

    The eigendecomposition runs in float32 with autocast off (solo-learn's precision; float64 made a 2048 x 2048
    ``eigh`` the slowest op of a GPU step): eigenvalues below ~1e-7 of the largest are noise either way, and the
    predictor's spectrum is floored at ``eps``."""
    with torch.autocast(corr.device.type, enabled=False):
        s, u = torch.linalg.eigh(corr.float())
        p = (s.clamp_min(0) / s.max().clamp_min(1e-12)).sqrt() + eps
        return (u * p.clamp_min(1e-4)) @ u.T


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """SimSiam's D(p, z) = -mean_i cos(p_i, z_i) with a stop-gradient on z: p, z [B, d] -> scalar in [-1, 1].

    ``stop_gradient=False`` keeps z in the graph (the paper's collapsing ablation)."""
    dtype = torch.promote_types(p.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
    z = z.detach() if stop_gradient else z
    return -F.cosine_similarity(p.to(dtype), z.to(dtype), dim=-1).mean()


@register
class SimSiam(Method):
    """Backbone + projector + predictor; each view's prediction matches the other view's (stopped) projection."""

    name = "simsiam"
    Config = SimSiamConfig
    preset = "simclr"
    recipe = Recipe(optimizer="sgd", lr=0.5, weight_decay=1e-5)

    def __init__(self, backbone: Backbone, config: SimSiamConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, c.proj_layers,
                             last_batch_norm=True, last_bn_affine=False)
        if c.direct_pred:
            self.predictor = nn.Linear(c.proj_output_dim, c.proj_output_dim, bias=False).requires_grad_(False)
            nn.init.eye_(self.predictor.weight)
            self.register_buffer("corr", torch.zeros(c.proj_output_dim, c.proj_output_dim))
        else:
            self.predictor = (mlp(c.proj_output_dim, c.pred_hidden_dim, c.proj_output_dim, 2) if c.predictor
                              else nn.Identity())

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        x1, x2 = self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        sg = self.config.stop_gradient
        loss = negative_cosine_loss(p1, z2, sg) / 2 + negative_cosine_loss(p2, z1, sg) / 2
        if self.config.direct_pred and self.training:  # F <- rho F + (1 - rho) E[z z^T] over both views
            with torch.no_grad(), torch.autocast(z1.device.type, enabled=False):  # z^T z in float32 under bf16
                z = torch.cat([z1, z2]).detach().float()
                # rho = 0 on the first update (F still zero), chosen on the device: no host sync
                rho = torch.where(self.corr.abs().sum() > 0, self.config.direct_pred_rho, 0.0)
                self.corr.mul_(rho).add_((z.T @ z / z.shape[0]) * (1 - rho))
        z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()  # collapse alarm: ~1/sqrt(d) if healthy
        return StepOutput(loss, f1.detach(), {"z_std": z_std})

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        """DirectPred: every ``direct_pred_every`` optimizer steps, set the predictor from the current correlation
        estimate (the ranks' estimates averaged first: each rank's EMA is linear in its batches, so averaging them
        now equals averaging at every step)."""
        c = self.config
        if not c.direct_pred or progress.step % c.direct_pred_every:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.corr)
            self.corr.div_(dist.get_world_size())
        self.predictor.weight.copy_(direct_pred_weight(self.corr, c.direct_pred_eps))
