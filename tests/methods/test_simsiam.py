"""SimSiam's collapsing ablations (paper Sec. 4.1): ``stop_gradient=False`` and ``predictor=False``.

With the stop-gradient on, D(p, z) sends no gradient into the target branch z; with it off, both branches get
gradients. Without the predictor, h is the identity (no predictor parameters).
"""
from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError
from workbench.methods import Batch, Progress, build_method
from workbench.methods.simsiam import negative_cosine_loss
from workbench.models.backbones import build_backbone

HEADS = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8}


def test_loss_stop_gradient_switch():
    g = torch.Generator().manual_seed(0)
    p0, z0 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for sg in (True, False):
        p, z = p0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
        loss = negative_cosine_loss(p, z, stop_gradient=sg)
        loss.backward()
        assert p.grad is not None and p.grad.abs().sum() > 0
        if sg:
            assert z.grad is None  # the target branch is a constant
        else:
            assert z.grad is not None and z.grad.abs().sum() > 0  # gradients flow into both branches
        torch.testing.assert_close(loss, negative_cosine_loss(p0, z0))  # same value either way


def test_method_gradients_reach_both_branches_only_without_stop_gradient():
    for sg in (True, False):
        torch.manual_seed(0)
        method = build_method("simsiam", build_backbone("small_cnn", 16, 3, width=4), {**HEADS, "stop_gradient": sg})
        method.train()
        g = torch.Generator().manual_seed(1)
        views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
        z = [method.projector(method.backbone(v)) for v in views]
        p = [method.predictor(zi) for zi in z]
        # the target-branch term alone: D(p1, z2) differentiated w.r.t. z2
        (grad_z2,) = torch.autograd.grad(negative_cosine_loss(p[0], z[1], sg), [z[1]], allow_unused=True)
        if sg:
            assert grad_z2 is None
        else:
            assert grad_z2 is not None and grad_z2.abs().sum() > 0
        # and through the method's own step: every backbone parameter gets a gradient either way
        out = method.training_step(Batch(views, 2), Progress(step=0, total_steps=10))
        out.loss.backward()
        assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in method.backbone.parameters())


def test_stop_gradient_changes_the_backbone_gradient():
    grads = {}
    for sg in (True, False):
        torch.manual_seed(0)
        method = build_method("simsiam", build_backbone("small_cnn", 16, 3, width=4), {**HEADS, "stop_gradient": sg})
        method.train()
        g = torch.Generator().manual_seed(1)
        views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
        out = method.training_step(Batch(views, 2), Progress(step=0, total_steps=10))
        out.loss.backward()
        grads[sg] = torch.cat([q.grad.flatten() for q in method.backbone.parameters()])
    assert not torch.allclose(grads[True], grads[False])  # the extra target-branch gradient is really there


def test_no_predictor_is_identity():
    method = build_method("simsiam", build_backbone("small_cnn", 16, 3, width=4), {**HEADS, "predictor": False})
    assert isinstance(method.predictor, torch.nn.Identity)
    assert not list(method.predictor.parameters())
    default = build_method("simsiam", build_backbone("small_cnn", 16, 3, width=4), HEADS)
    assert default.config.stop_gradient and default.config.predictor and list(default.predictor.parameters())


def test_ablation_options_are_validated():
    bb = build_backbone("small_cnn", 16, 3, width=4)
    with pytest.raises(ConfigError, match="stop_gradient"):
        build_method("simsiam", bb, {"stop_gradient": "maybe"})
    with pytest.raises(ConfigError, match="predictor"):
        build_method("simsiam", bb, {"predictor": 3})
