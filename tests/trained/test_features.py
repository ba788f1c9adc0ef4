"""Feature extraction, caching, baselines, bad-input errors, few-label fine-tuning and distillation on tiny images."""
from __future__ import annotations

import pytest
import torch

import workbench.trained.features as features_mod
from workbench.data.base import ImageDataset
from workbench.evaluation import Classifier, distill, distillation_loss, evaluate, few_label_finetune
from workbench.trained import RawPixels, extract_features, random_init_like
from workbench.models import build_backbone

PALETTE = torch.tensor([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 220, 50]], dtype=torch.float32)


def colour_data(n: int, size: int = 16, seed: int = 0, split: str = "train", channels: int = 3) -> ImageDataset:
    """Class = colour of a square on a noisy grey background; factors: colour (= class), pos_x (float)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    img = 100 + 30 * torch.rand(n, 3, size, size, generator=g)
    pos = torch.randint(0, size // 2, (n,), generator=g)
    cols = torch.arange(size)
    mask = ((cols[None, :] >= pos[:, None]) & (cols[None, :] < pos[:, None] + size // 2)).float()  # [n, W]
    square = mask[:, None, None, :] * mask.new_ones(n, 1, size, 1)
    img = img * (1 - square) + PALETTE[y][:, :, None, None] * square
    img = img[:, :channels].round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(img, y, ["red", "green", "blue", "yellow"], "colours", split,
                        factors={"colour": y.clone(), "pos_x": pos.float()})


@pytest.fixture(scope="module")
def data():
    return colour_data(400, seed=0), colour_data(200, seed=1, split="test")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("small_cnn", image_size=16, in_chans=3, width=8).eval()


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


def test_evaluate_backbone_table_with_baselines(data, backbone):
    table = evaluate(backbone, data=data, metrics="knn,linear,kmeans,factors", baselines=True, device="cpu",
                     options={"knn_ks": (10,)})
    assert list(table.columns) == ["model", "name", "value", "split", "settings"]
    assert set(table["model"]) == {"pretrained", "random_init", "raw_pixels"}
    wide = table.pivot_table(index="name", columns="model", values="value")
    assert {"knn_top1_k10", "linear_top1", "kmeans_nmi", "kmeans_ari", "factor_colour_accuracy",
            "factor_pos_x_r2", "factor_label_accuracy"} <= set(wide.index)
    # the colour of the square is linearly readable from raw pixels
    assert wide.loc["linear_top1", "raw_pixels"] > 0.9
    assert wide.loc["factor_colour_accuracy", "raw_pixels"] == pytest.approx(wide.loc["linear_top1", "raw_pixels"])
    assert (table["split"] == "test").all()


def test_evaluate_wires_finetune_and_distill(data, backbone):
    table = evaluate(backbone, data=data, metrics="distill", baselines=["raw_pixels"], device="cpu",
                     options={"fractions": (0.1,), "finetune_min_steps": 10, "distill_min_steps": 5,
                              "finetune_epochs": 1, "distill_epochs": 1})
    assert set(table["name"]) == {"finetune_top1_10pct", "distill_top1_10pct"}
    assert set(table["model"]) == {"pretrained", "raw_pixels"}
    ft = table[(table["name"] == "finetune_top1_10pct") & (table["model"] == "pretrained")]["settings"].item()
    assert ft["num_labeled"] == 40 and ft["steps"] == 10
    assert table["value"].between(0, 1).all()


def test_few_label_finetune_and_distillation(data, backbone):
    train, test = data
    ft = few_label_finetune(backbone, train, test, fraction=0.1, epochs=1, min_steps=40, batch_size=16, lr=0.05,
                            seed=0, device="cpu")
    assert ft.num_labeled == 40 and ft.settings["per_class"] == 10 and ft.settings["steps"] == 40
    assert ft.top1 > 0.6, ft.top1  # chance is 0.25
    assert isinstance(ft.model, Classifier) and ft.model.head.out_features == 4
    ds = distill(ft, train, test, epochs=3, min_steps=0, batch_size=32, lr=0.05, seed=0, device="cpu")
    assert ds.teacher_top1 == pytest.approx(ft.top1)
    assert ds.top1 > 0.5, ds.top1
    assert ds.top1 >= ds.teacher_top1 - 0.2
    with pytest.raises(ValueError, match="images per class"):
        few_label_finetune(backbone, train, test, fraction=0.005)
    # distillation loss: equals the cross-entropy to the teacher's softmax; minimal when the logits agree
    t = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(t / 2.0, 1)
    assert distillation_loss(t, t, 2.0) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    assert distillation_loss(-t, t, 2.0) > distillation_loss(t, t, 2.0)


def test_raw_pixels_module():
    m = RawPixels(8, 2)
    x = torch.randn(3, 2, 8, 8)
    assert m.feature_dim == 128 and torch.equal(m(x), x.flatten(1))
