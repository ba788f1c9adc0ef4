"""A backbone spec is a source like a run: load_trained / load_backbone, cached features, the random-init baseline,
evaluate, and runs trained from pretrained weights that reload without them."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from workbench.models import WeightsNotAvailable, build_backbone
from workbench.trained import extract_features, load_backbone, load_trained, user_cache_dir

REG = "timm:vit_small_patch14_reg4_dinov2"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def reg_weights(tmp_path_factory):
    torch.manual_seed(3)
    model = timm.create_model(REG[5:], num_classes=0, img_size=28, depth=1, patch_size=7)
    path = tmp_path_factory.mktemp("weights") / "reg.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path, model.eval()


def test_load_backbone_describes_the_model_with_its_own_normalisation_and_size(reg_weights):
    path, ref = reg_weights
    t = load_backbone(REG, image_size=28, weights=str(path), depth=1, patch_size=7)
    assert (t.spec, t.backbone_name, t.image_size, t.in_chans) == (REG, REG, 28, 3)
    assert t.mean == (0.485, 0.456, 0.406) and t.std == (0.229, 0.224, 0.225)  # timm's data config of DINOv2
    assert t.source == f"{REG} ({path})" and t.run is None and not t.backbone.training
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(t.backbone(x), ref(x))
    native = load_backbone(REG, depth=1)  # no image size: the model's own (518 px, a 37x37 grid of 14 px patches)
    assert native.image_size == 518 and native.backbone.grid == (37, 37)
    grey = load_backbone("torchvision:resnet18", in_chans=1, image_size=32)
    assert grey.stats() == (((0.485 + 0.456 + 0.406) / 3,), ((0.229 + 0.224 + 0.225) / 3,))  # RGB stats averaged
    with pytest.raises(ValueError, match=f"the pretrained backbone {REG} has no method"):
        t.method()


def test_a_spec_string_loads_pretrained_weights_and_says_what_to_do_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotAvailable, match=r"pretrained weights of timm model 'vit_small_patch14_dinov2.lvd142m'"
                                                  r".*weights=PATH"):
        load_trained("timm:vit_small_patch14_dinov2.lvd142m")
    (tmp_path / "timm:resnet18").mkdir()  # an existing folder of that name is a path, not a spec
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint 'last' not found"):
        load_trained("timm:resnet18")


def test_features_of_a_spec_are_cached_by_weights_and_the_baseline_is_a_fresh_build(reg_weights, cache, tmp_path):
    path, _ = reg_weights
    t = load_backbone(REG, image_size=28, weights=str(path), depth=1, patch_size=7)
    assert t.cache_dir == user_cache_dir() == cache
    images = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    first = extract_features(t, images)
    files = list(cache.glob("features-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = extract_features(load_backbone(REG, image_size=28, weights=str(path), depth=1, patch_size=7), images)
    assert torch.equal(first.features, again.features) and files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    other = tmp_path / "other.safetensors"
    sd = {k: v.clone() for k, v in t.backbone.vit.state_dict().items()}
    sd["norm.bias"] += 1.0
    safetensors.torch.save_file(sd, str(other))
    changed = extract_features(load_backbone(REG, image_size=28, weights=str(other), depth=1, patch_size=7), images)
    assert not torch.allclose(changed.features, first.features) and len(list(cache.glob("features-*.pt"))) == 2
    fresh = t.random_init(seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        expected = build_backbone(REG, 28, depth=1, patch_size=7).eval()
    for (k, a), b in zip(fresh.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), k  # timm's own initialisation (registers, layer scale), not the loaded weights
    assert not torch.equal(fresh.vit.reg_token, t.backbone.vit.reg_token)


def test_evaluate_takes_a_spec_like_a_run(reg_weights, cache):
    from tests.colours import colour_data
    from workbench.evaluation import evaluate
    from workbench.trained import adapt_dataset

    path, _ = reg_weights
    t = load_backbone(REG, image_size=28, weights=str(path), depth=1, patch_size=7)
    train, test = (adapt_dataset(d, 3, 28) for d in (colour_data(120, seed=0), colour_data(60, seed=1, split="test")))
    table = evaluate(t, data=(train, test), metrics="knn")
    assert set(table["model"]) == {"pretrained", "random_init", "raw_pixels"}
    assert table["value"].between(0, 1).all()
    with pytest.raises(ValueError, match="records no training data set"):
        evaluate(t, metrics="knn")


def test_a_run_started_from_local_weights_reloads_without_them(tmp_path, blobs_data):
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    torch.manual_seed(0)
    start = timm.create_model("resnet18", num_classes=0)
    weights = tmp_path / "start.safetensors"
    safetensors.torch.save_file(start.state_dict(), str(weights))
    cfg = PretrainConfig(method="simclr", data=DataConfig(name=blobs_data, options={"n": 64}),
                         model=ModelConfig(backbone="timm:resnet18", options={"weights": str(weights)}),
                         method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                         train=TrainConfig(epochs=1, batch_size=32, knn_every=0, progress="off", device="cpu"),
                         out=str(tmp_path / "runs"))
    run = pretrain(cfg)
    weights.unlink()  # the run's checkpoint holds the weights now; nothing may read the start file again
    t = load_trained(run)
    assert t.backbone_options == {"weights": str(weights)} and t.backbone_name == "timm:resnet18"
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)["method"]
    for k, v in t.backbone.state_dict().items():
        assert torch.equal(v, ckpt["backbone." + k]), k
    assert not torch.equal(t.backbone.model.conv1.weight, start.conv1.weight)  # trained away from the start
    assert t.method().backbone.model.conv1.weight.shape == start.conv1.weight.shape
