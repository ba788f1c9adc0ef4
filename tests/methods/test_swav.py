"""SwAV: Sinkhorn-Knopp against the paper's loop, the multi-crop loss against lightly, prototypes and queue."""
from __future__ import annotations

import numpy as np
import torch

from tests.methods.helpers import progress, tiny_cnn, views
from workbench.methods.base import Batch, build_method
from workbench.methods.swav import sinkhorn, swav_loss


def reference_sinkhorn(scores: np.ndarray, iterations: int, eps: float) -> np.ndarray:
    """The paper's Algorithm (Sinkhorn-Knopp), one row and one column at a time, float64."""
    q = np.exp(scores / eps).T  # [K, N]
    k, n = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(n):
            q[:, c] = q[:, c] / q[:, c].sum() / n
    return (q * n).T


def test_sinkhorn_matches_reference_loop_and_marginals():
    g = torch.Generator().manual_seed(2)
    scores = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1).T  # cosine scores [N=12, K=5]
    for iters in (3, 50):
        q = sinkhorn(scores, iterations=iters, epsilon=0.05)
        ref = reference_sinkhorn(scores.double().numpy(), iters, 0.05)
        np.testing.assert_allclose(q.double().numpy(), ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(q.sum(1).numpy(), np.ones(12), rtol=1e-5)  # each sample: a distribution
    # many iterations -> equipartition: every prototype receives N/K samples
    np.testing.assert_allclose(q.sum(0).numpy(), np.full(5, 12 / 5), rtol=1e-3)


def test_swav_loss_matches_lightly_multicrop():
    from lightly.loss import SwaVLoss

    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(4, 8, 6, generator=g), dim=-1)  # 2 global + 2 local, B=8
    protos = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=-1)
    scores = z @ protos.T  # [4, 8, 10]
    expected = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(list(scores[:2]),
                                                                                      list(scores[2:]))
    codes = torch.stack([sinkhorn(scores[i], 3, 0.05) for i in range(2)])
    torch.testing.assert_close(swav_loss(scores, codes, 0.1), expected.reshape(()), rtol=1e-5, atol=1e-6)


def test_swav_prototypes_normalised_frozen_then_trained_and_queue_fills():
    m = build_method("swav", tiny_cnn(), {"hidden_dim": 32, "out_dim": 16, "num_prototypes": 20,
                                          "queue_length": 12, "queue_start_epoch": 0})
    m.training_step(Batch(views(b=6), 2), progress(step=0)).loss.backward()
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(20))
    assert torch.count_nonzero(m.prototypes.weight.grad) == 0  # frozen during the first epoch
    assert m.backbone.stages[0][0].weight.grad.abs().sum() > 0
    assert m.queue.rows[:, 6:].abs().sum() == 0 and m.queue.rows[:, :6].abs().sum() > 0  # half full
    m.zero_grad()
    out = m.training_step(Batch(views(b=6, seed=1), 2), progress(step=4))
    out.loss.backward()
    assert m.prototypes.weight.grad.abs().sum() > 0
    assert bool((m.queue.rows.norm(dim=-1) > 0.99).all()) and m.queue.full  # full of unit embeddings
    out = m.training_step(Batch(views(b=6, seed=2), 2), progress(step=5))  # now the queue joins Sinkhorn
    assert torch.isfinite(out.loss)
