"""ReconstructionViewer: an MAE run's original, masked input, reconstruction and reconstruction with the visible
patches pasted back, with a mask-ratio slider."""
from __future__ import annotations

from typing import Any

import ipywidgets as W
import numpy as np

from widgets._base import WidgetBase, as_images, guarded, image_figure
from workbench.inspect.images import display_scale, image_grid, png_bytes

COLUMNS = "original | masked | reconstruction | reconstruction + visible patches"


class ReconstructionViewer(WidgetBase):
    """MAE reconstructions of ``images`` (ImageDataset or uint8 [N, C, H, W]; default: the run's test split,
    first 8 images). Controls: mask ratio, seed, number of images. A run of another method shows a message."""

    def __init__(self, source: Any, images: Any = None, n_images: int = 4, mask_ratio: float = 0.75,
                 seed: int = 0, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 checkpoint: str = "last"):
        super().__init__()
        self.method, self.info, self.images = None, {}, None
        self.png, self.picture, self.result = b"", None, None
        self.mask_ratio = W.FloatSlider(value=mask_ratio, min=0.05, max=0.95, step=0.05, description="mask ratio",
                                        continuous_update=False)
        self.seed = W.IntText(value=seed, description="seed")
        self.n_images = W.IntSlider(value=1, min=1, max=1, description="images")
        self.image = W.Image(format="png")
        self.loss = W.HTML()
        self.widget = W.VBox([self.error, W.HBox([self.mask_ratio, self.seed, self.n_images]), self.loss,
                              self.image])
        try:
            from workbench.inspect.recon import check_reconstructor

            from workbench.trained import load_trained

            trained = load_trained(source, checkpoint)
            self.method, self.info = trained.method(), trained.info
            check_reconstructor(self.method)
            self.images = as_images(trained.dataset("test").images[:8] if images is None else images)
        except Exception as e:
            self.show_error(str(e))
            return
        rec_mean, rec_std = trained.stats(self.images.shape[1])
        self.mean, self.std = tuple(mean or rec_mean), tuple(std or rec_std)
        self.n_images.max = min(16, self.images.shape[0])
        self.n_images.value = min(n_images, self.n_images.max)
        for w in (self.mask_ratio, self.seed, self.n_images):
            w.observe(self._on_change, names="value")
        self.render()

    @guarded
    def _on_change(self, change: Any = None) -> None:
        self.render()

    @guarded
    def render(self) -> bytes:
        """Reconstruct the shown images at the current mask ratio and seed; returns the PNG of the grid."""
        from workbench.inspect.recon import mae_reconstruction, reconstruction_grid

        if self.method is None or self.images is None:
            raise ValueError(self.last_error or "no MAE run or images")
        self.result = mae_reconstruction(self.method, self.images[: self.n_images.value], self.mean, self.std,
                                         self.mask_ratio.value, self.seed.value)
        zoom = display_scale(self.images.shape[-1], 96)
        masked = float(self.result["mask"].mean())
        self.loss.value = (f"mask ratio {self.mask_ratio.value:.2f} ({masked:.0%} of patches masked), "
                           f"loss on masked patches {self.result['loss']:.4f}")
        self.picture = image_grid([[reconstruction_grid(self.result, zoom)]],
                                  title=f"each row: {COLUMNS}; {self.loss.value}, seed {self.seed.value}")
        self.png = png_bytes(self.picture)
        self.image.value = self.png
        self.clear_error()
        return self.png

    def to_figure(self) -> Any:
        if self.picture is None:
            raise ValueError(self.last_error or "nothing to show")
        return image_figure([np.asarray(self.picture)])
