"""AugmentationExplorer: pick a preset, edit each op's parameters, see N images x K views with what was drawn."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import ipywidgets as W

from widgets._base import WidgetBase, as_images, guarded, image_figure
from workbench.inspect.images import display_scale, image_grid, png_bytes, to_hwc, upscale

SLIDERS = {  # ViewOps field -> (min, max, step)
    "flip_p": (0.0, 1.0, 0.05), "jitter_p": (0.0, 1.0, 0.05), "brightness": (0.0, 1.0, 0.05),
    "contrast": (0.0, 1.0, 0.05), "saturation": (0.0, 1.0, 0.05), "hue": (0.0, 0.5, 0.01),
    "grayscale_p": (0.0, 1.0, 0.05), "blur_p": (0.0, 1.0, 0.05), "solarize_p": (0.0, 1.0, 0.05),
}
MODES = ("views", "MAE mask", "I-JEPA masks")


class AugmentationExplorer(WidgetBase):
    """Grid of ``n_images`` images x the preset's views, each captioned with the parameters drawn for it (crop box
    drawn on the original in the view's colour; global and local crops at their true relative size).

    ``data``: an ImageDataset or uint8 images [N, C, H, W]. Controls: preset, which view to edit ("all views" or
    one), crop scale range, op probabilities and strengths, seed, number of images, and a mode showing MAE
    random masks or I-JEPA multi-block masks instead of views. ``augment_config`` is the AugmentConfig shown.
    """

    def __init__(self, data: Any, preset: str = "simclr", n_images: int = 8, seed: int = 0,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        from workbench.augment import known_presets

        super().__init__()
        self.images = None
        self._config = None
        self._syncing = False
        self.png: bytes = b""
        self.captions: list[list[str]] = []
        self._mean, self._std = mean, std
        self.preset = W.Dropdown(options=known_presets(), value=preset if preset in known_presets() else "simclr",
                                 description="preset")
        self.view = W.Dropdown(options=["all views"], value="all views", description="edit")
        self.scale = W.FloatRangeSlider(value=(0.08, 1.0), min=0.01, max=1.0, step=0.01, description="crop scale")
        self.sliders = {k: W.FloatSlider(value=0.0, min=a, max=b, step=s, description=k, continuous_update=False)
                        for k, (a, b, s) in SLIDERS.items()}
        self.seed = W.IntText(value=seed, description="seed")
        self.n_images = W.IntSlider(value=1, min=1, max=1, description="images")
        self.mode = W.ToggleButtons(options=MODES, value="views")
        self.mask_ratio = W.FloatSlider(value=0.75, min=0.05, max=0.95, step=0.05, description="mask ratio")
        self.patch_size = W.Dropdown(options=[4], value=4, description="patch")
        self.image = W.Image(format="png")
        controls = W.VBox([self.preset, self.view, self.scale, *self.sliders.values(), self.seed, self.n_images,
                           self.mode, self.mask_ratio, self.patch_size])
        self.widget = W.VBox([self.error, W.HBox([controls, self.image])])
        self.widget.add_class("wb-augmentation-explorer")  # CSS hooks for tests/widgets/test_browser.py
        self.image.add_class("wb-augmentation-grid")
        for k, s in self.sliders.items():
            s.add_class(f"wb-slider-{k}")
        try:
            self.images = as_images(data)
        except ValueError as e:
            self.show_error(str(e))
            return
        n, size = self.images.shape[0], self.images.shape[-1]
        self.n_images.max = min(32, n)
        self.n_images.value = max(1, min(n_images, n))
        divisors = [p for p in range(2, size + 1) if size % p == 0 and size // p >= 2] or [size]
        self.patch_size.options = divisors
        self.patch_size.value = min(divisors, key=lambda p: abs(size // p - 8))
        self.preset.observe(self._on_preset, names="value")
        self.view.observe(self._on_view, names="value")
        self.scale.observe(self._on_param, names="value")
        for s in self.sliders.values():
            s.observe(self._on_param, names="value")
        for w in (self.seed, self.n_images, self.mode, self.mask_ratio, self.patch_size):
            w.observe(self._on_render, names="value")
        self._on_preset()

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def augment_config(self) -> Any:
        """A copy of the AugmentConfig (workbench.augment) the widget currently shows: pass it to a run."""
        return copy.deepcopy(self._config)

    @property
    def augment_overrides(self) -> dict[str, Any]:
        """The shown config as ``PretrainConfig.augment`` overrides (preset, full view list, num_global): a run
        started with them uses exactly these views (normalisation stays the run's data statistics)."""
        c = self._config
        return {"preset": c.preset, "views": [dataclasses.asdict(v) for v in c.views], "num_global": c.num_global}

    def _selected(self) -> list[int]:
        if self._config is None:
            return []
        if self.view.value == "all views":
            return list(range(len(self._config.views)))
        return [self.view.options.index(self.view.value) - 1]

    @guarded
    def _on_preset(self, change: Any = None) -> None:
        from workbench.augment import make_preset

        c = self.images.shape[1]
        mean = self._mean or ((0.5,) * c)
        std = self._std or ((0.25,) * c)
        self._config = make_preset(self.preset.value, self.images.shape[-1], mean=mean, std=std)
        labels = ["all views"] + [f"view {i + 1} ({'global' if i < self._config.num_global else 'local'}, "
                                  f"{v.size}px)" for i, v in enumerate(self._config.views)]
        self._syncing = True
        try:
            self.view.options = labels
            self.view.value = "all views"
        finally:
            self._syncing = False
        self._sync_sliders()
        self.render()

    def _sync_sliders(self) -> None:
        """Show the first selected view's values on the sliders (without triggering edits)."""
        sel = self._selected()
        if not sel:
            return
        v = self._config.views[sel[0]]
        self._syncing = True
        try:
            self.scale.value = tuple(v.scale)
            for k, s in self.sliders.items():
                s.value = float(getattr(v, k))
        finally:
            self._syncing = False

    @guarded
    def _on_view(self, change: Any = None) -> None:
        if not self._syncing:
            self._sync_sliders()

    @guarded
    def _on_param(self, change: Any = None) -> None:
        if self._syncing or self._config is None:
            return
        values = {k: float(s.value) for k, s in self.sliders.items()}
        values["scale"] = tuple(float(x) for x in self.scale.value)
        if values["scale"][0] <= 0:
            raise ValueError("crop scale must start above 0")
        views = list(self._config.views)
        for i in self._selected():
            views[i] = dataclasses.replace(views[i], **values)  # ViewOps validates each field
        self._config = dataclasses.replace(self._config, views=views)
        self.render()

    @guarded
    def _on_render(self, change: Any = None) -> None:
        self.render()

    # -- output ------------------------------------------------------------------------------------------------
    @guarded
    def render(self) -> bytes:
        """Draw the grid for the current controls (what was drawn for each view written beside each row); sets
        ``png``, ``picture`` and ``captions``; returns the PNG."""
        from workbench.inspect.views import augmentation_grid, ijepa_mask_images, mae_mask_images

        if self.images is None or self._config is None:
            raise ValueError("no images to show")
        imgs = self.images[: self.n_images.value]
        if imgs.shape[0] == 0:
            raise ValueError("empty selection: choose at least one image")
        title = f"{self.preset.value} preset, seed {self.seed.value}"
        if self.mode.value == "views":
            pic, caps, _ = augmentation_grid(imgs, self._config, seed=self.seed.value, title=title)
        else:
            zoom = display_scale(imgs.shape[-1], 128)
            p = int(self.patch_size.value)
            if self.mode.value == "MAE mask":
                pics, mask = mae_mask_images(imgs, p, self.mask_ratio.value, self.seed.value, zoom)
                caps = [[f"MAE mask {int(m.sum())}/{m.numel()} patches masked"] for m in mask]
            else:
                pics, bm = ijepa_mask_images(imgs, p, self.seed.value, zoom, min_keep=1)
                caps = [[f"I-JEPA context {bm.context.shape[1]} patches (blue), {bm.targets.shape[1]} targets of "
                         f"{bm.targets.shape[2]} patches"] for _ in pics]
            pic = image_grid([[upscale(to_hwc(imgs[i]), zoom), pics[i]] for i in range(len(pics))],
                             titles=[["image", self.mode.value]], notes=[c[0] for c in caps],
                             title=f"{self.mode.value}, patch {p} px, seed {self.seed.value}")
        self.picture, self.captions = pic, caps
        self.png = png_bytes(pic)
        self.image.value = self.png
        self.clear_error()
        return self.png

    def to_figure(self) -> Any:
        """The current grid as a plotly figure (go.Image) titled with the preset and seed."""
        if self.picture is None:
            raise ValueError(self.last_error or "nothing to show")
        return image_figure([self.picture])
