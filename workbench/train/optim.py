"""Optimizers and learning-rate schedules: LARS (solo-learn's variant), AdamW, SGD; warm-up + cosine.

Parameters with ``ndim <= 1`` (biases, norm weights) go to a group without weight decay; under LARS that group
is also excluded from the layer-wise adaptation (``exclude_bias_n_norm``), as in SimCLR/BYOL/solo-learn.
DINOv2's recipe (facebookresearch/dinov2 ``param_groups.py``, ``train.py``), for any method: a cosine weight-decay
schedule, layer-wise learning-rate decay over a ViT's blocks and a smaller learning rate for the patch embedding,
as per-group multipliers that the per-step schedule applies.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class LARS(Optimizer):
    """LARS as in solo-learn (``solo/utils/lars.py``), SGD with momentum underneath.

    For a parameter p of a group with ``lars_exclude=False``, with g = grad, wd = weight decay::

        local_lr = eta * ||p|| / (||g|| + wd * ||p|| + eps)            (if ||p|| > 0 and ||g|| > 0, else 1)
        if clip_lr: local_lr = min(local_lr / lr, 1)
        d = (g + wd * p) * local_lr
    and for an excluded group (biases, norms) ``d = g`` (no decay, no adaptation). Then
    ``buf = momentum * buf + d`` (first step: buf = d) and ``p -= lr * buf``.

    Defaults ``eta=0.02, clip_lr=True`` are solo-learn's CIFAR recipes; the LARS paper / BYOL use
    ``eta=0.001, clip_lr=False``.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, eps: float = 1e-8, clip_lr: bool = True, lars_exclude: bool = False):
        if lr <= 0:
            raise ValueError(f"LARS lr={lr} must be > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, clip_lr=clip_lr,
                        lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr = group["weight_decay"], group["lr"]
            if not group["lars_exclude"]:
                # the trust ratios of the whole group as one vector [N] (a few ops, whatever N; no host sync)
                pn = torch.stack(torch._foreach_norm(params))
                gn = torch.stack(torch._foreach_norm(grads))
                local = group["eta"] * pn / (gn + wd * pn + group["eps"])
                if group["clip_lr"]:
                    local = torch.clamp(local / lr, max=1.0)
                local = torch.where((pn > 0) & (gn > 0), local, torch.ones_like(local))
                updates = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
                torch._foreach_mul_(updates, list(local.unbind()))
            else:
                updates = list(grads)
            if group["momentum"] != 0:
                states = [self.state[p] for p in params]
                fresh = [i for i, st in enumerate(states) if st.get("momentum_buffer") is None]
                for i in fresh:  # first step: buf = d
                    states[i]["momentum_buffer"] = updates[i].detach().clone()
                started = set(fresh)
                old = [i for i in range(len(params)) if i not in started]
                if old:
                    bufs = [states[i]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(bufs, group["momentum"])
                    torch._foreach_add_(bufs, [updates[i] for i in old])
                updates = [st["momentum_buffer"] for st in states]
            torch._foreach_add_(params, updates, alpha=-lr)
        return loss


EMBEDDING_NAMES = ("patch_embed", "pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token")


def _vit_trunk(backbone: nn.Module) -> nn.Module | None:
    """The first submodule of ``backbone`` holding a ``blocks`` list (a timm VisionTransformer), or None."""
    return next((m for m in backbone.modules()
                 if isinstance(getattr(m, "blocks", None), (nn.Sequential, nn.ModuleList))), None)


def vit_layer_ids(backbone: nn.Module) -> tuple[dict[int, int], int]:
    """DINOv2's layer numbering of a ViT backbone's parameters (``get_vit_lr_decay_rate``): the embeddings (patch
    embedding, positions, class/register/mask tokens) are layer 0, block i (0-based) is layer i + 1, everything
    else (final norm, pooling) is layer depth + 1. Returns ({id(parameter): layer}, depth). The blocks are the
    ``blocks`` list of the first submodule that has one (the workbench's ViT and timm ViTs); a backbone without
    one raises ConfigError."""
    from workbench.config import ConfigError

    owner = _vit_trunk(backbone) if getattr(backbone, "kind", "vit") == "vit" else None
    if owner is None:
        raise ConfigError(f"TrainConfig.layer_decay / patch_embed_lr_mult need a ViT backbone with transformer blocks "
                          f"(vit_tiny, vit_small or a timm: ViT); {type(backbone).__name__} has none: set "
                          f"train.layer_decay and train.patch_embed_lr_mult to None (or 1.0)")
    depth = len(owner.blocks)
    ids = {id(p): depth + 1 for p in backbone.parameters()}
    for name, p in owner.named_parameters():
        if name.split(".")[0] in EMBEDDING_NAMES:
            ids[id(p)] = 0
    for i, block in enumerate(owner.blocks):
        for p in block.parameters():
            ids[id(p)] = i + 1
    return ids, depth


def param_groups(modules: nn.Module | Iterable[nn.Parameter], weight_decay: float,
                 exclude: Iterable[nn.Parameter] = (), layer_decay: float | None = None,
                 patch_embed_lr_mult: float = 1.0, backbone: nn.Module | None = None) -> list[dict]:
    """The trainable parameters in groups: ``decay`` (ndim >= 2, weight decay) and ``no_decay`` (ndim <= 1: biases
    and norm weights; weight decay 0, ``lars_exclude=True``). ``exclude``: parameters to leave out (teachers).

    Each group carries ``lr_mult`` (its learning rate is ``lr * lr_mult``, the schedule included) and ``wd_mult``
    (1 or 0: whether a weight-decay schedule applies). ``layer_decay`` d (DINOv2's layer-wise lr decay) gives
    layer k of the student ``backbone`` (default ``modules.backbone``; numbering of :func:`vit_layer_ids`) the
    multiplier ``d ** (depth + 1 - k)``; the method's own ``mask_token`` counts as an embedding (DINOv2 keeps it in
    the backbone) and the other parameters (heads) get 1. ``patch_embed_lr_mult`` further scales the backbone's
    patch embedding. Groups are ordered by multiplier layer, the last (multiplier 1) first, decay before
    no_decay; without either option the result is the two groups above."""
    params = list(modules.named_parameters() if isinstance(modules, nn.Module)
                  else ((f"param{i}", p) for i, p in enumerate(modules)))
    skip = {id(p) for p in exclude}
    layers: dict[int, int] = {}
    patch: set[int] = set()
    depth = 0
    if layer_decay is not None or patch_embed_lr_mult != 1.0:
        backbone = backbone if backbone is not None else getattr(modules, "backbone", None)
        if backbone is None:
            raise ValueError("param_groups: layer_decay / patch_embed_lr_mult need the student backbone")
        layers, depth = vit_layer_ids(backbone)
        patch = {id(p) for n, p in _vit_trunk(backbone).named_parameters() if n.startswith("patch_embed.")}
        for name, p in params:  # DINOv2's mask token (a parameter of the method here)
            if name.split(".")[-1] == "mask_token" and id(p) not in layers:
                layers[id(p)] = 0
    buckets: dict[tuple[int, bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for _, p in params:
        if not p.requires_grad or id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        key = (layers.get(id(p), depth + 1), id(p) in patch, p.ndim >= 2)
        buckets.setdefault(key, []).append(p)
    groups = []
    for (layer, in_patch, decays), ps in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1], not kv[0][2])):
        mult = (layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0)
        mult *= patch_embed_lr_mult if in_patch else 1.0
        name = "decay" if decays else "no_decay"
        if layers:
            name += f"/layer{layer}" + ("/patch_embed" if in_patch else "")
        groups.append({"params": ps, "weight_decay": weight_decay if decays else 0.0, "lars_exclude": not decays,
                       "name": name, "lr_mult": float(mult), "wd_mult": 1.0 if decays else 0.0})
    return groups


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> Optimizer:
    """``lars`` | ``adamw`` | ``sgd`` over ``groups`` (from :func:`param_groups`) at learning rate ``lr`` (times
    each group's ``lr_mult``)."""
    if not groups:
        raise ValueError("the method has no trainable parameters to optimize")
    groups = [{**g, "lr": lr * g["lr_mult"]} if "lr_mult" in g else g for g in groups]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # on CUDA the fused kernels: one launch per step for all parameters, step counters on the device
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    raise ValueError(f"unknown optimizer {name!r}; choose one of ['lars', 'adamw', 'sgd']")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_factor: float = 0.0) -> float:
    """Learning-rate factor at ``step`` (0-based): linear ``(step + 1) / warmup_steps`` during warm-up, then a
    half cosine from 1 to ``final_factor`` over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * t))


class WarmupCosine:
    """Picklable ``lr_lambda`` for LambdaLR (so the scheduler's state dict stays plain python)."""

    def __init__(self, total_steps: int, warmup_steps: int, final_factor: float = 0.0):
        self.total_steps, self.warmup_steps, self.final_factor = total_steps, warmup_steps, final_factor

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.final_factor)


def cosine_weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """DINOv2's weight-decay schedule (``CosineScheduler`` without warm-up): ``end + (start - end) * 0.5 *
    (1 + cos(pi * step / total_steps))``, ``end`` from ``total_steps`` on."""
    t = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


class StepSchedule(LambdaLR):
    """Per-step schedules of every group: lr = group base lr (``lr * lr_mult``) times :func:`warmup_cosine`, and,
    with ``weight_decay_end`` set, weight decay = :func:`cosine_weight_decay` from ``weight_decay`` to
    ``weight_decay_end`` times the group's ``wd_mult`` (0 for biases and norms). Both are pure functions of the
    step count ``last_epoch`` (the step about to be taken), so a resumed run re-applies the same values."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
                 weight_decay_end: float | None = None):
        # set before LambdaLR's initial step(), which applies step 0
        self.total_steps, self.weight_decay, self.weight_decay_end = total_steps, weight_decay, weight_decay_end
        self.wd_mults = [float(g.get("wd_mult", 1.0 if g["weight_decay"] > 0 else 0.0))
                         for g in optimizer.param_groups]
        super().__init__(optimizer, WarmupCosine(total_steps, warmup_steps))

    def weight_decay_at(self, step: int) -> float:
        """The (unmultiplied) weight decay of step ``step``."""
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine_weight_decay(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def _apply_weight_decay(self) -> None:
        if self.weight_decay_end is None:
            return
        wd = self.weight_decay_at(self.last_epoch)
        for g, m in zip(self.optimizer.param_groups, self.wd_mults):
            g["weight_decay"] = wd * m

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        self._apply_weight_decay()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._apply_weight_decay()


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
                    weight_decay_end: float | None = None) -> StepSchedule:
    """Per-step linear warm-up + cosine decay of the lr to 0, and DINOv2's cosine weight decay from
    ``weight_decay`` to ``weight_decay_end`` (None: constant). Call ``.step()`` after each optimizer step."""
    return StepSchedule(optimizer, total_steps, warmup_steps, weight_decay, weight_decay_end)
