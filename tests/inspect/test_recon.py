"""``reconstruction_losses``: an MAE's held-out loss on masked patches, with the constant-guess baselines."""
from __future__ import annotations

import pytest
import torch

from workbench.inspect.recon import mae_reconstruction, reconstruction_losses
from workbench.methods import build_method
from workbench.models.backbones import build_backbone

MEAN, STD = [0.5] * 3, [0.25] * 3


def _mae() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("mae", build_backbone("vit_tiny", image_size=16, patch_size=4, depth=1),
                        {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}).eval()


def _images(n: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_losses_match_one_batch_and_baselines_are_ordered():
    method, images = _mae(), _images()
    out = reconstruction_losses(method, images, MEAN, STD, seed=3, batch_size=64)
    assert set(out) == {"loss", "mean_patch_loss", "zero_loss", "masked_patches"}
    assert out["masked_patches"] == 10 * 12  # 75% of 16 patches per image
    # one batch: the same masks and loss as mae_reconstruction with that seed
    assert out["loss"] == pytest.approx(mae_reconstruction(method, images, MEAN, STD, seed=3)["loss"], rel=1e-5)
    # the mean target patch is the best constant guess, so it never does worse than predicting zeros
    assert out["mean_patch_loss"] <= out["zero_loss"] + 1e-6
    assert 0.9 < out["zero_loss"] <= 1.0  # norm_pix targets of random images: unit variance per patch
    again = reconstruction_losses(method, images, MEAN, STD, seed=3, batch_size=64)
    assert again == out  # seeded masks: deterministic


def test_batching_weights_by_masked_patches():
    method, images = _mae(), _images(9)
    whole = reconstruction_losses(method, images, MEAN, STD, seed=0, batch_size=64)
    parts = reconstruction_losses(method, images, MEAN, STD, seed=0, batch_size=4)
    assert parts["masked_patches"] == whole["masked_patches"]
    assert 0 < parts["loss"] and 0 < parts["mean_patch_loss"] <= parts["zero_loss"] + 1e-6
    # batches of 4, 4 and 1 images: the result is the mean over masked patches, not the mean of the batch means
    from workbench.augment import normalize
    g = torch.Generator().manual_seed(0)
    sums, counts, means = 0.0, 0.0, []
    for start in range(0, 9, 4):
        out = method.reconstruct(normalize(images[start:start + 4], MEAN, STD), generator=g)
        n = float(out["mask"].sum())
        sums, counts = sums + out["loss"] * n, counts + n
        means.append(out["loss"])
    assert parts["loss"] == pytest.approx(sums / counts, rel=1e-5)
    assert abs(sums / counts - sum(means) / len(means)) > 1e-4  # the two averages differ here, so the check bites


def test_needs_an_mae():
    with pytest.raises(ValueError, match="MAE"):
        reconstruction_losses(torch.nn.Linear(2, 2), _images(2), MEAN, STD)
