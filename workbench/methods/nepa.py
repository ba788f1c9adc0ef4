"""NEPA (Xu et al., 2025, "Next-Embedding Prediction Makes Strong Vision Learners"): next-embedding prediction.

Pseudo-code of the paper, as written here::

    e = [cls, patch_embed(image)]                          # [B, 1+L, D], raster order, no positions in e
    h = layer_norm(causal_transformer(e + positions))      # token t attends to tokens <= t
    loss = -mean_t cos(h[:, t], stopgrad(e[:, t + 1]))     # shift by one: the output at t predicts embedding t+1

No pixels, no tokens, no teacher, no head: the target is the model's own input embedding with its gradient stopped
(the embedding layer is still trained through the input path). Loss and shift as in the official code (SihanXU/nepa,
``prediction_loss``: normalise both, negative cosine, mean over the B x L predicted positions, the CLS output
predicting the first patch). Recipe of its ViT-B run: AdamW base lr 3e-4 per 256 images, betas (0.9, 0.95), wd 0.05,
cosine with 2.5 % warm-up (40 of 1600 epochs). The paper's transformer adds RoPE, QK-norm and LayerScale; here it is
the workbench's plain timm ViT with its learned absolute positions, made causal by the attention mask only.

Read-out: the CLS token sits first, so under the causal mask it attends only to itself and its output is the same
for every image; the paper fine-tunes without the mask and mean-pools. The step's monitor features are therefore
the mean of the causal output tokens; evaluation reads the backbone as it is (bidirectional, CLS pooling).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, register


@dataclass
class NEPAConfig:
    """NEPA hyper-parameters: ``shift`` = 1 predicts the next embedding (the paper); 0 matches position-wise (the
    official code's ablation switch, a trivial task without the causal shift)."""

    shift: int = 1

    def __post_init__(self) -> None:
        if self.shift not in (0, 1):
            raise ValueError(f"NEPAConfig.shift={self.shift!r} must be 1 (next embedding) or 0 (same position)")


def nepa_loss(embeddings: torch.Tensor, outputs: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Negative cosine between ``outputs`` [B, T, D] at t and the stop-gradient ``embeddings`` [B, T, D] at t + shift,
    averaged over B x (T - shift) positions; -1 is a perfect prediction."""
    target = embeddings.detach()
    if shift:
        outputs, target = outputs[:, :-shift], target[:, shift:]
    return -(F.normalize(outputs.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1).mean()


@register
class NEPA(Method):
    """The backbone ViT run causally over [CLS, patches]; each output predicts the next input embedding."""

    name = "nepa"
    Config = NEPAConfig
    preset = "mae"
    recipe = Recipe(optimizer="adamw", lr=3e-4, weight_decay=0.05, warmup_epochs=40, betas=(0.9, 0.95))
    num_views = 1
    requires_vit = True
    min_batch_size = 1

    def causal_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [B, 1+L, D]: CLS then patch embeddings without positions, the targets; outputs [B, 1+L, D]:
        the final-normed tokens of the causal pass). Register tokens, if any, precede the CLS in the causal order
        and are dropped from both."""
        bb, vit = self.backbone, self.backbone.vit
        if not bb.has_class_token:
            raise ValueError("NEPA's causal sequence starts with a CLS token; build the ViT with class_token=True")
        patches = vit.patch_embed(images)
        if patches.ndim == 4:
            patches = patches.flatten(1, 2)
        pos = bb._patch_pos()
        prefix = bb._prefix(images.shape[0])  # [CLS (+ pos)], then registers
        prefix = prefix[1:] + prefix[:1]  # registers first, so the CLS sits just before the first patch
        x = torch.cat([*prefix, patches if pos is None else patches + pos], dim=1)
        x = vit.norm_pre(vit.pos_drop(x))
        for blk in vit.blocks:
            x = blk(x, is_causal=True)
        regs = bb.num_prefix_tokens - 1
        cls = vit.cls_token.expand(images.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1), vit.norm(x)[:, regs:]

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        embeddings, outputs = self.causal_forward(batch.views[0])
        loss = nepa_loss(embeddings, outputs, self.config.shift)
        # features: mean of the causal outputs over patches (the causal CLS output is the same for every image)
        return StepOutput(loss, outputs[:, 1:].mean(1).detach(), {})

    @torch.no_grad()
    def predict_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The causal pass over normalised ``images`` [B, C, H, W] -> ``target`` [B, L, D] (each patch's input
        embedding, no positions), ``pred`` [B, L, D] (the output that predicts it: at the previous position with
        ``shift`` 1, the CLS output predicting the first patch) and ``mask`` [B, L] (all ones: every patch is
        predicted). ``generator`` is unused (no masking); it keeps the signature of the other latent methods."""
        embeddings, outputs = self.causal_forward(images)
        length = embeddings.shape[1] - 1
        start = 1 - self.config.shift
        pred = outputs[:, start:start + length]
        return {"target": embeddings[:, 1:].float(), "pred": pred.float(),
                "mask": torch.ones(pred.shape[:2], device=images.device)}
