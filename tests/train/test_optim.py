"""Optimizer groups (no weight decay on biases and norms, EMA teachers left out), LARS against hand computation
and against an independent implementation (lightly's), and the warm-up cosine schedule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from workbench.train.optim import LARS, build_optimizer, build_scheduler, param_groups, warmup_cosine


def test_param_groups_exclude_biases_and_norms_from_weight_decay():
    from workbench.methods import build_method
    from workbench.models import build_backbone

    method = build_method("byol", build_backbone("small_cnn", 16, width=8), {"proj_hidden_dim": 32,
                                                                             "proj_output_dim": 16,
                                                                             "pred_hidden_dim": 32})
    teacher = [p for m in method.teacher_modules() for p in m.parameters()]
    groups = param_groups(method, 1e-4, exclude=teacher)
    decay, no_decay = groups
    norm_params = {id(p) for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for p in m.parameters()}
    biases = {id(p) for n, p in method.named_parameters() if n.endswith(".bias")}
    assert norm_params and biases
    assert {id(p) for p in no_decay["params"]} >= (norm_params | biases) - {id(p) for p in teacher}
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 1e-4
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] and not decay["lars_exclude"]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not in_groups & {id(p) for p in teacher}  # EMA teachers are not optimized
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert in_groups == trainable - {id(p) for p in teacher}
    # AdamW keeps the per-group decay
    opt = build_optimizer("adamw", groups, lr=1e-3, weight_decay=1e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_lars_step_matches_hand_computation():
    torch.manual_seed(0)
    w0, b0 = torch.randn(3, 4), torch.randn(4)
    grads = [(torch.randn(3, 4), torch.randn(4)), (torch.randn(3, 4), torch.randn(4))]
    lr, mom, wd, eta = 0.5, 0.9, 0.1, 0.02
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    opt = LARS([{"params": [w], "weight_decay": wd, "lars_exclude": False},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=lr, momentum=mom, eta=eta)
    # by hand (solo-learn's rule): trust ratio on the weight, plain SGD-momentum on the bias
    ew, eb = w0.double().clone(), b0.double().clone()
    bw = bb = None
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        gw, gb = gw.double(), gb.double()
        pn, gn = math.sqrt(float((ew ** 2).sum())), math.sqrt(float((gw ** 2).sum()))
        local = min(eta * pn / (gn + wd * pn + 1e-8) / lr, 1.0)
        dw = (gw + wd * ew) * local
        bw = dw if bw is None else mom * bw + dw
        bb = gb if bb is None else mom * bb + gb
        ew, eb = ew - lr * bw, eb - lr * bb
        torch.testing.assert_close(w.detach().double(), ew, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.detach().double(), eb, rtol=1e-5, atol=1e-6)
    # without clipping (the LARS paper's eta=0.001) the trust ratio is used as is
    p = nn.Parameter(w0.clone())
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.001, clip_lr=False)
    p.grad = grads[0][0].clone()
    opt.step()
    ratio = 0.001 * w0.norm() / grads[0][0].norm()
    torch.testing.assert_close(p.detach(), w0 - 0.1 * ratio * grads[0][0], rtol=1e-5, atol=1e-6)


def test_warmup_cosine_schedule_values():
    total, warm = 10, 2
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi * 1 / 8)), 0.5 * (1 + math.cos(math.pi * 2 / 8)),
                0.5 * (1 + math.cos(math.pi * 3 / 8)), 0.5, 0.5 * (1 + math.cos(math.pi * 5 / 8))]
    got = [warmup_cosine(s, total, warm) for s in range(len(expected))]
    assert got == pytest.approx(expected)
    assert warmup_cosine(10, total, warm) == pytest.approx(0.0)
    # the scheduler applies it per step to every group's base lr
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p]}], lr=0.4)
    sched = build_scheduler(opt, total, warm)
    lrs = []
    for _ in range(len(expected)):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.4 * e for e in expected])


def test_lars_matches_lightlys_implementation_over_several_steps():
    """Our LARS without clipping (the LARS paper's form) against lightly's (from PyTorch Lightning Bolts): the
    decayed group is trust-ratio scaled, the group without weight decay is plain momentum SGD in both."""
    lightly_lars = pytest.importorskip("lightly.utils.lars").LARS
    torch.manual_seed(0)
    ours_model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    ref_model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    ref_model.load_state_dict(ours_model.state_dict())

    def groups(model: nn.Module, lars_flag: bool) -> list[dict]:
        weights = [p for p in model.parameters() if p.ndim >= 2]
        biases = [p for p in model.parameters() if p.ndim < 2]
        extra = ({"lars_exclude": False}, {"lars_exclude": True}) if lars_flag else ({}, {})
        return [{"params": weights, "weight_decay": 1e-3, **extra[0]},
                {"params": biases, "weight_decay": 0.0, **extra[1]}]

    ours = LARS(groups(ours_model, True), lr=0.5, momentum=0.9, eta=0.001, clip_lr=False)
    ref = lightly_lars(groups(ref_model, False), lr=0.5, momentum=0.9, trust_coefficient=0.001)
    start = [p.detach().clone() for p in ours_model.parameters()]
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(5):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert all(not torch.equal(p0, p) for p0, p in zip(start, ours_model.parameters()))  # every tensor moved

