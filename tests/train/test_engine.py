"""The engine: config errors, optimizer groups, LARS and the schedule against hand computation, resume
equivalence, NaN handling, failures, background runs with stop() and callbacks, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from workbench.config import ConfigError, apply_overrides
from workbench.train import (DataConfig, ModelConfig, PretrainConfig, TrainConfig, TrainingDiverged, pretrain,
                             start_pretrain)
from workbench.trained import load_trained
from workbench.train.config import resolve_train, schedule_steps
from workbench.train.optim import LARS, build_optimizer, build_scheduler, param_groups, warmup_cosine


def tiny(data: str, out, method: str = "byol", **train) -> PretrainConfig:
    """A few-second run: 128 16-px images, batch 32 (4 steps an epoch), width-8 small CNN."""
    t = dict(epochs=2, batch_size=32, log_every=1, knn_every=0, progress="off", device="cpu")
    t.update(train)
    opts = {"proj_hidden_dim": 64, "proj_output_dim": 32} if method in ("byol", "simclr") else {}
    if method == "byol":
        opts["pred_hidden_dim"] = 64
    return PretrainConfig(method=method, method_options=opts, data=DataConfig(name=data, options={"n": 128}),
                          model=ModelConfig(backbone="small_cnn", options={"width": 8}), train=TrainConfig(**t),
                          out=str(out))


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(method="simclrr"), r"unknown method 'simclrr'; known methods: \[.*'simclr'"),
    (dict(model={"backbone": "resnet19"}), r"backbone='resnet19' is not allowed; choose one of \[.*'resnet18'"),
    (dict(method="simclr", train={"epochs": 2, "batch_size": 1}), r"batch_size=1 is too small for 'simclr'"),
    (dict(method="mae", model={"backbone": "small_cnn"}), r"'mae' needs a ViT backbone.*vit_tiny"),
    (dict(method="ijepa"), r"'ijepa' needs a ViT backbone"),
    (dict(method="mae", model={"backbone": "vit_tiny", "options": {"patch_size": 5}},
          data={"image_size": 32}), r"patch_size=5 does not divide data.image_size=32; choose one of \[2, 4, 8"),
    (dict(train={"epochs": 0}), r"TrainConfig.epochs=0 must be an integer >= 1"),
    (dict(train={"epochs": 1, "optimizer": "adam"}), r"optimizer='adam' is not allowed.*'lars', 'adamw', 'sgd'"),
    (dict(train={"epochs": 1, "device": "gpu"}), r"device='gpu' is not allowed"),
    (dict(method_options={"temperatur": 0.5}), r"method 'simclr'.*temperatur.*options of simclr"),
    (dict(augment={"jitter_p": 2.0}), r"augment.*jitter_p=2.0 is out of range"),
    (dict(data={"options": {"size": 32}}), r"options\['size'\] is not allowed: use DataConfig.image_size"),
])
def test_bad_configs_get_named_errors(kwargs, pattern):
    from workbench.config import from_dict

    with pytest.raises(ConfigError, match=pattern):
        from_dict(PretrainConfig, kwargs)


def test_override_errors_name_the_key():
    cfg = PretrainConfig()
    with pytest.raises(ConfigError, match=r"unknown field 'lrr'; known: \[.*'lr'"):
        apply_overrides(cfg, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="must be a number"):
        apply_overrides(cfg, ["train.lr=fast"])
    cfg2 = apply_overrides(cfg, ["train.lr=0.1", "method_options.temperature=0.2", "data.options.n=500"])
    assert cfg2.train.lr == 0.1 and cfg2.method_options == {"temperature": 0.2} and cfg2.data.options == {"n": 500}


def test_recipe_fills_unset_fields_and_lr_scales_with_batch():
    from workbench.methods import method_class

    recipe = method_class("byol").recipe
    r = resolve_train(PretrainConfig(method="byol", train=TrainConfig(batch_size=512)))
    assert r.optimizer == recipe.optimizer and r.base_lr == recipe.lr
    assert r.lr == pytest.approx(recipe.lr * 2)  # 512 / 256
    r = resolve_train(PretrainConfig(method="byol", train=TrainConfig(batch_size=128, lr=0.4, optimizer="sgd",
                                                                      weight_decay=0.0)))
    assert (r.optimizer, r.lr, r.weight_decay) == ("sgd", pytest.approx(0.2), 0.0)
    assert schedule_steps(epochs=4, steps_per_epoch=10, warmup_epochs=10) == (40, 20)  # warm-up <= half the run
    assert schedule_steps(epochs=4, steps_per_epoch=10, warmup_epochs=0.5) == (40, 5)


# ---------------------------------------------------------------------------------------------- optim
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


# ---------------------------------------------------------------------------------------------- runs
def test_run_folder_checkpoint_and_load_trained(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path, epochs=1, knn_every=1))
    for f in ("config.json", "env.json", "metrics.jsonl", "status.json", "summary.json", "checkpoints/last.pt"):
        assert (run.path / f).exists(), f
    assert run.status["status"] == "completed" and run.status["step"] == 4
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert ckpt["step"] == 4 and "target_backbone.stages.0.0.weight" in ckpt["method"]  # the EMA teacher is saved
    kinds = [r["kind"] for r in run.metrics()]
    assert kinds.count("step") == 4 and kinds.count("epoch") == 1
    step = run.metrics()[0]
    assert {"loss", "lr", "rankme", "std", "step_time", "images_per_s"} <= set(step)
    epoch = [r for r in run.metrics() if r["kind"] == "epoch"][0]
    assert 0.0 <= epoch["knn_acc"] <= 1.0
    # normalisation statistics come from the training images and are recorded in config.json
    from workbench.data.base import load
    imgs = load(blobs_data, "train", n=128).images.double() / 255
    assert run.config["data"]["mean"] == pytest.approx(imgs.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    trained = load_trained(run)
    backbone, info = trained.backbone, trained.info
    method = load_trained(run.path).method()
    assert not backbone.training and info["image_size"] == 16 and info["in_chans"] == 3 and info["method"] == "byol"
    assert info["data"] == {"name": blobs_data, "options": {"n": 128}} and info["feature_dim"] == 64
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(backbone(x), method.backbone(x))
    with pytest.raises(FileNotFoundError, match="checkpoint 'best' not found"):
        load_trained(run, "best")


def test_resume_gives_the_same_parameters_as_training_straight(blobs_data, tmp_path):
    straight = pretrain(tiny(blobs_data, tmp_path / "a", max_steps=6, deterministic=True))
    first = pretrain(tiny(blobs_data, tmp_path / "b", max_steps=3, deterministic=True))
    assert first.status["status"] == "completed" and first.status["stopped_at_max_steps"]
    assert first.status["step"] == 3
    resumed = pretrain(apply_overrides(tiny(blobs_data, tmp_path / "b", deterministic=True),
                                       {"train.max_steps": 6}), resume=first.path)
    assert resumed.path == first.path and resumed.status["step"] == 6
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    assert a["method"].keys() == b["method"].keys()
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=0, atol=1e-6, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"], rtol=0, atol=1e-6)
    assert [r["step"] for r in resumed.metrics() if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    # the losses logged after resuming match the straight run's
    la = [r["loss"] for r in straight.metrics() if r["kind"] == "step"]
    lb = [r["loss"] for r in resumed.metrics() if r["kind"] == "step"]
    assert lb == pytest.approx(la, abs=1e-5)


def test_resume_rejects_a_different_method(blobs_data, tmp_path):
    run = pretrain(tiny(blobs_data, tmp_path, max_steps=1))
    with pytest.raises(ConfigError, match="config.method differs"):
        pretrain(tiny(blobs_data, tmp_path, method="simclr"), resume=run.path)


def test_nan_loss_fails_the_run_and_keeps_a_loadable_checkpoint(blobs_data, tmp_path, monkeypatch):
    from workbench.methods.byol import BYOL

    real = BYOL.training_step

    def poisoned(self, batch, progress):
        out = real(self, batch, progress)
        if progress.step == 5:  # second epoch, after the epoch-1 checkpoint
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BYOL, "training_step", poisoned)
    cfg = tiny(blobs_data, tmp_path)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 5"):
        pretrain(cfg)
    from workbench.runs import list_runs

    (run,) = list_runs(tmp_path)
    status = run.status
    assert status["status"] == "failed" and status["step"] == 5 and "nan" in status["error"]
    ckpt = torch.load(run.checkpoint_path("last"), weights_only=True)
    assert ckpt["step"] == 5  # the state before the diverging update
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    backbone = load_trained(run).backbone
    assert torch.isfinite(backbone(torch.randn(2, 3, 16, 16))).all()
    assert max(r["step"] for r in run.metrics()) == 5


def test_exception_marks_the_run_failed_and_is_reraised(blobs_data, tmp_path, monkeypatch):
    from workbench.methods.byol import BYOL

    def broken(self, batch, progress):
        raise RuntimeError("boom in the method")

    monkeypatch.setattr(BYOL, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom in the method"):
        pretrain(tiny(blobs_data, tmp_path))
    from workbench.runs import list_runs

    (run,) = list_runs(tmp_path)
    assert run.status["status"] == "failed" and "boom in the method" in run.status["error"]
    assert "broken" in run.status["traceback"]


def test_start_pretrain_runs_in_the_background_and_stops_on_request(blobs_data, tmp_path):
    events = []

    class Monitor:
        def on_start(self, run, info):
            events.append(("start", info["total_steps"]))

        def on_step(self, run, record):
            events.append(("step", record["step"]))
            if record["step"] == 2:
                handle.stop()

        def on_end(self, run, status):
            events.append(("end", status["status"]))

    handle = start_pretrain(tiny(blobs_data, tmp_path, epochs=50), callbacks=[Monitor()])
    assert handle.run.path.is_dir()  # the run folder exists as soon as start_pretrain returns
    run = handle.wait(timeout=120)
    assert handle.done()
    assert run.status["status"] == "completed" and run.status["stopped_early"] and run.status["step"] == 2
    assert events == [("start", 200), ("step", 1), ("step", 2), ("end", "completed")]
    assert torch.load(run.checkpoint_path("last"), weights_only=True)["step"] == 2
