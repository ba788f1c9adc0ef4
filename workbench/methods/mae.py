"""MAE (He et al., 2022): masked autoencoders.

Pseudo-code of the paper, as written here::

    keep, mask = random_patch_mask(75 %)                  # per image, uniform without replacement
    latent = encoder(patches[keep])                       # the backbone ViT sees visible patches only (+ CLS)
    tokens = scatter(latent into L slots, mask_token elsewhere) + fixed 2-D sin-cos positions
    pred = decoder(tokens)                                # light transformer -> p*p*C pixels per patch
    target = (patch - mean(patch)) / sqrt(var(patch) + 1e-6)        # normalised pixels (norm_pix_loss)
    loss = mean over masked patches of mean((pred - target) ** 2)

Recipe from facebookresearch/mae: AdamW 1.5e-4 per 256 images, betas (0.9, 0.95), wd 0.05, 40 warm-up epochs,
mask ratio 0.75, norm_pix_loss on. The paper's decoder is 512 wide, 8 deep, 16 heads (solo-learn keeps that on
CIFAR); the default here is 128 wide, 2 deep, 4 heads so that a vit_tiny at 32 px trains at a useful speed on a
CPU. Set ``decoder_dim=512, decoder_depth=8, decoder_heads=16`` for the paper's decoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn

from workbench.augment import random_patch_mask
from workbench.config import check_range
from workbench.methods.base import Batch, Method, Progress, Recipe, StepOutput, register


@dataclass
class MAEConfig:
    """MAE hyper-parameters (paper mask ratio and loss; a light decoder for small images)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        o = "MAEConfig"
        check_range(o, "mask_ratio", self.mask_ratio, 0.0, 1.0, high_inclusive=False)
        check_range(o, "decoder_depth", self.decoder_depth, 1)
        check_range(o, "decoder_heads", self.decoder_heads, 1)
        check_range(o, "decoder_dim", self.decoder_dim, 4)
        if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"MAEConfig.decoder_dim={self.decoder_dim} must be divisible by 4 (2-D sin-cos "
                             f"positions) and by decoder_heads={self.decoder_heads}")


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Images [B, C, H, W] -> patches [B, L, p*p*C] in row-major patch order, pixels ordered (row, col, channel)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"patchify: patch size {p} does not divide the image size {h}x{w}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of ``patchify``: [B, L, p*p*C] -> [B, C, gh*p, gw*p] (square grid unless ``grid`` is given)."""
    b, n, _ = x.shape
    gh, gw = grid if grid is not None else (int(round(n ** 0.5)),) * 2
    if gh * gw != n:
        raise ValueError(f"unpatchify: {n} patches do not form a {gh}x{gw} grid; pass grid=(h, w)")
    x = x.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, gh * p, gw * p)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos positions as in MAE/I-JEPA: [(1 +) h*w, dim]; first half encodes the column, second the row
    (CLS row zeros)."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float64), np.arange(grid[1], dtype=np.float64), indexing="ij")
    emb = np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def default_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator``, or a fresh one on ``device`` seeded from torch's global RNG (masks drawn outside training)."""
    if generator is not None:
        return generator
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,))))


def mae_target(imgs_patches: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """The decoder's target [B, L, P] (float): the patches, each normalised by its own mean and variance (+1e-6)
    with ``norm_pix``."""
    target = imgs_patches.float()
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return target


def mae_loss(pred: torch.Tensor, imgs_patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error on masked patches only: pred, imgs_patches [B, L, P], mask [B, L] (1 = masked),
    against ``mae_target``."""
    target = mae_target(imgs_patches, norm_pix)
    per_patch = ((pred.float() - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


class MAEDecoder(nn.Module):
    """Encoder tokens [B, 1+K, D] at ``keep`` [B, K] -> pixel predictions [B, L, p*p*C] for every patch."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch_dim: int, dim: int, depth: int, heads: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_pos_embed_2d(dim, grid, cls_token=True).unsqueeze(0), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        b, d, n = x.shape[0], x.shape[-1], self.pos.shape[1] - 1
        full = self.mask_token.to(x.dtype).expand(b, n, d).scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.pos
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


@register
class MAE(Method):
    """ViT encoder on visible patches + light decoder reconstructing the masked ones."""

    name = "mae"
    Config = MAEConfig
    preset = "mae"
    recipe = Recipe(optimizer="adamw", lr=1.5e-4, weight_decay=0.05, warmup_epochs=40, betas=(0.9, 0.95))
    num_views = 1
    requires_vit = True
    min_batch_size = 1

    def __init__(self, backbone: nn.Module, config: MAEConfig):
        super().__init__(backbone, config)
        c, p = config, backbone.patch_size
        self.decoder = MAEDecoder(backbone.feature_dim, backbone.grid, p * p * backbone.in_chans,
                                  c.decoder_dim, c.decoder_depth, c.decoder_heads)

    def _forward(self, images: torch.Tensor, mask_ratio: float, generator: torch.Generator | None):
        """(latent [B, 1+K, D], pred [B, L, P], mask [B, L]) for one masking of ``images``."""
        g = default_generator(generator, images.device)
        pm = random_patch_mask(images.shape[0], self.backbone.num_patches, mask_ratio, g, images.device)
        latent = self.backbone.forward_tokens(images, pm.keep)
        return latent, self.decoder(latent, pm.keep), pm.mask.to(images.dtype)

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        images = batch.views[0]
        latent, pred, mask = self._forward(images, self.config.mask_ratio, progress.generator)
        loss = mae_loss(pred, patchify(images, self.backbone.patch_size), mask, self.config.norm_pix_loss)
        # features: CLS of the visible-patch encoding (saves a second full forward for the monitors)
        return StepOutput(loss, latent[:, 0].detach(), {})

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor | float]:
        """Mask ``images`` [B, C, H, W] (normalised, as in training) and reconstruct them.

        Returns, all in the input's (normalised) pixel space: ``pred_images`` [B, C, H, W] the decoder's
        prediction for every patch; ``pasted_images`` visible patches from the input, masked ones predicted;
        ``masked_images`` the input with masked patches set to 0; ``mask`` [B, L] (1 = masked); ``mask_images``
        [B, 1, H, W]; ``loss`` the training loss on this masking. With ``norm_pix_loss`` the decoder predicts
        normalised patches; they are mapped back with each target patch's own mean and std (what MAE's
        visualisations of norm-pix models do), so the picture shows predicted structure, while the mean
        colour and contrast of masked patches come from the original.
        """
        p, ch = self.backbone.patch_size, images.shape[1]
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        _, pred, mask = self._forward(images, ratio, generator)
        target = patchify(images, p)
        loss = float(mae_loss(pred, target, mask, self.config.norm_pix_loss))
        pred = pred.float()
        if self.config.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        m = mask.unsqueeze(-1).float()
        grid = self.backbone.grid
        return {
            "pred_images": unpatchify(pred, p, ch, grid),
            "pasted_images": unpatchify(target * (1 - m) + pred * m, p, ch, grid),
            "masked_images": unpatchify(target * (1 - m), p, ch, grid),
            "mask": mask.float(),
            "mask_images": unpatchify(m.expand(-1, -1, p * p), p, 1, grid),
            "loss": loss,
        }
