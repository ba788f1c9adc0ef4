"""VICReg against lightly and its three terms by hand (over simulated ranks: tests/methods/test_barlow_twins.py)."""
from __future__ import annotations

import pytest
import torch

from tests.methods.helpers import _pair
from workbench.methods.vicreg import vicreg_loss, vicreg_terms

lightly_loss = pytest.importorskip("lightly.loss")


def test_vicreg_matches_lightly():
    z1, z2 = _pair(10, 6, seed=9)
    ref = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)(z1, z2)
    torch.testing.assert_close(vicreg_loss(z1, z2), ref, rtol=1e-5, atol=1e-5)
    ref2 = lightly_loss.VICRegLoss(lambda_param=1.0, mu_param=2.0, nu_param=3.0, eps=1e-3)(z1, z2)
    torch.testing.assert_close(vicreg_loss(z1, z2, 1.0, 2.0, 3.0, 1e-3), ref2, rtol=1e-5, atol=1e-5)


def test_vicreg_terms_by_hand():
    # two samples, two dims: z1 = [[0, 0], [2, 2]], z2 = [[0, 1], [2, 1]]
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    inv, var, cov = vicreg_terms(z1, z2, eps=1e-4)
    assert float(inv) == pytest.approx(0.5)  # squared errors (0, 1, 0, 1) averaged
    # std(z1) = sqrt(2) per dim -> hinge 0; z2: dim 0 std sqrt(2) -> 0, dim 1 std sqrt(1e-4) -> 0.99
    assert float(var) == pytest.approx(0.5 * (1 - 0.01) / 2, rel=1e-4)
    # cov(z1) = [[2, 2], [2, 2]] -> off-diagonal 2 * 4 / 2 = 4; cov(z2) off-diagonal 0
    assert float(cov) == pytest.approx(4.0, rel=1e-5)
