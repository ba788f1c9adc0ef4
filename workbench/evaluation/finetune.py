"""Few-label fine-tuning and distillation, the second and third steps of SimCLRv2 (Chen et al. 2020).

1. ``class_balanced_subset``: the same number of labeled images per class (1% or 10% of the train split),
   drawn with a fixed seed.
2. ``few_label_finetune``: backbone + linear head trained end to end on that subset (cross-entropy).
3. ``distill``: the fine-tuned teacher labels the whole (unlabeled) train split with a temperature softmax and
   a student (same or smaller backbone, fresh weights) minimises
   ``-sum_y P_T(y|x; tau) log P_S(y|x; tau)`` on it, no labels used.
CPU defaults are small (few epochs); raise ``epochs`` on a GPU.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.augment import channel_values, generate_views, make_preset, normalize
from workbench.data.base import ImageDataset
from workbench.device import resolve_device
from workbench.evaluation.knn import topk_accuracy
from workbench.models.encode import encode
from workbench.trained import DEFAULT_MEAN, DEFAULT_STD, check_compatible, load_trained, random_init_like


class Classifier(nn.Module):
    """A backbone with a linear head: images float [B, C, H, W] -> logits [B, num_classes]."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.feature_dim), num_classes)
        self.image_size = getattr(backbone, "image_size", None)
        self.in_chans = getattr(backbone, "in_chans", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class FinetuneResult:
    """Test accuracy of a fine-tuned (or distilled) classifier, with the model and what produced it."""

    model: Classifier
    top1: float
    top5: float | None
    num_labeled: int
    settings: dict[str, Any] = field(default_factory=dict)
    teacher_top1: float | None = None


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0,
                          num_classes: int | None = None) -> torch.Tensor:
    """Indices (int64, sorted) of ``round(fraction * N / C)`` images per class, drawn with ``seed``.

    Raises a ValueError naming the numbers when that is fewer than one image per class. A class with fewer
    images than its share contributes all of them.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1], e.g. 0.01 for a 1% label subset")
    labels = labels.long().cpu()
    if (labels < 0).any():
        raise ValueError("few-label fine-tuning needs labels; this split has unlabeled images (label -1)")
    n = labels.numel()
    c = num_classes or int(labels.max()) + 1
    per_class_exact = fraction * n / c
    per_class = int(round(per_class_exact))
    if per_class < 1:
        need_fraction = c / n
        need_n = math.ceil(c / fraction)
        raise ValueError(
            f"a {fraction:g} ({fraction:.1%}) label subset of {n} images over {c} classes is "
            f"{per_class_exact:.2f} images per class, fewer than one; pass fraction >= {need_fraction:.3g} "
            f"(e.g. fractions=({max(need_fraction, 0.1):.3g},)) or load at least {need_n} train images "
            f"(e.g. the data set option n={need_n})")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    shuffled = labels[order]
    # rank of each shuffled row within its class: stable sort by class keeps the random order inside a class
    sort_idx = torch.sort(shuffled, stable=True).indices
    counts = torch.bincount(shuffled, minlength=c)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[sort_idx] = torch.arange(n) - starts[shuffled[sort_idx]]
    return torch.sort(order[rank < per_class]).values


def _light_augment(kind: str | None, image_size: int, mean: tuple, std: tuple) -> Callable:
    """Batch transform uint8 [B, C, H, W] -> normalised float: ``None``/"none" (plain), "flip" (random
    horizontal flip, the default), or a workbench.augment preset name (its first view)."""
    if kind in (None, "none"):
        return lambda x, g: normalize(x, mean, std)
    if kind == "flip":
        def flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            do = torch.rand(x.shape[0], generator=g, device=g.device) < 0.5
            x = normalize(x, mean, std)
            return torch.where(do.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
        return flip
    cfg = make_preset(kind, image_size, mean=mean, std=std)
    return lambda x, g: generate_views(x, cfg, g).views[0]


def _train(model: nn.Module, images: torch.Tensor, loss_fn: Callable, transform: Callable, epochs: int,
           batch_size: int, lr: float, weight_decay: float, seed: int, dev: torch.device,
           min_steps: int = 0) -> list[float]:
    """SGD (momentum 0.9, nesterov) with a cosine schedule over ``epochs`` passes of ``images`` (more when that
    is fewer than ``min_steps`` steps: a 1% subset is a handful of batches); returns the losses.

    ``loss_fn(logits, index, x)`` gets the batch's row indices (targets are looked up there) and the input.
    """
    model.to(dev).train()
    n = images.shape[0]
    batch_size = max(1, min(batch_size, n))
    steps_per_epoch = max(1, n // batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    total = steps_per_epoch * epochs
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g_cpu = torch.Generator().manual_seed(seed)
    g_dev = torch.Generator(device=dev).manual_seed(seed) if dev.type == "cuda" else g_cpu
    images = images.to(dev)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g_cpu)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if idx.numel() < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # BatchNorm cannot train on one image
            x = transform(images[idx.to(dev)], g_dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x)
            loss = loss_fn(logits.float(), idx, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


def few_label_finetune(source: Any, train: ImageDataset, test: ImageDataset, fraction: float = 0.1, *,
                       checkpoint: str = "last", epochs: int = 5, min_steps: int = 100, batch_size: int = 64,
                       lr: float = 0.05, weight_decay: float = 0.0, augment: str | None = "flip", seed: int = 0,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       device: str | torch.device = "auto") -> FinetuneResult:
    """Fine-tune ``source``'s backbone (a copy) + a linear head end to end on a class-balanced ``fraction`` of
    ``train`` labels (seeded), then report test top-1 (top-5 where > 10 classes). SimCLRv2 step 2.

    Trains ``epochs`` passes, or ``min_steps`` steps where that is more (SimCLRv2 also fine-tunes longer on 1%).
    """
    trained = load_trained(source, checkpoint)
    backbone = trained.backbone
    check_compatible(backbone, train)
    check_compatible(backbone, test)
    chans = train.images.shape[1]
    rec_mean, rec_std = trained.stats(chans)
    mean_t = channel_values(mean, chans, "mean") if mean is not None else rec_mean
    std_t = channel_values(std, chans, "std") if std is not None else rec_std
    num_classes = max(train.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    idx = class_balanced_subset(train.labels, fraction, seed, num_classes)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), num_classes)
    images, targets = train.images[idx], train.labels[idx].to(dev)
    transform = _light_augment(augment, train.images.shape[-1], mean_t, std_t)
    losses = _train(model, images, lambda logits, i, x: F.cross_entropy(logits, targets[i.to(dev)]), transform,
                    epochs, batch_size, lr, weight_decay, seed, dev, min_steps)
    logits = encode(model, test.images, mean_t, std_t, device=dev)
    model.cpu().eval()
    top5 = topk_accuracy(logits, test.labels, 5) if num_classes > 10 else None
    return FinetuneResult(model, topk_accuracy(logits, test.labels, 1), top5, int(idx.numel()),
                          {"fraction": fraction, "epochs": epochs, "min_steps": min_steps, "steps": len(losses),
                           "batch_size": batch_size, "lr": lr,
                           "weight_decay": weight_decay, "augment": augment, "seed": seed,
                           "per_class": int(idx.numel()) // max(1, num_classes),
                           "final_loss": losses[-1] if losses else None,
                           "mean": list(mean_t), "std": list(std_t)})


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """SimCLRv2 distillation: mean over the batch of -sum_y softmax(t/T)_y * log_softmax(s/T)_y. Logits [B, C]."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return -(p_t * F.log_softmax(student_logits.float() / temperature, dim=1)).sum(1).mean()


def distill(teacher: Classifier | FinetuneResult, train: ImageDataset, test: ImageDataset, *,
            student: nn.Module | None = None, temperature: float = 1.0, epochs: int = 5, min_steps: int = 100,
            batch_size: int = 128, lr: float = 0.05, weight_decay: float = 0.0, augment: str | None = "flip",
            seed: int = 0,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            device: str | torch.device = "auto") -> FinetuneResult:
    """Distil a fine-tuned ``teacher`` into ``student`` (a backbone; default: the teacher's architecture with
    fresh weights) on all of ``train``'s images, ignoring its labels; SimCLRv2 step 3. The teacher labels each
    augmented batch as the student sees it. Returns the student's test accuracy and the teacher's."""
    settings_in: dict[str, Any] = {}
    if isinstance(teacher, FinetuneResult):
        settings_in = teacher.settings
        teacher = teacher.model
    if not isinstance(teacher, Classifier):
        raise TypeError(f"teacher must be a Classifier or the FinetuneResult of few_label_finetune, "
                        f"got {type(teacher).__name__}")
    chans = train.images.shape[1]
    mean_t = channel_values(mean if mean is not None else settings_in.get("mean", DEFAULT_MEAN), chans, "mean")
    std_t = channel_values(std if std is not None else settings_in.get("std", DEFAULT_STD), chans, "std")
    check_compatible(teacher, train)
    num_classes = teacher.head.out_features
    dev = resolve_device(device)
    torch.manual_seed(seed)
    student_backbone = random_init_like(teacher.backbone, seed) if student is None else copy.deepcopy(student)
    check_compatible(student_backbone, train)
    model = Classifier(student_backbone, num_classes)
    teacher = teacher.to(dev).eval()
    transform = _light_augment(augment, train.images.shape[-1], mean_t, std_t)

    def loss_fn(logits: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        return distillation_loss(logits, t_logits, temperature)

    losses = _train(model, train.images, loss_fn, transform, epochs, batch_size, lr, weight_decay, seed, dev,
                    min_steps)
    logits = encode(model, test.images, mean_t, std_t, device=dev)
    t_logits = encode(teacher, test.images, mean_t, std_t, device=dev)
    model.cpu().eval()
    teacher.cpu()
    top5 = topk_accuracy(logits, test.labels, 5) if num_classes > 10 else None
    return FinetuneResult(model, topk_accuracy(logits, test.labels, 1), top5, 0,
                          {"temperature": temperature, "epochs": epochs, "steps": len(losses),
                           "batch_size": batch_size, "lr": lr,
                           "weight_decay": weight_decay, "augment": augment, "seed": seed,
                           "student": type(student_backbone).__name__,
                           "final_loss": losses[-1] if losses else None},
                          teacher_top1=topk_accuracy(t_logits, test.labels, 1))
