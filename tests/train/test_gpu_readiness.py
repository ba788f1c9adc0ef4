"""What the first GPU run relies on, checked on a CPU (issue 19): no host syncs in the views and losses (counted with
the same HostSyncCounter as benchmarks/step_profile.py), float32 where bf16 would round what a loss exponentiates,
per-rank random streams, and SwAV's queue across world sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.methods.helpers import progress, tiny_cnn, tiny_vit, views
from workbench.augment import generate_views, make_preset
from workbench.device import HostSyncCounter
from workbench.methods import Batch, build_method

SMALL = {"simclr": {"proj_hidden_dim": 32, "proj_output_dim": 16},
         "mocov3": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
         "byol": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
         "simsiam": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8},
         "barlow_twins": {"proj_hidden_dim": 32, "proj_output_dim": 16},
         "vicreg": {"proj_hidden_dim": 32, "proj_output_dim": 16},
         "swav": {"hidden_dim": 32, "out_dim": 16, "num_prototypes": 20, "queue_length": 12, "queue_start_epoch": 0},
         "dino": {"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64},
         "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
         "ijepa": {"predictor_dim": 24, "predictor_depth": 1, "predictor_heads": 2}}
VIT = {"dino", "mae", "ijepa"}


# ------------------------------------------------------------------------------------------ host syncs
@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "mae"])
def test_views_make_no_host_sync(name):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    config = make_preset(name, 32, (0.5,) * 3, (0.25,) * 3)
    g = torch.Generator().manual_seed(0)
    with HostSyncCounter() as first:
        generate_views(images, config, g, torch.Generator().manual_seed(1))
    assert first.h2d <= 2  # the normalisation's mean and std, copied to the device on first use ...
    with HostSyncCounter() as c:
        vb = generate_views(images, config, g, torch.Generator().manual_seed(1))
    assert c.ops > 50 and len(vb.views) >= 1  # it counted the augmentation's ops
    assert c.syncs == 0 and c.h2d == 0, c.sites  # ... and not again


def test_the_counter_sees_the_syncs_it_names():
    x = torch.randn(6)
    with HostSyncCounter() as c:
        x[x > 0].sum()  # boolean-mask indexing: a data-dependent shape
        bool(x.sum() > 0)
        x.nonzero()
        x.tolist()
        torch.tensor([1.0, 2.0])
    assert c.by_kind == {"bool-index": 1, "item/bool": 1, "nonzero": 1, ".tolist()": 1, "torch.tensor(data)": 1}
    assert c.syncs == 4 and c.h2d == 1


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_training_step_makes_no_data_dependent_host_sync(name):
    backbone = tiny_vit() if name in VIT else tiny_cnn()
    method = build_method(name, backbone, SMALL[name])
    n_local = 2 if name == "dino" else 0
    batch = Batch(views(n_global=1 if name in ("mae", "ijepa") else 2, n_local=n_local, b=6),
                  1 if name in ("mae", "ijepa") else 2)
    for step in (0, 4, 5):  # SwAV: the queue fills at step 0 and is full (joins Sinkhorn) from step 4
        with HostSyncCounter() as c:
            out = method.training_step(batch, progress(step=step))
            out.loss.backward()
            method.update_teacher(progress(step=step))
        # I-JEPA's context count is a tensor shape (the official collator truncates to the batch minimum): one read
        allowed = 1 if name == "ijepa" else 0
        assert c.syncs == allowed, (step, c.sites)


# ------------------------------------------------------------------------------------------ fp32 islands
def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_dino_weight_normalised_layer_is_float32_under_bf16_autocast():
    from workbench.methods.dino import DINOHead

    torch.manual_seed(0)
    head = DINOHead(16, 512, hidden_dim=32, bottleneck_dim=64)
    head.mlp = nn.Identity()  # the piece under test: normalise, then the weight-normalised layer
    x = torch.randn(32, 64)
    ref = head(x)
    with _bf16():
        out = head(x)
    assert out.dtype == torch.float32
    # bf16 would round each cosine by up to ~4e-3, i.e. a logit error of ~0.1 after the teacher's / 0.04
    torch.testing.assert_close(out / 0.04, ref / 0.04, rtol=0, atol=1e-4)


def test_simsiam_direct_pred_correlation_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    m = build_method("simsiam", tiny_cnn(), {"proj_hidden_dim": 32, "proj_output_dim": 16, "direct_pred": True})
    seen = []
    m.projector.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    with _bf16():
        m.training_step(Batch(views(b=8), 2), progress())
    z = torch.cat(seen).float()
    assert m.corr.dtype == torch.float32
    torch.testing.assert_close(m.corr, z.T @ z / z.shape[0], rtol=1e-5, atol=1e-6)


def test_swav_queue_scores_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    m = build_method("swav", tiny_cnn(), SMALL["swav"])
    m.queue.push(nn.functional.normalize(torch.randn(2, m.queue.length, 16), dim=-1))
    scores = torch.randn(6, 20) * 0.3
    ref = m._codes(0, scores, full=True)
    with _bf16():
        out = m._codes(0, scores, full=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_losses_under_bf16_autocast_stay_close_to_float32(name):
    """The whole step under bf16 autocast: the loss moves by the bf16 rounding of the backbone and heads only."""
    torch.manual_seed(0)
    m = build_method(name, tiny_vit() if name == "dino" else tiny_cnn(), SMALL[name])
    m.eval()  # no centre / queue update between the two passes
    batch = Batch(views(b=6), 2)
    ref = m.training_step(batch, progress()).loss
    with _bf16():
        out = m.training_step(batch, progress()).loss
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------ ranks, resume
def test_drop_path_masks_differ_between_ranks_and_repeat_per_step():
    from workbench.models.backbones import build_backbone
    from workbench.train.engine import seed_step

    vit = build_backbone("vit_tiny", 16, 3, patch_size=4, depth=4, drop_path_rate=0.5).train()
    x = torch.randn(8, 3, 16, 16)

    def forward(rank: int, step: int) -> torch.Tensor:
        seed_step(0, rank, step)
        with torch.no_grad():
            return vit(x)

    assert torch.equal(forward(0, 3), forward(0, 3))  # addressable by (seed, rank, step): resume repeats it
    assert not torch.allclose(forward(0, 3), forward(1, 3))  # each rank its own drop-path masks
    assert not torch.allclose(forward(0, 3), forward(0, 4))


@pytest.mark.parametrize("saved_world, load_world", [(2, 1), (1, 2)])
def test_swav_queue_state_loads_under_another_world_size(monkeypatch, saved_world, load_world):
    import workbench.methods.swav as swav

    monkeypatch.setattr(swav, "world_size", lambda: saved_world)
    torch.manual_seed(0)
    saver = build_method("swav", tiny_cnn(), SMALL["swav"])  # queue_length 12: 12 // world rows per rank
    for step in range(3):  # 3 steps of 6: the queue (6 or 12 rows) is full
        saver.training_step(Batch(views(b=6, seed=step), 2), progress(step=step))
    state = saver.state_dict()
    assert int(state["queue.fill"]) == 12 // saved_world

    monkeypatch.setattr(swav, "world_size", lambda: load_world)
    loader = build_method("swav", tiny_cnn(), SMALL["swav"])
    loader.load_state_dict(state)
    rows = min(12 // saved_world, 12 // load_world)
    assert loader.queue.length == 12 // load_world
    torch.testing.assert_close(loader.queue.newest_first(), saver.queue.newest_first()[:, :rows])  # newest, in order
    assert loader.queue._fill == rows and int(loader.queue.fill) == rows
    out = loader.training_step(Batch(views(b=6, seed=9), 2), progress(step=3))  # trains on
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("with_fill", [True, False])
def test_swav_checkpoint_from_before_the_shared_queue_loads(with_fill):
    """The older layout: buffer ``queue`` [2, L, d] newest first, ``queue_fill`` (older still: none, rows counted)."""
    torch.manual_seed(0)
    m = build_method("swav", tiny_cnn(), SMALL["swav"])
    m.training_step(Batch(views(b=6), 2), progress())
    m.training_step(Batch(views(b=3, seed=1), 2), progress(step=1))
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("queue.")}
    state["queue"] = torch.zeros_like(m.queue.rows)
    state["queue"][:, :9] = m.queue.newest_first()
    if with_fill:
        state["queue_fill"] = torch.tensor(9)
    fresh = build_method("swav", tiny_cnn(), SMALL["swav"])
    fresh.load_state_dict(state)
    assert fresh.queue._fill == 9 and fresh.queue._ptr == 9
    torch.testing.assert_close(fresh.queue.newest_first(), m.queue.newest_first())


def test_resume_restores_only_the_rng_state_this_process_has():
    from workbench.train.checkpoint import apply_rng

    state = torch.get_rng_state()
    torch.rand(3)
    # an older checkpoint's list of CUDA states for 8 GPUs, resumed on a CPU (or on fewer GPUs): no IndexError
    apply_rng({"torch": state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
