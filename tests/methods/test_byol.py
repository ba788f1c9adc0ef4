"""BYOL's loss 2 - 2 cos(p, z) against lightly's negative cosine similarity and a hand value, next to SimSiam's
D(p, z) (the negative cosine itself, checked here with it); both stop the gradient at the targets."""
from __future__ import annotations

import math

import pytest
import torch

from tests.methods.helpers import _pair
from workbench.methods.byol import byol_loss
from workbench.methods.simsiam import negative_cosine_loss

lightly_loss = pytest.importorskip("lightly.loss")


def test_byol_and_simsiam_losses_match_negative_cosine():
    p, z = _pair(7, 5, seed=6)
    ncs = lightly_loss.NegativeCosineSimilarity()(p, z)
    torch.testing.assert_close(negative_cosine_loss(p, z), ncs)
    torch.testing.assert_close(byol_loss(p, z), 2 + 2 * ncs)
    # hand value for one pair: p = (1, 0), z = (1, 1) -> cos = 1/sqrt(2)
    p1, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert float(byol_loss(p1, z1)) == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    assert float(negative_cosine_loss(p1, z1)) == pytest.approx(-1 / math.sqrt(2), rel=1e-6)


def test_stop_gradient_on_targets():
    p, z = _pair(5, 4, seed=7)
    for fn in (byol_loss, negative_cosine_loss):
        pp, zz = p.clone().requires_grad_(True), z.clone().requires_grad_(True)
        fn(pp, zz).backward()
        assert zz.grad is None and pp.grad.abs().sum() > 0
