"""DINO (Caron et al., 2021): self-distillation with no labels.

Pseudo-code of the paper, as written here::

    t = softmax((teacher(global crops) - center) / teacher_temp)          # teacher sees the 2 global crops
    s = log_softmax(student(all crops) / student_temp)                    # student sees global + local crops
    loss = mean over pairs (teacher view t, student view v != t) of -sum(t * s)
    center <- m_c * center + (1 - m_c) * mean(teacher outputs)           # all-reduced across ranks
    teacher <- m * teacher + (1 - m) * student                            # m: 0.996 -> 1, cosine

Defaults follow facebookresearch/dino (ViT recipe: AdamW 5e-4 per 256 images, wd 0.04, head 2048-2048-256,
student temperature 0.1, teacher temperature 0.04 -> 0.07 over 30 epochs, centre momentum 0.9, last layer frozen
during the first epoch). ``out_dim`` defaults to 4096 (solo-learn's CIFAR recipe) instead of the paper's 65536;
``head_batch_norm`` is the official ``use_bn_in_head`` (off by default there and in solo-learn).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import (Batch, Method, Progress, Recipe, StepOutput, all_reduce, cosine_momentum,
                                    ema_update, mean_off_diagonal, register, world_size)


@dataclass
class DINOConfig:
    """DINO hyper-parameters (paper defaults; ``out_dim`` from solo-learn's CIFAR recipe). The paper's ablations
    of its Fig. 7 are options: ``center_momentum=1`` keeps the centre at zero (no centring); ``teacher_temp`` =
    ``warmup_teacher_temp`` = ``student_temp`` removes the sharpening."""

    out_dim: int = 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    head_batch_norm: bool = False
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9
    momentum: float = 0.996
    freeze_last_layer_epochs: float = 1
    frozen_teacher: bool = False

    def __post_init__(self) -> None:
        o = "DINOConfig"
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "num_layers"):
            check_range(o, name, getattr(self, name), 1)
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            check_range(o, name, getattr(self, name), 0.0, low_inclusive=False)
        check_range(o, "warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs, 0)
        check_range(o, "center_momentum", self.center_momentum, 0.0, 1.0)
        check_range(o, "momentum", self.momentum, 0.0, 1.0)
        check_range(o, "freeze_last_layer_epochs", self.freeze_last_layer_epochs, 0)


class DINOHead(nn.Module):
    """MLP (Linear-GELU, ``num_layers`` Linears) -> L2-normalised bottleneck -> weight-normalised Linear (g = 1).

    [B, in_dim] -> [B, out_dim]. The last layer's rows are divided by their norm in every forward, which is
    ``weight_norm`` with the gain fixed to 1 (the paper's ``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if batch_norm else []) + [nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)  # direction v of weight_norm(g=1)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        h = self.mlp(x)
        v = self.last_layer.weight
        if freeze_last_layer:
            v = zero_grad_view(v)
        # the weight-normalised layer in float32 even under bf16 autocast: its outputs are cosines that the loss
        # divides by a temperature of 0.04 (bf16 rounds a cosine to ~4e-3, a logit error of ~0.1)
        with torch.autocast(x.device.type, enabled=False):
            z = F.normalize(h.float(), dim=-1)
            return F.linear(z, F.normalize(v.float(), dim=1))


def zero_grad_view(p: torch.Tensor) -> torch.Tensor:
    """``p`` with a zero gradient but still in the graph (freezes a layer; DDP still sees every parameter used)."""
    return p.detach() + 0.0 * p


def teacher_temperature(epoch: float, warmup_temp: float, temp: float, warmup_epochs: float) -> float:
    """Linear warm-up ``warmup_temp -> temp`` over ``warmup_epochs`` (fractional epochs), then constant."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return temp
    return warmup_temp + (temp - warmup_temp) * epoch / warmup_epochs


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float,
              student_temp: float = 0.1) -> torch.Tensor:
    """Cross-entropy H(teacher view t, student view v) averaged over all pairs with v != t, and over the batch.

    student_out [S, B, K] logits of all crops (global crops first), teacher_out [T, B, K] logits of the T
    global crops (T <= S), center [1, K]. The teacher side carries no gradient.
    """
    return cross_view_loss(student_out, teacher_targets(teacher_out, center, teacher_temp), student_temp)


@torch.no_grad()
def teacher_targets(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Centred and sharpened teacher probabilities: softmax((teacher_out - center) / teacher_temp) in float32,
    [T, B, K] -> [T, B, K]. Centring keeps one dimension from dominating; sharpening (a temperature below the
    student's) keeps the targets from going uniform."""
    with torch.autocast(teacher_out.device.type, enabled=False):  # float32 softmax under bf16
        return F.softmax((teacher_out.float() - center.float()) / teacher_temp, dim=-1)


@torch.no_grad()
def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats of probability rows [..., K]: log K for uniform targets, 0 for one-hot ones (the two
    collapses that DINO's sharpening and centring each prevent, the paper's Fig. 7)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()


def cross_view_loss(student_out: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """Cross-entropy of student logits [S, B, K] against teacher probabilities [T, B, K] (centred or Sinkhorn-Knopp
    codes, no gradient), averaged over all pairs of views (t, v) with v != t and over the batch."""
    with torch.autocast(student_out.device.type, enabled=False):  # float32 sums under bf16
        s = F.log_softmax(student_out.float() / student_temp, dim=-1)
        ce = -torch.einsum("tbk,sbk->ts", teacher_probs.detach().float(), s) / s.shape[1]  # [T, S] per pair
    try:
        return mean_off_diagonal(ce)
    except ValueError:
        raise ValueError("the DINO loss needs at least two views (pairs of the same view are skipped)") from None


@torch.no_grad()
def batch_center(teacher_out: torch.Tensor) -> torch.Tensor:
    """Mean teacher output over views and the global batch: [T, B, K] -> [1, K] (all-reduced across ranks)."""
    total = all_reduce(teacher_out.float().sum(dim=(0, 1)).unsqueeze(0))
    return total / (teacher_out.shape[0] * teacher_out.shape[1] * world_size())


def multicrop_pooled(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Pooled backbone features of each view, crops of equal size run as one batch (DINO's MultiCropWrapper):
    list of [B, C, s_i, s_i] -> [V, B, D]. A ViT embeds crops of other sizes with interpolated positions."""
    out, i = [], 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        x = torch.cat(views[i:j])
        if getattr(backbone, "kind", "cnn") == "vit":
            feats = backbone.encode(backbone.embed_any_size(x))[:, 0]
        else:
            feats = backbone(x)
        out.append(feats)
        i = j
    return torch.cat(out).reshape(len(views), views[0].shape[0], -1)


@register
class DINO(Method):
    """Student backbone + DINO head distilled from an EMA teacher that sees only the global crops."""

    name = "dino"
    Config = DINOConfig
    preset = "dino"
    recipe = Recipe(optimizer="adamw", lr=5e-4, weight_decay=0.04)

    def __init__(self, backbone: nn.Module, config: DINOConfig):
        super().__init__(backbone, config)
        c = config
        self.head = DINOHead(backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.num_layers,
                             c.head_batch_norm)
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, c.out_dim))

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, views, n_global = self.config, batch.views, batch.num_global
        epoch = progress.step / max(1, progress.steps_per_epoch)
        feats = multicrop_pooled(self.backbone, views)  # [V, B, D]
        v, b = feats.shape[:2]
        student = self.head(feats.flatten(0, 1), freeze_last_layer=epoch < c.freeze_last_layer_epochs)
        with torch.no_grad():
            teacher = self.teacher_head(multicrop_pooled(self.teacher_backbone, views[:n_global]).flatten(0, 1))
            teacher = teacher.reshape(n_global, b, -1)
        temp = teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs)
        targets = teacher_targets(teacher, self.center, temp)
        loss = cross_view_loss(student.reshape(v, b, -1), targets, c.student_temp)
        if self.training:
            self.center.mul_(c.center_momentum).add_(batch_center(teacher), alpha=1 - c.center_momentum)
        entropy = mean_entropy(targets)  # the loss is H(targets) + KL(targets || student), averaged over pairs
        return StepOutput(loss, feats[0].detach(),
                          {"teacher_temp": temp, "teacher_entropy": entropy, "kl": loss.detach() - entropy})

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        if self.config.frozen_teacher:
            return
        m = cosine_momentum(self.config.momentum, progress)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)

    def teacher_modules(self) -> list[nn.Module]:
        return [self.teacher_backbone, self.teacher_head]
