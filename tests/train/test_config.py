"""The pretraining config: named errors for bad configs and overrides, and the method's recipe filling the unset
fields (lr scaled with the batch, warm-up capped at half the run)."""
from __future__ import annotations

import pytest

from workbench.config import ConfigError, apply_overrides
from workbench.train import PretrainConfig, TrainConfig
from workbench.train.config import resolve_train, schedule_steps


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(method="simclrr"), r"unknown method 'simclrr'; known methods: \[.*'simclr'"),
    (dict(model={"backbone": "resnet19"}), r"backbone='resnet19' is not allowed; choose one of \[.*'resnet18'"),
    (dict(method="simclr", train={"epochs": 2, "batch_size": 1}), r"batch_size=1 is too small for 'simclr'"),
    (dict(method="mae", model={"backbone": "small_cnn"}), r"'mae' needs a ViT backbone.*vit_tiny"),
    (dict(method="ijepa"), r"'ijepa' needs a ViT backbone"),
    (dict(method="mae", model={"backbone": "vit_tiny", "options": {"patch_size": 5}},
          data={"image_size": 32}), r"patch_size=5 does not divide data.image_size=32; choose one of \[2, 4, 8"),
    (dict(train={"epochs": 0}), r"TrainConfig.epochs=0 must be an integer >= 1"),
    (dict(train={"epochs": 1, "optimizer": "adam"}), r"optimizer='adam' is not allowed.*'lars', 'adamw', 'sgd'"),
    (dict(train={"epochs": 1, "device": "gpu"}), r"device='gpu' is not allowed"),
    (dict(method_options={"temperatur": 0.5}), r"method 'simclr'.*temperatur.*options of simclr"),
    (dict(augment={"jitter_p": 2.0}), r"augment.*jitter_p=2.0 is out of range"),
    (dict(data={"options": {"size": 32}}), r"options\['size'\] is not allowed: use DataConfig.image_size"),
    (dict(train={"checkpoint_steps": 0}), r"TrainConfig.checkpoint_steps=0 must be an integer >= 1"),
    (dict(train={"keep_checkpoints": -1}), r"TrainConfig.keep_checkpoints=-1 must be an integer >= 0"),
])
def test_bad_configs_get_named_errors(kwargs, pattern):
    from workbench.config import from_dict

    with pytest.raises(ConfigError, match=pattern):
        from_dict(PretrainConfig, kwargs)


def test_override_errors_name_the_key():
    cfg = PretrainConfig()
    with pytest.raises(ConfigError, match=r"unknown field 'lrr'; known: \[.*'lr'"):
        apply_overrides(cfg, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="must be a number"):
        apply_overrides(cfg, ["train.lr=fast"])
    cfg2 = apply_overrides(cfg, ["train.lr=0.1", "method_options.temperature=0.2", "data.options.n=500"])
    assert cfg2.train.lr == 0.1 and cfg2.method_options == {"temperature": 0.2} and cfg2.data.options == {"n": 500}


def test_recipe_fills_unset_fields_and_lr_scales_with_batch():
    from workbench.methods import method_class

    recipe = method_class("byol").recipe
    r = resolve_train(PretrainConfig(method="byol", train=TrainConfig(batch_size=512)))
    assert r.optimizer == recipe.optimizer and r.base_lr == recipe.lr
    assert r.lr == pytest.approx(recipe.lr * 2)  # 512 / 256
    r = resolve_train(PretrainConfig(method="byol", train=TrainConfig(batch_size=128, lr=0.4, optimizer="sgd",
                                                                      weight_decay=0.0)))
    assert (r.optimizer, r.lr, r.weight_decay) == ("sgd", pytest.approx(0.2), 0.0)
    assert schedule_steps(epochs=4, steps_per_epoch=10, warmup_epochs=10) == (40, 20)  # warm-up <= half the run
    assert schedule_steps(epochs=4, steps_per_epoch=10, warmup_epochs=0.5) == (40, 5)
