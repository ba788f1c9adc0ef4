"""``shapes`` object masks rebuilt from the recorded factors, and the share of attention that falls on them."""
from __future__ import annotations

import pytest
import torch

from workbench.data import load
from workbench.data.shapes import PALETTE, object_masks
from workbench.inspect.attention import attention_share, patch_fractions


@pytest.mark.parametrize("size", [16, 32])
def test_object_masks_match_the_rendered_shapes(size):
    ds = load("shapes", split="test", size=size, n=120)
    masks = object_masks(ds)
    assert masks.shape == (120, size, size) and masks.dtype == torch.float32
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    fg = torch.from_numpy(PALETTE[ds.factors["colour"].numpy()]).to(torch.int32)[:, :, None, None]
    diff = (ds.images.to(torch.int32) - fg).abs().amax(1)  # [N, H, W]: 0 where the pixel has the shape's colour
    full, empty = masks == 1, masks == 0
    assert full.any(dim=(1, 2)).all()  # every image has fully covered pixels
    assert int(diff[full].max()) == 0  # fully covered pixels are exactly the shape's colour
    assert bool((diff[empty] > 0).all())  # uncovered pixels are background (never the shape's colour)
    area = masks.mean(dim=(1, 2))
    assert 0.03 < float(area.min()) and float(area.max()) < 0.4  # shapes.SCALE_RANGE: radius 0.28-0.4 of the side


def test_object_masks_need_shapes_factors():
    ds = load("shapes", split="test", size=16, n=8)
    ds.factors.pop("scale")
    with pytest.raises(ValueError, match="scale"):
        object_masks(ds)


def test_attention_share_against_hand_values():
    masks = torch.zeros(2, 4, 4)
    masks[:, :2, :2] = 1.0  # the top-left patch of a 2x2 grid
    frac = patch_fractions(masks, (2, 2))
    torch.testing.assert_close(frac, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    attn = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    share, area = attention_share(attn, masks, (2, 2))
    torch.testing.assert_close(share, torch.tensor([0.7, 0.25]))
    torch.testing.assert_close(area, torch.tensor([0.25, 0.25]))  # uniform attention scores exactly the area
    with pytest.raises(ValueError, match="patch grid"):
        patch_fractions(torch.zeros(1, 5, 5), (2, 2))
