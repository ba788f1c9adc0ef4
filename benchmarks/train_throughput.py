"""Training throughput (images/s) of every method through the engine, and of SimCLR written the way lightly's own
example writes it (lightly's SimCLRTransform in a torch DataLoader with num_workers = cores, NTXentLoss,
SimCLRProjectionHead), with the same backbone, batch and image size, in one process. Prints JSON lines.

    python benchmarks/train_throughput.py                                   # CPU: all methods x small_cnn, resnet18
    python benchmarks/train_throughput.py --methods simclr --backbones resnet18 --steps 10
    python benchmarks/train_throughput.py --device cuda --precision bf16 --compile --batch-size 512
    python benchmarks/train_throughput.py --methods simclr --backbones small_cnn --batch-size 256 --steps 5 \
        --precision bf16 --repeats 5        # ours vs lightly's example, 5 alternating pairs, ratio of the medians

Engine figures come from the engine's own step timing (metrics.jsonl ``images_per_s``) over the last
``--steps`` steps, after ``--steps`` warm-up steps (data generation, model build and compile excluded).
Each engine line also carries the model FLOPs of one training step per image (forward + backward of every view,
counted by ``torch.utils.flop_counter``) and the achieved FLOP/s as a fraction of this machine's peak (MFU), the
peak being the best of a large matmul and a large convolution measured in the same process in fp32 and bf16
(``peak`` lines).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALL_METHODS = ["simclr", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg", "dino", "swav", "mae", "ijepa"]
VIT_ONLY = {"mae", "ijepa"}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def measured_peak(device: torch.device, dtype: torch.dtype, reps: int = 5) -> float:
    """This machine's practical peak FLOP/s in ``dtype``: the best of an n x n x n matmul and a 256-channel 3x3
    convolution (oneDNN's convolutions can outrun torch's fp32 matmul on a CPU), best of ``reps`` each. Vendor
    peaks assume clocks and units a 2-core slice of a shared host does not give, so MFU is measured against this."""
    import torch.nn.functional as F

    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    x = torch.randn(64, 256, 16, 16, device=device).to(dtype)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype)
    work = [(lambda: a @ b, 2 * 2048 ** 3), (lambda: F.conv2d(x, w, padding=1), 2 * 64 * 256 * 256 * 9 * 16 * 16)]
    best_rate = 0.0
    for fn, flops in work:
        for _ in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best_rate = max(best_rate, flops / (time.perf_counter() - t))
    return best_rate


def step_flops_per_image(run_path: str) -> float:
    """Model FLOPs of one training step (all views, forward + backward) per image, counted on the CPU in fp32
    for the run's recorded config (the count does not depend on the device or precision)."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.augment import generate_views
    from workbench.methods.base import Batch, Progress
    from workbench.runs import Run
    from workbench.train.config import PretrainConfig, augment_config
    from workbench.config import from_dict
    from workbench.train.setup import build_method_for, load_data

    config = from_dict(PretrainConfig, Run(run_path).config)
    batch = min(16, config.train.batch_size)
    images = load_data(config, "train").images[:batch]
    size = images.shape[-1]
    method = build_method_for(config, size, images.shape[1]).train()
    aug = augment_config(config, size, tuple(config.data.mean), tuple(config.data.std))
    g = torch.Generator().manual_seed(0)
    vb = generate_views(images, aug, g)
    progress = Progress(0, 100, 0, 1, 100, g)
    with FlopCounterMode(display=False) as counter:
        out = method.training_step(Batch(list(vb.views), vb.num_global, images), progress)
        out.loss.backward()
    return counter.get_total_flops() / batch


def engine_throughput(method: str, backbone: str, args, data_name: str, out: str) -> dict:
    """images/s of ``method`` on ``backbone`` through ``workbench.pretrain`` (timed window: the last args.steps)."""
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    options = {}
    if backbone.startswith("vit"):
        options = {"patch_size": 4}
    method_options = {"proj_hidden_dim": 512, "proj_output_dim": 128} if method == "simclr" else {}
    cfg = PretrainConfig(
        method=method, method_options=method_options, data=DataConfig(name=data_name),
        model=ModelConfig(backbone=backbone, options=options),
        train=TrainConfig(epochs=1000, batch_size=args.batch_size, log_every=args.steps, knn_every=0,
                          max_steps=2 * args.steps, checkpoint_every=1000, device=args.device,
                          precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                          progress="off"),
        out=out)
    run = pretrain(cfg)
    steps = [r for r in run.metrics() if r["kind"] == "step"]
    flops = step_flops_per_image(str(run.path))
    ips = steps[-1]["images_per_s"]
    return {"images_per_s": ips, "step_time_s": steps[-1]["step_time"], "timed_steps": args.steps,
            "precision_used": run.summary["pretrain"]["precision"], "gflops_per_image": flops / 1e9,
            "achieved_gflops_per_s": flops * ips / 1e9}


def lightly_simclr_throughput(backbone_name: str, args, images: torch.Tensor) -> dict:
    """SimCLR as lightly's example trains it: PIL images -> SimCLRTransform in DataLoader workers -> model."""
    import torch.nn as nn
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.simclr_transform import SimCLRTransform
    from PIL import Image

    from workbench.models import build_backbone

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self, images: torch.Tensor, transform):
            self.images, self.transform = images, transform

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):
            img = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
            return self.transform(img), 0

    class SimCLR(nn.Module):
        def __init__(self, backbone: nn.Module):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(backbone.feature_dim, 512, 128)

        def forward(self, x):
            return self.projection_head(self.backbone(x))

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    size = images.shape[-1]
    transform = SimCLRTransform(input_size=size, gaussian_blur=0.5, cj_prob=0.8, random_gray_scale=0.2)
    loader = torch.utils.data.DataLoader(PILDataset(images, transform), batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    model = SimCLR(build_backbone(backbone_name, size)).to(device)
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.lightly_precision == "bf16" else None
    times, seen = [], 0
    it = iter(loader)
    t_prev = time.perf_counter()
    for step in range(2 * args.steps):
        try:
            (x0, x1), _ = next(it)
        except StopIteration:
            it = iter(loader)
            (x0, x1), _ = next(it)
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        if amp is not None:
            with amp:
                loss = criterion(model(x0), model(x1))
        else:
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step >= args.steps:
            times.append(now - t_prev)
            seen += x0.shape[0]
        t_prev = now
    return {"images_per_s": seen / sum(times), "step_time_s": sum(times) / len(times), "timed_steps": len(times),
            "num_workers": args.workers}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--backbones", default="small_cnn,resnet18")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto", "fast"],
                   help="the engine's train.precision (auto: bf16 on CUDA; fast: also on CPUs with native bf16)")
    p.add_argument("--lightly-precision", default="fp32", choices=["fp32", "bf16"],
                   help="lightly's example trains in fp32; bf16 shows what autocast alone gives it")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="the engine's train.channels_last (auto: on for CNNs on CUDA and in bf16 on a CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after as many warm-up steps)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly DataLoader workers")
    p.add_argument("--no-lightly", action="store_true", help="skip the lightly-style SimCLR comparison")
    p.add_argument("--repeats", type=int, default=1,
                   help="SimCLR pairs (ours, then lightly's) to measure; with > 1 the ratio of the medians is printed")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats}: give 1 or more")

    import workbench.data as data_pkg
    from workbench.data import base

    n = args.batch_size * (2 * args.steps + 1)
    cache = {s: data_pkg.load("shapes", split=s, size=args.image_size, n=n if s == "train" else 64)
             for s in ("train", "test")}
    base._REGISTRY["shapes_bench"] = lambda split="train", **_: cache[split]
    common = {"bench": "train_throughput", "device": args.device, "precision": args.precision,
              "compile": args.compile, "channels_last": args.channels_last, "batch_size": args.batch_size,
              "image_size": args.image_size,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    peaks = {name: measured_peak(dev, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for name, value in peaks.items():
        emit({**common, "peak": name, "peak_gflops_per_s": value / 1e9})
    with tempfile.TemporaryDirectory() as out:
        for backbone in args.backbones.split(","):
            ours_simclr: list[float] = []
            lightly_simclr: list[float] = []
            for method in args.methods.split(","):
                bb = "vit_tiny" if method in VIT_ONLY else backbone
                paired = method == "simclr" and not args.no_lightly
                for repeat in range(args.repeats if paired else 1):
                    try:
                        r = engine_throughput(method, bb, args, "shapes_bench", out)
                    except Exception as e:  # report and go on with the other methods
                        emit({**common, "impl": "workbench", "method": method, "backbone": bb, "error": repr(e)})
                        break
                    r["mfu"] = r["achieved_gflops_per_s"] * 1e9 / peaks[r["precision_used"]]
                    emit({**common, "impl": "workbench", "method": method, "backbone": bb, "repeat": repeat, **r})
                    if paired:  # lightly's run right after ours, so that both see the same machine load
                        ours_simclr.append(r["images_per_s"])
                        lightly_pair(backbone, args, cache["train"].images, common, repeat, ours_simclr,
                                     lightly_simclr)
    return 0


def lightly_pair(backbone: str, args, images: torch.Tensor, common: dict, repeat: int, ours: list[float],
                 theirs: list[float]) -> None:
    """Measure lightly's example once after our ``repeat``-th SimCLR run (appended to ``theirs``) and emit the
    pair's ratio; after the last repeat also the ratio of the medians (a shared machine moves both sides by 20-30 %
    from run to run, so one pair is not a verdict)."""
    from statistics import median

    try:
        r = lightly_simclr_throughput(backbone, args, images)
    except Exception as e:  # the pair is dropped, so that ours and theirs stay paired
        emit({**common, "impl": "lightly-example", "method": "simclr", "backbone": backbone, "error": repr(e)})
        ours.pop()
        r = None
    if r is not None:
        theirs.append(r["images_per_s"])
        emit({**common, "impl": "lightly-example", "method": "simclr", "backbone": backbone, "repeat": repeat,
              "precision_used": args.lightly_precision, **r})
        emit({**common, "comparison": "workbench/lightly-example", "method": "simclr", "backbone": backbone,
              "repeat": repeat, "ratio": ours[-1] / r["images_per_s"]})
    if repeat == args.repeats - 1 and args.repeats > 1 and theirs:
        ratios = [a / b for a, b in zip(ours, theirs)]
        emit({**common, "comparison": "workbench/lightly-example, medians", "method": "simclr", "backbone": backbone,
              "repeats": len(ratios), "ours_median_images_per_s": median(ours),
              "lightly_median_images_per_s": median(theirs), "ratio": median(ours) / median(theirs),
              "pair_ratio_min": min(ratios), "pair_ratio_median": median(ratios), "pair_ratio_max": max(ratios)})


if __name__ == "__main__":
    sys.exit(main())
