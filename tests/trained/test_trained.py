"""workbench.trained: every source of a trained model resolves to the same backbone and description."""
from __future__ import annotations

import pytest
import torch

from workbench.models import build_backbone
from workbench.runs import Run
from workbench.trained import DEFAULT_MEAN, Trained, extract_features, load_trained


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cfg = PretrainConfig(method="byol", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16,
                                                        "pred_hidden_dim": 32},
                         data=DataConfig(name="shapes", image_size=16, options={"n": 128}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=32, knn_every=0, progress="off", device="cpu"),
                         out=str(tmp_path_factory.mktemp("runs")))
    return pretrain(cfg)


def test_run_folder_checkpoint_file_and_run_give_the_same_backbone(tiny_run):
    x = torch.randn(4, 3, 16, 16)
    by_run, by_folder = load_trained(tiny_run), load_trained(str(tiny_run.path))
    by_file = load_trained(tiny_run.checkpoint_path("last"))
    for t in (by_run, by_folder, by_file):
        assert isinstance(t, Trained) and not t.backbone.training
        assert (t.backbone_name, t.backbone_options, t.image_size, t.in_chans) == ("small_cnn", {"width": 8}, 16, 3)
        assert t.method_name == "byol" and t.data["options"] == {"n": 128, "size": 16} and t.step == 4
        assert t.run.path == tiny_run.path and t.checkpoint == tiny_run.checkpoint_path("last")
        torch.testing.assert_close(t.backbone(x), by_run.backbone(x))
    recorded = tiny_run.config["data"]
    assert by_run.stats() == (tuple(recorded["mean"]), tuple(recorded["std"]))
    assert load_trained(by_run) is by_run


def test_method_rebuilt_from_the_checkpoint_holds_the_trained_heads(tiny_run):
    method = load_trained(tiny_run).method()
    ckpt = torch.load(tiny_run.checkpoint_path("last"), weights_only=True)["method"]
    for name, value in method.state_dict().items():
        torch.testing.assert_close(value, ckpt[name])
    assert hasattr(method, "predictor") and not method.training


def test_in_memory_sources(tiny_run):
    method = load_trained(tiny_run).method()
    t = load_trained(method)  # a Method: its backbone, and the method itself for method()
    assert t.backbone is method.backbone and t.method() is method and t.method_name == "byol"
    assert t.mean is None and t.stats(3) == ((DEFAULT_MEAN,) * 3, (0.5,) * 3)
    bare = build_backbone("small_cnn", image_size=16, in_chans=1, width=4)
    tb = load_trained(bare)
    assert tb.backbone is bare and tb.image_size == 16 and tb.in_chans == 1 and tb.stats() == ((0.5,), (0.5,))
    with pytest.raises(ValueError, match="has no method"):
        tb.method()
    with pytest.raises(ValueError, match="records no training data set"):
        tb.dataset("test")
    pair = load_trained((bare, {"mean": [0.2], "std": [0.4], "backbone": "small_cnn"}))
    assert pair.stats() == ((0.2,), (0.4,)) and pair.backbone_name == "small_cnn"


def test_training_data_is_reloaded_from_the_record(tiny_run):
    test = load_trained(tiny_run).dataset("test")
    assert test.split == "test" and tuple(test.images.shape[1:]) == (3, 16, 16)


def test_a_notebook_run_resolves_to_the_run_it_trained(tmp_path, tiny_run):
    nb_run = Run.create(tmp_path, "notebook", "shapes")
    nb_run.link_training_run(tiny_run)
    t = load_trained(nb_run)
    assert t.run.path == tiny_run.path and t.checkpoint == tiny_run.checkpoint_path("last")


def test_errors_name_the_problem(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a checkpoint file"):
        load_trained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"checkpoint 'best' not found.*one of \['last'\]"):
        load_trained(tiny_run, "best")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a workbench pretraining checkpoint"):
        load_trained(other)
    with pytest.raises(TypeError, match="cannot load a trained model from a int"):
        load_trained(3)


def test_features_of_plain_images_are_unlabelled_and_raw_pixels_are_never_cached(tmp_path, tiny_run):
    images = load_trained(tiny_run).dataset("test").images[:20]
    fs = extract_features(tiny_run, images, cache_dir=tmp_path)
    assert fs.features.shape == (20, 64) and (fs.labels == -1).all()
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    raw = extract_features(tiny_run, images, baseline="raw_pixels", cache_dir=tmp_path)
    assert raw.features.shape == (20, 3 * 16 * 16)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1  # the data itself is not stored again
