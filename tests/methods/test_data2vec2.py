"""data2vec 2.0: target construction and loss by hand, no gradient into the teacher, the EMA schedule, the conv
decoder, and a tiny run whose loss falls (its kNN read-out does not beat random init at that budget; see below)."""
from __future__ import annotations

import math

import pytest
import torch

from tests.methods.helpers import progress, tiny_vit, views
from workbench.config import ConfigError
from workbench.methods.base import Batch, build_method
from workbench.methods.data2vec2 import ConvDecoder, data2vec_loss, data2vec_targets

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
