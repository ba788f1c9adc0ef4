"""``python -m workbench.data --grid out.png``: a PNG contact sheet of a data set (10 rows of 12 images)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from workbench.data.base import load


def contact_sheet(images: torch.Tensor, per_row: int = 12, zoom: int = 1, pad: int = 2) -> torch.Tensor:
    """uint8 [N, C, H, W] -> one uint8 [3, rows*(H*zoom+pad)+pad, per_row*(W*zoom+pad)+pad] grid, white padding."""
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    rows = -(-n // per_row)
    ch, cw = h * zoom + pad, w * zoom + pad
    sheet = torch.full((3, rows * ch + pad, per_row * cw + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, per_row)
        sheet[:, pad + r * ch:pad + r * ch + h * zoom, pad + col * cw:pad + col * cw + w * zoom] = images[i]
    return sheet


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m workbench.data", description=__doc__)
    parser.add_argument("--grid", required=True, help="PNG file to write")
    parser.add_argument("--data", default="shapes", help="data set name (default shapes)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the data set's own)")
    parser.add_argument("--root", default=None, help="root folder for file-based data sets")
    args = parser.parse_args(argv)
    options = {"n": 120}
    if args.size is not None:
        options["size"] = args.size
    if args.root is not None:
        options["root"] = args.root
    ds = load(args.data, args.split, **options)
    zoom = max(1, 64 // ds.image_size)
    sheet = contact_sheet(ds.images[:120], zoom=zoom)
    from PIL import Image

    out = Path(args.grid)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet.permute(1, 2, 0).numpy()).save(out)
    print(out)
    return out


if __name__ == "__main__":
    main()
