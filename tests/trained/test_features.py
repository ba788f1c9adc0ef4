"""workbench.trained.extract_features on tiny images: shapes, labels and factors, batching, caching (of a backbone
and of a run's checkpoint), the random-init and raw-pixel baselines, and bad-input errors."""
from __future__ import annotations

import os

import pytest
import torch

import workbench.trained.features as features_mod
from tests.colours import _colours, colour_data
from workbench.evaluation import evaluate, few_label_finetune
from workbench.trained import RawPixels, extract_features, random_init_like
from workbench.models import build_backbone


def test_extract_features_shapes_labels_factors_and_batching(data, backbone):
    train, _ = data
    fs = extract_features(backbone, train, batch_size=64, cache=False)
    assert fs.features.shape == (400, backbone.feature_dim) and fs.features.dtype == torch.float32
    assert torch.equal(fs.labels, train.labels) and set(fs.factors) == {"colour", "pos_x"}
    with torch.no_grad():
        x = (train.images[:5].float() / 255 - 0.5) / 0.5
        ref = backbone(x)
    torch.testing.assert_close(fs.features[:5], ref, rtol=1e-4, atol=1e-4)
    assert backbone.training is False and not any(p.requires_grad is False for p in backbone.parameters())
    raw = extract_features(backbone, train, baseline="raw_pixels", cache=False)
    assert raw.features.shape == (400, 3 * 16 * 16)
    torch.testing.assert_close(raw.features[0], ((train.images[0].float() / 255 - 0.5) / 0.5).flatten())


def test_random_init_changes_weights_but_not_the_original(backbone):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    fresh = random_init_like(backbone, seed=1)
    again = random_init_like(backbone, seed=1)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k])
    w = "stages.0.0.weight"
    assert not torch.equal(fresh.state_dict()[w], backbone.state_dict()[w])
    assert torch.equal(fresh.state_dict()[w], again.state_dict()[w])
    vit = build_backbone("vit_tiny", image_size=16, patch_size=4, depth=1)
    vfresh = random_init_like(vit, seed=0)
    assert not torch.equal(vfresh.vit.pos_embed, vit.vit.pos_embed)


def test_a_pass_quicker_than_the_threshold_is_recomputed_not_stored(tmp_path, data, backbone, monkeypatch):
    monkeypatch.setattr(features_mod, "CACHE_MIN_SECONDS", 1e9)
    extract_features(backbone, data[0], cache_dir=tmp_path)
    assert not list(tmp_path.glob("features-*.pt"))
    monkeypatch.setattr(features_mod, "CACHE_MIN_SECONDS", 0.0)
    extract_features(backbone, data[0], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1


def test_cache_hits_and_invalidates(tmp_path, data, backbone, monkeypatch):
    train, _ = data
    calls = []
    real = features_mod.encode

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(features_mod, "encode", counting)
    a = extract_features(backbone, train, cache_dir=tmp_path)
    b = extract_features(backbone, train, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(a.features, b.features)
    files = list(tmp_path.glob("features-*.pt"))
    assert len(files) == 1
    assert torch.load(files[0], weights_only=True)["features"].shape == a.features.shape
    extract_features(backbone, train.subset(torch.arange(100)), cache_dir=tmp_path)  # other data: recompute
    assert len(calls) == 2
    changed = random_init_like(backbone, seed=5)  # other weights: recompute
    extract_features(changed, train, cache_dir=tmp_path)
    assert len(calls) == 3
    extract_features(backbone, train, cache_dir=tmp_path, mean=0.4)  # other normalisation: recompute
    assert len(calls) == 4


def test_run_features_are_cached_and_invalidated_by_a_new_checkpoint(tiny_run, monkeypatch):
    test = _colours("test", n=64)
    calls = []
    real = features_mod.encode
    monkeypatch.setattr(features_mod, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = extract_features(tiny_run, test)
    b = extract_features(tiny_run, test)
    assert len(calls) == 1 and torch.equal(a.features, b.features)
    assert any(tiny_run.cache_dir.glob(f"features-last-pretrained-colours-test-*.pt"))
    ckpt = tiny_run.checkpoint_path("last")
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))  # "a new checkpoint"
    extract_features(tiny_run, test)
    assert len(calls) == 2


def test_mismatched_data_errors_say_what_to_pass(data, backbone):
    gray = colour_data(20, channels=1)
    with pytest.raises(ValueError, match=r"1-channel images but the backbone takes 3.*channels=3"):
        extract_features(backbone, gray, cache=False)
    big = colour_data(20, size=24)
    with pytest.raises(ValueError, match=r"24x24 images but the backbone takes 16x16.*size=16"):
        extract_features(backbone, big, cache=False)
    with pytest.raises(ValueError, match="size=16"):
        few_label_finetune(backbone, big, big, 0.5)
    with pytest.raises(TypeError, match="cannot load a trained model from a int"):
        extract_features(42, data[0])
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a checkpoint file"):
        extract_features("/nonexistent/run", data[0])


def test_run_without_checkpoint_is_an_actionable_error(tmp_path, data):
    from workbench.runs import Run

    run = Run.create(tmp_path, "simclr", "colours", {"method": "simclr"})
    with pytest.raises(FileNotFoundError, match=r"no checkpoints at all: pretrain it first.*--resume"):
        extract_features(run, data[0])
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        evaluate(run.path, data=data)


def test_raw_pixels_module():
    m = RawPixels(8, 2)
    x = torch.randn(3, 2, 8, 8)
    assert m.feature_dim == 128 and torch.equal(m(x), x.flatten(1))


def test_cache_key_holds_the_pass_arithmetic(tmp_path, data, backbone, monkeypatch):
    """Features computed with TF32 matmuls (a CUDA process that trained first) are not served to an fp32 pass."""
    train, _ = data
    calls = []
    real = features_mod.encode
    monkeypatch.setattr(features_mod, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    extract_features(backbone, train, cache_dir=tmp_path)
    monkeypatch.setattr(features_mod, "_pass_precision", lambda device: "fp32-tf32")
    extract_features(backbone, train, cache_dir=tmp_path)
    assert len(calls) == 2
    monkeypatch.undo()
    assert features_mod._pass_precision(torch.device("cpu")) == "fp32"  # a CPU pass is plain fp32 whatever the setting
