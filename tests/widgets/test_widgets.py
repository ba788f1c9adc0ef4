"""Widgets driven headlessly as a user would: set a control's value or dispatch a plotly event through the
trace's own dispatcher (what the browser triggers), then check what the widget shows."""
from __future__ import annotations

import math
import time

import numpy as np

import pytest
import torch
from plotly.callbacks import BoxSelector, InputDeviceState, Points

from widgets import (AttentionViewer, AugmentationExplorer, EmbeddingExplorer, ReconstructionViewer, RunBrowser,
                     TrainingMonitor)
from workbench.inspect.colors import palette, palette_rgb
from workbench.inspect.images import browser_path, decode_png, png_bytes, to_hwc, upscale
from workbench.runs import Run

STATE = InputDeviceState(ctrl=False, alt=False, shift=False, meta=False, button=0, buttons=1)


def points(inds=(), xs=(), ys=()):
    return Points(point_inds=list(inds), xs=list(xs), ys=list(ys), trace_name="t", trace_index=0)


def _tiny(method: str, backbone: str, out, options=None, epochs: int = 1):
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig

    return PretrainConfig(method=method, data=DataConfig(name="shapes", image_size=16, options={"n": 32}),
                          model=ModelConfig(backbone=backbone, options=options or {}),
                          train=TrainConfig(epochs=epochs, batch_size=32, log_every=1, knn_every=1, knn_max_train=32,
                                            knn_max_test=16, progress="off", device="cpu"), out=str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-epoch MAE ViT run and a 1-epoch SimCLR CNN run on 64 shapes images at 16 px."""
    from workbench.train import pretrain

    out = tmp_path_factory.mktemp("runs")
    mae = pretrain(_tiny("mae", "vit_tiny", out, {"patch_size": 4, "depth": 2}))
    cnn = pretrain(_tiny("simclr", "small_cnn", out, {"width": 4}))
    return {"mae": mae, "cnn": cnn, "dir": out}


@pytest.fixture(scope="module")
def shapes16():
    import workbench.data as data

    return data.load("shapes", split="test", size=16, n=64)


# ---------------------------------------------------------------------------------------- AugmentationExplorer
def test_augmentation_explorer_sliders_change_views_and_config(shapes16):
    ex = AugmentationExplorer(shapes16, preset="simclr", n_images=4, seed=0)
    assert ex.last_error is None and len(ex.captions) == 4 and len(ex.captions[0]) == 2
    before = ex.png
    ex.sliders["flip_p"].value = 1.0  # "all views" is being edited
    assert ex.png != before and all("flip" in c for row in ex.captions for c in row)
    assert [v.flip_p for v in ex.augment_config.views] == [1.0, 1.0]
    ex.view.value = ex.view.options[2]  # edit view 2 only
    assert ex.sliders["flip_p"].value == 1.0 and ex.sliders["jitter_p"].value == pytest.approx(0.8)
    ex.sliders["solarize_p"].value = 1.0
    cfg = ex.augment_config
    assert cfg.views[1].solarize_p == 1.0 and cfg.views[0].solarize_p == 0.0
    assert all("solarize" in row[1] for row in ex.captions) and not any("solarize" in row[0] for row in ex.captions)
    ex.augment_config.views[0].flip_p = 0.0  # a copy: editing it does not change the widget
    assert ex.augment_config.views[0].flip_p == 1.0
    from workbench.train import PretrainConfig, augment_config
    run_cfg = augment_config(PretrainConfig(method="simclr", augment=ex.augment_overrides), 16)
    assert run_cfg.views == cfg.views and run_cfg.num_global == cfg.num_global
    png = ex.png
    ex.seed.value = 5
    assert ex.png != png
    decoded = decode_png(ex.png)
    assert decoded.shape == ex.picture.shape


def test_augmentation_explorer_multicrop_scale_and_masks(shapes16):
    ex = AugmentationExplorer(shapes16.images, preset="dino", n_images=2)
    cfg = ex.augment_config
    assert cfg.num_global == 2 and len(cfg.views) == 8 and len(ex.captions[0]) == 8
    # local crops are drawn at their true relative size: 6 px views vs 16 px global views
    assert cfg.views[2].size < cfg.views[0].size
    ex.mode.value = "MAE mask"
    ex.mask_ratio.value = 0.5
    p = ex.patch_size.value
    total = (16 // p) ** 2
    assert ex.captions[0][0] == f"MAE mask {total // 2}/{total} patches masked"
    ex.mode.value = "I-JEPA masks"
    assert ex.captions[0][0].startswith("I-JEPA context") and ex.last_error is None


def test_augmentation_explorer_bad_input_shows_message():
    ex = AugmentationExplorer(torch.zeros(3, 16, 16), preset="simclr")
    assert "uint8 images [N, C, H, W]" in ex.last_error and "uint8 images" in ex.error.value
    empty = AugmentationExplorer(torch.zeros(0, 3, 16, 16, dtype=torch.uint8))
    assert "empty" in empty.last_error


# ---------------------------------------------------------------------------------------- AttentionViewer
def test_attention_viewer_layers_heads_mask_and_click(runs, shapes16):
    from workbench.inspect.attention import head_attention

    av = AttentionViewer(runs["mae"], shapes16.images[:4])
    assert av.last_error is None and av.is_vit and av.layer.value == 1
    mean_png = av.png
    av.head.value = 0
    assert av.png != mean_png
    av.layer.value = 0
    assert av.last_error is None
    # DINO mask: the shown mask keeps the stated share of head-0 layer-0 attention mass
    av.view.value = "attention mask"
    av.share.value = 0.5
    attn = head_attention(av.maps(0), 0, 0)[0]
    p = attn / attn.sum()
    kept = torch.from_numpy(av.heat[::4, ::4].reshape(-1) > 0.5)
    assert float(p[kept].sum()) >= 0.5 - 1e-6
    assert float(p[kept].sum() - p[kept].min()) < 0.5
    av.view.value = "rollout"
    assert av.last_error is None and av.heat.shape == (16, 16)
    # click a patch in the left panel through the trace's dispatcher (display pixels = image px * zoom)
    z = av.zoom
    av.fig.data[0]._dispatch_on_click(points([0], [13.5 * z], [2.5 * z]), STATE)  # patch (0, 3)
    assert av.view.value == "patch similarity" and av.patch == (0, 3)
    assert np.allclose(av.heat[0:4, 12:16], 1.0)  # the query patch is most similar to itself
    av.view.value = "PCA"
    assert av.last_error is None and av.heat.shape == (16, 16, 3)


def test_attention_viewer_cnn_and_wrong_size(runs, shapes16, tmp_path):
    cv = AttentionViewer(runs["cnn"], shapes16.images[:3])
    assert cv.view.value == "patch similarity" and cv.last_error is None and cv.png
    cv.view.value = "attention"
    assert "needs a ViT" in cv.last_error and "patch-similarity and PCA" in cv.last_error
    cv.view.value = "PCA"
    assert cv.last_error is None
    cv.select_patch(1, 1)
    assert cv.patch == (1, 1) and cv.last_error is None
    assert cv.save(tmp_path / "cnn.png") == "picture"  # the widget's own captioned picture, no browser needed
    assert np.array_equal(decode_png((tmp_path / "cnn.png").read_bytes()), cv.picture)
    assert cv.save(tmp_path / "cnn.html") == "html" and cv.save(tmp_path / "cnn2.html") == "html"
    page = (tmp_path / "cnn.html").read_text()
    assert 'src="plotly.min.js"' in page and len(page) < 500_000  # plotly.js is not inlined ...
    assert "Plotly" in (tmp_path / "plotly.min.js").read_text()[:100_000]  # ... but shared, once, beside it
    bad = AttentionViewer(runs["mae"], torch.zeros(2, 3, 24, 24, dtype=torch.uint8))
    assert "24x24" in bad.last_error and "16x16" in bad.last_error


def _non_white(picture: np.ndarray) -> float:
    """Share of a picture's pixels that are not (near) white: how much of the canvas shows something."""
    return float((np.asarray(picture) < 245).any(-1).mean())


def test_pictures_fill_their_canvas_and_show_patches_as_blocks(runs, shapes16):
    # the augmentation grid, its captions beside each row (before: a quarter of a white 1000x700 canvas, 0.21)
    ex = AugmentationExplorer(shapes16, preset="byol", n_images=4, seed=0)
    pic = ex.picture
    assert _non_white(pic) > 0.4 and pic.shape[0] >= 4 * 128  # four rows of images zoomed to ~128 px
    right = pic[:, 3 * 128 + 24:]  # the caption column beside the image columns: each view's text in its colour
    blue = (np.abs(right.astype(int) - palette_rgb()[0]).sum(-1) < 60)
    orange = (np.abs(right.astype(int) - palette_rgb()[1]).sum(-1) < 60)
    assert blue.sum() > 50 and orange.sum() > 50
    # patch views for a CNN (a 2x2 grid on 16 px images): the image, the map, the map over the image, per image
    cv = AttentionViewer(runs["cnn"], shapes16.images[:3])
    assert cv.grid == (2, 2) and cv.patch == (0, 0)
    sheet = cv.picture
    assert _non_white(sheet) > 0.4 and sheet.shape[0] >= 2 * 16 * cv.zoom and sheet.shape[1] >= 3 * 16 * cv.zoom
    heat = cv.heat  # similarity at image resolution: one constant block per patch (nearest, not blurred)
    for r in range(2):
        for c in range(2):
            block = heat[8 * r:8 * r + 8, 8 * c:8 * c + 8]
            assert np.allclose(block, block[0, 0])
    assert cv.heat[:8, :8].max() == pytest.approx(1.0)  # the query patch is most similar to itself
    green = (sheet == (0, 255, 0)).all(-1)  # ... and outlined in the map and the overlay of the first row
    assert green[:, 16 * cv.zoom:].sum() > 2 * 4 * 8 * cv.zoom - 16


def test_widgets_display_their_static_picture_under_the_runner(runs, shapes16, tmp_path, monkeypatch):
    import base64

    live = AugmentationExplorer(shapes16, n_images=2)
    assert "application/vnd.jupyter.widget-view+json" in live._repr_mimebundle_()  # JupyterLab: the live widget
    monkeypatch.setenv("WORKBENCH_DISPLAY", "static")  # what run_notebook sets in the kernel
    mon = TrainingMonitor(runs["cnn"], autostart=False)
    for w in (live, AttentionViewer(runs["cnn"], shapes16.images[:2]), mon):
        bundle = w._repr_mimebundle_()
        assert set(bundle) == {"image/png", "text/plain"}  # no widget view: nothing needs widget state
        png = base64.b64decode(bundle["image/png"])
        if w is not mon:  # image widgets show their own captioned picture
            assert w.static_picture() == (png, "picture") and np.array_equal(decode_png(png), w.picture)
    assert _non_white(decode_png(png)) > 0.02  # the monitor's curves, rendered (kaleido, else PIL): not blank
    broken = AugmentationExplorer(torch.zeros(3, 16, 16))
    assert "uint8 images" in broken._repr_mimebundle_()["text/plain"]  # the error, not a traceback


# ---------------------------------------------------------------------------------------- ReconstructionViewer
def test_reconstruction_viewer_mask_ratio_and_paste(runs, shapes16):
    rv = ReconstructionViewer(runs["mae"], shapes16.images[:3], n_images=2)
    assert rv.last_error is None and rv.result["mask"].mean().item() == pytest.approx(0.75)
    png = rv.png
    rv.mask_ratio.value = 0.25
    assert rv.png != png and rv.result["mask"].mean().item() == pytest.approx(0.25)
    r = rv.result
    visible = (r["mask"][0].reshape(4, 4) < 0.5).repeat_interleave(4, 0).repeat_interleave(4, 1)
    diff = (r["pasted"][0].int() - r["original"][0].int()).abs()
    assert diff[:, visible].max() <= 1  # visible patches pasted from the original (rounding only)
    assert (r["masked"][0][:, ~visible] == 128).all()
    assert "loss" in rv.loss.value
    bad = ReconstructionViewer(runs["cnn"], shapes16.images[:2])
    assert "need an MAE run" in bad.last_error


# ---------------------------------------------------------------------------------------- EmbeddingExplorer
def _clustered(n_per=20, k=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per)
    feats = torch.eye(k, d)[labels] * 3 + 0.3 * torch.randn(k * n_per, d, generator=g)
    imgs = torch.randint(0, 256, (k * n_per, 3, 8, 8), generator=g, dtype=torch.uint8)
    return feats, labels, imgs


def test_embedding_explorer_hover_click_select_colour(tmp_path):
    feats, labels, imgs = _clustered()
    ex = EmbeddingExplorer(feats, imgs, labels, factors={"parity": labels % 2}, k=5, umap="off")
    trace = ex.fig.data[0]
    assert trace.type == "scattergl" and ex.point_hex() == [palette()[int(v)] for v in labels]
    # hover shows that point's image
    trace._dispatch_on_hover(points([7], [0.0], [0.0]), STATE)
    assert ex.thumb.value == png_bytes(upscale(to_hwc(imgs[7]), 16)) and "#7" in ex.thumb_caption.value
    # click: neighbours equal a brute-force cosine ranking
    trace._dispatch_on_click(points([30], [0.0], [0.0]), STATE)
    f = torch.nn.functional.normalize(feats, dim=1)
    sims = f @ f[30]
    sims[30] = -2
    assert ex.neighbors.tolist() == sims.topk(5).indices.tolist()
    assert (labels[ex.neighbors] == labels[30]).all() and ex.gallery.value.count("<img") == 6
    # box selection shows the selected images; an empty one says so
    trace._dispatch_on_selection(points([1, 2, 45]), BoxSelector(xrange=[0, 1], yrange=[0, 1]))
    assert ex.selected.tolist() == [1, 2, 45] and "3 selected" in ex.gallery.value
    assert ex.gallery.value.count("<img") == 3
    trace._dispatch_on_selection(points([]), BoxSelector(xrange=[0, 1], yrange=[0, 1]))
    assert "Empty selection" in ex.gallery.value
    # colour dropdown
    ex.color_by.value = "factor: parity"
    assert ex.point_hex() == [palette()[int(v) % 2] for v in labels]
    # the legend names each colour: one legend-only entry per value, in the colour its points are drawn in
    legend = {t.name: t.marker.color for t in ex.fig.data[1:]}
    counts = torch.bincount(labels % 2).tolist()
    assert legend == {f"parity={v} ({counts[v]})": palette()[v] for v in (0, 1)}
    assert all(len(t.x) == 1 and t.x[0] is None for t in ex.fig.data[1:])  # no extra points
    ex.color_by.value = "kNN correct"
    assert set(ex.point_hex()) == {"#2ca02c"}  # well-separated clusters: all correct
    assert [(t.name, t.marker.color) for t in ex.fig.data[1:]] == [(f"kNN right ({len(labels)})", "#2ca02c")]
    ex.color_by.value = ex.color_by.options[2]  # k-means
    km = ex.coloring(ex.color_by.value)
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(labels.numpy(), km) == 1.0
    assert ex.projection.value == "PCA"
    noisy = labels.clone()
    noisy[0] = 3  # a class-0 point labelled 3: its neighbours vote 0, so it is drawn red
    ex2 = EmbeddingExplorer(feats, imgs, noisy, umap="off")
    ex2.color_by.value = "kNN correct"
    hexes = ex2.point_hex()
    assert hexes[0] == "#d62728" and set(hexes[1:]) == {"#2ca02c"}
    ex.projection.value = "UMAP"  # not computed: message, PCA stays
    assert "not ready" in ex.last_error and ex.projection.value == "PCA"
    assert ex2.save(tmp_path / "emb.html") == "html"
    assert "scattergl" in (tmp_path / "emb.html").read_text()
    assert ex2.save(tmp_path / "emb.png") in ("pil", "kaleido")
    pic = decode_png((tmp_path / "emb.png").read_bytes())
    red = (pic[..., 0] > 200) & (pic[..., 1] < 80) & (pic[..., 2] < 80)
    assert red.any()  # the one kNN-wrong point is drawn in red


def test_embedding_explorer_background_load_shows_first(runs, shapes16):
    """load="background": the widget is complete (controls, a "computing" line, no plot) before the features exist;
    the thread then puts the same PCA scatter a synchronous load draws in the plot row; a failure lands in the
    error area."""
    from widgets import embedding as emb

    with emb._LOAD_LOCK:  # hold the background load back: what the cell returns is what is first shown
        ex = EmbeddingExplorer(runs["cnn"], shapes16, umap="off", load="background")
        assert "computing" in ex.status.value and ex.fig is None and not ex.wait(0.05)
        assert len(ex._plot_row.children) == 1 and ex.widget._repr_mimebundle_() is not None
    assert ex.wait(120) and ex.last_error is None and ex.status.value == ""
    now = EmbeddingExplorer(runs["cnn"], shapes16, umap="off", load="now")
    assert ex._plot_row.children[0] is ex.fig and ex.fig.data[0].type == "scattergl"
    assert np.allclose(ex.coords["PCA"], now.coords["PCA"]) and ex.point_hex() == now.point_hex()
    assert list(ex.color_by.options) == list(now.color_by.options)
    bad = EmbeddingExplorer(torch.randn(10, 4), torch.zeros(3, 3, 8, 8, dtype=torch.uint8), load="background")
    assert bad.wait(60) and "N = 10" in bad.last_error and bad.fig is None
    with pytest.raises(ValueError, match="N = 10"):
        bad.to_figure()


def test_embedding_explorer_from_run_caches_coordinates(runs, shapes16):
    ex = EmbeddingExplorer(runs["cnn"], shapes16, umap="off")
    assert ex.last_error is None and ex.features.shape == (64, 32)
    cached = list(runs["cnn"].cache_dir.glob("embedding-pca-*.npy"))
    assert len(cached) == 1 and np.allclose(np.load(cached[0]), ex.coords["PCA"])
    assert len(ex.color_by.options) >= 4  # label, shapes factors, k-means, kNN correct
    names = sorted(t.name.rsplit(" (", 1)[0] for t in ex.fig.data[1:])  # legend: the class names of shapes
    assert names == sorted(shapes16.class_names[int(v)] for v in shapes16.labels.unique())
    ex.color_by.value = "factor: colour"  # a named factor: its value names
    assert {t.name.split(" (")[0] for t in ex.fig.data[1:]} <= {f"colour={c}" for c in shapes16.factor_names["colour"]}
    bad = EmbeddingExplorer(torch.randn(10, 4), torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    assert "N = 10" in bad.last_error


# ---------------------------------------------------------------------------------------- TrainingMonitor
def test_training_monitor_follows_folder_and_warns_on_collapse(tmp_path):
    run = Run.create(tmp_path, "simclr", "shapes", {"method": "simclr"})
    run.set_status("running")
    d = 64
    for s in range(1, 6):
        run.log_metrics({"kind": "step", "step": s, "loss": 5.0 - s * 0.1, "lr": 0.1, "rankme": 40.0,
                         "std": 1 / math.sqrt(d)})
    mon = TrainingMonitor(run, dim=d, autostart=False)
    assert len(mon.fig.data[0].x) == 5 and mon.warning.value == ""
    for s in range(6, 12):
        run.log_metrics({"kind": "step", "step": s, "loss": 4.0, "lr": 0.1, "rankme": 2.0, "std": 0.001})
    run.log_metrics({"kind": "epoch", "epoch": 1, "step": 11, "knn_acc": 0.3})
    assert mon.refresh() == 12
    assert len(mon.fig.data[0].x) == 11 and list(mon.fig.data[2].y) == [0.3]
    assert mon.collapse.collapsed and "possible collapse" in mon.warning.value
    # the polling thread picks up new records on its own
    mon.start(interval=0.05)
    run.log_metrics({"kind": "step", "step": 12, "loss": 3.0, "lr": 0.1, "rankme": 2.0, "std": 0.001})
    run.set_status("completed")
    deadline = time.time() + 10
    # the record and the status are two writes: wait until the poller has shown both (it stops at "completed")
    while (len(mon.fig.data[0].x) < 12 or "completed" not in mon.header.value) and time.time() < deadline:
        time.sleep(0.05)
    mon.stop()
    assert len(mon.fig.data[0].x) == 12 and "completed" in mon.header.value
    # an older run (no spectrum in its records): the spectrum panel shows its note and no line
    note = [a for a in mon.fig.layout.annotations if a.name == "spectrum-note"]
    assert len(mon.fig.data) == 5 and len(note) == 1 and note[0].visible
    # epoch records with a spectrum: one line per epoch on the log-scale panel, light (early) to dark, last thick
    spectra = [[0.5, 0.3, 0.2], [0.8, 0.15, 0.05], [0.98, 0.015, 0.005]]  # collapsing onto one direction
    for e, sp in enumerate(spectra[:2], start=2):
        run.log_metrics({"kind": "epoch", "epoch": e, "step": 12, "knn_acc": 0.3, "spectrum": sp})
    mon.refresh()
    assert len(mon.fig.data) == 7 and [list(t.y) for t in mon.fig.data[5:]] == spectra[:2]
    assert not note[0].visible and mon.fig.layout.yaxis6.type == "log"
    before = mon.fig.data[5].line.color
    run.log_metrics({"kind": "epoch", "epoch": 4, "step": 12, "knn_acc": 0.3, "spectrum": spectra[2]})
    mon.refresh()
    lines = mon.fig.data[5:]
    assert [list(t.y) for t in lines] == spectra and list(lines[-1].x) == [1, 2, 3]
    assert [t.line.width for t in lines] == [1.2, 1.2, 3] and "epoch 4 (last)" == lines[-1].name
    assert lines[0].line.color != before and len({t.line.color for t in lines}) == 3  # colours re-spread
    # readable panels: every one titled and with a y-axis label; 6 panels in two rows of 3, no empty slot, and no
    # legend for a single run
    fig = mon.to_figure()
    axes = [fig.layout[k] for k in fig.layout if k.startswith("yaxis")]
    assert len(axes) == 6 and all(a.title.text for a in axes) and not fig.layout.showlegend
    assert len(fig.data) == 5 + 3 and fig.layout.yaxis6.type == "log"
    xdomains = sorted((round(fig.layout[k].domain[0], 3), round(fig.layout[k].domain[1], 3))
                      for k in fig.layout if k.startswith("xaxis"))
    assert xdomains[0][0] == 0 and xdomains[-1][1] == 1  # both rows span the width
    assert sum(d[1] - d[0] for d in xdomains) > 1.6  # 2 x 3 panels minus the gaps
    assert mon.save(tmp_path / "mon.html") == "html" and "possible collapse" in (tmp_path / "mon.html").read_text()


def test_training_monitor_attached_as_engine_callback(tmp_path):
    from workbench.train import start_pretrain

    mon = TrainingMonitor(min_interval=0.0)
    handle = start_pretrain(_tiny("simclr", "small_cnn", tmp_path, {"width": 4}, epochs=2), callbacks=[mon])
    run = handle.wait(timeout=300)
    steps = [r for r in run.metrics() if r["kind"] == "step"]
    assert mon.run is not None and mon.run.path == run.path
    assert list(mon.fig.data[0].y) == pytest.approx([r["loss"] for r in steps])
    assert len(mon.fig.data[2].x) == 2  # kNN accuracy per epoch
    assert "completed" in mon.header.value and mon.dim == 32
    assert run.status["status"] == "completed" and "stopped" not in mon.header.value
    epochs = [r for r in run.metrics() if r["kind"] == "epoch"]
    assert len(mon.fig.data) == 5 + len(epochs) == 7  # one spectrum line per epoch, its values the record's
    assert all(np.allclose(t.y, r["spectrum"], rtol=1e-6, atol=0) for t, r in zip(mon.fig.data[5:], epochs))
    fig = mon.to_figure()
    assert len(fig.data) == 5 + 2


# ---------------------------------------------------------------------------------------- RunBrowser
def test_run_browser_filter_sort_select(tmp_path):
    specs = [("simclr", 0.5), ("byol", 0.7), ("dino", 0.6)]
    for i, (m, acc) in enumerate(specs):
        r = Run.create(tmp_path, m, "shapes", {"method": m, "data": {"name": "shapes"},
                                                "model": {"backbone": "small_cnn"}, "train": {"epochs": 3 + i}},
                       name=f"run{i}-{m}")
        for s in range(1, 4):
            r.log_metrics({"kind": "step", "step": s, "loss": 5.0 - s, "rankme": 10.0 + i})
        r.log_metrics({"kind": "epoch", "epoch": 1, "step": 3, "knn_acc": acc})
        r.update_summary({"pretrain_knn_acc": acc, "linear_acc": acc + 0.1})
        r.set_status("completed")
    stopped = Run.create(tmp_path, "byol", "shapes", {"method": "byol", "train": {"epochs": 25}}, name="run3-stopped")
    # a notebook run's summary repeats its training run's kNN accuracy: shown once (knn_acc)
    stopped.update_summary({"knn_acc": 0.4, "pretrain_knn_acc": 0.4})
    stopped.set_status("stopped", step=223, total_steps=575, epoch=223 / 23, epochs=25)
    rb = RunBrowser(tmp_path)
    assert rb.shown.set_index("run").loc["run3-stopped", "status"] == "stopped at epoch 9.7 of 25"
    assert {"knn_acc", "pretrain_knn_acc"} <= set(rb.table.columns)  # the other runs have only the second
    assert rb.plot_box.layout.display == "none" and rb.fig is None  # no (empty) plot before a run is chosen
    rb.select.value = ("run3-stopped",)
    assert rb.plot_box.layout.display != "none" and "stopped at epoch 9.7 of 25" in rb.compare_area.value
    assert rb.compare_area.value.count("knn_acc") == 1
    rb.select.value = ()
    stopped.update_summary({"knn_acc": 0.5})  # different values: both rows stay
    rb.refresh()
    rb.select.value = ("run3-stopped",)
    assert rb.compare_area.value.count("knn_acc") == 2
    import shutil
    shutil.rmtree(stopped.path)
    rb = RunBrowser(tmp_path)
    assert list(rb.shown["run"]) == ["run0-simclr", "run1-byol", "run2-dino"]
    assert list(rb.shown["epochs"]) == [3, 4, 5] and "linear_acc" in rb.table.columns
    rb.sort.value = "pretrain_knn_acc"
    rb.descending.value = True
    assert list(rb.select.options) == ["run1-byol", "run2-dino", "run0-simclr"]
    rb.filter.value = "DINO"
    assert list(rb.select.options) == ["run2-dino"] and "run0-simclr" not in rb.table_area.value
    rb.filter.value = ""
    assert "select one or more runs" in rb.compare_area.value
    rb.select.value = ("run0-simclr", "run1-byol")
    assert len(rb.fig.data) == 2 * 3
    assert {t.name for t in rb.fig.data} == {"run0-simclr", "run1-byol"}
    assert "run0-simclr" in rb.compare_area.value and "0.8" in rb.compare_area.value  # byol linear_acc
    assert len(rb.to_figure().data) == 6
    assert rb.save(tmp_path / "runs.png") in ("pil", "kaleido")
    pic = decode_png((tmp_path / "runs.png").read_bytes())
    assert (pic != 255).any()  # curves were drawn
    missing = RunBrowser(tmp_path / "nope")
    assert "does not exist" in missing.last_error


def test_first_figure_widget_does_not_build_the_iri_grammars():
    """plotly's FigureWidget imports jsonschema, whose IRI format check (rfc3987_syntax) builds Lark grammars at
    import (seconds): importing widgets defers that to the first IRI check, which still answers correctly."""
    import subprocess
    import sys

    code = ("import sys, widgets, plotly.graph_objects as go, jsonschema\n"
            "go.FigureWidget()\n"
            "assert 'jsonschema._format' in sys.modules and 'lark' not in sys.modules, 'grammars built at import'\n"
            "v = jsonschema.Draft7Validator({'format': 'iri'}, format_checker=jsonschema.FormatChecker())\n"
            "assert v.is_valid('https://example.org/caf\\u00e9') and not v.is_valid('no iri ::: %%')\n"
            "assert 'lark' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
