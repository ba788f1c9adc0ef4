"""Barlow Twins against lightly and hand values; Barlow Twins and VICReg over simulated ranks (both use the
statistics of the global batch)."""
from __future__ import annotations

import pytest
import torch

from tests.methods.helpers import _fake_dist, _pair
from workbench.methods import barlow_twins as bt_mod
from workbench.methods import vicreg as vicreg_mod
from workbench.methods.barlow_twins import barlow_twins_loss
from workbench.methods.vicreg import vicreg_loss

lightly_loss = pytest.importorskip("lightly.loss")


def test_barlow_twins_matches_lightly_and_hand():
    z1, z2 = _pair(16, 6, seed=8)
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)(z1, z2)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.0051, 1.0), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.0051, 0.1), 0.1 * ref, rtol=1e-5, atol=1e-5)
    # hand: perfectly correlated, decorrelated dimensions give c = I and a zero loss
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(x, 3 * x + 2)) == pytest.approx(0.0, abs=1e-4)
    # anti-correlated single dimension: c_00 = -1 -> (1 - (-1))^2 = 4
    y = torch.tensor([[1.0], [-1.0], [2.0], [-2.0]])
    assert float(barlow_twins_loss(y, -y)) == pytest.approx(4.0, rel=1e-3)


def test_global_batch_statistics_across_simulated_ranks(monkeypatch):
    """Barlow Twins and VICReg use the statistics of the global batch: every rank's loss from its half plus the
    gathered halves equals (Barlow) or averages to (VICReg's local invariance term) the one-process loss."""
    z1, z2 = _pair(12, 5, seed=10)
    whole_bt = barlow_twins_loss(z1, z2, 0.0051, 0.1)
    whole_vic = vicreg_loss(z1, z2)
    vic = []
    for r in range(2):
        sl = slice(6 * r, 6 * r + 6)
        _fake_dist(monkeypatch, bt_mod, r, [z1, z2])
        torch.testing.assert_close(barlow_twins_loss(z1[sl], z2[sl], 0.0051, 0.1), whole_bt, rtol=1e-5, atol=1e-6)
        _fake_dist(monkeypatch, vicreg_mod, r, [z1, z2])
        vic.append(vicreg_loss(z1[sl], z2[sl]))
    torch.testing.assert_close((vic[0] + vic[1]) / 2, whole_vic, rtol=1e-5, atol=1e-5)
    # the local-only Barlow loss of half the batch differs (so the test above can fail)
    monkeypatch.setattr(bt_mod, "gather", lambda x: x)
    assert abs(float(barlow_twins_loss(z1[:6], z2[:6], 0.0051, 0.1) - whole_bt)) > 1e-3
