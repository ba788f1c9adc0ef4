"""MAE: patch order, sin-cos positions by hand, the loss on masked patches only, the ViT it needs (as I-JEPA
does), and what reconstruct() returns."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.methods.helpers import tiny_cnn, tiny_vit, views
from workbench.config import ConfigError
from workbench.methods.base import build_method
from workbench.methods.mae import mae_loss, patchify, sincos_pos_embed_2d, unpatchify


def test_patchify_order_and_round_trip():
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    x = patchify(imgs, 4)
    assert x.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block, pixels in (row, col, channel) order
    torch.testing.assert_close(x[0, 1], imgs[0, :, :4, 4:].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(x, 4, 3), imgs)
    torch.testing.assert_close(unpatchify(patchify(imgs[:, :, :8, :4], 4), 4, 3, grid=(2, 1)), imgs[:, :, :8, :4])


def test_sincos_positions_hand_values():
    pos = sincos_pos_embed_2d(8, (2, 3))
    row, col = 1, 2
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    np.testing.assert_allclose(pos[row * 3 + col].numpy(), expected, rtol=1e-6)
    assert sincos_pos_embed_2d(8, (2, 3), cls_token=True).shape == (7, 8)


def test_mae_loss_counts_masked_patches_only():
    g = torch.Generator().manual_seed(4)
    target = torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.float32)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = torch.where(mask.bool().unsqueeze(-1), normed, torch.randn(2, 6, 12, generator=g) * 50)
    assert mae_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(0.0, abs=1e-8)
    # un-normalised targets, prediction off by 1 on masked patches, wildly off on visible ones -> exactly 1
    pred = torch.where(mask.bool().unsqueeze(-1), target + 1, target - 100)
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(1.0, rel=1e-6)


def test_mae_needs_a_vit_backbone():
    with pytest.raises(ConfigError, match=r"'mae' needs a ViT backbone.*vit_tiny"):
        build_method("mae", tiny_cnn())
    with pytest.raises(ConfigError, match="ijepa"):
        build_method("ijepa", tiny_cnn())


def test_mae_reconstruct_outputs():
    m = build_method("mae", tiny_vit(), {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2})
    imgs = views(1, b=3)[0]
    out = m.reconstruct(imgs, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    for key in ("pred_images", "pasted_images", "masked_images"):
        assert out[key].shape == imgs.shape
    assert out["mask"].shape == (3, 16) and (out["mask"].sum(1) == 12).all()
    assert out["mask_images"].shape == (3, 1, 16, 16)
    visible = out["mask_images"].expand_as(imgs) == 0
    torch.testing.assert_close(out["pasted_images"][visible], imgs[visible])
    torch.testing.assert_close(out["pasted_images"][~visible], out["pred_images"][~visible])
    assert (out["masked_images"][~visible] == 0).all() and math.isfinite(out["loss"])
