"""Attention views of a ViT with register tokens (DINOv2-reg): the maps are timm's real attention over CLS, registers
and patches, and every patch view reads the CLS row at the patch columns only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.inspect import attention as A
from workbench.inspect.patches import patch_tokens
from workbench.models import build_backbone


@pytest.fixture(scope="module")
def reg_vit():
    torch.manual_seed(0)
    bb = build_backbone("timm:vit_small_patch14_reg4_dinov2", 28, depth=2, patch_size=7).eval()
    torch.nn.init.normal_(bb.vit.reg_token, std=1.0)  # registers that draw attention, so a wrong slice shows
    return bb


def _reference_maps(vit, x: torch.Tensor) -> list[torch.Tensor]:
    """softmax(q k^T / sqrt(d)) per block, from the blocks' own qkv on timm's token sequence (CLS, 4 registers,
    16 patches), computed here without the workbench's hooks."""
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    maps = []
    for block in vit.blocks:
        attn = block.attn
        b, t, d = tokens.shape
        qkv = attn.qkv(block.norm1(tokens)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))
        tokens = block(tokens)
    return maps


def test_attention_maps_are_timms_attention_over_prefix_and_patches(reg_vit):
    x = torch.randn(2, 3, 28, 28)
    maps = A.attention_maps(reg_vit, x)
    assert [m.shape for m in maps] == [(2, 6, 21, 21)] * 2
    with torch.no_grad():
        ref = _reference_maps(reg_vit.vit, x)
    for got, want in zip(maps, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(m.fused_attn for m in reg_vit.vit.modules() if hasattr(m, "fused_attn"))  # switched back on


def _heat(values: torch.Tensor) -> torch.Tensor:
    """Per-patch values [B, 16] as the 28 px heat map the views show: 7x7 blocks, min-max scaled per image."""
    up = F.interpolate(values.reshape(-1, 1, 4, 4), size=(28, 28), mode="nearest")[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return (up - lo) / (hi - lo)


def test_patch_views_skip_the_prefix_tokens(reg_vit):
    x = torch.randn(2, 3, 28, 28)
    maps = A.attention_maps(reg_vit, x)
    assert A.num_prefix_tokens(maps, reg_vit.grid) == 5
    cls_to_patches = maps[-1][:, :, 0, 5:].mean(1)  # [B, 16]: CLS query, patch keys
    torch.testing.assert_close(A.head_attention(maps, -1, "mean", num_prefix=5), cls_to_patches)
    torch.testing.assert_close(torch.from_numpy(A.attention_image(maps, reg_vit.grid, 28, "attention")),
                               _heat(cls_to_patches))
    rollout = A.attention_rollout(maps)  # [B, 21, 21]: registers stay in the product, the patch columns are read
    torch.testing.assert_close(torch.from_numpy(A.attention_image(maps, reg_vit.grid, 28, "rollout")),
                               _heat(rollout[:, 0, 5:]))
    with pytest.raises(ValueError, match="do not fill a 4x4 grid"):  # the old CLS-only slice would take registers
        A.to_grid(A.head_attention(maps, -1, "mean"), reg_vit.grid)
    tokens, grid = patch_tokens(reg_vit, x)
    assert grid == (4, 4) and tokens.shape == (2, 16, 384)
    with torch.no_grad():
        torch.testing.assert_close(tokens, reg_vit.vit.forward_features(x)[:, 5:])


def test_token_norms_are_the_token_norms_of_the_models_own_forward(reg_vit):
    x = torch.randn(3, 3, 28, 28)
    n = A.token_norms(reg_vit, x)  # the residual stream after the last block (the final norm's input)
    out = A.token_norms(reg_vit, x, where="output")  # after the final norm
    vit = reg_vit.vit
    with torch.no_grad():  # timm's own modules, no hook: [3, 21] norms (CLS, 4 registers, 16 patches)
        ref = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))).norm(dim=-1)
        ref_out = vit.forward_features(x).norm(dim=-1)
        own = reg_vit.forward_features(x).tokens.norm(dim=-1)  # the workbench's forward: the 16 output patches
    assert n.patches.shape == (3, 4, 4) and n.registers.shape == (3, 4) and n.cls.shape == (3,)
    torch.testing.assert_close(n.patches, ref[:, 5:].reshape(3, 4, 4))
    torch.testing.assert_close(n.registers, ref[:, 1:5])
    torch.testing.assert_close(n.cls, ref[:, 0])
    torch.testing.assert_close(out.patches, ref_out[:, 5:].reshape(3, 4, 4))
    torch.testing.assert_close(out.patches.reshape(3, 16), own)
    torch.testing.assert_close(out.registers, ref_out[:, 1:5])
    with pytest.raises(ValueError, match="where="):
        A.token_norms(reg_vit, x, where="middle")
    p = ref[:, 5:].double().flatten()
    assert n.threshold == pytest.approx(float(p.mean() + 3 * p.std()))
    assert n.outlier_fraction == pytest.approx(float((p > n.threshold).double().mean()))


def test_token_norms_without_registers_and_the_outlier_rule_by_hand():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 16, patch_size=4, depth=1).eval()
    x = torch.randn(2, 3, 16, 16)
    n = A.token_norms(vit, x)
    out = A.token_norms(vit, x, where="output")
    with torch.no_grad():
        torch.testing.assert_close(out.patches.reshape(2, 16), vit.forward_features(x).tokens.norm(dim=-1))
    # a fresh LayerNorm (gamma 1, beta 0) gives every output token norm sqrt(D): the outliers live before it
    torch.testing.assert_close(out.patches, torch.full((2, 4, 4), 192 ** 0.5), rtol=1e-4, atol=1e-4)
    assert float(n.patches.std()) > 0.01 and n.registers.shape == (2, 0) and n.cls is not None
    # 31 patch norms of 1 and one of 10: mean 41/32, unbiased std sqrt(78.46875 / 31) -> threshold 6.054, 1 outlier
    planted = torch.ones(2, 4, 4)
    planted[1, 2, 3] = 10.0
    t = A.TokenNorms(planted, torch.zeros(2, 0), None, A.outlier_threshold(planted))
    assert t.threshold == pytest.approx(41 / 32 + 3 * (78.46875 / 31) ** 0.5)
    assert t.outliers.nonzero().tolist() == [[1, 2, 3]] and t.outlier_fraction == pytest.approx(1 / 32)
    with pytest.raises(A.NotAViTError):
        A.token_norms(build_backbone("small_cnn", 16, width=4), x)
