"""DINOv2 / DINOv3 pieces: the iBOT patch loss, KoLeo and the Gram loss against hand values and independent
references, Sinkhorn-Knopp marginals, iBOT block masks, the mask token, the Gram teacher's refresh schedule and its
larger crops (bicubic resize to the student's grid against hand weights, scale 1 = the student's crops, an engine
run), the patch centre, register-token ViTs, config errors and the object/background patch-similarity contrast."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.methods.helpers import progress, tiny_vit, views
from workbench.augment.masks import ibot_masks
from workbench.config import ConfigError
from workbench.inspect.patches import object_similarity_contrast
from workbench.methods.base import Batch, build_method, make_method_config
from workbench.methods.dinov2 import gram_loss, ibot_loss, koleo_loss, resize_patch_grid
from workbench.methods.swav import sinkhorn
from workbench.models.backbones import build_backbone
from workbench.train import DataConfig, ModelConfig, PretrainConfig
from workbench.train.config import augment_config

SMALL = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


def test_ibot_loss_hand_value_and_dense_reference():
    # 2 images x 3 patches, K = 2; image 0 has patches 0 and 2 masked, image 1 none (it counts as 0)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    student = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # log_softmax: (1/2, 1/2) and (1/4, 3/4)
    teacher = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    ce0 = -math.log(0.5)
    ce2 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    expected = ((ce0 + ce2) / 2 + 0.0) / 2
    assert ibot_loss(student, teacher, mask, student_temp=1.0).item() == pytest.approx(expected, rel=1e-6)
    # against the dense form (every patch through the loss, masked mean per image, mean over images)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 6, generator=g) < 0.5
    mask[3] = False
    s_dense, t_logits = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    t_dense = F.softmax(t_logits / 0.05, -1)
    ce = -(t_dense * F.log_softmax(s_dense / 0.1, -1)).sum(-1)  # [4, 6]
    dense = ((ce * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    torch.testing.assert_close(ibot_loss(s_dense[mask], t_dense[mask], mask, 0.1), dense)


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g)
    q = sinkhorn(logits, iterations=3, epsilon=0.5)
    torch.testing.assert_close(q.sum(1), torch.ones(12))  # every sample (patch / image) is an assignment
    q = sinkhorn(logits, iterations=300, epsilon=0.5)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0), atol=1e-4, rtol=0)  # equipartition: N / K each
    assert torch.allclose(sinkhorn(torch.zeros(6, 3), 3, 0.1), torch.full((6, 3), 1 / 3))


def test_koleo_on_hand_placed_points():
    def at(*degrees):
        return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])

    # square: every nearest neighbour at distance sqrt(2)
    assert koleo_loss(at(0, 90, 180, 270)).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    # 0 and 60 degrees are each other's neighbour (distance 1); 180's is 60 (distance sqrt 3); scale is ignored
    assert koleo_loss(5 * at(0, 60, 180)).item() == pytest.approx(-math.log(math.sqrt(3)) / 3, rel=1e-5)


def test_gram_loss_hand_value_and_frobenius_reference():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # normalised: orthogonal -> G = I
    t = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])  # parallel -> G = all ones
    assert gram_loss(s, t).item() == pytest.approx(0.5)  # two off-diagonal entries of 1 over 4
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 4, generator=g, requires_grad=True), torch.randn(3, 5, 4, generator=g)
    ref = sum(torch.linalg.matrix_norm(F.normalize(a, dim=1) @ F.normalize(a, dim=1).T
                                       - F.normalize(b, dim=1) @ F.normalize(b, dim=1).T) ** 2 for a, b in zip(s, t))
    torch.testing.assert_close(gram_loss(s, t), ref / (3 * 5 * 5))
    gram_loss(s, t).backward()
    assert s.grad.abs().sum() > 0


def test_ibot_masks_follow_the_recipe():
    m = ibot_masks(40, (8, 8), torch.Generator().manual_seed(0))
    counts = m.sum(1)
    assert (counts > 0).sum() == 20  # half the images
    assert counts.max() <= 32 and counts[counts > 0].min() >= 4  # at most 50 % of 64; blocks of >= 4 patches
    target = torch.tensor(sorted(counts.tolist())[20:], dtype=torch.float)  # stratified ratios 0.1 .. 0.5
    assert 6 <= target.median() <= 26
    assert not ibot_masks(8, (8, 8), torch.Generator().manual_seed(0), mask_probability=0.0).any()


def test_student_sees_mask_tokens_teacher_the_full_view():
    bb = tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :4] = True  # the top row of image 0
    token = torch.randn(bb.feature_dim)
    x2 = x.clone()
    x2[0, :, :4] = torch.randn(3, 4, 16)  # new pixels under the mask only
    with torch.no_grad():
        a = bb.encode(bb.patchify_embed(x, mask, token))
        b = bb.encode(bb.patchify_embed(x2, mask, token))
        full = bb.encode(bb.patchify_embed(x2))
    torch.testing.assert_close(a, b)  # masked pixels never reach the student
    assert (full[0] - b[0]).abs().max() > 1e-3


def test_dinov2_step_trains_mask_token_and_logs_each_loss():
    m = build_method("dinov2", tiny_vit(), SMALL)
    out = m.training_step(Batch(views(2, 2), 2), progress(step=4))
    assert set(out.logs) >= {"loss_dino", "loss_koleo", "loss_ibot"} and "loss_gram" not in out.logs
    total = out.logs["loss_dino"] + 0.1 * out.logs["loss_koleo"] + out.logs["loss_ibot"]
    torch.testing.assert_close(out.loss.detach(), total)
    out.loss.backward()
    assert m.mask_token.grad.abs().sum() > 0 and m.head.last_layer.weight.grad.abs().sum() > 0
    assert out.features.shape == (6, m.backbone.feature_dim)


def test_patch_centre_moves_to_the_masked_teacher_outputs():
    m = build_method("dinov2", tiny_vit(), {**SMALL, "centering": "center", "mask_probability": 1.0})
    v = views(2, 0)
    pr = progress(step=4, seed=3)
    mask = ibot_masks(12, m.backbone.grid, torch.Generator().manual_seed(3), mask_probability=1.0)
    with torch.no_grad():
        t = m.teacher_backbone.encode(m.teacher_backbone.patchify_embed(torch.cat(v)))
        patch_mean = m.teacher_head(t[:, 1:][mask]).mean(0, keepdim=True)
        cls_mean = m.teacher_head(t[:, 0]).mean(0, keepdim=True)
    m.training_step(Batch(v, 2), pr)
    torch.testing.assert_close(m.patch_center, 0.1 * patch_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.center, 0.1 * cls_mean, rtol=1e-4, atol=1e-6)


def test_gram_teacher_refreshes_from_the_ema_teacher_on_schedule():
    m = build_method("dinov2", tiny_vit(), {**SMALL, "gram_weight": 2.0, "gram_start_epochs": 1,
                                            "gram_refresh_epochs": 0.5, "gram_crop_scale": 1.0})  # start 4, every 2
    assert m.gram_backbone in m.teacher_modules()
    assert "loss_gram" not in m.training_step(Batch(views(), 2), progress(step=3)).logs
    refreshed = []
    for step in range(8):
        with torch.no_grad():
            for p in m.teacher_backbone.parameters():
                p.add_(0.01)
        m.update_teacher(progress(step=step, total_steps=400))
        refreshed.append(all(torch.equal(a, b) for a, b in zip(m.gram_backbone.parameters(),
                                                               m.teacher_backbone.parameters())))
    assert refreshed == [False, False, False, True, False, True, False, True]  # after steps 4, 6, 8 done
    out = m.training_step(Batch(views(), 2), progress(step=4))
    assert out.logs["loss_gram"] > 0


def _cubic_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in]: torch's bicubic resampling (Keys kernel a = -0.75, half-pixel centres, edge samples repeated)
    written out sample by sample."""
    a = -0.75

    def k(t: float) -> float:
        t = abs(t)
        return ((a + 2) * t - (a + 3)) * t * t + 1 if t <= 1 else (((t - 5) * t + 8) * t - 4) * a if t < 2 else 0.0

    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        for j in range(math.floor(x) - 1, math.floor(x) + 3):
            w[i, min(max(j, 0), n_in - 1)] += k(x - j)
    return w


def test_resize_patch_grid_is_bicubic_on_the_row_major_grid():
    feats = torch.randn(2, 8 * 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = resize_patch_grid(feats, (8, 6), (4, 3))
    assert out.shape == (2, 12, 5)
    ref = torch.einsum("iy,jx,nyxd->nijd", _cubic_weights(8, 4), _cubic_weights(6, 3), feats.reshape(2, 8, 6, 5))
    torch.testing.assert_close(out, ref.reshape(2, 12, 5).float(), rtol=1e-5, atol=1e-6)
    assert resize_patch_grid(feats, (8, 6), (8, 6)) is feats


def _gram_dinov2(scale: float):
    torch.manual_seed(0)
    m = build_method("dinov2", tiny_vit(), {**SMALL, "gram_weight": 2.0, "gram_start_epochs": 0,
                                            "gram_crop_scale": scale, "mask_probability": 1.0})
    with torch.no_grad():  # an anchor unlike the student
        for p in m.gram_backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _student_patches(m, glob: torch.Tensor, seed: int) -> torch.Tensor:
    mask = ibot_masks(glob.shape[0], m.backbone.grid, torch.Generator().manual_seed(seed), mask_probability=1.0)
    with torch.no_grad():
        return m.backbone.encode(m.backbone.patchify_embed(glob, mask, m.mask_token))[:, 1:]


def test_gram_crop_scale_1_anchors_on_the_student_global_crops():
    m, v = _gram_dinov2(1.0), views(2, 2)
    out = m.training_step(Batch(v, 2), progress(step=4, seed=3))
    glob = torch.cat(v[:2])
    with torch.no_grad():
        anchor = m.gram_backbone.encode(m.gram_backbone.patchify_embed(glob))[:, 1:]
    assert torch.equal(out.logs["loss_gram"], gram_loss(_student_patches(m, glob, 3), anchor))  # the previous loss
    total = out.logs["loss_dino"] + 0.1 * out.logs["loss_koleo"] + out.logs["loss_ibot"] + 2 * out.logs["loss_gram"]
    torch.testing.assert_close(out.loss.detach(), total)


def test_gram_teacher_reads_the_larger_crops_resized_to_the_student_grid():
    m, v = _gram_dinov2(2.0), views(2, 2)
    g = torch.Generator().manual_seed(1)
    big = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]  # the Gram views close the batch
    out = m.training_step(Batch(v + big, 2), progress(step=4, seed=3))
    gb = m.gram_backbone
    with torch.no_grad():
        teacher = gb.encode(gb.embed_any_size(torch.cat(big)))[:, 1:]
    assert teacher.shape == (12, 64, gb.feature_dim)  # an 8 x 8 grid of 4 px patches
    anchor = resize_patch_grid(teacher, (8, 8), m.backbone.grid)
    assert anchor.shape == (12, 16, gb.feature_dim)  # the student's 4 x 4 grid
    student = _student_patches(m, torch.cat(v[:2]), 3)
    torch.testing.assert_close(out.logs["loss_gram"], gram_loss(student, anchor))
    with torch.no_grad():
        own = gram_loss(student, gb.encode(gb.patchify_embed(torch.cat(v[:2])))[:, 1:])
    assert (out.logs["loss_gram"] - own).abs() > 1e-3  # not the student crops' anchor
    # the Gram views are not local crops: the other losses are those of the batch without them
    plain = _gram_dinov2(1.0).training_step(Batch(v, 2), progress(step=4, seed=3))
    for k in ("loss_dino", "loss_koleo", "loss_ibot"):
        torch.testing.assert_close(out.logs[k], plain.logs[k])


def test_gram_views_missing_or_unused_are_config_errors():
    with pytest.raises(ConfigError, match="gram_scale"):
        _gram_dinov2(2.0).training_step(Batch(views(2, 2), 2), progress(step=4))
    big = [torch.randn(6, 3, 32, 32) for _ in range(2)]
    with pytest.raises(ConfigError, match="gram_scale"):
        build_method("dinov2", tiny_vit(), SMALL).training_step(Batch(views(2, 2) + big, 2), progress(step=4))
    with pytest.raises(ConfigError, match="gram_crop_scale"):
        make_method_config("dinov2", {"gram_crop_scale": 0.5})


def test_gram_views_are_requested_only_when_the_gram_teacher_reads_them():
    def scale(options, augment=None):
        cfg = PretrainConfig(method="dinov2", method_options=options, data=DataConfig(name="shapes", image_size=32),
                             model=ModelConfig(backbone="vit_tiny", options={"depth": 1, "patch_size": 8}),
                             augment=augment or {}, out="unused")
        return augment_config(cfg, 32).gram_scale

    assert scale({"gram_weight": 2.0}) == 2.0  # DINOv3's default: 2x crops
    assert scale({"gram_weight": 2.0, "gram_crop_scale": 1.5}) == 1.5
    assert scale({"gram_weight": 2.0, "gram_crop_scale": 1.0}) is None  # the student's own crops
    assert scale({}) is None  # DINOv2: no Gram loss, no extra views
    assert scale({"gram_weight": 2.0}, {"gram_scale": 3.0}) == 3.0  # a run's own augment setting wins


def test_dinov2_with_gram_crops_trains_through_the_engine(tmp_path):
    """A few engine steps with Gram anchoring on at gram_crop_scale 2: the method's options alone make the run
    render the Gram views (augment_defaults -> gram_scale), no augment setting needed."""
    import workbench.data as data_pkg
    from workbench.data import base
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cache = {split: data_pkg.load("shapes", split=split, size=16, n=n, seed=0) for split, n in (("train", 64),
                                                                                             ("test", 32))}
    base._REGISTRY["shapes_gram"] = lambda split="train", **_: cache[split]
    try:
        cfg = PretrainConfig(method="dinov2", method_options={**SMALL, "gram_weight": 2.0, "gram_start_epochs": 0.5,
                                                              "gram_refresh_epochs": 0.5, "gram_crop_scale": 2.0},
                             data=DataConfig(name="shapes_gram"),
                             model=ModelConfig(backbone="vit_tiny", options={"depth": 2, "patch_size": 4}),
                             augment={"local_views": 2},
                             train=TrainConfig(epochs=2, batch_size=16, log_every=1, knn_every=0, progress="off",
                                               device="cpu", optimizer="adamw", lr=4e-3, warmup_epochs=0.2),
                             out=str(tmp_path))
        assert augment_config(cfg, 16).gram_scale == 2.0
        run = pretrain(cfg)
    finally:
        base._REGISTRY.pop("shapes_gram", None)
    assert run.status["status"] == "completed", run.status
    steps = [r for r in run.metrics() if r["kind"] == "step"]
    assert len(steps) == 8 and all(math.isfinite(r["loss"]) for r in steps)
    gram = [r.get("loss_gram") for r in steps]
    assert gram[:2] == [None, None] and all(x is not None and math.isfinite(x) and x > 0 for x in gram[2:])


def test_dinov2_runs_on_a_vit_with_register_tokens():
    torch.manual_seed(0)
    bb = build_backbone("timm:vit_small_patch14_reg4_dinov2", 28, depth=1, patch_size=7)
    assert bb.num_prefix_tokens == 5
    m = build_method("dinov2", bb, {**SMALL, "mask_probability": 1.0})
    g = torch.Generator().manual_seed(0)
    out = m.training_step(Batch([torch.randn(4, 3, 28, 28, generator=g) for _ in range(2)], 2), progress())
    out.loss.backward()
    assert torch.isfinite(out.loss) and bb.vit.reg_token.grad.abs().sum() > 0  # registers take part


def test_dinov2_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="centering"):
        make_method_config("dinov2", {"centering": "mean"})
    with pytest.raises(ConfigError, match="mask_ratio"):
        make_method_config("dinov2", {"mask_ratio": (0.5, 0.1)})
    with pytest.raises(ConfigError, match="needs a ViT"):
        build_method("dinov2", build_backbone("small_cnn", 16, 3, width=8), SMALL)


def test_object_similarity_contrast():
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.5, 0.5], [0.1, 3.0]]])
    frac = torch.tensor([[1.0, 0.8, 0.0, 0.3, 0.0]])  # patch 3 is an edge: left out
    z = F.normalize(tokens[0], dim=1)
    within = z[0] @ z[1]
    across = (z[0] @ z[2] + z[0] @ z[4] + z[1] @ z[2] + z[1] @ z[4]) / 4
    torch.testing.assert_close(object_similarity_contrast(tokens, frac), (within - across).reshape(1))


# The short run (tests/methods/tiny_runs.py: 512 shapes images at 16 px, vit_tiny with 2 blocks and 4 px patches,
# batch 32, 2 epochs, AdamW 4e-3 per 256). Measured on seeds 0/1/2 (2-core CPU, 1 thread): total loss, mean of the
# first three logged steps -> last three, 10.808 -> 10.454 / 10.816 -> 10.465 / 10.855 -> 10.456; kNN 0.133 / 0.109 /
# 0.137 against 0.184 at random init, DINO on the same run 0.141 / 0.148 / 0.152. At this budget neither DINO nor
# DINOv2 beats a random ViT on kNN (nor on 2000 images at 32 px with 8 px patches for 2 epochs, random init 0.162:
# DINOv2 +0.020 / -0.004 / +0.012, DINO +0.010 / +0.026 / +0.026), so the test asserts what the run does learn: the
# loss falls by at least LOSS_DROP, under half the smallest drop measured (0.351).
TINY_OPTIONS = {"out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128, "warmup_teacher_temp_epochs": 1}
LOSS_DROP = 0.15


@pytest.mark.slow
def test_dinov2_tiny_run_lowers_its_loss(tmp_path):
    from tests.methods.tiny_runs import tiny_knn_gain

    r = tiny_knn_gain("dinov2", TINY_OPTIONS, str(tmp_path))
    losses = r["losses"]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"\ndinov2 tiny run: loss {first:.3f} -> {last:.3f}; kNN {r['knn_pretrained']:.3f} vs random init "
          f"{r['knn_random_init']:.3f}")
    assert all(math.isfinite(x) for x in losses)
    assert last < first - LOSS_DROP, losses
