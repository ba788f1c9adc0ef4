"""Random-teacher distillation: the student's interpolated start (by hand and in distance), a teacher that never
changes under training, the loss at a copy of the teacher, config errors, the student-vs-teacher probe, and a
tiny run where the student beats its own random teacher (mean of kNN and linear probe)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tests.methods.helpers import progress, tiny_cnn, views
from workbench.config import ConfigError
from workbench.methods.base import Batch, build_method, make_method_config
from workbench.methods.random_teacher import interpolate_

HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_interpolate_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    student, teacher, fresh = (nn.Linear(3, 2) for _ in range(3))
    with torch.no_grad():
        for m in (student, teacher, fresh):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    interpolate_(student, teacher, fresh, 0.25)
    c = math.sqrt(0.75 ** 2 + 0.25 ** 2)
    torch.testing.assert_close(student.weight, (0.75 * teacher.weight + 0.25 * fresh.weight) / c)
    torch.testing.assert_close(student.bias, (0.75 * teacher.bias + 0.25 * fresh.bias) / c)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3, 1.0])
def test_student_starts_at_the_specified_distance_from_its_teacher(alpha):
    """alpha 0: an exact copy. Otherwise the part of the student not explained by the teacher,
    r = (c * student - (1 - alpha) * teacher) / alpha, is a fresh random draw: per conv weight the same spread
    as the teacher's and uncorrelated with it; so the whole network's relative distance is
    |(student - teacher)| / |teacher| ~ sqrt(((1 - alpha) / c - 1)^2 + (alpha / c)^2)."""
    torch.manual_seed(0)
    m = build_method("random_teacher", tiny_cnn(), {**HEAD, "init_alpha": alpha})
    if alpha == 0.0:
        assert all(torch.equal(s, t) for s, t in zip(m.backbone.state_dict().values(),
                                                       m.teacher_backbone.state_dict().values()))
        assert torch.equal(_flat(m.head), _flat(m.teacher_head))
        return
    c = math.sqrt((1 - alpha) ** 2 + alpha ** 2)
    for s, t in zip(m.backbone.state_dict().values(), m.teacher_backbone.state_dict().values()):
        if s.dim() == 4:  # conv weights: random at initialisation
            r = (c * s - (1 - alpha) * t) / alpha
            assert 0.8 < float(r.std() / t.std()) < 1.25
            assert abs(float(torch.corrcoef(torch.stack([r.flatten(), t.flatten()]))[0, 1])) < 0.15
    expected = math.sqrt(((1 - alpha) / c - 1) ** 2 + (alpha / c) ** 2)
    convs = [(s, t) for s, t in zip(m.backbone.state_dict().values(), m.teacher_backbone.state_dict().values())
             if s.dim() == 4]
    dist = torch.cat([(s - t).flatten() for s, t in convs]).norm() / torch.cat([t.flatten() for _, t in convs]).norm()
    assert abs(float(dist) / expected - 1) < 0.1, (float(dist), expected)
    for s, t in zip(m.backbone.buffers(), m.teacher_backbone.buffers()):
        assert torch.equal(s, t)  # BatchNorm statistics start as the teacher's


def test_teacher_never_changes_while_the_student_trains():
    torch.manual_seed(0)
    m = build_method("random_teacher", tiny_cnn(), {**HEAD, "init_alpha": 0.1})
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("teacher_")}
    student0 = _flat(m.backbone).clone()
    assert all(not p.requires_grad for mod in m.teacher_modules() for p in mod.parameters())
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        m.train()  # the engine's call: the teacher must stay in eval mode (its BatchNorm statistics frozen)
        assert not m.teacher_backbone.training and not m.teacher_head.training and m.backbone.training
        out = m.training_step(Batch(views(2, 0, b=8, seed=step), 2), progress(step=step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.update_teacher(progress(step=step))
    after = {k: v for k, v in m.state_dict().items() if k.startswith("teacher_")}
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(student0, _flat(m.backbone))


def test_loss_at_a_copy_of_the_teacher_is_its_entropy():
    """alpha 0 with the student in eval mode computes exactly the teacher's function: cross-entropy = H(teacher)
    (here log K up to the head's small logits at temperature 1), and the logged KL is 0."""
    torch.manual_seed(0)
    m = build_method("random_teacher", tiny_cnn(), {**HEAD, "init_alpha": 0.0}).eval()
    v = views(1, 0, b=5)[0]
    out = m.training_step(Batch([v, v.clone()], 2), progress())
    with torch.no_grad():
        p = torch.softmax(m.teacher_head(m.teacher_backbone(v)), dim=-1)
        entropy = float(-(p * p.log()).sum(-1).mean())
    assert abs(float(out.loss.detach()) - entropy) < 1e-5
    assert abs(float(out.logs["kl"])) < 1e-5
    assert entropy < math.log(64)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="init_alpha"):
        make_method_config("random_teacher", {"init_alpha": 1.5})
    with pytest.raises(ConfigError, match="teacher_temp"):
        make_method_config("random_teacher", {"teacher_temp": 0})


def test_student_vs_teacher_probe_reads_both_backbones():
    """A student that is an exact copy of its teacher probes exactly as the teacher; a method without a teacher
    is refused with the methods that have one."""
    from workbench.data import load
    from workbench.evaluation.teacher import student_vs_teacher

    torch.manual_seed(0)
    train, test = load("shapes", split="train", size=16, n=120, seed=0), load("shapes", split="test", size=16, n=60,
                                                                               seed=0)
    m = build_method("random_teacher", tiny_cnn(), {**HEAD, "init_alpha": 0.0})
    scores = student_vs_teacher(m, train, test, probes=("knn", "linear"), device="cpu")
    assert scores["student"] == scores["teacher"] and scores["gain"] == {"knn_top1_k20": 0.0, "linear_top1": 0.0}
    assert 0.0 < scores["teacher"]["knn_top1_k20"] <= 1.0
    with pytest.raises(ValueError, match="teacher_backbone"):
        student_vs_teacher(build_method("simclr", tiny_cnn()), train, test)
    with pytest.raises(ValueError, match="probes"):
        student_vs_teacher(m, train, test, probes=("nope",))


# The tiny run: shapes at 32 px (2000 training images, 500 test), small CNN width 32, one epoch of 31 steps at the
# recipe (AdamW 1e-3 per 256 images), no augmentation, the student a copy of its teacher (init_alpha 0).
# Measured (2-core CPU, loaded), student - teacher, seeds 0 / 1 / 2:
#   kNN (k=20)    0.340-0.264 = +0.076 / 0.354-0.302 = +0.052 / 0.354-0.356 = -0.002
#   linear probe  0.434-0.430 = +0.004 / 0.490-0.406 = +0.084 / 0.434-0.386 = +0.048
# Neither probe alone beats the teacher on all three seeds at this budget; their mean does: +0.040 / +0.068 / +0.023.
# The test runs seed 0 and asserts that mean with a margin below half the smallest of the three.
MEAN_GAIN_OVER_TEACHER = 0.01


@pytest.mark.slow
def test_student_beats_its_random_teacher(tmp_path):
    import workbench.data as data_pkg
    from workbench.data import base
    from workbench.evaluation.teacher import student_vs_teacher
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cache = {s: data_pkg.load("shapes", split=s, size=32, n=n, seed=0) for s, n in (("train", 2000), ("test", 500))}
    base._REGISTRY["shapes_rt"] = lambda split="train", **_: cache[split]
    try:
        run = pretrain(PretrainConfig(
            method="random_teacher", method_options={"out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128},
            data=DataConfig(name="shapes_rt"), model=ModelConfig(backbone="small_cnn", options={"width": 32}),
            train=TrainConfig(epochs=1, batch_size=64, log_every=5, knn_every=0, progress="off", device="cpu",
                              seed=0), out=str(tmp_path)))
        assert run.status["status"] == "completed"
        scores = student_vs_teacher(run, cache["train"], cache["test"], probes=("knn", "linear"), device="cpu")
    finally:
        base._REGISTRY.pop("shapes_rt", None)
    state = run.load_checkpoint("last")["method"]  # the teacher's BatchNorm never saw a batch in train mode
    stats = {k: v for k, v in state.items() if k.startswith("teacher_backbone.") and "running" in k}
    assert stats and all(torch.equal(v, torch.zeros_like(v) if k.endswith("mean") else torch.ones_like(v))
                         for k, v in stats.items())
    mean_gain = (scores["gain"]["knn_top1_k20"] + scores["gain"]["linear_top1"]) / 2
    print(f"\nrandom_teacher: student {scores['student']} teacher {scores['teacher']} mean gain {mean_gain:+.3f} "
          f"(asserted >= {MEAN_GAIN_OVER_TEACHER})")
    assert mean_gain >= MEAN_GAIN_OVER_TEACHER, scores
