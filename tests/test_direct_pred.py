"""DirectPred (SimSiam option): the predictor set from the eigenbasis of the projections' correlation matrix."""
from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError
from workbench.methods import Batch, Progress, build_method
from workbench.methods.simsiam import direct_pred_weight
from workbench.models.backbones import build_backbone


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
