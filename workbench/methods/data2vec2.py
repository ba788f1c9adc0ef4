"""data2vec 2.0 (Baevski et al., 2022): regress an EMA teacher's contextualised patch representations.

Pseudo-code of the paper (image model), as written here::

    with no_grad:                                              # the teacher runs once per image, on all patches
        f_1..f_N = FFN outputs of the teacher's N blocks       # [B, L, D] each (patch tokens, no CLS)
        y = layer_norm(mean_k instance_norm(f_k) for the top K blocks)   # instance norm over the L patches
    for m in 1..M:                                             # M masks per image ("clone batch")
        keep, mask = inverse_block_mask(80 %)                  # visible patches grown as 3x3 blocks
        z = student(patches[keep])                             # the backbone ViT sees visible patches only (+ CLS)
        x = scatter(z into L slots, N(0, 0.01) noise elsewhere)
        pred = conv_decoder(x on the patch grid)               # grouped 3x3 convs, LN, GELU, residual; linear -> D
    loss = mean over masked patches of sum_d (pred - y)^2 / sqrt(D)
         + cls_loss * sum over the B*M samples of sum_d (cls - mean_l y)^2 / sqrt(D)
    teacher <- m * teacher + (1 - m) * student                 # m: 0.9998 -> 0.99999, linear over the first 27 %

Settings from facebookresearch/fairseq (examples/data2vec, config v2/base_images_only_task.yaml): targets are the
FFN outputs before the last residual (``end_of_block_targets: false``), instance-normed, averaged over the top 10
blocks, then layer-normed; M = 16, mask tokens N(0, 0.01) with no positions, decoder 6 layers of kernel 3 and 16
groups as wide as the encoder; CLS regression weight 0.01 (summed over samples, not averaged, as the official
criterion does); Adam betas (0.9, 0.95), wd 0.05, lr 1e-3 at 256 images.

Masks (``inverse_mask: true, mask_prob: 0.8, mask_prob_adjust: 0.07, mask_length: 3``; ``compute_block_mask_2d`` in
fairseq/data/data_utils.py, called by examples/data2vec/models/modalities/images.py with ``require_same_masks``):
int(L * 0.27 / 9) 3x3 blocks of visible patches at uniform centres, then exactly int(L * 0.2) visible per sample
(``mask_type="random"`` gives MAE's uniform masks instead).

Teacher (``ema_encoder_only: false``, ``ema_local_encoder: true``; ``make_target_model`` / ``set_num_updates`` in
examples/data2vec/models/data2vec2.py): a copy of the whole encoder (patch embedding, positions, CLS token, every
block, final norm; not the decoder), nothing shared with the student, every parameter EMA'd and buffers copied; it
runs in eval mode without gradient on the unmasked image (all patches, with positions and CLS). The decay anneals
linearly from ``ema_decay`` to ``ema_end_decay`` over the first ``ema_anneal_end_step`` updates, then stays (here
``momentum``, ``final_momentum``, ``anneal_fraction``). Our ``teacher`` is that copy of the backbone. Not
followed: the official encoder is post-LN with fixed sin-cos positions and 2 modality-specific blocks before 10 shared
ones (targets from those 10); here it is the backbone ViT as built, targets from its top ``top_k_layers`` blocks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.augment import PatchMask, inverse_block_mask, random_patch_mask
from workbench.config import ConfigError, check_choice, check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, ema_update, register
from workbench.methods.mae import default_generator


@dataclass
class Data2Vec2Config:
    """data2vec 2.0 hyper-parameters (paper values; ``decoder_dim=None`` = the encoder's width). ``mask_type``:
    "inverse_block" (the paper's: visible patches grown as ``mask_length`` x ``mask_length`` blocks, their count
    raised by ``mask_prob_adjust`` before the exact trim to 1 - ``mask_ratio``) or "random" (MAE's uniform masks)."""

    top_k_layers: int = 10
    targets: Literal["ffn", "block"] = "ffn"
    mask_ratio: float = 0.8
    mask_type: Literal["inverse_block", "random"] = "inverse_block"
    mask_length: int = 3
    mask_prob_adjust: float = 0.07
    num_masks: int = 16
    mask_noise_std: float = 0.01
    decoder_dim: int | None = None
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16
    cls_loss: float = 0.01
    momentum: float = 0.9998
    final_momentum: float = 0.99999
    anneal_fraction: float = 100_000 / 375_300

    def __post_init__(self) -> None:
        o = "Data2Vec2Config"
        for name in ("top_k_layers", "num_masks", "decoder_layers", "decoder_kernel", "decoder_groups", "mask_length"):
            check_range(o, name, getattr(self, name), 1)
        if self.decoder_dim is not None:
            check_range(o, "decoder_dim", self.decoder_dim, 1)
        check_choice(o, "targets", self.targets, ["ffn", "block"])
        check_range(o, "mask_ratio", self.mask_ratio, 0.0, 1.0, high_inclusive=False)
        check_choice(o, "mask_type", self.mask_type, ["inverse_block", "random"])
        check_range(o, "mask_prob_adjust", self.mask_prob_adjust, 0.0, 1.0)
        check_range(o, "mask_noise_std", self.mask_noise_std, 0.0)
        check_range(o, "cls_loss", self.cls_loss, 0.0)
        check_range(o, "momentum", self.momentum, 0.0, 1.0)
        check_range(o, "final_momentum", self.final_momentum, self.momentum, 1.0)
        check_range(o, "anneal_fraction", self.anneal_fraction, 0.0, 1.0, low_inclusive=False)


def data2vec_targets(layers: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Teacher outputs [B, L, D] per block (first to last) -> targets [B, L, D]: each of the last ``top_k`` instance-
    normalised over the L patches (per image and channel), averaged, then layer-normalised over D (no affine)."""
    normed = [F.instance_norm(y.float().transpose(1, 2)).transpose(1, 2) for y in layers[-top_k:]]
    y = torch.stack(normed).mean(0)
    return F.layer_norm(y, y.shape[-1:])


def data2vec_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cls_pred: torch.Tensor | None = None,
                  cls_weight: float = 0.0) -> torch.Tensor:
    """pred, target [N, L, D], mask [N, L] (1 = masked): mean over masked patches of the squared error summed over D
    and scaled by 1/sqrt(D); plus ``cls_weight`` x the same error of ``cls_pred`` [N, D] against the patch mean of
    ``target``, summed over the N samples (the official criterion's weighting). No gradient reaches ``target``."""
    target = target.detach().float()
    scale = target.shape[-1] ** -0.5
    per_patch = ((pred.float() - target) ** 2).sum(-1) * scale
    loss = (per_patch * mask).sum() / mask.sum().clamp_min(1)
    if cls_pred is not None and cls_weight > 0:
        loss = loss + cls_weight * ((cls_pred.float() - target.mean(1)) ** 2).sum() * scale
    return loss


class ConvDecoder(nn.Module):
    """Tokens [N, L, D] on the (gh, gw) patch grid -> predictions [N, L, D]: ``layers`` x (grouped conv, layer norm
    over channels without affine, GELU), each added to its input where the widths match, then a linear map to D."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], dim: int, layers: int, kernel: int, groups: int):
        super().__init__()
        for width in (embed_dim, dim):
            if width % groups:
                raise ConfigError(f"Data2Vec2Config.decoder_groups={groups} must divide the encoder width "
                                  f"{embed_dim} and decoder_dim {dim}")
        self.grid, self.kernel = grid, kernel
        self.convs = nn.ModuleList(nn.Conv2d(embed_dim if i == 0 else dim, dim, kernel, padding=kernel // 2,
                                             groups=groups) for i in range(layers))
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        x = x.transpose(1, 2).reshape(n, d, *self.grid)
        for conv in self.convs:
            y = conv(x)[..., :self.grid[0], :self.grid[1]]  # an even kernel pads one too many (SamePad2d)
            y = F.gelu(F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2))
            x = y + x if y.shape == x.shape else y
        return self.proj(x.flatten(2).transpose(1, 2))


@register
class Data2Vec2(Method):
    """Student ViT on visible patches + conv decoder regressing the EMA teacher's averaged top-K block outputs."""

    name = "data2vec2"
    Config = Data2Vec2Config
    preset = "mae"
    recipe = Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=10, betas=(0.9, 0.95))
    num_views = 1
    requires_vit = True
    min_batch_size = 1

    def __init__(self, backbone: nn.Module, config: Data2Vec2Config):
        super().__init__(backbone, config)
        c, depth = config, backbone.num_layers
        if c.top_k_layers > depth:
            raise ConfigError(f"Data2Vec2Config.top_k_layers={c.top_k_layers} exceeds the backbone's {depth} blocks; "
                              f"pass top_k_layers <= {depth}")
        self.decoder = ConvDecoder(backbone.feature_dim, backbone.grid, c.decoder_dim or backbone.feature_dim,
                                   c.decoder_layers, c.decoder_kernel, c.decoder_groups)
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)  # the whole encoder, EMA'd (see module doc)

    def masks(self, batch: int, generator: torch.Generator, device: torch.device) -> PatchMask:
        """``batch`` masks of the patch grid by ``mask_type``: keep int64 [batch, K], mask float [batch, L]
        (1 = masked)."""
        c, vit = self.config, self.backbone
        if c.mask_type == "random":
            return random_patch_mask(batch, vit.num_patches, c.mask_ratio, generator, device)
        return inverse_block_mask(batch, vit.grid, c.mask_ratio, generator, device, c.mask_length, c.mask_prob_adjust)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's targets for the full images [B, C, H, W] -> [B, L, D] (eval mode, no gradient)."""
        t, vit = self.teacher, self.teacher.vit
        was_training = t.training
        t.eval()
        x = torch.cat([*t._prefix(images.shape[0]), t.patchify_embed(images)], dim=1)
        x, n, layers = vit.norm_pre(x), t.num_prefix_tokens, []
        for blk in vit.blocks:  # timm Block, unrolled to read its FFN output before the residual
            x = x + blk.ls1(blk.attn(blk.norm1(x)))
            ffn = blk.ls2(blk.mlp(blk.norm2(x)))
            x = x + ffn
            layers.append((ffn if self.config.targets == "ffn" else x)[:, n:])
        t.train(was_training)
        return data2vec_targets(layers, self.config.top_k_layers)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        c, images = self.config, batch.views[0]
        g = default_generator(progress.generator, images.device)
        y = self.targets(images).repeat_interleave(c.num_masks, 0)  # [B*M, L, D]
        clones = images.repeat_interleave(c.num_masks, 0)
        pm = self.masks(clones.shape[0], g, images.device)
        z = self.backbone.forward_tokens(clones, pm.keep)  # [B*M, 1+K, D]
        noise = torch.randn(y.shape, generator=g, device=images.device).to(z.dtype) * c.mask_noise_std
        x = noise.scatter(1, pm.keep.unsqueeze(-1).expand(-1, -1, z.shape[-1]), z[:, 1:])
        loss = data2vec_loss(self.decoder(x), y, pm.mask, z[:, 0], c.cls_loss)
        return StepOutput(loss, z[::c.num_masks, 0].detach(), {})

    @torch.no_grad()
    def predict_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One masking per image of normalised ``images`` [B, C, H, W] (the training masks, one instead of
        ``num_masks``) -> ``target`` [B, L, D] (the teacher's averaged top-K targets), ``pred`` [B, L, D] (the
        decoder's output for every patch; the loss reads the masked ones) and ``mask`` [B, L] (1 = masked)."""
        c = self.config
        g = default_generator(generator, images.device)
        y = self.targets(images)
        pm = self.masks(images.shape[0], g, images.device)
        z = self.backbone.forward_tokens(images, pm.keep)
        noise = torch.randn(y.shape, generator=g, device=images.device).to(z.dtype) * c.mask_noise_std
        x = noise.scatter(1, pm.keep.unsqueeze(-1).expand(-1, -1, z.shape[-1]), z[:, 1:])
        return {"target": y.float(), "pred": self.decoder(x).float(), "mask": pm.mask.float()}

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        c = self.config
        ramp = min(1.0, progress.fraction / c.anneal_fraction)
        ema_update(self.teacher, self.backbone, c.momentum + (c.final_momentum - c.momentum) * ramp)

    def teacher_modules(self) -> list[nn.Module]:
        return [self.teacher]
