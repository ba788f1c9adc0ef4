"""SimCLR (Chen et al., 2020): contrastive learning with the NT-Xent loss; options DCL/DCLW (Yeh et al., 2022) and
MoCHi hard-negative mixing (Kalantidis et al., 2020).

Pseudo-code, as written here::

    z1, z2 = g(f(x1)), g(f(x2))                          # projector g on backbone f, [B, d] each
    a = normalize(cat(z1, z2))                            # the 2B local anchors
    c = normalize(cat(gather(z1), gather(z2)))            # the 2N candidates of the global batch (N = B * ranks)
    logits = a @ c.T / t, with each anchor's own column removed
    queue (MoCo, He et al. 2020): logits += a @ queue.T / t; after the loss, enqueue normalize(gather(z2)), FIFO
    loss = cross_entropy(logits, column of the other view of the same image)           # NT-Xent
    multi-crop (Caron et al. 2020: SwAV introduced it and applied it to SimCLR too): local crops l_1..l_V after the two
          global views; loss = mean of NT-Xent over the pairs (x1, x2), (l_v, x1), (l_v, x2)
    dcl:  loss = mean(-w * pos / t + logsumexp(logits without the positive column))   # DCL; w = 1
    dclw: w = 2 - exp(pos / sigma) / mean_batch(exp(pos / sigma))                       # DCLW weighting
    mochi (Kalantidis et al., 2020): per anchor, mix its N hardest negatives (among the queue when there is one,
          as the paper's MoCo; else among the batch's) into s synthetic negatives
          normalize(alpha n_i + (1 - alpha) n_j) and s' normalize(beta q + (1 - beta) n_j), beta < 0.5; they are
          appended to the anchor's logits without gradient of their own

Defaults follow solo-learn's CIFAR recipe (``scripts/pretrain/cifar/simclr.yaml``: projector Linear-ReLU-Linear
2048 -> 256, temperature 0.2, LARS lr 0.4 per 256 images, weight decay 1e-4; warm-up 10 epochs, solo-learn's
scheduler default). The paper uses temperature 0.5 (CIFAR) / 0.1 (ImageNet) and a 128-d output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.config import ConfigError, check_choice, check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, gather, rank, register
from workbench.methods.queue import Queue
from workbench.models.backbones import Backbone
from workbench.models.heads import mlp


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters. ``loss``: "ntxent" (SimCLR) or "dcl" (decoupled: positive removed from the
    denominator); ``dcl_sigma`` set with loss="dcl" turns on DCLW's positive weighting (paper: 0.5).
    MoCHi hard-negative mixing (off when ``mochi_hardest`` is 0): ``mochi_hardest`` = N hardest negatives per
    anchor, ``mochi_mix`` = s negative-negative mixes, ``mochi_mix_query`` = s' query-negative mixes (the paper's
    (N, s, s'); it uses e.g. (1024, 1024, 512) over a 65k queue). ``queue_length`` > 0 adds MoCo's queue of past
    keys (each step's second-view projections, gathered across ranks, enqueued after the loss; it starts full of
    random unit vectors, as MoCo's) as extra negatives of every anchor, and MoCHi then mixes from the queue as its
    paper does; without a queue it mixes among the 2N - 2 in-batch negatives. ``projector_batch_norm``: BN after
    the projector's hidden layer (the paper's official code has it; solo-learn's CIFAR recipe does not).
    Multi-crop needs no option here: local crops drawn by the augmentation (``local_views`` > 0 in the simclr
    preset) are each paired with both global views."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    temperature: float = 0.2
    loss: str = "ntxent"
    dcl_sigma: float | None = None
    mochi_hardest: int = 0
    mochi_mix: int = 0
    mochi_mix_query: int = 0
    queue_length: int = 0
    projector_batch_norm: bool = False

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
        for name in ("mochi_hardest", "mochi_mix", "mochi_mix_query", "queue_length"):
            check_range(o, name, getattr(self, name), 0)
        if self.mochi_hardest == 0 and (self.mochi_mix or self.mochi_mix_query):
            raise ConfigError(f"{o}.mochi_mix/mochi_mix_query mix the hardest negatives: set mochi_hardest > 0 "
                              f"(e.g. 64) too, or both to 0")
        if self.mochi_hardest and not (self.mochi_mix or self.mochi_mix_query):
            raise ConfigError(f"{o}.mochi_hardest={self.mochi_hardest} synthesises nothing: set mochi_mix and/or "
                              f"mochi_mix_query > 0, or mochi_hardest=0")
        if self.queue_length and self.mochi_hardest > self.queue_length:
            raise ConfigError(f"{o}.mochi_hardest={self.mochi_hardest} is more than the queue_length="
                              f"{self.queue_length} negatives MoCHi mixes from: lower it or lengthen the queue")


def mochi_negatives(anchors: torch.Tensor, candidates: torch.Tensor, negative_logits: torch.Tensor, hardest: int,
                    mix: int, mix_query: int, generator: torch.Generator | None = None,
                    available: int | None = None) -> torch.Tensor:
    """MoCHi's synthetic hard negatives, [2B, s + s', d] (L2-normalised, no gradient).

    anchors [2B, d] and candidates [2N, d] are L2-normalised; negative_logits [2B, 2N] are the anchors' logits with
    their self and positive columns at -inf. Per anchor: the ``hardest`` highest-logit negatives; ``mix`` points
    alpha n_i + (1 - alpha) n_j (i, j among them, alpha ~ U(0, 1)) and ``mix_query`` points beta q + (1 - beta) n_j
    (beta ~ U(0, 0.5), so the query never dominates), each renormalised. Draw order: alpha, i, j, j', beta.
    ``available``: negatives per anchor when the caller knows it from shapes (else counted: one host sync).
    """
    if available is None:
        available = int(torch.isfinite(negative_logits[0]).sum())
    if hardest > available:
        raise ValueError(f"mochi_hardest={hardest} is more than the {available} negatives of each anchor in this "
                         f"batch (or queue); lower it or raise the batch size")
    with torch.no_grad():
        rows, dev = anchors.shape[0], anchors.device
        top = negative_logits.topk(hardest, dim=1).indices                            # [2B, N]
        hard = candidates.detach()[top]                                               # [2B, N, d]
        g = {"generator": generator} if generator is not None else {}
        alpha = torch.rand(rows, mix, 1, device=dev, **g)
        i = torch.randint(0, hardest, (rows, mix), device=dev, **g)
        j = torch.randint(0, hardest, (rows, mix), device=dev, **g)
        jq = torch.randint(0, hardest, (rows, mix_query), device=dev, **g)
        beta = 0.5 * torch.rand(rows, mix_query, 1, device=dev, **g)
        pick = lambda idx: hard.gather(1, idx[:, :, None].expand(-1, -1, hard.shape[2]))  # noqa: E731
        mixed = alpha * pick(i) + (1 - alpha) * pick(j)                               # [2B, s, d]
        with_query = beta * anchors.detach()[:, None] + (1 - beta) * pick(jq)         # [2B, s', d]
        return F.normalize(torch.cat([mixed, with_query], dim=1), dim=2)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, decoupled: bool = False,
                 dcl_sigma: float | None = None, mochi: tuple[int, int, int] | None = None,
                 generator: torch.Generator | None = None, queue: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent over the 2N views of the global batch, averaged over this rank's 2B anchors (``decoupled``: DCL).

    z1, z2: [B, d] projections of two views of the same B images (row i of each is a positive pair); other
    ranks' projections are gathered with gradients, and this rank's rows sit at offset ``rank() * B``.
    ``dcl_sigma`` (only with ``decoupled``) weights each positive term by DCLW's von Mises-Fisher weight.
    ``queue`` [K, d]: L2-normalised past keys, extra negatives of every anchor (no gradient; pass a copy of a
    buffer that is enqueued into after the loss). ``mochi`` = (N, s, s') appends MoCHi's synthetic negatives
    (:func:`mochi_negatives`, drawn from ``generator``), mixed from the queue when there is one, else from the batch.
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
        columns = [logits]
        if queue is not None:
            queue = queue.detach().to(dtype)
            columns.append(anchors @ queue.T / temperature)                          # [2B, K]
        if mochi is not None and mochi[0] > 0:
            pool, pool_logits = (queue, columns[1]) if queue is not None else (
                candidates, logits.masked_fill(mask.scatter(1, pos_col, True), float("-inf")))
            synthetic = mochi_negatives(anchors, pool, pool_logits, *mochi, generator=generator,
                                        available=pool.shape[0] - (0 if queue is not None else 2))
            columns.append(torch.einsum("bd,bkd->bk", anchors, synthetic) / temperature)
        if len(columns) > 1:
            logits = torch.cat(columns, dim=1)
            mask = torch.zeros_like(logits, dtype=torch.bool)
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
    """Backbone + MLP projector trained with NT-Xent between two views (negatives: the rest of the global batch, and
    the queue of past keys when ``queue_length`` > 0)."""

    name = "simclr"
    Config = SimCLRConfig
    preset = "simclr"
    recipe = Recipe(lr=0.4, weight_decay=1e-4)

    def __init__(self, backbone: Backbone, config: SimCLRConfig):
        super().__init__(backbone, config)
        c = config
        self.projector = mlp(backbone.feature_dim, c.proj_hidden_dim, c.proj_output_dim, 2,
                             batch_norm=c.projector_batch_norm)
        self.queue = Queue(1, c.queue_length, c.proj_output_dim, shared=True, random_init=True) if c.queue_length \
            else None

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, (x1, x2) = self.config, self.views(batch)
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(f1), self.projector(f2)
        mochi = (c.mochi_hardest, c.mochi_mix, c.mochi_mix_query) if c.mochi_hardest else None
        queue = self.queue.rows[0].clone() if self.queue is not None else None  # the enqueue below writes in place
        pair_loss = lambda a, b: nt_xent_loss(a, b, c.temperature, decoupled=c.loss == "dcl",  # noqa: E731
                                              dcl_sigma=c.dcl_sigma, mochi=mochi, generator=progress.generator,
                                              queue=queue)
        loss = pair_loss(z1, z2)
        local_crops = batch.views[max(2, batch.num_global):]
        if local_crops:  # multi-crop: each local crop pairs with x1 and with x2
            z_local = [self.projector(self.backbone(x)) for x in local_crops]
            loss = (loss + sum(pair_loss(zl, zg) for zl in z_local for zg in (z1, z2))) / (1 + 2 * len(z_local))
        if self.queue is not None and self.training:  # after the loss: this batch's keys negate later batches only
            self.queue.push(F.normalize(z2.detach().float(), dim=1)[None])
        pos_sim = F.cosine_similarity(z1.detach().float(), z2.detach().float(), dim=1).mean()
        return StepOutput(loss, f1.detach(), {"pos_sim": pos_sim})
