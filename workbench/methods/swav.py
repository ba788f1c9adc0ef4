"""SwAV (Caron et al., 2020): swapped assignments between views, with online Sinkhorn-Knopp codes.

Pseudo-code of the paper, as written here::

    C <- normalize(C)                                  # prototypes [K, d], unit rows, every step
    z = normalize(head(backbone(crops)))               # [V, B, d]
    scores = z @ C.T                                   # [V, B, K]
    for each global crop i:  q_i = sinkhorn(scores_i)  # no gradient; equipartition over the global batch
    loss = mean_i mean_{v != i} CE(q_i, softmax(scores_v / temperature))

Defaults follow solo-learn's CIFAR recipe (head 2048 -> 128, 3000 prototypes, temperature 0.1, LARS 0.6 per
256 images, wd 1e-6) and the paper's Sinkhorn (3 iterations, epsilon 0.05). The prototypes are frozen for the
first epoch (the paper freezes them for 313 iterations, about one ImageNet epoch at batch 4096; solo-learn: 2).
The queue of past embeddings (paper: 3840, from epoch 15) is optional: ``queue_length=0`` turns it off, which
suits the small runs this workbench makes on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import check_range
from workbench.methods.base import (Batch, Method, Progress, Recipe, StepOutput, all_reduce, mean_off_diagonal,
                                    register, world_size)
from workbench.methods.dino import multicrop_pooled, zero_grad_view
from workbench.methods.queue import Queue
from workbench.models.heads import mlp


@dataclass
class SwAVConfig:
    """SwAV hyper-parameters (solo-learn CIFAR recipe, paper Sinkhorn settings)."""

    hidden_dim: int = 2048
    out_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_iterations: int = 3
    epsilon: float = 0.05
    freeze_prototypes_epochs: float = 1
    queue_length: int = 0
    queue_start_epoch: float = 15

    def __post_init__(self) -> None:
        o = "SwAVConfig"
        for name in ("hidden_dim", "out_dim", "num_prototypes", "sinkhorn_iterations"):
            check_range(o, name, getattr(self, name), 1)
        check_range(o, "temperature", self.temperature, 0.0, low_inclusive=False)
        check_range(o, "epsilon", self.epsilon, 0.0, low_inclusive=False)
        check_range(o, "freeze_prototypes_epochs", self.freeze_prototypes_epochs, 0)
        check_range(o, "queue_length", self.queue_length, 0)
        check_range(o, "queue_start_epoch", self.queue_start_epoch, 0)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Soft codes of ``scores`` [N, K] (sample-prototype similarities) by Sinkhorn-Knopp, in float32 over the
    global batch (sums all-reduced across ranks). Returns Q [N, K]: each row sums to 1; each prototype's
    column sum tends to N_global / K (equipartition) as ``iterations`` grows."""
    with torch.autocast(scores.device.type, enabled=False):
        s = scores.detach().float()
        shift = all_reduce(s.max(), "max")  # a global constant: cancels in the normalisation
        q = torch.exp((s - shift) / epsilon).t()  # [K, N]
        k, n = q.shape
        n_global = n * world_size()
        q = q / all_reduce(q.sum())
        for _ in range(iterations):
            q = q / (all_reduce(q.sum(dim=1, keepdim=True)) * k)  # each prototype gets mass 1/K
            q = q / (q.sum(dim=0, keepdim=True) * n_global)  # each sample gets mass 1/N
        return (q * n_global).t()


def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Swapped prediction: scores [V, B, K] of all crops, codes [G, B, K] of the G global crops (no gradient).
    Mean over global crops i and crops v != i of the cross-entropy between q_i and softmax(scores_v / T)."""
    with torch.autocast(scores.device.type, enabled=False):  # float32 under bf16 autocast
        logp = F.log_softmax(scores.float() / temperature, dim=-1)
        ce = -torch.einsum("gbk,vbk->gv", codes.float(), logp) / scores.shape[1]  # [G, V]
    try:
        return mean_off_diagonal(ce)
    except ValueError:
        raise ValueError("swav_loss needs at least two crops (a crop does not predict its own code)") from None


@register
class SwAV(Method):
    """Backbone + projection MLP + prototypes; codes from Sinkhorn on the global crops, predicted from the others."""

    name = "swav"
    Config = SwAVConfig
    preset = "simclr"  # solo-learn's CIFAR recipe: two 32 px crops; a multi-crop preset ("dino") also works
    recipe = Recipe(lr=0.6)

    def __init__(self, backbone: nn.Module, config: SwAVConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.hidden_dim, c.out_dim, 2)
        self.prototypes = nn.Linear(c.out_dim, c.num_prototypes, bias=False)
        # per-rank queue of past normalised embeddings of the two global crops (more are not queued); a queue saved
        # under another world size keeps its newest rows that fit (workbench.methods.queue)
        self.queue = Queue(2, c.queue_length // world_size(), c.out_dim)
        self._register_load_state_dict_pre_hook(self._legacy_queue)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c = self.config
        epoch = progress.step / max(1, progress.steps_per_epoch)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        feats = multicrop_pooled(self.backbone, batch.views)  # [V, B, D]
        v, b = feats.shape[:2]
        z = F.normalize(self.projector(feats.flatten(0, 1)), dim=-1)  # [V*B, d]
        w = self.prototypes.weight
        if epoch < c.freeze_prototypes_epochs:
            w = zero_grad_view(w)
        with torch.autocast(z.device.type, enabled=False):  # scores / epsilon are exponentiated: keep float32
            scores = (z.float() @ w.float().t()).reshape(v, b, -1)
        use_queue = self.training and self.queue.length >= b and epoch >= c.queue_start_epoch
        full = use_queue and self.queue.full  # decided on the host: no sync
        codes = torch.stack([self._codes(i, scores[i], full) for i in range(batch.num_global)])
        if use_queue:  # enqueue after the codes: the batch's own embeddings never join its Sinkhorn
            self.queue.push(z[:min(2, batch.num_global) * b].detach().unflatten(0, (-1, b)))
        loss = swav_loss(scores, codes, c.temperature)
        return StepOutput(loss, feats[0].detach(), {})

    @torch.no_grad()
    def _codes(self, i: int, scores: torch.Tensor, full: bool) -> torch.Tensor:
        """Sinkhorn codes of global crop ``i`` [B, K], with its queue's scores prepended when the queue is full."""
        c, b = self.config, scores.shape[0]
        if full and i < self.queue.rows.shape[0]:  # queue scores join the Sinkhorn batch in float32 (exponentiated)
            with torch.autocast(scores.device.type, enabled=False):
                q = self.queue.rows[i]
                scores = torch.cat([q.float() @ self.prototypes.weight.float().t(), scores.float()])
        return sinkhorn(scores, c.sinkhorn_iterations, c.epsilon)[-b:]

    def _legacy_queue(self, state_dict: dict, prefix: str, *args: object) -> None:
        """A checkpoint from before the shared Queue: ``queue`` rows newest first and ``queue_fill`` (older still: no
        fill count, the non-zero rows counted) become the ring buffer's rows (oldest first), pointer and fill."""
        old = state_dict.pop(prefix + "queue", None)
        if old is None:
            return
        fill = state_dict.pop(prefix + "queue_fill", None)
        fill = int((old[0].abs().sum(dim=-1) > 0).sum() if fill is None else fill)
        rows = torch.zeros_like(old)
        rows[:, :fill] = old[:, :fill].flip(1)
        state_dict.update({prefix + "queue.rows": rows, prefix + "queue.fill": torch.tensor(fill),
                           prefix + "queue.ptr": torch.tensor(fill % max(1, old.shape[1]))})
