"""Images/s delivered to the training step from a folder of JPEGs: the streaming path vs torchvision's ImageFolder.

One generated folder of JPEGs (4 class subfolders, sides drawn from 1.0-1.6x the view size, smooth colour fields
with noise so they compress like photos) is read at each view size (64 and 224 px) with each worker count (2 and
``os.cpu_count()``), two SimCLR views per image, batch ``--batch``:

- ``workbench_stream``: ``workbench.train.batches.StreamBatches`` (DataLoader workers decode with PIL and take the
  random resized crops from the full image; colour jitter, grayscale, blur and normalisation batched on
  ``--device`` in the main process);
- ``torchvision_imagefolder``: ``torchvision.datasets.ImageFolder`` with the v2 transforms a user writes (the
  docs' recommended ``ToImage`` first, then the same ops per sample as the preset), in a DataLoader with the same
  workers, ``shuffle=True``, views moved to ``--device``;
- ``workbench_memory`` (one row per size): the in-memory path on the images decoded at the view size beforehand.

Each row times ``--batches`` batches after ``--warmup`` (workers started and warm). One JSON object per row,
then one per (size, workers) with the ratio stream / torchvision.

    .venv/bin/python benchmarks/data_throughput.py [--n 2560] [--sizes 64 224] [--workers 2 N] [--batch 128]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_throughput import torchvision_view  # noqa: E402  (the per-sample v2 equivalent of a ViewOps)

from workbench.augment import make_preset  # noqa: E402
from workbench.data import load  # noqa: E402
from workbench.data.stream import open_source  # noqa: E402
from workbench.train.batches import MemoryBatches, StreamBatches  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` JPEGs (quality 90) in 4 class folders, sides uniform in [size, 1.6 size]: smooth colour fields + noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(size, int(1.6 * size) + 1, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, (3, 3))
        field = base[:, 0, None, None] + base[:, 1, None, None] * yy + base[:, 2, None, None] * xx
        img = np.clip(field.transpose(1, 2, 0) * 0.6 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def timed(batches, warmup: int, count: int, batch: int, device: torch.device) -> float:
    """Images/s over ``count`` batches after ``warmup`` (each batch's views made ready on ``device``)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(count):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count * batch / (time.perf_counter() - t0)


def endless_views(batches, device: torch.device):
    """The views of ``batches`` (MemoryBatches or StreamBatches), epoch after epoch, as the engine draws them."""
    g = torch.Generator(device=device)
    for epoch in range(10 ** 6):
        for _, vb in batches.epoch(epoch, 0, g):
            yield vb.views


def bench_stream(root: Path, size: int, workers: int, batch: int, steps: int, warmup: int,
                 device: torch.device) -> float:
    aug = make_preset("simclr", size, mean=MEAN, std=STD)
    source = open_source("folder", "train", root=str(root), size=size, workers=workers)
    spe = len(source) // batch
    sb = StreamBatches(source, aug, 0, 0, 1, batch, spe, 10 ** 9, device)
    return timed(endless_views(sb, device), warmup, steps, batch, device)


def bench_torchvision(root: Path, size: int, workers: int, batch: int, steps: int, warmup: int,
                      device: torch.device) -> float:
    views = [T.Compose([T.ToImage(), torchvision_view(v, MEAN, STD)]) for v in make_preset("simclr", size).views]
    ds = ImageFolder(str(root), transform=lambda img: [t(img) for t in views])
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def batches():
        while True:
            for (v1, v2), _ in loader:
                yield v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)

    return timed(batches(), warmup, steps, batch, device)


def bench_memory(root: Path, size: int, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    images = load("folder", root=str(root), size=size).images.to(device)
    mb = MemoryBatches(images, make_preset("simclr", size, mean=MEAN, std=STD), 0, 0, 1, batch,
                       images.shape[0] // batch)
    return timed(endless_views(mb, device), warmup, steps, batch, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2560, help="JPEGs in the generated folder (per view size)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--workers", nargs="+", default=["2", "N"], help="worker counts; N = os.cpu_count()")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    workers = sorted({os.cpu_count() or 1 if w == "N" else int(w) for w in args.workers})
    info = {"cpus": os.cpu_count(), "device": str(device), "batch": args.batch, "views": 2, "preset": "simclr",
            "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = make_folder(Path(tmp) / f"s{size}", args.n, size)
            common = dict(size=size, batch=args.batch, steps=args.batches, warmup=args.warmup, device=device)
            rate = bench_memory(root, **common)
            print(json.dumps({"path": "workbench_memory", "size": size, "workers": 0,
                              "images_per_s": round(rate, 1), **info}), flush=True)
            for w in workers:
                rates = {}
                for path, fn in (("workbench_stream", bench_stream), ("torchvision_imagefolder", bench_torchvision)):
                    rates[path] = fn(root, workers=w, **common)
                    print(json.dumps({"path": path, "size": size, "workers": w,
                                      "images_per_s": round(rates[path], 1), **info}), flush=True)
                print(json.dumps({"ratio_stream_over_torchvision": round(rates["workbench_stream"]
                                                                         / rates["torchvision_imagefolder"], 2),
                                  "size": size, "workers": w, **info}), flush=True)


if __name__ == "__main__":
    main()
