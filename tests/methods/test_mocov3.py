"""MoCo v3: InfoNCE against an explicit loop, keys without gradient, simulated rank offsets; heads by backbone
kind."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.methods.helpers import _fake_dist, _pair
from workbench.methods import build_method
from workbench.methods import mocov3 as moco_mod
from workbench.methods.mocov3 import infonce_loss
from workbench.models.backbones import build_backbone


def _infonce_by_hand(q, k, t):
    q = F.normalize(q, dim=1).double()
    k = F.normalize(k, dim=1).double()
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / t for j in range(len(k))]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(q) * 2 * t


def test_infonce_by_hand():
    q, k = _pair(3, 3, seed=3)
    for t in (0.2, 1.0):
        assert float(infonce_loss(q, k, t)) == pytest.approx(_infonce_by_hand(q, k, t), rel=1e-5)
    q4, k4 = _pair(4, 4, seed=4)
    assert float(infonce_loss(q4, k4, 0.2)) == pytest.approx(_infonce_by_hand(q4, k4, 0.2), rel=1e-5)


def test_infonce_keys_get_no_gradient_and_rank_offsets(monkeypatch):
    q, k = _pair(6, 4, seed=5)
    q.requires_grad_(True)
    k.requires_grad_(True)
    infonce_loss(q, k, 0.2).backward()
    assert k.grad is None and q.grad is not None and q.grad.abs().sum() > 0
    whole = infonce_loss(q.detach(), k.detach(), 0.2)
    kn = F.normalize(k.detach(), dim=1)
    per_rank = []
    for r in range(2):
        _fake_dist(monkeypatch, moco_mod, r, [kn])
        per_rank.append(infonce_loss(q.detach()[3 * r:3 * r + 3], k.detach()[3 * r:3 * r + 3], 0.2))
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, whole, rtol=1e-5, atol=1e-6)


def test_mocov3_heads_follow_backbone_kind():
    cnn = build_method("mocov3", build_backbone("small_cnn", 16, 3, width=4), {"proj_hidden_dim": 8})
    vit = build_method("mocov3", build_backbone("vit_tiny", 16, 3, patch_size=8, depth=1), {"proj_hidden_dim": 8})
    linears = lambda seq: sum(isinstance(m, torch.nn.Linear) for m in seq)  # noqa: E731
    assert linears(cnn.projector) == 2 and linears(vit.projector) == 3
    assert not isinstance(cnn.predictor[-1], torch.nn.BatchNorm1d)
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d) and not vit.predictor[-1].affine
    assert isinstance(cnn.projector[-1], torch.nn.BatchNorm1d) and not cnn.projector[-1].affine
