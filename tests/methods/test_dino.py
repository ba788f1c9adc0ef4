"""DINO: the loss against lightly and a hand value, the teacher temperature schedule, the centre, the frozen last
layer and the teacher EMA, config errors, and multi-crop features through the ViT."""
from __future__ import annotations

import math

import pytest
import torch

from tests.methods.helpers import progress, tiny_cnn, views
from workbench.config import ConfigError
from workbench.methods.base import Batch, build_method, make_method_config
from workbench.methods.dino import batch_center, dino_loss, mean_entropy, teacher_targets, teacher_temperature
from workbench.models.backbones import build_backbone


def test_dino_loss_matches_lightly_and_center_update():
    from lightly.loss import DINOLoss

    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 5, 16, generator=g)  # 2 global crops
    s = torch.randn(4, 5, 16, generator=g)  # 2 global + 2 local
    center = torch.randn(1, 16, generator=g) * 0.1
    ref = DINOLoss(output_dim=16, teacher_temp=0.06, student_temp=0.1, center_momentum=0.9)
    ref.center.copy_(center.view(1, 1, 16))
    expected = ref(list(t), list(s), teacher_temp=0.06)
    ours = dino_loss(s, t, center, teacher_temp=0.06, student_temp=0.1)
    torch.testing.assert_close(ours, expected.reshape(()), rtol=1e-5, atol=1e-6)
    new_center = 0.9 * center + 0.1 * batch_center(t)
    torch.testing.assert_close(new_center, ref.center.view(1, 16), rtol=1e-5, atol=1e-6)


def test_dino_loss_hand_computed_two_views():
    # B=1, K=2; teacher temp 1 and student temp 1, zero center: loss = mean of the two cross-view CEs
    t = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])  # softmax -> (1/4, 3/4) and (1/2, 1/2)
    s = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # log_softmax -> log(1/2),log(1/2) / log(1/4),log(3/4)
    ce_t0_s1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ce_t1_s0 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.5))
    got = dino_loss(s, t, torch.zeros(1, 2), teacher_temp=1.0, student_temp=1.0)
    assert got.item() == pytest.approx((ce_t0_s1 + ce_t1_s0) / 2, rel=1e-6)


def test_teacher_temperature_schedule_values():
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(100, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(3, 0.04, 0.07, 0) == pytest.approx(0.07)
    # inside the method the schedule runs on fractional epochs = step / steps_per_epoch
    m = build_method("dino", tiny_cnn(), {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                          "warmup_teacher_temp_epochs": 2})
    out = m.training_step(Batch(views(), 2), progress(step=4, steps_per_epoch=4))  # epoch 1.0 of 2
    assert out.logs["teacher_temp"] == pytest.approx(0.055)


def test_dino_step_updates_center_with_teacher_mean():
    m = build_method("dino", tiny_cnn(), {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16})
    v = views(2, 2)
    with torch.no_grad():  # the teacher sees both global crops as one batch (DINO's MultiCropWrapper)
        joint = m.teacher_head(m.teacher_backbone(torch.cat(v[:2]))).reshape(2, 6, -1)
    before = m.center.clone()
    m.training_step(Batch(v, 2), progress())
    torch.testing.assert_close(m.center, 0.9 * before + 0.1 * joint.mean(dim=(0, 1)), rtol=1e-4, atol=1e-6)
    assert m.center.abs().sum() > 0


def test_mean_entropy_of_uniform_one_hot_and_hand_rows():
    k = 16
    assert float(mean_entropy(torch.full((3, k), 1.0 / k))) == pytest.approx(math.log(k), rel=1e-6)
    assert float(mean_entropy(torch.eye(k))) == pytest.approx(0.0, abs=1e-6)
    rows = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    assert float(mean_entropy(rows)) == pytest.approx((math.log(2) + 1.5 * math.log(2)) / 2, rel=1e-6)


def test_dino_step_logs_target_entropy_and_kl_that_add_up_to_the_loss():
    """The logged teacher-target entropy and KL are those of the centred, sharpened targets, and H + KL = loss."""
    m = build_method("dino", tiny_cnn(), {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                          "warmup_teacher_temp_epochs": 0})
    m.center.normal_()
    v = views(2, 2)
    with torch.no_grad():
        teacher = m.teacher_head(m.teacher_backbone(torch.cat(v[:2]))).reshape(2, 6, -1)
        expected = teacher_targets(teacher, m.center, m.config.teacher_temp)
    p = torch.softmax((teacher - m.center) / m.config.teacher_temp, dim=-1)  # before the step moves the centre
    out = m.training_step(Batch(v, 2), progress())
    torch.testing.assert_close(expected, p)
    assert float(out.logs["teacher_entropy"]) == pytest.approx(float(-(p * p.log()).sum(-1).mean()), rel=1e-5)
    assert float(out.logs["kl"]) >= -1e-5
    assert float(out.logs["teacher_entropy"] + out.logs["kl"]) == pytest.approx(float(out.loss), rel=1e-5)


def test_dino_last_layer_frozen_in_first_epoch_and_teacher_ema():
    m = build_method("dino", tiny_cnn(), {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16})
    m.training_step(Batch(views(2, 2), 2), progress(step=1)).loss.backward()
    assert torch.count_nonzero(m.head.last_layer.weight.grad) == 0
    assert m.backbone.stages[0][0].weight.grad.abs().sum() > 0
    m.zero_grad()
    m.training_step(Batch(views(2, 2), 2), progress(step=4)).loss.backward()  # epoch 1
    assert m.head.last_layer.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad for mod in m.teacher_modules() for p in mod.parameters())
    # EMA: teacher <- m t + (1 - m) s with the cosine schedule at this step
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    t0 = [p.clone() for p in m.teacher_backbone.parameters()]
    pr = progress(step=10, total_steps=40)
    mom = 1 - (1 - 0.996) * (math.cos(math.pi * 10 / 40) + 1) / 2
    m.update_teacher(pr)
    for t_old, t_new, s in zip(t0, m.teacher_backbone.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(t_new, mom * t_old + (1 - mom) * s)
    frozen = build_method("dino", tiny_cnn(), {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                               "frozen_teacher": True})
    with torch.no_grad():
        for p in frozen.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in frozen.teacher_backbone.parameters()]
    frozen.update_teacher(pr)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.teacher_backbone.parameters()))


def test_dino_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="student_temp"):
        make_method_config("dino", {"student_temp": 0})
    with pytest.raises(ConfigError, match="options of dino"):
        make_method_config("dino", {"no_such_option": 1})


def test_multicrop_pooled_runs_local_crops_through_the_vit():
    from workbench.methods.dino import multicrop_pooled

    torch.manual_seed(0)
    bb = build_backbone("vit_tiny", 32, 3, patch_size=4, depth=2).eval()
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    feats = multicrop_pooled(bb, views)
    assert feats.shape == (3, 2, bb.feature_dim)
    torch.testing.assert_close(feats[2], bb.encode(bb.embed_any_size(views[2]))[:, 0])
    torch.testing.assert_close(feats[0], bb(views[0]))
