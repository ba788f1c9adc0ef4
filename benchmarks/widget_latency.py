"""Widget latency: time from a parameter change (or a plotly event) to the widget's new output.

Measures, driving the widgets headlessly exactly as the tests do (set a control's value / dispatch the trace's
hover and click events):
- AugmentationExplorer, 16 images x 2 views (simclr preset, 32 px shapes): a slider change -> new PNG;
- AttentionViewer (vit_tiny, 32 px, patch 4): layer/head change -> new overlay; a click -> similarity map;
- EmbeddingExplorer on 70k points x 512-d features: hover -> thumbnail; click -> 8-neighbour gallery;
- UMAP of 70k x 512 features (umap-learn, the settings of workbench.inspect.embedding.umap_2d).
Targets on the 2-core CPU: < 150 ms per interaction, UMAP < 60 s. Prints one JSON object per measurement.

    .venv/bin/python benchmarks/widget_latency.py [--points 70000] [--dim 512] [--repeats 5] [--skip-umap]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch


def timed(fn: Callable[[int], object], repeats: int) -> dict[str, float]:
    """Median and max wall time (ms) of ``fn(i)`` over ``repeats`` calls after one warm-up call."""
    fn(-1)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def report(name: str, target_ms: float | None = None, **values: object) -> None:
    out = {"benchmark": "widget_latency", "measure": name, **values}
    if target_ms is not None and "median_ms" in values:
        out["target_ms"] = target_ms
        out["meets_target"] = bool(values["median_ms"] < target_ms)
    print(json.dumps(out), flush=True)


def synthetic_features(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, d, generator=g)
    return centers[labels] + 0.8 * torch.randn(n, d, generator=g), labels


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=70_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-umap", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report("setup", torch_threads=torch.get_num_threads())

    import workbench.data as data
    from plotly.callbacks import InputDeviceState, Points

    from widgets import AttentionViewer, AugmentationExplorer, EmbeddingExplorer
    from workbench.models.backbones import build_backbone

    state = InputDeviceState(ctrl=False, alt=False, shift=False, meta=False, button=0, buttons=1)
    shapes = data.load("shapes", split="test", size=32, n=256)

    # AugmentationExplorer: 16 images x 2 views, alternate a slider between two values
    ex = AugmentationExplorer(shapes, preset="simclr", n_images=16)
    slider = ex.sliders["jitter_p"]
    report("augmentation_explorer_slider", 150, images=16, views=2,
           **timed(lambda i: setattr(slider, "value", 0.5 if i % 2 else 0.9), args.repeats))
    # the share of that spent in workbench.augment.generate_views itself (the widget adds the drawing + PNG)
    from workbench.augment import generate_views

    cfg, imgs16 = ex.augment_config, shapes.images[:16]
    report("augment_generate_views_only", images=16, views=2, **timed(
        lambda i: generate_views(imgs16, cfg, torch.Generator().manual_seed(i)), args.repeats))

    # AttentionViewer: vit_tiny at 32 px; layer change, head change, patch click
    vit = build_backbone("vit_tiny", image_size=32, patch_size=4)
    av = AttentionViewer(vit, shapes.images[:16])
    report("attention_viewer_layer", 150, **timed(lambda i: setattr(av.layer, "value", (i + 2) % 12), args.repeats))
    report("attention_viewer_head", 150,
           **timed(lambda i: setattr(av.head, "value", (i + 1) % 3 if i % 4 else "mean"), args.repeats))
    report("attention_viewer_image", 150,
           **timed(lambda i: setattr(av.index, "value", (i + 3) % 16), args.repeats))
    z = av.zoom
    report("attention_viewer_click_patch", 150, **timed(
        lambda i: av.fig.data[0]._dispatch_on_click(
            Points(point_inds=[0], xs=[(4 * (i % 8) + 2) * z], ys=[10.0 * z], trace_name="a", trace_index=0), state),
        args.repeats))

    # EmbeddingExplorer on 70k points
    feats, labels = synthetic_features(args.points, args.dim)
    images = shapes.images[torch.arange(args.points) % shapes.images.shape[0]]
    t0 = time.perf_counter()
    ee = EmbeddingExplorer(feats, images, labels, umap="off")
    report("embedding_explorer_build", points=args.points, dim=args.dim,
           seconds=round(time.perf_counter() - t0, 2))
    trace = ee.fig.data[0]
    report("embedding_explorer_hover", 150, points=args.points, **timed(
        lambda i: trace._dispatch_on_hover(Points(point_inds=[(i * 7919) % args.points], xs=[0.0], ys=[0.0],
                                                  trace_name="e", trace_index=0), state), args.repeats))
    report("embedding_explorer_click_neighbours", 150, points=args.points, k=ee.k, **timed(
        lambda i: trace._dispatch_on_click(Points(point_inds=[(i * 104729) % args.points], xs=[0.0], ys=[0.0],
                                                  trace_name="e", trace_index=0), state), args.repeats))
    report("embedding_explorer_colour_by_label", points=args.points, **timed(
        lambda i: ee._on_color(), max(1, args.repeats // 2)))

    if not args.skip_umap:
        from workbench.inspect.embedding import umap_2d

        umap_2d(torch.randn(500, 64), n_epochs=5, seed=None)  # numba compilation, excluded from the timing
        t0 = time.perf_counter()
        coords = umap_2d(feats, seed=None)
        report("umap_70k", points=args.points, dim=args.dim, seconds=round(time.perf_counter() - t0, 1),
               target_s=60, meets_target=bool(time.perf_counter() - t0 < 60), finite=bool(
                   torch.isfinite(torch.from_numpy(coords)).all()))


if __name__ == "__main__":
    main()
