"""EmbeddingExplorer: a WebGL scatter of up to ~70k feature vectors in 2-D (PCA at once, UMAP when computed,
cached with the run), coloured by label / factor / k-means / kNN correctness; hover shows the image, click its
nearest neighbours in feature space, box or lasso selection the selected images."""
from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import torch
import torch.nn.functional as F

from widgets._base import WidgetBase, gallery_html, guarded
from workbench.inspect.images import png_bytes, thumbnail_uri, to_hwc, upscale

MAX_SELECTION_SHOWN = 48
UMAP_START_S = 3.0  # a background UMAP starts when the widget is displayed, or after this many seconds
_LOAD_LOCK = threading.Lock()  # background loads run one at a time (CPU, and no two threads importing at once)


def _live_kernel() -> bool:
    """True in a Jupyter kernel whose outputs a browser shows live (not under ``workbench run``'s static display)."""
    from workbench.experiments.records import static_display

    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return getattr(shell, "kernel", None) is not None and not static_display()


class EmbeddingExplorer(WidgetBase):
    """Explore a feature space.

    ``source``: features [N, D] (tensor/array), a FeatureSet (features, labels, factors), or a model (anything
    ``workbench.trained.load_trained`` takes, e.g. a run folder or ``"timm:vit_small_patch14_dinov2.lvd142m"``: its
    backbone embeds ``images``, or the test split of the data it was trained on when ``images`` is None; features
    are cached with the run, or for a spec in ``workbench.trained.user_cache_dir()``). ``images``: ImageDataset or
    uint8 [N, C, H, W] for thumbnails (optional); ``labels`` int [N]; ``factors`` name -> [N]. 2-D coordinates:
    PCA immediately; ``umap="background"`` computes UMAP in a thread and switches to it when ready ("now":
    before returning; "off": never). With a run, coordinates are cached in its ``cache/`` folder. ``load``: when
    the features, PCA and figure are computed: "now" (before returning), "background" (the widget shows at once with
    a "computing" line, a thread fills in the plot; :meth:`wait` blocks until it has, and with ``umap="now"`` until
    UMAP is shown too, as ``coloring``, ``point_hex``, ``to_figure`` and ``save`` do), "auto" (background in a live Jupyter kernel, else now: a model's
    features take seconds, and the first display of the cell should not wait for them).
    Handlers (the ones plotly calls): ``on_hover``, ``on_click``, ``on_selection`` (trace, points, state/selector).
    """

    def __init__(self, source: Any, images: Any = None, labels: Any = None, factors: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, k: int = 8, umap: str = "background",
                 cache_dir: str | Path | None = None, n_clusters: int | None = None, checkpoint: str = "last",
                 load: str = "auto"):
        if umap not in ("background", "now", "off"):
            raise ValueError(f"umap must be 'background', 'now' or 'off', got {umap!r}")
        if load not in ("auto", "now", "background"):
            raise ValueError(f"load must be 'auto', 'now' or 'background', got {load!r}")
        super().__init__()
        self.k = k
        self.neighbors: np.ndarray = np.zeros(0, dtype=np.int64)
        self.selected: np.ndarray = np.zeros(0, dtype=np.int64)
        self.hovered: int | None = None
        self.coords: dict[str, np.ndarray] = {}
        self._colorings: dict[str, np.ndarray] = {}
        self._umap_thread: threading.Thread | None = None
        self._load_thread: threading.Thread | None = None
        self._displayed = threading.Event()
        self._ready = threading.Event()
        self.fig: Any = None  # the plotly FigureWidget, once the features and their PCA are ready
        self.color_by = W.Dropdown(options=["label"], value="label", description="colour")
        self.projection = W.ToggleButtons(options=["PCA", "UMAP"], value="PCA")
        self.status = W.HTML()
        # hidden until the first hover: an Image without a value shows the browser's broken-image icon
        self.thumb = W.Image(format="png", width=128, height=128, layout=W.Layout(visibility="hidden"))
        self.thumb_caption = W.HTML()
        self.gallery = W.HTML()
        self._plot_row = W.HBox([W.VBox([self.thumb, self.thumb_caption])])  # the plot goes first once ready
        self.widget = W.VBox([self.error, W.HBox([self.color_by, self.projection]), self.status, self._plot_row,
                              self.gallery])
        self.widget.add_class("wb-embedding-explorer")  # CSS hooks for tests/widgets/test_browser.py
        self.gallery.add_class("wb-embedding-gallery")
        self.thumb.add_class("wb-embedding-thumb")
        args = (source, images, labels, factors, class_names, cache_dir, checkpoint, n_clusters)
        if load == "background" or (load == "auto" and _live_kernel()):
            # shown at once; the features (a model embeds its images), the PCA and the figure follow in a thread
            self._say("&#9203; computing the features and their PCA view&hellip;")
            self._load_thread = threading.Thread(target=self._build_in_background, args=(args, umap), daemon=True,
                                                 name="embedding-load")
            self._load_thread.start()
            return
        try:
            self._build(*args)
        except Exception as e:
            self.show_error(str(e))
            return
        finally:
            self._ready.set()
        if umap == "now":
            self.compute_umap()
        elif umap == "background":
            self._say("&#9203; computing UMAP… (PCA shown meanwhile; the view switches to UMAP when it is ready)")
            self._umap_thread = threading.Thread(target=self._umap_after_display, daemon=True, name="embedding-umap")
            self._umap_thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the features, their PCA view and the figure are ready (at once unless they are computed in
        the background, see ``load``); False if ``timeout`` seconds passed first."""
        return self._ready.wait(timeout)

    def _build(self, source: Any, images: Any, labels: Any, factors: Any, class_names: Any, cache_dir: Any,
               checkpoint: str, n_clusters: int | None) -> None:
        """Features (:meth:`_load`), the PCA coordinates, the colour choices and the scatter (``fig``, put in the
        plot row with its handlers wired)."""
        import plotly.graph_objects as go

        from workbench.inspect.embedding import legend_traces, scatter_figure

        self._load(source, images, labels, factors, class_names, cache_dir, checkpoint)
        self.n_clusters = n_clusters or max(2, min(50, len(np.unique(self.labels[self.labels >= 0])) or 10))
        self.coords["PCA"] = self._embed("pca")
        fig = scatter_figure(self.coords["PCA"], self._coloring("label"), title="PCA")
        fig.update_traces(hoverinfo="none", showlegend=False)
        fig.update_layout(width=780, showlegend=True, legend=dict(title_text="label", itemclick=False,
                                                                    itemdoubleclick=False))
        fig.add_traces(legend_traces(self._coloring("label"), self._legend_name("label")))
        self.fig = go.FigureWidget(fig)
        self.fig.add_class("wb-embedding-plot")
        trace = self.fig.data[0]
        trace.on_hover(self.on_hover)
        trace.on_click(self.on_click)
        trace.on_selection(self.on_selection)
        self.color_by.options = (["label"] + [f"factor: {f}" for f in self.factors]
                                 + [f"k-means ({self.n_clusters})", "kNN correct"])
        self.color_by.observe(self._on_color, names="value")
        self.projection.observe(self._on_projection, names="value")
        self._plot_row.children = (self.fig, *self._plot_row.children)

    def _build_in_background(self, args: tuple, umap: str) -> None:
        """:meth:`_build` off the cell's thread (one explorer at a time), then UMAP if asked for ("now": before the
        explorer counts as ready, so ``save`` writes the UMAP view as a synchronous load would); a failure is shown
        in the error area, never raised into whichever cell runs meanwhile."""
        try:
            with _LOAD_LOCK:
                self._build(*args)
        except Exception as e:  # shown to the user, kept in last_error
            self.status.value = ""
            self.show_error(str(e) or type(e).__name__)
            self._ready.set()
            return
        if umap == "off":
            self.status.value = ""
            self._ready.set()
            return
        self._say("&#9203; computing UMAP… (PCA shown meanwhile; the view switches to UMAP when it is ready)")
        if umap == "background":
            self._ready.set()
        try:
            self._compute_umap()
        finally:
            self._ready.set()

    # -- data ------------------------------------------------------------------------------------------------------
    def _load(self, source: Any, images: Any, labels: Any, factors: Any, class_names: Any, cache_dir: Any,
              checkpoint: str) -> None:
        from workbench.runs import Run
        from workbench.trained import Trained, extract_features, load_trained

        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        ds = None
        if images is not None and hasattr(images, "images"):
            ds = images
            images = ds.images
        if isinstance(source, (Run, str, Path, torch.nn.Module, Trained)):  # a model: embed the images with it
            trained = load_trained(source, checkpoint)
            if images is None:
                ds = trained.dataset("test")
                images = ds.images
            feats = extract_features(trained, ds if ds is not None else images).features
            self.cache_dir = self.cache_dir or trained.cache_dir
            class_names = class_names or trained.class_names
        elif hasattr(source, "features"):  # FeatureSet
            feats = source.features
            labels = source.labels if labels is None else labels
            factors = factors if factors is not None else getattr(source, "factors", {})
            class_names = class_names or getattr(source, "class_names", None)
        else:
            feats = source
        feats = feats if isinstance(feats, torch.Tensor) else torch.as_tensor(np.asarray(feats))
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"features must be [N, D] with N >= 2, got shape {tuple(feats.shape)}")
        n = feats.shape[0]
        if ds is not None:
            labels = ds.labels if labels is None else labels
            factors = factors if factors is not None else ds.factors
            class_names = class_names or ds.class_names
        if images is not None and (not isinstance(images, torch.Tensor) or images.shape[0] != n):
            raise ValueError(f"images must be uint8 [N, C, H, W] with N = {n} (one per feature row), got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        self.features = feats.float().cpu()
        self.normed = F.normalize(self.features, dim=1)
        self.images = images
        self.labels = (np.asarray(labels).astype(np.int64) if labels is not None else np.full(n, -1, np.int64))
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        self.factors = {k: np.asarray(v) for k, v in (factors or {}).items()}
        self.factor_names = dict(getattr(ds, "factor_names", None) or {}) if ds is not None else {}
        for kf, v in self.factors.items():
            if v.shape[0] != n:
                raise ValueError(f"factor {kf!r} has {v.shape[0]} values for {n} points")
        self.class_names = list(class_names or [])

    def _embed(self, method: str) -> np.ndarray:
        from workbench.inspect.embedding import embedding_2d

        return embedding_2d(self.features, method, cache_dir=self.cache_dir)

    def _umap_after_display(self) -> None:
        """UMAP in the background, begun once the widget was displayed (or after UMAP_START_S): its imports (umap,
        numba) would otherwise compete with the cell that shows the widget for the interpreter."""
        if self._displayed.wait(UMAP_START_S):
            time.sleep(0.3)  # the display message goes out first
        self.compute_umap()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        self._displayed.set()
        return super()._repr_mimebundle_(**kwargs)

    def _say(self, message: str, color: str = "#1e429f", background: str = "#e1effe") -> None:
        """A one-line state above the plot (HTML ``message``)."""
        self.status.value = (f"<div style='color:{color};background:{background};padding:4px 8px;"
                             f"border-radius:4px;display:inline-block'>{message}</div>")

    def compute_umap(self) -> np.ndarray | None:
        """Compute (or read from the cache) the UMAP coordinates and switch the plot to them; on failure the state
        line says why and PCA stays (None returned)."""
        if not self.wait() or not self.coords:  # a background load failed: its error is shown
            return None
        return self._compute_umap()

    def _compute_umap(self) -> np.ndarray | None:
        try:
            self.coords["UMAP"] = self._embed("umap")
        except Exception as e:  # e.g. umap-learn missing: say so where "computing" was shown
            self._say(f"UMAP could not be computed ({type(e).__name__}: {html.escape(str(e))}); PCA is shown.",
                      "#9b1c1c", "#fde8e8")
            return None
        self.projection.value = "UMAP"
        self._show_projection()
        self._say("UMAP shown (toggle PCA above).", "#03543f", "#def7ec")
        return self.coords["UMAP"]

    def _legend_name(self, name: str) -> Any:
        """code -> the name a legend shows for colouring ``name``: class names, factor value names, clusters."""
        if name == "label":
            return lambda c: self.class_names[c] if 0 <= c < len(self.class_names) else ("unlabeled" if c < 0
                                                                                           else str(c))
        if name.startswith("factor: "):
            f = name[len("factor: "):]
            vals = self.factor_names.get(f) or []
            return lambda c: f"{f}={vals[c]}" if 0 <= c < len(vals) else f"{f}={c}"
        if name.startswith("k-means"):
            return lambda c: f"cluster {c}"
        if name == "kNN correct":
            return lambda c: "kNN right" if c else "kNN wrong"
        return None

    def label_name(self, i: int) -> str:
        y = int(self.labels[i])
        if y < 0:
            return "unlabeled"
        return self.class_names[y] if y < len(self.class_names) else str(y)

    def coloring(self, name: str) -> np.ndarray:
        """Per-point values of a colouring ("label", "factor: NAME", "k-means (K)", "kNN correct"), cached (after
        waiting for a background load)."""
        self.wait()
        return self._coloring(name)

    def _coloring(self, name: str) -> np.ndarray:
        from workbench.inspect.embedding import kmeans_labels, knn_correct

        if name not in self._colorings:
            if name == "label":
                v = self.labels
            elif name.startswith("factor: "):
                v = self.factors[name[len("factor: "):]]
            elif name.startswith("k-means"):
                v = kmeans_labels(self.features, self.n_clusters)
            elif name == "kNN correct":
                if (self.labels < 0).all():
                    raise ValueError("kNN correctness needs labels; none were given")
                v = knn_correct(self.features, np.maximum(self.labels, 0), k=min(20, len(self.labels) - 1))
            else:
                raise ValueError(f"unknown colouring {name!r}; choose one of {list(self.color_by.options)}")
            self._colorings[name] = np.asarray(v)
        return self._colorings[name]

    def point_hex(self) -> list[str]:
        """The colour each point is drawn in now (hex), through the trace's discrete colour scale."""
        from workbench.inspect.colors import spec_colors

        self.wait()
        return spec_colors(self.fig.data[0].marker)

    # -- handlers ----------------------------------------------------------------------------------------------
    @guarded
    def _on_color(self, change: Any = None) -> None:
        from workbench.inspect.colors import color_spec
        from workbench.inspect.embedding import legend_traces

        name = self.color_by.value
        values = self.coloring(name)
        spec = color_spec(values)
        if spec.get("showscale"):  # a continuous factor: the colour bar is its key, titled with the factor
            spec["colorbar"] = dict(title=dict(text=name.replace("factor: ", "")), thickness=12)
        with self.fig.batch_update():
            self.fig.data[0].marker.update(spec)
            self.fig.data = self.fig.data[:1]
            self.fig.add_traces(legend_traces(values, self._legend_name(name)))
            self.fig.layout.legend.title.text = name.replace("factor: ", "")
        self.clear_error()

    @guarded
    def _on_projection(self, change: Any = None) -> None:
        if self.projection.value not in self.coords:
            self.projection.value = "PCA"
            raise ValueError("UMAP coordinates are not ready yet (computing in the background); PCA is shown")
        self._show_projection()

    def _show_projection(self) -> None:
        c = self.coords[self.projection.value]
        with self.fig.batch_update():
            self.fig.data[0].x = c[:, 0]
            self.fig.data[0].y = c[:, 1]
            self.fig.layout.title = self.projection.value

    def _image_png(self, i: int, size: int = 128) -> bytes:
        img = to_hwc(self.images[i])
        return png_bytes(upscale(img, max(1, size // max(img.shape[:2]))))

    @guarded
    def on_hover(self, trace: Any, points: Any, state: Any = None) -> None:
        """Show the hovered point's image and label beside the plot."""
        inds = list(getattr(points, "point_inds", []) or [])
        if not inds:
            return
        i = int(inds[0])
        self.hovered = i
        if self.images is not None:
            self.thumb.value = self._image_png(i)
            self.thumb.layout.visibility = "visible"
        extra = "".join(f", {k}={v[i]}" for k, v in self.factors.items())
        self.thumb_caption.value = f"#{i}: {self.label_name(i)}{extra}"

    @guarded
    def on_click(self, trace: Any, points: Any, state: Any = None) -> None:
        """Show the clicked point's ``k`` nearest neighbours (cosine, in feature space) as a gallery with labels."""
        from workbench.inspect.embedding import nearest_neighbors

        inds = list(getattr(points, "point_inds", []) or [])
        if not inds:
            return
        i = int(inds[0])
        idx, sims = nearest_neighbors(self.normed, [i], k=self.k, normalized=True)
        self.neighbors = idx[0]
        caps = [f"#{j} {self.label_name(j)} ({s:.2f})" for j, s in zip(idx[0], sims[0])]
        head = f"<b>{self.k} nearest neighbours of #{i} ({self.label_name(i)})</b><br>"
        if self.images is not None:
            uris = [thumbnail_uri(self.images[j], 64) for j in [i, *idx[0]]]
            self.gallery.value = head + gallery_html(uris, [f"query #{i} {self.label_name(i)}", *caps])
        else:
            self.gallery.value = head + "<br>".join(caps)
        self.clear_error()

    @guarded
    def on_selection(self, trace: Any, points: Any, selector: Any = None) -> None:
        """Show the images inside a box or lasso selection (the first 48, with the count and label mix)."""
        inds = np.asarray(list(getattr(points, "point_inds", []) or []), dtype=np.int64)
        self.selected = inds
        if inds.size == 0:
            self.gallery.value = ("<b>Empty selection</b>: no point lies inside the box or lasso; drag around "
                                  "some points (toolbar: box select or lasso select).")
            return
        vals, counts = np.unique(self.labels[inds], return_counts=True)
        mix = ", ".join(f"{self.label_name(int(np.flatnonzero(self.labels == v)[0]))}: {c}"
                        for v, c in sorted(zip(vals, counts), key=lambda t: -t[1])[:10])
        head = f"<b>{inds.size} selected</b> ({mix})<br>"
        shown = inds[:MAX_SELECTION_SHOWN]
        if self.images is not None:
            self.gallery.value = head + gallery_html([thumbnail_uri(self.images[j], 48) for j in shown],
                                                     [f"#{j} {self.label_name(j)}" for j in shown], 48)
        else:
            self.gallery.value = head
        self.clear_error()

    def to_figure(self) -> Any:
        """The scatter as shown (current projection and colouring) as a plain plotly figure (after waiting for a
        background load)."""
        import plotly.graph_objects as go

        self.wait()
        if not self.coords:
            raise ValueError(self.last_error or "nothing to show")
        return go.Figure(self.fig) if isinstance(self.fig, go.FigureWidget) else self.fig
