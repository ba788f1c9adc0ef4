"""Backbones from timm and torchvision by spec: options checked against the library, local weights loaded exactly,
downloads that fail offline with advice, register tokens kept out of the patch tokens, and training through the CLI."""
from __future__ import annotations

import urllib.error

import pytest
import safetensors.torch
import timm
import torch
import torchvision

from workbench.config import ConfigError
from workbench.models import (ResNet, TimmBackbone, ViT, WeightsNotAvailable, backbone_kind, backbone_patch_size,
                              build_backbone)
from workbench.train.config import ModelConfig, PretrainConfig

REG_VIT = "vit_small_patch14_reg4_dinov2"  # CLS + 4 registers, no_embed_class=True (positions on patches only)
SMALL_REG = {"depth": 2, "patch_size": 7}  # 28 px images -> a 4x4 grid


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------------------- options checked
@pytest.mark.parametrize("backbone, options, pattern", [
    ("timm:resnet181", {}, r"timm has no model 'resnet181'; did you mean \[.*'resnet18'"),
    ("timm:vit_tiny_patch16_224", {"depht": 2},
     r"'vit_tiny_patch16_224' \(VisionTransformer\) has no option\(s\) \['depht'\]; allowed options: .*'depth'"),
    ("timm:vit_tiny_patch16_224", {"global_pool": "bogus"}, r"rejected options .*AssertionError: Only avg"),
    ("timm:vit_tiny_patch16_224", {"img_size": 64}, r"\['img_size'\] cannot be set: img_size: it comes from the data"),
    ("timm:resnet18", {"num_classes": 10}, r"\['num_classes'\] cannot be set"),
    ("timm:resnet18.bogus", {}, r"no weights tag 'resnet18.bogus'; tags of this model: \[.*'resnet18.a1_in1k'"),
    ("timm:resnet18", {"pretrained": "yes"}, r"pretrained='yes' must be true or false"),
    ("timm:resnet18", {"weights": "/no/such/file.safetensors"}, r"weights='/no/such/file.safetensors': no such file"),
    ("torchvision:resnet19", {}, r"torchvision:resnet19 is not a torchvision ResNet; choose one of \[.*'resnet18'"),
    ("torchvision:resnet18", {"width": 3}, r"has no option\(s\) \['width'\]; allowed options: \['pretrained', "
                                           r"'weights', 'small_stem'\]"),
    ("torchvision:resnet18", {"pretrained": "IMAGENET9"}, r"choose one of \['IMAGENET1K_V1', 'DEFAULT'\]"),
    ("timm:", {}, r"names no model"),
])
def test_spec_options_are_checked_when_the_config_is_made(backbone, options, pattern):
    with pytest.raises(ConfigError, match="model.options: .*" + pattern):
        ModelConfig(backbone=backbone, options=options)
    with pytest.raises(ConfigError, match=pattern):
        build_backbone(backbone, 32, **options)


def test_kind_and_patch_size_come_from_the_library_model():
    assert backbone_kind("timm:resnet18", {}) == "cnn" and backbone_patch_size("timm:resnet18", {}) is None
    assert backbone_kind(f"timm:{REG_VIT}", {}) == "vit" and backbone_patch_size(f"timm:{REG_VIT}", {}) == 14
    assert backbone_patch_size(f"timm:{REG_VIT}", {"patch_size": 4}) == 4
    assert backbone_kind("torchvision:resnet50", {}) == "cnn" and backbone_kind("vit_tiny", {}) == "vit"
    cfg = PretrainConfig(method="mae", model={"backbone": f"timm:{REG_VIT}", "options": {"patch_size": 4}},
                         data={"image_size": 16})
    assert cfg.model.is_vit
    with pytest.raises(ConfigError, match=r"patch_size=14 does not divide data.image_size=16"):
        PretrainConfig(method="mae", model={"backbone": f"timm:{REG_VIT}"}, data={"image_size": 16})
    with pytest.raises(ConfigError, match=r"method 'mae' needs a ViT backbone; model.backbone='timm:resnet18'"):
        PretrainConfig(method="mae", model={"backbone": "timm:resnet18"})


# ------------------------------------------------------------------------------------------------- what gets built
def test_timm_vit_with_registers_matches_timm_and_keeps_registers_out_of_the_patch_tokens():
    torch.manual_seed(0)
    bb = build_backbone(f"timm:{REG_VIT}", 28, **SMALL_REG).eval()
    assert isinstance(bb, ViT) and bb.num_prefix_tokens == 5 and bb.grid == (4, 4) and bb.feature_dim == 384
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = bb.vit.forward_features(x)  # timm's own forward: [B, 5 + 16, D]
        f = bb.forward_features(x)
        torch.testing.assert_close(f.tokens, ref[:, 5:])
        torch.testing.assert_close(f.pooled, ref[:, 0])
        torch.testing.assert_close(bb(x), bb.vit(x))  # num_classes=0: timm's model(x) is the pooled feature
        full = bb.forward_tokens(x)  # CLS + patches, registers dropped
        assert full.shape == (2, 17, 384)
        torch.testing.assert_close(full, torch.cat([ref[:, :1], ref[:, 5:]], 1))
        keep = torch.tensor([[0, 5, 15], [1, 2, 3]])
        assert bb.forward_tokens(x, keep).shape == (2, 4, 384)


def test_timm_token_model_without_vit_class_and_cnns_in_both_layouts():
    torch.manual_seed(0)
    eva = build_backbone("timm:vit_small_patch16_dinov3", 32, depth=1).eval()  # EVA with RoPE, CLS + 4 registers
    assert isinstance(eva, TimmBackbone) and eva.kind == "vit" and eva.grid == (2, 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = eva.model.forward_features(x)
        f = eva.forward_features(x)
    torch.testing.assert_close(f.tokens, ref[:, eva.num_prefix_tokens:])
    maps = eva.attention_maps(x)
    assert len(maps) == 1 and maps[0].shape == (2, 6, 4 + eva.num_prefix_tokens, 4 + eva.num_prefix_tokens)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 6, 9))
    with pytest.raises(ValueError, match="MAE, I-JEPA.*needs a timm VisionTransformer"):
        eva.forward_tokens(x)
    swin = build_backbone("timm:swin_tiny_patch4_window7_224", 224, depths=[1, 1, 1, 1], embed_dim=24,
                          num_heads=[1, 1, 1, 1]).eval()  # timm returns NHWC maps
    assert swin.kind == "cnn" and swin.nhwc
    with torch.no_grad():
        fs = swin.forward_features(torch.randn(1, 3, 224, 224))
    assert fs.grid == (7, 7) and fs.tokens.shape == (1, 49, swin.feature_dim)
    cnn = build_backbone("timm:resnet18", 64).eval()
    with torch.no_grad():
        fc = cnn.forward_features(torch.randn(2, 3, 64, 64))
    assert fc.grid == (2, 2) and fc.pooled.shape == (2, 512)
    torch.testing.assert_close(fc.pooled, fc.tokens.mean(1))


# ------------------------------------------------------------------------------------------------- local weights
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_timm_random_weights_saved_locally_load_by_path_equal(tmp_path, suffix):
    torch.manual_seed(1)
    ref = timm.create_model(REG_VIT, num_classes=0, img_size=28, **SMALL_REG).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(ref.state_dict(), str(path))
    else:
        torch.save({"state_dict": ref.state_dict()}, path)  # nested, as training scripts save them
    torch.manual_seed(2)  # a different random init: only the file can make them equal
    bb = build_backbone(f"timm:{REG_VIT}", 28, weights=str(path), **SMALL_REG).eval()
    _same_state(bb.vit, ref)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), ref(x))


def test_timm_file_with_a_classifier_loads_without_it_and_a_wrong_file_is_refused(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18_in1k.safetensors"
    safetensors.torch.save_file(full.state_dict(), str(path))
    bb = build_backbone("timm:resnet18", 32, weights=str(path))
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    assert "fc.weight" not in bb.model.state_dict()
    with pytest.raises(ValueError, match=r"does not fit timm model 'resnet34'.*Missing key"):
        build_backbone("timm:resnet34", 32, weights=str(path))
    bad = tmp_path / "not_weights.pt"
    torch.save({"step": 3, "config": {"a": 1}}, bad)
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        build_backbone("timm:resnet18", 32, weights=str(bad))


def test_torchvision_weights_by_path_with_channel_adaptation_and_stem_checks(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # with its fc: dropped on load
    bb = build_backbone("torchvision:resnet18", 64, weights=str(path))
    assert isinstance(bb, ResNet) and not bb.small_stem  # weights given: the ImageNet stem stays by default
    for k, v in bb.net.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    grey = build_backbone("torchvision:resnet18", 64, 1, weights=str(path))
    w = ref.conv1.weight
    torch.testing.assert_close(grey.net.conv1.weight, w.sum(1, keepdim=True))  # timm's adapt_input_conv for 1 channel
    with pytest.warns(UserWarning, match="conv1 starts random"):
        small = build_backbone("torchvision:resnet18", 32, weights=str(path), small_stem=True)
    assert small.net.conv1.weight.shape == (64, 3, 3, 3)
    assert torch.equal(small.net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    small_file = tmp_path / "small.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in small.net.state_dict().items()}, str(small_file))
    with pytest.raises(ValueError, match=r"pass small_stem=True to match the weights"):
        build_backbone("torchvision:resnet18", 32, weights=str(small_file))


# ------------------------------------------------------------------------------------------------- downloads offline
@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The Hugging Face hub in its offline mode with an empty cache, and torchvision's downloader unreachable."""
    import huggingface_hub.constants as hf
    import torchvision.models._api as tv_api

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError(f"[Errno -2] Name or service not known: {url}")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", unreachable)


def test_downloads_fail_offline_with_advice(offline):
    with pytest.raises(WeightsNotAvailable, match=r"could not fetch the pretrained weights of timm model "
                                                  r"'resnet18.a1_in1k'.*HF_HUB_OFFLINE.*weights=PATH"):
        build_backbone("timm:resnet18.a1_in1k", 32, pretrained=True)
    with pytest.raises(WeightsNotAvailable, match=r"ResNet18_Weights.IMAGENET1K_V1 weights of torchvision resnet18"
                                                  r".*Name or service not known.*weights=PATH"):
        build_backbone("torchvision:resnet18", 64, pretrained=True)
    with pytest.raises(FileNotFoundError):  # the CLI reports it as one line (exit status 2)
        build_backbone("timm:resnet18.a1_in1k", 32, pretrained=True)


# ------------------------------------------------------------------------------------------------- training
def test_pretrain_cli_trains_timm_backbones_and_a_run_reloads_them(tmp_path):
    from workbench.cli import main
    from workbench.runs import list_runs
    from workbench.trained import load_trained

    common = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path), "data.image_size=16",
              "data.options.n=64", "train.knn_every=0", "train.progress=off"]
    assert main(["pretrain", "--method", "simclr", "--backbone", "torchvision:resnet18", *common,
                 "method_options.proj_hidden_dim=64", "method_options.proj_output_dim=32"]) == 0
    assert main(["pretrain", "--method", "mae", "--backbone", f"timm:{REG_VIT}", *common, "model.options.depth=1",
                 "model.options.patch_size=4"]) == 0
    runs = sorted(list_runs(tmp_path), key=lambda r: r.config["method"])
    assert [r.status["status"] for r in runs] == ["completed", "completed"]
    mae, simclr = runs
    t = load_trained(mae)
    assert isinstance(t.backbone, ViT) and t.backbone.num_prefix_tokens == 5 and t.backbone_name == f"timm:{REG_VIT}"
    ckpt = torch.load(mae.checkpoint_path("last"), weights_only=True)["method"]
    for k, v in t.backbone.state_dict().items():
        assert torch.equal(v, ckpt["backbone." + k]), k
    assert t.method().reconstruct(torch.randn(2, 3, 16, 16))["pred_images"].shape == (2, 3, 16, 16)
    assert load_trained(simclr).backbone.small_stem  # random weights at 16 px: the small stem
