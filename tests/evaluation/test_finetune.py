"""Few-label fine-tuning and distillation on tiny images, and evaluate() wiring them."""
from __future__ import annotations

import pytest
import torch

from workbench.evaluation import Classifier, distill, distillation_loss, evaluate, few_label_finetune


def test_evaluate_wires_finetune_and_distill(data, backbone):
    table = evaluate(backbone, data=data, metrics="distill", baselines=["raw_pixels"], device="cpu",
                     options={"fractions": (0.1,), "finetune_min_steps": 10, "distill_min_steps": 5,
                              "finetune_epochs": 1, "distill_epochs": 1})
    assert set(table["name"]) == {"finetune_top1_10pct", "distill_top1_10pct"}
    assert set(table["model"]) == {"pretrained", "raw_pixels"}
    ft = table[(table["name"] == "finetune_top1_10pct") & (table["model"] == "pretrained")]["settings"].item()
    assert ft["num_labeled"] == 40 and ft["steps"] == 10
    assert table["value"].between(0, 1).all()


def test_few_label_finetune_and_distillation(data, backbone):
    train, test = data
    ft = few_label_finetune(backbone, train, test, fraction=0.1, epochs=1, min_steps=40, batch_size=16, lr=0.05,
                            seed=0, device="cpu")
    assert ft.num_labeled == 40 and ft.settings["per_class"] == 10 and ft.settings["steps"] == 40
    assert ft.top1 > 0.6, ft.top1  # chance is 0.25
    assert isinstance(ft.model, Classifier) and ft.model.head.out_features == 4
    ds = distill(ft, train, test, epochs=3, min_steps=0, batch_size=32, lr=0.05, seed=0, device="cpu")
    assert ds.teacher_top1 == pytest.approx(ft.top1)
    assert ds.top1 > 0.5, ds.top1
    assert ds.top1 >= ds.teacher_top1 - 0.2
    with pytest.raises(ValueError, match="images per class"):
        few_label_finetune(backbone, train, test, fraction=0.005)
    # distillation loss: equals the cross-entropy to the teacher's softmax; minimal when the logits agree
    t = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(t / 2.0, 1)
    assert distillation_loss(t, t, 2.0) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    assert distillation_loss(-t, t, 2.0) > distillation_loss(t, t, 2.0)
