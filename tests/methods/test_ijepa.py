"""I-JEPA: the predictor's shapes, and targets from the EMA target encoder without gradient."""
from __future__ import annotations

import torch

from tests.methods.helpers import progress, tiny_vit, views
from workbench.methods.base import Batch, build_method
from workbench.methods.ijepa import Predictor, ijepa_loss


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
