"""Matryoshka nesting (workbench.methods.matryoshka) and evaluation at prefixes (workbench.evaluation.prefixes).

The nested loss is checked against an independent reference: the plain method, its every backbone (online and
EMA teacher) wrapped so that it outputs its first m dims zero-padded, run once per size and summed by hand with
the weights; values and backbone gradients must agree.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.methods.helpers import progress, tiny_cnn, views
from workbench.config import ConfigError
from workbench.methods import Batch, build_method, make_method_config
from workbench.models.backbones import Backbone

HEADS = {"simclr": {"proj_hidden_dim": 32, "proj_output_dim": 16},
         "byol": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
         "vicreg": {"proj_hidden_dim": 32, "proj_output_dim": 32},
         "mocov3": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
         "barlow_twins": {"proj_hidden_dim": 32, "proj_output_dim": 32},
         "simsiam": {"proj_hidden_dim": 32, "proj_output_dim": 32, "pred_hidden_dim": 16}}
DIMS, WEIGHTS = [8, 16, 64], [0.5, 2.0, 1.0]  # tiny_cnn: D = 64


class FirstDims(nn.Module):
    """The reference's truncation, written independently: ``inner(x)`` [B, D] -> its first m dims, zeros after."""

    def __init__(self, inner: nn.Module, m: int):
        super().__init__()
        self.inner, self.m = inner, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.inner(x)
        return torch.cat([f[:, :self.m], torch.zeros_like(f[:, self.m:])], dim=1)


def reference_loss(method: nn.Module, batch: Batch, m: int) -> torch.Tensor:
    """The plain ``method``'s loss with every backbone it holds (online, EMA teachers) truncated to m dims."""
    backbones = {name: child for name, child in method.named_children() if isinstance(child, Backbone)}
    try:
        for name, child in backbones.items():
            setattr(method, name, FirstDims(child, m))
        return method.training_step(batch, progress()).loss
    finally:
        for name, child in backbones.items():
            setattr(method, name, child)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_nested_loss_is_the_weighted_sum_of_the_plain_loss_at_each_prefix(name):
    torch.manual_seed(0)
    nested = build_method(name, tiny_cnn(), {**HEADS[name], "matryoshka_dims": DIMS, "matryoshka_weights": WEIGHTS})
    plain = build_method(name, tiny_cnn(), HEADS[name])
    assert list(plain.state_dict()) == list(nested.state_dict())  # same keys: checkpoints load either way
    plain.load_state_dict(nested.state_dict())
    batch = Batch(views(b=8, seed=1))

    out = nested.training_step(batch, progress())
    out.loss.backward()
    terms = [reference_loss(plain, batch, m) for m in DIMS]
    expected = sum(w * t for w, t in zip(WEIGHTS, terms))
    expected.backward()

    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    for m, t in zip(DIMS, terms):
        torch.testing.assert_close(out.logs[f"loss_d{m}"], t.detach(), rtol=1e-5, atol=1e-6)
    assert len({round(float(t.detach()), 4) for t in terms}) == len(terms)  # the sizes give different losses
    grad, ref = nested.backbone.stages[0][0].weight.grad, plain.backbone.stages[0][0].weight.grad
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))  # float sums reorder
    assert out.features.shape == (8, 64) and (out.features[:, 8:] != 0).any()  # the full-size features


def test_backbones_run_once_per_view_and_are_plain_outside_the_step():
    torch.manual_seed(0)
    method = build_method("byol", tiny_cnn(), {**HEADS["byol"], "matryoshka_dims": DIMS})
    calls = {"online": 0, "target": 0}
    method.backbone.stages.register_forward_hook(lambda *_: calls.__setitem__("online", calls["online"] + 1))
    method.target_backbone.stages.register_forward_hook(lambda *_: calls.__setitem__("target", calls["target"] + 1))
    method.training_step(Batch(views(b=8)), progress())
    assert calls == {"online": 2, "target": 2}  # two views each, not 2 x len(DIMS)
    x = views(b=4, seed=3)[0]
    assert (method.backbone(x)[:, 8:] != 0).any()  # no truncation left behind after the step
    assert method.backbone.size is None and method.backbone.reuse is None


def test_nesting_options_are_checked():
    with pytest.raises(ConfigError, match="must end at the backbone's feature dim 64"):
        build_method("simclr", tiny_cnn(), {"matryoshka_dims": [8, 16, 32]})
    with pytest.raises(ConfigError, match="strictly increasing"):
        make_method_config("simclr", {"matryoshka_dims": [16, 8, 64]})
    with pytest.raises(ConfigError, match="one weight per size"):
        make_method_config("vicreg", {"matryoshka_dims": [8, 64], "matryoshka_weights": [1.0]})
    with pytest.raises(ConfigError, match="not 'dino'"):
        make_method_config("dino", {"matryoshka_dims": [8, 64]})
    with pytest.raises(ConfigError, match="direct_pred"):
        make_method_config("simsiam", {"matryoshka_dims": [8, 64], "direct_pred": True})
    with pytest.raises(ConfigError, match="matryoshka_dims"):  # the error lists the shared options too
        make_method_config("byol", {"matryoshka_dim": [8, 64]})


def test_prefix_metrics_read_the_first_dims():
    from workbench.evaluation.prefixes import nested_dims, prefix_metrics
    from workbench.trained import FeatureSet

    assert nested_dims(256) == [8, 16, 32, 64, 128, 256] and nested_dims(100) == [8, 16, 32, 64, 100]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    # dims 0-3 hold the class (one-hot, plus noise); dims 4-31 are stronger noise
    x = torch.cat([3 * nn.functional.one_hot(labels, 4).float(), torch.zeros(400, 28)], dim=1)
    x = x + torch.randn(400, 32, generator=g) * torch.tensor([1.0] * 4 + [3.0] * 28)
    train, test = FeatureSet(x[:300], labels[:300]), FeatureSet(x[300:], labels[300:])
    table = prefix_metrics(train, test, dims=[4, 32], device="cpu")
    assert list(table.dims) == [4, 32] and set(table.columns) == {"dims", "knn_top1", "linear_top1", "rankme"}
    first, full = table.iloc[0], table.iloc[1]
    assert first.knn_top1 > 0.9 and first.linear_top1 > 0.9
    assert full.knn_top1 < first.knn_top1 - 0.1  # the noise dims dilute the neighbours
    assert 3.0 < first.rankme <= 4.0 and full.rankme > 20  # RankMe of the prefix is bounded by its size
    with pytest.raises(ValueError, match=r"in \[1, 32\]"):
        train.prefix(33)
    with pytest.raises(ValueError, match="choose from"):
        prefix_metrics(train, test, metrics=("knn", "nmi"))
