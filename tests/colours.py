"""A tiny labelled data set made in memory (no loader): class = colour of a square on a noisy grey background,
factors colour (= class) and pos_x. Shared by the feature tests (tests/trained) and the evaluation tests
(tests/evaluation); the fixtures built on it are in tests/conftest.py."""
from __future__ import annotations

import torch

from workbench.data.base import ImageDataset

PALETTE = torch.tensor([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 220, 50]], dtype=torch.float32)

DATA = "eval-test-colours"


def colour_data(n: int, size: int = 16, seed: int = 0, split: str = "train", channels: int = 3) -> ImageDataset:
    """Class = colour of a square on a noisy grey background; factors: colour (= class), pos_x (float)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    img = 100 + 30 * torch.rand(n, 3, size, size, generator=g)
    pos = torch.randint(0, size // 2, (n,), generator=g)
    cols = torch.arange(size)
    mask = ((cols[None, :] >= pos[:, None]) & (cols[None, :] < pos[:, None] + size // 2)).float()  # [n, W]
    square = mask[:, None, None, :] * mask.new_ones(n, 1, size, 1)
    img = img * (1 - square) + PALETTE[y][:, :, None, None] * square
    img = img[:, :channels].round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(img, y, ["red", "green", "blue", "yellow"], "colours", split,
                        factors={"colour": y.clone(), "pos_x": pos.float()})


def _colours(split: str = "train", n: int = 256, size: int = 16, seed: int = 0, channels: int = 3):
    """A tiny data set (coloured squares, factors colour and pos_x), registered as ``DATA`` by the ``_registered``
    fixture so these tests do not depend on the other loaders; ``size``/``channels`` let the mismatch errors be
    exercised."""
    return colour_data(n, size=size, seed=seed + (0 if split == "train" else 1000), split=split, channels=channels)
