"""NEPA (Xu et al., 2025, "Next-Embedding Prediction Makes Strong Vision Learners"): next-embedding prediction.

Pseudo-code of the paper, as written here::

    e = [cls, patch_embed(image)]                          # [B, 1+L, D], raster order, no absolute positions
    h = layer_norm(causal_transformer(e, rope2d(grid)))    # token t attends to tokens <= t; RoPE on the patches
    loss = -mean_t cos(h[:, t], stopgrad(e[:, t + 1]))     # shift by one: the output at t predicts embedding t+1

No pixels, no tokens, no teacher, no head: the target is the model's own input embedding with its gradient stopped
(the embedding layer is still trained through the input path). Loss and shift as in the official code (SihanXU/nepa,
``models/vit_nepa/modeling_vit_nepa.py``, ``prediction_loss``: normalise both, negative cosine, mean over the
B x L predicted positions, the CLS output predicting the first patch). Recipe of its ViT-B run
(``scripts/pretrain/nepa_b.sh``): AdamW base lr 3e-4 per 256 images, betas (0.9, 0.95), wd 0.05, cosine with
2.5 % warm-up (40 of 1600 epochs).

The transformer (``NEPA.model_options``, the backbone options of ``workbench.models.ViTOptions``), as the official
``configs/pretrain/nepa-base-patch14-224/config.json`` and ``modeling_vit_nepa.py`` build it:

* no absolute position embedding (``ViTNepaEmbeddings`` adds none): ``pos_embed=False``;
* 2-D RoPE inside every attention (``ViTNepaRopePositionEmbedding``, DINOv3's form): patch centres normalised to
  [-1, 1] on each axis, base period ``rope_theta`` 100, head_dim / 4 frequencies per axis (y then x), the whole
  head rotated in the rotate-half layout; the CLS token is not rotated (``apply_rotary_pos_emb`` skips the prefix
  tokens); in training the coordinates are scaled by one log-uniform factor in [1/2, 2] per pass
  (``pos_embed_rescale`` 2.0; shift and jitter off): ``rope_theta=100, rope_rescale=2``;
* QK-norm: a LayerNorm over each head's queries and keys, after the projection and before RoPE, without scale or
  shift in pre-training (``qk_norm_affine`` false; the fine-tuning config turns it on): ``qk_norm=True,
  qk_norm_affine=False``;
* LayerScale on the attention and the MLP branch, starting at 1e-5 (``layerscale_value``): ``layer_scale=1e-5``.

The causal pass and the backbone's own bidirectional forward (kNN, linear probe, ``predict_latents``'s targets)
apply the same RoPE (``ViT.run_blocks``), so evaluation reads the model that was trained. Not matched: the official
LayerNorms use eps 1e-12 (timm's 1e-6 here), and its initialisation (truncated normal 0.02 for every linear and conv
layer and the CLS token) differs from timm's ViT init in the patch-embedding conv and the CLS token (std 1e-6).

A run builds this transformer by default: ``PretrainConfig`` merges ``NEPA.model_options`` under the run's own
``model.options`` (recorded with the run, so checkpoints rebuild it). The plain ablation (the workbench's timm ViT
with learned absolute positions, made causal by the mask only) is ``model.options`` ``{"pos_embed": True,
"rope_theta": None, "rope_rescale": None, "qk_norm": False, "layer_scale": None}``; building NEPA on a ViT without
RoPE warns. At the CPU test budget (tests/methods/test_nepa.py) LayerScale's 1e-5 start
slows the loss's fall (0.08-0.11 in 2 tiny epochs against 0.24-0.29 for the plain ViT, 0.27 without LayerScale).

Read-out: the CLS token sits first, so under the causal mask it attends only to itself and its output is the same
for every image; the paper fine-tunes without the mask and mean-pools. The step's monitor features are therefore
the mean of the causal output tokens; evaluation reads the backbone as it is (bidirectional, CLS pooling).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, register
from workbench.models.backbones import Backbone


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
    """The backbone ViT run causally over [CLS, patches] (with its RoPE, if any); each output predicts the next
    input embedding."""

    name = "nepa"
    Config = NEPAConfig
    preset = "mae"
    recipe = Recipe(optimizer="adamw", lr=3e-4, weight_decay=0.05, warmup_epochs=40, betas=(0.9, 0.95))
    num_views = 1
    requires_vit = True
    min_batch_size = 1
    # the paper's transformer as backbone options (ViTOptions): see the module docstring
    model_options: ClassVar[dict[str, Any]] = {"pos_embed": False, "rope_theta": 100.0, "rope_rescale": 2.0,
                                               "qk_norm": True, "qk_norm_affine": False, "layer_scale": 1e-5}

    def __init__(self, backbone: Backbone, config: NEPAConfig):
        super().__init__(backbone, config)
        if getattr(backbone, "rope", None) is None:
            warnings.warn("NEPA on a ViT without RoPE: the plain-ViT ablation, not the paper's transformer; for the "
                          f"paper's, build the backbone with model.options {self.model_options}", UserWarning,
                          stacklevel=2)

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
        pos = bb._patch_pos()  # None in the paper's model: positions come from RoPE
        prefix = bb._prefix(images.shape[0])  # [CLS (+ pos)], then registers
        prefix = prefix[1:] + prefix[:1]  # registers first, so the CLS sits just before the first patch
        x = torch.cat([*prefix, patches if pos is None else patches + pos], dim=1)
        x = bb.run_blocks(vit.norm_pre(vit.pos_drop(x)), bb.rope_embed(), is_causal=True)  # prefix tokens unrotated
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
