"""Backbones: typed options (unknown keys, pretrained weights, bad ranges rejected when the config is made) and the
ViT's any-size embedding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.config import ConfigError, apply_overrides, from_dict
from workbench.models.backbones import SmallCNNOptions, ViTOptions, backbone_options, build_backbone
from workbench.train.config import ModelConfig, PretrainConfig


# ---------------------------------------------------------------------------------------------- backbone options
def test_unknown_backbone_option_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"backbone 'small_cnn' has no option\(s\) \['widht'\]; "
                                          r"allowed options: \['width'\]"):
        build_backbone("small_cnn", 16, widht=64)
    with pytest.raises(ConfigError, match=r"model\.options: .*\['widht'\].*\['width'\]"):
        ModelConfig(backbone="small_cnn", options={"widht": 64})
    with pytest.raises(ConfigError, match=r"model\.options: .*\['widht'\].*\['width'\]"):
        from_dict(PretrainConfig, {"model": {"backbone": "small_cnn", "options": {"widht": 64}}})
    with pytest.raises(ConfigError, match=r"model\.options: .*\['widht'\].*\['width'\]"):
        apply_overrides(PretrainConfig(), ["model.options.widht=64"])
    with pytest.raises(ConfigError, match=r"'vit_tiny' has no option\(s\) \['width'\]; allowed options: "
                                          r"\['patch_size', 'depth', 'drop_path_rate', 'pos_embed', 'qk_norm', "
                                          r"'qk_norm_affine', 'layer_scale', 'rope_theta', 'rope_rescale'\]"):
        build_backbone("vit_tiny", 16, width=8)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny", "small_cnn"])
def test_pretrained_weights_are_not_an_option(name):
    with pytest.raises(ConfigError, match=r"no option\(s\) \['pretrained'\]"):
        build_backbone(name, 16, pretrained=True)
    with pytest.raises(ConfigError, match=r"model\.options: .*\['pretrained'\]"):
        ModelConfig(backbone=name, options={"pretrained": True})


@pytest.mark.parametrize("name, options, pattern", [
    ("small_cnn", {"width": 0}, r"SmallCNNOptions\.width=0 is out of range; allowed \[1, inf\]"),
    ("vit_tiny", {"depth": 0}, r"ViTOptions\.depth=0 is out of range"),
    ("vit_tiny", {"patch_size": 0}, r"ViTOptions\.patch_size=0 is out of range"),
    ("vit_tiny", {"drop_path_rate": 1.0}, r"ViTOptions\.drop_path_rate=1\.0 is out of range; allowed \[0\.0, 1\.0\)"),
    ("resnet18", {"small_stem": "maybe"}, r"small_stem='maybe' must be true or false"),
    ("small_cnn", {"width": "wide"}, r"width='wide' must be an integer"),
])
def test_option_values_out_of_range_are_rejected(name, options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_backbone(name, 16, **options)
    with pytest.raises(ConfigError, match="model.options: .*" + pattern):
        ModelConfig(backbone=name, options=options)


def test_options_from_the_cli_are_coerced_and_kept_as_a_plain_dict():
    cfg = apply_overrides(PretrainConfig(), ["model.options.width=8"])
    assert cfg.model.options == {"width": 8}
    assert backbone_options("small_cnn", {"width": "8"}) == SmallCNNOptions(width=8)
    assert build_backbone("small_cnn", 16, **cfg.model.options).feature_dim == 64  # 8 * width
    assert backbone_options("vit_small", {}) == ViTOptions()


def test_vit_patch_size_check_uses_the_options_default():
    default = ViTOptions().patch_size
    good = PretrainConfig(method="mae", model={"backbone": "vit_tiny"}, data={"image_size": 8 * default})
    assert good.model.options == {}
    with pytest.raises(ConfigError, match=rf"patch_size={default} does not divide data.image_size=30"):
        PretrainConfig(method="mae", model={"backbone": "vit_tiny"}, data={"image_size": 30})


# ---------------------------------------------------------------------------------------------- ViT interface
def _reference_embedding(vit, x: torch.Tensor, size: int, p: int) -> torch.Tensor:
    """Patch projection as a strided conv + timm's own position resampling (bicubic, no antialias)."""
    from timm.layers import resample_abs_pos_embed

    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x
    proj = vit.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=p).flatten(2).transpose(1, 2)
    g = vit.patch_embed.grid_size
    pos = resample_abs_pos_embed(vit.pos_embed, [size // p, size // p], list(g), num_prefix_tokens=1,
                                 antialias=False)
    return tokens + pos[:, 1:]


@pytest.mark.parametrize("side, resized", [(16, 16), (24, 24), (22, 24), (2, 4)])
def test_vit_embeds_crops_of_other_sizes_with_interpolated_positions(side, resized):
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 32, 3, patch_size=4, depth=2)
    torch.nn.init.normal_(bb.vit.pos_embed)  # timm starts positions near zero: make the interpolation matter
    x = torch.randn(2, 3, side, side)
    got = bb.embed_any_size(x)
    assert got.shape == (2, (resized // 4) ** 2, bb.feature_dim)
    torch.testing.assert_close(got, _reference_embedding(bb.vit, x, resized, 4), rtol=1e-5, atol=1e-5)


def test_vit_training_size_and_strict_paths_are_unchanged():
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 32, 3, patch_size=4, depth=3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(bb.embed_any_size(x), bb.patchify_embed(x))
    torch.testing.assert_close(bb.embed_any_size(x), _reference_embedding(bb.vit, x, 32, 4), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="this ViT takes 32x32 images, got 16x16"):
        bb.patchify_embed(torch.randn(2, 3, 16, 16))  # fixed-grid callers (MAE / I-JEPA masks) keep the error
    assert bb.num_layers == 3 and len(bb.attention_maps(x)) == 3
