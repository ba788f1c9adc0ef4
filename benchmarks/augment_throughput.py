"""Views/s of the batched `simclr` preset vs the same pipeline as torchvision v2 per-sample transforms.

Both sides start from the same in-memory uint8 images [N, 3, s, s] and produce two normalized float
views per image. The torchvision side runs the per-sample v2 Compose in a DataLoader with
``num_workers = os.cpu_count()`` (persistent workers, warmed up before timing). Prints one JSON object
per measurement and one with the ratio per image size.

    .venv/bin/python benchmarks/augment_throughput.py [--sizes 32 96] [--batch 512] [--batches 4]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset

from workbench.augment import generate_views, make_preset
from workbench.augment.presets import ViewOps


def torchvision_view(view: ViewOps, mean: tuple, std: tuple) -> T.Compose:
    """The per-sample torchvision v2 equivalent of one ViewOps (uint8 tensor in, float out)."""
    ops: list = [T.RandomResizedCrop(view.size, scale=view.scale, ratio=view.ratio, antialias=True),
                 T.RandomHorizontalFlip(view.flip_p)]
    if view.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                                 p=view.jitter_p))
    if view.grayscale_p > 0:
        ops.append(T.RandomGrayscale(view.grayscale_p))
    if view.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(view.kernel_size, view.blur_sigma)], p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(int(view.solarize_threshold * 255), p=view.solarize_p))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    return T.Compose(ops)


class ViewsDataset(Dataset):
    """Per-sample views of in-memory uint8 images through torchvision v2 transforms."""

    def __init__(self, images: torch.Tensor, transforms: list[T.Compose]):
        self.images, self.transforms = images, transforms

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        img = self.images[i]
        return [t(img) for t in self.transforms]


def bench_batched(images: torch.Tensor, size: int, repeats: int, threads: int) -> dict:
    """Time ``generate_views`` of the simclr preset on one in-memory batch with ``threads`` intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = make_preset("simclr", size)
        g = torch.Generator().manual_seed(0)
        generate_views(images, cfg, g)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            vb = generate_views(images, cfg, g)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    n = images.shape[0] * len(vb.views)
    dt = sum(times)
    return {"pipeline": "workbench.augment (batched)", "size": size, "batch": images.shape[0], "device": "cpu",
            "threads": threads, "views": n * repeats, "seconds": round(dt, 4), "views_per_s": round(n * repeats / dt, 1),
            "best_batch_views_per_s": round(n / min(times), 1)}


def bench_torchvision(images: torch.Tensor, size: int, batch: int, batches: int) -> dict:
    cfg = make_preset("simclr", size)
    workers = os.cpu_count() or 1
    ds = ViewsDataset(images, [torchvision_view(v, cfg.mean, cfg.std) for v in cfg.views])
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True,
                        drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: workers started, first batch done
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        views = next(it)
        n += sum(v.shape[0] for v in views)
    dt = time.perf_counter() - t0
    del it, loader
    return {"pipeline": "torchvision.transforms.v2 per-sample + DataLoader", "size": size, "batch": batch,
            "device": "cpu", "num_workers": workers, "views": n, "seconds": round(dt, 4),
            "views_per_s": round(n / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=4, help="timed batches on each side")
    ap.add_argument("--device", default="cpu", help="also time the batched pipeline on this device (e.g. cuda)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    for size in args.sizes:
        g = torch.Generator().manual_seed(size)
        images = torch.randint(0, 256, ((args.batches + 1) * args.batch, 3, size, size), dtype=torch.uint8,
                               generator=g)
        batched = [bench_batched(images[:args.batch], size, args.batches, t) for t in sorted({cores, 1}, reverse=True)]
        for b in batched:
            print(json.dumps(b), flush=True)
        tv = bench_torchvision(images, size, args.batch, args.batches)
        print(json.dumps(tv), flush=True)
        same_cores = batched[0]
        best = max(batched, key=lambda b: b["views_per_s"])
        print(json.dumps({"size": size,
                          "ratio_batched_over_torchvision": round(same_cores["views_per_s"] / tv["views_per_s"], 2),
                          "batched_threads": same_cores["threads"], "torchvision_workers": tv["num_workers"],
                          "ratio_best_thread_setting": round(best["views_per_s"] / tv["views_per_s"], 2),
                          "best_threads": best["threads"]}), flush=True)
        if args.device != "cpu":
            dev_images = images[:args.batch].to(args.device)
            cfg = make_preset("simclr", size)
            gen = torch.Generator(device=args.device).manual_seed(0)
            generate_views(dev_images, cfg, gen)
            torch.cuda.synchronize() if args.device.startswith("cuda") else None
            t0 = time.perf_counter()
            for _ in range(args.batches * 5):
                vb = generate_views(dev_images, cfg, gen)
            torch.cuda.synchronize() if args.device.startswith("cuda") else None
            dt = time.perf_counter() - t0
            n = args.batches * 5 * args.batch * len(vb.views)
            print(json.dumps({"pipeline": "workbench.augment (batched)", "size": size, "batch": args.batch,
                              "device": args.device, "views": n, "seconds": round(dt, 4),
                              "views_per_s": round(n / dt, 1)}), flush=True)


if __name__ == "__main__":
    main()
