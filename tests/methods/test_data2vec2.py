"""data2vec 2.0: target construction and loss by hand, no gradient into the teacher, the EMA schedule, the conv
decoder, the inverse block masks (against a per-sample transcription of fairseq's ``compute_block_mask_2d``), the
teacher's construction, and a tiny run whose loss falls (its kNN read-out does not beat random init at that budget;
see below)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.methods.helpers import progress, tiny_vit, views
from workbench.augment import inverse_block_mask, random_patch_mask
from workbench.config import ConfigError
from workbench.methods.base import Batch, build_method
from workbench.methods.data2vec2 import ConvDecoder, data2vec_loss, data2vec_targets
from workbench.models.backbones import build_backbone

SMALL = {"top_k_layers": 2, "num_masks": 3, "decoder_layers": 2}


def test_targets_instance_norm_over_patches_then_top_k_average_then_layer_norm():
    # B=1, L=2 patches, D=2 channels; the first layer is outside the top 2 and must not count
    garbage = torch.tensor([[[100.0, -7.0], [3.0, 50.0]]])
    l2 = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # channel 0: mean 2, var 1 -> -+1; channel 1 constant -> 0
    l3 = torch.tensor([[[0.0, 5.0], [0.0, 1.0]]])  # channel 1: mean 3, var 4 -> +-1
    a = 1 / math.sqrt(1 + 1e-5)
    b = 2 / math.sqrt(4 + 1e-5)
    avg = [[-a / 2, b / 2], [a / 2, -b / 2]]  # mean of the two instance-normed layers
    expected = []
    for row in avg:  # layer norm over the 2 channels
        m = sum(row) / 2
        v = sum((x - m) ** 2 for x in row) / 2
        expected.append([(x - m) / math.sqrt(v + 1e-5) for x in row])
    got = data2vec_targets([garbage, l2, l3], top_k=2)
    torch.testing.assert_close(got, torch.tensor([expected]))
    assert not torch.allclose(data2vec_targets([garbage, l2, l3], top_k=3), got)


def test_loss_hand_value_masked_patches_and_summed_cls_term():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pred = torch.where(mask.bool().unsqueeze(-1), target + 0.5, target - 100)  # visible patches do not count
    # per masked patch: 4 channels x 0.25 / sqrt(4) = 0.5
    assert data2vec_loss(pred, target, mask).item() == pytest.approx(0.5, rel=1e-6)
    cls = target.mean(1) + 1.0  # per sample: 4 x 1 / 2 = 2, summed over 2 samples = 4, x 0.01
    assert data2vec_loss(pred, target, mask, cls, 0.01).item() == pytest.approx(0.54, rel=1e-6)


def test_no_gradient_reaches_the_teacher_and_ema_anneals():
    m = build_method("data2vec2", tiny_vit(), {**SMALL, "momentum": 0.99, "final_momentum": 0.999,
                                               "anneal_fraction": 0.5})
    imgs = views(1, b=4)[0]
    y = m.targets(imgs)
    assert y.shape == (4, 16, 192) and not y.requires_grad
    with torch.no_grad():  # the student changing does not change the targets
        for p in m.backbone.parameters():
            p.add_(0.3)
    torch.testing.assert_close(m.targets(imgs), y)
    out = m.training_step(Batch([imgs], 1), progress())
    assert out.features.shape == (4, 192)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert m.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert m.decoder.convs[0].weight.grad.abs().sum() > 0
    for step, mom in ((10, 0.99 + 0.009 * 0.5), (30, 0.999)):  # fraction 0.25 -> half-way; past 0.5 -> final
        before = [p.clone() for p in m.teacher.parameters()]
        m.update_teacher(progress(step=step, total_steps=40))
        for t_old, t_new, s in zip(before, m.teacher.parameters(), m.backbone.parameters()):
            torch.testing.assert_close(t_new, mom * t_old + (1 - mom) * s)


def test_conv_decoder_shapes_residual_and_config_errors():
    dec = ConvDecoder(embed_dim=32, grid=(4, 4), dim=32, layers=2, kernel=3, groups=4)
    assert dec(torch.randn(5, 16, 32)).shape == (5, 16, 32)
    with torch.no_grad():  # zero convs: the residual path carries the input through, GELU(LN(0)) = 0
        for conv in dec.convs:
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(dec(x), dec.proj(x))
    assert ConvDecoder(32, (4, 4), 16, 1, 2, 4)(torch.randn(1, 16, 32)).shape == (1, 16, 32)  # even kernel
    with pytest.raises(ConfigError, match="top_k_layers=10 exceeds the backbone's 2 blocks"):
        build_method("data2vec2", tiny_vit())
    with pytest.raises(ConfigError, match="decoder_groups=7"):
        build_method("data2vec2", tiny_vit(), {**SMALL, "decoder_groups": 7})
    with pytest.raises(ConfigError, match="targets"):
        build_method("data2vec2", tiny_vit(), {**SMALL, "targets": "pixels"})



def _kept(pm, grid):
    """PatchMask -> bool [B, gh, gw], True = visible, after checking its index fields agree with its mask."""
    b, k = pm.keep.shape
    assert (pm.mask.sum(1) == pm.mask.shape[1] - k).all() and (pm.mask.gather(1, pm.keep) == 0).all()
    assert (pm.keep.diff(dim=1) > 0).all()  # ascending
    masked = torch.stack([row.nonzero().flatten() for row in pm.mask.bool()])
    ids = torch.cat([pm.keep, masked], 1)
    assert torch.equal(ids.gather(1, pm.restore), torch.arange(pm.mask.shape[1]).expand(b, -1))
    return (pm.mask == 0).reshape(b, *grid)


def test_inverse_block_mask_one_block_by_hand():
    # 5x5 grid, keep 1 - 0.62 = 0.38: K = int(9.5) = 9 visible, int(25 * 0.38 / 9) = 1 block. A centre off the border
    # (9 of 25 places) gives exactly a 3x3 square; a border centre gives the square cut at the border (6 or 4 patches)
    # plus random ones up to 9. So every mask holds the cut square around some centre, and ~9/25 are a full square.
    n, g = 2000, torch.Generator().manual_seed(0)
    kept = _kept(inverse_block_mask(n, (5, 5), 0.62, g, mask_length=3, mask_prob_adjust=0.0), (5, 5))
    assert kept.sum((1, 2)).eq(9).all()
    boxes = torch.zeros(25, 5, 5, dtype=torch.bool)
    for c in range(25):
        r, col = divmod(c, 5)
        boxes[c, max(r - 1, 0):r + 2, max(col - 1, 0):col + 2] = True
    holds = (boxes[None] & ~kept[:, None]).flatten(2).any(2).logical_not()  # [n, 25]: box c inside the kept set
    assert holds.any(1).all()
    square = holds[:, [6, 7, 8, 11, 12, 13, 16, 17, 18]].any(1).float().mean().item()
    assert square == pytest.approx(9 / 25, abs=0.04)
    with pytest.raises(ValueError, match="keeps no patch"):
        inverse_block_mask(2, (2, 2), 0.9, g)


def test_inverse_block_mask_counts_determinism_and_ratio_rounding():
    kw = dict(mask_length=3, mask_prob_adjust=0.07)
    a = inverse_block_mask(64, (14, 14), 0.8, torch.Generator().manual_seed(5), **kw)
    b = inverse_block_mask(64, (14, 14), 0.8, torch.Generator().manual_seed(5), **kw)
    c = inverse_block_mask(64, (14, 14), 0.8, torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    kept = _kept(a, (14, 14))
    assert kept.sum((1, 2)).eq(39).all()  # int(196 * 0.2): 157 masked = 0.801, as require_same_masks
    assert len({tuple(k.tolist()) for k in a.keep}) == 64  # independent per sample
    # the same kept count as MAE's masks, on every grid the workbench uses
    for grid, ratio in (((8, 8), 0.8), ((4, 4), 0.8), ((7, 5), 0.75)):
        pm = inverse_block_mask(3, grid, ratio, torch.Generator().manual_seed(0))
        assert pm.keep.shape == random_patch_mask(3, grid[0] * grid[1], ratio, torch.Generator()).keep.shape
        _kept(pm, grid)


def _official_block_masks(n: int, grid: tuple[int, int], mask_ratio: float, length: int, adjust: float,
                          seed: int) -> np.ndarray:
    """fairseq's compute_block_mask_2d (inverse_mask, require_same_masks; no expansion, no dropout), one sample at a
    time: block centres uniform with replacement, each marking the box of offsets i - length // 2 clamped to the
    grid; then surplus marks dropped / missing ones added uniformly. Returns bool [n, gh, gw], True = visible."""
    rng = np.random.default_rng(seed)
    gh, gw = grid
    L, q = gh * gw, 1 - mask_ratio
    target, n_blocks, off = int(L * q), int(L * ((q + adjust) / length ** 2)), length // 2
    out = np.zeros((n, gh, gw), dtype=bool)
    for s in range(n):
        for centre in rng.integers(0, L, n_blocks):
            r, c = divmod(int(centre), gw)
            for i in range(length):
                for j in range(length):
                    out[s, min(max(r + i - off, 0), gh - 1), min(max(c + j - off, 0), gw - 1)] = True
        flat = out[s].reshape(-1)
        on = np.flatnonzero(flat)
        if len(on) > target:
            flat[rng.choice(on, len(on) - target, replace=False)] = False
        elif len(on) < target:
            flat[rng.choice(np.flatnonzero(~flat), target - len(on), replace=False)] = True
    return out


def _mask_stats(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-row and per-column visible rates, and the mean number of visible 4-neighbours of a visible patch."""
    k = kept.astype(float)
    nbrs = np.zeros_like(k)
    nbrs[:, 1:] += k[:, :-1]
    nbrs[:, :-1] += k[:, 1:]
    nbrs[:, :, 1:] += k[:, :, :-1]
    nbrs[:, :, :-1] += k[:, :, 1:]
    return k.mean((0, 2)), k.mean((0, 1)), float((nbrs * k).sum() / k.sum())


@pytest.mark.parametrize("grid, ratio, length, adjust", [((14, 14), 0.8, 3, 0.07),  # the paper's setting
                                                         ((6, 6), 0.6, 2, 0.0)])  # even blocks: offsets -1, 0
def test_inverse_block_mask_statistics_match_the_official_algorithm(grid, ratio, length, adjust):
    # Measured at n = 4000: ours vs reference max row/column rate gap <= 0.013, neighbour count gap <= 0.005 (two
    # reference seeds differ as much); MAE's uniform masks miss by 0.03-0.09 and 0.5-1.8 (no border dip, no clumps;
    # with even blocks the last row is visible less, 0.30 vs 0.41, which only the official offsets produce).
    n = 4000
    pm = inverse_block_mask(n, grid, ratio, torch.Generator().manual_seed(0), mask_length=length,
                            mask_prob_adjust=adjust)
    ours = _mask_stats((pm.mask == 0).reshape(n, *grid).numpy())
    ref = _mask_stats(_official_block_masks(n, grid, ratio, length, adjust, seed=0))
    uniform = _mask_stats((random_patch_mask(n, grid[0] * grid[1], ratio, torch.Generator().manual_seed(0)).mask == 0)
                          .reshape(n, *grid).numpy())
    for got, far in ((ours, False), (uniform, True)):
        gaps = [np.abs(got[0] - ref[0]).max(), np.abs(got[1] - ref[1]).max(), abs(got[2] - ref[2])]
        close = gaps[0] < 0.025 and gaps[1] < 0.025 and gaps[2] < 0.05
        assert close != far, gaps


def test_teacher_is_a_full_unshared_copy_of_the_encoder_run_in_eval_mode():
    # fairseq's image config (ema_encoder_only: false, ema_local_encoder: true): the EMA model is the whole encoder
    # (patch embedding, positions, CLS, blocks, norm) minus the decoder, with no tensor shared with the student
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 16, 3, patch_size=4, depth=2, drop_path_rate=0.5)
    m = build_method("data2vec2", vit, SMALL)
    assert m.teacher_modules() == [m.teacher]
    names = dict(m.teacher.named_parameters())
    assert names.keys() == dict(m.backbone.named_parameters()).keys()
    assert {"vit.patch_embed.proj.weight", "vit.pos_embed", "vit.cls_token", "vit.norm.weight"} <= names.keys()
    student_ptrs = {p.data_ptr() for p in [*m.backbone.parameters(), *m.decoder.parameters()]}
    assert not student_ptrs & {p.data_ptr() for p in m.teacher.parameters()}
    for (name, t), s in zip(names.items(), m.backbone.parameters()):  # starts equal to the student
        assert torch.equal(t, s) and not t.requires_grad, name
    m.train()
    imgs = views(1, b=2)[0]
    y = m.targets(imgs)  # eval: drop-path 0.5 does not act on the teacher, and its train flag is restored
    torch.testing.assert_close(m.targets(imgs), y)
    assert m.teacher.training
    ref = m.backbone(imgs)  # the student under drop-path is random
    assert not torch.allclose(m.backbone(imgs), ref)
    before = {k: v.clone() for k, v in names.items()}
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in names.items())  # nothing aliased
    m.update_teacher(progress(step=0))
    for (k, t), s in zip(names.items(), m.backbone.parameters()):  # every parameter EMA'd, at 0.9998 at step 0
        torch.testing.assert_close(t, 0.9998 * before[k] + 0.0002 * s)


def test_training_uses_inverse_block_masks_by_default_and_random_on_request():
    imgs = views(1, b=2)[0]
    for mask_type in ("inverse_block", "random"):
        m = build_method("data2vec2", tiny_vit(), {**SMALL, "mask_type": mask_type})
        pm = m.masks(6, torch.Generator().manual_seed(0), torch.device("cpu"))
        want = (inverse_block_mask(6, (4, 4), 0.8, torch.Generator().manual_seed(0)) if mask_type == "inverse_block"
                else random_patch_mask(6, 16, 0.8, torch.Generator().manual_seed(0)))
        assert torch.equal(pm.keep, want.keep) and torch.equal(pm.mask, want.mask)
        out = m.training_step(Batch([imgs], 1), progress())
        assert torch.isfinite(out.loss)
    with pytest.raises(ConfigError, match="mask_type"):
        build_method("data2vec2", tiny_vit(), {**SMALL, "mask_type": "blocks"})
    with pytest.raises(ConfigError, match="mask_length"):
        build_method("data2vec2", tiny_vit(), {**SMALL, "mask_length": 0})

# Measured (tests.methods.tiny_runs sizes, 2 epochs, options TINY, seeds 0/1/2): loss 56.4/56.1/60.6 ->
# 33.2/32.4/33.0 (-41 to -46 %); kNN 0.156/0.137/0.207 against 0.184 at random init. At this budget no masked-prediction
# method moves the kNN read-out (256 test images) beyond noise around random init (MAE on the same runs:
# 0.172/0.188/0.176), so the test asserts what does hold: the loss falls by at least D2V_LOSS_DROP of its first value
# while the EMA teacher moves the targets.
TINY = {"top_k_layers": 2, "num_masks": 4, "momentum": 0.99, "final_momentum": 0.999}
D2V_LOSS_DROP = 0.25


@pytest.mark.slow
def test_tiny_run_regression_loss_falls(tmp_path):
    from tests.methods.tiny_runs import tiny_knn_gain

    r = tiny_knn_gain("data2vec2", TINY, str(tmp_path))
    losses = r["losses"]
    first, last = losses[0], sum(losses[-3:]) / 3
    print(f"\ndata2vec2: loss {first:.2f} -> {last:.2f}; kNN {r['knn_pretrained']:.3f} vs random init "
          f"{r['knn_random_init']:.3f}")
    assert last < (1 - D2V_LOSS_DROP) * first, losses
