"""NEPA: the shift-by-one negative-cosine loss by hand, the stop-gradient on the target, the causal mask (on the plain
ViT and on the paper's transformer with RoPE, QK-norm and LayerScale), the causal pass and the evaluation's
bidirectional pass sharing one RoPE, and tiny runs whose next-embedding loss falls (their kNN read-out does not beat
random init at that budget; see below)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from tests.methods.helpers import progress, tiny_vit, views
from workbench.methods.base import Batch, build_method
from workbench.methods.nepa import NEPA, nepa_loss
from workbench.models.backbones import build_backbone


def paper_vit(depth: int = 2, awake: bool = True):
    """The tiny ViT with the paper's transformer (NEPA.model_options). LayerScale starts at 1e-5, where the blocks
    barely touch the tokens (a leak through the mask would be ~1e-5); ``awake`` sets its gammas to 1, as a trained
    model's may be, so that the attention, and with it the mask and RoPE, shows in the outputs."""
    bb = build_backbone("vit_tiny", 16, 3, patch_size=4, depth=depth, **NEPA.model_options)
    if awake:
        with torch.no_grad():
            for blk in bb.vit.blocks:
                blk.ls1.gamma.fill_(1.0)
                blk.ls2.gamma.fill_(1.0)
    return bb


BACKBONES = {"plain": tiny_vit, "paper": paper_vit}


def test_loss_shift_by_one_hand_value():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # embeddings at t = 0, 1, 2
    o = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [9.0, 9.0]]])  # outputs; the last one predicts nothing
    # o0 -> e1: cos = 1; o1 -> e2: cos = 1/sqrt(2)
    assert nepa_loss(e, o).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    # position-wise: o0.e0 = 0, o1.e1 = 0, o2.e2 = 1
    assert nepa_loss(e, o, shift=0).item() == pytest.approx(-1 / 3, rel=1e-6)


@pytest.mark.parametrize("transformer", ["plain", "paper"])
def test_no_gradient_flows_into_the_target(transformer):
    e = torch.randn(2, 5, 4, requires_grad=True)
    o = torch.randn(2, 5, 4, requires_grad=True)
    nepa_loss(e, o).backward()
    assert e.grad is None and o.grad.abs().sum() > 0
    # in the method: the gradient equals the one with the target replaced by a constant copy of itself
    m = build_method("nepa", BACKBONES[transformer]()).eval()  # eval: the same RoPE scale in both passes
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


@pytest.mark.parametrize("transformer", ["plain", "paper"])
def test_causal_outputs_ignore_later_patches(transformer):
    m = build_method("nepa", BACKBONES[transformer]()).eval()
    imgs = views(1, b=2)[0]
    later = imgs.clone()
    later[:, :, 12:, 12:] += 5.0  # the last patch (row-major) only
    emb, out = m.causal_forward(imgs)
    emb2, out2 = m.causal_forward(later)
    assert emb.shape == out.shape == (2, 17, 192)
    torch.testing.assert_close(out2[:, :-1], out[:, :-1])
    assert not torch.allclose(out2[:, -1], out[:, -1])
    torch.testing.assert_close(emb[:, 0], m.backbone.vit.cls_token[0].expand(2, -1))


def test_the_paper_transformer_is_built_and_the_plain_one_warns():
    with pytest.warns(UserWarning, match="plain-ViT ablation"):
        build_method("nepa", tiny_vit())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build_method("nepa", paper_vit(awake=False))
    blk, vit = m.backbone.vit.blocks[0], m.backbone.vit
    assert vit.pos_embed is None and m.backbone.rope is not None  # positions from RoPE only
    assert blk.attn.q_norm.normalized_shape == (64,) and blk.attn.q_norm.weight is None
    assert torch.equal(blk.ls1.gamma, torch.full((192,), 1e-5))
    imgs = views(1, b=2)[0]
    emb, _ = m.eval().causal_forward(imgs)
    torch.testing.assert_close(emb[:, 1:], vit.patch_embed(imgs))  # the targets: patch embeddings, no positions


def test_the_causal_pass_and_the_evaluation_share_the_rope():
    # one block: the last token attends to every token in both passes, so its output is the same iff both
    # passes apply the same positions (a causal pass without RoPE, or another RoPE, would differ)
    m = build_method("nepa", paper_vit(depth=1)).eval()
    imgs = views(1, b=2)[0]
    with torch.no_grad():
        _, causal = m.causal_forward(imgs)
        bidirectional = m.backbone.forward_features(imgs).tokens
        torch.testing.assert_close(causal[:, -1], bidirectional[:, -1], rtol=1e-4, atol=1e-5)
        assert (causal[:, 1] - bidirectional[:, 0]).abs().max() > 1e-3  # earlier tokens: the mask matters
        m.backbone.rope.temperature = 10.0  # another RoPE in the causal pass only
        m.backbone.rope.reset_parameters()
        _, other = m.causal_forward(imgs)
    assert (other[:, -1] - bidirectional[:, -1]).abs().max() > 1e-3


def test_the_paper_transformer_lowers_the_loss_in_a_few_steps():
    import workbench.data as data_pkg
    from workbench.augment import normalize

    data = data_pkg.load("shapes", split="train", size=16, n=32, seed=0)
    imgs = normalize(data.images, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    m = build_method("nepa", paper_vit(awake=False)).train()  # at init; training mode: RoPE rescaling on
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    losses = []
    for step in range(15):
        loss = m.training_step(Batch([imgs], 1), progress(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1, losses


# Measured (tests.methods.tiny_runs sizes, 2 epochs, seeds 0/1/2): loss -0.371/-0.327/-0.350 -> -0.611/-0.616/-0.618,
# kNN 0.156/0.137/0.156 against 0.184 at random init (-0.027/-0.047/-0.027). The evaluation reads the CLS token of a
# bidirectional pass, which the causal objective never trains (it attends only to itself), so at this budget the
# kNN read-out does not beat random init; the test asserts what does hold: the next-embedding loss falls (first
# to last logged loss fell by 0.24 to 0.29 on the three seeds).
# (At test_training's 2000-image budget seed 0 gave kNN 0.196 against 0.152.)
# The paper's transformer (NEPA.model_options), same sizes, seeds 0/1/2: loss -0.409/-0.352/-0.391 ->
# -0.487/-0.461/-0.486 (a drop of 0.08 to 0.11), kNN 0.129/0.160/0.148 against 0.148 at random init. LayerScale
# starting at 1e-5 is what slows it at this budget: without it (layer_scale None, RoPE and QK-norm kept) the loss
# fell -0.371/-0.329/-0.356 -> -0.633/-0.606/-0.627; without the RoPE rescaling the losses were the same to 3 decimals.
NEPA_LOSS_DROP = {"plain": 0.15, "paper": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("transformer", ["plain", "paper"])
def test_tiny_run_learns_to_predict_the_next_embedding(transformer, tmp_path, monkeypatch):
    from tests.methods import tiny_runs

    if transformer == "plain":  # a run gets the paper's transformer by default (PretrainConfig); this opts out
        plain = {"pos_embed": True, "rope_theta": None, "rope_rescale": None, "qk_norm": False, "layer_scale": None}
        vit = {**tiny_runs.VIT, "options": {**tiny_runs.VIT["options"], **plain}}
        monkeypatch.setattr(tiny_runs, "VIT", vit)
    r = tiny_runs.tiny_knn_gain("nepa", {}, str(tmp_path))
    losses = r["losses"]
    first, last = losses[0], sum(losses[-3:]) / 3
    print(f"\nnepa ({transformer}): loss {first:.3f} -> {last:.3f}; kNN {r['knn_pretrained']:.3f} vs random init "
          f"{r['knn_random_init']:.3f}")
    assert last < first - NEPA_LOSS_DROP[transformer], losses


def test_a_nepa_run_builds_the_papers_transformer_unless_told_otherwise():
    from workbench.train import DataConfig, ModelConfig, PretrainConfig

    def options(method="nepa", backbone="vit_tiny", given=None):
        cfg = PretrainConfig(method=method, data=DataConfig(name="shapes", image_size=32),
                             model=ModelConfig(backbone, {"patch_size": 8, **(given or {})}), out="unused")
        return cfg.model.options

    paper = options()
    assert paper == {**NEPA.model_options, "patch_size": 8}  # recorded in the run's config: checkpoints rebuild it
    plain = {"pos_embed": True, "rope_theta": None, "rope_rescale": None, "qk_norm": False, "layer_scale": None}
    assert options(given=plain) == {**NEPA.model_options, **plain, "patch_size": 8}  # the run's own options win
    assert options(method="mae") == {"patch_size": 8}  # other methods keep the plain ViT
    again = PretrainConfig(method="nepa", data=DataConfig(name="shapes", image_size=32),
                           model=ModelConfig("vit_tiny", paper), out="unused")
    assert again.model.options == paper  # merging is idempotent (a reloaded config stays the same)


def test_a_nepa_run_recorded_on_the_plain_vit_still_rebuilds_its_method(tmp_path):
    """A run recorded before NEPA's paper transformer became its default holds only the plain options: loading its
    method must rebuild the plain ViT its weights belong to, not gain the new defaults."""
    import workbench.data as data_pkg
    from workbench.data import base
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
    from workbench.train.checkpoint import config_hash
    from workbench.trained import load_trained

    plain = {"pos_embed": True, "rope_theta": None, "rope_rescale": None, "qk_norm": False, "layer_scale": None}
    images = data_pkg.load("shapes", split="train", size=16, n=32, seed=0)
    base._REGISTRY["shapes_nepa_old"] = lambda split="train", **_: images
    try:
        with pytest.warns(UserWarning, match="plain-ViT ablation"):
            run = pretrain(PretrainConfig(method="nepa", data=DataConfig(name="shapes_nepa_old"),
                                          model=ModelConfig("vit_tiny", {"depth": 1, "patch_size": 4, **plain}),
                                          train=TrainConfig(epochs=1, batch_size=16, knn_every=0, progress="off",
                                                            device="cpu"),
                                          out=str(tmp_path)))
    finally:
        base._REGISTRY.pop("shapes_nepa_old", None)
    import json

    path, config_path = run.path / "checkpoints" / "last.pt", run.path / "config.json"
    ckpt, config = torch.load(path, weights_only=False), json.loads(config_path.read_text())
    for record in (ckpt["config"]["model"]["options"], ckpt["info"]["backbone_options"],
                   ckpt["identity"]["backbone_options"], config["model"]["options"]):
        for key in {*plain, *NEPA.model_options}:  # what an older version recorded: patch_size and depth only
            record.pop(key, None)
        assert record == {"depth": 1, "patch_size": 4}
    ckpt["identity"]["config_hash"] = config_hash(ckpt["config"])  # as the older version computed it
    torch.save(ckpt, path)
    config_path.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="plain-ViT ablation"):
        method = load_trained(path).method()
    assert method.backbone.rope is None and method.backbone.vit.pos_embed is not None
