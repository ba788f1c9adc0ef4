"""AttentionViewer: ViT attention per layer/head, DINO's thresholded mask, rollout, the output token norms (high-norm
outlier patches, register norms); for every backbone a patch-similarity map (click a patch; also across a second
image) and the PCA-of-patch-features image."""
from __future__ import annotations

from typing import Any

import ipywidgets as W
import numpy as np
import torch

from widgets._base import WidgetBase, as_images, guarded, image_figure
from workbench.inspect.images import data_uri, overlay, png_bytes, to_hwc, upscale

VIEWS = ("attention", "rollout", "attention mask", "token norms", "patch similarity", "PCA")
VIT_ONLY = ("attention", "rollout", "attention mask", "token norms")


class AttentionViewer(WidgetBase):
    """Attention and patch views of ``images`` under a pretrained backbone.

    ``source``: anything ``workbench.trained.load_trained`` takes (a run folder or Run, a checkpoint, a Method,
    a (backbone, info) pair, a backbone, a spec such as ``"timm:vit_small_patch14_dinov2.lvd142m"``); its recorded
    normalisation (a spec's: the model's own) is used unless ``mean``/``std`` are given.
    ``images``: ImageDataset or uint8 [N, C, H, W] at the backbone's image size. Views: ``attention``
    (CLS-to-patch attention of a layer and head or the mean over heads), ``rollout`` (all layers), ``attention
    mask`` (DINO: the patches holding ``share`` of the mass), ``token norms`` (L2 norm of each patch token in the
    residual stream after the last block, on one scale for both images, the high-norm outliers of "Vision Transformers Need Registers" outlined in red,
    the register and CLS norms listed; workbench.inspect.attention.token_norms: small ViTs trained briefly show
    no such outliers, large long-trained ones do) — ViT only; ``patch similarity`` (click
    a patch of the left image; cosine similarity of every patch of the left and right image to it) and ``PCA``
    (first three components of the patch features of both images as RGB) — every backbone, CNNs included.
    """

    def __init__(self, source: Any, images: Any, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, checkpoint: str = "last", zoom: int | None = None):
        super().__init__()
        self.backbone, self.info, self.images = None, {}, None
        self._maps: dict[int, list[torch.Tensor]] = {}
        self._tokens: dict[int, torch.Tensor] = {}
        self._norms: dict[int, Any] = {}
        self.grid: tuple[int, int] = (1, 1)
        self.patch: tuple[int, int] = (0, 0)
        self.heat: np.ndarray | None = None
        self.pictures: list[np.ndarray] = []
        self.png: bytes = b""
        self.view = W.Dropdown(options=VIEWS, value="attention", description="view")
        self.index = W.IntSlider(value=0, min=0, max=0, description="image")
        self.second = W.IntSlider(value=0, min=0, max=0, description="2nd image")
        self.layer = W.IntSlider(value=0, min=0, max=0, description="layer")
        self.head = W.Dropdown(options=["mean"], value="mean", description="head")
        self.opacity = W.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05, description="opacity")
        self.share = W.FloatSlider(value=0.6, min=0.05, max=1.0, step=0.05, description="mass share")
        self.pca_threshold = W.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="PCA fg thr")
        self.info_area = W.HTML()
        import plotly.graph_objects as go

        self.fig = go.FigureWidget(image_figure([np.zeros((4, 4, 3), np.uint8)] * 2, ["image", "second image"]))
        self.fig.update_layout(height=380, width=720, clickmode="event")
        controls = W.VBox([self.view, self.index, self.second, self.layer, self.head, self.opacity, self.share,
                           self.pca_threshold])
        self.widget = W.VBox([self.error, W.HBox([controls, self.fig]), self.info_area])
        self.widget.add_class("wb-attention-viewer")  # CSS hooks for tests/widgets/test_browser.py
        self.fig.add_class("wb-attention-plot")
        try:
            from workbench.trained import load_trained

            self.trained = load_trained(source, checkpoint)
            self.backbone, self.info = self.trained.backbone, self.trained.info
            self.images = as_images(images)
        except Exception as e:
            self.show_error(str(e))
            return
        from workbench.inspect.attention import check_image_size

        n = self.images.shape[0]
        self.index.max = self.second.max = n - 1
        self.second.value = min(1, n - 1)
        rec_mean, rec_std = self.trained.stats(self.images.shape[1])
        self.mean, self.std = tuple(mean or rec_mean), tuple(std or rec_std)
        self.zoom = zoom or max(1, 160 // self.images.shape[-1])
        self.is_vit = getattr(self.backbone, "kind", None) == "vit"
        if self.is_vit:
            self.layer.max = self.backbone.num_layers - 1
            self.layer.value = self.layer.max
            self.head.options = ["mean"] + list(range(self.backbone.num_heads))
        else:
            self.view.value = "patch similarity"
            self.info_area.value = ("<i>CNN backbone: the attention views need a ViT; patch similarity and PCA "
                                    "work here.</i>")
        try:
            check_image_size(self.backbone, self.images[:1])
        except ValueError as e:
            self.images_ok = False
            self.show_error(str(e))
            return
        self.images_ok = True
        self.fig.data[0].on_click(self.on_image_click)
        for w in (self.view, self.index, self.second, self.layer, self.head, self.opacity, self.share,
                  self.pca_threshold):
            w.observe(self._on_change, names="value")
        self.render()

    # -- features, cached per image ----------------------------------------------------------------------------
    CHUNK = 32

    def _chunk(self, i: int) -> tuple[int, torch.Tensor]:
        """Start index and normalised images of the chunk of ``CHUNK`` images holding image ``i`` (batched forward
        passes: switching images afterwards only reads the cache)."""
        from workbench.augment import normalize

        start = (i // self.CHUNK) * self.CHUNK
        return start, normalize(self.images[start:start + self.CHUNK], self.mean, self.std)

    def maps(self, i: int) -> list[torch.Tensor]:
        """Attention maps of image ``i`` (list per layer [1, heads, T, T]), computed once per chunk of images."""
        from workbench.inspect.attention import attention_maps

        if i not in self._maps:
            start, x = self._chunk(i)
            maps = attention_maps(self.backbone, x)
            for k in range(x.shape[0]):
                self._maps[start + k] = [m[k:k + 1] for m in maps]
        return self._maps[i]

    def norms(self, i: int) -> Any:
        """Token norms of image ``i`` (a TokenNorms of batch 1; the outlier threshold is that of its chunk of
        ``CHUNK`` images), computed once per chunk."""
        from workbench.inspect.attention import TokenNorms, token_norms

        if i not in self._norms:
            start, x = self._chunk(i)
            n = token_norms(self.backbone, x)
            for k in range(x.shape[0]):
                self._norms[start + k] = TokenNorms(n.patches[k:k + 1], n.registers[k:k + 1],
                                                    None if n.cls is None else n.cls[k:k + 1], n.threshold)
        return self._norms[i]

    def tokens(self, i: int) -> torch.Tensor:
        """Patch tokens of image ``i`` [L, D], computed once per chunk of images (sets ``grid``)."""
        from workbench.inspect.patches import patch_tokens

        if i not in self._tokens:
            start, x = self._chunk(i)
            t, self.grid = patch_tokens(self.backbone, x)
            for k in range(x.shape[0]):
                self._tokens[start + k] = t[k]
        return self._tokens[i]

    # -- handlers ----------------------------------------------------------------------------------------------
    @guarded
    def _on_change(self, change: Any = None) -> None:
        self.render()

    @guarded
    def on_image_click(self, trace: Any, points: Any, state: Any = None) -> None:
        """Plotly click on the left image: select the patch under the pointer and show its similarity map."""
        from workbench.inspect.patches import patch_at_pixel

        if not getattr(points, "xs", None):
            return
        self.tokens(self.index.value)
        x, y = float(points.xs[0]) / self.zoom, float(points.ys[0]) / self.zoom
        self.select_patch(*patch_at_pixel(x, y, self.images.shape[-1], self.grid))

    @guarded
    def select_patch(self, row: int, col: int) -> None:
        """Choose the query patch (row, col) and switch to the patch-similarity view."""
        from workbench.inspect.patches import patch_index

        self.tokens(self.index.value)
        patch_index(row, col, self.grid)  # range check
        self.patch = (int(row), int(col))
        if self.view.value != "patch similarity":
            self.view.value = "patch similarity"  # triggers render
        else:
            self.render()

    # -- rendering ---------------------------------------------------------------------------------------------
    @guarded
    def render(self) -> bytes:
        """Compute the current view and update both panels; sets ``picture`` (each image beside its map and the
        map over it, captioned); returns PNG bytes of the left panel."""
        from workbench.inspect.attention import CNN_VIEWS_HINT, attention_image
        from workbench.inspect.images import composite, heat_picture, heat_rgba
        from workbench.inspect.patches import patch_index, pca_images, similarity_images

        if self.backbone is None or self.images is None or not self.images_ok:
            raise ValueError(self.last_error or "no backbone or images")
        i, j, view = self.index.value, self.second.value, self.view.value
        size = self.images.shape[-1]
        img_a, img_b = to_hwc(self.images[i]), to_hwc(self.images[j])
        titles = [f"image {i}", f"image {j}"]
        if view in VIT_ONLY:
            if not self.is_vit:
                self.pictures = [upscale(img_a, self.zoom), upscale(img_b, self.zoom)]
                self.picture = None
                self._show(titles)
                raise ValueError(f"the '{view}' view needs a ViT; this run's backbone is a "
                                 f"{self.trained.backbone_name or type(self.backbone).__name__} (CNN): {CNN_VIEWS_HINT}")
        if view == "token norms":
            from workbench.inspect.attention import upsample

            na, nb = self.norms(i), self.norms(j)
            self.grid = tuple(self.backbone.grid)
            top = max(float(na.patches.max()), float(nb.patches.max()), 1e-12)  # one scale: 0 .. the larger max
            heats = [upsample(n.patches / top, size)[0].numpy() for n in (na, nb)]
            self.heat = heats[0]
            maps = [heat_picture(h) for h in heats]
            pics = [composite(img, heat_rgba(h, self.opacity.value)) for img, h in zip((img_a, img_b), heats)]
            titles = [f"image {k}: {int(n.outliers.sum())} outlier patch(es)" for k, n in ((i, na), (j, nb))]
            about = (f"L2 norm of each patch token after the last block (residual stream), one scale 0..{top:.3g} "
                     f"for both images; red boxes: norm > "
                     f"{na.threshold:.3g} (mean + 3 std over the images' patches), the high-norm outliers that "
                     "register tokens absorb in large ViTs")
            self._outlined = [n.outliers[0] for n in (na, nb)]
            self.info_area.value = self._norms_text(i, na) + self._norms_text(j, nb)
        elif view in ("attention", "rollout", "attention mask"):
            kind = {"attention": "attention", "rollout": "rollout", "attention mask": "mask"}[view]
            grid = self.grid = tuple(self.backbone.grid)
            heats = [attention_image(self.maps(k), grid, size, kind, layer=self.layer.value, head=self.head.value,
                                     share=self.share.value)[0] for k in (i, j)]
            self.heat = heats[0]
            maps = [heat_picture(h) for h in heats]
            pics = [overlay(img, h, self.opacity.value) for img, h in zip((img_a, img_b), heats)]
            label = (f"layer {self.layer.value}, head {self.head.value}" if kind != "rollout" else "rollout")
            if kind == "mask":
                label += f", {self.share.value:.0%} of the mass"
            titles = [f"image {i}: {label}", f"image {j}: {label}"]
            about = f"CLS attention ({label}); bright = more attention"
        elif view == "patch similarity":
            ta, tb = self.tokens(i), self.tokens(j)
            heats = similarity_images(ta, tb, patch_index(*self.patch, self.grid), self.grid, size)
            self.heat = heats[0]
            maps = [heat_picture(h) for h in heats]
            pics = [composite(img, heat_rgba(h, self.opacity.value)) for img, h in zip((img_a, img_b), heats)]
            titles = [f"image {i}: similarity to patch {self.patch}", f"image {j}: similarity to that patch"]
            about = (f"cosine similarity of each patch to patch (row, col) = {self.patch} of image {i} (green box); "
                     "one scale for both images, bright = more similar")
        elif view == "PCA":
            t = torch.stack([self.tokens(i), self.tokens(j)])
            maps = list(pca_images(t, self.grid, size, self.pca_threshold.value or None))
            self.heat = maps[0]
            pics = list(maps)
            titles = [f"image {i}: PCA of patch features", f"image {j}: PCA (joint fit)"]
            about = "first three principal components of the patch features of both images as RGB"
        else:
            raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
        if view != "token norms":
            self._outlined = []
            if self.is_vit:
                self.info_area.value = ""
        query = view == "patch similarity"
        self.pictures = [self._mark(upscale(p, self.zoom), query and k == 0, k) for k, p in enumerate(pics)]
        over = self.pictures
        if view == "PCA":  # the live view shows the PCA colours alone (DINOv2's picture); the sheet adds a blend
            alpha = np.full(img_a.shape[:2] + (1,), self.opacity.value, np.float32)
            over = [self._mark(upscale(composite(img, np.concatenate([m / 255.0, alpha], -1)), self.zoom), False)
                    for img, m in zip((img_a, img_b), maps)]
        self.picture = self._sheet((img_a, img_b), maps, over, titles, about, query)
        self._show(titles)
        self.png = png_bytes(self.pictures[0])
        self.clear_error()
        return self.png

    def _mark(self, picture: np.ndarray, query: bool, panel: int | None = None) -> np.ndarray:
        """A zoomed map picture with its patch grid drawn in (the query patch outlined when ``query``; in the token
        norms view the outlier patches of image ``panel`` (0 left, 1 right) in red)."""
        from workbench.inspect.patches import outline_patch, patch_grid_lines

        size = self.images.shape[-1]
        picture = patch_grid_lines(picture, self.grid, size)
        outlined = getattr(self, "_outlined", [])
        if panel is not None and panel < len(outlined):
            for r, c in outlined[panel].nonzero().tolist():
                picture = outline_patch(picture, (r, c), self.grid, color=(255, 0, 0), image_size=size)
        return outline_patch(picture, self.patch, self.grid, image_size=size) if query else picture

    @staticmethod
    def _norms_text(i: int, n: Any) -> str:
        """One line of the token norms view: patch norm range, outliers, register and CLS norms of image ``i``."""
        p = n.patches.flatten()
        regs = ", ".join(f"{v:.3g}" for v in n.registers[0].tolist()) or "none (this ViT has no register tokens)"
        cls = f"; CLS {float(n.cls[0]):.3g}" if n.cls is not None else ""
        return (f"<div>image {i}: patch norms {float(p.min()):.3g}-{float(p.max()):.3g} (median "
                f"{float(p.median()):.3g}), {int(n.outliers.sum())} of {p.numel()} above {n.threshold:.3g}; "
                f"registers: {regs}{cls}</div>")

    def _sheet(self, images: tuple[np.ndarray, np.ndarray], maps: list[np.ndarray], overlays: list[np.ndarray],
               titles: list[str], about: str, query: bool) -> np.ndarray:
        """The readable picture: one row per image (the image, its map, the map over it, zoomed), captioned."""
        from workbench.inspect.images import image_grid

        h, w = self.grid
        size = self.images.shape[-1]
        rows = [[upscale(img, self.zoom), self._mark(upscale(m, self.zoom), query and k == 0, k), overlays[k]]
                for k, (img, m) in enumerate(zip(images, maps))]
        heads = [[t, "map", "map over the image"] for t in titles]
        name = getattr(self.trained, "backbone_name", None) or type(self.backbone).__name__
        title = (f"{self.view.value}: {about}. Backbone {name}, a {h}x{w} patch grid on {size} px images "
                 f"(about {size / h:.3g} px per patch).")
        return image_grid(rows, titles=heads, title=title)

    def _show(self, titles: list[str]) -> None:
        with self.fig.batch_update():
            for k, pic in enumerate(self.pictures):
                self.fig.data[k].z = None
                self.fig.data[k].source = data_uri(png_bytes(pic))
            for k, t in enumerate(titles):
                if k < len(self.fig.layout.annotations):
                    self.fig.layout.annotations[k].text = t
        self._titles = titles

    def to_figure(self) -> Any:
        """Both panels of the current view as a plotly figure (go.Image)."""
        if not self.pictures:
            raise ValueError(self.last_error or "nothing to show")
        return image_figure(self.pictures, getattr(self, "_titles", None), title=f"{self.view.value}")
