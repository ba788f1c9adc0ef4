"""SimSiam (its loss D(p, z) against lightly: tests/methods/test_byol.py, next to BYOL's).

The collapsing ablations (paper Sec. 4.1): ``stop_gradient=False`` and ``predictor=False``. With the stop-gradient
on, D(p, z) sends no gradient into the target branch z; with it off, both branches get gradients. Without the
predictor, h is the identity (no predictor parameters).

DirectPred (SimSiam option): the predictor set from the eigenbasis of the projections' correlation matrix.
"""
from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError
from workbench.methods import Batch, Progress, build_method
from workbench.methods.simsiam import direct_pred_weight, negative_cosine_loss
from workbench.models.backbones import build_backbone

# ---------------------------------------------------------------- stop-gradient and predictor ablations

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


# ---------------------------------------------------------------- DirectPred

def test_weight_is_sqrt_of_normalised_spectrum_in_the_same_eigenbasis():
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    corr = q @ torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)) @ q.T
    w = direct_pred_weight(corr, eps=0.1)
    expected = (q @ torch.diag(torch.tensor([1.0 + 0.1, 0.5 + 0.1, 0.0 + 0.1], dtype=torch.float64)) @ q.T).float()  # sqrt(s / max s) + eps
    assert torch.allclose(w, expected, atol=1e-5)
    assert torch.allclose(direct_pred_weight(torch.diag(torch.tensor([9.0, 1.0])), eps=0.0),
                          torch.diag(torch.tensor([1.0, 1 / 3])), atol=1e-6)


def test_predictor_follows_the_correlation_ema_and_gets_no_gradient():
    backbone = build_backbone("small_cnn", image_size=16, in_chans=3, width=8)
    m = build_method("simsiam", backbone, {"proj_hidden_dim": 32, "proj_output_dim": 8, "direct_pred": True})
    assert not m.predictor.weight.requires_grad and torch.equal(m.predictor.weight, torch.eye(8))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(12, 3, 16, 16, generator=g) for _ in range(2)]
    out = m.training_step(Batch(views), Progress())
    out.loss.backward()
    assert m.predictor.weight.grad is None and torch.isfinite(out.loss)
    with torch.no_grad():
        z = torch.cat([m.projector(m.backbone(v)) for v in views])
    assert torch.allclose(m.corr, z.T @ z / z.shape[0], atol=1e-4)  # first step: F = E[z z^T]
    m.update_teacher(Progress())
    assert torch.allclose(m.predictor.weight, direct_pred_weight(m.corr, 0.01), atol=1e-6)
    first = m.corr.clone()
    m.training_step(Batch([v.flip(-1) for v in views]), Progress())
    with torch.no_grad():
        z2 = torch.cat([m.projector(m.backbone(v.flip(-1))) for v in views])
    assert torch.allclose(m.corr, 0.3 * first + 0.7 * (z2.T @ z2 / z2.shape[0]), atol=1e-4)  # rho = 0.3


def test_direct_pred_config_errors():
    backbone = build_backbone("small_cnn", image_size=16, in_chans=3, width=8)
    with pytest.raises(ConfigError, match="direct_pred=True sets the predictor directly"):
        build_method("simsiam", backbone, {"direct_pred": True, "predictor": False})
    with pytest.raises(ConfigError, match="direct_pred_rho"):
        build_method("simsiam", backbone, {"direct_pred": True, "direct_pred_rho": 1.0})


def test_direct_pred_trains_through_the_engine(blobs_data, tmp_path):
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cfg = PretrainConfig(method="simsiam", method_options={"proj_hidden_dim": 64, "proj_output_dim": 32,
                                                           "direct_pred": True},
                         data=DataConfig(name=blobs_data), model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=32, knn_every=0, progress="off", device="cpu",
                                           log_every=1), out=str(tmp_path))
    run = pretrain(cfg)
    assert run.status["status"] == "completed"
    state = run.load_checkpoint()["method"]  # the method's state dict
    losses = [r["loss"] for r in run.metrics() if r["kind"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # the predictor saved is the one DirectPred set (symmetric, from the correlation), not the identity it started as
    weight = state["predictor.weight"]
    assert not torch.allclose(weight, torch.eye(32)) and torch.allclose(weight, weight.T, atol=1e-5)
    assert torch.allclose(weight, direct_pred_weight(state["corr"], 0.01), atol=1e-5)
