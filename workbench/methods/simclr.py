"""SimCLR (Chen et al., 2020): contrastive learning with the NT-Xent loss; option DCL/DCLW (Yeh et al., 2022).

Pseudo-code, as written here::

    z1, z2 = g(f(x1)), g(f(x2))                          # projector g on backbone f, [B, d] each
    a = normalize(cat(z1, z2))                            # the 2B local anchors
    c = normalize(cat(gather(z1), gather(z2)))            # the 2N candidates of the global batch (N = B * ranks)
    logits = a @ c.T / t, with each anchor's own column removed
    loss = cross_entropy(logits, column of the other view of the same image)           # NT-Xent
    dcl:  loss = mean(-w * pos / t + logsumexp(logits without the positive column))   # DCL; w = 1
    dclw: w = 2 - exp(pos / sigma) / mean_batch(exp(pos / sigma))                       # DCLW weighting

Defaults follow solo-learn's CIFAR recipe (``scripts/pretrain/cifar/simclr.yaml``: projector Linear-ReLU-Linear
2048 -> 256, temperature 0.2, LARS lr 0.4 per 256 images, weight decay 1e-4; warm-up 10 epochs, solo-learn's
scheduler default). The paper uses temperature 0.5 (CIFAR) / 0.1 (ImageNet) and a 128-d output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.config import ConfigError, check_choice, check_range
from workbench.methods.base import Batch, Method, Progress, StepOutput, gather, rank, register
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters. ``loss``: "ntxent" (SimCLR) or "dcl" (decoupled: positive removed from the
    denominator); ``dcl_sigma`` set with loss="dcl" turns on DCLW's positive weighting (paper: 0.5)."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    temperature: float = 0.2
    loss: str = "ntxent"
    dcl_sigma: float | None = None

    def __post_init__(self) -> None:
        o = "SimCLRConfig"
        check_range(o, "proj_hidden_dim", self.proj_hidden_dim, 1)
        check_range(o, "proj_output_dim", self.proj_output_dim, 1)
        check_range(o, "temperature", self.temperature, 0.0, low_inclusive=False)
        check_choice(o, "loss", self.loss, ["ntxent", "dcl"])
        if self.dcl_sigma is not None:
            check_range(o, "dcl_sigma", self.dcl_sigma, 0.0, low_inclusive=False)
            if self.loss != "dcl":
                raise ConfigError(f"{o}.dcl_sigma={self.dcl_sigma} weights the decoupled loss; set loss='dcl' "
                                  f"too, or dcl_sigma=None for plain NT-Xent")


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, decoupled: bool = False,
                 dcl_sigma: float | None = None) -> torch.Tensor:
    """NT-Xent over the 2N views of the global batch, averaged over this rank's 2B anchors (``decoupled``: DCL).

    z1, z2: [B, d] projections of two views of the same B images (row i of each is a positive pair); other
    ranks' projections are gathered with gradients, and this rank's rows sit at offset ``rank() * B``.
    ``dcl_sigma`` (only with ``decoupled``) weights each positive term by DCLW's von Mises-Fisher weight.
    """
    with torch.autocast(z1.device.type, enabled=False):  # logits in float32 even under bf16 autocast
        b = z1.shape[0]
        dtype = torch.promote_types(z1.dtype, torch.float32)  # float32 at least (bf16/fp16 inputs upcast)
        z1, z2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
        z1_all, z2_all = gather(z1), gather(z2)
        n = z1_all.shape[0]
        anchors, candidates = torch.cat([z1, z2]), torch.cat([z1_all, z2_all])
        logits = anchors @ candidates.T / temperature                                # [2B, 2N]
        idx = torch.arange(b, device=z1.device) + rank() * b
        self_col, pos_col = torch.cat([idx, idx + n])[:, None], torch.cat([idx + n, idx])[:, None]  # [2B, 1]
        mask = torch.zeros_like(logits, dtype=torch.bool)
        logits = logits.masked_fill(mask.scatter(1, self_col, True), float("-inf"))
        if not decoupled:
            return F.cross_entropy(logits, pos_col[:, 0])
        pos = logits.gather(1, pos_col)[:, 0]                                        # [2B]
        neg = logits.masked_fill(mask.scatter(1, pos_col, True), float("-inf")).logsumexp(dim=1)
        weight = torch.ones_like(pos)
        if dcl_sigma is not None:
            with torch.no_grad():
                s = (z1_all * z2_all).sum(dim=1) / dcl_sigma                        # [N] positive similarities
                w = 2 - s.exp() / s.exp().mean()
                weight = torch.cat([w[idx], w[idx]])
        return (-weight * pos + neg).mean()


@register
class SimCLR(Method):
    """Backbone + MLP projector trained with NT-Xent between two views (negatives: the rest of the global batch)."""

    name = "simclr"
    Config = SimCLRConfig
    preset = "simclr"
    recipe = {"optimizer": "lars", "lr": 0.4, "weight_decay": 1e-4, "warmup_epochs": 10,
              "exclude_bias_norm_from_lars": True}

    def __init__(self, backbone: Backbone, config: SimCLRConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, 2, batch_norm=False)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        if len(batch.views) < 2:
            raise ValueError(f"simclr needs 2 views per image, got {len(batch.views)}; use the 'simclr' preset")
        c = self.config
        f1, f2 = self.backbone(batch.views[0]), self.backbone(batch.views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = nt_xent_loss(z1, z2, c.temperature, decoupled=c.loss == "dcl", dcl_sigma=c.dcl_sigma)
        pos_sim = F.cosine_similarity(z1.detach().float(), z2.detach().float(), dim=1).mean()
        return StepOutput(loss, f1.detach(), {"pos_sim": pos_sim})
