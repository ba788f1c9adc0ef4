"""Random-teacher distillation (Sarnthein et al., 2023, "Random Teachers are Good Teachers").

DINO's student, head and loss, distilled from a teacher that stays at its random initialisation: no EMA, no
centring, no labels, and (with the ``none`` preset) no augmentation. The student still learns features that its
teacher does not have, the more so the closer it starts to the teacher ("locality"). Pseudo-code::

    teacher = random init (backbone + DINO head), frozen, in eval mode         # never updated
    student = ((1 - a) * teacher + a * fresh) / sqrt((1 - a)^2 + a^2)           # per parameter, a = init_alpha
    t = softmax(teacher(global views) / teacher_temp)
    s = log_softmax(student(all views) / student_temp)
    loss = mean over pairs (teacher view t, student view v != t) of -sum(t * s)

``fresh`` is an independent random initialisation of the same architecture; the division keeps the variance of
a random initialisation (the official ``s_init=interpolated`` with ``s_init_var_preserving``). ``init_alpha`` 0 is
a copy of the teacher, 1 an independent network. With the ``none`` preset both views are the same un-augmented
image, so each teacher output is matched with the student's output of the same image: the paper's setting
without augmentation. Any other preset (e.g. ``dino``) distils across augmented views.

Defaults follow safelix/dinopl ``configs/cifar10_distillation_v2.json``: temperatures 1, no centring, AdamW lr
1e-3 without weight decay, teacher in eval mode (its BatchNorm uses its initial running statistics, the student
its batch statistics, so even a copy of the teacher has a gradient). ``out_dim`` is 4096 (the paper's 65536 is
a GPU size), as in workbench's DINO.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from workbench.config import check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, register
from workbench.methods.dino import DINOHead, dino_loss, mean_entropy, multicrop_pooled, teacher_targets
from workbench.models.reinit import random_init_like


@dataclass
class RandomTeacherConfig:
    """DINO head sizes, the two temperatures, and ``init_alpha``: where the student starts on the line from its
    teacher (0) to an independent random network (1)."""

    out_dim: int = 4096
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    student_temp: float = 1.0
    teacher_temp: float = 1.0
    init_alpha: float = 0.0

    def __post_init__(self) -> None:
        o = "RandomTeacherConfig"
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "num_layers"):
            check_range(o, name, getattr(self, name), 1)
        for name in ("student_temp", "teacher_temp"):
            check_range(o, name, getattr(self, name), 0.0, low_inclusive=False)
        check_range(o, "init_alpha", self.init_alpha, 0.0, 1.0)


@torch.no_grad()
def interpolate_(student: nn.Module, teacher: nn.Module, fresh: nn.Module, alpha: float) -> None:
    """In place: every parameter of ``student`` <- ((1 - alpha) teacher + alpha fresh) / sqrt((1 - alpha)^2 +
    alpha^2); buffers (BatchNorm statistics) copied from ``teacher``. The three modules share one architecture."""
    scale = 1.0 / math.sqrt((1 - alpha) ** 2 + alpha ** 2)
    for s, t, f in zip(student.parameters(), teacher.parameters(), fresh.parameters(), strict=True):
        s.copy_(((1 - alpha) * t + alpha * f) * scale)
    for s, t in zip(student.buffers(), teacher.buffers(), strict=True):
        s.copy_(t)


@register
class RandomTeacher(Method):
    """Student backbone + DINO head distilled from a frozen random teacher that sees only the global views."""

    name = "random_teacher"
    Config = RandomTeacherConfig
    preset = "none"
    recipe = Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.0, warmup_epochs=0)

    def __init__(self, backbone: nn.Module, config: RandomTeacherConfig):
        super().__init__(backbone, config)
        c = config
        make_head = lambda: DINOHead(backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim,  # noqa: E731
                                     c.num_layers)
        self.head = make_head()
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        if c.init_alpha > 0:  # the independent draw comes from the run's seeded stream
            fresh_backbone = random_init_like(backbone, int(torch.randint(2 ** 31 - 1, ())))
            interpolate_(self.backbone, self.teacher_backbone, fresh_backbone, c.init_alpha)
            interpolate_(self.head, self.teacher_head, make_head(), c.init_alpha)
        self.train()

    def train(self, mode: bool = True) -> "RandomTeacher":
        """Train/eval the student; the teacher stays in eval mode (its BatchNorm statistics never move)."""
        super().train(mode)
        self.teacher_backbone.eval()
        self.teacher_head.eval()
        return self

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, views, n_global = self.config, batch.views, batch.num_global
        feats = multicrop_pooled(self.backbone, views)  # [V, B, D]
        v, b = feats.shape[:2]
        student = self.head(feats.flatten(0, 1)).reshape(v, b, -1)
        with torch.no_grad():
            teacher = self.teacher_head(multicrop_pooled(self.teacher_backbone, views[:n_global]).flatten(0, 1))
            teacher = teacher.reshape(n_global, b, -1)
            entropy = mean_entropy(teacher_targets(teacher, teacher.new_zeros(()), c.teacher_temp))
        loss = dino_loss(student, teacher, teacher.new_zeros(()), c.teacher_temp, c.student_temp)
        return StepOutput(loss, feats[0].detach(), {"kl": loss.detach() - entropy})

    def teacher_modules(self) -> list[nn.Module]:
        return [self.teacher_backbone, self.teacher_head]
