"""One command for a machine's first run (issue 19): training throughput of every method in fp32 and bf16, eager
and compiled, peak memory, MFU, and the same kNN accuracy after a short run in fp32 and bf16. Prints JSON lines
and a Markdown table; ends within ``--budget-s`` (default 540 s: rows that would start later are reported as
skipped, never silently dropped).

    python benchmarks/gpu_check.py                      # a GPU: resnet18 / vit_tiny at 32 px, batch 256
    python benchmarks/gpu_check.py --tiny --device cpu  # the CI smoke check: tiny sizes, a minute on 2 cores
    bash benchmarks/gpu_check.sh                        # the same as the first line, output kept in a log file

Throughput and FLOPs come from ``benchmarks/train_throughput.py`` (``engine_throughput``: the engine's own step
timing over the last ``--steps`` steps after as many warm-up steps, compile time excluded; ``step_flops_per_image``;
``measured_peak``). MFU is reported against two peaks: the best matmul/convolution rate measured here in the same
process (``mfu_measured``) and, on known GPUs, the vendor's dense tensor-core peak (``mfu_vendor``: bf16 rows against
the bf16 peak, fp32 rows against TF32, which is what fp32 matmuls use under ``workbench.device.configure_cuda``).
Peak memory is ``torch.cuda.max_memory_allocated`` per row (null on a CPU).

The kNN rows train SimCLR on ``shapes`` for ``--knn-epochs`` from the same seed in fp32 and in bf16 and read the
engine's kNN monitor at the end: the two should agree within run-to-run noise (``knn_gap`` in the summary line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from train_throughput import ALL_METHODS, VIT_ONLY, engine_throughput, measured_peak  # noqa: E402

# dense tensor-core peaks (FLOP/s) by device name: (bf16, tf32); H200 has the H100 SXM's compute
VENDOR_PEAKS = {"H100 PCIe": (756e12, 378e12), "H100": (989e12, 495e12), "H200": (989e12, 495e12),
                "A100": (312e12, 156e12), "L40S": (362e12, 183e12), "A10": (125e12, 62.5e12)}
# methods compiled by default (a CNN, an EMA teacher, multi-crop on a ViT, MAE): compiling all on a GPU takes longer
# than the budget
DEFAULT_COMPILE = ("simclr", "byol", "dino", "mae")
DATA_NAME = "gpu_check_shapes"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def vendor_peak(device: torch.device) -> tuple[str, tuple[float, float]] | None:
    """(device name, (bf16, tf32) dense peak FLOP/s) for a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in VENDOR_PEAKS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return name, peaks
    return None


def register_data(image_size: int, n_train: int, n_test: int) -> None:
    """``shapes`` at ``image_size`` generated once and registered as DATA_NAME (every row reads the same tensors)."""
    import workbench.data as data_pkg
    from workbench.data import base

    cache = {s: data_pkg.load("shapes", split=s, size=image_size, n=n) for s, n in (("train", n_train),
                                                                                    ("test", n_test))}
    base._REGISTRY[DATA_NAME] = lambda split="train", **_: cache[split]


def throughput_row(method: str, backbone: str, precision: str, compile: bool, args: argparse.Namespace,
                   out: str, peaks: dict[str, float], vendor: tuple[str, tuple[float, float]] | None,
                   device: torch.device) -> dict[str, Any]:
    ns = argparse.Namespace(batch_size=args.batch_size, steps=args.steps, device=str(device), precision=precision,
                            compile=compile, channels_last="auto")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    r = engine_throughput(method, backbone, ns, DATA_NAME, out)
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    r["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None
    rate = r["achieved_gflops_per_s"] * 1e9
    r["mfu_measured"] = rate / peaks[r["precision_used"]]
    if vendor is not None:
        r["mfu_vendor"] = rate / vendor[1][0 if r["precision_used"] == "bf16" else 1]
    return r


def knn_row(precision: str, args: argparse.Namespace, out: str, device: torch.device, backbone: str) -> dict:
    """SimCLR for ``args.knn_epochs`` epochs from seed 0 at ``precision``: the engine's final kNN accuracy."""
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cfg = PretrainConfig(method="simclr", data=DataConfig(name=DATA_NAME),
                         model=ModelConfig(backbone=backbone, options=args.model_options.get(backbone, {})),
                         train=TrainConfig(epochs=args.knn_epochs, batch_size=args.batch_size,
                                           knn_every=args.knn_epochs,
                                           knn_max_train=args.knn_train, knn_max_test=args.knn_test,
                                           log_every=1000, device=str(device), precision=precision, seed=0,
                                           progress="off", checkpoint_every=1000),
                         out=out)
    t0 = time.perf_counter()
    run = pretrain(cfg)
    s = run.summary["pretrain"]
    return {"knn_acc": s["knn_acc"], "train_loss": s["train_loss"], "precision_used": s["precision"],
            "steps": s["steps"], "wall_s": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| method | backbone | precision | compile | images/s | peak MB | MFU measured | MFU vendor | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        if "images_per_s" not in r and "skipped" not in r and "error" not in r:
            continue
        note = r.get("skipped") or r.get("error") or ""
        lines.append(f"| {r['method']} | {r['backbone']} | {r['precision']} | {r['compile']} | "
                     f"{f(r.get('images_per_s'), '.1f')} | {f(r.get('peak_mem_mb'), '.0f')} | "
                     f"{f(r.get('mfu_measured'), '.3f')} | {f(r.get('mfu_vendor'), '.3f')} | {note[:60]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--compile-methods", default=",".join(DEFAULT_COMPILE),
                   help="methods also timed with train.compile (comma list, 'all' or 'none')")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile-precisions", default=None, help="precisions of the compiled rows (default: --precisions)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after as many warm-up steps)")
    p.add_argument("--knn-epochs", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=540.0, help="no row starts after this many seconds")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke sizes: 16 px, batch 8, 2 steps, width-8 CNN, 2-block ViT, a 1-epoch kNN run")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cnn = "resnet18" if device.type == "cuda" and not args.tiny else "small_cnn"
    args.model_options = {}
    if args.tiny:
        args.image_size, args.batch_size, args.steps, args.knn_epochs = 16, 8, 2, 1
        args.model_options = {"small_cnn": {"width": 8}}
    n_train = max(args.batch_size * (2 * args.steps + 1), args.batch_size * 20 if not args.tiny else 32)
    args.knn_train, args.knn_test = (32, 32) if args.tiny else (2000, 2000)
    register_data(args.image_size, n_train, args.knn_test)
    if args.tiny:  # engine_throughput's ViT options are patch 4 at the image size: keep the ViT at 2 blocks here
        from workbench.models import backbones

        real_build = backbones.build_backbone

        def small_vit(name: str, image_size: int = 32, in_chans: int = 3, **options: Any):
            if name.startswith("vit"):
                options.setdefault("depth", 2)
            elif name == "small_cnn":
                options.setdefault("width", 8)
            return real_build(name, image_size, in_chans, **options)

        backbones.build_backbone = small_vit
    common = {"bench": "gpu_check", "device": str(device), "batch_size": args.batch_size,
              "image_size": args.image_size, "torch": torch.__version__}
    vendor = vendor_peak(device)
    if device.type == "cuda":
        common["device_name"] = torch.cuda.get_device_name(device)
        from workbench.device import configure_cuda

        configure_cuda()  # the engine's TF32 policy, so the measured fp32 peak is what the runs get
    peaks = {name: measured_peak(device, dtype, reps=2 if args.tiny else 5)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    emit({**common, "peaks_gflops_per_s": {k: v / 1e9 for k, v in peaks.items()},
          "vendor_peak": None if vendor is None else {"name": vendor[0], "bf16_tflops": vendor[1][0] / 1e12,
                                                       "tf32_tflops": vendor[1][1] / 1e12}})
    methods = [m for m in args.methods.split(",") if m]
    compiled = set(methods if args.compile_methods == "all" else
                   [] if args.compile_methods == "none" else args.compile_methods.split(","))
    compile_precisions = (args.compile_precisions or args.precisions).split(",")
    plan = [(m, prec, comp) for comp in (False, True) for m in methods for prec in args.precisions.split(",")
            if not comp or (m in compiled and prec in compile_precisions)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        for method, precision, comp in plan:
            bb = "vit_tiny" if method in VIT_ONLY or (method == "dino" and not args.tiny) else cnn
            row = {**common, "method": method, "backbone": bb, "precision": precision, "compile": comp}
            if time.perf_counter() - t_start > args.budget_s:
                row["skipped"] = f"budget of {args.budget_s:.0f} s spent"
            else:
                try:
                    row.update(throughput_row(method, bb, precision, comp, args, out, peaks, vendor, device))
                except Exception as e:  # report the row and go on with the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            rows.append(row)
            emit(row)
        knn = {}
        for precision in args.precisions.split(","):
            row = {**common, "check": "knn", "method": "simclr", "backbone": cnn, "precision": precision}
            if time.perf_counter() - t_start > args.budget_s:
                row["skipped"] = f"budget of {args.budget_s:.0f} s spent"
            else:
                try:
                    row.update(knn_row(precision, args, out, device, cnn))
                    knn[precision] = row["knn_acc"]
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            emit(row)
    done = [r for r in rows if "images_per_s" in r]
    summary = {**common, "summary": True, "rows": len(rows), "measured": len(done),
               "errors": sum("error" in r for r in rows), "skipped": sum("skipped" in r for r in rows),
               "knn": knn, "knn_gap": (abs(knn["fp32"] - knn["bf16"]) if {"fp32", "bf16"} <= knn.keys()
                                       and None not in (knn["fp32"], knn["bf16"]) else None),
               "wall_s": round(time.perf_counter() - t_start, 1)}
    emit(summary)
    print(table(rows), flush=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
