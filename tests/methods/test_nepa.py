"""NEPA: the shift-by-one negative-cosine loss by hand, the stop-gradient on the target, the causal mask, and a tiny
run whose next-embedding loss falls (its kNN read-out does not beat random init at that budget; see below)."""
from __future__ import annotations

import math

import pytest
import torch

from tests.methods.helpers import progress, tiny_vit, views
from workbench.methods.base import Batch, build_method
from workbench.methods.nepa import nepa_loss


def test_loss_shift_by_one_hand_value():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # embeddings at t = 0, 1, 2
    o = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [9.0, 9.0]]])  # outputs; the last one predicts nothing
    # o0 -> e1: cos = 1; o1 -> e2: cos = 1/sqrt(2)
    assert nepa_loss(e, o).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    # position-wise: o0.e0 = 0, o1.e1 = 0, o2.e2 = 1
    assert nepa_loss(e, o, shift=0).item() == pytest.approx(-1 / 3, rel=1e-6)


def test_no_gradient_flows_into_the_target():
    e = torch.randn(2, 5, 4, requires_grad=True)
    o = torch.randn(2, 5, 4, requires_grad=True)
    nepa_loss(e, o).backward()
    assert e.grad is None and o.grad.abs().sum() > 0
    # in the method: the gradient equals the one with the target replaced by a constant copy of itself
    m = build_method("nepa", tiny_vit())
    imgs = views(1, b=3)[0]
    m.training_step(Batch([imgs], 1), progress()).loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    emb, out = m.causal_forward(imgs)
    nepa_loss(emb.detach().clone(), out).backward()
    assert grads.keys() == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[n])
    assert m.backbone.vit.patch_embed.proj.weight.grad.abs().sum() > 0  # trained through the input path


def test_causal_outputs_ignore_later_patches():
    m = build_method("nepa", tiny_vit()).eval()
    imgs = views(1, b=2)[0]
    later = imgs.clone()
    later[:, :, 12:, 12:] += 5.0  # the last patch (row-major) only
    emb, out = m.causal_forward(imgs)
    emb2, out2 = m.causal_forward(later)
    assert emb.shape == out.shape == (2, 17, 192)
    torch.testing.assert_close(out2[:, :-1], out[:, :-1])
    assert not torch.allclose(out2[:, -1], out[:, -1])
    torch.testing.assert_close(emb[:, 0], m.backbone.vit.cls_token[0].expand(2, -1))


# Measured (tests.methods.tiny_runs sizes, 2 epochs, seeds 0/1/2): loss -0.371/-0.327/-0.350 -> -0.611/-0.616/-0.618,
# kNN 0.156/0.137/0.156 against 0.184 at random init (-0.027/-0.047/-0.027). The evaluation reads the CLS token of a
# bidirectional pass, which the causal objective never trains (it attends only to itself), so at this budget the
# kNN read-out does not beat random init; the test asserts what does hold: the next-embedding loss falls (first
# to last logged loss fell by 0.24 to 0.29 on the three seeds).
# (At test_training's 2000-image budget seed 0 gave kNN 0.196 against 0.152.)
NEPA_LOSS_DROP = 0.15


@pytest.mark.slow
def test_tiny_run_learns_to_predict_the_next_embedding(tmp_path):
    from tests.methods.tiny_runs import tiny_knn_gain

    r = tiny_knn_gain("nepa", {}, str(tmp_path))
    losses = r["losses"]
    first, last = losses[0], sum(losses[-3:]) / 3
    print(f"\nnepa: loss {first:.3f} -> {last:.3f}; kNN {r['knn_pretrained']:.3f} vs random init "
          f"{r['knn_random_init']:.3f}")
    assert last < first - NEPA_LOSS_DROP, losses
