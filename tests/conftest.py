"""Shared fixtures: a tiny labelled in-memory data set for engine tests (no dependence on a loader's speed)."""
from __future__ import annotations

import pytest
import torch


def _blobs(split: str = "train", n: int = 128, size: int = 16, seed: int = 0):
    """4 classes of coloured squares at random places on noise: uint8 [n, 3, size, size]."""
    from workbench.data.base import ImageDataset

    g = torch.Generator().manual_seed(seed * 2 + (0 if split == "train" else 1))
    labels = torch.randint(0, 4, (n,), generator=g)
    colours = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.float32)
    img = 60 + 30 * torch.randn(n, 3, size, size, generator=g)
    half = size // 2
    ys = torch.randint(0, size - half + 1, (n,), generator=g)
    xs = torch.randint(0, size - half + 1, (n,), generator=g)
    rows = torch.arange(size)
    inside = (((rows[None, :] >= ys[:, None]) & (rows[None, :] < ys[:, None] + half))[:, :, None]
              & ((rows[None, :] >= xs[:, None]) & (rows[None, :] < xs[:, None] + half))[:, None, :])
    img = torch.where(inside[:, None], colours[labels][:, :, None, None].expand(-1, -1, size, size), img)
    return ImageDataset(img.clamp(0, 255).to(torch.uint8), labels, ["red", "green", "blue", "yellow"],
                        "engine_blobs", split)


@pytest.fixture
def blobs_data():
    """Registers the ``engine_blobs`` data set (options: n, size, seed) for the duration of a test."""
    from workbench.data import base

    base._REGISTRY["engine_blobs"] = _blobs
    yield "engine_blobs"
    base._REGISTRY.pop("engine_blobs", None)
