"""MoCHi hard-negative mixing (SimCLR option): synthetic negatives against a per-anchor loop, loss and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.config import ConfigError
from workbench.methods.simclr import SimCLRConfig, mochi_negatives, nt_xent_loss


def _reference_loss(z1, z2, t, hardest, mix, mix_query, seed):
    """NT-Xent with MoCHi written anchor by anchor, drawing the same random numbers in the same order."""
    a = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    g = torch.Generator().manual_seed(seed)
    rows = 2 * b
    alpha = torch.rand(rows, mix, 1, generator=g)
    i = torch.randint(0, hardest, (rows, mix), generator=g)
    j = torch.randint(0, hardest, (rows, mix), generator=g)
    jq = torch.randint(0, hardest, (rows, mix_query), generator=g)
    beta = 0.5 * torch.rand(rows, mix_query, 1, generator=g)
    losses = []
    for r in range(rows):
        pos = (r + b) % rows
        negs = [k for k in range(rows) if k not in (r, pos)]
        sims = torch.stack([a[r] @ a[k] for k in negs])
        order = sorted(range(len(negs)), key=lambda m: -float(sims[m]))[:hardest]
        hard = [a[negs[m]].detach() for m in order]
        synth = [F.normalize(alpha[r, k, 0] * hard[i[r, k]] + (1 - alpha[r, k, 0]) * hard[j[r, k]], dim=0)
                 for k in range(mix)]
        synth += [F.normalize(beta[r, k, 0] * a[r].detach() + (1 - beta[r, k, 0]) * hard[jq[r, k]], dim=0)
                  for k in range(mix_query)]
        logits = torch.stack([a[r] @ a[pos]] + [a[r] @ a[k] for k in negs] + [a[r] @ s for s in synth]) / t
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def test_mochi_loss_matches_a_per_anchor_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    ours = nt_xent_loss(z1, z2, 0.3, mochi=(4, 3, 2), generator=torch.Generator().manual_seed(7))
    ref = _reference_loss(z1, z2, 0.3, 4, 3, 2, seed=7)
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    plain = nt_xent_loss(z1, z2, 0.3)
    assert float(ours) > float(plain)  # extra negatives only add to each anchor's denominator


def test_mochi_synthetic_points_are_hard_normalised_and_carry_no_gradient():
    torch.manual_seed(1)
    a = F.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    logits = a @ a.T
    mask = torch.eye(8, dtype=torch.bool) | torch.eye(8, dtype=torch.bool).roll(4, dims=1)
    neg = logits.masked_fill(mask, float("-inf"))
    synth = mochi_negatives(a, a, neg, hardest=3, mix=5, mix_query=4, generator=torch.Generator().manual_seed(0))
    assert synth.shape == (8, 9, 16) and not synth.requires_grad
    assert torch.allclose(synth.norm(dim=2), torch.ones(8, 9), atol=1e-5)
    # every query mix (beta < 0.5) is closer to one of the anchor's 3 hardest negatives than to the anchor itself:
    # h = b q + (1 - b) n gives h.n - h.q = (1 - 2b)(1 - q.n) >= 0
    hard = a.detach()[neg.topk(3, dim=1).indices]                                  # [8, 3, 16]
    to_query = (synth[:, 5:] * a.detach()[:, None]).sum(-1)                        # [8, 4]
    to_hard = torch.einsum("bkd,bnd->bkn", synth[:, 5:], hard).max(dim=2).values   # [8, 4]
    assert (to_hard >= to_query - 1e-6).all()
    with pytest.raises(ValueError, match="mochi_hardest=7 is more than the 6 negatives"):
        mochi_negatives(a, a, neg, hardest=7, mix=1, mix_query=0)


def test_mochi_gradient_reaches_the_anchors():
    z1, z2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    nt_xent_loss(z1, z2, 0.2, decoupled=True, mochi=(3, 2, 2), generator=torch.Generator().manual_seed(0)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_mochi_config_errors():
    with pytest.raises(ConfigError, match="set mochi_hardest > 0"):
        SimCLRConfig(mochi_mix=4)
    with pytest.raises(ConfigError, match="synthesises nothing"):
        SimCLRConfig(mochi_hardest=16)
    assert SimCLRConfig(mochi_hardest=16, mochi_mix=8, mochi_mix_query=4).mochi_hardest == 16


def test_simclr_with_mochi_trains_through_the_engine(blobs_data, tmp_path):
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cfg = PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 64, "proj_output_dim": 32,
                                                          "mochi_hardest": 16, "mochi_mix": 8, "mochi_mix_query": 4},
                         data=DataConfig(name=blobs_data), model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=32, knn_every=0, progress="off", device="cpu",
                                           log_every=1), out=str(tmp_path))
    run = pretrain(cfg)
    losses = [r["loss"] for r in run.metrics() if r["kind"] == "step"]
    assert run.status["status"] == "completed" and losses and all(torch.isfinite(torch.tensor(losses)))
