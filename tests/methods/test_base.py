"""What every method shares (workbench.methods.base): recipes, the views a method needs, EMA and the momentum
schedule, config errors that name the field, default heads, one training step of each method (teachers follow
by EMA), and losses in float32 under bf16 autocast."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.methods.helpers import _pair, progress, tiny_cnn, tiny_vit, views
from workbench.config import ConfigError, from_dict
from workbench.methods import Batch, Progress, Recipe, build_method, cosine_momentum, ema_update
from workbench.methods.barlow_twins import barlow_twins_loss
from workbench.methods.byol import byol_loss
from workbench.methods.mocov3 import infonce_loss
from workbench.methods.simclr import nt_xent_loss
from workbench.methods.simsiam import negative_cosine_loss
from workbench.methods.vicreg import vicreg_loss
from workbench.models.backbones import build_backbone
from workbench.train.config import PretrainConfig, resolve_train

JOINT_METHODS = ["simclr", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg"]


# ---------------------------------------------------------------- recipes

def test_recipe_rejects_unknown_keys_and_bad_values():
    with pytest.raises(TypeError, match="momentum"):
        Recipe(optimizer="sgd", momentum=0.9)
    with pytest.raises(ConfigError, match=r"Recipe has no field\(s\) \['momentum'\]; known fields: .*'lr'"):
        from_dict(Recipe, {"momentum": 0.9})
    with pytest.raises(ConfigError, match=r"Recipe.optimizer='adam' is not allowed.*'lars', 'adamw', 'sgd'"):
        Recipe(optimizer="adam")
    with pytest.raises(ConfigError, match=r"Recipe.lr=0 is out of range"):
        Recipe(lr=0)
    with pytest.raises(ConfigError, match=r"Recipe.betas\[1\]=1.0 is out of range"):
        Recipe(betas=(0.9, 1.0))


def test_recipe_states_only_its_changes_and_resolve_train_reads_them():
    r = Recipe(optimizer="sgd", lr=0.5)
    assert r.changes() == {"optimizer": "sgd", "lr": 0.5}
    assert Recipe().changes() == {}
    for name in ("mocov3", "mae"):
        cfg = PretrainConfig(method=name, model={"backbone": "vit_tiny"})
        recipe = cfg.method_class.recipe
        resolved = resolve_train(cfg)
        assert (resolved.optimizer, resolved.base_lr, resolved.weight_decay, resolved.warmup_epochs,
                resolved.betas) == (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.warmup_epochs,
                                    recipe.betas)
    assert resolve_train(PretrainConfig(method="mae", model={"backbone": "vit_tiny"})).betas == (0.9, 0.95)
    assert dataclasses.replace(Recipe(), warmup_epochs=0).changes() == {"warmup_epochs": 0}


# ---------------------------------------------------------------- views

def test_two_view_methods_name_the_preset_when_a_view_is_missing():
    model = build_method("simsiam", build_backbone("small_cnn", 16, 3, width=4),
                         {"proj_hidden_dim": 16, "proj_output_dim": 16, "pred_hidden_dim": 8})
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"simsiam needs 2 views per image, got 1; use the 'simclr' preset"):
        model.training_step(Batch(views=[x], num_global=1), Progress())
    out = model.training_step(Batch(views=[x, x.flip(-1), x]), Progress())  # extra views are ignored
    assert out.features.shape == (4, 32) and torch.isfinite(out.loss)  # backbone features: 8 * width
    with pytest.raises(ConfigError, match=r"byol needs 2 views per image, got 1; use the 'byol' preset"):
        PretrainConfig(method="byol", augment={"preset": "mae"})
    assert PretrainConfig(method="mae", model={"backbone": "vit_tiny"}).method_class.num_views == 1


def test_training_step_rejects_a_single_view():
    method = build_method("simclr", build_backbone("small_cnn", 16, 3, width=4))
    with pytest.raises(ValueError, match="2 views"):
        method.training_step(Batch([torch.randn(4, 3, 16, 16)], 1), Progress())


# ---------------------------------------------------------------- EMA and momentum schedule

def test_ema_update_moves_by_one_minus_m():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    student[1].running_mean.fill_(0.5)
    before = [p.detach().clone() for p in teacher.parameters()]
    m = 0.9
    ema_update(teacher, student, m)
    for t_new, t_old, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t_new - t_old, (1 - m) * (s - t_old))
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0.99, Progress(step=0, total_steps=100)) == pytest.approx(0.99)
    assert cosine_momentum(0.99, Progress(step=50, total_steps=100)) == pytest.approx(0.995)
    assert cosine_momentum(0.99, Progress(step=100, total_steps=100)) == pytest.approx(1.0)
    assert cosine_momentum(0.9, Progress(step=100, total_steps=100), final=0.95) == pytest.approx(0.95)
    values = [cosine_momentum(0.996, Progress(step=s, total_steps=10)) for s in range(11)]
    assert all(a < b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------- configs

def test_config_errors_name_the_field():
    bb = build_backbone("small_cnn", 16, 3, width=4)
    with pytest.raises(ConfigError, match="loss"):
        build_method("simclr", bb, {"loss": "infonce"})
    with pytest.raises(ConfigError, match="dcl_sigma"):
        build_method("simclr", bb, {"dcl_sigma": 0.5})
    with pytest.raises(ConfigError, match="temperature"):
        build_method("mocov3", bb, {"temperature": 0.0})
    with pytest.raises(ConfigError, match="final_momentum"):
        build_method("byol", bb, {"momentum": 0.99, "final_momentum": 0.9})
    with pytest.raises(ConfigError, match="eps"):
        build_method("vicreg", bb, {"eps": -1})
    with pytest.raises(ConfigError, match="lambd"):
        build_method("barlow_twins", bb, {"lambd": -0.1})
    with pytest.raises(ConfigError, match="proj_layers"):
        build_method("simsiam", bb, {"proj_layers": 0})
    assert build_method("simclr", bb, {"loss": "dcl", "dcl_sigma": "0.5"}).config.dcl_sigma == 0.5


# ---------------------------------------------------------------- one training step per method

SMALL_HEADS = {"proj_hidden_dim": 64, "proj_output_dim": 32}
PRED = {"pred_hidden_dim": 16}


@pytest.mark.parametrize("name", JOINT_METHODS)
def test_defaults_build_the_recipe_heads(name):
    """Default heads (solo-learn CIFAR recipes) on the small CNN: output sizes as documented."""
    method = build_method(name, build_backbone("small_cnn", 16, 3, width=4))
    expected = {"simclr": 256, "mocov3": 256, "byol": 256, "simsiam": 2048, "barlow_twins": 2048, "vicreg": 2048}
    z = method.projector(torch.randn(4, method.backbone.feature_dim))
    assert z.shape == (4, expected[name])
    assert isinstance(method.recipe, Recipe)


@pytest.mark.parametrize("name", JOINT_METHODS)
def test_training_step_smoke(name):
    torch.manual_seed(0)
    options = {**SMALL_HEADS, **(PRED if name in ("mocov3", "byol", "simsiam") else {})}
    method = build_method(name, build_backbone("small_cnn", 16, 3), options)
    method.train()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    progress = Progress(step=3, total_steps=10, steps_per_epoch=5, total_epochs=2)
    out = method.training_step(Batch(views, 2), progress)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, method.backbone.feature_dim) and not out.features.requires_grad
    for v in out.logs.values():
        assert math.isfinite(float(v))
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0

    teachers = method.teacher_modules()
    assert (len(teachers) > 0) == (name in ("mocov3", "byol"))
    teacher_ids = {id(p) for t in teachers for p in t.parameters()}
    state_keys = set(method.state_dict())
    for t in teachers:
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    if teachers:
        assert any(k.startswith(("momentum_", "target_")) for k in state_keys)
        first = next(teachers[0].parameters())
        student_first = next(method.backbone.parameters())
        with torch.no_grad():  # move the student, then the teacher must follow by (1 - m)
            for p in method.parameters():
                if id(p) not in teacher_ids:
                    p.add_(0.1)
        before = first.detach().clone()
        method.update_teacher(progress)
        m = cosine_momentum(method.config.momentum, progress, method.config.final_momentum)
        torch.testing.assert_close(first - before, (1 - m) * (student_first - before))
        assert not torch.equal(first, before)


@pytest.mark.parametrize("name,backbone,preset", [
    ("dino", "vit", None), ("dino", "cnn", None), ("swav", "vit", None), ("swav", "cnn", "dino"),
    ("swav", "vit", "dino"), ("mae", "vit", None), ("ijepa", "vit", None),
])
def test_one_step_smoke(name, backbone, preset):
    """Default config, views from the method's own augmentation preset (dino: 2 x 16 px + 6 x 6 px crops)."""
    from workbench.augment import generate_views, make_preset

    bb = tiny_vit() if backbone == "vit" else tiny_cnn()
    m = build_method(name, bb)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    vb = generate_views(images, make_preset(preset or type(m).preset, 16), g)
    out = m.training_step(Batch(vb.views, vb.num_global, images), progress(step=1))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (6, bb.feature_dim) and not out.features.requires_grad
    out.loss.backward()
    grads = [p.grad for p in bb.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(torch.isfinite(g).all() for g in grads)
    m.update_teacher(progress(step=2))
    state = m.state_dict()  # teachers and buffers are part of the checkpoint
    if name == "dino":
        assert "center" in state and any(k.startswith("teacher_backbone.") for k in state)
    if name == "ijepa":
        assert any(k.startswith("target_encoder.") for k in state)
    assert isinstance(type(m).recipe, Recipe)


# ---------------------------------------------------------------- float32 losses under bf16 autocast

def test_losses_run_in_float32_under_bf16_autocast():
    z1, z2 = _pair(8, 6, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [nt_xent_loss(z1.bfloat16(), z2.bfloat16(), 0.2), infonce_loss(z1.bfloat16(), z2.bfloat16()),
               barlow_twins_loss(z1.bfloat16(), z2.bfloat16()), vicreg_loss(z1.bfloat16(), z2.bfloat16())]
    full = [nt_xent_loss(z1, z2, 0.2), infonce_loss(z1, z2), barlow_twins_loss(z1, z2), vicreg_loss(z1, z2)]
    for a, b in zip(low, full):  # only the bf16 rounding of the inputs differs
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    d1, d2 = z1.double(), z2.double()  # float64 stays float64 (for precise numerical checks)
    for fn in (nt_xent_loss, infonce_loss, barlow_twins_loss, vicreg_loss, byol_loss, negative_cosine_loss):
        assert fn(d1, d2).dtype == torch.float64


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_losses_stay_float32_under_bf16_autocast(name):
    opts = {"dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
            "swav": {"hidden_dim": 32, "out_dim": 16, "num_prototypes": 20}}[name]
    m = build_method(name, tiny_cnn(), opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(Batch(views(2, 2), 2), progress())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
