"""The widgets take a backbone spec as they take a run: a timm ViT with register tokens in the AttentionViewer
(attention read at the patch columns), the EmbeddingExplorer (features cached in the user cache), and clear
messages where a spec cannot serve (offline download, no MAE decoder)."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from widgets import AttentionViewer, EmbeddingExplorer, ReconstructionViewer
from workbench.trained import load_backbone

REG = "timm:vit_small_patch14_reg4_dinov2"


@pytest.fixture(scope="module")
def reg_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(REG[5:], num_classes=0, img_size=28, depth=2, patch_size=7)
    torch.nn.init.normal_(model.reg_token, std=1.0)
    path = tmp_path_factory.mktemp("weights") / "reg.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return load_backbone(REG, image_size=28, weights=str(path), depth=2, patch_size=7)


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_attention_viewer_shows_a_register_vit_at_the_patch_columns(reg_vit, images):
    av = AttentionViewer(reg_vit, images)
    assert av.last_error is None and av.is_vit and av.head.options[-1] == 5 and av.layer.value == 1
    maps = av.maps(0)
    assert maps[-1].shape == (1, 6, 21, 21)  # CLS + 4 registers + 16 patches
    av.head.value = 2
    cls = maps[-1][0, 2, 0, 5:].reshape(1, 1, 4, 4)
    up = F.interpolate(cls, size=(28, 28), mode="nearest")[0, 0]
    torch.testing.assert_close(torch.from_numpy(av.heat), (up - up.min()) / (up.max() - up.min()))
    for view in ("rollout", "attention mask", "patch similarity", "PCA"):
        av.view.value = view
        assert av.last_error is None, (view, av.last_error)
    assert av.trained.mean == (0.485, 0.456, 0.406) and av.mean == av.trained.mean  # the model's own normalisation
    # the token norms view: each output patch token's norm (one scale for both images), the 4 registers' norms listed
    av.view.value = "attention"
    before = av.png
    av.view.value = "token norms"
    assert av.last_error is None and av.png != before and av.heat.shape == (28, 28)
    from workbench.inspect.attention import token_norms
    from workbench.augment import normalize

    ref = token_norms(av.backbone, normalize(images[:2], av.mean, av.std))
    up = F.interpolate(ref.patches[:1, None], size=(28, 28), mode="nearest")[0, 0]
    torch.testing.assert_close(torch.from_numpy(av.heat), up / ref.patches.max(), rtol=1e-5, atol=1e-6)
    assert "registers: " + ", ".join(f"{v:.3g}" for v in ref.registers[0].tolist()) in av.info_area.value
    av.view.value = "PCA"
    assert "registers:" not in av.info_area.value


def test_embedding_explorer_caches_spec_features_in_the_user_cache(reg_vit, images, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    ex = EmbeddingExplorer(reg_vit, images, umap="off")
    assert ex.last_error is None and ex.features.shape == (5, 384) and ex.cache_dir == tmp_path / "cache"
    assert list((tmp_path / "cache").glob("features-*.pt"))


def test_specs_that_cannot_serve_say_why(reg_vit, images, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    av = AttentionViewer("timm:vit_small_patch14_dinov2.lvd142m", images)
    assert "could not fetch the pretrained weights" in av.last_error and "weights=PATH" in av.last_error
    rv = ReconstructionViewer(reg_vit, images)
    assert "has no method (heads, decoder)" in rv.last_error
