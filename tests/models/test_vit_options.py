"""The ViT's transformer options (2-D RoPE, QK-norm, LayerScale, no absolute positions): RoPE against the official
NEPA/DINOv3 formula written out by hand, its relative-position property, the options wired into every forward, and
a checkpoint that rebuilds the same model from its recorded options."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config import ConfigError, from_dict
from workbench.models.backbones import RopeAttention, ViTOptions, build_backbone
from workbench.train.config import ModelConfig

PAPER = {"pos_embed": False, "rope_theta": 100.0, "qk_norm": True, "qk_norm_affine": False, "layer_scale": 1e-5}


def _vit(depth: int = 2, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_tiny", 16, 3, patch_size=4, depth=depth, **options).eval()


def _official_sin_cos(h: int, w: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SihanXU/nepa ``ViTNepaRopePositionEmbedding`` (eval mode), written out: patch centres in [-1, 1],
    inverse frequencies theta ** -(4 i / head_dim), angles 2 pi c f for y then x, tiled twice -> [h * w, head_dim]."""
    ys, xs = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1 for n in (h, w))
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    inv_freq = 1.0 / theta ** (torch.arange(head_dim // 4, dtype=torch.float64) * 4 / head_dim)
    angles = (2 * math.pi * coords[:, :, None] * inv_freq).flatten(1)
    angles = torch.cat([angles, angles], -1)
    return angles.sin(), angles.cos()


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """The official ``apply_rotary_pos_emb`` on patch tokens: x cos + rotate_half(x) sin."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def test_rope_sin_cos_match_the_official_formula():
    bb = _vit(**PAPER)
    sin, cos = bb.rope_embed().double().chunk(2, -1)  # [16, 64] each
    want_sin, want_cos = _official_sin_cos(4, 4, 64, 100.0)
    torch.testing.assert_close(sin, want_sin, rtol=0, atol=1e-6)
    torch.testing.assert_close(cos, want_cos, rtol=0, atol=1e-6)
    assert abs(float(cos[0, 0]) - math.cos(2 * math.pi * -0.75)) < 1e-6  # patch (0, 0): y = -0.75, lowest period 1


def test_rope_attention_equals_attention_written_out_by_hand():
    bb = _vit(depth=1, **PAPER)
    attn = bb.vit.blocks[0].attn
    x = torch.randn(2, 17, 192, generator=torch.Generator().manual_seed(1))
    for causal in (False, True):
        got = attn(x, is_causal=causal, rope=bb.rope_embed())
        q, k, v = attn.qkv(x).reshape(2, 17, 3, 3, 64).permute(2, 0, 3, 1, 4).double()
        q, k = F.layer_norm(q, (64,), eps=1e-6), F.layer_norm(k, (64,), eps=1e-6)  # QK-norm, no affine
        sin, cos = _official_sin_cos(4, 4, 64, 100.0)
        q = torch.cat([q[:, :, :1], _rotate(q[:, :, 1:], sin, cos)], 2)  # the CLS token is not rotated
        k = torch.cat([k[:, :, :1], _rotate(k[:, :, 1:], sin, cos)], 2)
        logits = q @ k.transpose(-2, -1) / 8.0
        if causal:
            logits = logits.masked_fill(torch.ones(17, 17, dtype=torch.bool).triu(1), float("-inf"))
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 17, 192).float()
        torch.testing.assert_close(got, attn.proj(out), rtol=1e-4, atol=1e-5)


def test_rope_scores_depend_only_on_the_position_difference():
    from timm.layers import apply_rot_embed_cat

    bb = _vit(**PAPER)
    rope = bb.rope_embed()  # the 4 x 4 grid, raster order
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    qs = apply_rot_embed_cat(q.expand(16, 64), rope.double(), half=True)  # q at every position
    ks = apply_rot_embed_cat(k.expand(16, 64), rope.double(), half=True)
    scores = qs @ ks.T  # [i, j]: q at position i against k at position j
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i in range(16):
        for j in range(16):
            by_offset.setdefault((j // 4 - i // 4, j % 4 - i % 4), []).append(float(scores[i, j]))
    for offset, values in by_offset.items():
        assert max(values) - min(values) < 1e-5, (offset, values)  # same offset, same score (float32 sin/cos)
    firsts = sorted(v[0] for v in by_offset.values())
    assert min(b - a for a, b in zip(firsts, firsts[1:])) > 1e-4  # and other offsets, other scores
    torch.testing.assert_close(scores.diagonal(), torch.full((16,), float(q @ k), dtype=torch.float64))


def test_the_bidirectional_forward_applies_rope():
    # without any positions a ViT is blind to the patch order (CLS output unchanged by a permutation of patches);
    # with RoPE the normal forward (kNN, linear probe) sees the order, i.e. applies the positions
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    swapped = x.clone()
    swapped[..., :4, :4], swapped[..., 12:, 12:] = x[..., 12:, 12:], x[..., :4, :4]  # swap patches 0 and 15
    blind, rope = _vit(pos_embed=False), _vit(pos_embed=False, rope_theta=100.0)
    with torch.no_grad():
        torch.testing.assert_close(blind(swapped), blind(x), rtol=1e-4, atol=1e-5)
        assert (rope(swapped) - rope(x)).abs().max() > 1e-3
        # a subset of patches keeps its grid positions: encoding the patches in another order permutes the tokens
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(3)).expand(2, -1)
        full, permuted = rope.forward_tokens(x), rope.forward_tokens(x, perm)
        torch.testing.assert_close(permuted[:, 1:], full[:, 1:][:, perm[0]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(permuted[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)


def test_attention_maps_and_the_unfused_path_agree_with_the_fused_one():
    bb = _vit(**PAPER)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fused = bb.forward_features(x).tokens
        maps = bb.attention_maps(x)  # the unfused path, read at its softmax
        rope, tokens = bb.rope_embed(), torch.cat([*bb._prefix(2), bb.patchify_embed(x)], 1)
        causal = bb.run_blocks(tokens, rope, is_causal=True)
        for blk in bb.vit.blocks:
            blk.attn.fused_attn = False
        torch.testing.assert_close(bb.forward_features(x).tokens, fused, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb.run_blocks(tokens, rope, is_causal=True), causal, rtol=1e-4, atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, 17))


def test_qk_norm_and_layer_scale_are_built_and_wired():
    bb = _vit(depth=1, **PAPER)
    blk = bb.vit.blocks[0]
    assert isinstance(blk.attn, RopeAttention) and bb.vit.pos_embed is None
    assert isinstance(blk.attn.q_norm, torch.nn.LayerNorm) and blk.attn.q_norm.normalized_shape == (64,)
    assert blk.attn.q_norm.weight is None and blk.attn.k_norm.weight is None  # the paper's pre-training: no affine
    assert _vit(qk_norm=True).vit.blocks[0].attn.k_norm.weight.shape == (64,)  # qk_norm_affine (default) on
    assert torch.equal(blk.ls1.gamma, torch.full((192,), 1e-5)) and torch.equal(blk.ls2.gamma, blk.ls1.gamma)
    # LayerScale at init: the block adds 1e-5 times each branch
    x = torch.randn(2, 17, 192, generator=torch.Generator().manual_seed(5))
    rope = bb.rope_embed()
    with torch.no_grad():
        h = x + 1e-5 * blk.attn(blk.norm1(x), rope=rope)
        torch.testing.assert_close(bb.run_blocks(x, rope), h + 1e-5 * blk.mlp(blk.norm2(h)), rtol=1e-5, atol=1e-6)
        # QK-norm: scaling the query projection changes nothing with it, the attention without it
        for model in (bb, _vit(depth=1, **{**PAPER, "qk_norm": False})):
            a = model.vit.blocks[0].attn
            before = a(x, rope=rope)
            a.qkv.weight[:192] *= 10
            a.qkv.bias[:192] *= 10
            moved = (a(x, rope=rope) - before).abs().max() / before.abs().max()
            assert (moved < 1e-5) if model is bb else (moved > 1e-2), moved
        out = bb.run_blocks(x, rope)
    assert out.shape == x.shape


def test_a_plain_timm_block_call_is_refused_with_rope():
    bb = _vit(**PAPER)
    with pytest.raises(RuntimeError, match="run_blocks"):
        bb.vit.blocks[0](torch.randn(1, 17, 192))
    with pytest.raises(ValueError, match="rope_embed"):
        bb.run_blocks(torch.randn(1, 17, 192))


def test_options_are_validated():
    with pytest.raises(ConfigError, match="rope_rescale.*needs RoPE"):
        ViTOptions(rope_rescale=2.0)
    with pytest.raises(ConfigError, match="layer_scale"):
        ViTOptions(layer_scale=0.0)
    with pytest.raises(ConfigError, match="qk_norm"):
        ViTOptions(qk_norm="yes")
    assert _vit().rope is None and _vit().vit.pos_embed is not None  # the defaults: timm's plain ViT


def test_rope_rescale_draws_a_scale_in_training_only():
    bb = _vit(**PAPER, rope_rescale=2.0)
    assert torch.equal(bb.rope_embed(), bb.rope_embed())  # eval: the fixed grid
    bb.train()
    torch.manual_seed(0)
    a, b = bb.rope_embed(), bb.rope_embed()
    assert not torch.equal(a, b)
    # one factor s in [1/2, 2] for both axes: read it off the (0, 0) patch's longest period (no wrap-around),
    # angle 2 pi c s / period with c = -0.75 on both axes; sin at y's index 15, x's 31, cos 64 further
    period = 100.0 ** (60 / 64)
    for emb in (a, b):
        s_y, s_x = (float(torch.atan2(emb[0, i], emb[0, 64 + i])) / (2 * math.pi * -0.75 / period) for i in (15, 31))
        assert 0.5 - 1e-4 <= s_y <= 2.0 + 1e-4 and s_x == pytest.approx(s_y, rel=1e-4)


def test_checkpoint_round_trip_rebuilds_the_options(tmp_path):
    options = {"patch_size": 4, "depth": 2, **PAPER, "rope_rescale": 2.0}
    model = from_dict(ModelConfig, json.loads(json.dumps({"backbone": "vit_tiny", "options": options})))
    bb = build_backbone("vit_tiny", 16, 3, **options).eval()
    with torch.no_grad():
        for p in bb.parameters():  # move away from the init, so a rebuild at init would not pass
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"options": model.options, "state": bb.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    again = build_backbone(model.backbone, 16, 3, **saved["options"]).eval()
    again.load_state_dict(saved["state"])  # strict: the same parameters
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), bb(x))
    assert again.rope is not None and again.vit.pos_embed is None
    with pytest.raises(RuntimeError, match="Unexpected key|Missing key"):
        build_backbone("vit_tiny", 16, 3, patch_size=4, depth=2).load_state_dict(saved["state"])
