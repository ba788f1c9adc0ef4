"""DINOv2's optimisation recipe as shared machinery: the cosine weight-decay schedule against its formula by hand,
the layer-wise lr multipliers against DINOv2's name-based convention (``get_vit_lr_decay_rate``, re-implemented
here), one SGD step against a hand update, the schedule after resume, and the config errors."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn

from workbench.config import ConfigError
from workbench.methods import build_method
from workbench.methods.base import Recipe
from workbench.models import build_backbone
from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
from workbench.train.optim import build_optimizer, build_scheduler, param_groups


def dinov2_layer(name: str, depth: int) -> int:
    """DINOv2's layer id of a student-backbone parameter name: embeddings 0, ``blocks.i.`` i + 1, else depth + 1."""
    if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "reg_token")):
        return 0
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def test_weight_decay_follows_dinov2_cosine_and_spares_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, 0.04)
    opt = build_optimizer("adamw", groups, lr=1e-3, weight_decay=0.04)
    total = 10
    sched = build_scheduler(opt, total, warmup_steps=2, weight_decay=0.04, weight_decay_end=0.4)
    wds, no_decay = [], []
    for _ in range(total):
        wds.append(opt.param_groups[0]["weight_decay"])
        no_decay.append(opt.param_groups[1]["weight_decay"])
        opt.step()
        sched.step()
    # end + (start - end) / 2 * (1 + cos(pi * step / total)), by hand at steps 0, 5 and 9
    assert wds[0] == pytest.approx(0.04)
    assert wds[5] == pytest.approx(0.4 - 0.36 * 0.5)
    assert wds[9] == pytest.approx(0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a < b for a, b in zip(wds, wds[1:]))
    assert no_decay == [0.0] * total
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.4)  # from total_steps on: the end value
    # without an end value the weight decay stays constant
    opt2 = build_optimizer("adamw", param_groups(model, 0.04), lr=1e-3, weight_decay=0.04)
    sched2 = build_scheduler(opt2, total, 2, 0.04, None)
    for _ in range(5):
        opt2.step()
        sched2.step()
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.04, 0.0]


@pytest.mark.parametrize("spec, size, options", [("vit_tiny", 16, {"patch_size": 8, "depth": 3}),
                                                 ("timm:vit_small_patch14_reg4_dinov2", 28,
                                                  {"patch_size": 7, "depth": 2})])
def test_layer_multipliers_follow_dinov2_convention_on_the_student_only(spec, size, options):
    method = build_method("dinov2", build_backbone(spec, size, **options), {"out_dim": 64, "hidden_dim": 32,
                                                                              "bottleneck_dim": 16})
    depth, decay = options["depth"], 0.8
    teacher = [p for m in method.teacher_modules() for p in m.parameters()]
    groups = param_groups(method, 0.04, exclude=teacher, layer_decay=decay, patch_embed_lr_mult=0.2)
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    assert not set(mult) & {id(p) for p in teacher}  # EMA teachers: not optimized, no multiplier
    names = dict(method.named_parameters())
    assert any(".reg_token" in n for n in names) == spec.startswith("timm:")
    for name, p in names.items():
        if id(p) not in mult:
            continue
        if name.startswith("backbone."):
            expected = decay ** (depth + 1 - dinov2_layer(name, depth)) * (0.2 if "patch_embed" in name else 1.0)
        elif name == "mask_token":  # DINOv2 keeps it in the backbone, with the embeddings
            expected = decay ** (depth + 1)
        else:  # heads
            expected = 1.0
        assert mult[id(p)] == pytest.approx(expected), name
    assert mult[id(names["backbone.vit.blocks.0.attn.qkv.weight"])] == pytest.approx(decay ** depth)
    assert groups[0]["lr_mult"] == 1.0  # the engine logs group 0's lr: the schedule's own
    # the multipliers reach the optimizer's groups and the schedule keeps them
    opt = build_optimizer("adamw", groups, lr=1e-3, weight_decay=0.04)
    sched = build_scheduler(opt, 10, 0, 0.04, 0.4)
    opt.step()
    sched.step()
    factor = 0.5 * (1 + math.cos(math.pi * 0.1))
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_mult"] * factor)


def test_one_sgd_step_moves_deep_blocks_more_than_shallow_ones_by_the_decay():
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 16, patch_size=8, depth=3)
    groups = param_groups(bb, 0.0, layer_decay=0.5, patch_embed_lr_mult=0.2, backbone=bb)
    opt = build_optimizer("sgd", groups, lr=0.1, weight_decay=0.0, momentum=0.0)
    bb(torch.randn(4, 3, 16, 16)).pow(2).sum().backward()
    vit = bb.vit
    tracked = {"deep": vit.blocks[2].mlp.fc1.weight, "shallow": vit.blocks[0].mlp.fc1.weight,
               "patch": vit.patch_embed.proj.weight, "norm": vit.norm.weight}
    before = {k: p.detach().clone() for k, p in tracked.items()}
    grads = {k: p.grad.clone() for k, p in tracked.items()}
    opt.step()
    # plain SGD by hand: p - lr * mult * grad, mult = 0.5 ** (depth + 1 - layer) (x 0.2 for the patch embedding)
    for key, layer, extra in (("deep", 3, 1.0), ("shallow", 1, 1.0), ("patch", 0, 0.2), ("norm", 4, 1.0)):
        want = before[key] - 0.1 * 0.5 ** (4 - layer) * extra * grads[key]
        torch.testing.assert_close(tracked[key].detach(), want, msg=key)
    step = {k: (tracked[k].detach() - before[k]).norm() / grads[k].norm() for k in ("deep", "shallow")}
    assert (step["shallow"] / step["deep"]).item() == pytest.approx(0.5 ** 2, rel=1e-4)


def vit_run(data: str, out, **train) -> PretrainConfig:
    t = dict(epochs=2, batch_size=32, log_every=1, knn_every=0, progress="off", device="cpu", deterministic=True,
             weight_decay=0.04, weight_decay_end=0.4, layer_decay=0.7, patch_embed_lr_mult=0.5)
    t.update(train)
    return PretrainConfig(method="byol", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16,
                                                         "pred_hidden_dim": 32},
                          data=DataConfig(name=data, options={"n": 64}),
                          model=ModelConfig(backbone="vit_tiny", options={"patch_size": 8, "depth": 2}),
                          train=TrainConfig(**t), out=str(out))


@pytest.mark.slow  # three short runs
def test_resume_restores_the_same_weight_decay_and_lr_schedule(blobs_data, tmp_path):
    straight = pretrain(vit_run(blobs_data, tmp_path / "a"))  # 2 steps an epoch, 4 steps
    first = pretrain(vit_run(blobs_data, tmp_path / "b", max_steps=1))
    half = first.load_checkpoint()["optimizer"]["param_groups"]
    wd1 = 0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi / 4))  # the step about to be taken: 1 of 4
    assert [g["weight_decay"] for g in half] == pytest.approx([wd1 * g["wd_mult"] for g in half])
    assert sorted({round(g["lr_mult"], 6) for g in half}) == [0.1715, 0.343, 0.49, 0.7, 1.0]  # 0.7 ** (3 - layer)
    resumed = pretrain(vit_run(blobs_data, tmp_path / "b"), resume=first.path)
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
        assert (gb["lr"], gb["weight_decay"]) == pytest.approx((ga["lr"], ga["weight_decay"]))
        assert ga["weight_decay"] == pytest.approx(0.4 * ga["wd_mult"])  # the end of the cosine
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"layer_decay": 0.0}, r"TrainConfig.layer_decay=0.0 is out of range; allowed \(0.0, 1.0\]"),
    ({"layer_decay": 1.5}, r"TrainConfig.layer_decay=1.5 is out of range"),
    ({"weight_decay_end": -0.1}, r"TrainConfig.weight_decay_end=-0.1 is out of range; allowed \[0.0, inf\]"),
    ({"patch_embed_lr_mult": 0}, r"TrainConfig.patch_embed_lr_mult=0 is out of range; allowed \(0.0, 1.0\]"),
    ({"layer_decay": "0.9"}, r"TrainConfig.layer_decay='0.9' must be a number"),
])
def test_bad_schedule_fields_get_named_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**kwargs)


def test_layer_decay_needs_a_vit():
    with pytest.raises(ConfigError, match=r"Recipe.layer_decay=2 is out of range"):
        Recipe(layer_decay=2)
    with pytest.raises(ConfigError, match=r"train.layer_decay=0.9 needs a ViT backbone.*'small_cnn' is a CNN"):
        PretrainConfig(method="byol", model=ModelConfig(backbone="small_cnn"), train=TrainConfig(layer_decay=0.9))
    PretrainConfig(method="byol", model=ModelConfig(backbone="small_cnn"), train=TrainConfig(layer_decay=1.0))  # off
    cnn = build_method("byol", build_backbone("small_cnn", 16, width=8), {"proj_hidden_dim": 16,
                                                                        "proj_output_dim": 8, "pred_hidden_dim": 16})
    with pytest.raises(ConfigError, match=r"TrainConfig.layer_decay / patch_embed_lr_mult need a ViT backbone"):
        param_groups(cnn, 0.04, layer_decay=0.9)
