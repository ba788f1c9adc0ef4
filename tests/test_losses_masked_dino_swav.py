"""DINO, SwAV, MAE and I-JEPA: losses against lightly or hand-computed values, schedules, masks, one-step smokes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.config import ConfigError
from workbench.methods.base import Batch, Progress, Recipe, build_method, make_method_config
from workbench.methods.dino import batch_center, dino_loss, teacher_temperature
from workbench.methods.ijepa import Predictor, ijepa_loss
from workbench.methods.mae import mae_loss, patchify, sincos_pos_embed_2d, unpatchify
from workbench.methods.swav import sinkhorn, swav_loss
from workbench.models.backbones import build_backbone


def tiny_vit():
    return build_backbone("vit_tiny", 16, 3, patch_size=4, depth=2)


def tiny_cnn():
    return build_backbone("small_cnn", 16, 3, width=8)


def views(n_global=2, n_local=0, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_global)]
            + [torch.randn(b, 3, 8, 8, generator=g) for _ in range(n_local)])


def progress(step=0, steps_per_epoch=4, total_steps=40, seed=0):
    return Progress(step=step, total_steps=total_steps, epoch=step // steps_per_epoch,
                    total_epochs=total_steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                    generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- DINO

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


# ---------------------------------------------------------------- SwAV

def reference_sinkhorn(scores: np.ndarray, iterations: int, eps: float) -> np.ndarray:
    """The paper's Algorithm (Sinkhorn-Knopp), one row and one column at a time, float64."""
    q = np.exp(scores / eps).T  # [K, N]
    k, n = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(n):
            q[:, c] = q[:, c] / q[:, c].sum() / n
    return (q * n).T


def test_sinkhorn_matches_reference_loop_and_marginals():
    g = torch.Generator().manual_seed(2)
    scores = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1).T  # cosine scores [N=12, K=5]
    for iters in (3, 50):
        q = sinkhorn(scores, iterations=iters, epsilon=0.05)
        ref = reference_sinkhorn(scores.double().numpy(), iters, 0.05)
        np.testing.assert_allclose(q.double().numpy(), ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(q.sum(1).numpy(), np.ones(12), rtol=1e-5)  # each sample: a distribution
    # many iterations -> equipartition: every prototype receives N/K samples
    np.testing.assert_allclose(q.sum(0).numpy(), np.full(5, 12 / 5), rtol=1e-3)


def test_swav_loss_matches_lightly_multicrop():
    from lightly.loss import SwaVLoss

    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(4, 8, 6, generator=g), dim=-1)  # 2 global + 2 local, B=8
    protos = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=-1)
    scores = z @ protos.T  # [4, 8, 10]
    expected = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(list(scores[:2]),
                                                                                      list(scores[2:]))
    codes = torch.stack([sinkhorn(scores[i], 3, 0.05) for i in range(2)])
    torch.testing.assert_close(swav_loss(scores, codes, 0.1), expected.reshape(()), rtol=1e-5, atol=1e-6)


def test_swav_prototypes_normalised_frozen_then_trained_and_queue_fills():
    m = build_method("swav", tiny_cnn(), {"hidden_dim": 32, "out_dim": 16, "num_prototypes": 20,
                                          "queue_length": 12, "queue_start_epoch": 0})
    m.training_step(Batch(views(b=6), 2), progress(step=0)).loss.backward()
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(20))
    assert torch.count_nonzero(m.prototypes.weight.grad) == 0  # frozen during the first epoch
    assert m.backbone.stages[0][0].weight.grad.abs().sum() > 0
    assert m.queue[:, 6:].abs().sum() == 0 and m.queue[:, :6].abs().sum() > 0  # half full
    m.zero_grad()
    out = m.training_step(Batch(views(b=6, seed=1), 2), progress(step=4))
    out.loss.backward()
    assert m.prototypes.weight.grad.abs().sum() > 0
    assert bool((m.queue.norm(dim=-1) > 0.99).all())  # full: newest embeddings first
    out = m.training_step(Batch(views(b=6, seed=2), 2), progress(step=5))  # now the queue joins Sinkhorn
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------- MAE

def test_patchify_order_and_round_trip():
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    x = patchify(imgs, 4)
    assert x.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block, pixels in (row, col, channel) order
    torch.testing.assert_close(x[0, 1], imgs[0, :, :4, 4:].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(x, 4, 3), imgs)
    torch.testing.assert_close(unpatchify(patchify(imgs[:, :, :8, :4], 4), 4, 3, grid=(2, 1)), imgs[:, :, :8, :4])


def test_sincos_positions_hand_values():
    pos = sincos_pos_embed_2d(8, (2, 3))
    row, col = 1, 2
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    np.testing.assert_allclose(pos[row * 3 + col].numpy(), expected, rtol=1e-6)
    assert sincos_pos_embed_2d(8, (2, 3), cls_token=True).shape == (7, 8)


def test_mae_loss_counts_masked_patches_only():
    g = torch.Generator().manual_seed(4)
    target = torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.float32)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = torch.where(mask.bool().unsqueeze(-1), normed, torch.randn(2, 6, 12, generator=g) * 50)
    assert mae_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(0.0, abs=1e-8)
    # un-normalised targets, prediction off by 1 on masked patches, wildly off on visible ones -> exactly 1
    pred = torch.where(mask.bool().unsqueeze(-1), target + 1, target - 100)
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(1.0, rel=1e-6)


def test_mae_needs_a_vit_backbone():
    with pytest.raises(ConfigError, match=r"'mae' needs a ViT backbone.*vit_tiny"):
        build_method("mae", tiny_cnn())
    with pytest.raises(ConfigError, match="ijepa"):
        build_method("ijepa", tiny_cnn())


def test_mae_reconstruct_outputs():
    m = build_method("mae", tiny_vit(), {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2})
    imgs = views(1, b=3)[0]
    out = m.reconstruct(imgs, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    for key in ("pred_images", "pasted_images", "masked_images"):
        assert out[key].shape == imgs.shape
    assert out["mask"].shape == (3, 16) and (out["mask"].sum(1) == 12).all()
    assert out["mask_images"].shape == (3, 1, 16, 16)
    visible = out["mask_images"].expand_as(imgs) == 0
    torch.testing.assert_close(out["pasted_images"][visible], imgs[visible])
    torch.testing.assert_close(out["pasted_images"][~visible], out["pred_images"][~visible])
    assert (out["masked_images"][~visible] == 0).all() and math.isfinite(out["loss"])


# ---------------------------------------------------------------- I-JEPA

def test_ijepa_predictor_shapes():
    pred = Predictor(embed_dim=192, grid=(4, 4), dim=32, depth=1, heads=2)
    ctx = torch.randn(3, 10, 192)
    context = torch.stack([torch.randperm(16)[:10] for _ in range(3)])
    targets = torch.stack([torch.stack([torch.randperm(16)[:3] for _ in range(4)]) for _ in range(3)])
    assert pred(ctx, context, targets).shape == (3, 4, 3, 192)


def test_ijepa_targets_come_from_the_ema_encoder_without_gradient():
    m = build_method("ijepa", tiny_vit(), {"predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 2})
    imgs = views(1, b=4)[0]
    targets = torch.stack([torch.arange(4) + 4 * i for i in range(2)]).expand(4, -1, -1)  # rows 0 and 1
    h = m.targets(imgs, targets)
    with torch.no_grad():
        full = m.target_encoder.forward_tokens(imgs)[:, 1:]
        full = torch.nn.functional.layer_norm(full, (192,))
    torch.testing.assert_close(h, full[:, :8].reshape(4, 2, 4, 192))
    assert not h.requires_grad
    with torch.no_grad():  # changing the context encoder does not change the targets
        for p in m.backbone.parameters():
            p.add_(0.5)
    torch.testing.assert_close(m.targets(imgs, targets), h)
    out = m.training_step(Batch([imgs], 1), progress())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target_encoder.parameters())
    assert m.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # linear EMA 0.996 -> 1
    before = [p.clone() for p in m.target_encoder.parameters()]
    m.update_teacher(progress(step=20, total_steps=40))
    mom = 0.996 + 0.004 * 0.5
    for t_old, t_new, s in zip(before, m.target_encoder.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(t_new, mom * t_old + (1 - mom) * s)
    assert ijepa_loss(h, h).item() == 0.0


# ---------------------------------------------------------------- one step each, default configs

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


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_losses_stay_float32_under_bf16_autocast(name):
    opts = {"dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
            "swav": {"hidden_dim": 32, "out_dim": 16, "num_prototypes": 20}}[name]
    m = build_method(name, tiny_cnn(), opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(Batch(views(2, 2), 2), progress())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
