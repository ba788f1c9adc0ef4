"""``latent_predictions`` / ``latent_grid``: what I-JEPA, data2vec 2.0 and NEPA predict, per patch, against their
targets (the latent counterpart of MAE's reconstructions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.augment import normalize
from workbench.inspect.latents import _pca_pictures, latent_grid, latent_predictions
from workbench.methods import build_method
from workbench.methods.nepa import nepa_loss
from workbench.models.backbones import build_backbone

MEAN, STD = [0.5] * 3, [0.25] * 3
GRID = (4, 4)


def _method(name: str, options: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method(name, build_backbone("vit_tiny", image_size=16, patch_size=4, depth=2), options or {}).eval()


def _images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_nepa_cosine_is_minus_its_training_loss():
    # the per-patch pairing must be the loss's own shift: CLS output -> patch 0, output of patch t -> patch t + 1
    method, images = _method("nepa"), _images()
    out = latent_predictions(method, images, MEAN, STD)
    with torch.no_grad():
        emb, outputs = method.causal_forward(normalize(images, MEAN, STD))
    assert out["mask"].sum() == 6 * 16 and not torch.isnan(out["cosine"]).any()
    assert out["mean_cosine"] == pytest.approx(-float(nepa_loss(emb, outputs)), abs=1e-5)
    assert torch.allclose(out["target"], emb[:, 1:].float())


def test_data2vec_predicts_the_teachers_targets_at_its_mask_ratio():
    method = _method("data2vec2", {"top_k_layers": 2, "num_masks": 2, "decoder_layers": 1})
    images = _images()
    out = latent_predictions(method, images, MEAN, STD, seed=3)
    assert torch.allclose(out["target"], method.targets(normalize(images, MEAN, STD)))
    assert (out["mask"].sum(1) == round(0.8 * 16)).all()  # the training mask ratio, per image
    assert torch.isnan(out["cosine"][out["mask"] == 0]).all() and not torch.isnan(out["cosine"][out["mask"] == 1]).any()
    again = latent_predictions(method, images, MEAN, STD, seed=3)  # the seed fixes the masking (and the noise)
    assert torch.equal(again["mask"], out["mask"]) and again["mean_cosine"] == pytest.approx(out["mean_cosine"])


def test_ijepa_predicts_target_blocks_only():
    method, images = _method("ijepa"), _images()
    out = latent_predictions(method, images, MEAN, STD, seed=1)
    on = out["mask"] > 0.5
    assert on.any(1).all() and not on.all()  # some, not all, patches are targets
    assert (out["pred"][~on] == 0).all() and (out["pred"][on].abs().sum(-1) > 0).all()
    h = method.target_encoder.forward_tokens(normalize(images, MEAN, STD))[:, 1:]
    assert torch.allclose(out["target"], torch.nn.functional.layer_norm(h, h.shape[-1:]), atol=1e-5)


def test_constant_cosine_is_the_mean_targets():
    method, images = _method("nepa"), _images()
    out = latent_predictions(method, images, MEAN, STD)
    t = out["target"].reshape(-1, out["target"].shape[-1])
    mean = t.mean(0)
    by_hand = float(np.mean([float(v @ mean / (v.norm() * mean.norm())) for v in t]))
    assert out["constant_cosine"] == pytest.approx(by_hand, abs=1e-5)


def test_a_perfect_prediction_gets_the_targets_colours():
    target = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    t_rgb, p_rgb = _pca_pictures(target, target * mask.unsqueeze(-1), mask, GRID)
    on = mask.reshape(2, *GRID).bool().numpy()
    assert np.allclose(p_rgb[on], t_rgb[on]) and (p_rgb[~on] == 0).all()
    assert t_rgb.min() == 0.0 and t_rgb.max() == 1.0  # min-max over the targets, per component


def test_grid_has_one_row_per_image_and_five_columns():
    method, images = _method("nepa"), _images(3)
    out = latent_predictions(method, images, MEAN, STD)
    picture = latent_grid(out, images, GRID, zoom=2)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] >= 3 * 32 and picture.shape[1] >= 5 * 32


def test_mae_is_refused_with_a_pointer_to_reconstructions():
    mae = _method("mae", {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2})
    with pytest.raises(ValueError, match="mae_reconstruction"):
        latent_predictions(mae, _images(), MEAN, STD)
