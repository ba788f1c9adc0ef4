"""Optimizers and learning-rate schedules: LARS (solo-learn's variant), AdamW, SGD; warm-up + cosine.

Parameters with ``ndim <= 1`` (biases, norm weights) go to a group without weight decay; under LARS that group
is also excluded from the layer-wise adaptation (``exclude_bias_n_norm``), as in SimCLR/BYOL/solo-learn.
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


def param_groups(modules: nn.Module | Iterable[nn.Parameter], weight_decay: float,
                 exclude: Iterable[nn.Parameter] = ()) -> list[dict]:
    """Two groups of the trainable parameters: ``decay`` (ndim >= 2, weight decay) and ``no_decay``
    (ndim <= 1: biases and norm weights; weight decay 0, ``lars_exclude=True``). ``exclude``: parameters to
    leave out (teachers)."""
    params = modules.parameters() if isinstance(modules, nn.Module) else modules
    skip = {id(p) for p in exclude}
    decay, no_decay, seen = [], [], set()
    for p in params:
        if not p.requires_grad or id(p) in skip or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lars_exclude": False, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True, "name": "no_decay"})
    return groups


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> Optimizer:
    """``lars`` | ``adamw`` | ``sgd`` over ``groups`` (from :func:`param_groups`) at learning rate ``lr``."""
    if not groups:
        raise ValueError("the method has no trainable parameters to optimize")
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


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LambdaLR:
    """Per-step linear warm-up + cosine decay to 0 (call ``.step()`` after each optimizer step)."""
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
