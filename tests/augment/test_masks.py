"""MAE random patch masks and I-JEPA multi-block masks: ratios, index consistency, block geometry,
determinism under a seed."""
from __future__ import annotations

import math

import pytest
import torch

from workbench.augment import BlockMasks, PatchMask, multiblock_masks, random_patch_mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------- MAE
@pytest.mark.parametrize("L,ratio", [(64, 0.75), (196, 0.75), (49, 0.6), (16, 0.0)])
def test_patch_mask_ratio_and_index_consistency(L, ratio):
    B = 32
    m = random_patch_mask(B, L, ratio, _gen(1))
    assert isinstance(m, PatchMask)
    K = int(L * (1 - ratio))
    assert m.keep.shape == (B, K) and m.restore.shape == (B, L) and m.mask.shape == (B, L)
    assert m.keep.dtype == torch.int64 and m.restore.dtype == torch.int64
    assert torch.all(m.mask.sum(dim=1) == L - K)  # exact count per sample
    assert torch.all(m.mask.gather(1, m.keep) == 0)  # kept patches are unmasked
    # restore is the inverse permutation of the shuffle whose first K entries are keep
    shuffle = torch.argsort(m.restore, dim=1)
    assert torch.equal(shuffle[:, :K], m.keep)
    assert torch.equal(shuffle.gather(1, m.restore), torch.arange(L).expand(B, L))
    # the MAE decoder's unshuffle: tokens in shuffled order [kept, masked] -> original order
    tokens = torch.arange(L).expand(B, L).gather(1, shuffle)
    assert torch.equal(tokens.gather(1, m.restore), torch.arange(L).expand(B, L))
    assert torch.equal(m.mask, (m.restore >= K).float())


def test_patch_mask_is_random_per_sample_and_uniform():
    m = random_patch_mask(4000, 16, 0.75, _gen(2))
    assert len({tuple(sorted(k.tolist())) for k in m.keep[:50]}) > 40  # samples differ
    freq = m.mask.mean(dim=0)  # every position masked with probability 0.75
    assert float((freq - 0.75).abs().max()) < 0.04


def test_patch_mask_determinism_and_errors():
    a, b, c = (random_patch_mask(8, 64, 0.75, _gen(s)) for s in (3, 3, 4))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(2, 16, 1.0, _gen())
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(2, 4, 0.9, _gen())  # keeps nothing


# ----------------------------------------------------------------------------------------- I-JEPA
def _rows_cols(idx: torch.Tensor, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
    return idx // gw, idx % gw


def test_multiblock_shapes_and_block_geometry():
    gh = gw = 14
    B, T = 16, 4
    for seed in range(8):
        bm = multiblock_masks(B, (gh, gw), _gen(seed), num_targets=T)
        assert isinstance(bm, BlockMasks)
        assert bm.context.dtype == torch.int64 and bm.targets.dtype == torch.int64
        assert bm.targets.shape[:2] == (B, T)
        th, tw = bm.target_size
        assert bm.targets.shape[2] == th * tw
        # paper ranges: scale (0.15, 0.2) of the grid, aspect ratio (0.75, 1.5), up to integer rounding
        frac = th * tw / (gh * gw)
        assert 0.15 * 0.8 <= frac <= 0.2 * 1.2, (seed, bm.target_size)
        assert 0.75 / 1.5 <= th / tw <= 1.5 * 1.5, (seed, bm.target_size)
        ch, cw = bm.context_size
        assert ch == cw and 0.85 * 0.7 <= ch * cw / (gh * gw) <= 1.0
        # every target is a full th x tw rectangle inside the grid
        r, c = _rows_cols(bm.targets, gw)
        assert torch.all(r.max(2).values - r.min(2).values == th - 1)
        assert torch.all(c.max(2).values - c.min(2).values == tw - 1)
        assert torch.all(bm.targets.sort(dim=2).values == bm.targets)  # ascending, unique
        assert torch.all(bm.targets[:, :, 1:] > bm.targets[:, :, :-1])


def test_multiblock_context_excludes_targets_and_sits_in_one_block():
    gh = gw = 14
    bm = multiblock_masks(32, (gh, gw), _gen(5))
    ctx = bm.context
    assert torch.all(ctx[:, 1:] > ctx[:, :-1])  # ascending, unique
    B, L = ctx.shape[0], gh * gw
    in_ctx = torch.zeros(B, L, dtype=torch.bool).scatter_(1, ctx, True)
    in_tgt = torch.zeros(B, L, dtype=torch.bool).scatter_(1, bm.targets.flatten(1), True)
    assert not bool((in_ctx & in_tgt).any())  # targets are never visible to the context encoder
    r, c = _rows_cols(ctx, gw)
    ch, cw = bm.context_size
    assert torch.all(r.max(1).values - r.min(1).values < ch) and torch.all(c.max(1).values - c.min(1).values < cw)
    assert ctx.shape[1] > 4  # more than min_keep patches


def test_multiblock_truncates_to_batch_minimum():
    """Counts are equal within a batch: each context is the first Kc ids of its own mask, Kc the minimum."""
    bm = multiblock_masks(64, (8, 8), _gen(1), num_targets=4)
    counts = bm.context_mask.sum(dim=1)
    kc = int(counts.min())
    assert bm.context.shape == (64, kc)
    assert int(counts.max()) > kc  # the union of targets varies, so truncation happened for some samples
    for i in range(0, 64, 9):
        ids = bm.context_mask[i].nonzero().squeeze(1)
        assert torch.equal(bm.context[i], ids[:kc])
    for i in range(0, 64, 9):  # target masks and ids agree
        for t in range(4):
            assert torch.equal(bm.targets[i, t], bm.target_mask[i, t].nonzero().squeeze(1))


def test_multiblock_one_block_size_per_batch_varies_across_batches():
    sizes = {multiblock_masks(4, (14, 14), _gen(s)).target_size for s in range(20)}
    assert len(sizes) > 1


def test_multiblock_determinism_and_seed_sensitivity():
    a, b, c = (multiblock_masks(8, (14, 14), _gen(s)) for s in (7, 7, 8))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context)
                and torch.equal(a.targets, c.targets))


def test_multiblock_small_grid_and_errors():
    bm = multiblock_masks(8, (4, 4), _gen(0), num_targets=2, min_keep=2)
    assert bm.targets.shape[:2] == (8, 2) and bm.context.shape[1] >= 1
    with pytest.raises(ValueError, match="target_scale"):
        multiblock_masks(2, (8, 8), _gen(), target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="grid"):
        multiblock_masks(2, (0, 8), _gen())
    assert math.isfinite(float(bm.context.float().mean()))
